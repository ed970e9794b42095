"""COCO evaluation: padded detector outputs -> COCO results entries (`[x, y, w, h]`, the dataset's
own category ids; docs/original.md#post-processing) -> COCOeval (iouType "bbox") -> the 12
standard statistics by name; inference over a tf.data eval set; atomic json writes."""
import contextlib
import copy
import io
import json
import os
import time

import numpy as np

from lhrcnn.progress import Progress

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# (title, IoU, area, maxDets) of each statistic, in COCOeval.summarize()'s order.
_SUMMARY_ROWS = (
    ("Average Precision", "(AP)", "0.50:0.95", "all", 100),
    ("Average Precision", "(AP)", "0.50", "all", 100),
    ("Average Precision", "(AP)", "0.75", "all", 100),
    ("Average Precision", "(AP)", "0.50:0.95", "small", 100),
    ("Average Precision", "(AP)", "0.50:0.95", "medium", 100),
    ("Average Precision", "(AP)", "0.50:0.95", "large", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "all", 1),
    ("Average Recall", "(AR)", "0.50:0.95", "all", 10),
    ("Average Recall", "(AR)", "0.50:0.95", "all", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "small", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "medium", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "large", 100),
)


class CocoStats(dict):
    """The 12 statistics by name (STAT_NAMES order; -1 where COCOeval has nothing to average,
    e.g. APs without small ground truth), plus `.summary`: COCOeval's standard text."""

    def __init__(self, values, summary=None):
        super().__init__(zip(STAT_NAMES, (float(v) for v in values)))
        self.summary = summary if summary is not None else format_summary(self)


def format_summary(stats):
    """COCOeval.summarize()'s 12 lines for a dict of the 12 statistics."""
    lines = []
    for name, (title, kind, iou, area, max_dets) in zip(STAT_NAMES, _SUMMARY_ROWS):
        lines.append(f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = "
                     f"{stats[name]:0.3f}")
    return "\n".join(lines)


def detections_to_coco(image_ids, boxes, scores, classes, num_detections, category_ids):
    """COCO results entries of a batch of padded detections.

    Args:
      image_ids: [B] the dataset's image ids.
      boxes: [B, K, 4] (x1, y1, x2, y2) in original-image pixels.
      scores: [B, K]; classes: [B, K] contiguous class indices 1..C-1 (0 = padding).
      num_detections: [B] valid detections at the front of each row.
      category_ids: contiguous class index -> the dataset's category id (a sequence whose index 0
        is unused, or a mapping); detections of a class whose id is None or negative (a class
        the dataset does not have, DetectionDataset's -1) are dropped.
    Returns:
      list of {"image_id": int, "category_id": int, "bbox": [x1, y1, x2 - x1, y2 - y1] (no +1,
      as the original), "score": float}, valid detections only, in input order.
    """
    image_ids = np.asarray(image_ids).reshape(-1)
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    classes, num_detections = np.asarray(classes), np.asarray(num_detections).reshape(-1)
    batch = len(image_ids)
    if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be [B={batch}, K, 4], got {boxes.shape}")
    if scores.shape != boxes.shape[:2] or classes.shape != boxes.shape[:2] or num_detections.shape != (batch,):
        raise ValueError(f"scores {scores.shape} and classes {classes.shape} must be [B, K] = {boxes.shape[:2]}, "
                         f"num_detections {num_detections.shape} must be [{batch}]")
    results = []
    for b in range(batch):
        image_id = int(image_ids[b])
        for k in range(min(int(num_detections[b]), boxes.shape[1])):
            cls = int(classes[b, k])
            if cls <= 0:
                continue
            try:
                category = category_ids[cls]
            except (IndexError, KeyError):
                raise ValueError(f"class index {cls} has no category id (category_ids has {len(category_ids)} "
                                 f"entries): the detector's classes do not match the dataset's") from None
            if category is None or int(category) < 0:  # a class the dataset does not have
                continue
            x1, y1, x2, y2 = (float(v) for v in boxes[b, k])
            results.append({"image_id": image_id, "category_id": int(category),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[b, k])})
    return results


