"""Training targets computed in-graph with fixed shapes: RPN anchor targets (the original's
anchor_target_layer, docs/original.md#anchor-targets) and R-CNN RoI targets
(proposal_target_layer, docs/original.md#roi-targets).

Random subsampling uses random keys and top-k instead of `npr.choice`: the chosen subset is
uniformly random like the original's, but not the same draw.
"""
import tensorflow as tf

from lhrcnn.boxes.coder import encode
from lhrcnn.boxes.iou import pairwise_iou


def _random_keys(shape, seed):
    """Uniform [0, 1) keys. seed None: a stateful op (a fresh draw every step); an int or an
    int32/int64 [2] tensor: stateless, deterministic given the seed (vary it per step, e.g.
    (base_seed, step))."""
    if seed is None:
        return tf.random.uniform(shape, dtype=tf.float32)
    if isinstance(seed, int):
        seed = (seed, 0)
    return tf.random.stateless_uniform(shape, seed=tf.cast(seed, tf.int64), dtype=tf.float32)


def _first_argmax(values, axis):
    """Index of the first maximum along `axis` (deterministic on ties, like NumPy's argmax)."""
    n = tf.shape(values, out_type=tf.int32)[axis]
    best = tf.reduce_max(values, axis=axis, keepdims=True)
    shape = [1] * values.shape.rank
    shape[axis] = -1
    index = tf.reshape(tf.range(n), shape)
    return tf.reduce_min(tf.where(tf.equal(values, best), index, n), axis=axis)


def _static_min(limit, size):
    """min(limit, size) as a Python int when size is static, else a scalar tensor."""
    return min(limit, size) if isinstance(size, int) else tf.minimum(limit, size)


def _top_keys(candidates, keys, k):
    """Indices [B, k] of the candidates [B, N] with the largest keys, first k in key order;
    non-candidates have key -1 and sort last."""
    masked = tf.where(candidates, keys, -1.0)
    return tf.math.top_k(masked, k=k, sorted=True).indices


def _keep_random(candidates, quota, max_quota, keys):
    """Mask [B, N] of min(quota[b], #candidates[b]) uniformly random candidates of each row.

    candidates: [B, N] bool; quota: [B] int32 <= max_quota (a Python int); keys: [B, N]."""
    size = candidates.shape[1] if candidates.shape[1] is not None else tf.shape(candidates)[1]
    k = _static_min(max_quota, size)
    if isinstance(k, int) and k == 0:
        return tf.zeros_like(candidates)
    index = _top_keys(candidates, keys, k)  # [B, k]
    taken = tf.gather(candidates, index, batch_dims=1) & (tf.range(k)[None, :] < quota[:, None])
    rows = tf.broadcast_to(tf.range(tf.shape(index)[0])[:, None], tf.shape(index))
    hits = tf.scatter_nd(tf.stack([rows, index], axis=-1), tf.cast(taken, tf.int32), tf.shape(candidates))
    return hits > 0


def _check_gt(gt_boxes, gt_classes):
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_classes = tf.cast(gt_classes, tf.int32)
    if gt_boxes.shape.rank != 3 or gt_classes.shape.rank != 2:
        raise ValueError(f"gt_boxes must be [B, M, 4] and gt_classes [B, M], got {gt_boxes.shape} and "
                         f"{gt_classes.shape}")
    if gt_boxes.shape[1] == 0:
        raise ValueError("gt_boxes must have M >= 1 slots (pad with class 0 when an image has no boxes)")
    return gt_boxes, gt_classes


def _in_xla_context():
    """Whether the graph being built is compiled by XLA (tf.function(jit_compile=True)): there,
    shapes must stay static. Unknown (the internal helper moved): assume XLA, the safe side."""
    try:
        from tensorflow.python.ops import control_flow_util
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except (ImportError, AttributeError):
        return True


def _used_gt_slots(gt_boxes, gt_classes):
    """gt_boxes, gt_classes cut to the slots up to the last real GT of the batch (at least one).

    The pipeline pads every image to a fixed number of slots (100); the padding is ignored
    everywhere, so the targets are the same without it, and the [B, N, M] IoU matrices shrink
    from M = 100 to the batch's last used slot (about 6% of SNet146's synthetic training step on
    CPU). Under XLA the slots are kept: the cut is data-dependent."""
    if _in_xla_context():
        return gt_boxes, gt_classes
    slots = tf.shape(gt_classes)[1]
    last = tf.reduce_max(tf.where(gt_classes > 0, tf.range(1, slots + 1)[None, :], 0))
    used = tf.maximum(last, 1)
    return gt_boxes[:, :used], gt_classes[:, :used]


