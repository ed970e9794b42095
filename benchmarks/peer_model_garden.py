"""Peer side of the speed comparison: TF Model Garden's Faster R-CNN, timed on this machine.

Run with the peer environment's python (benchmarks/peer_env.py builds it), never the main venv's:

  .venv-peer/bin/python benchmarks/peer_model_garden.py [--repeats 5] [--sizes 800x1333,512x512]

Standalone on purpose: it imports TensorFlow and `official` (tf-models-official) only, never lhrcnn
or its op library, so the peer runs exactly as Model Garden publishes it.

What it measures, all float32, random weights, batch 1, inference (training=False):
  * Faster R-CNN ResNet-50-FPN from the `fasterrcnn_resnetfpn_coco` experiment in its fastest
    configuration: batched NMS in both stages (roi_generator.use_batched_nms = True,
    detection_generator.nms_version = 'batched', i.e. tf.image.combined_non_max_suppression) and
    the 2-fc box head (detection_head.num_convs = 0, num_fcs = 2, fc_dims = 1024) instead of the
    experiment's default 4-conv-1-fc head; no mask head. Built with
    official.vision.modeling.factory.build_maskrcnn. The image is padded up to a multiple of
    2^max_level (800x1333 -> 832x1344), as Model Garden's detection serving module does, and
    image_shape carries the unpadded size.
  * The ResNet-101 backbone alone (official.vision.modeling.backbones, same norm/activation
    config) on the first size, unpadded.
Times: median wall time of a tf.function's concrete function (outputs fetched to host) after
warm-up. GFLOP: tf.compat.v1.profiler's float_operation on the concrete function's graph, which
counts 2 FLOP per multiply-add for Conv2D/MatMul plus 1 per element for the elementwise ops it
knows; `gflop_conv_matmul_*` is the Conv2D + MatMul share alone.

The last line on stdout is one json object (everything else goes to stderr):
  {"faster_rcnn_r50_fpn_800x1333_s": ..., "faster_rcnn_r50_fpn_512x512_s": ...,
   "resnet101_backbone_800x1333_s": ..., "gflop_faster_rcnn_r50_fpn_800x1333": ..., ...,
   "details": {...}, "meta": {...}}
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

# Run as a script from benchmarks/: keep that folder off the path so that its modules cannot
# shadow anything, and so that nothing of lhrcnn is importable by accident.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parse_sizes(text):
    sizes = []
    for item in text.split(","):
        h, w = item.lower().split("x")
        sizes.append((int(h), int(w)))
    return sizes


def _log(*args):
    print(*args, file=sys.stderr, flush=True)


def _median_times(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _gflop(tf, graph):
    """(total, conv+matmul) GFLOP of a graph, as tf.compat.v1.profiler counts them."""
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    by_op = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    # The op view is a chain sorted by cost, each node's total_* including the nodes below it:
    # read each op type's own float_ops.
    per_type, stack = {}, list(by_op.children)
    while stack:
        node = stack.pop()
        per_type[node.name] = per_type.get(node.name, 0) + node.float_ops
        stack.extend(node.children)
    gemm = sum(v for k, v in per_type.items() if k in ("Conv2D", "MatMul", "BatchMatMulV2", "DepthwiseConv2dNative"))
    return by_op.total_float_ops / 1e9, gemm / 1e9


def faster_rcnn_config(exp_factory):
    config = exp_factory.get_exp_config("fasterrcnn_resnetfpn_coco")
    config.override({"task": {"model": {
        "include_mask": False,
        "backbone": {"type": "resnet", "resnet": {"model_id": 50}},
        "decoder": {"type": "fpn"},
        "detection_head": {"num_convs": 0, "num_fcs": 2, "fc_dims": 1024},
        "roi_generator": {"use_batched_nms": True},
        "detection_generator": {"nms_version": "batched"},
        # Sync BN only matters when training across replicas; at inference it is the same affine op.
        "norm_activation": {"use_sync_bn": False},
    }}}, is_strict=True)
    return config.task.model


def bench_faster_rcnn(tf, tf_keras, factory, model_cfg, size, warmup, repeats, seed):
    height, width = size
    stride = 2 ** model_cfg.max_level
    padded = (math.ceil(height / stride) * stride, math.ceil(width / stride) * stride)
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(seed)
    model = factory.build_maskrcnn(
        input_specs=tf_keras.layers.InputSpec(shape=[1, padded[0], padded[1], 3]), model_config=model_cfg)

    @tf.function
    def infer(images, image_shape):
        out = model(images, image_shape=image_shape, training=False)
        return {k: out[k] for k in ("detection_boxes", "detection_scores", "detection_classes", "num_detections")}

    concrete = infer.get_concrete_function(tf.TensorSpec([1, padded[0], padded[1], 3], tf.float32),
                                           tf.TensorSpec([1, 2], tf.float32))
    images = tf.random.stateless_uniform([1, padded[0], padded[1], 3], seed=[seed, 1], minval=-2.0, maxval=2.0)
    images = images * tf.pad(tf.ones([1, height, width, 3]), [[0, 0], [0, padded[0] - height],
                                                             [0, padded[1] - width], [0, 0]])
    image_shape = tf.constant([[height, width]], tf.float32)
    run = lambda: tf.nest.map_structure(lambda t: t.numpy(), concrete(images, image_shape))
    detections = int(run()["num_detections"][0])
    times = _median_times(run, warmup, repeats)
    total, gemm = _gflop(tf, concrete.graph)
    params = sum(int(v.shape.num_elements()) for v in model.variables)
    return dict(input=[height, width], padded=list(padded), median_s=statistics.median(times), min_s=min(times),
                times_s=times, gflop=total, gflop_conv_matmul=gemm, num_detections=detections, params=params)


def bench_backbone(tf, tf_keras, backbones, hyperparams_cfg, model_id, norm_activation, size, warmup, repeats,
                   seed):
    height, width = size
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(seed)
    backbone = backbones.factory.build_backbone(
        input_specs=tf_keras.layers.InputSpec(shape=[1, height, width, 3]),
        backbone_config=hyperparams_cfg.Backbone(type="resnet", resnet=hyperparams_cfg.ResNet(model_id=model_id)),
        norm_activation_config=norm_activation)

    @tf.function
    def infer(images):
        return backbone(images, training=False)

    concrete = infer.get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32))
    images = tf.random.stateless_uniform([1, height, width, 3], seed=[seed, 2], minval=-2.0, maxval=2.0)
    run = lambda: tf.nest.map_structure(lambda t: t.numpy(), concrete(images))
    run()
    times = _median_times(run, warmup, repeats)
    total, gemm = _gflop(tf, concrete.graph)
    params = sum(int(v.shape.num_elements()) for v in backbone.variables)
    return dict(input=[height, width], padded=[height, width], median_s=statistics.median(times), min_s=min(times),
                times_s=times, gflop=total, gflop_conv_matmul=gemm, params=params)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per case after the first call")
    parser.add_argument("--sizes", default="800x1333,512x512", help="HxW list for Faster R-CNN ResNet-50-FPN")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and the image")
    parser.add_argument("--backbone-size", default=None,
                        help="HxW for the ResNet-101 backbone alone (default: the first of --sizes; 'none' skips)")
    args = parser.parse_args()
    sizes = _parse_sizes(args.sizes)
    backbone_size = None if args.backbone_size == "none" else _parse_sizes(args.backbone_size or args.sizes)[0]

    import tensorflow as tf
    import tf_keras
    from official.core import exp_factory
    from official.vision.configs import backbones as backbones_cfg
    from official.vision.configs import maskrcnn  # noqa: F401  (registers the experiment)
    from official.vision.modeling import backbones, factory
    assert "lhrcnn" not in sys.modules, "the peer benchmark must not import lhrcnn"

    try:
        from importlib.metadata import version
        models_version = version("tf-models-official")
    except Exception:  # noqa: BLE001
        models_version = None
    model_cfg = faster_rcnn_config(exp_factory)
    seed = args.seed
    results, details = {}, {}
    for size in sizes:
        name = f"faster_rcnn_r50_fpn_{size[0]}x{size[1]}"
        _log(f"[peer] {name} ...")
        d = bench_faster_rcnn(tf, tf_keras, factory, model_cfg, size, args.warmup, args.repeats, seed)
        _log(f"[peer] {name}: median {d['median_s']:.3f} s, {d['gflop']:.1f} GFLOP")
        results[f"{name}_s"], results[f"gflop_{name}"], details[name] = d["median_s"], d["gflop"], d
    if backbone_size is not None:
        name = f"resnet101_backbone_{backbone_size[0]}x{backbone_size[1]}"
        _log(f"[peer] {name} ...")
        d = bench_backbone(tf, tf_keras, backbones, backbones_cfg, 101, model_cfg.norm_activation, backbone_size,
                           args.warmup, args.repeats, seed)
        _log(f"[peer] {name}: median {d['median_s']:.3f} s, {d['gflop']:.1f} GFLOP")
        results[f"{name}_s"], results[f"gflop_{name}"], details[name] = d["median_s"], d["gflop"], d
    assert "lhrcnn" not in sys.modules, "the peer benchmark must not import lhrcnn"
    results["details"] = details
    results["meta"] = dict(
        tensorflow=tf.__version__, tf_models_official=models_version, python=sys.version.split()[0],
        cpus=os.cpu_count(), repeats=args.repeats, warmup=args.warmup, batch=1, dtype="float32",
        weights=f"random (Keras initializers, seed {seed})", timing="median wall time of a tf.function concrete function, "
        "outputs fetched to host, after warm-up",
        flop_convention="tf.compat.v1.profiler float_operation: 2 FLOP per multiply-add (Conv2D, MatMul) "
        "+ 1 per element of registered elementwise ops; gflop_conv_matmul = Conv2D+MatMul only",
        faster_rcnn_config=dict(experiment="fasterrcnn_resnetfpn_coco", backbone="resnet-50", decoder="fpn",
                                min_level=model_cfg.min_level, max_level=model_cfg.max_level,
                                num_classes=model_cfg.num_classes, detection_head="2fc (num_convs=0, num_fcs=2, "
                                "fc_dims=1024)", roi_generator_use_batched_nms=True,
                                detection_generator_nms_version="batched",
                                test_num_proposals=model_cfg.roi_generator.test_num_proposals,
                                max_num_detections=model_cfg.detection_generator.max_num_detections,
                                include_mask=False))
    sys.stdout.write(json.dumps(results) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
