"""Bad annotation files: malformed annotations are named, counted and dropped the same way by the
loader and by the scoring, broken files are one error naming the file and the entry, and a
scoring failure never costs the inference (`lhrcnn test` writes the detections first)."""
import json
import logging
import os
import sys

import numpy as np
import pytest

from lhrcnn.data.coco import load_coco, read_coco_json
from lhrcnn.evaluation import coco_eval

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support"))


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    (tmp_path / "images").mkdir(exist_ok=True)
    for image in data.get("images", []) if isinstance(data, dict) else []:
        if isinstance(image, dict) and "file_name" in image:
            (tmp_path / "images" / image["file_name"]).write_bytes(b"")
    return str(path)


def _dataset():
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in (1, 2)]
    good = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"image_id": 2, "category_id": 7, "bbox": [50, 50, 20, 20]}]  # no id, area, iscrowd: filled in
    bad = [{"id": 3, "image_id": 1, "category_id": 7},                          # no bbox
           {"id": 4, "image_id": 1, "category_id": 7, "bbox": "abc"},
           {"id": 5, "image_id": 2, "category_id": 7, "bbox": [1, 2, 3]},
           {"id": 6, "image_id": 2, "category_id": 7, "bbox": [1, 2, -3, 4]},
           {"id": 7, "image_id": 2, "bbox": [1, 2, 3, 4]},                      # no category_id
           {"id": 8, "category_id": 7, "bbox": [1, 2, 3, 4]},                   # no image_id
           {"id": 9, "image_id": 99, "category_id": 7, "bbox": [1, 2, 3, 4]}]   # an image not listed
    return {"images": images, "annotations": good + bad, "categories": [{"id": 7, "name": "thing"}]}


def test_malformed_annotations_are_named_counted_and_dropped(tmp_path, caplog):
    path = _write(tmp_path, _dataset())
    with caplog.at_level(logging.WARNING):
        dataset = load_coco(path, str(tmp_path / "images"))
    # no category_id / no image_id / an image not listed: malformed; the 4 bad boxes: the loader's counts
    assert dataset.stats["malformed_annotations"] == 3
    assert dataset.stats["non_finite_boxes"] == 3 and dataset.stats["degenerate_boxes"] == 1
    assert sorted(len(r.boxes) for r in dataset.records) == [1, 1]
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "3 malformed annotation(s) dropped" in message and "(id 7) has no category_id" in message
    assert "4 annotation(s) with an unusable bbox" in message and "annotations[2] (id 3) has no bbox" in message


def test_scoring_uses_the_same_annotations(tmp_path):
    """Perfect detections of the two valid boxes score AP 1 on the file with the 7 bad ones."""
    path = _write(tmp_path, _dataset())
    results = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 30, 30], "score": 0.9},
               {"image_id": 2, "category_id": 7, "bbox": [50, 50, 20, 20], "score": 0.8}]
    stats = coco_eval.evaluate(path, results, verbose=False)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


@pytest.mark.parametrize("data,fragment", [
    ('{"images": [{"id": 1, "file_name": "1.jpg"', "is not valid JSON (line 1, column"),
    ({"images": [], "annotations": []}, "has no 'categories' list"),
    ({"annotations": [], "categories": []}, "has no 'images' list"),
    ({"images": [{"file_name": "x.jpg"}], "categories": []}, "images[0] has no integer 'id'"),
    ({"images": [{"id": 1}, {"id": 1}], "categories": []}, "image id 1 is used by more than one image"),
    ({"images": [], "categories": [{"name": "a"}]}, "categories[0] needs an integer 'id' and a 'name'"),
    ([1, 2], "the top level is a list"),
])
def test_broken_files_are_one_error_naming_the_file_and_the_entry(tmp_path, data, fragment):
    path = _write(tmp_path, data)
    with pytest.raises(ValueError) as e:
        read_coco_json(path)
    assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)
    with pytest.raises(ValueError) as e:
        load_coco(path, str(tmp_path / "images"))
    assert fragment in str(e.value)


def test_lhrcnn_test_keeps_the_detections_when_scoring_fails(tmp_path, tmp_path_factory, monkeypatch, capsys):
    import export_fixtures

    from lhrcnn import cli
    from lhrcnn.data.synthetic import write_dataset
    annotations = write_dataset(str(tmp_path / "val"), 2, 7, workers=1)
    checkpoint = export_fixtures.model(tmp_path_factory)["checkpoint"]

    def broken(*args, **kwargs):
        raise KeyError("category_id")

    monkeypatch.setattr(coco_eval, "evaluate", broken)
    overrides = [a for k, v in export_fixtures.SMALL.items() for a in ("--set", f"{k}={v}")]
    status = cli.main(["test", "--experiment", export_fixtures.SYNTHETIC, "--checkpoint", checkpoint,
                       "--annotations", annotations, "--images", str(tmp_path / "val" / "images"),
                       "--output", str(tmp_path / "eval"), *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err[-1].startswith("error: scoring against") and "the detections are kept in" in err[-1]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert isinstance(results, list) and {r["image_id"] for r in results} <= {1, 2}
    assert np.all([len(r["bbox"]) == 4 for r in results])


def test_training_on_a_truncated_json_is_one_error_line(tmp_path):
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    (tmp_path / "img").mkdir()
    (tmp_path / "train.json").write_text('{"images": [{"id": 1, "file_na')
    proc = subprocess.run([sys.executable, "-m", "lhrcnn", "train", "--experiment",
                           os.path.join(root, "experiments/lhrcnn/thundernet.snet146.synthetic"),
                           "--set", "train_annotations=train.json", "--set", "train_images=img", "--steps", "1"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=root))
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error: ") or "Traceback" in l]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: training data: {tmp_path}/train.json is not valid JSON (line 1, column ")
    assert "truncated" in lines[0]
