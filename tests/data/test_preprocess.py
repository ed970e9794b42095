"""One preprocessing for every entry point: the training and evaluation pipelines
(lhrcnn.data.pipeline.make_dataset), the demo's path (decode_image_file + preprocess_image), the
serving signatures' in-graph preprocessing (uint8 tensors and encoded bytes, traced and inside a
saved-and-loaded SavedModel) all give the same image tensors and image_info bit for bit, and
those equal an independent NumPy computation of the resize scale, sizes, bilinear resize, mean,
padding and image_info."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lhrcnn.config import Config
from lhrcnn.data import DetectionDataset, ImageRecord
from lhrcnn.data import preprocess as pp
from lhrcnn.data.pipeline import make_dataset
from lhrcnn.evaluation.preprocess import decode_image_file, preprocess_image
from lhrcnn.export import serving

# Portrait, landscape, square, odd and extreme sizes; (1, 3) and (200, 21) hit the max-side rule.
SIZES = [(37, 53), (53, 37), (21, 200), (200, 21), (64, 64), (1, 3), (101, 33), (333, 500)]
CONFIGS = {
    "odd": dict(eval_image_short_size=45, eval_image_max_size=70, size_divisor=16,
                image_mean=(12.5, 130.25, 99.75)),
    "default_mean": dict(eval_image_short_size=64, eval_image_max_size=96, size_divisor=32),
    "divisor_7": dict(eval_image_short_size=31, eval_image_max_size=47, size_divisor=7,
                      image_mean=(0.1, 0.2, 0.3)),
}


def make_config(name):
    fields = dict(CONFIGS[name])
    # training sizes = eval sizes, so that the training pipeline's output is comparable
    fields.update(image_short_size=fields["eval_image_short_size"], image_max_size=fields["eval_image_max_size"],
                  max_boxes_of_image=2, box_offset=0.0)
    return Config(**fields)


# ----------------------------------------------------------------------------- NumPy reference


def np_resized_shape(h, w, short, max_size):
    scale = short / min(h, w)
    if scale * max(h, w) > max_size:
        scale = max_size / max(h, w)
    return max(int(np.round(h * scale)), 1), max(int(np.round(w * scale)), 1), scale


def np_bilinear_matrix(out_size, in_size):
    """[out, in] weights of a half-pixel-centre bilinear resize (edge pixels repeated), the
    source coordinates computed in float32 as TF's kernel computes them."""
    weights = np.zeros([out_size, in_size])
    step = np.float32(in_size) / np.float32(out_size)
    for i in range(out_size):
        x = (np.float32(i) + np.float32(0.5)) * step - np.float32(0.5)
        low = int(np.floor(x))
        frac = float(x) - low
        weights[i, min(max(low, 0), in_size - 1)] += 1 - frac
        weights[i, min(max(low + 1, 0), in_size - 1)] += frac
    return weights


