"""The detector's image preprocessing, used by the tf.data pipeline (lhrcnn.data.pipeline), the
single-image inference of the demo (lhrcnn.evaluation.preprocess) and the serving signatures
(lhrcnn.export.serving).

An image [H, W, 3] (or a batch [N, H, W, 3] of one size), uint8 or float RGB, is
  1. resized, bilinear (half-pixel centres, no antialiasing), so that its short side is
     `short_size`, lowered so that its long side is at most `max_size` (resized_shape); a side
     that would round to 0 pixels is kept at 1;
  2. optionally mirrored left-right (training augmentation);
  3. normalised: RGB minus image_mean reversed (the mean is listed in BGR order), no std;
  4. zero-padded at the bottom/right to multiples of size_divisor (zero = the mean colour);
and described by image_info = (resized h, resized w, scale, original h, original w), float32.

The functions use TensorFlow ops only, on tensors of any static or dynamic size, so they run
eagerly, inside tf.data map functions and inside traced tf.functions (SavedModel signatures).
"""
import numpy as np
import tensorflow as tf


# ----------------------------------------------------------------------------- decoding


def is_supported_image(raw):
    """Scalar bool: the bytes `raw` start with a JPEG, PNG, GIF, BMP or WebP signature (the
    formats tf.io.decode_image reads). Empty or short strings are False, never an error."""
    # The first 12 bytes, zero-padded: substr past the end of a shorter string would raise.
    head = tf.strings.join([tf.strings.substr(raw, 0, 12), b"\0" * 12])
    return (tf.io.is_jpeg(raw)
            | tf.equal(tf.strings.substr(head, 0, 8), b"\x89PNG\r\n\x1a\n")
            | tf.equal(tf.strings.substr(head, 0, 4), b"GIF8")
            | tf.equal(tf.strings.substr(head, 0, 2), b"BM")
            | (tf.equal(tf.strings.substr(head, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(head, 8, 4), b"WEBP")))


def decode_image(raw):
    """[H, W, 3] uint8 RGB of encoded image bytes (an animation's first frame; grey and RGBA
    images converted to RGB). Bytes that are not a readable image raise in the decoder."""
    image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


# ----------------------------------------------------------------------------- sizes


def resized_shape(height, width, short_size, max_size):
    """The original's get_hw_by_short_size: scale = short / min(h, w), lowered to max / max(h, w)
    if the long side would exceed max; sizes round(side · scale) (half to even).

    Args: height, width: scalar int tensors or numbers; short_size, max_size: numbers or scalar
      float64 tensors.
    Returns: (resized height int32, resized width int32, scale float32).
    """
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    scale = short_size / tf.minimum(h, w)
    scale = tf.where(scale * tf.maximum(h, w) > max_size, max_size / tf.maximum(h, w), scale)
    return (tf.cast(tf.round(h * scale), tf.int32), tf.cast(tf.round(w * scale), tf.int32),
            tf.cast(scale, tf.float32))


def training_sizes(config):
    """(short, max) training sizes: numbers, or for multi-scale training two tuples of the same
    length (a scalar image_max_size is used with every short size)."""
    short, longest = config.image_short_size, config.image_max_size
    if not isinstance(short, (tuple, list)):
        if isinstance(longest, (tuple, list)):
            raise ValueError("config: image_max_size is a tuple but image_short_size is not")
        return short, longest
    short = tuple(float(v) for v in short)
    longest = tuple(float(v) for v in longest) if isinstance(longest, (tuple, list)) else (float(longest),) * len(short)
    if not short or len(longest) != len(short) or min(short + longest) <= 0:
        raise ValueError(f"config: multi-scale image_short_size {config.image_short_size} needs image_max_size "
                         f"as one number or a tuple of the same length, all positive; got {config.image_max_size}")
    return short, longest


def eval_sizes(config):
    """(short, max) evaluation and inference sizes of a config."""
    return config.eval_image_short_size, config.eval_image_max_size


def padded_size(size, divisor):
    """`size` (int tensor or number) rounded up to a multiple of `divisor`."""
    return (size + divisor - 1) // divisor * divisor


# ----------------------------------------------------------------------------- steps


def _spatial_axes(image):
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3] or a batch [N, H, W, 3], got shape {image.shape}")
    return rank


