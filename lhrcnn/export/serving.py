"""The serving graph of an exported detector: in-graph preprocessing of uint8 image batches and of
encoded image bytes (the eval pipeline's resize, mean subtraction and padding), input checks that
fail with InvalidArgument naming the input, and outputs under the TF Object Detection API's names.

Preprocessing is lhrcnn.data.preprocess.preprocess_for_eval, the one that
`lhrcnn.data.pipeline.make_dataset(training=False)` and `lhrcnn.evaluation.preprocess.preprocess_image`
apply: resize (bilinear) so the short side is eval_image_short_size and the long side at most
eval_image_max_size, RGB minus the BGR-listed image_mean reversed, zero padding at the
bottom/right to multiples of size_divisor, and a batch padded to its largest image, with
image_info = (resized h, resized w, scale, original h, w).
"""
import numpy as np
import tensorflow as tf

from lhrcnn.data import preprocess

from lhrcnn.export import IMAGES_INPUT, OUTPUT_NAMES  # noqa: F401 (part of this module's interface)

DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serve_bytes"
BYTES_INPUT = "image_bytes"


# ----------------------------------------------------------------------------- input checks


def _asserts_in_order(checks):
    """One Assert per (condition, data), each running after the previous one, so that the first
    violated condition is the one reported. Returns the assert ops."""
    asserts = []
    for condition, data in checks:
        with tf.control_dependencies(asserts[-1:]):
            asserts.append(tf.debugging.Assert(condition, data, summarize=16))
    return asserts


def _shape_of(tensor, rank):
    """(shape, first `rank` dimensions padded with zeros, has_rank) as run-time values, where
    has_rank is True when `tensor` is exactly those dimensions (the rank, or a rank with trailing
    1s). Raw ops, and the element count besides the rank: a server feeds whatever shape a
    request has, while tracing and Grappler take the signature's declared rank for granted and
    fold Rank (and the length of Shape) to it."""
    shape = tf.raw_ops.Shape(input=tensor, out_type=tf.int64)
    dims = tf.concat([shape, tf.zeros([rank], tf.int64)], 0)[:rank]
    has_rank = (tf.equal(tf.raw_ops.Rank(input=tensor), rank)
                & tf.equal(tf.reduce_prod(dims), tf.raw_ops.Size(input=tensor, out_type=tf.int64)))
    return shape, dims, has_rank


def _checked(tensor, dims, asserts, static_shape):
    with tf.control_dependencies(asserts):
        tensor = tf.reshape(tensor, dims)  # exactly `rank` dimensions from here on
    return tf.ensure_shape(tensor, static_shape)


def check_images(images, signature=DEFAULT_SIGNATURE):
    """`images` as [N, H, W, 3], after checks that raise InvalidArgument naming the input and its
    shape: a batch of 3-channel images, at least one, of non-zero height and width. (The dtype,
    uint8, is the signature's: a server rejects other dtypes before the graph runs.)"""
    where = f"{signature}: input `{IMAGES_INPUT}`"
    shape, dims, has_rank = _shape_of(images, 4)
    asserts = _asserts_in_order([
        (has_rank & tf.equal(dims[3], 3),
         [f"{where} must be a batch of RGB images, uint8 [N, H, W, 3] (3 channels); got shape", shape]),
        (dims[0] > 0, [f"{where} is an empty batch (N = 0): send at least one image; got shape", shape]),
        ((dims[1] > 0) & (dims[2] > 0), [f"{where}: images must have a non-zero height and width; got shape",
                                         shape]),
    ])
    return _checked(images, dims, asserts, [None, None, None, 3])


def check_image_bytes(image_bytes, signature=BYTES_SIGNATURE):
    """`image_bytes` as [N], after checks that raise InvalidArgument naming the input: a vector,
    of at least one image."""
    where = f"{signature}: input `{BYTES_INPUT}`"
    shape, dims, has_rank = _shape_of(image_bytes, 1)
    asserts = _asserts_in_order([
        (has_rank, [f"{where} must be a vector of encoded images (JPEG or PNG), string [N]; got shape", shape]),
        (dims[0] > 0, [f"{where} is an empty batch (N = 0): send at least one image"]),
    ])
    return _checked(image_bytes, dims, asserts, [None])


# ----------------------------------------------------------------------------- preprocessing


def preprocess_images(images, config):
    """A batch of same-size images for the detector.

    Args:
      images: [N, H, W, 3] uint8 RGB.
      config: the experiment Config (eval_image_short_size, eval_image_max_size, image_mean (BGR),
        size_divisor).
    Returns:
      images [N, H', W', 3] float32 (H', W' multiples of size_divisor), image_info [N, 5] float32.
    """
    return preprocess.preprocess_for_eval(images, config)


