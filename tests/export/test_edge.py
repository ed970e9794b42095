"""Edge exports (lhrcnn/export/edge.py, edge_runtime.py): LiteRT and ONNX models of the synthetic
ThunderNet SNet146 (fresh weights, at a small eval size) give the TF detector's detections, use
builtin / standard ops only, quantise, run in a process that cannot import TensorFlow, and are
evaluated by `lhrcnn test --model` with the TF model's COCO code; the Xception* Light-Head converts
too. (ThunderNet's He-initialised head gives fresh weights unsaturated scores; the Xception* one's
saturate at 1.0, where float noise reorders the ties, so its outputs are checked for form only.)"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support"))
import export_fixtures  # noqa: E402

from lhrcnn.export import edge, edge_runtime  # noqa: E402

ROOT = export_fixtures.ROOT
THUNDERNET = os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.synthetic")
SIZE = (128, 192)  # the eval size below: short 128, long at most 192, so a 128 x 192 image is not resized
SMALL = dict(eval_image_short_size=128, eval_image_max_size=192, test_rpn_pre_nms_top_n=300,
             test_rpn_post_nms_top_n=40, test_max_detections=20)
_cache = {}  # the model and its exports, made once and shared by the tests below
pytestmark = pytest.mark.xdist_group("edge exports")  # so that a parallel run makes them once, too


def _model(tmp_path_factory):
    """ThunderNet with fresh weights: checkpoint, detector (twins), category ids (non-contiguous)."""
    if "model" not in _cache:
        from lhrcnn.config import load_config
        from lhrcnn.detector import build_detector
        root = tmp_path_factory.mktemp("edge_model")
        tf.keras.utils.set_random_seed(0)  # the same fresh weights every run
        detector = build_detector(THUNDERNET, ops_backend="tf", **SMALL)
        prefix = str(root / "ckpt-1")
        tf.train.Checkpoint(model=detector).write(prefix)
        names = load_config(THUNDERNET).class_names
        _cache["model"] = {"checkpoint": prefix, "detector": detector,
                           "category_ids": [0] + [export_fixtures.CATEGORY_IDS[n] for n in names[1:]]}
    return _cache["model"]


def _export(tmp_path_factory, fmt, quantize="none"):
    key = (fmt, quantize)
    if key not in _cache:
        m = _model(tmp_path_factory)
        calibration = _calibration_set(tmp_path_factory) if quantize == "int8" else None
        out = tmp_path_factory.mktemp("edge") / f"{fmt}_{quantize}"
        _cache[key] = edge.export_edge(
            THUNDERNET, m["checkpoint"], str(out), fmt=fmt, quantize=quantize, input_size=SIZE, overrides=SMALL,
            category_ids=m["category_ids"], calibration_dataset=calibration, calibration_images=8)
    return _cache[key]


def _calibration_set(tmp_path_factory):
    from lhrcnn.data.coco import load_coco
    from lhrcnn.data.synthetic import write_dataset
    root = tmp_path_factory.mktemp("calibration")
    annotations = write_dataset(str(root), 8, 31, workers=1)
    from lhrcnn.config import load_config
    return load_coco(annotations, str(root / "images"), class_names=load_config(THUNDERNET).class_names)


def _image(seed=0):
    return export_fixtures.make_image(*SIZE, seed)


def _model_file(folder):
    (name,) = [f for f in os.listdir(folder) if f.startswith("model.")]
    return os.path.join(folder, name)


def _matched(actual, expected, score_atol):
    """Fraction of the expected detections (num, classes, pixel boxes, scores) that an actual
    detection of the same class matches: every box coordinate within 1e-3 relative (+ 1e-3 px)
    and the score within score_atol. Order-free: random weights give near-equal scores, which
    float noise may reorder."""
    def rows(out):
        n = int(np.asarray(out["num_detections"]).reshape(-1)[0])
        return (np.asarray(out["detection_boxes_pixels"])[0, :n], np.asarray(out["detection_scores"])[0, :n],
                np.asarray(out["detection_classes"])[0, :n])
    a_boxes, a_scores, a_classes = rows(actual)
    e_boxes, e_scores, e_classes = rows(expected)
    if not len(e_scores):
        return 1.0 if not len(a_scores) else 0.0
    hits = 0
    for box, score, cls in zip(e_boxes, e_scores, e_classes):
        close = np.all(np.abs(a_boxes - box) <= 1e-3 * np.abs(box) + 1e-3, axis=1)
        hits += bool(np.any((a_classes == cls) & close & (np.abs(a_scores - score) <= score_atol)))
    return hits / len(e_scores)


# ----------------------------------------------------------------------------- the NumPy letterbox


@pytest.mark.parametrize("shape,size", [((37, 53, 3), (64, 90)), ((200, 120, 3), (50, 31)), ((5, 7, 3), (64, 96)),
                                        ((64, 96, 3), (64, 96))])
def test_resize_is_tensorflows_bilinear(shape, size):
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape).astype(np.uint8)
    ours = edge_runtime.resize_bilinear(image, *size)
    theirs = tf.image.resize(image, size, method="bilinear").numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-3, rtol=0)


def test_letterbox_places_the_eval_resize_at_the_top_left():
    from lhrcnn.data import preprocess
    image = np.random.default_rng(3).integers(0, 256, (120, 150, 3)).astype(np.uint8)
    mean = (10.2, 20.7, 200.5)
    canvas, scale = edge_runtime.letterbox(image, 64, 96, 64, 96, mean)
    resized, info = preprocess.resize(image, 64, 96)
    h, w = int(info[0]), int(info[1])
    assert scale == pytest.approx(float(info[2])) and (h, w) == (64, 80)
    assert np.abs(canvas[:h, :w].astype(int) - np.round(resized.numpy()).astype(int)).max() <= 1
    assert np.all(canvas[:, w:] == np.array([10, 21, 200], np.uint8))
    # too large for the canvas: shrunk to fit, never above the eval rule's scale
    canvas, scale = edge_runtime.letterbox(image, 40, 40, 64, 96, mean)
    assert scale == pytest.approx(40 / 150) and canvas.shape == (40, 40, 3)
    with pytest.raises(ValueError, match="RGB image"):
        edge_runtime.letterbox(np.zeros([4, 4]), 8, 8, 8, 8, mean)
    # a model that scales its 128 x 192 canvas by 0.5 (eval short side 64): the canvas content is
    # at eval scale / 0.5, so that the image ends at the eval scale inside the model
    model_scale = edge_runtime.eval_scale(128, 192, 64, 96)
    assert model_scale == pytest.approx(0.5)
    canvas, scale = edge_runtime.letterbox(image, 128, 192, 64, 96, mean, model_scale)
    assert scale * model_scale == pytest.approx(float(info[2])) and np.any(canvas[127, :150] != canvas[0, -1])


# ----------------------------------------------------------------------------- LiteRT and ONNX


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_float_export_gives_the_detectors_detections(fmt, tmp_path_factory):
    folder = _export(tmp_path_factory, fmt)
    m = _model(tmp_path_factory)
    model = edge_runtime.EdgeModel(_model_file(folder))
    for seed in range(3):
        image = _image(seed)
        expected = export_fixtures.reference_outputs(m["detector"], [image], m["category_ids"])
        actual = model.run(image)
        assert sorted(actual) == sorted(edge_runtime.OUTPUT_NAMES)
        assert np.ptp(expected["detection_scores"][0]) > 1e-5  # not saturated (all 1.0): a meaningful comparison
        assert int(actual["num_detections"][0]) == int(expected["num_detections"][0])
        assert _matched(actual, expected, 1e-4) >= 0.95, f"{fmt} image {seed}"
        np.testing.assert_allclose(np.sort(actual["detection_scores"][0]), np.sort(expected["detection_scores"][0]),
                                   atol=1e-4)
    info = json.load(open(os.path.join(folder, "export_info.json")))
    assert info["input_size"] == list(SIZE) and info["format"] == fmt and info["quantize"] == "none"
    assert json.load(open(os.path.join(folder, "label_map.json"))) == {
        str(i): n for n, i in export_fixtures.CATEGORY_IDS.items()}
    if fmt == "tflite":
        assert "NON_MAX_SUPPRESSION_V4" in info["ops"] and "WHILE" not in info["ops"]
        assert not [op for op in info["ops"] if op.startswith("CUSTOM")]
        assert info["int8_ops"] == []
    else:
        assert "NonMaxSuppression" in info["ops"] and info["opset"] == edge.ONNX_OPSET
        assert not [op for op in info["ops"] if "::" in op]


@pytest.mark.slow
def test_detect_maps_boxes_back_to_the_image(tmp_path_factory):
    """An image twice the canvas: letterboxed at scale 1/2, its boxes come back in its pixels and
    match the detector's run on the image itself (the same eval rule) within resampling noise."""
    model = edge_runtime.EdgeModel(_model_file(_export(tmp_path_factory, "tflite")))
    small = _image(7)
    large = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    boxes_small, scores_small, classes_small, _ = model.detect(small, score_threshold=0.0)
    boxes_large, scores_large, classes_large, _ = model.detect(large, score_threshold=0.0)
    assert np.all(boxes_large[:, 2] <= 2 * SIZE[1] - 1) and np.all(boxes_large[:, 3] <= 2 * SIZE[0] - 1)
    top = min(5, len(scores_small))
    # 2x nearest-neighbour upsampling resized back by bilinear at 1/2 is the image itself (pixel centres)
    np.testing.assert_allclose(boxes_large[:top] / 2, boxes_small[:top], atol=0.5)
    np.testing.assert_array_equal(classes_large[:top], classes_small[:top])