def np_preprocess(image, short, max_size, mean_bgr, divisor):
    """(padded image float64 [H', W', 3], image_info float32 [5]) of one [H, W, 3] image."""
    h, w = image.shape[:2]
    new_h, new_w, scale = np_resized_shape(h, w, short, max_size)
    rows, cols = np_bilinear_matrix(new_h, h), np_bilinear_matrix(new_w, w)
    resized = np.einsum("ah,hwc->awc", rows, image.astype(np.float64))  # rows, then columns
    resized = np.einsum("awc,bw->abc", resized, cols)
    normalised = resized - np.asarray(mean_bgr, np.float64)[::-1]
    padded_h, padded_w = -(-new_h // divisor) * divisor, -(-new_w // divisor) * divisor
    padded = np.zeros([padded_h, padded_w, 3])
    padded[:new_h, :new_w] = normalised
    info = np.array([new_h, new_w, np.float32(scale), h, w], np.float32)
    return padded, info


def assert_matches_numpy(images, info, image, config):
    """images [H', W', 3], info [5] against np_preprocess: sizes and image_info exact, values
    within float32 rounding, padding exactly zero."""
    want, want_info = np_preprocess(image, config.eval_image_short_size, config.eval_image_max_size,
                                    config.image_mean, config.size_divisor)
    np.testing.assert_array_equal(info, want_info)
    assert images.shape == want.shape
    new_h, new_w = int(want_info[0]), int(want_info[1])
    np.testing.assert_allclose(images[:new_h, :new_w], want[:new_h, :new_w], atol=1e-3)
    assert not images[new_h:].any() and not images[:, new_w:].any()


# ----------------------------------------------------------------------------- fixtures


def make_images():
    """[(array, PNG or JPEG bytes, TF's decoding of those bytes)] for SIZES."""
    rng = np.random.default_rng(3)
    out = []
    for k, (h, w) in enumerate(SIZES):
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG" if k % 3 == 2 else "PNG")
        raw = buffer.getvalue()
        out.append((array, raw, tf.io.decode_image(raw, channels=3).numpy()))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(images (see make_images), DetectionDataset of their files, one box each)."""
    root = tmp_path_factory.mktemp("preprocess_images")
    items = make_images()
    records = []
    for k, (array, raw, _) in enumerate(items):
        path = root / (f"{k}.jpg" if raw.startswith(b"\xff\xd8") else f"{k}.png")
        path.write_bytes(raw)
        h, w = array.shape[:2]
        records.append(ImageRecord(image_id=k, path=str(path), height=h, width=w,
                                   boxes=[[0, 0, w / 2, h / 2]], classes=[1]))
    dataset = DetectionDataset(records=records, class_names=("background", "a"), category_ids=[-1, 1],
                               annotation_file="preprocess.json")
    return items, dataset


class _PreprocessingModule(tf.Module):
    """The serving signatures' inputs and preprocessing (ServingModule's), returning its result."""

    def __init__(self, config):
        super().__init__()

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=serving.IMAGES_INPUT)])
        def serve_images(images):
            images, info = serving.preprocess_images(serving.check_images(images), config)
            return {"images": images, "image_info": info}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=serving.BYTES_INPUT)])
        def serve_bytes(image_bytes):
            images, info = serving.preprocess_encoded(serving.check_image_bytes(image_bytes), config)
            return {"images": images, "image_info": info}

        self.serve_images, self.serve_bytes = serve_images, serve_bytes


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def entry_points(request, images, tmp_path_factory):
    """config and, per entry point, a list of (images [H', W', 3], image_info [5]) per image."""
    items, dataset = images
    config = make_config(request.param)
    module = _PreprocessingModule(config)
    path = str(tmp_path_factory.mktemp(f"saved_{request.param}"))
    tf.saved_model.save(module, path, signatures={serving.DEFAULT_SIGNATURE: module.serve_images,
                                                  serving.BYTES_SIGNATURE: module.serve_bytes})
    loaded = tf.saved_model.load(path)
    saved_images = loaded.signatures[serving.DEFAULT_SIGNATURE]
    saved_bytes = loaded.signatures[serving.BYTES_SIGNATURE]

    def one(images, info, b=0):
        return np.asarray(images)[b], np.asarray(info)[b]

    out = {"eval_pipeline": [one(batch["images"], batch["image_info"])
                             for batch in make_dataset(dataset, config, training=False, batch_size=1)],
           "demo": [one(*preprocess_image(decode_image_file(r.path), config)) for r in dataset.records],
           "serving_images": [], "serving_bytes": [], "saved_images": [], "saved_bytes": []}
    for array, raw, decoded in items:
        # the images signature gets the decoded pixels (batch of two: the image and its mirror)
        batch = np.stack([decoded, decoded[::-1, ::-1]])
        result = module.serve_images(batch)
        out["serving_images"].append(one(result["images"], result["image_info"]))
        result = saved_images(**{serving.IMAGES_INPUT: tf.constant(batch)})
        out["saved_images"].append(one(result["images"], result["image_info"]))
        result = module.serve_bytes(tf.constant([raw]))
        out["serving_bytes"].append(one(result["images"], result["image_info"]))
        result = saved_bytes(**{serving.BYTES_INPUT: tf.constant([raw])})
        out["saved_bytes"].append(one(result["images"], result["image_info"]))
    return config, out, saved_images, saved_bytes


# ----------------------------------------------------------------------------- entry points agree


ENTRY_POINTS = ("demo", "serving_images", "serving_bytes", "saved_images", "saved_bytes")


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_entry_points_equal_the_eval_pipeline_bit_for_bit(entry_points, entry_point):
    _, out, _, _ = entry_points
    assert len(out[entry_point]) == len(out["eval_pipeline"]) == len(SIZES)
    for k, ((images, info), (want, want_info)) in enumerate(zip(out[entry_point], out["eval_pipeline"])):
        assert images.dtype == want.dtype == np.float32 and info.dtype == np.float32
        assert images.shape == want.shape, (entry_point, SIZES[k])
        np.testing.assert_array_equal(images, want, err_msg=f"{entry_point} {SIZES[k]}")
        np.testing.assert_array_equal(info, want_info, err_msg=f"{entry_point} {SIZES[k]}")


def test_eval_pipeline_equals_numpy(entry_points, images):
    config, out, _, _ = entry_points
    for (images_, info), (_, _, decoded) in zip(out["eval_pipeline"], images[0]):
        assert_matches_numpy(images_, info, decoded, config)


def test_mirrored_image_of_a_serving_batch_equals_numpy(entry_points, images):
    """The second image of each serving batch (the mirror) is preprocessed on its own terms."""
    config, _, saved_images, _ = entry_points
    for _, _, decoded in images[0]:
        batch = np.stack([decoded, decoded[::-1, ::-1]])
        result = saved_images(**{serving.IMAGES_INPUT: tf.constant(batch)})
        assert_matches_numpy(result["images"].numpy()[1], result["image_info"].numpy()[1], batch[1], config)


def test_training_pipeline_equals_the_eval_preprocessing_up_to_its_flip(entry_points, images):
    """Training (at the same sizes) gives the eval image, or its resized image mirrored before the
    padding, bit for bit; both happen; image_info is the same."""
    config, out, _, _ = entry_points
    dataset = images[1]
    n = len(SIZES)
    flips = []
    for k, batch in enumerate(make_dataset(dataset, config, training=True, batch_size=1, shuffle=False,
                                           seed=11).take(3 * n)):
        want, want_info = out["eval_pipeline"][k % n]
        got, info = batch["images"].numpy()[0], batch["image_info"].numpy()[0]
        np.testing.assert_array_equal(info, want_info)
        assert got.shape == want.shape
        h, w = int(info[0]), int(info[1])
        mirrored = want.copy()
        mirrored[:h, :w] = want[:h, :w][:, ::-1]
        flipped = np.array_equal(got, mirrored) and not np.array_equal(got, want)
        np.testing.assert_array_equal(got, mirrored if flipped else want, err_msg=str(SIZES[k % n]))
        x1, y1, x2, y2 = batch["gt_boxes"].numpy()[0, 0]
        half_w = dataset.records[k % n].width / 2 * info[2]
        assert (x1, x2) == pytest.approx((w - half_w, w) if flipped else (0, half_w), abs=1e-4)
        flips.append(flipped)
    assert 0 < sum(flips) < len(flips)


def test_serving_bytes_batch_equals_the_eval_pipeline_batch(entry_points, images):
    """A batch of encoded images of different sizes equals the eval pipeline's padded batch."""
    config, _, _, saved_bytes = entry_points
    items, dataset = images
    want = next(iter(make_dataset(dataset, config, training=False, batch_size=len(SIZES))))
    got = saved_bytes(**{serving.BYTES_INPUT: tf.constant([raw for _, raw, _ in items])})
    np.testing.assert_array_equal(got["images"].numpy(), want["images"].numpy())
    np.testing.assert_array_equal(got["image_info"].numpy(), want["image_info"].numpy())