def load_ground_truth(annotation_file_or_coco):
    """A pycocotools COCO object: read from a file through lhrcnn.data.coco.read_coco_json (the
    annotations the loader keeps, malformed ones dropped, errors naming the file), or returned as
    given."""
    from pycocotools.coco import COCO
    if isinstance(annotation_file_or_coco, COCO):
        return annotation_file_or_coco
    path = os.fspath(annotation_file_or_coco)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file {path} does not exist")
    from lhrcnn.data.coco import read_coco_json
    return read_coco_json(path, for_scoring=True)[0]


def evaluate(annotation_file_or_coco, results, image_ids=None, verbose=True):
    """COCOeval (bbox) of COCO results entries against the ground truth.

    Args:
      annotation_file_or_coco: a COCO instances json path or a pycocotools COCO object.
      results: list of results entries (see detections_to_coco); not modified.
      image_ids: the images that were evaluated: the evaluation is restricted to them (a subset
        is scored only on its own ground truth) and results on other images are dropped.
        None: every image of the ground truth.
      verbose: print COCOeval's standard summary.
    Returns:
      CocoStats: the 12 statistics by name (all zeros for an empty results list), `.summary` text.
    """
    from pycocotools.cocoeval import COCOeval
    coco_gt = load_ground_truth(annotation_file_or_coco)
    if image_ids is not None:
        image_ids = sorted({int(i) for i in image_ids})
        unknown = sorted(set(image_ids) - set(coco_gt.getImgIds()))
        if unknown:
            raise ValueError(f"image ids {unknown[:10]} are not in the ground truth")
        wanted = set(image_ids)
        results = [r for r in results if int(r["image_id"]) in wanted]
    if not results:  # pycocotools' loadRes cannot take an empty list; nothing detected scores 0
        stats = CocoStats([0.0] * len(STAT_NAMES))
    else:
        unknown = sorted({int(r["image_id"]) for r in results} - set(coco_gt.getImgIds()))
        if unknown:
            raise ValueError(f"results refer to image ids {unknown[:10]} that are not in the ground truth")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress prints
            coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))  # loadRes adds fields to the entries
            evaluator = COCOeval(coco_gt, coco_dt, "bbox")
            if image_ids is not None:
                evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
        with contextlib.redirect_stdout(io.StringIO()) as summary:
            evaluator.summarize()
        stats = CocoStats(evaluator.stats, summary.getvalue().rstrip("\n"))
    if verbose:
        print(stats.summary)
    return stats


