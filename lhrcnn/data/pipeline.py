"""The tf.data input pipeline, in four stages that make_dataset composes:

  select_records: the records to read (shard, training skips boxless images, box-count checks);
  read_images: the order (shuffle, repeat, skip, optional cache) and parallel read + decode;
  preprocess_element: resize, random horizontal flip (training), mean subtraction and padding
    (lhrcnn.data.preprocess, which the demo and the serving signatures use too), boxes scaled,
    flipped and padded to a fixed count;
  batch_elements: padded batches, optionally of landscape and portrait images apart.

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
import functools
import logging
import threading

import numpy as np
import tensorflow as tf

from lhrcnn.config import DEFAULT_MAX_IMAGE_PIXELS
from lhrcnn.data import preprocess
from lhrcnn.data.preprocess import resized_shape, training_sizes  # noqa: F401  (names of this module too)

logger = logging.getLogger(__name__)

_OK, _NOT_AN_IMAGE, _DECODE_FAILED, _TOO_LARGE = 0, 1, 2, 3
_REASONS = {_NOT_AN_IMAGE: "not a JPEG, PNG, GIF, BMP or WebP file (or empty)",
            _DECODE_FAILED: "unreadable, truncated or corrupt (decoding failed)",
            _TOO_LARGE: "{frames} frame(s) of {height}x{width} pixels by its header: more than the {limit} pixels "
                        "max_image_pixels allows (not decoded)"}
_MAX_NAMED = 10  # files named one by one in build-time warnings


class PipelineStats:
    """What a pipeline skipped or changed. Build-time counts are set by make_dataset; run-time
    counts are updated from tf.data's threads (thread-safe) while the dataset is iterated.

    Attributes:
      images: records the pipeline reads per pass (after sharding and skipping).
      skipped_without_boxes: training records skipped because they have no box.
      truncated_images, truncated_boxes: records with more than max_boxes_of_image boxes, and
        the boxes beyond it that are dropped.
      failed_files: {path: reason} of images skipped because they could not be decoded or
        decode to more than max_image_pixels pixels (too_large counts the latter).
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
        self.too_large = 0
        self.failures = 0
        self.size_mismatches = {}
        self.max_pixels = None  # the limit of the pipeline that reports here (the too-large message)

    def as_dict(self):
        with self._lock:
            return {"images": self.images, "skipped_without_boxes": self.skipped_without_boxes,
                    "truncated_images": self.truncated_images, "truncated_boxes": self.truncated_boxes,
                    "failed_files": len(self.failed_files), "too_large": self.too_large, "failures": self.failures,
                    "size_mismatches": len(self.size_mismatches)}

    def summary(self):
        """One line of counts."""
        return ", ".join(f"{k} {v}" for k, v in self.as_dict().items())

    def _report(self, path, image_id, status, height, width, decoded_height, decoded_width, header_size):
        """Called (through tf.py_function) for a failed image or one whose size differs from its
        record; header_size is (frames, height, width) by the file's header."""
        path = path.numpy().decode("utf-8", "replace")
        image_id, status = int(image_id.numpy()), int(status.numpy())
        frames, header_height, header_width = (int(v) for v in header_size.numpy())
        reason = _REASONS.get(status, "").format(frames=frames, height=header_height, width=header_width,
                                                 limit=self.max_pixels)
        with self._lock:
            if status != _OK:
                self.failures += 1
                first = path not in self.failed_files
                if first and status == _TOO_LARGE:
                    self.too_large += 1
                self.failed_files[path] = reason
                all_failed = len(self.failed_files) >= self.images
            else:
                first = path not in self.size_mismatches
                self.size_mismatches[path] = ((int(height), int(width)), (int(decoded_height), int(decoded_width)))
                all_failed = False
        if first and status != _OK:
            logger.warning("skipping image %s (image id %d): %s", path, image_id, reason)
        elif first:
            logger.warning("image %s (image id %d) is %dx%d but annotated as %dx%d; using the decoded size",
                           path, image_id, int(decoded_height), int(decoded_width), int(height), int(width))
        if all_failed:  # every image is bad: stop with a clear error instead of spinning on an empty repeat
            raise RuntimeError(f"all {self.images} images of the pipeline failed to decode, e.g. {path}")
        return np.int32(status == _OK)


