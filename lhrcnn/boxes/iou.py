"""Pairwise intersection over union, with the original's +1 convention as a parameter."""
import tensorflow as tf


def _iou(a, b, offset):
    """IoU of broadcastable box tensors a [..., 4] and b [..., 4] -> [...]."""
    wa = a[..., 2] - a[..., 0] + offset
    ha = a[..., 3] - a[..., 1] + offset
    wb = b[..., 2] - b[..., 0] + offset
    hb = b[..., 3] - b[..., 1] + offset
    iw = tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]) + offset
    ih = tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]) + offset
    overlap = (iw > 0) & (ih > 0) & (wa > 0) & (ha > 0) & (wb > 0) & (hb > 0)
    zero = tf.zeros_like(iw)
    inter = tf.where(overlap, iw * ih, zero)
    union = tf.where(overlap, wa * ha + wb * hb - inter, tf.ones_like(iw))
    return tf.where(overlap, inter / union, zero)


def pairwise_iou(boxes_a, boxes_b, offset=1.0):
    """IoU of every box of `boxes_a` with every box of `boxes_b`.

    Widths are x2 - x1 + offset (offset=1.0: the original's Cython bbox_overlaps). Boxes that
    do not overlap, and boxes of non-positive width or height, give 0.

    Args:
      boxes_a: [N, 4] or [B, N, 4] float32 (x1, y1, x2, y2).
      boxes_b: [M, 4] or [B, M, 4] float32, the same rank as boxes_a.
    Returns:
      [N, M] or [B, N, M] float32.
    """
    boxes_a = tf.convert_to_tensor(boxes_a)
    boxes_b = tf.cast(boxes_b, boxes_a.dtype)
    return _iou(boxes_a[..., :, None, :], boxes_b[..., None, :, :], offset)


def batched_pairwise_iou(boxes_a, boxes_b, offset=1.0):
    """`pairwise_iou` per image: [B, N, 4] x [B, M, 4] -> [B, N, M] float32."""
    boxes_a = tf.convert_to_tensor(boxes_a)
    boxes_b = tf.convert_to_tensor(boxes_b)
    if boxes_a.shape.rank != 3 or boxes_b.shape.rank != 3:
        raise ValueError(f"batched_pairwise_iou needs [B, N, 4] and [B, M, 4], got {boxes_a.shape} and "
                         f"{boxes_b.shape}")
    return pairwise_iou(boxes_a, boxes_b, offset)
