"""The label map of an export: contiguous class index -> the dataset's category id (what the
served `detection_classes` holds, as the TF Object Detection API does) and its name."""
import json
import logging
import os

from lhrcnn.config import COCO_CLASS_NAMES

# COCO's 80 category ids in the order of COCO_CLASS_NAMES (index 0 = background).
COCO_CATEGORY_IDS = (0,) + tuple(
    list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45)) + list(range(46, 66))
    + [67, 70] + list(range(72, 83)) + list(range(84, 91)))
assert len(COCO_CATEGORY_IDS) == len(COCO_CLASS_NAMES)


def categories_from_annotations(path, class_names):
    """Category ids of `class_names` (index 0 = background) by name from a COCO json's
    "categories". FileNotFoundError / ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        with open(path) as f:
            categories = json.load(f).get("categories")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"annotation file {path} is not a COCO json ({e})") from None
    if not isinstance(categories, list):
        raise ValueError(f"annotation file {path} has no 'categories' list")
    by_name = {}
    for c in categories:
        try:
            by_name.setdefault(str(c["name"]), int(c["id"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"annotation file {path}: a category lacks a name or an integer id: {c!r}") from None
    missing = [n for n in class_names[1:] if n not in by_name]
    if missing:
        raise ValueError(f"annotation file {path} has no category named {missing} (the experiment's classes: "
                         f"{list(class_names[1:])})")
    return [0] + [by_name[n] for n in class_names[1:]]


def resolve_category_ids(config, annotations=None):
    """(category ids per class index (entry 0 = 0), where they came from).

    `annotations` (a COCO json) when given; else the config's eval_annotations when that file
    exists (relative to the working directory); else COCO's ids when the classes are COCO's; else
    the class index itself.
    """
    from lhrcnn.paths import config_path
    names = tuple(config.class_names)
    if annotations is not None:
        return categories_from_annotations(annotations, names), os.path.abspath(annotations)
    default = config_path(config.eval_annotations) if config.eval_annotations else None
    if default and os.path.isfile(default):
        return categories_from_annotations(default, names), os.path.abspath(default)
    if names == tuple(COCO_CLASS_NAMES):
        return list(COCO_CATEGORY_IDS), "COCO's category ids (the classes are COCO's)"
    logging.warning("no annotation file to take category ids from (%s does not exist); detection_classes "
                    "will hold the class index (1..%d)", default, len(names) - 1)
    return list(range(len(names))), "the class index (no annotation file)"


def label_map(class_names, category_ids):
    """{category id: class name} of the foreground classes."""
    return {int(i): str(n) for i, n in zip(category_ids[1:], class_names[1:])}