@pytest.mark.slow(seconds=35)
@pytest.mark.parametrize("quantize", ["float16", "dynamic", "int8"])
def test_quantised_exports(quantize, tmp_path_factory):
    folder = _export(tmp_path_factory, "tflite", quantize)
    float_size = os.path.getsize(_model_file(_export(tmp_path_factory, "tflite")))
    info = json.load(open(os.path.join(folder, "export_info.json")))
    assert info["quantize"] == quantize and os.path.getsize(_model_file(folder)) < 0.6 * float_size
    model = edge_runtime.EdgeModel(_model_file(folder))
    out = model.run(_image(1))
    n = int(out["num_detections"][0])
    assert 0 <= n <= export_fixtures.SMALL["test_max_detections"]
    boxes = out["detection_boxes_pixels"][0, :n]
    assert np.all(np.isfinite(boxes)) and np.all(boxes >= 0) and np.all(boxes[:, 2] <= SIZE[1])
    if quantize == "int8":
        assert info["calibration_images"] == 8
        assert {"CONV_2D", "FULLY_CONNECTED"} <= set(info["int8_ops"]), info["int8_ops"]
        assert "NON_MAX_SUPPRESSION_V4" in info["float_ops"]  # boxes, NMS and outputs stay float
    if quantize == "float16":
        m = _model(tmp_path_factory)
        expected = export_fixtures.reference_outputs(m["detector"], [_image(1)], m["category_ids"])
        np.testing.assert_allclose(np.sort(out["detection_scores"][0]), np.sort(expected["detection_scores"][0]),
                                   atol=2e-2)


