"""Benchmark of the custom ops against the best stock-TF formulations, on this machine.

Cases: PS-RoI-Align forward + backward on one 800x1333 image's thin feature map
[1, 50, 84, 490] with 2000 RoIs (G = 7, 2x2 samples); NMS 12000 -> 2000 boxes at IoU 0.7,
uniform and clustered; class-aware batched NMS of 1000 boxes x 80 classes against
tf.image.combined_non_max_suppression. Each row has the op's time, the baseline's, the speed-up
and the memory-traffic floor (bytes the op must read and write / measured copy bandwidth).
"""
import numpy as np
import tensorflow as tf

from lhrcnn import ops
from benchmarks.timing import copy_bandwidth, interleaved_medians

G, SAMPLES, SCALE = 7, 2, 1.0 / 16.0


def _rois(rng, count, height, width):
    """RoIs of 16..400 px inside the image, as proposals are (the last 16 px left out: every sample
    then lies inside the map, where the op's clamping and crop_and_resize's extrapolation agree,
    and no RoI is empty, where the 4 samples would tie for the max)."""
    w = np.minimum(rng.uniform(16, 400, count), width - 32)
    h = np.minimum(rng.uniform(16, 400, count), height - 32)
    x1, y1 = rng.uniform(0, width - 16 - w), rng.uniform(0, height - 16 - h)
    return np.stack([np.zeros(count), x1, y1, x1 + w, y1 + h], 1).astype(np.float32)


def _bin_boxes(features, rois):
    """crop_and_resize boxes [R, G, G, 4] (normalised y1, x1, y2, x2) whose 2 x 2 corner samples
    are PS-RoI-Align's sample points of each bin, and the RoIs' batch indices."""
    shape = tf.shape(features)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    x1, y1, x2, y2 = [rois[:, i] * SCALE for i in range(1, 5)]
    bw, bh = tf.maximum(x2 - x1, 0.0) / G, tf.maximum(y2 - y1, 0.0) / G
    grid = tf.range(G, dtype=tf.float32)
    ys = (y1[:, None] + bh[:, None] * (grid + 0.25)) / (height - 1)  # [R, G] first sample row of each bin row
    ye = (y1[:, None] + bh[:, None] * (grid + 0.75)) / (height - 1)
    xs = (x1[:, None] + bw[:, None] * (grid + 0.25)) / (width - 1)
    xe = (x1[:, None] + bw[:, None] * (grid + 0.75)) / (width - 1)
    boxes = tf.stack([tf.broadcast_to(ys[:, :, None], [tf.shape(rois)[0], G, G]),
                      tf.broadcast_to(xs[:, None, :], [tf.shape(rois)[0], G, G]),
                      tf.broadcast_to(ye[:, :, None], [tf.shape(rois)[0], G, G]),
                      tf.broadcast_to(xe[:, None, :], [tf.shape(rois)[0], G, G])], axis=-1)
    return boxes, tf.cast(rois[:, 0], tf.int32)


def _bin_planes(features):
    """The thin map [B, H, W, K * G * G] (channel (k * G + ph) * G + pw) as G * G planes
    [G * G, B, H, W, K], one per bin: one transpose, then every bin reads a contiguous plane."""
    shape = tf.shape(features)
    k = features.shape[-1] // (G * G)
    planes = tf.reshape(features, [shape[0], shape[1], shape[2], k, G * G])
    return tf.transpose(planes, [4, 0, 1, 2, 3])


