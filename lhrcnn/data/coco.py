"""COCO-format annotations (via pycocotools) -> DetectionDataset."""
import contextlib
import io
import json
import logging
import math
import os

from lhrcnn.data.records import (DetectionDataset, check_exists, make_record,
                                 drop_missing_images, new_stats)

logger = logging.getLogger(__name__)

BACKGROUND = "background"

# (absolute path, modification time, size) -> class names read from that file.
_CLASS_NAMES_CACHE = {}


def class_names_from_annotations(annotation_file):
    """The class names of a COCO json: "background", then the `categories`' names in id order
    (what load_coco assigns with class_names=None; any ids: 1..N, COCO's 1..90 with gaps, 3, 17,
    90). A category named "background" that no annotation uses is left out (some tools write one);
    one that annotations use is an error, as are duplicate names, names that are not strings and a
    file without categories.

    Reads the file with the json module (no pycocotools); the result is cached per file path,
    modification time and size.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: not a COCO json, or categories that cannot be classes (each named in the message).
    """
    check_exists(annotation_file, "COCO annotation file")
    path = os.path.abspath(annotation_file)
    status = os.stat(path)
    key = (path, status.st_mtime_ns, status.st_size)
    if key in _CLASS_NAMES_CACHE:
        return _CLASS_NAMES_CACHE[key]
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{annotation_file} is not a readable COCO json ({e})") from None
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{annotation_file} has no 'categories' list to take the class names from")
    try:
        categories = sorted(((int(c["id"]), c["name"]) for c in categories), key=lambda c: c[0])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{annotation_file}: every category needs an integer 'id' and a 'name'") from None
    bad = [name for _, name in categories if not isinstance(name, str) or not name]
    if bad:
        raise ValueError(f"{annotation_file}: category names must be non-empty strings, got {bad}")
    ids = [i for i, _ in categories]
    repeated_ids = sorted({i for i in ids if ids.count(i) > 1})
    if repeated_ids:
        raise ValueError(f"{annotation_file}: category ids used more than once: {repeated_ids}")
    names = [name for _, name in categories]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{annotation_file}: category names used by more than one id: {duplicates}")
    background_ids = {i for i, name in categories if name == BACKGROUND}
    if background_ids:
        used = {ann.get("category_id") for ann in data.get("annotations") or () if isinstance(ann, dict)}
        if used & background_ids:
            raise ValueError(f"{annotation_file}: annotations use the category named {BACKGROUND!r} (id "
                             f"{sorted(background_ids)[0]}), the name of class 0; rename that category")
    foreground = tuple(name for _, name in categories if name != BACKGROUND)
    if not foreground:
        raise ValueError(f"{annotation_file} has no category other than {BACKGROUND!r}")
    names = (BACKGROUND,) + foreground
    _CLASS_NAMES_CACHE[key] = names
    return names