# ----------------------------------------------------------------------------- record selection


def select_records(dataset, config, *, training, shard=None, stats=None):
    """The records a pipeline reads, and their build-time counts.

    Keeps every num_shards-th record from `index` (shard = (num_shards, index)); training drops
    records without boxes (the original did). Records with more than config.max_boxes_of_image
    boxes are counted and warned about (preprocess_element keeps the first that many).

    Returns: the list of ImageRecords. Fills stats.images, skipped_without_boxes,
      truncated_images and truncated_boxes when `stats` is given.
    Raises: ValueError for a bad shard or when no record is left.
    """
    stats = PipelineStats() if stats is None else stats
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
    return records


def _graph_function(fn):
    """`fn` for tf.data to trace as written, without AutoGraph's source conversion: the pipeline's
    functions branch with tf.cond / tf.where only, and the conversion was most of the pipeline's
    set-up time (seconds per process)."""
    return tf.autograph.experimental.do_not_convert(fn)


def _record_tensors(records):
    """The records as constant tensors; boxes and classes of record i are rows splits[i]:splits[i + 1]."""
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


def _lookup(table, position, index):
    """The element of record `index` at stream position `position`."""
    start, end = table["splits"][index], table["splits"][index + 1]
    return {"path": table["path"][index], "image_id": table["image_id"][index],
            "height": table["height"][index], "width": table["width"][index],
            "boxes": table["boxes"][start:end], "classes": table["classes"][start:end],
            "position": position}


# ----------------------------------------------------------------------------- decoding


def _read_and_decode(max_pixels, element):
    """The element with its image decoded, or an empty image and the status why not: not an image,
    or more than max_pixels pixels by its header (then nothing is decoded)."""
    raw = tf.io.read_file(element["path"])
    supported = preprocess.is_supported_image(raw)
    size = tf.cond(supported, lambda: tf.stack(preprocess.decoded_size(raw)), lambda: tf.zeros([3], tf.int64))
    fits = tf.reduce_prod(size) <= max_pixels
    image = tf.cond(supported & fits, lambda: preprocess.decode_image(raw, max_pixels=None),
                    lambda: tf.zeros([0, 0, 3], tf.uint8))
    image.set_shape([None, None, 3])
    status = tf.where(supported, tf.where(fits, _OK, _TOO_LARGE), _NOT_AN_IMAGE)
    return {**element, "image": image, "status": status, "header_size": size}


def _decode_or_mark_failed(max_pixels, element):
    """A one-element dataset: the decoded element, or the element marked failed (status 2)."""
    decoded = (tf.data.Dataset.from_tensors(element)
               .map(_graph_function(functools.partial(_read_and_decode, max_pixels)))
               .ignore_errors(log_warning=True))
    failed = tf.data.Dataset.from_tensors({**element, "image": tf.zeros([0, 0, 3], tf.uint8),
                                           "status": tf.constant(_DECODE_FAILED),
                                           "header_size": tf.zeros([3], tf.int64)})
    return decoded.concatenate(failed).take(1)


def _report(stats, element):
    """Marks the element to keep (decoded) or drop; failures and size mismatches go to `stats`."""
    shape = tf.shape(element["image"])
    mismatch = tf.logical_and(tf.equal(element["status"], _OK), tf.logical_or(
        tf.not_equal(shape[0], element["height"]), tf.not_equal(shape[1], element["width"])))
    keep = tf.cond(
        tf.logical_or(tf.not_equal(element["status"], _OK), mismatch),
        lambda: tf.py_function(stats._report, [element["path"], element["image_id"], element["status"],
                                               element["height"], element["width"], shape[0], shape[1],
                                               element["header_size"]],
                               tf.int32),
        lambda: tf.constant(1, tf.int32))
    return {**element, "keep": tf.reshape(tf.cast(keep, tf.bool), [])}


