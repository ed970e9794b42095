"""Single-image reading and preprocessing for inference outside tf.data (the demo): the eval
pipeline's steps (lhrcnn.data.pipeline.make_dataset with training=False) on one image: resize by
the pipeline's own resized_shape (eval short / max side), bilinear; RGB minus the BGR-listed mean
reversed; zero padding (= the mean colour) at the bottom/right to multiples of size_divisor."""
import os

import numpy as np
import tensorflow as tf

from lhrcnn.data.pipeline import resized_shape


def decode_image_file(path):
    """[H, W, 3] uint8 RGB of a JPEG/PNG/GIF/BMP/WebP file; FileNotFoundError or ValueError
    naming the file when it is missing or cannot be decoded."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
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
    height, width = image.shape[:2]
    new_h, new_w, scale = resized_shape(height, width, config.eval_image_short_size, config.eval_image_max_size)
    new_h, new_w = int(new_h), int(new_w)
    resized = tf.image.resize(tf.convert_to_tensor(image)[None], [new_h, new_w], method="bilinear")
    resized -= tf.constant(np.asarray(config.image_mean, np.float32)[::-1].copy())
    d = int(config.size_divisor)
    padded = tf.pad(resized, [[0, 0], [0, -new_h % d], [0, -new_w % d], [0, 0]])
    info = tf.stack([tf.cast(new_h, tf.float32), tf.cast(new_w, tf.float32), scale,
                     tf.cast(height, tf.float32), tf.cast(width, tf.float32)])[None]
    return padded, info
