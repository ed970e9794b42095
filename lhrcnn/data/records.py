"""The one record type every data source (COCO json, odgt, the synthetic generator) produces,
and the box cleaning they share: crowd/ignore filtering, non-finite and degenerate boxes,
clipping to the image."""
import dataclasses
import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

# Keys of DetectionDataset.stats, all counts of things a loader dropped or changed.
STAT_KEYS = (
    "malformed_annotations",       # COCO annotations without a valid bbox, image_id or category_id, dropped
    "crowd_or_ignored_boxes",      # crowd (COCO iscrowd) / ignored (odgt extra.ignore) GT, dropped
    "non_finite_boxes",            # NaN / inf / malformed coordinates, dropped
    "degenerate_boxes",            # width or height <= 0 after clipping to the image, dropped
    "clipped_boxes",               # kept boxes whose coordinates were clipped to the image
    "unknown_category_boxes",      # category not in class_names, dropped (only when asked to)
    "images_without_annotations",  # images left with no box (kept or dropped per the loader)
    "missing_images",              # image files that do not exist, record dropped
)

# How many missing files are named one by one in the log before only the total is reported.
_MAX_NAMED_MISSING = 20


@dataclasses.dataclass
class ImageRecord:
    """One image and its ground truth.

    Attributes:
      image_id: the dataset's own image id (COCO `id`; odgt: from `ID`).
      path: the image file.
      height, width: the original image size from the annotation file.
      boxes: [M, 4] float32 (x1, y1, x2, y2) in original-image pixels, x2 = x + w (no -1).
      classes: [M] int32 contiguous class indices 1..num_classes-1 (0 is the background).
    """
    image_id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.classes = np.asarray(self.classes, np.int32).reshape(-1)
        if len(self.boxes) != len(self.classes):
            raise ValueError(f"image {self.image_id} ({self.path}): {len(self.boxes)} boxes but "
                             f"{len(self.classes)} classes")


@dataclasses.dataclass
class DetectionDataset:
    """A loaded dataset: records plus what is needed to map results back to the source.

    Attributes:
      records: list of ImageRecord.
      class_names: tuple of names, index 0 = "background".
      category_ids: list, contiguous class index -> the dataset's own category id (COCO ids;
        odgt has none: the index itself). Entry 0 (background) and names the file lacks are -1.
      annotation_file: the file the records came from.
      stats: dict of STAT_KEYS -> count of what the loader dropped or changed.
    """
    records: list
    class_names: tuple
    category_ids: list
    annotation_file: str
    stats: dict = dataclasses.field(default_factory=lambda: new_stats())

    @property
    def num_classes(self):
        """Classes including the background."""
        return len(self.class_names)

    def __len__(self):
        return len(self.records)

    def summary(self):
        """One line: images, boxes, and every non-zero drop count."""
        boxes = sum(len(r.boxes) for r in self.records)
        dropped = ", ".join(f"{k} {v}" for k, v in self.stats.items() if v)
        return (f"{self.annotation_file}: {len(self.records)} images, {boxes} boxes, "
                f"{self.num_classes - 1} classes" + (f"; {dropped}" if dropped else ""))


def new_stats():
    return {key: 0 for key in STAT_KEYS}


def clean_boxes(xywh, height, width, stats):
    """Turns [x, y, w, h] boxes into clipped (x1, y1, x2, y2) boxes and says which to keep.

    x2 = x + w, y2 = y + h (no -1, as the original parsed its odgt files). Boxes with a non-finite
    or malformed value are dropped, the rest clipped to [0, width] x [0, height]; boxes with
    width or height <= 0 after clipping are dropped. Counts go into `stats`.

    Args:
      xywh: list of boxes (anything; malformed entries count as non-finite).
      height, width: the image size.
      stats: dict updated in place (non_finite_boxes, degenerate_boxes, clipped_boxes).
    Returns:
      ([N, 4] float32 boxes, [N] bool keep mask) over the input order; rows not kept are zero.
    """
    n = len(xywh)
    out = np.zeros((n, 4), np.float64)
    valid = np.zeros(n, bool)
    for i, box in enumerate(xywh):
        try:
            values = np.asarray(box, np.float64).reshape(-1)
        except (TypeError, ValueError):
            continue
        if values.shape == (4,) and np.all(np.isfinite(values)):
            out[i] = values
            valid[i] = True
    stats["non_finite_boxes"] += int(n - valid.sum())
    xyxy = np.concatenate([out[:, :2], out[:, :2] + out[:, 2:]], axis=1)
    clipped = np.clip(xyxy, 0.0, [width, height, width, height])
    good_size = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    stats["degenerate_boxes"] += int((valid & ~good_size).sum())
    keep = valid & good_size
    stats["clipped_boxes"] += int((keep & np.any(clipped != xyxy, axis=1)).sum())
    clipped[~keep] = 0.0
    return clipped.astype(np.float32), keep


def make_record(image_id, path, height, width, xywh, classes, stats, keep_empty):
    """An ImageRecord of cleaned boxes (see clean_boxes), or None when it has no box left and
    `keep_empty` is false; images without boxes are counted either way."""
    boxes, keep = clean_boxes(xywh, height, width, stats)
    record = ImageRecord(image_id=image_id, path=path, height=height, width=width, boxes=boxes[keep],
                         classes=np.asarray(classes, np.int32)[keep])
    if len(record.boxes) == 0:
        stats["images_without_annotations"] += 1
        if not keep_empty:
            return None
    return record


def drop_missing_images(records, stats):
    """Records whose file exists; each missing file is counted and (the first few) named in a warning."""
    kept = []
    missing = 0
    for record in records:
        if os.path.exists(record.path):
            kept.append(record)
            continue
        missing += 1
        if missing <= _MAX_NAMED_MISSING:
            logger.warning("image file %s (image id %d) does not exist; record dropped", record.path,
                           record.image_id)
    if missing > _MAX_NAMED_MISSING:
        logger.warning("%d image files do not exist in all (the first %d are named above); records dropped",
                       missing, _MAX_NAMED_MISSING)
    stats["missing_images"] += missing
    return kept


def check_exists(path, what):
    """FileNotFoundError naming `path` unless it exists."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