def anchor_targets(anchors, gt_boxes, gt_classes, image_info, positive_overlap=0.7, negative_overlap=0.3,
                   batch_size=256, fg_fraction=0.5, allowed_border=0, offset=1.0, seed=None, subsample=True,
                   match_gt_without_overlap=True):
    """RPN labels and regression targets for every anchor of every image.

    Per image, as the original: anchors with x1 >= -allowed_border, y1 >= -allowed_border,
    x2 < W + allowed_border, y2 < H + allowed_border (H, W = image_info[b, :2]) are inside; the
    others get label -1 and target 0. For inside anchors, with IoU (+offset) against the
    image's real GT (class > 0; class 0 is padding and ignored): max IoU < negative_overlap ->
    0; every inside anchor attaining a GT's maximum IoU over the inside anchors (all ties) -> 1;
    max IoU >= positive_overlap -> 1 (positives overwrite negatives). An image without GT has
    all inside anchors negative. With `subsample`, positives beyond int(fg_fraction·batch_size)
    and negatives beyond batch_size - #positives are set to -1 at random.
    Targets = encode(anchor, its max-IoU GT (first on ties), offset), raw (not normalised), for
    all inside anchors of an image with GT (0 elsewhere).

    Args:
      anchors: [N, 4] float32, shared by the batch. gt_boxes: [B, M, 4] float32 (M >= 1).
      gt_classes: [B, M] int32, 0 = padding. image_info: [B, >=2] (height, width, ...).
      seed: None (stateful random) or an int / [2] int tensor (stateless, deterministic).
      subsample: False returns the labels before subsampling.
      match_gt_without_overlap: the original's quirk (True): a GT whose best IoU with the inside
        anchors is 0 makes every inside anchor with 0 IoU to it positive. False: such a GT
        marks no anchor.
    Returns:
      labels: [B, N] int32 in {1, 0, -1}. box_targets: [B, N, 4] float32 (dx, dy, dw, dh).
    """
    anchors = tf.cast(anchors, tf.float32)
    gt_boxes, gt_classes = _used_gt_slots(*_check_gt(gt_boxes, gt_classes))
    image_info = tf.cast(image_info, tf.float32)
    height, width = image_info[:, 0:1], image_info[:, 1:2]  # [B, 1]
    border = float(allowed_border)
    a = anchors[None]  # [1, N, 4]
    inside = ((a[..., 0] >= -border) & (a[..., 1] >= -border)
              & (a[..., 2] < width + border) & (a[..., 3] < height + border))  # [B, N]
    gt_valid = gt_classes > 0  # [B, M]
    pair_ok = inside[:, :, None] & gt_valid[:, None, :]  # [B, N, M]
    iou = tf.where(pair_ok, pairwise_iou(a, gt_boxes, offset), -1.0)
    max_iou = tf.reduce_max(iou, axis=2)  # [B, N]; -1 without GT
    gt_max = tf.reduce_max(iou, axis=1, keepdims=True)  # [B, 1, M]; -1 for padding GT
    attains = pair_ok & tf.equal(iou, gt_max)
    if not match_gt_without_overlap:
        attains &= gt_max > 0.0
    best_of_a_gt = tf.reduce_any(attains, axis=2)

    labels = tf.fill(tf.shape(inside), -1)
    labels = tf.where(inside & (max_iou < negative_overlap), 0, labels)
    labels = tf.where(inside & (best_of_a_gt | (max_iou >= positive_overlap)), 1, labels)

    if subsample:
        keys = _random_keys(tf.shape(labels), seed)
        num_fg = int(fg_fraction * batch_size)
        fg = tf.equal(labels, 1)
        fg_kept = _keep_random(fg, tf.fill(tf.shape(labels)[:1], num_fg), num_fg, keys)
        labels = tf.where(fg & ~fg_kept, -1, labels)
        num_bg = batch_size - tf.reduce_sum(tf.cast(fg_kept, tf.int32), axis=1)
        bg = tf.equal(labels, 0)
        bg_kept = _keep_random(bg, num_bg, batch_size, keys)
        labels = tf.where(bg & ~bg_kept, -1, labels)

    assigned = tf.gather(gt_boxes, _first_argmax(iou, axis=2), batch_dims=1)  # [B, N, 4]
    has_target = inside & tf.reduce_any(gt_valid, axis=1, keepdims=True)
    box_targets = tf.where(has_target[..., None], encode(a, assigned, offset=offset), 0.0)
    return tf.stop_gradient(labels), tf.stop_gradient(box_targets)


