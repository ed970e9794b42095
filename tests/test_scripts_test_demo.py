"""scripts/test.py and scripts/demo.py end to end in a subprocess, on the synthetic experiment
with freshly initialised weights and a three-image COCO set written here; user errors give one
line naming the path and a non-zero exit."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")
TEST_PY = os.path.join(ROOT, "scripts/test.py")
DEMO_PY = os.path.join(ROOT, "scripts/demo.py")
CATEGORY_IDS = {"circle": 10, "square": 20, "ring": 40}  # non-contiguous, a subset of the classes
IMAGES = {1: (48, 64), 2: (64, 40), 3: (40, 40)}  # image id -> (h, w)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A checkpoint of the synthetic detector (fresh weights), 3 images and their COCO json."""
    import tensorflow as tf
    from PIL import Image

    from lhrcnn.detector import build_detector
    root = tmp_path_factory.mktemp("scripts")
    prefix = str(root / "model_dump" / "ckpt-1")
    # Seeded: with unseeded random weights, every detection could fall in a class the three-category
    # json does not map (triangle, frame, cross), which made "detects something" below flaky.
    tf.keras.utils.set_random_seed(0)
    tf.train.Checkpoint(model=build_detector(SYNTHETIC)).write(prefix)
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    gt = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for n, i in CATEGORY_IDS.items()]}
    for image_id, (h, w) in IMAGES.items():
        pixels = np.full([h, w, 3], 40, np.uint8)
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        pixels[y:y + h // 3, x:x + w // 3] = (230, 200, 20)
        Image.fromarray(pixels).save(root / "images" / f"im{image_id}.png")
        gt["images"].append({"id": image_id, "height": h, "width": w, "file_name": f"im{image_id}.png"})
        gt["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 20,
                                  "bbox": [x, y, w // 3, h // 3], "area": (w // 3) * (h // 3), "iscrowd": 0})
    (root / "annotations.json").write_text(json.dumps(gt))
    (root / "junk.jpg").write_bytes(b"this is no image")
    return root, prefix


def run_script(script, *args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_user_error(proc, *names):
    """Exit status 1, the last stderr line names the path, no traceback."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(str(n) in last for n in names), proc.stderr


def test_test_py_end_to_end(workspace):
    root, prefix = workspace
    out = root / "eval_dump"
    proc = run_script(TEST_PY, "--experiment", SYNTHETIC, "--checkpoint", root / "model_dump",
                      "--annotations", root / "annotations.json", "--images", root / "images",
                      "--output", out, "--max-images", 2, "--batch-size", 2, cwd=root)  # 2 sizes in one batch
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
                 "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]"):
        assert line in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    assert all(-1.0 <= metrics[n] <= 1.0 for n in names)
    assert metrics["images"] == 2 and metrics["images_per_second"] > 0
    assert metrics["checkpoint"] == os.path.abspath(prefix)
    results = json.loads((out / "results.json").read_text())
    assert results, "a random detector with score threshold 0.01 still detects something"
    assert {r["image_id"] for r in results} <= {1, 2}  # --max-images 2: the first two images
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS.values())
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0 for r in results)


def test_test_py_user_errors(workspace, tmp_path):
    root, _ = workspace
    common = ["--experiment", SYNTHETIC, "--output", root / "unused"]
    proc = run_script(TEST_PY, *common, "--annotations", root / "nope.json", "--images", root / "images", cwd=root)
    assert_user_error(proc, root / "nope.json")
    proc = run_script(TEST_PY, *common, "--annotations", root / "annotations.json", "--images", root / "nodir",
                      cwd=root)
    assert_user_error(proc, root / "nodir")
    proc = run_script(TEST_PY, *common, "--annotations", root / "annotations.json", "--images", root / "images",
                      "--checkpoint", root / "model_dump" / "ckpt-9", cwd=root)
    assert_user_error(proc, root / "model_dump" / "ckpt-9")
    proc = run_script(TEST_PY, "--experiment", root / "no_experiment", cwd=root)
    assert_user_error(proc, root / "no_experiment")
    # The config's eval_annotations (data/synthetic/val/...) resolve against the working directory.
    assert_user_error(run_script(TEST_PY, *common, cwd=tmp_path), tmp_path / "data/synthetic/val/annotations.json")


def test_demo_py_end_to_end(workspace):
    from PIL import Image
    root, prefix = workspace
    out = root / "demo"
    proc = run_script(DEMO_PY, "--experiment", SYNTHETIC, "--checkpoint", prefix, "--output", out,
                      "--score-threshold", 0.0, root / "images" / "im1.png", root / "images" / "im2.png", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, (h, w) in (("im1", IMAGES[1]), ("im2", IMAGES[2])):
        with Image.open(out / f"{name}_detections.png") as png:
            assert png.size == (w, h) and png.mode == "RGB"
        report = json.loads((out / f"{name}_detections.json").read_text())
        assert (report["height"], report["width"]) == (h, w)
        detections = report["detections"]
        assert 0 < len(detections) <= 100
        for det in detections:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert det["class"] in ("circle", "square", "triangle", "ring", "frame", "cross") and det["score"] >= 0
    assert sorted(os.listdir(out)) == ["im1_detections.json", "im1_detections.png", "im2_detections.json",
                                       "im2_detections.png"]


def test_demo_py_user_errors(workspace):
    root, prefix = workspace
    common = ["--experiment", SYNTHETIC, "--output", root / "demo_errors"]
    proc = run_script(DEMO_PY, *common, "--checkpoint", prefix, root / "images" / "im1.png", root / "missing.png",
                      cwd=root)
    assert_user_error(proc, root / "missing.png")
    assert_user_error(run_script(DEMO_PY, *common, "--checkpoint", prefix, root / "junk.jpg", cwd=root),
                      root / "junk.jpg")
    assert not (root / "demo_errors").exists() or not os.listdir(root / "demo_errors")
