"""COCO evaluation: detections -> COCO results entries against hand values, COCOeval's 12
statistics on a hand-made ground truth (perfect, shifted with a known IoU, empty, a subset),
the summary text and atomic json writes."""
import copy
import json
import os

import numpy as np
import pytest

from lhrcnn.evaluation import STAT_NAMES, detections_to_coco, evaluate, format_summary, write_json

# Three images, non-contiguous category ids, small (< 32²), medium and large objects; image 22
# holds two objects of category 3 (so AR1 < 1 even for perfect detections).
GT_BOXES = [  # (image id, category id, [x, y, w, h])
    (11, 3, [5, 5, 10, 10]),      # small, area 100
    (11, 7, [30, 20, 50, 40]),    # medium, 2000
    (11, 12, [60, 40, 120, 100]),  # large, 12000
    (22, 3, [10, 10, 40, 30]),    # medium, 1200
    (22, 3, [50, 30, 100, 80]),   # large, 8000
    (33, 12, [10, 10, 20, 20]),   # small, 400
    (33, 7, [50, 50, 8, 16]),     # small, 128
]


def make_ground_truth():
    return {
        "images": [{"id": 11, "width": 200, "height": 150, "file_name": "a.png"},
                   {"id": 22, "width": 160, "height": 120, "file_name": "b.png"},
                   {"id": 33, "width": 100, "height": 100, "file_name": "c.png"}],
        "categories": [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 12, "name": "ring"}],
        "annotations": [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0} for i, (img, cat, box) in enumerate(GT_BOXES)],
    }


@pytest.fixture(scope="module")
def gt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("coco") / "instances.json"
    path.write_text(json.dumps(make_ground_truth()))
    return str(path)


def perfect_results(shift=0.0, images=None):
    """One detection per ground-truth box, x shifted by shift x width (scores all different)."""
    return [{"image_id": img, "category_id": cat, "bbox": [x + shift * w, y, w, h], "score": 0.9 - 0.01 * i}
            for i, (img, cat, (x, y, w, h)) in enumerate(GT_BOXES) if images is None or img in images]


def test_perfect_detections(gt_file):
    stats = evaluate(gt_file, perfect_results(), verbose=False)
    assert list(stats) == list(STAT_NAMES)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert stats[name] == pytest.approx(1.0), name
    # maxDets=1 per image and category: category 3 finds 1 of image 22's 2 objects -> recall 2/3;
    # categories 7 and 12 have one object per image -> 1.
    assert stats["AR1"] == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_shifted_detections_known_iou(gt_file):
    # A box shifted by 0.16 w along x overlaps its ground truth with IoU (1 - 0.16) / (1 + 0.16)
    # = 0.7241: matched at the IoU thresholds 0.50 ... 0.70 (5 of 10), missed at 0.75 ... 0.95.
    iou = (1 - 0.16) / (1 + 0.16)
    assert 0.70 < iou < 0.75
    stats = evaluate(gt_file, perfect_results(shift=0.16), verbose=False)
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(0.0)
    for name in ("AP", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert stats[name] == pytest.approx(5 / 10), name
    assert stats["AR1"] == pytest.approx(5 / 10 * 8 / 9)


def test_empty_results_give_zeros(gt_file, capsys):
    stats = evaluate(gt_file, [])
    assert stats == {name: 0.0 for name in STAT_NAMES}
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.000" in capsys.readouterr().out
    assert evaluate(gt_file, [], image_ids=[11], verbose=False) == {name: 0.0 for name in STAT_NAMES}


def test_subset_is_scored_on_its_own_ground_truth(gt_file):
    results = perfect_results(images={11})
    stats = evaluate(gt_file, results, image_ids=[11], verbose=False)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR1"] == pytest.approx(1.0)
    # Without the restriction the other images' objects count as missed: per category the
    # precision is 1 up to recall 1/3 (category 3), 1/2 (7 and 12), i.e. 34, 51 and 51 of the
    # 101 recall points.
    whole = evaluate(gt_file, results, verbose=False)
    assert whole["AP"] == pytest.approx((34 + 51 + 51) / (3 * 101))
    # Results on images outside image_ids are dropped, not scored.
    assert evaluate(gt_file, perfect_results(), image_ids=[11], verbose=False)["AP"] == pytest.approx(1.0)


def test_results_not_modified_and_coco_object_accepted(gt_file):
    from pycocotools.coco import COCO
    results = perfect_results()
    before = copy.deepcopy(results)
    stats = evaluate(COCO(gt_file), results, verbose=False)
    assert results == before  # loadRes would add area/id/iscrowd/segmentation fields
    assert stats["AP"] == pytest.approx(1.0)


def test_bad_image_ids_are_named(gt_file):
    with pytest.raises(ValueError, match="99"):
        evaluate(gt_file, [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}], verbose=False)
    with pytest.raises(ValueError, match="98"):
        evaluate(gt_file, [], image_ids=[11, 98], verbose=False)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        evaluate("nope.json", [])