# ----------------------------------------------------------------------------- the functions


def test_resized_shape_against_numpy():
    for h, w in SIZES + [(480, 640), (1000, 1333), (7, 7)]:
        for short, max_size in [(800, 1333), (45, 70), (31, 47), (600, 1000)]:
            got = [t.numpy() for t in pp.resized_shape(h, w, short, max_size)]
            want_h, want_w, scale = np_resized_shape(h, w, short, max_size)
            assert (int(got[0]), int(got[1])) == (want_h, want_w), (h, w, short, max_size)
            assert got[2] == np.float32(scale)
    # round half to even, as NumPy's round: 2.5 -> 2, 3.5 -> 4
    assert [int(t) for t in pp.resized_shape(1, 4, 2.5, 100)[:2]] == [2, 10]
    assert [int(t) for t in pp.resized_shape(1, 4, 3.5, 100)[:2]] == [4, 14]


def test_preprocess_image_and_batch_against_numpy():
    rng = np.random.default_rng(5)
    mean = (101.5, 17.25, 3.0)
    for h, w in [(19, 30), (30, 19), (8, 8)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got, info = pp.preprocess(image, 21, 33, mean, 8)
        want, want_info = np_preprocess(image, 21, 33, mean, 8)
        np.testing.assert_array_equal(info.numpy(), want_info)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-3)
        batch, batch_info = pp.preprocess(np.stack([image, image[::-1]]), 21, 33, mean, 8)
        assert batch.shape == (2,) + want.shape and batch_info.shape == (2, 5)
        np.testing.assert_array_equal(batch.numpy()[0], got.numpy())
        np.testing.assert_array_equal(batch_info.numpy(), [want_info, want_info])
        flipped, flipped_info = pp.preprocess(image, 21, 33, mean, 8, flip=tf.constant(True))
        new_h, new_w = int(want_info[0]), int(want_info[1])
        np.testing.assert_array_equal(flipped.numpy()[:new_h, :new_w], got.numpy()[:new_h, :new_w][:, ::-1])
        assert not flipped.numpy()[new_h:].any() and not flipped.numpy()[:, new_w:].any()
        unflipped, _ = pp.preprocess(image, 21, 33, mean, 8, flip=tf.constant(False))
        np.testing.assert_array_equal(unflipped.numpy(), got.numpy())