def roi_targets(rois, rois_valid, gt_boxes, gt_classes, num_classes, batch_size_per_image, fg_threshold=0.5,
                bg_threshold_high=0.5, bg_threshold_low=0.0, fg_fraction=0.25, append_gt=True,
                means=(0.0, 0.0, 0.0, 0.0), stds=(0.1, 0.1, 0.2, 0.2), class_specific=True, offset=1.0,
                seed=None):
    """R-CNN labels and normalised regression targets for the proposals (+ GT boxes).

    Every valid RoI (after appending the image's real GT boxes when `append_gt`) is matched to
    the GT of its own image with the largest IoU (+offset; first on ties): max IoU >=
    fg_threshold -> that GT's class (foreground); else bg_threshold_low <= max IoU <
    bg_threshold_high -> 0 (background); else -1 (ignored). An image without GT has max IoU 0.
    Foreground targets = (encode(roi, gt, offset) - means) / stds.

    Modes:
      batch_size_per_image = -1 (the original, BATCH_SIZE = -1): every row is kept, in input
        order (proposals, then GT rows b-major); R' = R + B·M (R without append_gt); invalid
        rows (padding proposals, padding GT) get label -1.
      batch_size_per_image = S > 0 (detectron-style sampling): per image min(round(fg_fraction·S),
        #fg) random foreground then min(S - #fg taken, #bg) random background rows, then
        padding rows (b, 0, 0, 0, 0) with label -1; R' = B·S, image-major.

    Args:
      rois: [R, 5] float32 (batch_index, x1, y1, x2, y2). rois_valid: [R] bool.
      gt_boxes: [B, M, 4] float32 (M >= 1). gt_classes: [B, M] int32 in [0, num_classes), 0 = padding.
      num_classes: C, including background. seed: as in `anchor_targets`.
      class_specific: targets in the 4 columns of the RoI's class of a [R', 4·C] array
        (zeros elsewhere and for non-foreground rows), else shared [R', 4].
    Returns:
      rois: [R', 5] float32. labels: [R'] int32 (-1 = ignore / padding).
      box_targets: [R', 4·C] or [R', 4] float32. sample_valid: [R'] bool (= labels >= 0).
    """
    rois = tf.cast(rois, tf.float32)
    rois_valid = tf.cast(rois_valid, tf.bool)
    gt_boxes, gt_classes = _check_gt(gt_boxes, gt_classes)
    batch = tf.shape(gt_boxes)[0]
    gt_valid = gt_classes > 0
    if append_gt:
        gt_index = tf.broadcast_to(tf.cast(tf.range(batch), tf.float32)[:, None, None],
                                   tf.shape(gt_boxes[..., :1]))
        rois = tf.concat([rois, tf.reshape(tf.concat([gt_index, gt_boxes], -1), [-1, 5])], axis=0)
        rois_valid = tf.concat([rois_valid, tf.reshape(gt_valid, [-1])], axis=0)
    image = tf.clip_by_value(tf.cast(rois[:, 0], tf.int32), 0, batch - 1)
    boxes = rois[:, 1:5]
    gt_boxes, gt_classes = _used_gt_slots(gt_boxes, gt_classes)  # the appended rows above keep all M
    gt_valid = gt_classes > 0
    image_gt = tf.gather(gt_boxes, image)  # [R', M, 4]
    image_gt_valid = tf.gather(gt_valid, image)  # [R', M]
    iou = tf.where(image_gt_valid, pairwise_iou(boxes[:, None, :], image_gt, offset)[:, 0, :], -1.0)
    max_iou = tf.maximum(tf.reduce_max(iou, axis=1), 0.0)
    match = _first_argmax(iou, axis=1)
    fg = rois_valid & (max_iou >= fg_threshold)
    bg = rois_valid & ~fg & (max_iou < bg_threshold_high) & (max_iou >= bg_threshold_low)
    labels = tf.where(fg, tf.gather(tf.gather(gt_classes, image), match, batch_dims=1),
                      tf.where(bg, 0, -1))
    deltas = encode(boxes, tf.gather(image_gt, match, batch_dims=1), offset=offset, means=means, stds=stds)
    deltas = tf.where(fg[:, None], deltas, 0.0)
    if class_specific:
        columns = tf.one_hot(tf.where(fg, labels, -1), num_classes, dtype=tf.float32)  # [R', C]
        box_targets = tf.reshape(columns[:, :, None] * deltas[:, None, :], [-1, 4 * num_classes])
    else:
        box_targets = deltas

    if batch_size_per_image is None or batch_size_per_image == -1:
        return (tf.stop_gradient(rois), tf.stop_gradient(labels), tf.stop_gradient(box_targets), labels >= 0)
    if isinstance(batch_size_per_image, bool) or not isinstance(batch_size_per_image, int) \
            or batch_size_per_image < 1:
        raise ValueError(f"roi_targets: batch_size_per_image must be -1 (keep all) or a positive integer, "
                         f"got {batch_size_per_image!r}")
    return _sample_rois(rois, labels, box_targets, image, fg, bg, batch, batch_size_per_image,
                        int(round(fg_fraction * batch_size_per_image)), seed)