def inference_function(detector, image_dtype="float32", channels=3):
    """`detector` wrapped in one tf.function whose input signature leaves batch, height and width
    open, so images of different sizes reuse a single trace: fn(images [B, H, W, C],
    image_info [B, 5]) -> the detector's output dict."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], image_dtype),
                                  tf.TensorSpec([None, 5], tf.float32)], autograph=False)
    def infer(images, image_info):
        return detector({"images": images, "image_info": image_info})

    return infer


def run_inference(detector, tf_dataset, category_ids, progress=True, num_images=None):
    """Runs `detector` over an eval dataset and converts its detections to COCO results.

    Args:
      detector: callable on {"images", "image_info"} -> padded detections (boxes in original
        pixels, scores, classes, num_detections), e.g. lhrcnn.detector.TwoStageDetector.
      tf_dataset: tf.data.Dataset of dicts with images [B, H, W, 3], image_info [B, 5],
        image_id [B] (entries with a negative image id are batch padding and are skipped).
      category_ids: contiguous class index -> dataset category id (see detections_to_coco).
      progress: print a progress line (lhrcnn.progress: images/s, ETA) every 10 s.
      num_images: images expected, for the ETA (default: the dataset's cardinality x the first
        batch's size, when the cardinality is known).
    Returns:
      (results list, image_ids list of the images evaluated in order, stats dict: images,
      seconds (wall time of the whole loop), first_batch_seconds (includes tracing),
      images_per_second (after the first batch when there are more, else over the whole loop)).
    """
    import tensorflow as tf
    spec = tf_dataset.element_spec["images"]
    infer = inference_function(detector, spec.dtype, spec.shape[-1] if spec.shape.rank else 3)
    cardinality = int(tf_dataset.cardinality())
    results, image_ids = [], []
    meter, first_batch = None, None  # (seconds, images) of the first batch
    start = time.perf_counter()
    for batch in tf_dataset:
        out = infer(batch["images"], tf.cast(batch["image_info"], tf.float32))
        ids = np.asarray(batch["image_id"]).reshape(-1)
        out = {k: np.asarray(v) for k, v in out.items()}
        keep = ids >= 0
        results.extend(detections_to_coco(ids[keep], out["boxes"][keep], out["scores"][keep],
                                          out["classes"][keep], out["num_detections"][keep], category_ids))
        image_ids.extend(int(i) for i in ids[keep])
        if first_batch is None:
            first_batch = (time.perf_counter() - start, len(image_ids))
            total = num_images if num_images is not None else (cardinality * len(ids) if cardinality > 0 else None)
            if progress:  # its rate and ETA start after the first batch (tracing)
                meter = Progress(total, name="eval", unit="img", start=len(image_ids))
        elif meter is not None:
            meter.update(len(image_ids))
    seconds = time.perf_counter() - start
    if meter is not None and meter.done > meter.start_count and (meter.total is None or meter.done < meter.total):
        meter.update(meter.done, force=True)  # the last line (reaching the total prints it already)
    first_seconds, first_images = first_batch or (seconds, 0)
    if len(image_ids) > first_images and seconds > first_seconds:
        rate = (len(image_ids) - first_images) / (seconds - first_seconds)
    else:
        rate = len(image_ids) / seconds if seconds > 0 else 0.0
    stats = {"images": len(image_ids), "seconds": seconds, "first_batch_seconds": first_seconds,
             "images_per_second": rate}
    return results, image_ids, stats


def run_edge_inference(model, records, category_ids, read_image, progress=True):
    """Runs an edge export (lhrcnn.export.edge_runtime.EdgeModel) over image records, one image
    at a time, and converts its detections to COCO results.

    Args:
      model: an EdgeModel. records: ImageRecords (image_id, path).
      category_ids: class index -> the dataset's category id (see detections_to_coco).
      read_image: path -> uint8 [H, W, 3] RGB (the TF pipeline's decoder where TensorFlow is
        there, for the same pixels).
    Returns:
      (results, image_ids, stats) as run_inference; images that cannot be read are skipped with a
      warning naming them.
    """
    import logging
    results, image_ids = [], []
    meter = Progress(len(records), name="eval", unit="img") if progress else None
    start, first = time.perf_counter(), None
    for record in records:
        try:
            pixels = read_image(record.path)
        except (FileNotFoundError, ValueError) as e:
            logging.warning("skipping image %s: %s", record.path, e)
            continue
        boxes, scores, classes, _ = model.detect(pixels)
        results.extend(detections_to_coco([record.image_id], boxes[None], scores[None], classes[None],
                                          [len(scores)], category_ids))
        image_ids.append(int(record.image_id))
        if first is None:
            first = time.perf_counter() - start
        if meter is not None:
            meter.update(len(image_ids))
    seconds = time.perf_counter() - start
    rate = ((len(image_ids) - 1) / (seconds - first) if len(image_ids) > 1 and seconds > first
            else (len(image_ids) / seconds if seconds > 0 else 0.0))
    return results, image_ids, {"images": len(image_ids), "seconds": seconds, "first_batch_seconds": first or 0.0,
                                "images_per_second": rate}


def write_json(path, obj, indent=None):
    """Writes `obj` as json to `path` atomically (a temporary file in the same folder, then
    os.replace): readers never see a half-written file. Creates the folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