def _image_info(resized_height, resized_width, scale, height, width):
    return tf.stack([tf.cast(resized_height, tf.float32), tf.cast(resized_width, tf.float32), scale,
                     tf.cast(height, tf.float32), tf.cast(width, tf.float32)])


def resize(image, short_size, max_size):
    """Resizes an image, or a batch of same-size images, by resized_shape (bilinear).

    Args:
      image: [H, W, 3] or [N, H, W, 3], uint8 or float (a tensor or an array).
      short_size, max_size: numbers or scalar float64 tensors.
    Returns:
      (resized float32 [h, w, 3] or [N, h, w, 3], image_info float32 [5] or [N, 5]).
    """
    image = tf.convert_to_tensor(image)
    rank = _spatial_axes(image)
    shape = tf.shape(image)
    height, width = shape[rank - 3], shape[rank - 2]
    new_h, new_w, scale = resized_shape(height, width, short_size, max_size)
    # An extreme aspect ratio can round a side to 0 pixels, which the resize kernel rejects; keep one.
    new_h, new_w = tf.maximum(new_h, 1), tf.maximum(new_w, 1)
    resized = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear")
    info = _image_info(new_h, new_w, scale, height, width)
    if rank == 4:
        info = tf.tile(info[None], [shape[0], 1])
    return resized, info


def mean_rgb(image_mean):
    """[3] float32 constant: the BGR-listed `image_mean` in RGB order."""
    return tf.constant(np.asarray(image_mean, np.float32)[::-1].copy())


def normalise(image, image_mean):
    """Float RGB image(s) minus the BGR-listed `image_mean` reversed (no std scaling)."""
    return image - mean_rgb(image_mean)


def pad_to_multiple(image, divisor):
    """Zero-pads [H, W, C] or [N, H, W, C] at the bottom and right so that H and W become
    multiples of `divisor` (a Python int)."""
    image = tf.convert_to_tensor(image)
    rank = _spatial_axes(image)
    divisor = int(divisor)
    shape = tf.shape(image)
    height, width = shape[rank - 3], shape[rank - 2]
    paddings = [[0, 0]] * (rank - 3) + [[0, padded_size(height, divisor) - height],
                                        [0, padded_size(width, divisor) - width], [0, 0]]
    padded = tf.pad(image, paddings)
    padded.set_shape(image.shape[:rank - 3].concatenate([None, None, image.shape[-1]]))
    return padded


def preprocess(image, short_size, max_size, image_mean, size_divisor, flip=None):
    """Resize, optional flip, normalisation and padding of an image or a batch of same-size images.

    Args:
      image: [H, W, 3] or [N, H, W, 3] uint8 or float RGB.
      short_size, max_size: target short side and longest allowed long side (numbers or scalar
        float64 tensors).
      image_mean: the mean to subtract, BGR order.
      size_divisor: padded sizes are multiples of it.
      flip: None, or a scalar bool tensor: mirror the resized image left-right when True (the
        caller maps its boxes: x1' = w - x2 - offset, x2' = w - x1 - offset, w = image_info[1]).
    Returns:
      images float32 [H', W', 3] or [N, H', W', 3] (H', W' multiples of size_divisor) and
      image_info float32 [5] or [N, 5]: (resized h, resized w, scale, original h, original w).
    """
    resized, info = resize(image, short_size, max_size)
    if flip is not None:
        resized = tf.cond(flip, lambda: tf.image.flip_left_right(resized), lambda: resized)
    return pad_to_multiple(normalise(resized, image_mean), size_divisor), info


def preprocess_for_eval(image, config):
    """preprocess at the config's evaluation sizes (eval_image_short_size, eval_image_max_size),
    with its image_mean and size_divisor, never flipped."""
    short_size, max_size = eval_sizes(config)
    return preprocess(image, short_size, max_size, config.image_mean, config.size_divisor)