def test_summary_text_matches_pycocotools(gt_file, capsys):
    stats = evaluate(gt_file, perfect_results(shift=0.16))
    printed = capsys.readouterr().out
    assert stats.summary in printed and len(stats.summary.splitlines()) == 12
    assert format_summary(stats) == stats.summary  # our formatter == COCOeval.summarize()'s text


def test_detections_to_coco_hand_values():
    boxes = np.zeros([2, 3, 4], np.float32)
    boxes[0, 0] = [1, 2, 11, 22]
    boxes[0, 1] = [0, 0, 5, 5]
    boxes[0, 2] = [7, 7, 9, 9]          # beyond num_detections: padding
    boxes[1, 0] = [10.5, 20.25, 30.5, 60.25]
    boxes[1, 1:] = [3, 3, 4, 4]         # padding with garbage values
    scores = np.array([[0.75, 0.5, 0.25], [0.125, 0.9, 0.9]], np.float32)
    classes = np.array([[2, 3, 1], [1, 2, 2]], np.int32)
    category_ids = [None, 3, 7, 12]     # contiguous index -> dataset category id
    results = detections_to_coco(np.array([11, 22]), boxes, scores, classes, np.array([2, 1]), category_ids)
    assert results == [
        {"image_id": 11, "category_id": 7, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.75},
        {"image_id": 11, "category_id": 12, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5},
        {"image_id": 22, "category_id": 3, "bbox": [10.5, 20.25, 20.0, 40.0], "score": 0.125},
    ]
    assert all(type(v) in (int, float) for r in results for v in [r["image_id"], r["category_id"], r["score"]]
               + r["bbox"])
    json.dumps(results)  # plain Python types
    # class 0 inside num_detections is padding too; a mapping works as well as a list
    classes[0, 0] = 0
    mapped = detections_to_coco([11, 22], boxes, scores, classes, [2, 1], {1: 3, 2: 7, 3: 12})
    assert [r["category_id"] for r in mapped] == [12, 3]
    # a class the dataset lacks (category id -1, as DetectionDataset marks it) is dropped
    assert [r["category_id"] for r in detections_to_coco([11, 22], boxes, scores, classes, [2, 1],
                                                         [-1, 3, 7, -1])] == [3]
    with pytest.raises(ValueError, match="class index 5"):
        detections_to_coco([11], boxes[:1], scores[:1], np.full([1, 3], 5), [1], category_ids)
    with pytest.raises(ValueError, match="boxes"):
        detections_to_coco([11, 22, 33], boxes, scores, classes, [1, 1, 1], category_ids)


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json(path, {"AP": 0.5})
    write_json(path, {"AP": 0.25}, indent=1)
    assert json.loads(path.read_text()) == {"AP": 0.25}
    assert os.listdir(path.parent) == ["metrics.json"]  # no temporary file left behind
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"AP": 0.25} and os.listdir(path.parent) == ["metrics.json"]
