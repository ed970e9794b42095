"""The embedded synthetic dataset: coloured shapes (circle, square, triangle, ring, frame, cross)
on textured, noisy backgrounds, written as a COCO json + JPEGs.

Every shape is first rendered to its own mask; a label map (top-most shape per pixel) gives each
shape's visible pixels, and its box is the tight box of those pixels, so annotations match what
was drawn. A shape is only placed if it and every shape under it keep at least half of their
pixels visible (inside the image and not covered). Image `index` of a dataset depends only on
(seed, index), so any worker split gives the same files.
"""
import dataclasses
import json
import math
import multiprocessing
import os
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPE_NAMES = ("circle", "square", "triangle", "ring", "frame", "cross")
CLASS_NAMES = ("background",) + SHAPE_NAMES
GENERATOR_VERSION = 2  # 2: sizes uniform in sqrt(size) (1: log-uniform)

MIN_SIDE, MAX_SIDE = 256, 640          # image height and width, each uniform in [MIN_SIDE, MAX_SIDE]
MIN_OBJECTS, MAX_OBJECTS = 1, 10
MIN_OBJECT_SIZE = 12                   # px; the largest is half the image's short side
# Sizes are uniform in sqrt(size) between the two: about 30% of the objects end up under 32 px
# and 12% under 16 px at the synthetic experiments' 320-px scale (COCO: 41% "small"). Log-uniform
# sizes (version 1) gave 48% / 23%, too many to classify at stride 16 in a CPU-budget training.
MIN_VISIBLE_FRACTION = 0.5             # of a shape's pixels, inside the image and not covered
MIN_COLOUR_DISTANCE = 45.0             # RGB distance of a shape's colour from the background under it
_PLACEMENT_TRIES = 30
_CIRCLE, _SQUARE, _TRIANGLE, _RING, _FRAME, _CROSS = range(6)


@dataclasses.dataclass
class SyntheticImage:
    """One generated image.

    Attributes:
      image: [H, W, 3] uint8 RGB.
      boxes: [M, 4] float32 (x1, y1, x2, y2): x1 = first visible column, x2 = last + 1 (likewise y).
      classes: [M] int32 in 1..6 (indices into CLASS_NAMES).
      areas: [M] int64 visible pixel counts.
      masks: [M, H, W] bool visible pixels, only when asked for (return_masks=True), else None.
    """
    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    areas: np.ndarray
    masks: np.ndarray = None


def _rotate(points, angle):
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _render_shape(kind, size, angle, thickness, jitter, centre_frac):
    """The shape's mask on its own canvas: ([L, L] bool, canvas centre (cx, cy) in canvas pixels).

    `size` is the unrotated extent (diameter, side, arm length); `centre_frac` in [0, 1)² is the
    sub-pixel part of the centre, so shapes are not all pixel-aligned.
    """
    side = int(math.ceil(size * 1.5)) + 4
    cx, cy = side / 2 + centre_frac[0], side / 2 + centre_frac[1]
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)

    def poly(points, fill=1):
        draw.polygon([(cx + x, cy + y) for x, y in _rotate(points, angle)], fill=fill)

    half = size / 2
    if kind in (_CIRCLE, _RING):
        box = [cx - half, cy - half, cx + half, cy + half]
        if kind == _CIRCLE:
            draw.ellipse(box, fill=1)
        else:
            draw.ellipse(box, outline=1, width=thickness)
    elif kind in (_SQUARE, _FRAME):
        poly([(-half, -half), (half, -half), (half, half), (-half, half)])
        if kind == _FRAME:
            inner = half - thickness
            poly([(-inner, -inner), (inner, -inner), (inner, inner), (-inner, inner)], fill=0)
    elif kind == _TRIANGLE:
        poly([(half * (1 + jitter[k]) * math.cos(a), half * (1 + jitter[k]) * math.sin(a))
              for k, a in enumerate((-math.pi / 2, math.pi / 6, 5 * math.pi / 6))])
    else:  # cross: two bars
        bar = max(thickness, 2) / 2
        poly([(-half, -bar), (half, -bar), (half, bar), (-half, bar)])
        poly([(-bar, -half), (bar, -half), (bar, half), (-bar, half)])
    return np.asarray(mask, bool), (cx, cy)


