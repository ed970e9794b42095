"""Small hand-made batches for detector tests."""
import numpy as np
import tensorflow as tf


def tiny_batch(seed=0, size=128):
    """Two images of noise with three bright boxes each (classes 1-3) and their ground truth, as
    the detector's training batch dict."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 20, (2, size, size, 3)).astype(np.float32)
    gt = np.zeros((2, 4, 4), np.float32)
    classes = np.zeros((2, 4), np.int32)
    for b in range(2):
        for j in range(3):
            x, y = rng.uniform(0, size - 48, 2)
            w, h = rng.uniform(20, 45, 2)
            gt[b, j] = [x, y, x + w, y + h]
            classes[b, j] = j + 1
            images[b, int(y):int(y + h), int(x):int(x + w), j] += 120
    return {"images": tf.constant(images), "image_info": tf.constant([[size, size, 1, size, size]] * 2, tf.float32),
            "gt_boxes": tf.constant(gt), "gt_classes": tf.constant(classes)}
