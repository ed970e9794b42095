"""The original's odgt format (one JSON object per line; docs/original.md#odgt) -> DetectionDataset."""
import json
import logging
import os

from lhrcnn.data.records import (DetectionDataset, check_exists, make_record,
                                 drop_missing_images, new_stats)

logger = logging.getLogger(__name__)


def image_id_from_odgt_id(odgt_id, fallback):
    """`COCO_val2014_000000000139.jpg` -> 139: the last `_`-separated field of the ID without its
    extension, as an int; `fallback` when that is not a number."""
    stem = os.path.splitext(os.path.basename(str(odgt_id)))[0]
    try:
        return int(stem.split("_")[-1])
    except ValueError:
        return fallback


def load_odgt(odgt_file, image_root, class_names, skip_ignored=True, keep_empty=True,
              drop_unknown_categories=False):
    """Loads an odgt file.

    Each line: {"ID": ..., "fpath": ..., "height": h, "width": w, "gtboxes": [{"box": [x, y, w, h],
    "tag": <class name>, "extra": {"ignore": 0|1}}, ...]}. The image path is `fpath` appended to
    `image_root` (the original concatenated the strings, so a missing leading "/" broke every
    path; here either form works). Boxes (x, y, x + w, y + h) are cleaned as in load_coco.

    Args:
      odgt_file: the .odgt file.
      image_root: the folder `fpath` is appended to.
      class_names: index 0 = background; tags are matched to the other names.
      skip_ignored: drop boxes with extra.ignore == 1 (Config.filter_gt_ignore_label).
      keep_empty: keep images with no box left (they are counted either way).
      drop_unknown_categories: drop (and count) boxes whose tag is not a class name instead of
        raising ValueError.
    Returns:
      DetectionDataset in file order; category_ids are the class indices (odgt has no ids), -1 at 0.
    Raises:
      FileNotFoundError: the odgt file or the image root does not exist.
      ValueError: a line that is not a JSON object with the fields above (names file and line),
        or an unknown tag.
    """
    check_exists(odgt_file, "odgt file")
    check_exists(image_root, "image root folder")
    class_names = tuple(class_names)
    index_of_name = {name: i for i, name in enumerate(class_names) if i > 0}
    stats = new_stats()
    records = []
    with open(odgt_file, encoding="utf-8") as f:
        for line_index, line in enumerate(f):
            if not line.strip():
                continue
            where = f"{odgt_file} line {line_index + 1}"
            try:
                entry = json.loads(line)
                odgt_id, fpath = entry["ID"], str(entry["fpath"])
                height, width = int(entry["height"]), int(entry["width"])
                gtboxes = entry.get("gtboxes") or []
                if not isinstance(gtboxes, list):
                    raise TypeError(f"gtboxes is a {type(gtboxes).__name__}, not a list")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: not a valid odgt record ({type(e).__name__}: {e})") from None
            if height <= 0 or width <= 0:
                raise ValueError(f"{where}: image size {height}x{width}")
            xywh, classes = [], []
            for gt in gtboxes:
                if not isinstance(gt, dict):
                    raise ValueError(f"{where}: a gtboxes entry is not an object: {gt!r}")
                extra = gt.get("extra") or {}
                if skip_ignored and isinstance(extra, dict) and extra.get("ignore", 0) == 1:
                    stats["crowd_or_ignored_boxes"] += 1
                    continue
                tag = gt.get("tag")
                if tag not in index_of_name:
                    if drop_unknown_categories:
                        stats["unknown_category_boxes"] += 1
                        continue
                    raise ValueError(f"{where}: tag {tag!r} is not in class_names {list(class_names[1:])}; "
                                     f"add it or pass drop_unknown_categories=True")
                xywh.append(gt.get("box"))
                classes.append(index_of_name[tag])
            path = os.path.join(image_root, fpath.lstrip("/\\"))
            record = make_record(image_id_from_odgt_id(odgt_id, line_index), path, height, width, xywh, classes,
                                 stats, keep_empty)
            if record is not None:
                records.append(record)
    records = drop_missing_images(records, stats)
    dataset = DetectionDataset(records=records, class_names=class_names,
                               category_ids=[-1] + list(range(1, len(class_names))),
                               annotation_file=odgt_file, stats=stats)
    logger.info("%s", dataset.summary())
    return dataset