def _valid_bbox(bbox):
    """None when `bbox` is four finite numbers with w, h >= 0, else what is wrong with it."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f"bbox {bbox!r} is not [x, y, w, h]"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return f"bbox {bbox!r} holds a value that is not a finite number"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox {bbox!r} has a negative width or height"
    return None


def read_coco_json(annotation_file, for_scoring=False):
    """The COCO instances json as a pycocotools COCO object, checked first.

    Refused with ValueError naming the file, the entry and the problem: a file that is not JSON
    (truncated: the line and column), no `images` or `categories` list, an image without an
    integer `id`, a category without an integer `id` or a `name`, duplicate image ids. Dropped
    (named in one warning with the first few, and counted): annotations that are not objects, or
    without an integer `image_id` of a listed image, or without a `category_id`. Annotations whose
    `bbox` is missing, not four finite numbers or of negative size are named in the same warning;
    the loader then counts them (non-finite / degenerate boxes) and drops them, and with
    for_scoring (the ground truth of COCOeval, which cannot read them) they are dropped here. An annotation without `id`, `area` or `iscrowd` gets
    its position, w·h and 0 (what COCOeval reads). FileNotFoundError when the file does not exist.

    Returns:
      (COCO object, number of annotations dropped as malformed).
    """
    check_exists(annotation_file, "COCO annotation file")
    try:
        with open(annotation_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{annotation_file} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}; "
                         "a truncated or partly written file?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{annotation_file} cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{annotation_file} is not a COCO json (the top level is a {type(data).__name__}, "
                         "not an object with images, annotations and categories)")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{annotation_file} has no {key!r} list (a COCO instances json has 'images', "
                             "'annotations' and 'categories')")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{annotation_file}: 'annotations' is not a list")
    image_ids = set()
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or isinstance(image.get("id"), bool) or not isinstance(image.get("id"), int):
            raise ValueError(f"{annotation_file}: images[{i}] has no integer 'id': {str(image)[:200]}")
        if image["id"] in image_ids:
            raise ValueError(f"{annotation_file}: image id {image['id']} is used by more than one image")
        image_ids.add(image["id"])
    for i, category in enumerate(data["categories"]):
        if (not isinstance(category, dict) or isinstance(category.get("id"), bool)
                or not isinstance(category.get("id"), int) or "name" not in category):
            raise ValueError(f"{annotation_file}: categories[{i}] needs an integer 'id' and a 'name': "
                             f"{str(category)[:200]}")
    kept, dropped, boxes = [], [], []
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]" + (f" (id {ann.get('id')})" if isinstance(ann, dict) and "id" in ann else "")
        if not isinstance(ann, dict):
            dropped.append(f"{where} is not an object")
            continue
        if ann.get("image_id") not in image_ids or isinstance(ann.get("image_id"), bool):
            dropped.append(f"{where} has image_id {ann.get('image_id')!r}, which is not an image of the file")
            continue
        if "category_id" not in ann:
            dropped.append(f"{where} has no category_id")
            continue
        bad_box = _valid_bbox(ann.get("bbox")) if "bbox" in ann else "has no bbox"
        if bad_box:
            boxes.append(f"{where} {bad_box}")
            if for_scoring:
                continue
        if "id" not in ann or "area" not in ann or "iscrowd" not in ann:
            # what pycocotools' index and COCOeval read: an id, the area (w·h), iscrowd (0)
            box = ann.get("bbox")
            area = box[2] * box[3] if not bad_box else 0.0
            ann = dict(ann, id=ann.get("id", i + 1), area=ann.get("area", area), iscrowd=ann.get("iscrowd", 0))
        kept.append(ann)
    if dropped:
        logger.warning("%s: %d malformed annotation(s) dropped: %s%s", annotation_file, len(dropped),
                       "; ".join(dropped[:3]), "; ..." if len(dropped) > 3 else "")
    if boxes:
        logger.warning("%s: %d annotation(s) with an unusable bbox, skipped: %s%s", annotation_file, len(boxes),
                       "; ".join(boxes[:3]), "; ..." if len(boxes) > 3 else "")
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = dict(data, annotations=kept)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco, len(dropped)


def load_coco(annotation_file, image_dir, class_names=None, skip_crowd=True, keep_empty=True,
              drop_unknown_categories=False):
    """Loads a COCO json (instances_*.json or the synthetic dataset's annotations.json).

    The json is read and checked by read_coco_json (malformed annotations named, counted in
    stats["malformed_annotations"] and dropped). Boxes: COCO [x, y, w, h] -> (x, y, x + w, y + h)
    (no -1, as the original's odgt parsing),
    clipped to the image; non-finite and degenerate (w or h <= 0 after clipping) boxes are
    dropped; all counted in `stats`. Image files that do not exist are warned about by name,
    counted and their records dropped.

    Args:
      annotation_file: the COCO json.
      image_dir: folder the images' `file_name`s are relative to.
      class_names: None = the file's categories in id order with "background" prepended
        (class_names_from_annotations); otherwise a sequence whose index 0 is the background and
        whose other names are matched to the file's category names. A category named
        "background" that no annotation uses is ignored either way.
      skip_crowd: drop `iscrowd` (and `ignore`) annotations (Config.filter_gt_ignore_label).
      keep_empty: keep images that have no box left (needed for evaluation); they are counted
        either way.
      drop_unknown_categories: with class_names given, drop (and count) annotations whose
        category is not among the names instead of raising ValueError.
    Returns:
      DetectionDataset; records in image-id order.
    Raises:
      FileNotFoundError: the annotation file or the image folder does not exist.
      ValueError: categories missing from class_names, or a malformed image entry.
    """
    check_exists(annotation_file, "COCO annotation file")
    check_exists(image_dir, "image folder")
    coco, dropped = read_coco_json(annotation_file)

    categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    for c in [c for c in categories if c["name"] == BACKGROUND]:
        if not coco.getAnnIds(catIds=[c["id"]]):
            categories.remove(c)  # a "background" category that no annotation uses is not a class
        elif class_names is None:
            raise ValueError(f"{annotation_file}: annotations use the category named {BACKGROUND!r} (id {c['id']}), "
                             f"the name of class 0; rename that category")
    names_in_file = [c["name"] for c in categories]
    duplicates = sorted({n for n in names_in_file if names_in_file.count(n) > 1})
    if duplicates:
        raise ValueError(f"{annotation_file}: category names used by more than one id: {duplicates}")
    if class_names is None:
        class_names = (BACKGROUND,) + tuple(names_in_file)
    class_names = tuple(class_names)
    index_of_name = {name: i for i, name in enumerate(class_names) if i > 0}
    unknown = [c["name"] for c in categories if c["name"] not in index_of_name]
    if unknown and not drop_unknown_categories:
        raise ValueError(f"{annotation_file}: categories {unknown} are not in class_names "
                         f"{list(class_names[1:])}; add them or pass drop_unknown_categories=True")
    class_of_category = {c["id"]: index_of_name[c["name"]] for c in categories if c["name"] in index_of_name}
    category_ids = [-1] * len(class_names)
    for c in categories:
        if c["name"] in index_of_name:
            category_ids[index_of_name[c["name"]]] = int(c["id"])
    absent = [class_names[i] for i in range(1, len(class_names)) if category_ids[i] < 0]
    if absent:
        logger.warning("%s has no category named %s; their category id is -1", annotation_file, absent)

    stats = new_stats()
    stats["malformed_annotations"] = dropped
    records = []
    for image_id in sorted(coco.getImgIds()):
        image = coco.imgs[image_id]
        try:
            height, width = int(image["height"]), int(image["width"])
            file_name = image["file_name"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{annotation_file}: image {image_id} lacks a valid height, width or "
                             f"file_name ({e!r})") from None
        if height <= 0 or width <= 0:
            raise ValueError(f"{annotation_file}: image {image_id} ({file_name}) has size {height}x{width}")
        xywh, classes = [], []
        for ann in coco.imgToAnns.get(image_id, []):
            if skip_crowd and (ann.get("iscrowd", 0) or ann.get("ignore", 0)):
                stats["crowd_or_ignored_boxes"] += 1
                continue
            if ann.get("category_id") not in class_of_category:
                if ann.get("category_id") in coco.cats:  # a category not among class_names
                    stats["unknown_category_boxes"] += 1
                    continue
                raise ValueError(f"{annotation_file}: annotation {ann.get('id')} of image {image_id} has "
                                 f"category_id {ann.get('category_id')!r}, which is not in the categories")
            xywh.append(ann.get("bbox"))
            classes.append(class_of_category[ann["category_id"]])
        record = make_record(int(image_id), os.path.join(image_dir, file_name), height, width, xywh, classes,
                             stats, keep_empty)
        if record is not None:
            records.append(record)
    records = drop_missing_images(records, stats)
    dataset = DetectionDataset(records=records, class_names=class_names, category_ids=category_ids,
                               annotation_file=annotation_file, stats=stats)
    logger.info("%s", dataset.summary())
    return dataset