# Runs an edge model where TensorFlow cannot be imported: site-packages is not on sys.path (-S),
# only a folder linking NumPy, the runtime and their pure dependencies, and lhrcnn itself.
_NO_TF = """
import json, sys
sys.path[:0] = sys.argv[1].split(":")
try:
    import tensorflow
    raise SystemExit("tensorflow is importable")
except ImportError:
    pass
import numpy as np
from lhrcnn.export.edge_runtime import EdgeModel
model = EdgeModel(sys.argv[2])
image = np.load(sys.argv[3])
out = model.run(image)
assert "tensorflow" not in sys.modules
np.savez(sys.argv[4], **out)
print(json.dumps({"provider": model.provider}))
"""
_RUNTIME_PACKAGES = {"tflite": ["ai_edge_litert", "numpy", "flatbuffers", "ml_dtypes"],
                     "onnx": ["onnxruntime", "numpy", "flatbuffers", "packaging", "ml_dtypes", "google", "sympy",
                              "mpmath", "coloredlogs", "humanfriendly"]}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_runs_without_tensorflow(fmt, tmp_path_factory, tmp_path):
    import numpy
    site = os.path.dirname(os.path.dirname(numpy.__file__))
    links = tmp_path / "site"
    links.mkdir()
    for name in _RUNTIME_PACKAGES[fmt]:
        if os.path.exists(os.path.join(site, name)):
            os.symlink(os.path.join(site, name), links / name)
    lhrcnn_only = tmp_path / "src"
    lhrcnn_only.mkdir()
    os.symlink(os.path.join(ROOT, "lhrcnn"), lhrcnn_only / "lhrcnn")
    path = _model_file(_export(tmp_path_factory, fmt))
    image = _image(2)
    np.save(tmp_path / "image.npy", image)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    proc = subprocess.run([sys.executable, "-S", "-E", "-c", _NO_TF, f"{links}:{lhrcnn_only}", path,
                           str(tmp_path / "image.npy"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = dict(np.load(tmp_path / "out.npz"))
    here = edge_runtime.EdgeModel(path).run(image)
    for name in edge_runtime.OUTPUT_NAMES:
        np.testing.assert_array_equal(child[name], here[name], err_msg=name)


@pytest.mark.slow
def test_lhrcnn_test_evaluates_an_edge_model_with_the_coco_code(tmp_path_factory, tmp_path):
    """`lhrcnn test --model` against an independent evaluation: the TF detector's detections on
    the letterboxed images, mapped back by hand, through pycocotools directly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from lhrcnn.data.synthetic import write_dataset
    annotations = write_dataset(str(tmp_path / "val"), 4, 41, workers=1)
    folder = _export(tmp_path_factory, "tflite")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "lhrcnn", "test", "--model", _model_file(folder), "--annotations",
                           annotations, "--images", str(tmp_path / "val" / "images"), "--output",
                           str(tmp_path / "eval")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert metrics["format"] == "tflite" and metrics["images"] == 4

    m = _model(tmp_path_factory)
    model = edge_runtime.EdgeModel(_model_file(folder))
    function = edge.edge_function(m["detector"], SIZE, m["category_ids"])
    gt = COCO(annotations)
    names = {c["name"]: c["id"] for c in gt.loadCats(gt.getCatIds())}
    to_dataset = {i: names[n] for n, i in export_fixtures.CATEGORY_IDS.items()}  # export ids -> this json's
    results = []
    from PIL import Image
    for image_id in sorted(gt.getImgIds()):
        entry = gt.loadImgs(image_id)[0]
        pixels = np.asarray(Image.open(tmp_path / "val" / "images" / entry["file_name"]).convert("RGB"))
        canvas, scale = model.letterbox(pixels)
        out = {k: v.numpy() for k, v in function(tf.constant(canvas[None])).items()}
        for k in range(int(out["num_detections"][0])):
            x1, y1, x2, y2 = np.clip(out["detection_boxes_pixels"][0, k] / scale, 0,
                                     [entry["width"] - 1, entry["height"] - 1] * 2)
            results.append({"image_id": image_id, "category_id": to_dataset[int(out["detection_classes"][0, k])],
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                            "score": float(out["detection_scores"][0, k])})
    assert results
    evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluation.evaluate(); evaluation.accumulate(); evaluation.summarize()
    assert metrics["AP"] == pytest.approx(evaluation.stats[0], abs=0.02)
    assert metrics["AR100"] == pytest.approx(evaluation.stats[8], abs=0.02)


@pytest.mark.slow(seconds=36)
def test_ps_roi_pooling_converts_with_float32_sums(tmp_path_factory):
    """The PS-RoI-pooling twin sums in float64, which LiteRT lacks: the edge trace sums in
    float32, and the detections stay the detector's."""
    from lhrcnn.detector import build_detector
    root = tmp_path_factory.mktemp("pool")
    overrides = dict(SMALL, roi_pooling="ps_roi_pool")
    detector = build_detector(THUNDERNET, ops_backend="tf", **overrides)
    tf.train.Checkpoint(model=detector).write(str(root / "ckpt-1"))
    ids = _model(tmp_path_factory)["category_ids"]
    folder = edge.export_edge(THUNDERNET, str(root / "ckpt-1"), str(root / "out"), fmt="tflite", input_size=SIZE,
                              overrides=overrides, category_ids=ids)
    info = json.load(open(os.path.join(folder, "export_info.json")))
    assert not [op for op in info["ops"] if op.startswith("CUSTOM")]
    expected = export_fixtures.reference_outputs(detector, [_image(4)], ids)
    actual = edge_runtime.EdgeModel(_model_file(folder)).run(_image(4))
    assert _matched(actual, expected, 1e-3) >= 0.9


@pytest.mark.slow(seconds=26)
def test_the_xception_light_head_converts(tmp_path_factory):
    m = export_fixtures.model(tmp_path_factory)
    folder = edge.export_edge(export_fixtures.SYNTHETIC, m["checkpoint"], str(tmp_path_factory.mktemp("x") / "x"),
                              fmt="tflite", input_size=(64, 96), overrides=export_fixtures.SMALL,
                              category_ids=m["category_ids"])
    info = json.load(open(os.path.join(folder, "export_info.json")))
    assert not [op for op in info["ops"] if op.startswith("CUSTOM")] and "WHILE" not in info["ops"]
    out = edge_runtime.EdgeModel(_model_file(folder)).run(export_fixtures.make_image(64, 96, 0))
    n = int(out["num_detections"][0])
    assert n == export_fixtures.SMALL["test_max_detections"]
    assert set(out["detection_classes"][0, :n].astype(int)) <= set(export_fixtures.CATEGORY_IDS.values())


@pytest.mark.slow
def test_predict_model_takes_any_image_file_and_names_bad_ones(tmp_path_factory, tmp_path):
    """lhrcnn predict --model: images of other sizes, grey and RGBA images are letterboxed and
    converted; a file that is not an image and a wrong array are one clear error."""
    from PIL import Image
    model_path = _model_file(_export(tmp_path_factory, "tflite"))
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (37, 900, 3)).astype(np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(rng.integers(0, 256, (300, 40)).astype(np.uint8), "L").save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 4)).astype(np.uint8), "RGBA").save(tmp_path / "rgba.png")
    (tmp_path / "not_an_image.jpg").write_bytes(b"hello")
    env = dict(os.environ, PYTHONPATH=ROOT)

    def predict(*images):
        return subprocess.run([sys.executable, "-m", "lhrcnn", "predict", "--model", model_path, *images, "--output",
                               str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)

    done = predict(*(str(tmp_path / n) for n in ("wide.png", "grey.png", "rgba.png")))
    assert done.returncode == 0, done.stderr[-2000:]
    for name, (h, w) in (("wide", (37, 900)), ("grey", (300, 40)), ("rgba", (64, 64))):
        report = json.load(open(tmp_path / "out" / f"{name}_detections.json"))
        assert (report["height"], report["width"]) == (h, w)
        for det in report["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= w - 1 and 0 <= y1 <= y2 <= h - 1, det
    bad = predict(str(tmp_path / "not_an_image.jpg"))
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 1 and lines[-1].startswith("error: ") and "not_an_image.jpg" in lines[-1], bad.stderr
    assert "Traceback" not in bad.stderr
    model = edge_runtime.EdgeModel(model_path)
    with pytest.raises(ValueError, match=r"takes uint8 \[1, 128, 192, 3\], got float32"):
        model.run(np.zeros([1, *SIZE, 3], np.float32))
    with pytest.raises(ValueError, match="RGB image"):
        model.detect(np.zeros([10, 10], np.uint8))


def test_bad_requests_are_named(tmp_path):
    with pytest.raises(ValueError, match="input size"):
        edge.parse_input_size("320by320")
    with pytest.raises(ValueError, match="between 16 and 4096"):
        edge.parse_input_size("8x8")
    assert edge.parse_input_size("320") == (320, 320) and edge.parse_input_size("240x320") == (240, 320)
    with pytest.raises(RuntimeError, match=r"CUSTOM:FlexCropAndResize"):
        edge.check_tflite_ops({"CONV_2D": {"float32": 3}, "CUSTOM:FlexCropAndResize": {"float32": 1}})
    with pytest.raises(RuntimeError, match="com.microsoft::FusedConv"):
        edge.check_onnx_ops({"Conv": 3, "com.microsoft::FusedConv": 1})
    assert edge._unsupported_ops("... 'tf.CropAndResize' op is neither a custom op nor a flex op; 'tf.Foo'") == [
        "CropAndResize", "Foo"]
    (tmp_path / "model.tflite").write_bytes(b"x")  # no export_info.json beside it
    with pytest.raises(FileNotFoundError, match="export_info.json"):
        edge_runtime.EdgeModel(str(tmp_path / "model.tflite"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        edge_runtime.EdgeModel(str(tmp_path / "nothing.tflite"))


@pytest.mark.parametrize("argv,fragment", [
    (["--format", "onnx", "--quantize", "int8"], "--format onnx is float32"),
    (["--format", "tflite", "--ops", "custom"], "stock ops only"),
    (["--format", "tflite", "--version", "3"], "--version is for SavedModels"),
    (["--format", "tflite", "--input-size", "3x3"], "--input-size"),
    (["--quantize", "int8"], "apply to --format tflite / onnx"),
    (["--no-resize"], "apply to --format tflite / onnx"),
])
def test_export_flags_are_checked_first(argv, fragment, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "lhrcnn", "export", "--experiment", export_fixtures.SYNTHETIC,
                           "--output", str(tmp_path / "out"), *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
