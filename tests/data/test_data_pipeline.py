"""The tf.data pipeline against a NumPy reference: resize, flip, mean, padding, batching, GT
padding/truncation, bad images, determinism."""
import io
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lhrcnn.config import Config
from lhrcnn.data import DetectionDataset, ImageRecord, PipelineStats, make_dataset, resized_shape

MEAN_BGR = (10.0, 20.0, 30.0)


def make_config(**overrides):
    fields = dict(image_mean=MEAN_BGR, image_short_size=32, image_max_size=48, eval_image_short_size=24,
                  eval_image_max_size=40, size_divisor=16, max_boxes_of_image=4, box_offset=0.0)
    fields.update(overrides)
    return Config(**fields)


def np_resized_shape(h, w, short, max_size):
    scale = short / min(h, w)
    if scale * max(h, w) > max_size:
        scale = max_size / max(h, w)
    return int(np.round(h * scale)), int(np.round(w * scale)), scale


def np_resize_bilinear(image, out_h, out_w):
    """Bilinear resize with half-pixel centres (tf.image.resize's, no antialiasing)."""
    image = image.astype(np.float64)
    in_h, in_w = image.shape[:2]

    def taps(out_size, in_size):
        x = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        low = np.floor(x)
        frac = x - low
        return np.clip(low, 0, in_size - 1).astype(int), np.clip(low + 1, 0, in_size - 1).astype(int), frac

    y0, y1, fy = taps(out_h, in_h)
    x0, x1, fx = taps(out_w, in_w)
    rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def np_preprocess(image, boxes, short, max_size, flip=False, offset=0.0):
    """(mean-subtracted resized image [h, w, 3], boxes in resized pixels, (h, w, scale))."""
    h, w, scale = np_resized_shape(image.shape[0], image.shape[1], short, max_size)
    out = np_resize_bilinear(image, h, w) - np.array(MEAN_BGR[::-1])
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * scale
    if flip:
        out = out[:, ::-1]
        boxes = np.stack([w - boxes[:, 2] - offset, boxes[:, 1], w - boxes[:, 0] - offset, boxes[:, 3]], axis=1)
    return out, boxes, (h, w, scale)


SIZES = [(40, 60), (50, 30), (64, 64), (21, 37)]


@pytest.fixture
def images(tmp_path):
    """PNG files (lossless: the decode is exact) with boxes; returns (DetectionDataset, arrays)."""
    rng = np.random.default_rng(0)
    records, arrays = [], []
    for i, (h, w) in enumerate(SIZES):
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(array).save(path)
        n = i + 1
        x1 = rng.uniform(0, w / 2, n)
        y1 = rng.uniform(0, h / 2, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(2, w / 2, n), y1 + rng.uniform(2, h / 2, n)], axis=1)
        records.append(ImageRecord(image_id=100 + i, path=str(path), height=h, width=w, boxes=boxes,
                                   classes=np.arange(1, n + 1)))
        arrays.append(array)
    dataset = DetectionDataset(records=records, class_names=("background", "a", "b", "c", "d", "e"),
                               category_ids=[-1, 1, 2, 3, 4, 5], annotation_file="test.json")
    return dataset, arrays


def collect(ds):
    return [{k: v.numpy() for k, v in batch.items()} for batch in ds]


def test_resized_shape_matches_numpy():
    for h, w in [(480, 640), (640, 480), (100, 1000), (800, 800), (333, 500), (1, 3), (1000, 1333)]:
        for short, max_size in [(800, 1333), (320, 512), (600, 1000)]:
            got = [t.numpy() for t in resized_shape(h, w, short, max_size)]
            want = np_resized_shape(h, w, short, max_size)
            assert got[:2] == list(want[:2]), (h, w, short, max_size)
            assert got[2] == pytest.approx(want[2], rel=1e-6)


