"""Box coding (py-faster-rcnn bbox_transform and its inverse, docs/original.md#box-coding) and clipping.

With `offset=1.0` (the original) widths are x2 - x1 + 1 and the centre x1 + w / 2, while decoding
puts x2 at cx + w / 2 (not - 1), so decode(encode(b)) is b shifted by +1 on x2 and y2: the
original is not an exact inverse and we keep that. With `offset=0.0` decode inverts encode.
"""
import math

import tensorflow as tf

#: A common upper clamp for dw and dh (detectron's): widths grow at most 1000/16 times.
SAFE_CLIP_SCALE = math.log(1000.0 / 16.0)


def _coefficients(values, dtype):
    if values is None:
        return None
    c = tf.reshape(tf.cast(tf.convert_to_tensor(values), dtype), [-1])
    if c.shape[0] is not None and c.shape[0] != 4:
        raise ValueError(f"box coder means/stds must have 4 values (dx, dy, dw, dh), got shape {c.shape}")
    return c


def _sizes_and_centres(boxes, offset):
    w = boxes[..., 2] - boxes[..., 0] + offset
    h = boxes[..., 3] - boxes[..., 1] + offset
    return w, h, boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h


def encode(reference_boxes, target_boxes, offset=1.0, means=None, stds=None):
    """Regression deltas that move reference boxes (anchors, RoIs) onto target boxes.

    dx = (tcx - rcx) / rw, dy = (tcy - rcy) / rh, dw = log(tw / rw), dh = log(th / rh) with
    w = x2 - x1 + offset, cx = x1 + 0.5·w; then (d - means) / stds when given.

    Args:
      reference_boxes, target_boxes: [..., 4] float32 (x1, y1, x2, y2), broadcastable.
      means, stds: None or 4 numbers (dx, dy, dw, dh).
    Returns:
      [..., 4] float32 deltas (dx, dy, dw, dh). A target with non-positive width gives
      non-finite dw (as the original).
    """
    target_boxes = tf.convert_to_tensor(target_boxes)
    reference_boxes = tf.cast(reference_boxes, target_boxes.dtype)
    rw, rh, rcx, rcy = _sizes_and_centres(reference_boxes, offset)
    tw, th, tcx, tcy = _sizes_and_centres(target_boxes, offset)
    deltas = tf.stack([(tcx - rcx) / rw, (tcy - rcy) / rh, tf.math.log(tw / rw), tf.math.log(th / rh)],
                      axis=-1)
    means = _coefficients(means, deltas.dtype)
    stds = _coefficients(stds, deltas.dtype)
    if means is not None:
        deltas = deltas - means
    if stds is not None:
        deltas = deltas / stds
    return deltas


def decode(reference_boxes, deltas, offset=1.0, means=None, stds=None, clip_scale=None):
    """Applies deltas to reference boxes (the original's bbox_transform_inv).

    d = deltas · stds + means when given; w = x2 - x1 + offset, cx = x1 + 0.5·w;
    pcx = dx·w + cx, pw = exp(dw)·w; result (pcx - 0.5·pw, pcy - 0.5·ph, pcx + 0.5·pw,
    pcy + 0.5·ph) — x2 without "- offset", as the original.

    Args:
      reference_boxes: [..., 4] float32, broadcastable against the leading dims of deltas
        (e.g. anchors [N, 4] with deltas [B, N, 4]).
      deltas: [..., 4·k] float32: k groups (dx, dy, dw, dh), e.g. one per class.
      means, stds: None or 4 numbers, applied to every group.
      clip_scale: None (the original: no clamp, exp may overflow to inf) or an upper bound
        for dw and dh; `SAFE_CLIP_SCALE` = log(1000 / 16) is a common safe value.
    Returns:
      [..., 4·k] float32 boxes (x1, y1, x2, y2), the group layout of deltas.
    """
    deltas = tf.convert_to_tensor(deltas)
    dtype = deltas.dtype
    reference_boxes = tf.cast(reference_boxes, dtype)
    if deltas.shape[-1] is not None and deltas.shape[-1] % 4:
        raise ValueError(f"decode: deltas' last dimension must be a multiple of 4, got shape {deltas.shape}")
    out_shape = tf.shape(deltas)
    grouped = tf.reshape(deltas, tf.concat([out_shape[:-1], [-1, 4]], 0))  # [..., k, 4]
    stds = _coefficients(stds, dtype)
    means = _coefficients(means, dtype)
    if stds is not None:
        grouped = grouped * stds
    if means is not None:
        grouped = grouped + means
    dx, dy, dw, dh = tf.unstack(grouped, 4, axis=-1)
    if clip_scale is not None:
        dw = tf.minimum(dw, clip_scale)
        dh = tf.minimum(dh, clip_scale)
    w, h, cx, cy = _sizes_and_centres(reference_boxes[..., None, :], offset)  # [..., 1]
    pcx = dx * w + cx
    pcy = dy * h + cy
    pw = tf.exp(dw) * w
    ph = tf.exp(dh) * h
    boxes = tf.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], axis=-1)
    return tf.reshape(boxes, tf.concat([tf.shape(boxes)[:-2], [-1]], 0))


def clip_boxes(boxes, height, width):
    """Clips x to [0, width - 1] and y to [0, height - 1] (the original's clip).

    Args:
      boxes: [..., 4·k] float32. height, width: scalars (one size for all boxes) or [B]
        tensors (one per image; boxes is then [B, ..., 4·k]).
    Returns:
      boxes' shape and dtype.
    """
    boxes = tf.convert_to_tensor(boxes)
    height = tf.cast(height, boxes.dtype)
    width = tf.cast(width, boxes.dtype)
    if height.shape.rank is None or width.shape.rank is None:
        raise ValueError("clip_boxes: height and width must have a known rank (scalars or [B])")
    extra = boxes.shape.rank - height.shape.rank
    upper = tf.stack([width - 1.0, height - 1.0, width - 1.0, height - 1.0], axis=-1)  # [(B,) 4]
    upper = tf.reshape(upper, tf.concat([tf.shape(upper)[:-1], tf.ones([extra - 1], tf.int32), [4]], 0))
    grouped = tf.reshape(boxes, tf.concat([tf.shape(boxes)[:-1], [-1, 4]], 0))  # [..., k, 4]
    upper = upper[..., None, :]
    clipped = tf.minimum(tf.maximum(grouped, 0.0), upper)
    return tf.reshape(clipped, tf.shape(boxes))
