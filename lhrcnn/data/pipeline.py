"""The tf.data input pipeline: records -> parallel read + decode -> resize (short side / max side)
-> random horizontal flip (training) -> mean subtraction -> pad to the size divisor -> padded batches.

Bad data never hangs or stops a run. Each image is read and decoded inside its own one-element
dataset with `ignore_errors()`, followed by a one-element fallback that marks the image as failed;
`interleave` runs these in parallel and keeps the input order. So a failed image is still an
element carrying its path: a later step reports it (a Python warning naming the file, counted in a
PipelineStats) through a `tf.py_function` that runs only for bad images, and a filter drops it.
Bytes that are not JPEG/PNG/GIF/BMP/WebP (empty files included) are recognised by their signature
under a `tf.cond` and never reach the decoder; truncated or corrupt files, and files that vanished
after loading, make the decoder (or reader) fail and take the fallback. TensorFlow's own warning
for those (it gives the decoder's reason but not the file) is left on.
"""
import logging
import threading

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

_OK, _NOT_AN_IMAGE, _DECODE_FAILED = 0, 1, 2
_REASONS = {_NOT_AN_IMAGE: "not a JPEG, PNG, GIF, BMP or WebP file (or empty)",
            _DECODE_FAILED: "unreadable, truncated or corrupt (decoding failed)"}
_MAX_NAMED = 10  # files named one by one in build-time warnings


class PipelineStats:
    """What a pipeline skipped or changed. Build-time counts are set by make_dataset; run-time
    counts are updated from tf.data's threads (thread-safe) while the dataset is iterated.

    Attributes:
      images: records the pipeline reads per pass (after sharding and skipping).
      skipped_without_boxes: training records skipped because they have no box.
      truncated_images, truncated_boxes: records with more than max_boxes_of_image boxes, and
        the boxes beyond it that are dropped.
      failed_files: {path: reason} of images skipped because they could not be decoded.
      failures: skip events (a bad file fails again in every epoch).
      size_mismatches: {path: ((annotated h, w), (decoded h, w))}; the decoded size is used.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.images = 0
        self.skipped_without_boxes = 0
        self.truncated_images = 0
        self.truncated_boxes = 0
        self.failed_files = {}
        self.failures = 0
        self.size_mismatches = {}

    def as_dict(self):
        with self._lock:
            return {"images": self.images, "skipped_without_boxes": self.skipped_without_boxes,
                    "truncated_images": self.truncated_images, "truncated_boxes": self.truncated_boxes,
                    "failed_files": len(self.failed_files), "failures": self.failures,
                    "size_mismatches": len(self.size_mismatches)}

    def summary(self):
        """One line of counts."""
        return ", ".join(f"{k} {v}" for k, v in self.as_dict().items())

    def _report(self, path, image_id, status, height, width, decoded_height, decoded_width):
        """Called (through tf.py_function) for a failed image or one whose size differs from its record."""
        path = path.numpy().decode("utf-8", "replace")
        image_id, status = int(image_id.numpy()), int(status.numpy())
        with self._lock:
            if status != _OK:
                self.failures += 1
                first = path not in self.failed_files
                self.failed_files[path] = _REASONS[status]
                all_failed = len(self.failed_files) >= self.images
            else:
                first = path not in self.size_mismatches
                self.size_mismatches[path] = ((int(height), int(width)), (int(decoded_height), int(decoded_width)))
                all_failed = False
        if first and status != _OK:
            logger.warning("skipping image %s (image id %d): %s", path, image_id, _REASONS[status])
        elif first:
            logger.warning("image %s (image id %d) is %dx%d but annotated as %dx%d; using the decoded size",
                           path, image_id, int(decoded_height), int(decoded_width), int(height), int(width))
        if all_failed:  # every image is bad: stop with a clear error instead of spinning on an empty repeat
            raise RuntimeError(f"all {self.images} images of the pipeline failed to decode, e.g. {path}")
        return np.int32(status == _OK)


def resized_shape(height, width, short_size, max_size):
    """The original's get_hw_by_short_size: scale = short / min(h, w), lowered to max / max(h, w)
    if the long side would exceed max; sizes round(side · scale) (half to even).

    Args: height, width: scalar int tensors; short_size, max_size: Python numbers.
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


