"""Decompression bombs: the decoded size is read from the header (checked against the decoder
itself on real files of every format), and images above max_image_pixels are skipped by the data
pipeline, refused by read_image / the Predictor and by the serve_bytes graph, without decoding."""
import io
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from image_bombs import gif_frames, png_bomb
from lhrcnn.config import DEFAULT_MAX_IMAGE_PIXELS, Config
from lhrcnn.data import DetectionDataset, ImageRecord, PipelineStats, make_dataset, preprocess
from lhrcnn.predictor import read_image

PNG_BOMB = png_bomb(23170, 23170)  # 1.5 MB of file, 1.6 GB decoded
GIF_BOMB = gif_frames([(20000, 1), (1, 20000)] + [(1, 1)] * 10)  # 23 KB of file, 12 x 1.2 GB decoded


def _encode(array, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _samples():
    """(name, bytes) of every format the decoder reads, at sizes that catch swapped or
    misread fields (h != w, sides above 255 and 65535 / 16384 apart)."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in [(19, 37), (300, 1000), (1, 1), (257, 3)]:
        rgb = rng.integers(0, 256, (h, w, 3), np.uint8)
        for fmt, options in [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("BMP", {}), ("GIF", {}),
                             ("WEBP", {"lossless": True}), ("WEBP", {"quality": 50})]:
            out.append((f"{fmt}{options} {h}x{w}", _encode(rgb, fmt, **options)))
        out.append((f"grey PNG {h}x{w}", _encode(rgb[..., 0], "PNG")))
        out.append((f"RGBA PNG {h}x{w}", _encode(rng.integers(0, 256, (h, w, 4), np.uint8), "PNG")))
        frames = [Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)) for _ in range(3)]
        buffer = io.BytesIO()
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
        out.append((f"animated GIF 3x{h}x{w}", buffer.getvalue()))
    # frames of different sizes: the decoder's canvas is the largest width by the largest height
    out.append(("GIF frames 300x1, 1x200", gif_frames([(300, 1), (1, 200)])))
    out.append(("GIF frames 5 x 3x4", gif_frames([(3, 4)] * 5)))
    out.append(("GIF frames 50x1, 1x40, 7x7", gif_frames([(50, 1), (1, 40), (7, 7)], screen=(640, 480))))
    return out


@pytest.mark.parametrize("name, raw", _samples(), ids=[n for n, _ in _samples()])
def test_decoded_size_is_what_the_decoder_allocates(name, raw):
    frames, height, width = (int(v) for v in preprocess.decoded_size(tf.constant(raw)))
    decoded = tf.io.decode_image(raw, channels=3, expand_animations=True)
    shape = tuple(decoded.shape) if decoded.shape.rank == 4 else (1,) + tuple(decoded.shape)
    assert (frames, height, width) == shape[:3], name


def test_bombs_are_measured_without_decoding():
    assert [int(v) for v in preprocess.decoded_size(tf.constant(PNG_BOMB))] == [1, 23170, 23170]
    assert [int(v) for v in preprocess.decoded_size(tf.constant(GIF_BOMB))] == [12, 20000, 20000]
    assert [int(v) for v in preprocess.decoded_size(tf.constant(b"not an image at all"))] == [0, 0, 0]


@pytest.mark.parametrize("raw", [PNG_BOMB, GIF_BOMB], ids=["png", "gif"])
def test_decode_image_refuses_a_bomb_before_decoding(raw):
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        preprocess.decode_image(tf.constant(raw))
    # the limit is inclusive: a 10 x 20 image passes at 200 pixels and is refused at 199
    small = _encode(np.zeros((10, 20, 3), np.uint8), "PNG")
    assert preprocess.decode_image(tf.constant(small), max_pixels=200).shape == (10, 20, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)10\W+b?'?x'?\W+20.*than the 199 pixels"):
        preprocess.decode_image(tf.constant(small), max_pixels=199)


def test_read_image_names_the_file_and_the_limit(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(PNG_BOMB)
    with pytest.raises(ValueError, match=rf"image {path} would decode to 1 frame\(s\) of 23170x23170 pixels.*"
                                         rf"{DEFAULT_MAX_IMAGE_PIXELS} pixels allowed \(max_image_pixels\)"):
        read_image(str(path))
    with pytest.raises(ValueError, match="12 frame.*20000x20000"):
        read_image(GIF_BOMB)


def test_config_checks_max_image_pixels():
    assert Config().max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS == 8192 * 8192
    for bad in (0, -5, 1.5, True, "many"):
        with pytest.raises(ValueError, match="max_image_pixels must be a positive integer"):
            Config(max_image_pixels=bad).validate()


@pytest.mark.parametrize("cache", [False, True])
def test_the_pipeline_skips_bombs_by_name(tmp_path, caplog, cache):
    rng = np.random.default_rng(1)
    records = []
    for k, raw in enumerate([_encode(rng.integers(0, 256, (24, 30, 3), np.uint8), "PNG"), PNG_BOMB,
                             _encode(rng.integers(0, 256, (20, 20, 3), np.uint8), "JPEG"), GIF_BOMB]):
        path = tmp_path / f"image{k}.{'gif' if raw is GIF_BOMB else 'png'}"
        path.write_bytes(raw)
        records.append(ImageRecord(k, str(path), 20, 20, [[1, 1, 5, 5]], [1]))
    dataset = DetectionDataset(records, ("background", "a"), [-1, 1], "bombs.json")
    config = Config(eval_image_short_size=16, eval_image_max_size=32, size_divisor=16, cache_decoded_images=cache)
    stats = PipelineStats()
    with caplog.at_level(logging.WARNING):
        batches = list(make_dataset(dataset, config, training=False, batch_size=1, stats=stats, cache=cache))
    assert [int(b["image_id"][0]) for b in batches] == [0, 2]
    assert stats.too_large == 2 and stats.as_dict()["too_large"] == 2
    assert "23170x23170" in stats.failed_files[records[1].path]
    assert "12 frame(s) of 20000x20000" in stats.failed_files[records[3].path]
    assert f"more than the {DEFAULT_MAX_IMAGE_PIXELS} pixels max_image_pixels allows" in caplog.text
    assert records[1].path in caplog.text and records[3].path in caplog.text