def _sample_rois(rois, labels, box_targets, image, fg, bg, batch, per_image, fg_per_image, seed):
    """Fixed-size per-image sample: [fg taken | bg taken | padding], B·per_image rows."""
    count = rois.shape[0] if rois.shape[0] is not None else tf.shape(rois)[0]
    in_image = tf.equal(image[None, :], tf.range(batch)[:, None])  # [B, R']
    keys = tf.broadcast_to(_random_keys(tf.shape(image), seed)[None, :], tf.shape(in_image))
    fg_b, bg_b = in_image & fg[None, :], in_image & bg[None, :]
    fg_cap = min(fg_per_image, per_image)
    num_fg = tf.minimum(tf.reduce_sum(tf.cast(fg_b, tf.int32), axis=1), fg_cap)  # [B]
    num_bg = tf.minimum(tf.reduce_sum(tf.cast(bg_b, tf.int32), axis=1), per_image - num_fg)
    slot = tf.broadcast_to(tf.range(per_image)[None, :], [batch, per_image])  # [B, S]
    from_fg = slot < num_fg[:, None]
    from_bg = ~from_fg & (slot < (num_fg + num_bg)[:, None])
    bg_k = _static_min(per_image, count)
    bg_index = _top_keys(bg_b, keys, bg_k)
    source = tf.gather(bg_index, tf.clip_by_value(slot - num_fg[:, None], 0, bg_k - 1), batch_dims=1)
    fg_k = _static_min(fg_cap, count)
    if not (isinstance(fg_k, int) and fg_k == 0):
        fg_index = _top_keys(fg_b, keys, fg_k)
        fg_source = tf.gather(fg_index, tf.clip_by_value(slot, 0, fg_k - 1), batch_dims=1)
        source = tf.where(from_fg, fg_source, source)
    taken = from_fg | from_bg  # [B, S]
    source = tf.reshape(tf.where(taken, source, 0), [-1])
    taken = tf.reshape(taken, [-1])
    padding_rois = tf.pad(tf.reshape(tf.broadcast_to(tf.cast(tf.range(batch), tf.float32)[:, None],
                                                     [batch, per_image]), [-1, 1]), [[0, 0], [0, 4]])
    out_rois = tf.where(taken[:, None], tf.gather(rois, source), padding_rois)
    out_labels = tf.where(taken, tf.gather(labels, source), -1)
    out_targets = tf.where(taken[:, None], tf.gather(box_targets, source), 0.0)
    return (tf.stop_gradient(out_rois), tf.stop_gradient(out_labels), tf.stop_gradient(out_targets),
            out_labels >= 0)
