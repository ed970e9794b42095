"""Resizing of feature maps shared by the necks."""
import tensorflow as tf


def upsample_nearest_to(x, reference, factor):
    """Nearest-neighbour upsampling of x [B, h, w, C] by an integer `factor`, cropped to the grid
    of `reference` [B, H, W, ...] (a stride-2 map of an odd-sized map has one extra row or column)."""
    if factor == 1:
        return x
    up = tf.repeat(tf.repeat(x, factor, axis=1), factor, axis=2)
    return up[:, :tf.shape(reference)[1], :tf.shape(reference)[2], :]
