"""Benchmark of exported SavedModels: latency of the stock-op export (the pure-TF op
twins, what a stock tensorflow_model_server runs) and of the custom-op export, loaded with
tf.saved_model.load, next to the in-process detector, at batch 1 and 8 on this machine.

Rows (one per model, ops and batch; median seconds per call, all variants of one batch size timed
round-robin so their ratios hold on a noisy machine):
  in-process detector   the Keras detector in one tf.function on already preprocessed float
                        images (what the models section times)
  serving_default       the export on uint8 images: resize, mean, padding and checks in the graph
  serve_bytes           the export on JPEG bytes: decoding as well
Columns: model, ops, batch, latency_s, ms_per_image, x_custom (this row / the custom-op row of the
same model and batch), x_in_process (this row / the in-process detector with the same ops and batch).
"""
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks.timing import interleaved_medians

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")
COLUMNS = [("model", "model", "{}"), ("ops", "ops", "{}"), ("batch", "batch", "{}"),
           ("latency_s", "latency s", "{:.3f}"), ("ms_per_image", "ms/image", "{:.1f}"),
           ("x_custom", "x custom-op", "{:.2f}"), ("x_in_process", "x in-process", "{:.2f}")]
TARGET = 1.5  # the stock-op export within 1.5x of the custom-op one


def _images(batch, height, width, seed=0):
    """uint8 [batch, height, width, 3]: smooth backgrounds with bright rectangles (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    out = np.empty([batch, height, width, 3], np.uint8)
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    for b in range(batch):
        image = np.stack([40 + 100 * x, 40 + 100 * y, 90 + 60 * x * y], -1) + rng.normal(0, 8, [height, width, 3])
        for _ in range(6):
            h, w = int(rng.integers(height // 10, height // 3)), int(rng.integers(width // 10, width // 3))
            top, left = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
            image[top:top + h, left:left + w] = rng.integers(120, 256, 3)
        out[b] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def run(repeats=10, batches=(1, 8), experiment=SYNTHETIC, overrides=None, image_size=(480, 640), workdir=None):
    """Times the in-process detector and its two exports (stock ops, custom ops).

    Args:
      repeats: timed calls per variant (median reported), after 2 warm-up calls.
      batches: batch sizes.
      experiment, overrides: the detector (random weights; default: the synthetic Xception* Light-Head).
      image_size: (height, width) of the uint8 input images (resized in the graph to the eval size).
      workdir: where the exports are written (default: a temporary folder, removed after).
    Returns:
      (rows, extra): rows as in the module docstring; extra: input, eval size, export seconds,
      stock_vs_custom (serving_default, per batch), within_target, note.
    """
    from lhrcnn import ops
    from lhrcnn.detector import build_detector
    from lhrcnn.evaluation.coco_eval import inference_function
    from lhrcnn.export import serving
    from lhrcnn.export.saved_model import export_saved_model

    if not ops.custom_ops_available():
        raise RuntimeError(f"the export benchmark compares with the custom ops: {ops.custom_ops_load_error()}")
    overrides = dict(overrides or {})
    detectors = {"tf": build_detector(experiment, ops_backend="tf", **overrides)}
    detectors["custom"] = build_detector(experiment, ops_backend="custom", **overrides)
    detectors["custom"].set_weights(detectors["tf"].get_weights())
    config = detectors["tf"].config
    num_classes = config.num_classes
    own_dir = workdir is None
    workdir = tempfile.mkdtemp(prefix="lhrcnn_export_bench_") if own_dir else workdir
    try:
        exported, export_seconds = {}, {}
        for backend, detector in detectors.items():
            start = time.perf_counter()
            path = export_saved_model(detector, os.path.join(workdir, backend), category_ids=list(range(num_classes)),
                                      verify=False)
            export_seconds[backend] = time.perf_counter() - start
            exported[backend] = tf.saved_model.load(path)

        height, width = image_size
        rows = []
        ratios = {}
        for batch in batches:
            images = _images(batch, height, width, seed=batch)
            jpegs = tf.constant([tf.io.encode_jpeg(image, quality=90).numpy() for image in images])
            images = tf.constant(images)
            prepared, info = tf.function(lambda x: serving.preprocess_images(x, config))(images)
            fns = {}
            for backend in ("custom", "tf"):
                infer = inference_function(detectors[backend])
                default = exported[backend].signatures["serving_default"]
                encoded = exported[backend].signatures["serve_bytes"]
                fns[("in-process detector", backend)] = (
                    lambda f=infer: f(prepared, info)["num_detections"].numpy())
                fns[("serving_default", backend)] = lambda f=default: f(images=images)["num_detections"].numpy()
                fns[("serve_bytes", backend)] = lambda f=encoded: f(image_bytes=jpegs)["num_detections"].numpy()
            seconds = interleaved_medians(fns, warmup=2, repeats=repeats)
            for (model, backend), s in seconds.items():
                rows.append({"model": model, "ops": backend, "batch": batch, "latency_s": s,
                             "ms_per_image": 1000 * s / batch, "x_custom": s / seconds[(model, "custom")],
                             "x_in_process": s / seconds[("in-process detector", backend)]})
            ratios[str(batch)] = seconds[("serving_default", "tf")] / seconds[("serving_default", "custom")]
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    within = all(r <= TARGET for r in ratios.values())
    extra = {
        "experiment": os.path.relpath(experiment, ROOT), "input": f"{height}x{width} uint8",
        "eval_size": f"short {config.eval_image_short_size}, max {config.eval_image_max_size}",
        "serve_bytes_input": "JPEG, quality 90", "repeats": repeats, "cpus": os.cpu_count(),
        "export_seconds": export_seconds, "stock_vs_custom": ratios, "target": TARGET, "within_target": within,
        "note": _note(ratios, within),
    }
    return rows, extra


def _note(ratios, within):
    measured = ", ".join(f"batch {b}: {r:.2f}x" for b, r in ratios.items())
    if within:
        return (f"stock-op export / custom-op export (serving_default) = {measured}: within {TARGET}x, so the "
                "default (stock-op) export costs little against a server built with the compiled ops")
    return (f"stock-op export / custom-op export (serving_default) = {measured}: NOT within {TARGET}x. The "
            "difference is the pure-TF twins of PS-RoI-Align (gathers of every sample's four taps) and of NMS "
            "(a map_fn over image x class problems); a server built with //ops:lhrcnn_ops (--ops custom) "
            "avoids it")