def test_eval_batches_against_numpy(images):
    dataset, arrays = images
    config = make_config()
    ds = make_dataset(dataset, config, training=False, batch_size=3)
    spec = ds.element_spec
    assert spec["images"].dtype == tf.float32 and spec["images"].shape.as_list() == [None, None, None, 3]
    assert spec["gt_boxes"].shape.as_list() == [None, 4, 4] and spec["gt_classes"].dtype == tf.int32
    assert spec["image_info"].shape.as_list() == [None, 5] and spec["image_id"].dtype == tf.int64
    batches = collect(ds)
    assert [len(b["image_id"]) for b in batches] == [3, 1]  # eval keeps the last partial batch
    index = 0
    for batch in batches:
        _, height, width, _ = batch["images"].shape
        assert height % 16 == 0 and width % 16 == 0
        sizes = []
        for b in range(len(batch["image_id"])):
            record, array = dataset.records[index], arrays[index]
            want, boxes, (h, w, scale) = np_preprocess(array, record.boxes, 24, 40)
            sizes.append((h, w))
            assert batch["image_id"][b] == record.image_id  # order kept
            np.testing.assert_allclose(batch["image_info"][b], [h, w, scale, array.shape[0], array.shape[1]],
                                       rtol=1e-6)
            np.testing.assert_allclose(batch["images"][b, :h, :w], want, atol=2e-3)
            assert not batch["images"][b, h:].any() and not batch["images"][b, :, w:].any()  # zero padding
            m = min(len(boxes), 4)
            np.testing.assert_allclose(batch["gt_boxes"][b, :m], boxes[:m], rtol=1e-5)
            assert not batch["gt_boxes"][b, m:].any()
            np.testing.assert_array_equal(batch["gt_classes"][b], np.pad(record.classes[:m], (0, 4 - m)))
            index += 1
        # the batch is padded to its largest image rounded up to the divisor
        assert height == max(-(-h // 16) * 16 for h, _ in sizes)
        assert width == max(-(-w // 16) * 16 for _, w in sizes)
    assert index == len(arrays)


def test_eval_is_deterministic(images):
    dataset, _ = images
    ds = make_dataset(dataset, make_config(), training=False, batch_size=2)
    first, second = collect(ds), collect(ds)
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_training_flip_resize_and_mean(images, offset):
    """Training sizes; each image is either unflipped or flipped (image and boxes together, with
    the offset convention); both happen; the same seed repeats the same choices."""
    dataset, arrays = images
    config = make_config(box_offset=offset)
    ds = make_dataset(dataset, config, training=True, batch_size=1, shuffle=False, seed=7)
    outputs = collect(ds.take(16))
    flips = []
    for k, out in enumerate(outputs):
        index = k % len(arrays)
        record, array = dataset.records[index], arrays[index]
        assert out["image_id"][0] == record.image_id
        plain, plain_boxes, (h, w, _) = np_preprocess(array, record.boxes, 32, 48)
        flipped, flipped_boxes, _ = np_preprocess(array, record.boxes, 32, 48, flip=True, offset=offset)
        image = out["images"][0, :h, :w]
        is_flipped = np.abs(image - flipped).max() < np.abs(image - plain).max()
        np.testing.assert_allclose(image, flipped if is_flipped else plain, atol=2e-3)
        boxes = flipped_boxes if is_flipped else plain_boxes
        m = min(len(boxes), 4)
        np.testing.assert_allclose(out["gt_boxes"][0, :m], boxes[:m], rtol=1e-5, atol=1e-4)
        flips.append(is_flipped)
    assert 0 < sum(flips) < len(flips)
    again = collect(make_dataset(dataset, config, training=True, batch_size=1, shuffle=False, seed=7).take(16))
    for a, b in zip(outputs, again):
        np.testing.assert_array_equal(a["images"], b["images"])


def test_flip_convention_by_hand():
    """x1' = W - x2 - offset, x2' = W - x1 - offset on a 10-px-wide image (scale 1)."""
    _, boxes, _ = np_preprocess(np.zeros((10, 10, 3)), [[0, 1, 4, 5]], 10, 10, flip=True, offset=1.0)
    np.testing.assert_array_equal(boxes, [[5, 1, 9, 5]])
    _, boxes, _ = np_preprocess(np.zeros((10, 10, 3)), [[0, 1, 4, 5]], 10, 10, flip=True, offset=0.0)
    np.testing.assert_array_equal(boxes, [[6, 1, 10, 5]])


def test_training_shuffles_repeats_and_truncates(images, caplog):
    dataset, _ = images
    stats = PipelineStats()
    with caplog.at_level(logging.WARNING):
        ds = make_dataset(dataset, make_config(max_boxes_of_image=2), training=True, batch_size=2, seed=1,
                          stats=stats)
    assert "more than max_boxes_of_image = 2" in caplog.text and dataset.records[2].path in caplog.text
    assert stats.truncated_images == 2 and stats.truncated_boxes == 1 + 2
    batches = collect(ds.take(8))
    assert all(b["images"].shape[0] == 2 and b["gt_boxes"].shape == (2, 2, 4) for b in batches)  # drop_remainder
    ids = np.concatenate([b["image_id"] for b in batches])
    assert len(ids) == 16 and set(ids.tolist()) == {100, 101, 102, 103}
    assert ids[:4].tolist() != [100, 101, 102, 103] or ids[4:8].tolist() != [100, 101, 102, 103]  # shuffled
    for b in batches:
        for i, image_id in enumerate(b["image_id"]):
            record = dataset.records[image_id - 100]
            kept = record.classes[:2]
            np.testing.assert_array_equal(b["gt_classes"][i], np.pad(kept, (0, 2 - len(kept))))


def test_images_without_boxes(images):
    dataset, _ = images
    dataset.records[1] = ImageRecord(101, dataset.records[1].path, 50, 30, np.zeros((0, 4)), np.zeros(0))
    stats = PipelineStats()
    ids = np.concatenate([b["image_id"] for b in collect(make_dataset(
        dataset, make_config(), training=True, batch_size=1, repeat=False, stats=stats))])
    assert sorted(ids.tolist()) == [100, 102, 103] and stats.skipped_without_boxes == 1
    eval_batches = collect(make_dataset(dataset, make_config(), training=False, batch_size=4))
    assert eval_batches[0]["image_id"].tolist() == [100, 101, 102, 103]
    assert not eval_batches[0]["gt_boxes"][1].any() and not eval_batches[0]["gt_classes"][1].any()


def test_bad_images_are_skipped_named_and_counted(images, tmp_path, caplog):
    dataset, _ = images
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(buffer, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    text = tmp_path / "text.jpg"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    vanished = tmp_path / "vanished.png"  # existed when loaded, gone when read
    bad = [(truncated, 30, 40), (text, 10, 10), (empty, 10, 10), (vanished, 10, 10)]
    for k, (path, h, w) in enumerate(bad):
        dataset.records.insert(2 * k, ImageRecord(900 + k, str(path), h, w, [[1, 1, 5, 5]], [1]))
    stats = PipelineStats()
    with caplog.at_level(logging.WARNING):
        batches = collect(make_dataset(dataset, make_config(), training=False, batch_size=2, stats=stats))
    ids = np.concatenate([b["image_id"] for b in batches]).tolist()
    assert ids == [100, 101, 102, 103]
    for path, _, _ in bad:
        assert str(path) in caplog.text
        assert str(path) in stats.failed_files
    assert "not a JPEG" in stats.failed_files[str(text)] and "decoding failed" in stats.failed_files[str(truncated)]
    assert "not a JPEG" in stats.failed_files[str(empty)]  # shorter than a signature: not an image, not a crash
    assert stats.failures == 4 and stats.as_dict()["failed_files"] == 4
    assert "failed_files 4" in stats.summary()


def test_all_images_bad_raises_instead_of_hanging(tmp_path):
    paths = []
    for k in range(2):
        path = tmp_path / f"bad{k}.jpg"
        path.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
        paths.append(path)
    records = [ImageRecord(k, str(p), 10, 10, [[1, 1, 5, 5]], [1]) for k, p in enumerate(paths)]
    dataset = DetectionDataset(records, ("background", "a"), [-1, 1], "bad.json")
    ds = make_dataset(dataset, make_config(), training=True, batch_size=1, seed=0)
    with pytest.raises(tf.errors.OpError, match="failed to decode"):
        next(iter(ds))


def test_size_mismatch_is_reported(images, caplog):
    dataset, arrays = images
    record = dataset.records[0]
    dataset.records[0] = ImageRecord(record.image_id, record.path, 41, 60, record.boxes, record.classes)
    stats = PipelineStats()
    with caplog.at_level(logging.WARNING):
        batch = collect(make_dataset(dataset, make_config(), training=False, batch_size=1, stats=stats))[0]
    assert record.path in stats.size_mismatches and record.path in caplog.text
    np.testing.assert_allclose(batch["image_info"][0, 3:], arrays[0].shape[:2])  # the decoded size


def test_shard(images):
    dataset, _ = images
    ids = [np.concatenate([b["image_id"] for b in collect(make_dataset(
        dataset, make_config(), training=False, batch_size=2, shard=(2, i)))]).tolist() for i in range(2)]
    assert ids == [[100, 102], [101, 103]]
    with pytest.raises(ValueError, match="shard"):
        make_dataset(dataset, make_config(), training=False, batch_size=2, shard=(2, 2))


def test_empty_dataset_is_an_error():
    dataset = DetectionDataset([], ("background", "a"), [-1, 1], "empty.json")
    with pytest.raises(ValueError, match="empty.json"):
        make_dataset(dataset, make_config(), training=False, batch_size=1)
