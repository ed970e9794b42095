"""Test-time post-processing (docs/original.md#post-processing): class probabilities,
de-normalised class-specific deltas decoded on the RoIs in original-image pixels, clipping,
per-class NMS, the best `max_detections` per image. Padded, fixed-shape outputs."""
import tensorflow as tf

from lhrcnn import ops
from lhrcnn.boxes import coder


def detect(class_logits, box_deltas, rois, rois_valid, image_info, num_classes, *, nms_threshold=0.5,
           score_threshold=0.0, max_detections=100, bbox_means=(0.0, 0.0, 0.0, 0.0),
           bbox_stds=(0.1, 0.1, 0.2, 0.2), offset=1.0, backend=None, clip_scale=None, probabilities=False):
    """Detections of a batch.

    Args:
      class_logits: [B·R, num_classes] float32 (class 0 = background).
      box_deltas: [B·R, 4·num_classes] (class-specific) or [B·R, 4] (shared) normalised deltas.
      rois: [B·R, 5] (batch_index, x1, y1, x2, y2) in resized-image pixels, R per image, image-major.
      rois_valid: [B·R] bool (padding rows are False).
      image_info: [B, 5] (resized h, w, scale, original h, w).
      clip_scale: upper bound of dw/dh before exp (None: the original, no clamp).
      probabilities: `class_logits` already holds the class scores (e.g. Double-Head-Ext's
        fused scores, which need not sum to 1) and is used as is instead of its softmax.
    Returns:
      dict of boxes [B, K, 4] (x1, y1, x2, y2 in original-image pixels), scores [B, K],
      classes [B, K] int32 (1..num_classes-1, 0 for padding), num_detections [B] int32, K = max_detections.
    Per-class NMS runs as one batched NMS over (image, class) pairs; keeping each class's best
    K survivors and then the best K overall equals the original's per-class NMS followed by the
    top K of all survivors.
    """
    batch = tf.shape(image_info)[0]
    fg = num_classes - 1
    probs = tf.reshape(class_logits if probabilities else tf.nn.softmax(class_logits), [batch, -1, num_classes])
    per_image = tf.shape(probs)[1]
    deltas = tf.reshape(box_deltas, [batch, per_image, -1, 4])
    deltas = deltas * tf.constant(bbox_stds, tf.float32) + tf.constant(bbox_means, tf.float32)
    scale = image_info[:, 2][:, None, None]
    boxes = tf.reshape(rois[:, 1:], [batch, per_image, 1, 4]) / scale[..., None]
    boxes = tf.broadcast_to(boxes, tf.shape(deltas))
    decoded = coder.decode(tf.reshape(boxes, [-1, 4]), tf.reshape(deltas, [-1, 4]), offset=offset,
                           clip_scale=clip_scale)
    decoded = tf.reshape(decoded, tf.shape(deltas))
    if decoded.shape[2] == 1:  # shared regression: the same box for every class
        decoded = tf.broadcast_to(decoded, [batch, per_image, num_classes, 4])
    decoded = coder.clip_boxes(decoded, image_info[:, 3], image_info[:, 4])
    valid = tf.reshape(rois_valid, [batch, per_image, 1])
    scores = tf.where(valid, probs, tf.fill(tf.shape(probs), -1.0))[:, :, 1:]  # [B, R, fg]
    # [B, fg, R, ...]: one NMS problem per (image, class).
    class_boxes = tf.reshape(tf.transpose(decoded[:, :, 1:], [0, 2, 1, 3]), [batch * fg, per_image, 4])
    class_scores = tf.reshape(tf.transpose(scores, [0, 2, 1]), [batch * fg, per_image])
    keep, _ = ops.nms(class_boxes, class_scores, max_detections, nms_threshold, score_threshold,
                      box_offset=offset, backend=backend)  # [B·fg, K]
    kept_valid = keep >= 0
    safe = tf.maximum(keep, 0)
    cand_boxes = tf.gather(class_boxes, safe, batch_dims=1)
    cand_scores = tf.where(kept_valid, tf.gather(class_scores, safe, batch_dims=1), -2.0)
    cand_classes = tf.broadcast_to(tf.range(1, num_classes, dtype=tf.int32)[None, :, None],
                                   [batch, fg, max_detections])
    cand_boxes = tf.reshape(cand_boxes, [batch, fg * max_detections, 4])
    cand_scores = tf.reshape(cand_scores, [batch, fg * max_detections])
    cand_classes = tf.reshape(cand_classes, [batch, fg * max_detections])
    top_scores, top = tf.math.top_k(cand_scores, k=max_detections, sorted=True)
    found = top_scores > -2.0
    out_boxes = tf.where(found[..., None], tf.gather(cand_boxes, top, batch_dims=1), 0.0)
    return {
        "boxes": out_boxes,
        "scores": tf.where(found, top_scores, 0.0),
        "classes": tf.where(found, tf.gather(cand_classes, top, batch_dims=1), 0),
        "num_detections": tf.reduce_sum(tf.cast(found, tf.int32), axis=1),
    }
