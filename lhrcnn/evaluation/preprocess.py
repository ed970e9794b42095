"""Single-image reading and preprocessing for inference outside tf.data (the demo): the eval
pipeline's preprocessing (lhrcnn.data.preprocess.preprocess_for_eval, which
lhrcnn.data.pipeline.make_dataset with training=False applies too) on one image, as a batch of one."""
import os

import numpy as np
import tensorflow as tf

from lhrcnn.data import preprocess


def decode_image_file(path):
    """[H, W, 3] uint8 RGB of a JPEG/PNG/GIF/BMP/WebP file; FileNotFoundError or ValueError
    naming the file when it is missing or cannot be decoded."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        image = preprocess.decode_image(tf.io.read_file(path))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"image {path} cannot be decoded ({reason})") from None
    return image.numpy()


def preprocess_image(image, config):
    """One image as a batch of one for the detector, as the eval pipeline makes it.

    Args:
      image: [H, W, 3] uint8 (or float) RGB.
      config: the experiment Config (eval_image_short_size, eval_image_max_size, image_mean
        (BGR order), size_divisor).
    Returns:
      images [1, H', W', 3] float32 (H', W' multiples of size_divisor) and image_info [1, 5]
      float32 = (resized h, resized w, scale, original h, original w).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
    return preprocess.preprocess_for_eval(tf.convert_to_tensor(image)[None], config)
