"""RPN proposals (the original's batched proposal_opr, docs/original.md#proposals) with fixed output
shapes."""
import tensorflow as tf

from lhrcnn import ops
from lhrcnn.boxes.coder import clip_boxes, decode


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"generate_proposals: {name} must be a positive integer, got {value!r}")
    return value


def generate_proposals(objectness_logits, box_deltas, anchors, image_info, pre_nms_top_n, post_nms_top_n,
                       nms_threshold, offset=1.0, backend=None, clip_scale=None):
    """Decodes, clips, ranks and suppresses RPN boxes per image; one NMS call for the batch.

    Per image: foreground probability = softmax over each anchor's channel pair (2a = bg,
    2a + 1 = fg), ranked through the equivalent logit margin fg - bg (no float32 ties where the
    probability saturates; the original ranked the probability itself); deltas (raw, not
    normalised) decoded against all anchors and clipped to (image_info[b, 0], image_info[b, 1]);
    the k = min(pre_nms_top_n, #anchors) best kept; greedy NMS with +offset areas (boxes with
    IoU > nms_threshold suppressed) keeps at most post_nms_top_n, in descending score. No
    minimum-size filter (the original has none).

    Args:
      objectness_logits: [B, H, W, 2A] float32.
      box_deltas: [B, H, W, 4A] float32, channels 4a..4a+3 = (dx, dy, dw, dh) of anchor a.
      anchors: [H·W·A, 4] float32 in (y, x, a) order (`grid_anchors`).
      image_info: [B, >=2] float32 (resized height, width, ...) — the clip window.
      pre_nms_top_n, post_nms_top_n: positive Python ints. nms_threshold: float in [0, 1].
      offset: 1.0 for the original's +1 IoU convention in NMS and in decoding.
      backend: NMS backend for `lhrcnn.ops.nms` (None, "custom", "tf"); "tf" compiles under XLA.
      clip_scale: upper bound of dw/dh before exp (None: the original, no clamp; see coder.decode).
    Returns:
      rois: [B·post_nms_top_n, 5] float32 (batch_index, x1, y1, x2, y2), image-major; the rows
        of image b are b·post .. (b+1)·post - 1, valid ones first in descending score.
      scores: [B·post_nms_top_n] float32 foreground probabilities (0 for padding).
      valid: [B·post_nms_top_n] bool. Padding rows hold (b, 0, 0, 0, 0).
      All three carry no gradient (the second stage treats proposals as constants, as the
      original did).
    """
    pre_nms_top_n = _positive_int("pre_nms_top_n", pre_nms_top_n)
    post_nms_top_n = _positive_int("post_nms_top_n", post_nms_top_n)
    objectness_logits = tf.convert_to_tensor(objectness_logits)
    box_deltas = tf.convert_to_tensor(box_deltas)
    if objectness_logits.shape.rank != 4 or box_deltas.shape.rank != 4:
        raise ValueError("generate_proposals: objectness_logits and box_deltas must be [B, H, W, 2A] and "
                         f"[B, H, W, 4A], got {objectness_logits.shape} and {box_deltas.shape}")
    batch = tf.shape(box_deltas)[0]
    logits = tf.reshape(tf.cast(objectness_logits, tf.float32), [batch, -1, 2])  # [B, N, 2], (y, x, a)
    deltas = tf.reshape(tf.cast(box_deltas, tf.float32), [batch, -1, 4])  # [B, N, 4]
    # Ranked by the logit margin fg - bg: the order of the softmax probability, without its float32
    # ties where it saturates near 1 (which made the order depend on rounding, e.g. XLA vs not).
    margin = logits[..., 1] - logits[..., 0]
    image_info = tf.cast(image_info, tf.float32)

    num_anchors = deltas.shape[1]
    k = min(pre_nms_top_n, num_anchors) if num_anchors is not None else \
        tf.minimum(pre_nms_top_n, tf.shape(deltas)[1])
    top_margin, top_index = tf.math.top_k(margin, k=k, sorted=True)  # [B, k]
    # Decode and clip only the k best anchors' boxes (the same boxes as decoding all, then gathering).
    top_anchors = tf.gather(tf.cast(anchors, tf.float32), top_index)  # [B, k, 4]
    top_boxes = decode(top_anchors, tf.gather(deltas, top_index, batch_dims=1), offset=offset, clip_scale=clip_scale)
    top_boxes = clip_boxes(top_boxes, image_info[:, 0], image_info[:, 1])  # [B, k, 4]
    keep, _ = ops.nms(top_boxes, top_margin, post_nms_top_n, nms_threshold, box_offset=offset,
                      backend=backend)  # [B, post], -1 padded
    valid = keep >= 0
    keep = tf.maximum(keep, 0)
    roi_boxes = tf.where(valid[..., None], tf.gather(top_boxes, keep, batch_dims=1), 0.0)
    roi_scores = tf.where(valid, tf.sigmoid(tf.gather(top_margin, keep, batch_dims=1)), 0.0)  # = softmax fg
    batch_index = tf.broadcast_to(tf.cast(tf.range(batch), tf.float32)[:, None], tf.shape(roi_scores))
    rois = tf.concat([batch_index[..., None], roi_boxes], axis=-1)
    return (tf.stop_gradient(tf.reshape(rois, [-1, 5])), tf.stop_gradient(tf.reshape(roi_scores, [-1])),
            tf.reshape(valid, [-1]))