def stock_ps_roi_align_per_bin(features, rois):
    """Stock ops, one crop_and_resize per bin on its own plane: the thin map transposed once to
    bin-plane order, each of the G * G bins sampled 2 x 2 from its plane, then the max."""
    boxes, box_index = _bin_boxes(features, rois)
    planes = tf.unstack(_bin_planes(features))  # one Unpack: its gradient is one Pack, not G * G padded slices
    bins = []
    for b in range(G * G):
        crops = tf.image.crop_and_resize(planes[b], boxes[:, b // G, b % G], box_index, [SAMPLES, SAMPLES])
        bins.append(tf.reduce_max(crops, axis=[1, 2]))
    out = tf.stack(bins, axis=1)  # [R, G * G, K]
    return tf.reshape(out, [-1, G, G, out.shape[-1]])


def stock_ps_roi_align_one_call(features, rois):
    """Stock ops, one crop_and_resize for every bin of every RoI: the G * G bin planes are the
    images of one batch (plane b of image i at index b * B + i), and each RoI's bin b samples
    plane b, so a single op does all R * G * G crops, then the max."""
    boxes, box_index = _bin_boxes(features, rois)
    planes = _bin_planes(features)
    shape = tf.shape(planes)
    batch = shape[1]
    stacked = tf.reshape(planes, [-1, shape[2], shape[3], planes.shape[-1]])  # [G*G*B, H, W, K]
    plane_index = tf.range(G * G)[None, :] * batch + box_index[:, None]  # [R, G*G]
    crops = tf.image.crop_and_resize(stacked, tf.reshape(boxes, [-1, 4]), tf.reshape(plane_index, [-1]),
                                     [SAMPLES, SAMPLES])
    return tf.reshape(tf.reduce_max(crops, axis=[1, 2]), [-1, G, G, planes.shape[-1]])


def stock_ps_roi_align_strided(features, rois):
    """Stock ops, one crop_and_resize per bin on that bin's strided channel slice of the map
    (no transpose; every bin gathers its channels anew), then the max over the 4 samples."""
    shape = tf.shape(features)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    x1, y1, x2, y2 = [rois[:, i] * SCALE for i in range(1, 5)]
    bw, bh = tf.maximum(x2 - x1, 0.0) / G, tf.maximum(y2 - y1, 0.0) / G
    box_index = tf.cast(rois[:, 0], tf.int32)
    rows = []
    for ph in range(G):
        cols = []
        for pw in range(G):
            channels = features[..., ph * G + pw::G * G]  # channel (k * G + ph) * G + pw
            # crop_and_resize samples the box corners: put them on the first and last sample.
            ys = y1 + bh * (ph + 0.25)
            ye = y1 + bh * (ph + 0.75)
            xs = x1 + bw * (pw + 0.25)
            xe = x1 + bw * (pw + 0.75)
            boxes = tf.stack([ys / (height - 1), xs / (width - 1), ye / (height - 1), xe / (width - 1)], 1)
            crops = tf.image.crop_and_resize(channels, boxes, box_index, [SAMPLES, SAMPLES])
            cols.append(tf.reduce_max(crops, axis=[1, 2]))
        rows.append(tf.stack(cols, 1))
    return tf.stack(rows, 1)


def _forward_backward(fn, features, rois, grad):
    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = fn(features, rois)
        return tape.gradient(out, features, output_gradients=grad)
    return lambda: run().numpy()


def bench_ps_roi_align(repeats, bandwidth):
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(1, 50, 84, 490)).astype(np.float32))
    rois = tf.constant(_rois(rng, 2000, 800, 1333))
    grad = tf.constant(rng.normal(size=(2000, G, G, 10)).astype(np.float32))
    impls = {
        "custom": lambda f, r: ops.ps_roi_align(f, r, G, SCALE, backend="custom"),
        "twin": lambda f, r: ops.ps_roi_align(f, r, G, SCALE, backend="tf"),
        "stock, one crop_and_resize": stock_ps_roi_align_one_call,
        "stock, crop_and_resize per bin plane": stock_ps_roi_align_per_bin,
        "stock, crop_and_resize per strided slice": stock_ps_roi_align_strided,
    }
    runs = {name: _forward_backward(fn, features, rois, grad) for name, fn in impls.items()}
    # the same values (gradients can differ where two samples are within rounding of the max and
    # the formulations pick different ones)
    reference = impls["custom"](features, rois).numpy()
    differences = {name: float(np.max(np.abs(fn(features, rois).numpy() - reference))) for name, fn in impls.items()}
    times = interleaved_medians(runs, repeats=repeats)
    fbytes, obytes = features.shape.num_elements() * 4, grad.shape.num_elements() * 4
    floor = (2 * fbytes + 2 * obytes + rois.shape.num_elements() * 4) / bandwidth
    rows = []
    for name in [n for n in impls if n != "custom"]:
        rows.append(dict(case="ps_roi_align fwd+bwd [1,50,84,490], 2000 RoIs", baseline=name,
                         op_ms=times["custom"] * 1e3, baseline_ms=times[name] * 1e3,
                         speedup=times[name] / times["custom"], floor_ms=floor * 1e3, target=5.0,
                         max_abs_difference=differences[name]))
    return rows