def test_a_side_that_rounds_to_zero_keeps_one_pixel():
    """1 x 2000 at short 600 / max 1000: scale 0.5 rounds the height to 0; it stays 1."""
    image = np.full([1, 2000, 3], 50, np.uint8)
    images, info = pp.preprocess(image, 600, 1000, (0, 0, 0), 32)
    np.testing.assert_array_equal(info.numpy(), np.array([1, 1000, 0.5, 1, 2000], np.float32))
    assert images.shape == (32, 1024, 3)
    np.testing.assert_array_equal(images.numpy()[:1, :1000], 50)
    assert not images.numpy()[1:].any() and not images.numpy()[:, 1000:].any()


def test_pad_to_multiple_and_padded_size():
    image = tf.ones([5, 9, 3])
    padded = pp.pad_to_multiple(image, 4)
    assert padded.shape == (8, 12, 3) and float(tf.reduce_sum(padded)) == 5 * 9 * 3
    assert pp.pad_to_multiple(tf.ones([2, 8, 4, 3]), 4).shape == (2, 8, 4, 3)  # already multiples
    assert [pp.padded_size(s, 32) for s in (1, 31, 32, 33, 64)] == [32, 32, 32, 64, 64]
    with pytest.raises(ValueError, match="H, W, 3"):
        pp.pad_to_multiple(tf.ones([4, 4]), 4)


def test_is_supported_image():
    cases = {b"": False, b"B": False, b"BM": True, b"\x89PNG\r\n\x1a\nrest": True, b"\x89PNG": False,
             b"GIF89a": True, b"RIFF\0\0\0\0WEBPVP8 ": True, b"RIFF\0\0\0\0WAVE": False, b"\xff\xd8\xff\xe0": True,
             b"not an image": False}
    for raw, want in cases.items():
        assert bool(pp.is_supported_image(tf.constant(raw))) is want, raw


def test_works_in_tf_data_and_traced_functions():
    """The same result eagerly, in a tf.data map and in a traced function with unknown sizes."""
    image = np.random.default_rng(1).integers(0, 256, (23, 17, 3), dtype=np.uint8)
    args = (40, 50, (1.0, 2.0, 3.0), 16)
    eager = [t.numpy() for t in pp.preprocess(image, *args)]
    mapped = next(iter(tf.data.Dataset.from_tensors(image).map(lambda x: pp.preprocess(x, *args))))
    traced = tf.function(lambda x: pp.preprocess(x, *args),
                         input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])(image)
    for result in (mapped, traced):
        for got, want in zip(result, eager):
            np.testing.assert_array_equal(got.numpy(), want)