def _decode(indices, table, stats, num_parallel_calls, max_pixels):
    """(position, record index) pairs -> decoded elements, in order; failed images dropped."""
    stats.max_pixels = max_pixels
    return (indices.map(_graph_function(functools.partial(_lookup, table)))
            .interleave(_graph_function(functools.partial(_decode_or_mark_failed, max_pixels)),
                        cycle_length=num_parallel_calls, block_length=1,
                        num_parallel_calls=num_parallel_calls, deterministic=True)
            .map(_graph_function(functools.partial(_report, stats)))
            .filter(_graph_function(lambda element: element["keep"])))


def read_images(records, *, shuffle, repeat, seed, skip=0, cache=False, stats=None,
                num_parallel_calls=tf.data.AUTOTUNE, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """The stream of decoded images of `records`.

    Args:
      records: ImageRecords (select_records).
      shuffle: shuffle over all records, reshuffled every pass (with `seed`).
      repeat: repeat forever.
      seed: the shuffle's seed.
      skip: start this many images into the (shuffled, repeated) stream.
      cache: decode every image once (in record order) and keep the decoded images in memory;
        shuffling, repeating and skipping then run over the decoded images.
      stats: the PipelineStats that failures and size mismatches are reported to.
      num_parallel_calls: parallelism of reading and decoding.
      max_pixels: images that decode to more pixels (frames x height x width, by the file's
        header) are skipped without being decoded (config.max_image_pixels).
    Returns:
      tf.data.Dataset of dicts: path, image_id, height, width (the record's), boxes [n, 4],
      classes [n], image [H, W, 3] uint8, status, keep, and position (int64, the image's place
      in the stream, counted from its start before `skip`: it seeds the per-image randomness).
    """
    stats = PipelineStats() if stats is None else stats
    table = _record_tensors(records)
    if cache:
        # Decode every image once (in record order; failures warned once), keep the decoded
        # uint8 images in memory, then shuffle, repeat and number the decoded elements: the
        # stream is that of the uncached pipeline over the readable images.
        data = _decode(tf.data.Dataset.range(len(records)).map(_graph_function(lambda i: (i, i))), table, stats,
                       num_parallel_calls, max_pixels).cache()
        if shuffle:
            data = data.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            data = data.repeat()
        return data.enumerate().skip(skip).map(
            _graph_function(lambda position, element: {**element, "position": position}))
    indices = tf.data.Dataset.range(len(records))
    if shuffle:
        indices = indices.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        indices = indices.repeat()
    return _decode(indices.enumerate().skip(skip), table, stats, num_parallel_calls, max_pixels)


# ----------------------------------------------------------------------------- preprocessing


def _stream_seed(seed, offset, position):
    """The stateless seed of one per-image random draw: (seed + offset, position)."""
    return tf.stack([tf.constant(seed, tf.int64) + offset, position])


def _flipped_boxes(boxes, width, offset):
    """Boxes (x1, y1, x2, y2) of an image `width` pixels wide after a left-right flip:
    x1' = width - x2 - offset, x2' = width - x1 - offset."""
    return tf.stack([width - boxes[:, 2] - offset, boxes[:, 1], width - boxes[:, 0] - offset, boxes[:, 3]], axis=1)


def _padded_rows(tensor, count):
    """The first `count` rows of `tensor`, zero-padded to exactly `count` rows."""
    tensor = tensor[:count]
    paddings = [[0, count - tf.shape(tensor)[0]]] + [[0, 0]] * (tensor.shape.rank - 1)
    return tf.ensure_shape(tf.pad(tensor, paddings), [count] + tensor.shape[1:].as_list())


def preprocess_element(element, *, short_size, max_size, image_mean, size_divisor, max_boxes, box_offset=0.0,
                       random_flip=False, seed=0):
    """One decoded element as a detector input (lhrcnn.data.preprocess.preprocess).

    Args:
      element: a read_images element (image, boxes, classes, image_id, position).
      short_size, max_size: numbers, or two tuples of the same length (multi-scale): then each
        image draws one of the pairs.
      image_mean (BGR), size_divisor: as in the config.
      max_boxes: boxes (and classes) are cut or zero-padded to this many rows.
      box_offset: the flip's box convention (1: the original's -1).
      random_flip: flip each image left-right (image and boxes) with p = 0.5.
      seed: an int that, with the element's position, seeds its random draws: the flip from
        the stateless seed (seed, position), the multi-scale pair from (seed + 1, position).
    Returns:
      dict: images [H', W', 3] float32, image_info [5] float32, gt_boxes [max_boxes, 4] float32
      (resized pixels), gt_classes [max_boxes] int32, image_id int64.
    """
    if isinstance(short_size, tuple):  # multi-scale: one size per image, reproducible
        pick = tf.random.stateless_uniform([], seed=_stream_seed(seed, 1, element["position"]),
                                           maxval=len(short_size), dtype=tf.int32)
        short_size = tf.gather(tf.constant(short_size, tf.float64), pick)
        max_size = tf.gather(tf.constant(max_size, tf.float64), pick)
    flip = None
    if random_flip:
        flip = tf.random.stateless_uniform([], seed=_stream_seed(seed, 0, element["position"])) < 0.5
    images, info = preprocess.preprocess(element["image"], short_size, max_size, image_mean, size_divisor, flip=flip)
    boxes = element["boxes"] * info[2]
    if flip is not None:
        boxes = tf.where(flip, _flipped_boxes(boxes, info[1], float(box_offset)), boxes)
    return {"images": images, "image_info": info,
            "gt_boxes": _padded_rows(boxes, max_boxes), "gt_classes": _padded_rows(element["classes"], max_boxes),
            "image_id": element["image_id"]}


# ----------------------------------------------------------------------------- batching


def _is_landscape(element):
    shape = tf.shape(element["images"])
    return tf.cast(shape[1] >= shape[0], tf.int64)


def batch_elements(data, batch_size, *, drop_remainder, group_by_aspect_ratio=False):
    """Padded batches of preprocessed elements: each batch is zero-padded to its largest image
    (still a multiple of the size divisor). With group_by_aspect_ratio, landscape (w >= h) and
    portrait images are batched apart, so that a batch pads less (a mixed batch of 320x480 and
    480x320 images would compute on 480x480); a batch is then the next `batch_size` images of
    its kind."""
    if group_by_aspect_ratio:
        return data.group_by_window(
            _graph_function(_is_landscape),
            _graph_function(lambda key, window: window.padded_batch(batch_size, drop_remainder=drop_remainder)),
            window_size=batch_size)
    return data.padded_batch(batch_size, drop_remainder=drop_remainder)


# ----------------------------------------------------------------------------- the pipeline


def make_dataset(dataset, config, *, training, batch_size, shuffle=None, seed=None, repeat=None,
                 num_parallel_calls=tf.data.AUTOTUNE, shard=None, stats=None, drop_remainder=None,
                 cache=None, group_by_aspect_ratio=None, skip=0):
    """The input pipeline of a DetectionDataset: select_records, read_images, preprocess_element
    and batch_elements.

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
    records = select_records(dataset, config, training=training, shard=shard, stats=stats)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
    short_size, max_size = training_sizes(config) if training else preprocess.eval_sizes(config)
    data = read_images(records, shuffle=shuffle, repeat=repeat, seed=seed, skip=int(skip), cache=cache, stats=stats,
                       num_parallel_calls=num_parallel_calls, max_pixels=int(config.max_image_pixels))
    data = data.map(_graph_function(functools.partial(
        preprocess_element, short_size=short_size, max_size=max_size, image_mean=config.image_mean,
        size_divisor=int(config.size_divisor), max_boxes=int(config.max_boxes_of_image),
        box_offset=float(config.box_offset), random_flip=training, seed=seed)),
        num_parallel_calls=num_parallel_calls, deterministic=True)
    data = batch_elements(data, batch_size, drop_remainder=drop_remainder, group_by_aspect_ratio=group_by_aspect_ratio)
    return data.prefetch(tf.data.AUTOTUNE)
