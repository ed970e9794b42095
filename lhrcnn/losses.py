"""Detection losses of the original (docs/original.md#losses, #ohem): smooth L1, the RPN losses and the R-CNN
losses with online hard example mining (`sum_ohem_loss`), plus plain R-CNN losses for sampled RoIs.

All take fixed-shape inputs with validity masks (XLA-clean) and compute in float32.
"""
import tensorflow as tf


def smooth_l1(x, sigma=1.0):
    """Elementwise 0.5·σ²·x² where |x| < 1/σ², else |x| - 0.5/σ² (same shape and dtype as x)."""
    x = tf.convert_to_tensor(x)
    s2 = float(sigma) ** 2
    ax = tf.abs(x)
    return tf.where(ax < 1.0 / s2, 0.5 * s2 * tf.square(x), ax - 0.5 / s2)


def _softmax_ce(logits, labels):
    """Per-row softmax cross entropy; labels < 0 are treated as class 0 (mask them)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(labels, 0), logits=logits)


def rpn_losses(objectness_logits, box_deltas, labels, box_targets, sigma=3.0, per_image=False):
    """RPN classification and box losses over the anchors of all images of the batch (the
    original, per GPU tower), or of each image then averaged over the images (`per_image`).

    cls = mean softmax CE over anchors with label != -1 (each anchor's pair of logits: bg, fg);
    box = Σ over positive anchors of Σ_coords smooth_l1(delta - target, sigma) divided by
    max(1, #anchors with label != -1). With no labelled anchor both are 0 (the original: NaN).
    `per_image` makes the loss of B images the mean of their single-image losses, so that R
    replicas of B/R images compute the same total as one device with all B.

    Args:
      objectness_logits: [B, H, W, 2A] or [B, N, 2] float. box_deltas: [B, H, W, 4A] or [B, N, 4].
      labels: [B, N] int32 in {1, 0, -1} (`anchor_targets`). box_targets: [B, N, 4] float32.
    Returns:
      (cls_loss, box_loss) float32 scalars.
    """
    images = tf.shape(labels)[0]
    logits = tf.reshape(tf.cast(objectness_logits, tf.float32), [images, -1, 2])
    deltas = tf.reshape(tf.cast(box_deltas, tf.float32), [images, -1, 4])
    labels = tf.cast(labels, tf.int32)
    targets = tf.reshape(tf.cast(box_targets, tf.float32), [images, -1, 4])
    labelled = tf.cast(labels >= 0, tf.float32)
    ce = _softmax_ce(logits, labels) * labelled
    box = tf.reduce_sum(smooth_l1(deltas - targets, sigma), axis=2) * tf.cast(labels > 0, tf.float32)
    if per_image:  # each image normalised by its own labelled anchors, then the mean over images
        count = tf.maximum(tf.reduce_sum(labelled, axis=1), 1.0)
        return tf.reduce_mean(tf.reduce_sum(ce, 1) / count), tf.reduce_mean(tf.reduce_sum(box, 1) / count)
    count = tf.maximum(tf.reduce_sum(labelled), 1.0)
    return tf.reduce_sum(ce) / count, tf.reduce_sum(box) / count


def _per_roi_losses(class_logits, box_deltas, labels, box_targets, valid, sigma, class_specific):
    """Per-RoI CE [R] and box loss [R] (Σ smooth L1 over the label's 4 columns, fg only)."""
    class_logits = tf.cast(class_logits, tf.float32)
    deltas = tf.cast(box_deltas, tf.float32)
    targets = tf.cast(box_targets, tf.float32)
    labels = tf.cast(labels, tf.int32)
    valid = tf.cast(valid, tf.bool) & (labels >= 0)
    ce = tf.where(valid, _softmax_ce(class_logits, labels), 0.0)
    if class_specific:
        column = tf.maximum(labels, 0)
        deltas = tf.gather(tf.reshape(deltas, [tf.shape(deltas)[0], -1, 4]), column, batch_dims=1)
        targets = tf.gather(tf.reshape(targets, [tf.shape(targets)[0], -1, 4]), column, batch_dims=1)
    box = tf.reduce_sum(smooth_l1(deltas - targets, sigma), axis=1)
    box = tf.where(valid & (labels > 0), box, 0.0)
    return ce, box, valid


def ohem_rcnn_losses(class_logits, box_deltas, labels, box_targets, valid, top_k=512, box_loss_weight=2.0,
                     sigma=1.0, class_specific=True, image_index=None, num_images=None):
    """R-CNN losses with OHEM, the original's `sum_ohem_loss`.

    Per valid RoI: ce = softmax CE; box = Σ over the 4 coords of the label's columns of
    smooth_l1(delta - target, sigma) for foreground RoIs (0 for background). The k =
    min(top_k, #valid) RoIs with the largest ce + box (over the whole batch) are selected;
    cls = Σ ce[selected] / k, box = box_loss_weight · Σ box[selected] / k (0 when k = 0).
    Gradient flows only through the selected RoIs.

    With `image_index` ([R] int, the image of each RoI), the selection and the normalisation
    are per image instead: each image keeps its own top_k RoIs, its losses are divided by its
    own k, and the result is the mean over the `num_images` images (default max(image_index) + 1).

    Args:
      class_logits: [R, C] float. box_deltas: [R, 4·C] (class_specific) or [R, 4].
      labels: [R] int32 (-1 = ignore). box_targets: the shape of box_deltas. valid: [R] bool.
      image_index: None (whole batch) or [R] int. num_images: int or scalar tensor.
    Returns:
      (cls_loss, box_loss) float32 scalars.
    """
    ce, box, valid = _per_roi_losses(class_logits, box_deltas, labels, box_targets, valid, sigma,
                                     class_specific)
    if image_index is None:  # the whole batch is one selection: one "image"
        image_index, num_images = tf.zeros(tf.shape(ce), tf.int32), 1
    return _ohem_per_image(ce, box, valid, image_index, num_images, top_k, box_loss_weight)


def _image_masks(image_index, num_images, valid):
    image_index = tf.cast(image_index, tf.int32)
    images = tf.reduce_max(image_index) + 1 if num_images is None else tf.cast(num_images, tf.int32)
    return tf.equal(image_index[None, :], tf.range(images)[:, None]) & valid[None, :]  # [B, R]


def _ohem_per_image(ce, box, valid, image_index, num_images, top_k, box_loss_weight):
    mine = _image_masks(image_index, num_images, valid)
    combined = tf.where(mine, (ce + box)[None, :], float("-inf"))
    rows = ce.shape[0] if ce.shape[0] is not None else tf.shape(ce)[0]
    k_max = min(int(top_k), rows) if isinstance(rows, int) else tf.minimum(int(top_k), rows)
    _, index = tf.math.top_k(tf.stop_gradient(combined), k=k_max, sorted=True)  # [B, k_max]
    k = tf.minimum(int(top_k), tf.reduce_sum(tf.cast(mine, tf.int32), axis=1))  # [B]
    chosen = tf.cast(tf.range(tf.shape(index)[1])[None, :] < k[:, None], tf.float32)
    denominator = tf.maximum(tf.cast(k, tf.float32), 1.0)
    cls_loss = tf.reduce_mean(tf.reduce_sum(tf.gather(ce, index) * chosen, axis=1) / denominator)
    box_loss = box_loss_weight * tf.reduce_mean(tf.reduce_sum(tf.gather(box, index) * chosen, axis=1) / denominator)
    return cls_loss, box_loss


def rcnn_losses(class_logits, box_deltas, labels, box_targets, valid, box_loss_weight=1.0, sigma=1.0,
                class_specific=True, image_index=None, num_images=None):
    """R-CNN losses over sampled RoIs: cls = mean CE over valid RoIs; box = box_loss_weight ·
    Σ over foreground RoIs of the label's smooth L1 / max(1, #valid). Arguments as
    `ohem_rcnn_losses` (with `image_index`: per image, then the mean over the images).
    Returns (cls_loss, box_loss) float32 scalars."""
    ce, box, valid = _per_roi_losses(class_logits, box_deltas, labels, box_targets, valid, sigma,
                                     class_specific)
    if image_index is None:  # the whole batch normalised together: one "image"
        image_index, num_images = tf.zeros(tf.shape(ce), tf.int32), 1
    mine = tf.cast(_image_masks(image_index, num_images, valid), tf.float32)  # [B, R]
    count = tf.maximum(tf.reduce_sum(mine, axis=1), 1.0)
    return (tf.reduce_mean(tf.reduce_sum(mine * ce[None, :], 1) / count),
            box_loss_weight * tf.reduce_mean(tf.reduce_sum(mine * box[None, :], 1) / count))


def double_head_losses(outputs, labels, box_targets, valid, weights=(0.5, 2.0, 1.4, 0.6), sigma=1.0,
                       class_specific=True, image_index=None, num_images=None):
    """Double-Head R-CNN's R-CNN losses (docs/models.md#double-head-losses) over sampled RoIs.

    Args:
      outputs: `DoubleHead.outputs(...)`: "fc_cls", "conv_reg" and, for Double-Head-Ext,
        "fc_reg", "conv_cls" (logits / normalised deltas).
      weights: (conv-cls, conv-reg, fc-cls, fc-reg) = ω·λ products; Ext (official) 0.5, 2.0, 1.4,
        0.6; plain Double-Head 0, 2.5, 2.0, 0. A term whose output is absent must have weight 0.
      Other arguments as `rcnn_losses` (each term is its mean over the valid RoIs).
    Returns:
      (cls_loss, box_loss): the weighted sums of the classification terms (fc, conv) and of the
      regression terms (conv, fc).
    """
    w_conv_cls, w_conv_reg, w_fc_cls, w_fc_reg = (float(w) for w in weights)
    for key, w in (("conv_cls", w_conv_cls), ("fc_reg", w_fc_reg)):
        if w and key not in outputs:
            raise ValueError(f"double_head_losses: weight {w} for {key!r}, but the head has no {key!r} output "
                             "(Double-Head-Ext only)")
    common = dict(sigma=sigma, class_specific=class_specific, image_index=image_index, num_images=num_images)
    fc_cls, fc_reg = rcnn_losses(outputs["fc_cls"], outputs.get("fc_reg", outputs["conv_reg"]), labels,
                                 box_targets, valid, **common)
    conv_cls, conv_reg = rcnn_losses(outputs.get("conv_cls", outputs["fc_cls"]), outputs["conv_reg"], labels,
                                     box_targets, valid, **common)
    cls_loss = w_fc_cls * fc_cls + (w_conv_cls * conv_cls if "conv_cls" in outputs else 0.0)
    box_loss = w_conv_reg * conv_reg + (w_fc_reg * fc_reg if "fc_reg" in outputs else 0.0)
    return cls_loss, box_loss