def _background(rng, height, width):
    """Low-frequency colour field + mid-frequency texture + soft blobs + thin lines, none of them
    an object: [H, W, 3] float32."""
    grid_h, grid_w = rng.integers(2, 6, size=2)
    base = rng.uniform(40, 215, 3)
    grid = np.clip(base + rng.normal(0, rng.uniform(15, 60), (grid_h, grid_w, 3)), 0, 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32)
    # mid-frequency texture
    texture = rng.normal(128, rng.uniform(5, 40), (int(rng.integers(8, 33)), int(rng.integers(8, 33)), 3))
    texture = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    image += np.asarray(texture, np.float32) - 128
    for _ in range(rng.integers(0, 5)):  # soft irregular blobs
        radius = rng.uniform(15, 0.35 * min(height, width))
        blur = rng.uniform(3, 12)
        margin = int(radius + 3 * blur) + 2
        bx, by = int(rng.integers(0, width)), int(rng.integers(0, height))
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.4, 1.0, n)
        blob = Image.new("L", (2 * margin, 2 * margin), 0)
        ImageDraw.Draw(blob).polygon([(margin + r * math.cos(a), margin + r * math.sin(a))
                                      for r, a in zip(radii, angles)], fill=255)
        alpha = np.asarray(blob.filter(ImageFilter.GaussianBlur(blur)), np.float32) / 255 * rng.uniform(0.2, 0.7)
        x0, y0 = bx - margin, by - margin
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + 2 * margin, width), min(y0 + 2 * margin, height)
        a = alpha[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0, None]
        image[iy0:iy1, ix0:ix1] = image[iy0:iy1, ix0:ix1] * (1 - a) + rng.uniform(0, 255, 3).astype(np.float32) * a
    lines = int(rng.integers(0, 6))
    if lines:
        canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for _ in range(lines):
            points = [(float(rng.uniform(-0.1, 1.1) * width), float(rng.uniform(-0.1, 1.1) * height)) for _ in range(2)]
            draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
        image = np.asarray(canvas, np.float32)
    return image


def _place_shapes(rng, height, width):
    """Chooses and places shapes. Returns (label map [H, W] int16: index of the top shape or -1,
    class index (1..6) per shape, (x0, y0, x1, y1) image region each shape was drawn in)."""
    label = np.full((height, width), -1, np.int16)
    classes, full_areas, extents = [], [], []
    visible = np.zeros(0, np.int64)  # visible pixels of each placed shape
    max_size = min(height, width) / 2
    for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        for _ in range(_PLACEMENT_TRIES):
            kind = int(rng.integers(0, len(SHAPE_NAMES)))
            size = float(rng.uniform(math.sqrt(MIN_OBJECT_SIZE), math.sqrt(max_size)) ** 2)
            rotates = kind in (_SQUARE, _FRAME, _TRIANGLE, _CROSS)
            angle = float(rng.uniform(0, 2 * np.pi)) if rotates else 0.0
            thickness = max(2, int(round(size * rng.uniform(0.1, 0.25))))
            if kind == _CROSS:
                thickness = max(3, int(round(size * rng.uniform(0.18, 0.34))))
            jitter = rng.uniform(-0.1, 0.1, 3)
            cx = rng.uniform(-0.2 * size, width + 0.2 * size)
            cy = rng.uniform(-0.2 * size, height + 0.2 * size)
            local, (lcx, lcy) = _render_shape(kind, size, angle, thickness, jitter,
                                              (cx - math.floor(cx), cy - math.floor(cy)))
            full_area = int(local.sum())
            if full_area < 20:
                continue
            ox, oy = int(math.floor(cx) - math.floor(lcx)), int(math.floor(cy) - math.floor(lcy))
            ix0, iy0 = max(ox, 0), max(oy, 0)
            ix1, iy1 = min(ox + local.shape[1], width), min(oy + local.shape[0], height)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            part = local[iy0 - oy:iy1 - oy, ix0 - ox:ix1 - ox]
            if part.sum() < MIN_VISIBLE_FRACTION * full_area:
                continue
            region = label[iy0:iy1, ix0:ix1]
            covered = region[part]
            lost = np.bincount(covered[covered >= 0], minlength=len(classes))
            if np.any(visible - lost < MIN_VISIBLE_FRACTION * np.asarray(full_areas)):
                continue
            region[part] = len(classes)
            visible = np.append(visible - lost, int(part.sum()))
            classes.append(kind + 1)
            full_areas.append(full_area)
            extents.append((ix0, iy0, ix1, iy1))
            break
    return label, classes, extents