def preprocess_encoded(image_bytes, config, signature=BYTES_SIGNATURE):
    """A batch of encoded images, each of its own size, for the detector.

    Each image is decoded to RGB (JPEG, PNG, GIF (first frame), BMP, WebP), resized, normalised
    and padded to multiples of size_divisor on its own, then the batch is padded to its largest
    image, as the eval pipeline's padded_batch does. Bytes that are not an image raise
    InvalidArgument naming the element, and so does an image that would decode to more than
    config.max_image_pixels pixels by its header (decompression bombs are not decoded); a
    truncated or corrupt file fails in the decoder (InvalidArgument as well).

    Args:
      image_bytes: [N] string.
    Returns:
      images [N, H', W', 3] float32, image_info [N, 5] float32.
    """
    d = int(config.size_divisor)
    n = tf.shape(image_bytes)[0]
    where = f"{signature}: input `{BYTES_INPUT}`"

    def decode(i, images, infos):
        raw = image_bytes[i]
        check = tf.debugging.Assert(
            preprocess.is_supported_image(raw),
            [f"{where}: element", i, "is not a JPEG or PNG image (nor GIF, BMP or WebP); its size in bytes:",
             tf.strings.length(raw)])
        with tf.control_dependencies([check]):
            image = preprocess.decode_image(raw, max_pixels=int(config.max_image_pixels),
                                            context=[f"{where}: element", i])
        padded, info = preprocess.preprocess_for_eval(image, config)
        return i + 1, images.write(i, padded), infos.write(i, info)

    images = tf.TensorArray(tf.float32, size=n, infer_shape=False, element_shape=tf.TensorShape([None, None, 3]))
    infos = tf.TensorArray(tf.float32, size=n, element_shape=tf.TensorShape([5]))
    _, images, infos = tf.while_loop(lambda i, *_: i < n, decode, (tf.constant(0), images, infos))
    image_info = infos.stack()
    max_h = tf.reduce_max(preprocess.padded_size(tf.cast(image_info[:, 0], tf.int32), d))
    max_w = tf.reduce_max(preprocess.padded_size(tf.cast(image_info[:, 1], tf.int32), d))

    def pad(i, batch):
        image = images.read(i)
        shape = tf.shape(image)
        return i + 1, batch.write(i, tf.pad(image, [[0, max_h - shape[0]], [0, max_w - shape[1]], [0, 0]]))

    batch = tf.TensorArray(tf.float32, size=n, element_shape=tf.TensorShape([None, None, 3]))
    _, batch = tf.while_loop(lambda i, _: i < n, pad, (tf.constant(0), batch))
    return batch.stack(), image_info


# ----------------------------------------------------------------------------- outputs


def serving_outputs(detections, image_info, category_ids):
    """The detector's padded detections under the TF Object Detection API's names.

    Args:
      detections: TwoStageDetector outputs: boxes [N, K, 4] (x1, y1, x2, y2, original-image
        pixels), scores [N, K], classes [N, K] int32 (contiguous, 0 = padding), num_detections [N].
      image_info: [N, 5] (resized h, w, scale, original h, w).
      category_ids: [num_classes] float32: class index -> the dataset's category id (entry 0 is 0).
    Returns:
      dict: detection_boxes [N, K, 4] float32 (y1, x1, y2, x2) / original size; detection_scores
      [N, K]; detection_classes [N, K] float32 category ids (0 for padding); num_detections [N]
      float32; detection_boxes_pixels [N, K, 4] (x1, y1, x2, y2) in original-image pixels.
    """
    boxes = detections["boxes"]
    height, width = image_info[:, 3][:, None], image_info[:, 4][:, None]
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    return {
        "detection_boxes": tf.stack([y1 / height, x1 / width, y2 / height, x2 / width], axis=-1),
        "detection_scores": detections["scores"],
        "detection_classes": tf.gather(category_ids, detections["classes"]),
        "num_detections": tf.cast(detections["num_detections"], tf.float32),
        "detection_boxes_pixels": boxes,
    }


class ServingModule(tf.Module):
    """A detector behind the two serving signatures.

    `serving_default`: images uint8 [N, H, W, 3] (one size per request, any size);
    `serve_bytes`: image_bytes string [N] (encoded images, each its own size). Both return
    OUTPUT_NAMES (see serving_outputs). Only the detector's variables are tracked, not the Keras
    model, so tf.saved_model.save writes the variables and these two functions and nothing else.
    """

    def __init__(self, detector, category_ids, name="lhrcnn_serving"):
        super().__init__(name=name)
        config = detector.config
        if len(category_ids) != config.num_classes:
            raise ValueError(f"category_ids has {len(category_ids)} entries, the detector {config.num_classes} "
                             "classes (background included)")
        table = np.asarray([0] + [int(c) for c in category_ids[1:]], np.float32)
        self.model_variables = list(detector.variables)

        def detect(images, image_info):
            detections = detector({"images": images, "image_info": image_info}, training=False)
            return serving_outputs(detections, image_info, tf.constant(table))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)],
                     autograph=False)
        def serve_images(images):
            return detect(*preprocess_images(check_images(images), config))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)], autograph=False)
        def serve_bytes(image_bytes):
            return detect(*preprocess_encoded(check_image_bytes(image_bytes), config))

        self.serve_images = serve_images
        self.serve_bytes = serve_bytes

    def signatures(self):
        return {DEFAULT_SIGNATURE: self.serve_images, BYTES_SIGNATURE: self.serve_bytes}
