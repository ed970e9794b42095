"""load_coco against small hand-written COCO files."""
import json
import logging

import numpy as np
import pytest

from lhrcnn.data import load_coco


def write_coco(tmp_path, images, annotations, categories, make_files=True):
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    if make_files:
        for image in images:
            (image_dir / image["file_name"]).write_bytes(b"not decoded by the loader")
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(path), str(image_dir)


CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]  # not in id order on purpose


def ann(id_, image_id, category_id, bbox, **extra):
    return {"id": id_, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": 1.0,
            "iscrowd": 0, **extra}


def test_boxes_classes_and_default_class_names(tmp_path):
    images = [{"id": 5, "file_name": "b.jpg", "height": 100, "width": 200},
              {"id": 2, "file_name": "a.jpg", "height": 50, "width": 60}]
    annotations = [ann(1, 5, 7, [10.5, 20, 30, 40]), ann(2, 5, 3, [0, 0, 200, 100]), ann(3, 2, 3, [1, 2, 3, 4])]
    ds = load_coco(*write_coco(tmp_path, images, annotations, CATEGORIES))
    assert ds.class_names == ("background", "cat", "dog")  # file categories in id order
    assert ds.category_ids == [-1, 3, 7]
    assert ds.num_classes == 3 and len(ds) == 2
    assert [r.image_id for r in ds.records] == [2, 5]  # image-id order
    first, second = ds.records
    assert first.path == str(tmp_path / "images" / "a.jpg") and (first.height, first.width) == (50, 60)
    np.testing.assert_array_equal(first.boxes, [[1, 2, 4, 6]])  # x2 = x + w, no -1
    np.testing.assert_array_equal(first.classes, [1])
    np.testing.assert_array_equal(second.boxes, [[10.5, 20, 40.5, 60], [0, 0, 200, 100]])
    np.testing.assert_array_equal(second.classes, [2, 1])
    assert second.boxes.dtype == np.float32 and second.classes.dtype == np.int32
    assert all(v == 0 for v in ds.stats.values())
    assert "2 images, 3 boxes, 2 classes" in ds.summary()


def test_crowd_degenerate_non_finite_and_clipped_boxes(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100}]
    annotations = [
        ann(1, 1, 3, [10, 10, 20, 20]),                 # kept as is
        ann(2, 1, 3, [10, 10, 20, 20], iscrowd=1),      # crowd
        ann(3, 1, 7, [5, 5, 0, 10]),                    # zero width
        ann(4, 1, 7, [5, 5, 10, -3]),                   # negative height
        ann(5, 1, 7, [float("nan"), 5, 10, 10]),        # non-finite
        ann(6, 1, 7, [5, 5, float("inf"), 10]),         # non-finite
        ann(7, 1, 7, [5, 5, 10]),                       # malformed
        ann(8, 1, 7, [-10, 90, 30, 30]),                # crosses the border: clipped
        ann(9, 1, 7, [150, 10, 20, 20]),                # wholly outside: degenerate after clipping
        ann(10, 1, 3, [1, 1, 2, 2], ignore=1),          # ignore flag (some COCO-style files)
    ]
    path, image_dir = write_coco(tmp_path, images, annotations, CATEGORIES)
    ds = load_coco(path, image_dir)
    record, = ds.records
    np.testing.assert_array_equal(record.boxes, [[10, 10, 30, 30], [0, 90, 20, 100]])
    np.testing.assert_array_equal(record.classes, [1, 2])
    assert ds.stats == {"malformed_annotations": 0, "crowd_or_ignored_boxes": 2, "non_finite_boxes": 3,
                        "degenerate_boxes": 3,
                        "clipped_boxes": 1, "unknown_category_boxes": 0, "images_without_annotations": 0,
                        "missing_images": 0}
    kept_crowd = load_coco(path, image_dir, skip_crowd=False)
    assert len(kept_crowd.records[0].boxes) == 4 and kept_crowd.stats["crowd_or_ignored_boxes"] == 0


def test_images_without_annotations(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10},
              {"id": 2, "file_name": "b.jpg", "height": 10, "width": 10}]
    path, image_dir = write_coco(tmp_path, images, [ann(1, 2, 3, [0, 0, 0, 5])], CATEGORIES)
    kept = load_coco(path, image_dir)
    assert [len(r.boxes) for r in kept.records] == [0, 0]
    assert kept.records[0].boxes.shape == (0, 4) and kept.records[0].classes.shape == (0,)
    assert kept.stats["images_without_annotations"] == 2
    dropped = load_coco(path, image_dir, keep_empty=False)
    assert dropped.records == [] and dropped.stats["images_without_annotations"] == 2


def test_class_names_map_by_name(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100}]
    path, image_dir = write_coco(tmp_path, images, [ann(1, 1, 7, [1, 1, 5, 5]), ann(2, 1, 3, [1, 1, 5, 5])],
                                 CATEGORIES)
    ds = load_coco(path, image_dir, class_names=("background", "dog", "bird", "cat"))
    np.testing.assert_array_equal(ds.records[0].classes, [1, 3])
    assert ds.category_ids == [-1, 7, -1, 3]  # "bird" is not in the file
    with pytest.raises(ValueError, match=r"\['cat'\].*not in class_names"):
        load_coco(path, image_dir, class_names=("background", "dog"))
    dropped = load_coco(path, image_dir, class_names=("background", "dog"), drop_unknown_categories=True)
    np.testing.assert_array_equal(dropped.records[0].classes, [1])
    assert dropped.stats["unknown_category_boxes"] == 1


def test_missing_files_and_folders(tmp_path, caplog):
    images = [{"id": 1, "file_name": "here.jpg", "height": 10, "width": 10},
              {"id": 2, "file_name": "gone.jpg", "height": 10, "width": 10}]
    path, image_dir = write_coco(tmp_path, images, [], CATEGORIES)
    (tmp_path / "images" / "gone.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        ds = load_coco(path, image_dir)
    assert [r.image_id for r in ds.records] == [1]
    assert ds.stats["missing_images"] == 1
    assert str(tmp_path / "images" / "gone.jpg") in caplog.text
    missing_json = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=missing_json):
        load_coco(missing_json, image_dir)
    missing_dir = str(tmp_path / "no_images")
    with pytest.raises(FileNotFoundError, match=missing_dir):
        load_coco(path, missing_dir)


def test_bad_image_entry(tmp_path):
    path, image_dir = write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 10}], [], CATEGORIES)
    with pytest.raises(ValueError, match="image 1"):
        load_coco(path, image_dir)


def test_synthetic_style_file_round_trip(tmp_path):
    """Integer COCO boxes touching the right/bottom edges stay inside [0, W] x [0, H] unchanged."""
    images = [{"id": 1, "file_name": "a.jpg", "height": 30, "width": 40}]
    path, image_dir = write_coco(tmp_path, images, [ann(1, 1, 3, [30, 20, 10, 10])], CATEGORIES)
    record, = load_coco(path, image_dir).records
    np.testing.assert_array_equal(record.boxes, [[30, 20, 40, 30]])
