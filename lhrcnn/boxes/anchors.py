"""Anchors: the py-faster-rcnn base set (docs/original.md#anchors) and its shifts over a feature grid."""
import numpy as np
import tensorflow as tf


def generate_base_anchors(base_size=16, ratios=(0.5, 1, 2), scales=(2, 4, 8, 16, 32)):
    """The py-faster-rcnn anchors around the box [0, 0, base_size - 1, base_size - 1].

    For each ratio r (= h / w): ws = round(sqrt(base_size² / r)), hs = round(ws · r) with
    NumPy's round-half-even; for each scale s: w = ws · s, h = hs · s, centred on the base box's
    centre c = (base_size - 1) / 2 as (c - (w - 1) / 2, c - (h - 1) / 2, c + (w - 1) / 2,
    c + (h - 1) / 2), i.e. +1 widths.

    Returns:
      [A, 4] float32, A = len(ratios) · len(scales), ratio-major and scale-minor
      (index a = ratio_index · len(scales) + scale_index).
    """
    ratios = np.asarray(ratios, np.float64).reshape(-1)
    scales = np.asarray(scales, np.float64).reshape(-1)
    if base_size <= 0 or np.any(ratios <= 0) or np.any(scales <= 0):
        raise ValueError(f"base_size, ratios and scales must be positive, got {base_size!r}, "
                         f"{ratios.tolist()}, {scales.tolist()}")
    centre = 0.5 * (base_size - 1.0)
    anchors = []
    for ratio in ratios:
        ws = np.round(np.sqrt(base_size * base_size / ratio))
        hs = np.round(ws * ratio)
        for scale in scales:
            w, h = ws * scale, hs * scale
            anchors.append([centre - 0.5 * (w - 1), centre - 0.5 * (h - 1),
                            centre + 0.5 * (w - 1), centre + 0.5 * (h - 1)])
    return np.asarray(anchors, np.float32).reshape(-1, 4)


def grid_anchors(base_anchors, feature_height, feature_width, stride):
    """Shifts the base anchors to every cell of a feature map.

    Args:
      base_anchors: [A, 4] float32 (array or tensor).
      feature_height, feature_width: H and W of the feature map; Python ints or int32 scalar
        tensors (dynamic sizes work, e.g. `tf.shape(features)[1]`).
      stride: input pixels per feature cell (number).
    Returns:
      [H·W·A, 4] float32: anchor a of cell (y, x) at index (y·W + x)·A + a, equal to
      base_anchors[a] + (x·stride, y·stride, x·stride, y·stride).
    """
    base = tf.reshape(tf.cast(base_anchors, tf.float32), [1, 1, -1, 4])
    stride = tf.cast(stride, tf.float32)
    ys = tf.cast(tf.range(feature_height), tf.float32) * stride
    xs = tf.cast(tf.range(feature_width), tf.float32) * stride
    shift_y, shift_x = tf.meshgrid(ys, xs, indexing="ij")  # [H, W]
    shifts = tf.stack([shift_x, shift_y, shift_x, shift_y], axis=-1)[:, :, None, :]  # [H, W, 1, 4]
    return tf.reshape(shifts + base, [-1, 4])
