"""Shared material of the export and serving tests: the synthetic detector at a small eval size
with fresh weights (a checkpoint, and one detector per op backend reading it), its exports (made
once per test session), test images, and the in-process reference detections."""
import io
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")
# Small inference: 64 px short side (long side <= 96), few proposals and detections.
SMALL = dict(eval_image_short_size=64, eval_image_max_size=96, test_rpn_pre_nms_top_n=300,
             test_rpn_post_nms_top_n=40, test_max_detections=20)
# Non-contiguous category ids of the synthetic classes, in an annotation file written for the tests.
CATEGORY_IDS = {"circle": 11, "square": 22, "triangle": 33, "ring": 44, "frame": 55, "cross": 66}

_cache = {}


def make_image(height, width, seed):
    """[height, width, 3] uint8: noise on a grey background with two bright rectangles."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, (height, width, 3)).astype(np.uint8)
    for _ in range(2):
        h, w = int(rng.integers(height // 4, height // 2)), int(rng.integers(width // 4, width // 2))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        image[y:y + h, x:x + w] = rng.integers(150, 256, 3)
    return image


def encode(image, fmt):
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def model(tmp_path_factory):
    """dict: root, checkpoint, annotations, category_ids (per class index), detectors {"tf",
    "custom"} (same weights), built once per session."""
    if "model" not in _cache:
        import tensorflow as tf

        from lhrcnn.config import load_config
        from lhrcnn.detector import build_detector, load_detector
        root = tmp_path_factory.mktemp("export_model")
        tf.keras.utils.set_random_seed(0)  # the same fresh weights in every run, whatever ran before
        detector = build_detector(SYNTHETIC, ops_backend="tf", **SMALL)
        prefix = str(root / "model_dump" / "ckpt-1")
        tf.train.Checkpoint(model=detector).write(prefix)
        annotations = root / "annotations.json"
        annotations.write_text(json.dumps({"images": [], "annotations": [], "categories": [
            {"id": i, "name": n} for n, i in CATEGORY_IDS.items()]}))
        names = load_config(SYNTHETIC).class_names
        _cache["model"] = {
            "root": root, "checkpoint": prefix, "annotations": str(annotations),
            "category_ids": [0] + [CATEGORY_IDS[n] for n in names[1:]],
            "detectors": {"tf": detector},  # the custom-op one is loaded on first use
            "load": lambda backend: load_detector(SYNTHETIC, checkpoint=prefix, ops_backend=backend, **SMALL),
        }
    return _cache["model"]


def detector(tmp_path_factory, backend):
    m = model(tmp_path_factory)
    if backend not in m["detectors"]:
        m["detectors"][backend] = m["load"](backend)
    return m["detectors"][backend]


def export(tmp_path_factory, backend):
    """<base>/1 of the detector exported with `backend` ops (once per session)."""
    key = f"export_{backend}"
    if key not in _cache:
        from lhrcnn.export.saved_model import export_saved_model
        m = model(tmp_path_factory)
        base = m["root"] / f"models_{backend}" / "lhrcnn"
        _cache[key] = export_saved_model(detector(tmp_path_factory, backend), str(base),
                                         category_ids=m["category_ids"], verify=backend == "tf")
    return _cache[key]


def reference_outputs(detector, images, category_ids):
    """What an export should answer for `images` (list of [H, W, 3] uint8, any sizes), from the
    in-process detector: each image preprocessed by the eval path
    (lhrcnn.evaluation.preprocess.preprocess_image), the batch zero-padded to its largest image
    as the eval pipeline's padded_batch does, the detector's outputs in the served form."""
    from lhrcnn.evaluation.coco_eval import inference_function
    from lhrcnn.evaluation.preprocess import preprocess_image
    prepared = [preprocess_image(image, detector.config) for image in images]
    height = max(int(p.shape[1]) for p, _ in prepared)
    width = max(int(p.shape[2]) for p, _ in prepared)
    batch = np.stack([np.pad(np.asarray(p)[0], ((0, height - p.shape[1]), (0, width - p.shape[2]), (0, 0)))
                      for p, _ in prepared])
    info = np.concatenate([np.asarray(i) for _, i in prepared])
    if id(detector) not in _cache:  # one trace per detector
        _cache[id(detector)] = inference_function(detector)
    out = {k: np.asarray(v) for k, v in _cache[id(detector)](batch, info).items()}
    boxes = out["boxes"]
    sizes = info[:, 3:5]  # original h, w
    normalised = np.stack([boxes[..., 1] / sizes[:, :1], boxes[..., 0] / sizes[:, 1:],
                           boxes[..., 3] / sizes[:, :1], boxes[..., 2] / sizes[:, 1:]], axis=-1)
    table = np.asarray(category_ids, np.float32)
    table[0] = 0
    return {"detection_boxes": normalised, "detection_scores": out["scores"],
            "detection_classes": table[out["classes"]], "num_detections": out["num_detections"].astype(np.float32),
            "detection_boxes_pixels": boxes}


def assert_same_detections(actual, expected, what=""):
    """Same number of detections, same classes in the same order, boxes within 1e-3 relative
    (pixels: + 1e-3 absolute), scores within 1e-5."""
    np.testing.assert_array_equal(np.asarray(actual["num_detections"]), expected["num_detections"], err_msg=what)
    for b, n in enumerate(expected["num_detections"].astype(int)):
        np.testing.assert_array_equal(np.asarray(actual["detection_classes"])[b, :n],
                                      expected["detection_classes"][b, :n], err_msg=f"{what} image {b}")
        for key, atol in (("detection_boxes_pixels", 1e-3), ("detection_boxes", 1e-5)):
            np.testing.assert_allclose(np.asarray(actual[key])[b, :n], expected[key][b, :n], rtol=1e-3, atol=atol,
                                       err_msg=f"{what} image {b} {key}")
        np.testing.assert_allclose(np.asarray(actual["detection_scores"])[b, :n], expected["detection_scores"][b, :n],
                                   rtol=1e-4, atol=1e-5, err_msg=f"{what} image {b} scores")
