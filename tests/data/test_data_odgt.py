"""load_odgt against small hand-written odgt files (docs/original.md#odgt)."""
import json
import logging

import numpy as np
import pytest

from lhrcnn.data import load_odgt
from lhrcnn.data.odgt import image_id_from_odgt_id

CLASS_NAMES = ("background", "person", "car")


def write_odgt(tmp_path, entries, files=()):
    root = tmp_path / "root"
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    for name in files:
        (root / name).write_bytes(b"x")
    path = tmp_path / "set.odgt"
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries))
    return str(path), str(root)


def gt(box, tag, ignore=0):
    return {"box": box, "tag": tag, "extra": {"ignore": ignore}, "occ": 0}


def test_records_boxes_ids_and_paths(tmp_path):
    entries = [
        {"ID": "COCO_val2014_000000000139.jpg", "fpath": "/val2014/COCO_val2014_000000000139.jpg",
         "height": 100, "width": 120,
         "gtboxes": [gt([10, 20, 30, 40], "car"), gt([0, 0, 5, 5], "person", ignore=1),
                     gt([100, 90, 50, 50], "person")]},
        "",  # blank lines are skipped
        {"ID": "no-number-here.jpg", "fpath": "val2014/b.jpg", "height": 10, "width": 10, "gtboxes": []},
    ]
    path, root = write_odgt(tmp_path, entries, ["val2014/COCO_val2014_000000000139.jpg", "val2014/b.jpg"])
    ds = load_odgt(path, root, CLASS_NAMES)
    first, second = ds.records
    assert first.image_id == 139 and first.path == f"{root}/val2014/COCO_val2014_000000000139.jpg"
    assert second.image_id == 2 and second.path == f"{root}/val2014/b.jpg"  # fallback: line index
    np.testing.assert_array_equal(first.boxes, [[10, 20, 40, 60], [100, 90, 120, 100]])  # x + w, clipped
    np.testing.assert_array_equal(first.classes, [2, 1])
    assert (first.height, first.width) == (100, 120)
    assert ds.class_names == CLASS_NAMES and ds.category_ids == [-1, 1, 2]
    assert ds.stats["crowd_or_ignored_boxes"] == 1 and ds.stats["clipped_boxes"] == 1
    assert ds.stats["images_without_annotations"] == 1
    kept_ignored = load_odgt(path, root, CLASS_NAMES, skip_ignored=False)
    assert len(kept_ignored.records[0].boxes) == 3
    assert len(load_odgt(path, root, CLASS_NAMES, keep_empty=False).records) == 1


def test_degenerate_and_non_finite(tmp_path):
    entries = [{"ID": "x_1.jpg", "fpath": "/val2014/a.jpg", "height": 50, "width": 50,
                "gtboxes": [gt([1, 1, 0, 5], "car"), gt([1, 1, 5, None], "car"), gt([1, 1, 5], "car"),
                            gt([60, 60, 5, 5], "car"), gt([1, 1, 5, 5], "car")]}]
    path, root = write_odgt(tmp_path, entries, ["val2014/a.jpg"])
    ds = load_odgt(path, root, CLASS_NAMES)
    np.testing.assert_array_equal(ds.records[0].boxes, [[1, 1, 6, 6]])
    assert ds.stats["degenerate_boxes"] == 2 and ds.stats["non_finite_boxes"] == 2


def test_image_id_parsing():
    assert image_id_from_odgt_id("COCO_val2014_000000000139.jpg", 7) == 139
    assert image_id_from_odgt_id("273", 7) == 273
    assert image_id_from_odgt_id("a_b_c.png", 7) == 7


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2"),
    (json.dumps({"fpath": "/a.jpg", "height": 1, "width": 1}), "line 2.*KeyError"),
    (json.dumps({"ID": "a", "fpath": "/a.jpg", "height": "tall", "width": 1}), "line 2"),
    (json.dumps([1, 2]), "line 2"),
    (json.dumps({"ID": "a", "fpath": "/a.jpg", "height": 5, "width": 5, "gtboxes": [gt([0, 0, 1, 1], "bus")]}),
     "line 2: tag 'bus'"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    good = {"ID": "a_1", "fpath": "/val2014/a.jpg", "height": 5, "width": 5, "gtboxes": []}
    path, root = write_odgt(tmp_path, [good, line], ["val2014/a.jpg"])
    with pytest.raises(ValueError, match=message) as info:
        load_odgt(path, root, CLASS_NAMES)
    assert path in str(info.value)


def test_unknown_tags_dropped_when_asked(tmp_path):
    entries = [{"ID": "a_1", "fpath": "/val2014/a.jpg", "height": 5, "width": 5,
                "gtboxes": [gt([0, 0, 1, 1], "bus"), gt([0, 0, 2, 2], "car")]}]
    path, root = write_odgt(tmp_path, entries, ["val2014/a.jpg"])
    ds = load_odgt(path, root, CLASS_NAMES, drop_unknown_categories=True)
    np.testing.assert_array_equal(ds.records[0].classes, [2])
    assert ds.stats["unknown_category_boxes"] == 1


def test_missing_files_and_folders(tmp_path, caplog):
    entries = [{"ID": "a_1", "fpath": "/val2014/a.jpg", "height": 5, "width": 5, "gtboxes": []},
               {"ID": "a_2", "fpath": "/val2014/gone.jpg", "height": 5, "width": 5, "gtboxes": []}]
    path, root = write_odgt(tmp_path, entries, ["val2014/a.jpg"])
    with caplog.at_level(logging.WARNING):
        ds = load_odgt(path, root, CLASS_NAMES)
    assert [r.image_id for r in ds.records] == [1] and ds.stats["missing_images"] == 1
    assert f"{root}/val2014/gone.jpg" in caplog.text
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.odgt")):
        load_odgt(str(tmp_path / "nope.odgt"), root, CLASS_NAMES)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        load_odgt(path, str(tmp_path / "nothing"), CLASS_NAMES)