def _colour_for(rng, background, pixels):
    """A random colour at least MIN_COLOUR_DISTANCE from the mean background under `pixels` (the
    farthest of the tries if none is); contrast is otherwise left to chance."""
    under = background[pixels].mean(axis=0)
    best, best_distance = None, -1.0
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        distance = float(np.linalg.norm(colour - under))
        if distance >= MIN_COLOUR_DISTANCE:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def generate_image(seed, index, draw_objects=True, return_masks=False):
    """Image `index` of the dataset with `seed`; deterministic in (seed, index).

    draw_objects=False gives the same image without its shapes (the identical background and
    noise), which tests use to check the annotations against the pixels.
    Returns a SyntheticImage.
    """
    background_seq, shapes_seq, colour_seq, noise_seq = np.random.SeedSequence([int(seed), int(index)]).spawn(4)
    rng = np.random.default_rng(background_seq)
    height, width = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    background = _background(rng, height, width)
    label, classes, extents = _place_shapes(np.random.default_rng(shapes_seq), height, width)
    image = background.copy()
    boxes, areas, masks = [], [], []
    colour_rng = np.random.default_rng(colour_seq)
    for k, (ex0, ey0, ex1, ey1) in enumerate(extents):
        ys, xs = np.nonzero(label[ey0:ey1, ex0:ex1] == k)  # a shape's pixels lie in its region
        y0, y1, x0, x1 = ey0 + ys.min(), ey0 + ys.max() + 1, ex0 + xs.min(), ex0 + xs.max() + 1
        boxes.append((x0, y0, x1, y1))
        areas.append(len(ys))
        mask = label[y0:y1, x0:x1] == k
        colour = _colour_for(colour_rng, background[y0:y1, x0:x1], mask)
        # a linear shade across the shape, so it is not one flat colour
        direction = colour_rng.normal(size=2)
        direction /= np.linalg.norm(direction) + 1e-9
        amplitude = colour_rng.uniform(0, 40)
        gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        shade = ((gx - (x0 + x1) / 2) * direction[0] + (gy - (y0 + y1) / 2) * direction[1]) / max(x1 - x0, y1 - y0)
        values = colour[None, None, :] + amplitude * shade[..., None]
        if draw_objects:
            image[y0:y1, x0:x1][mask] = values[mask]
        if return_masks:
            masks.append(label == k)
    noise_rng = np.random.default_rng(noise_seq)
    sigma = noise_rng.uniform(2, 10)
    # uniform noise of standard deviation sigma (as good as Gaussian here, ten times cheaper)
    noise = noise_rng.integers(0, 256, (height, width, 3), dtype=np.uint8).astype(np.float32)
    noise -= np.float32(127.5)
    image += noise * np.float32(sigma * math.sqrt(12) / 256)
    np.rint(image, out=image)
    np.clip(image, 0, 255, out=image)
    image = image.astype(np.uint8)
    return SyntheticImage(
        image=image, boxes=np.asarray(boxes, np.float32).reshape(-1, 4), classes=np.asarray(classes, np.int32),
        areas=np.asarray(areas, np.int64),
        masks=np.asarray(masks, bool).reshape(-1, height, width) if return_masks else None)


