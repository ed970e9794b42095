"""The synthetic generator: annotations against the drawn pixels, determinism, coverage, files."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lhrcnn.config import load_config
from lhrcnn.data import load_coco, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENT = os.path.join(REPO, "experiments", "lhrcnn", "light_head_rcnn.xception_star.synthetic")


def test_class_names_are_the_experiments():
    assert synthetic.CLASS_NAMES == load_config(EXPERIMENT).class_names


@pytest.mark.parametrize("index", range(8))
def test_annotations_match_the_drawn_pixels(index):
    """The same image without its shapes (identical background and noise) tells which pixels the
    shapes changed: exactly the union of the reported visible masks. Every box is then the tight
    box of its mask, and each of its four border lines holds a changed pixel of its own shape."""
    sample = synthetic.generate_image(seed=11, index=index, return_masks=True)
    plain = synthetic.generate_image(seed=11, index=index, draw_objects=False)
    changed = np.any(sample.image != plain.image, axis=-1)
    masks = sample.masks
    assert masks.shape == (len(sample.boxes),) + sample.image.shape[:2]
    assert np.all(masks.sum(axis=0) <= 1), "visible masks overlap"
    union = masks.any(axis=0)
    assert not np.any(changed & ~union), "pixels changed outside every annotated shape"
    for box, mask, area in zip(sample.boxes, masks, sample.areas):
        x1, y1, x2, y2 = box.astype(int)
        assert np.array_equal(box, box.astype(int))
        ys, xs = np.nonzero(mask)
        assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert area == mask.sum()
        assert changed[mask].mean() > 0.9, "a shape is mostly invisible in the image"
        own = changed & mask
        for line in (own[y1, x1:x2], own[y2 - 1, x1:x2], own[y1:y2, x1], own[y1:y2, x2 - 1]):
            assert line.any(), f"box {box} is not tight on the drawn pixels"


def test_deterministic_and_seed_dependent():
    a, b = synthetic.generate_image(3, 5), synthetic.generate_image(3, 5)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.classes, b.classes)
    c = synthetic.generate_image(4, 5)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_coverage_and_ranges():
    samples = [synthetic.generate_image(seed=21, index=i) for i in range(40)]
    classes = np.concatenate([s.classes for s in samples])
    assert set(classes.tolist()) == set(range(1, 7))
    sizes = np.array([s.image.shape[:2] for s in samples])
    assert sizes.min() >= synthetic.MIN_SIDE and sizes.max() <= synthetic.MAX_SIDE
    assert len(np.unique(sizes)) > 20
    counts = [len(s.classes) for s in samples]
    assert min(counts) >= 1 and max(counts) <= 10 and len(set(counts)) >= 5
    sides, extent_px, touching = [], [], 0
    for s in samples:
        h, w = s.image.shape[:2]
        x1, y1, x2, y2 = s.boxes.T
        extent = np.maximum(x2 - x1, y2 - y1)
        extent_px.append(extent)
        sides.append(extent / min(h, w))
        touching += int(np.sum((x1 == 0) | (y1 == 0) | (x2 == w) | (y2 == h)))
        assert s.image.dtype == np.uint8 and s.image.shape[2] == 3
    sides, extent_px = np.concatenate(sides), np.concatenate(extent_px)
    assert extent_px.min() >= 4 and np.sum(extent_px < 24) >= 5  # small objects exist
    assert sides.max() <= 0.5 * 1.5 + 0.02                          # at most half the short side (rotated: x sqrt 2)
    assert np.sum(sides > 0.3) >= 3                                 # large objects exist
    assert touching >= 5                                            # some cross the border


def test_write_dataset(tmp_path):
    out = tmp_path / "syn"
    calls = []
    path = synthetic.write_dataset(str(out), num_images=3, seed=5, workers=1, quality=92,
                                   progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (3, 3)
    assert sorted(os.listdir(out)) == ["annotations.json", "images"]
    assert sorted(os.listdir(out / "images")) == ["000001.jpg", "000002.jpg", "000003.jpg"]  # no temp files
    data = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(synthetic.SHAPE_NAMES)
    assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in data["annotations"])
    dataset = load_coco(path, str(out / "images"))
    assert dataset.class_names == synthetic.CLASS_NAMES
    assert all(v == 0 for v in dataset.stats.values())
    for index, record in enumerate(dataset.records):
        sample = synthetic.generate_image(5, index)
        assert record.image_id == index + 1
        assert (record.height, record.width) == sample.image.shape[:2]
        with Image.open(record.path) as image:
            assert image.size == (record.width, record.height) and image.format == "JPEG"
        np.testing.assert_array_equal(record.boxes, sample.boxes)
        np.testing.assert_array_equal(record.classes, sample.classes)
    assert synthetic.is_complete(str(out), 3, 5)
    assert not synthetic.is_complete(str(out), 3, 6) and not synthetic.is_complete(str(out), 4, 5)
    os.remove(out / "images" / "000002.jpg")
    assert not synthetic.is_complete(str(out), 3, 5)


def test_script_workers_give_identical_files(tmp_path):
    script = os.path.join(REPO, "scripts", "make_synthetic_dataset.py")
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        result = subprocess.run([sys.executable, script, "--output", str(out), "--num-images", "4", "--seed", "9",
                                 "--workers", str(workers)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "images/s" in result.stdout and "ETA" in result.stdout
        outputs.append(out)
    a, b = outputs
    assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()
    for name in os.listdir(a / "images"):
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
    again = subprocess.run([sys.executable, script, "--output", str(a), "--num-images", "4", "--seed", "9"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout
