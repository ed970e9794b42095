"""Benchmark of whole detectors on this machine: inference latency (batch 1, median
after warm-up), GFLOP (TF profiler on the inference graph; multiply-adds x 2), the arithmetic
floor (GFLOP / measured GEMM throughput), the split between backbone, RPN + proposals, thin
feature map, R-CNN subnet and post-processing, and the training step time."""
import os
import time

import numpy as np
import tensorflow as tf

from benchmarks.timing import interleaved_medians, median_seconds
from lhrcnn.config import COCO_CLASS_NAMES
from lhrcnn.detector import build_detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R101 = os.path.join(ROOT, "experiments/lizeming/light_head_rcnn.ori_res101.coco.ps_roialign")
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")

# (name, experiment, config overrides, inference size)
MODELS = {
    "r101": ("Light-Head R-CNN R-101 PS-RoI-Align (COCO)", R101, {}, (800, 1333)),
    # The paper's fast model: Xception* + (15, 64, 490) thin map, COCO classes and anchors.
    "xception": ("Light-Head R-CNN Xception* (COCO)", SYNTHETIC,
                 dict(class_names=COCO_CLASS_NAMES, anchor_scales=(2, 4, 8, 16, 32), box_offset=1.0,
                      test_rpn_pre_nms_top_n=6000, test_rpn_post_nms_top_n=1000, test_score_threshold=0.0),
                 (700, 1100)),
    "synthetic": ("synthetic Xception* (7 classes)", SYNTHETIC, {}, (320, 512)),
}


def gemm_gflops(n=4096, repeats=5):
    """Throughput of TF's float32 matmul, the arithmetic ceiling used for the floor."""
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    mm = tf.function(lambda: tf.matmul(a, b))
    seconds = median_seconds(lambda: mm().numpy(), warmup=2, repeats=repeats)
    return 2 * n ** 3 / seconds / 1e9


def count_gflop(concrete_function):
    from tensorflow.python.profiler import model_analyzer, option_builder
    opts = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
    opts = opts.with_empty_output().build()
    info = model_analyzer.profile(graph=concrete_function.graph, options=opts)
    return info.total_float_ops / 1e9


def _inputs(height, width, batch=1, seed=0, scale=50.0):
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.normal(0, scale, (batch, height, width, 3)).astype(np.float32))
    info = tf.constant([[height, width, 1.0, height, width]] * batch, tf.float32)
    return {"images": images, "image_info": info}


def bench_inference(detector, height, width, repeats):
    """Whole-model latency and the per-stage split (each stage timed alone on its real inputs)."""
    x = _inputs(height, width)
    full = tf.function(lambda x: detector(x))
    backbone = tf.function(lambda images: detector.features(images))
    features = backbone(x["images"])

    rpn = tf.function(lambda features: detector.rpn(features, x["image_info"])[0])
    proposals = rpn(features)
    rois, valid = proposals["rois"], proposals["valid"]
    thin = tf.function(lambda features: detector.roi_heads.head_input(features))
    thin_map = thin(features)
    subnet = tf.function(lambda thin_map, rois: detector.roi_heads.box_head(thin_map, rois))
    class_logits, box_deltas = subnet(thin_map, rois)
    post = tf.function(lambda cl, bd, r, v: detector.roi_heads.detect(cl, bd, r, v, x["image_info"]))
    times = interleaved_medians({
        "total": lambda: full(x)["boxes"].numpy(),
        "backbone": lambda: {k: v.numpy() for k, v in backbone(x["images"]).items()},
        "rpn_proposals": lambda: rpn(features)["rois"].numpy(),
        "thin_map": lambda: thin(features).numpy(),
        "rcnn_subnet": lambda: subnet(thin_map, rois)[0].numpy(),
        "postprocess": lambda: post(class_logits, box_deltas, rois, valid)["boxes"].numpy(),
    }, warmup=2, repeats=repeats)
    gflop = count_gflop(full.get_concrete_function(x))
    return times, gflop, int(rois.shape[0])


def random_ground_truth(rng, batch, height, width, num_classes, per_image=8):
    """(gt_boxes [batch, per_image, 4] float32, gt_classes [batch, per_image] int32): random boxes
    of 5-30% of the image side, for timing training steps."""
    xy = rng.uniform(0, 0.7, (batch, per_image, 2)) * [width, height]
    wh = rng.uniform(0.05, 0.3, (batch, per_image, 2)) * [width, height]
    return (np.concatenate([xy, xy + wh], -1).astype(np.float32),
            rng.integers(1, num_classes, (batch, per_image)).astype(np.int32))


def bench_training_step(detector, height, width, repeats):
    """Seconds per optimizer step on one replica's batch (config.train_batch_per_gpu images)."""
    c = detector.config
    # Zero images: with random (not ImageNet) weights and frozen BN, R-101's activations grow ~10x
    # per block and overflow on real inputs; the dense convolutions cost the same for any values.
    batch = _inputs(height, width, batch=c.train_batch_per_gpu, seed=1, scale=0.0)
    boxes, classes = random_ground_truth(np.random.default_rng(2), c.train_batch_per_gpu, height, width, c.num_classes)
    batch["gt_boxes"], batch["gt_classes"] = tf.constant(boxes), tf.constant(classes)
    optimizer = tf.keras.optimizers.SGD(1e-4, momentum=0.9)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            losses = detector.compute_losses(batch)
        grads = tape.gradient(losses["total"], detector.trainable_variables)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, detector.trainable_variables) if g is not None])
        return losses["total"]

    return median_seconds(lambda: step().numpy(), warmup=1, repeats=repeats)


def run(models=("r101", "xception", "synthetic"), repeats=5, train_repeats=3, gemm=None):
    gemm = gemm or gemm_gflops()
    rows = []
    for key in models:
        name, experiment, overrides, (height, width) = MODELS[key]
        t0 = time.time()
        # Random weights can decode to overflowing boxes; the clamp costs nothing and keeps NMS inputs finite.
        detector = build_detector(experiment, **{"box_delta_clip": float(np.log(1000 / 16)), **overrides})
        times, gflop, num_rois = bench_inference(detector, height, width, repeats)
        train = bench_training_step(detector, *detector_train_size(detector), train_repeats)
        floor = gflop / gemm
        row = dict(model=name, input=f"{height}x{width}", latency_s=times["total"], gflop=gflop, floor_s=floor,
                   x_floor=times["total"] / floor, train_step_s=train, rois=num_rois, bench_s=time.time() - t0)
        for stage in ("backbone", "rpn_proposals", "thin_map", "rcnn_subnet", "postprocess"):
            row[f"{stage}_ms"] = times[stage] * 1e3
            row[f"{stage}_pct"] = 100 * times[stage] / times["total"]
        rows.append(row)
    return rows, {"gemm_gflops": gemm}


def detector_train_size(detector):
    """Training input size: the config's short/max side on a 4:3 image, padded to the divisor."""
    c = detector.config
    short, long = c.image_short_size, min(c.image_max_size, int(round(c.image_short_size * 4 / 3)))
    pad = lambda v: -(-v // c.size_divisor) * c.size_divisor  # noqa: E731
    return pad(short), pad(long)