def _nms_boxes(rng, n, clustered):
    if clustered:
        centres = rng.uniform(0, 1000, (40, 2))
        c = centres[rng.integers(0, 40, n)] + rng.normal(0, 12, (n, 2))
    else:
        c = rng.uniform(0, 1000, (n, 2))
    wh = rng.uniform(16, 300, (n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)


def bench_nms(repeats, bandwidth):
    rng = np.random.default_rng(1)
    rows = []
    for clustered in (False, True):
        boxes = tf.constant(_nms_boxes(rng, 12000, clustered))
        scores = tf.constant(rng.uniform(size=12000).astype(np.float32))
        ours = tf.function(lambda: ops.nms(boxes, scores, 2000, 0.7, backend="custom"))
        theirs = tf.function(lambda: tf.image.non_max_suppression(boxes, scores, 2000, 0.7))
        t = interleaved_medians({"ours": lambda: ours()[0].numpy(), "theirs": lambda: theirs().numpy()},
                                repeats=repeats)
        t_ours, t_theirs = t["ours"], t["theirs"]
        kept = int(ours()[1])
        floor = (12000 * 5 * 4 + 2000 * 4) / bandwidth
        rows.append(dict(case=f"nms 12000 -> 2000 @0.7, {'clustered' if clustered else 'uniform'} ({kept} kept)",
                         baseline="tf.image.non_max_suppression", op_ms=t_ours * 1e3,
                         baseline_ms=t_theirs * 1e3, speedup=t_theirs / t_ours, floor_ms=floor * 1e3, target=3.0))
    # Class-aware, batched: 1000 boxes x 80 classes (a detector's per-class boxes and scores).
    b, n, c, k = 2, 1000, 80, 100
    boxes = _nms_boxes(rng, b * n * c, True).reshape(b, n, c, 4)
    logits = rng.normal(size=(b, n, c + 1)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))[..., 1:].astype(np.float32)
    thr = 0.05
    tb, ts = tf.constant(boxes), tf.constant(probs)
    flat_boxes = tf.reshape(tb, [b, n * c, 4])
    flat_scores = tf.reshape(ts, [b, n * c])
    flat_classes = tf.constant(np.tile(np.arange(c, dtype=np.int32), (b, n)))
    ours = tf.function(lambda: ops.nms(flat_boxes, flat_scores, k, 0.5, thr, flat_classes, backend="custom"))
    # y/x order does not matter for IoU; combined NMS wants [B, N, q, 4] and [B, N, classes].
    theirs = tf.function(lambda: tf.image.combined_non_max_suppression(
        tb, ts, max_output_size_per_class=k, max_total_size=k, iou_threshold=0.5, score_threshold=thr,
        clip_boxes=False))
    t = interleaved_medians({"ours": lambda: ours()[0].numpy(), "theirs": lambda: theirs()[0].numpy()},
                            repeats=repeats)
    t_ours, t_theirs = t["ours"], t["theirs"]
    floor = (b * n * c * 5 * 4) / bandwidth
    rows.append(dict(case=f"class-aware nms {b}x{n} boxes x {c} classes, score>{thr}, top {k}",
                     baseline="tf.image.combined_non_max_suppression", op_ms=t_ours * 1e3,
                     baseline_ms=t_theirs * 1e3, speedup=t_theirs / t_ours, floor_ms=floor * 1e3, target=2.0))
    return rows


# The main job's depthwise layers (ThunderNet SNet146 at 384 x 320, batch 2): (input shape, stride).
DEPTHWISE_CASES = [((2, 96, 80, 116), 2), ((2, 48, 40, 232), 1), ((2, 24, 20, 464), 1)]


def bench_depthwise_filter_grad(repeats, bandwidth):
    """The 5 x 5 depthwise filter gradient against TensorFlow's DepthwiseConv2dNativeBackpropFilter."""
    rng = np.random.default_rng(2)
    rows = []
    for shape, stride in DEPTHWISE_CASES:
        x = tf.constant(rng.normal(size=shape).astype(np.float32))
        out = (shape[0], -(-shape[1] // stride), -(-shape[2] // stride), shape[3])
        dy = tf.constant(rng.normal(size=out).astype(np.float32))
        ours = tf.function(lambda: ops.depthwise_filter_grad(x, dy, 5, stride, "SAME", backend="custom"))
        theirs = tf.function(lambda: ops.depthwise_filter_grad(x, dy, 5, stride, "SAME", backend="tf"))
        difference = float(np.max(np.abs(ours().numpy() - theirs().numpy())))
        t = interleaved_medians({"ours": lambda: ours().numpy(), "theirs": lambda: theirs().numpy()},
                                repeats=repeats)
        floor = (x.shape.num_elements() + dy.shape.num_elements()) * 4 / bandwidth
        rows.append(dict(case=f"depthwise 5x5 filter gradient {list(shape)}, stride {stride}",
                         baseline="DepthwiseConv2dNativeBackpropFilter", op_ms=t["ours"] * 1e3,
                         baseline_ms=t["theirs"] * 1e3, speedup=t["theirs"] / t["ours"], floor_ms=floor * 1e3,
                         target=None, max_abs_difference=difference))
    return rows


def run(repeats=15):
    """Returns (rows, extra) for the ops section."""
    if not ops.custom_ops_available():
        raise RuntimeError(f"the ops benchmark needs the compiled ops: {ops.custom_ops_load_error()}")
    bandwidth = copy_bandwidth()
    rows = (bench_ps_roi_align(repeats, bandwidth) + bench_nms(repeats, bandwidth)
            + bench_depthwise_filter_grad(repeats, bandwidth))
    return rows, {"copy_bandwidth_gb_s": bandwidth / 1e9}