def image_file_name(index):
    """The file name of image `index` (image id index + 1)."""
    return f"{index + 1:06d}.jpg"


def _write_atomically(path, write):
    temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def _make_one(args):
    seed, index, images_dir, quality = args
    sample = generate_image(seed, index)
    path = os.path.join(images_dir, image_file_name(index))
    _write_atomically(path, lambda p: Image.fromarray(sample.image).save(p, format="JPEG", quality=quality))
    return index, sample.image.shape[:2], sample.boxes, sample.classes, sample.areas


def _info(num_images, seed):
    return {"description": "lhrcnn synthetic shapes", "num_images": int(num_images), "seed": int(seed),
            "generator_version": GENERATOR_VERSION}


def is_complete(output_dir, num_images, seed):
    """True if `output_dir` holds this generator version's dataset for (num_images, seed), all files present."""
    path = os.path.join(output_dir, "annotations.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    if data.get("info") != _info(num_images, seed):
        return False
    images_dir = os.path.join(output_dir, "images")
    return all(os.path.exists(os.path.join(images_dir, image["file_name"])) for image in data["images"])


def write_dataset(output_dir, num_images, seed, workers=2, quality=92, progress=None):
    """Writes `output_dir`/images/*.jpg and `output_dir`/annotations.json (COCO format).

    Each image is written to a temporary name and renamed; the json is written last, the same
    way, so a crashed run never leaves a json that names missing or partial images.

    Args:
      output_dir: created if needed.
      num_images, seed: what to generate (image ids 1..num_images).
      workers: processes (1 = in this process).
      quality: JPEG quality.
      progress: optional callable(done, total), called as images finish.
    Returns:
      The annotation file's path.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    images_dir = os.path.join(output_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    tasks = [(seed, index, images_dir, quality) for index in range(num_images)]
    results = [None] * num_images
    if workers <= 1:
        iterator = map(_make_one, tasks)
        pool = None
    else:
        # spawn: safe even if the caller has started threads (TensorFlow); workers import only numpy + Pillow
        pool = multiprocessing.get_context("spawn").Pool(workers)
        iterator = pool.imap_unordered(_make_one, tasks, chunksize=max(1, min(16, num_images // (8 * workers))))
    try:
        for done, (index, size, boxes, classes, areas) in enumerate(iterator, 1):
            results[index] = (size, boxes, classes, areas)
            if progress is not None:
                progress(done, num_images)
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    images, annotations = [], []
    for index, (size, boxes, classes, areas) in enumerate(results):
        image_id = index + 1
        images.append({"id": image_id, "file_name": image_file_name(index), "height": int(size[0]),
                       "width": int(size[1])})
        for box, cls, area in zip(boxes.tolist(), classes.tolist(), areas.tolist()):
            x1, y1, x2, y2 = (int(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(area), "iscrowd": 0})
    data = {"info": _info(num_images, seed), "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": "shape"}
                           for i, name in enumerate(SHAPE_NAMES, 1)]}
    path = os.path.join(output_dir, "annotations.json")

    def dump(temp):
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(data, f)
    _write_atomically(path, dump)
    return path


class ProgressPrinter:
    """progress(done, total) callback printing done/total, rate and ETA about every `every_s` seconds."""

    def __init__(self, every_s=2.0, stream=None):
        self.every_s = every_s
        self.stream = stream
        self.start = time.monotonic()
        self.last = -math.inf

    def __call__(self, done, total):
        now = time.monotonic()
        if done < total and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else float("inf")
        print(f"[{done:>{len(str(total))}}/{total}] {100.0 * done / total:5.1f}%  {rate:6.1f} images/s  "
              f"elapsed {elapsed:5.1f} s  ETA {eta:5.1f} s", file=self.stream, flush=True)