def _is_supported_image(raw):
    """True if the bytes start with a JPEG, PNG, GIF, BMP or WebP signature."""
    # The first 12 bytes, zero-padded: substr past the end of a shorter file would raise.
    head = tf.strings.join([tf.strings.substr(raw, 0, 12), b"\0" * 12])
    return (tf.io.is_jpeg(raw)
            | tf.equal(tf.strings.substr(head, 0, 8), b"\x89PNG\r\n\x1a\n")
            | tf.equal(tf.strings.substr(head, 0, 4), b"GIF8")
            | tf.equal(tf.strings.substr(head, 0, 2), b"BM")
            | (tf.equal(tf.strings.substr(head, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(head, 8, 4), b"WEBP")))


def _read_and_decode(element):
    raw = tf.io.read_file(element["path"])
    supported = _is_supported_image(raw)
    image = tf.cond(supported, lambda: tf.io.decode_image(raw, channels=3, expand_animations=False),
                    lambda: tf.zeros([0, 0, 3], tf.uint8))
    image.set_shape([None, None, 3])
    return {**element, "image": image, "status": tf.where(supported, _OK, _NOT_AN_IMAGE)}


def _decode_or_mark_failed(element):
    """A one-element dataset: the decoded element, or the element marked failed (status 2)."""
    decoded = tf.data.Dataset.from_tensors(element).map(_read_and_decode).ignore_errors(log_warning=True)
    failed = tf.data.Dataset.from_tensors({**element, "image": tf.zeros([0, 0, 3], tf.uint8),
                                           "status": tf.constant(_DECODE_FAILED)})
    return decoded.concatenate(failed).take(1)


def _record_tensors(records):
    lengths = np.array([len(r.boxes) for r in records], np.int64)
    splits = np.concatenate([[0], np.cumsum(lengths)])
    boxes = np.concatenate([r.boxes for r in records] + [np.zeros((0, 4), np.float32)]).astype(np.float32)
    classes = np.concatenate([r.classes for r in records] + [np.zeros((0,), np.int32)]).astype(np.int32)
    return {"path": tf.constant([r.path for r in records]),
            "image_id": tf.constant([r.image_id for r in records], tf.int64),
            "height": tf.constant([r.height for r in records], tf.int32),
            "width": tf.constant([r.width for r in records], tf.int32),
            "splits": tf.constant(splits), "boxes": tf.constant(boxes.reshape(-1, 4)),
            "classes": tf.constant(classes)}


def make_dataset(dataset, config, *, training, batch_size, shuffle=None, seed=None, repeat=None,
                 num_parallel_calls=tf.data.AUTOTUNE, shard=None, stats=None, drop_remainder=None,
                 cache=None, group_by_aspect_ratio=None, skip=0):
    """The input pipeline of a DetectionDataset.

    Training uses config.image_short_size / image_max_size and flips each image with p = 0.5
    (multi-scale training: with a tuple of short sizes, each image draws one of them, paired with
    the same position of image_max_size when that is a tuple too);
    evaluation uses config.eval_image_short_size / eval_image_max_size and never flips. Images
    are RGB minus config.image_mean[::-1] (the mean is listed in BGR order), no std; each is
    padded bottom/right with zeros to multiples of config.size_divisor, then batched to the
    batch's largest (still a multiple). A flip maps x1' = W - x2 - box_offset,
    x2' = W - x1 - box_offset (W = resized width; the original's -1 when box_offset = 1).
    Training records without boxes are skipped (the original did); records with more than
    config.max_boxes_of_image boxes keep the first that many (counted and warned).

    Args:
      dataset: DetectionDataset.
      config: a Config.
      training: training (flip, training sizes, skip boxless images) or evaluation.
      batch_size: images per batch.
      shuffle, repeat: default = training. Shuffling covers the whole dataset, reshuffled every pass.
      seed: makes shuffling and flips deterministic (None: random).
      num_parallel_calls: parallelism of reading/decoding and of preprocessing.
      shard: (num_shards, index): this worker reads records index, index + num_shards, ...
      stats: a PipelineStats to fill (pass one to read the counts); None = a private one.
      drop_remainder: drop a last partial batch; default = training (static batch size).
      cache: keep the decoded images in memory after the first pass (each is decoded once);
        default = training and config.cache_decoded_images. Shuffling then waits for the first
        full decode of the (shard's) dataset.
      group_by_aspect_ratio: batch landscape (w >= h) and portrait images separately, so that
        batches pad less; default = training and config.group_by_aspect_ratio. The batch order
        then differs from the ungrouped one (a batch is the next `batch_size` images of its kind).
      skip: start this many images into the (shard's, shuffled, repeated) image stream, e.g.
        steps done x images per step of this pipeline to resume training at its data position:
        the stream, its flips and its shuffles are those of an uninterrupted run (skipped images
        are not decoded, except by the first pass of a cache). With aspect-ratio grouping, the
        images waiting in a half-filled group at the kill are not replayed.
    Returns:
      tf.data.Dataset of dicts:
        images [B, H, W, 3] float32, image_info [B, 5] float32 (resized h, resized w, scale,
        original h, original w), gt_boxes [B, M, 4] float32 (x1, y1, x2, y2 in resized pixels,
        zero rows are padding), gt_classes [B, M] int32 (0 = padding), image_id [B] int64;
        M = config.max_boxes_of_image.
    Raises:
      ValueError: no record to read, or bad arguments.
    """
    shuffle = training if shuffle is None else shuffle
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    if cache is None:
        cache = training and bool(getattr(config, "cache_decoded_images", False))
    if group_by_aspect_ratio is None:
        group_by_aspect_ratio = training and bool(getattr(config, "group_by_aspect_ratio", False))
    stats = PipelineStats() if stats is None else stats
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    skip = int(skip)
    records = list(dataset.records)
    if shard is not None:
        num_shards, index = shard
        if not 0 <= index < num_shards:
            raise ValueError(f"shard {shard}: need 0 <= index < num_shards")
        records = records[index::num_shards]
    if training:
        stats.skipped_without_boxes = sum(len(r.boxes) == 0 for r in records)
        records = [r for r in records if len(r.boxes)]
    if not records:
        raise ValueError(f"{dataset.annotation_file}: no images to read (shard {shard}, "
                         f"{'training skips images without boxes' if training else 'empty dataset'})")
    max_boxes = int(config.max_boxes_of_image)
    over = [r for r in records if len(r.boxes) > max_boxes]
    stats.images = len(records)
    stats.truncated_images = len(over)
    stats.truncated_boxes = sum(len(r.boxes) - max_boxes for r in over)
    if over:
        logger.warning("%d images have more than max_boxes_of_image = %d boxes; keeping the first %d of each "
                       "(%d boxes dropped), e.g. %s", len(over), max_boxes, max_boxes, stats.truncated_boxes,
                       ", ".join(r.path for r in over[:_MAX_NAMED]))
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
    if training:
        short_size, max_size = training_sizes(config)
    else:
        short_size, max_size = config.eval_image_short_size, config.eval_image_max_size
    divisor = int(config.size_divisor)
    offset = float(config.box_offset)
    mean_rgb = tf.constant(np.asarray(config.image_mean, np.float32)[::-1].copy())
    table = _record_tensors(records)

    def lookup(position, index):
        start, end = table["splits"][index], table["splits"][index + 1]
        return {"path": table["path"][index], "image_id": table["image_id"][index],
                "height": table["height"][index], "width": table["width"][index],
                "boxes": table["boxes"][start:end], "classes": table["classes"][start:end],
                "position": position}

    def report(element):
        shape = tf.shape(element["image"])
        mismatch = tf.logical_and(tf.equal(element["status"], _OK), tf.logical_or(
            tf.not_equal(shape[0], element["height"]), tf.not_equal(shape[1], element["width"])))
        keep = tf.cond(
            tf.logical_or(tf.not_equal(element["status"], _OK), mismatch),
            lambda: tf.py_function(stats._report, [element["path"], element["image_id"], element["status"],
                                                   element["height"], element["width"], shape[0], shape[1]],
                                   tf.int32),
            lambda: tf.constant(1, tf.int32))
        return {**element, "keep": tf.reshape(tf.cast(keep, tf.bool), [])}

    def preprocess(element):
        image = element["image"]
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        if isinstance(short_size, tuple):  # multi-scale training: one size per image, reproducible
            pick = tf.random.stateless_uniform([], seed=tf.stack([tf.constant(seed, tf.int64) + 1, element["position"]]),
                                               maxval=len(short_size), dtype=tf.int32)
            new_h, new_w, scale = resized_shape(height, width, tf.gather(tf.constant(short_size, tf.float64), pick),
                                                tf.gather(tf.constant(max_size, tf.float64), pick))
        else:
            new_h, new_w, scale = resized_shape(height, width, short_size, max_size)
        image = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear")
        boxes = element["boxes"] * scale
        if training:
            flip = tf.random.stateless_uniform(
                [], seed=tf.stack([tf.constant(seed, tf.int64), element["position"]])) < 0.5
            image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
            w = tf.cast(new_w, tf.float32)
            flipped = tf.stack([w - boxes[:, 2] - offset, boxes[:, 1], w - boxes[:, 0] - offset, boxes[:, 3]], axis=1)
            boxes = tf.where(flip, flipped, boxes)
        image = image - mean_rgb
        padded_h = (new_h + divisor - 1) // divisor * divisor
        padded_w = (new_w + divisor - 1) // divisor * divisor
        image = tf.pad(image, [[0, padded_h - new_h], [0, padded_w - new_w], [0, 0]])
        image.set_shape([None, None, 3])
        boxes, classes = boxes[:max_boxes], element["classes"][:max_boxes]
        pad = max_boxes - tf.shape(boxes)[0]
        return {"images": image,
                "image_info": tf.stack([tf.cast(new_h, tf.float32), tf.cast(new_w, tf.float32), scale,
                                        tf.cast(height, tf.float32), tf.cast(width, tf.float32)]),
                "gt_boxes": tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [max_boxes, 4]),
                "gt_classes": tf.ensure_shape(tf.pad(classes, [[0, pad]]), [max_boxes]),
                "image_id": element["image_id"]}

    cycle = num_parallel_calls if num_parallel_calls != tf.data.AUTOTUNE else tf.data.AUTOTUNE

    def decode(indices):
        return (indices.map(lookup)
                .interleave(_decode_or_mark_failed, cycle_length=cycle, block_length=1,
                            num_parallel_calls=num_parallel_calls, deterministic=True)
                .map(report)
                .filter(lambda element: element["keep"]))

    if cache:
        # Decode every image once (in record order; failures warned once), keep the decoded
        # uint8 images in memory, then shuffle, repeat and number the decoded elements: the
        # batches are those of the uncached pipeline over the readable images.
        data = decode(tf.data.Dataset.range(len(records)).map(lambda i: (i, i))).cache()
        if shuffle:
            data = data.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            data = data.repeat()
        data = data.enumerate().skip(skip).map(lambda position, element: {**element, "position": position})
    else:
        indices = tf.data.Dataset.range(len(records))
        if shuffle:
            indices = indices.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            indices = indices.repeat()
        data = decode(indices.enumerate().skip(skip))
    data = data.map(preprocess, num_parallel_calls=num_parallel_calls, deterministic=True)
    if group_by_aspect_ratio:
        # Landscape and portrait images batched apart: a batch pads to its largest height and
        # width, so a mixed batch of 320x480 and 480x320 images would compute on 480x480.
        def landscape(element):
            shape = tf.shape(element["images"])
            return tf.cast(shape[1] >= shape[0], tf.int64)
        data = data.group_by_window(
            landscape, lambda key, window: window.padded_batch(batch_size, drop_remainder=drop_remainder),
            window_size=batch_size)
    else:
        data = data.padded_batch(batch_size, drop_remainder=drop_remainder)
    return data.prefetch(tf.data.AUTOTUNE)
