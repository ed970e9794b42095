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

from lhrcnn.config import DEFAULT_MAX_IMAGE_PIXELS


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


def decode_image(raw, max_pixels=DEFAULT_MAX_IMAGE_PIXELS, context=()):
    """[H, W, 3] uint8 RGB of encoded image bytes (an animation's first frame; grey and RGBA
    images converted to RGB). Bytes that are not a readable image raise in the decoder.

    When max_pixels is not None, the size the decoder would allocate (decoded_size: frames x
    height x width, read from the header) is checked first: more than max_pixels raises
    InvalidArgument, prefixed by the items of `context` (strings and tensors naming the input),
    and nothing is decoded."""
    checks = []
    if max_pixels is not None:
        frames, height, width = decoded_size(raw)
        checks.append(tf.debugging.Assert(
            frames * height * width <= max_pixels,
            [*context, "decodes to", frames, "frame(s) of", height, "x", width,
             f"pixels (read from its header): more than the {max_pixels} pixels allowed (max_image_pixels)"],
            summarize=16))
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _uint(b, offset, n, big_endian=False):
    """The n-byte unsigned integer at `offset` of the int64 byte vector b."""
    value = tf.constant(0, tf.int64)
    for i in range(n):
        value += b[offset + i] * (1 << (8 * (n - 1 - i if big_endian else i)))
    return value


def _int32(value):
    """A 4-byte unsigned value read as a signed int32 (two's complement)."""
    return tf.where(value >= 1 << 31, value - (1 << 32), value)


def _gif_size(raw):
    """(frames, height, width) int64 of what TensorFlow's GIF decoder allocates for `raw`: one
    canvas per frame, the canvas as large as the largest frame (left + width, top + height of the
    image descriptors, an upper bound).

    The frames are found by walking the GIF's blocks without decoding the pixels: each
    extension and image block ends after a chain of sub-blocks (a size byte, that many bytes, ...,
    a zero byte). Both chains, sub-blocks and then blocks, are followed for every byte position at
    once by pointer doubling: O(n log n) vectorised work for n bytes, whatever the file's layout."""
    b = tf.cast(tf.io.decode_raw(raw, tf.uint8), tf.int32)
    b = tf.concat([b, tf.zeros([16], tf.int32)], 0)  # reads past the end see zeros (chain ends)
    n = tf.size(b)
    last = n - 1
    pos = tf.range(n)
    steps = tf.cast(tf.math.ceil(tf.math.log(tf.cast(n, tf.float64)) / np.log(2.0)), tf.int32) + 1

    def at(vector, index):
        return tf.gather(vector, tf.minimum(index, last))

    def le16(offset):
        return at(b, pos + offset) + 256 * at(b, pos + offset + 1)

    def follow(nxt, *values):
        """After `steps` doublings, each position's chain end and the sum (first value) and
        maxima (others) of `values` along the chain; ends point to themselves with zero values."""
        def body(i, nxt, total, *maxima):
            total = total + tf.gather(total, nxt)
            maxima = [tf.maximum(m, tf.gather(m, nxt)) for m in maxima]
            return (i + 1, tf.gather(nxt, nxt), total, *maxima)
        return tf.while_loop(lambda i, *_: i < steps, body, (tf.constant(0), nxt, *values))[1:]

    # sub-block chains: position -> the position of the chain's zero byte
    zeros = tf.zeros_like(pos)
    term, _ = follow(tf.where(tf.equal(b, 0), pos, tf.minimum(pos + b + 1, last)), zeros)
    packed = at(b, pos + 9)
    local_table = tf.where(packed >= 128, 3 * tf.bitwise.left_shift(2, packed % 8), 0)
    is_image, is_extension = tf.equal(b, 0x2C), tf.equal(b, 0x21)
    block_end = tf.where(is_image, at(term, pos + 11 + local_table) + 1,
                         tf.where(is_extension, at(term, pos + 2) + 1, pos))
    _, frames, width, height = follow(
        tf.minimum(block_end, last), tf.cast(is_image, tf.int32),
        tf.where(is_image, le16(1) + le16(5), 0), tf.where(is_image, le16(3) + le16(7), 0))
    flags = b[10]
    first = 13 + tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2, flags % 8), 0)
    return tuple(tf.cast(at(v, first), tf.int64) for v in (frames, height, width))


def decoded_size(raw):
    """(frames, height, width) int64 scalars: the size tf.io.decode_image allocates for the encoded
    image `raw` (decoded_size[0] x [1] x [2] pixels), read from the file's header, not decoded.

    JPEG: the frame header (tf.image.extract_jpeg_shape; a corrupt JPEG raises InvalidArgument);
    PNG: IHDR; BMP: the info header's width and |height|; WebP: the VP8, VP8L or VP8X header (the
    decoder refuses animated WebP with 3 channels); GIF: every frame (_gif_size). Bytes of none of
    these formats give (0, 0, 0)."""
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(raw, 0, 32), b"\0" * 32]), 0, 32)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)
    zero = tf.constant(0, tf.int64)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(raw), tf.int64)
        return tf.constant(1, tf.int64), shape[0], shape[1]

    def gif():
        return _gif_size(raw)

    def other():
        png = tf.equal(tf.strings.substr(head, 0, 8), b"\x89PNG\r\n\x1a\n")
        bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM")
        webp = (tf.equal(tf.strings.substr(head, 0, 4), b"RIFF")
                & tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))
        chunk = tf.strings.substr(head, 12, 4)
        vp8l_bits = _uint(b, 21, 4)
        webp_h = tf.case([(tf.equal(chunk, b"VP8 "), lambda: _uint(b, 28, 2) % (1 << 14)),
                          (tf.equal(chunk, b"VP8L"), lambda: (vp8l_bits // (1 << 14)) % (1 << 14) + 1),
                          (tf.equal(chunk, b"VP8X"), lambda: _uint(b, 27, 3) + 1)], default=lambda: zero)
        webp_w = tf.case([(tf.equal(chunk, b"VP8 "), lambda: _uint(b, 26, 2) % (1 << 14)),
                          (tf.equal(chunk, b"VP8L"), lambda: vp8l_bits % (1 << 14) + 1),
                          (tf.equal(chunk, b"VP8X"), lambda: _uint(b, 24, 3) + 1)], default=lambda: zero)
        height = tf.where(png, _uint(b, 20, 4, big_endian=True),
                          tf.where(bmp, tf.abs(_int32(_uint(b, 22, 4))), tf.where(webp, webp_h, zero)))
        width = tf.where(png, _uint(b, 16, 4, big_endian=True),
                         tf.where(bmp, tf.abs(_int32(_uint(b, 18, 4))), tf.where(webp, webp_w, zero)))
        return tf.cast(png | bmp | webp, tf.int64), height, width

    is_gif = tf.equal(tf.strings.substr(head, 0, 4), b"GIF8")
    return tf.case([(tf.io.is_jpeg(raw), jpeg), (is_gif, gif)], default=other)


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
