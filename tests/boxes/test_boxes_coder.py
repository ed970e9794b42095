"""Box coding against the NumPy reference and hand values, including the +1 asymmetry of
the original's decode (docs/original.md#box-coding), delta clamping and batched clipping."""
import math

import numpy as np
import pytest
import tensorflow as tf

import reference_boxes as ref
from lhrcnn.boxes import clip_boxes, decode, encode
from lhrcnn.boxes.coder import SAFE_CLIP_SCALE


def _boxes(rng, n):
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(4, 200, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_encode_hand_values():
    anchor = [[0.0, 0.0, 15.0, 15.0]]   # w = h = 16 with +1, centre 8
    gt = [[4.0, 2.0, 35.0, 9.0]]        # w = 32, h = 8, centre (20, 6)
    want = [[12 / 16, -2 / 16, math.log(2.0), math.log(0.5)]]
    np.testing.assert_allclose(encode(anchor, gt).numpy(), want, rtol=1e-6)
    # modern: w = 15 / 31, h = 15 / 7; centres (7.5, 7.5) and (19.5, 5.5)
    want0 = [[12 / 15, -2 / 15, math.log(31 / 15), math.log(7 / 15)]]
    np.testing.assert_allclose(encode(anchor, gt, offset=0.0).numpy(), want0, rtol=1e-6)
    # normalisation: (d - means) / stds
    np.testing.assert_allclose(encode(anchor, gt, means=(0.1, 0, 0, 0), stds=(0.1, 0.1, 0.2, 0.2)).numpy(),
                               [[(0.75 - 0.1) / 0.1, -1.25, math.log(2) / 0.2, math.log(0.5) / 0.2]], rtol=1e-5)


@pytest.mark.parametrize("offset", [1.0, 0.0])
def test_encode_decode_match_reference(offset):
    rng = np.random.default_rng(int(offset))
    a, g = _boxes(rng, 50), _boxes(rng, 50)
    means, stds = (0.01, -0.02, 0.03, 0.0), (0.1, 0.1, 0.2, 0.2)
    np.testing.assert_allclose(encode(a, g, offset).numpy(), ref.encode_ref(a, g, offset), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(encode(a, g, offset, means, stds).numpy(),
                               ref.encode_ref(a, g, offset, means, stds), rtol=1e-4, atol=1e-4)
    deltas = rng.normal(0, 0.5, (50, 12)).astype(np.float32)  # k = 3 classes
    np.testing.assert_allclose(decode(a, deltas, offset).numpy(), ref.decode_ref(a, deltas, offset),
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(decode(a, deltas, offset, means, stds).numpy(),
                               ref.decode_ref(a, deltas, offset, means, stds), rtol=1e-5, atol=1e-3)


def test_decode_is_not_the_inverse_with_plus_one():
    rng = np.random.default_rng(3)
    a, g = _boxes(rng, 20), _boxes(rng, 20)
    back = decode(a, encode(a, g, 1.0), 1.0).numpy()
    np.testing.assert_allclose(back, g + [0, 0, 1, 1], rtol=1e-5, atol=2e-3)  # x2, y2 one pixel further
    exact = decode(a, encode(a, g, 0.0), 0.0).numpy()
    np.testing.assert_allclose(exact, g, rtol=1e-5, atol=2e-3)
    # zero deltas: the anchor [0, 0, 15, 15] decodes to [0, 0, 16, 16] with +1
    np.testing.assert_array_equal(decode([[0.0, 0, 15, 15]], np.zeros((1, 4), np.float32)).numpy(),
                                  [[0, 0, 16, 16]])


def test_decode_broadcasts_anchors_over_the_batch_and_classes():
    rng = np.random.default_rng(4)
    a = _boxes(rng, 7)
    deltas = rng.normal(0, 0.3, (2, 7, 8)).astype(np.float32)
    got = decode(a[None], deltas).numpy()
    assert got.shape == (2, 7, 8)
    for b in range(2):
        np.testing.assert_allclose(got[b], ref.decode_ref(a, deltas[b]), rtol=1e-5, atol=1e-3)


def test_clip_scale_clamps_dw_dh_only_from_above():
    a = np.array([[0.0, 0.0, 15.0, 15.0]], np.float32)
    deltas = np.array([[0.0, 0.0, 10.0, -10.0]], np.float32)
    unclamped = decode(a, deltas).numpy()
    np.testing.assert_allclose(unclamped, ref.decode_ref(a, deltas), rtol=1e-5)
    got = decode(a, deltas, clip_scale=SAFE_CLIP_SCALE).numpy()
    np.testing.assert_allclose(got, ref.decode_ref(a, deltas, clip_scale=math.log(1000 / 16)), rtol=1e-5)
    assert got[0, 2] - got[0, 0] == pytest.approx(1000.0, rel=1e-5)  # 16 * 1000 / 16
    assert got[0, 3] - got[0, 1] == pytest.approx(16 * math.exp(-10), rel=1e-3)
    huge = decode(a, np.array([[0, 0, 200.0, 0]], np.float32)).numpy()  # original: overflow to inf
    assert np.isinf(huge[0, 2])


def test_clip_boxes_per_image():
    boxes = np.array([[[-5, -3, 120, 90], [10, 20, 30, 40]],
                      [[-5, -3, 120, 90], [50, 60, 70, 200]]], np.float32)
    got = clip_boxes(boxes, tf.constant([80.0, 100.0]), tf.constant([100.0, 60.0])).numpy()
    np.testing.assert_array_equal(got[0], [[0, 0, 99, 79], [10, 20, 30, 40]])
    np.testing.assert_array_equal(got[1], [[0, 0, 59, 90], [50, 60, 59, 99]])
    # scalar size, [N, 4k] layout
    rng = np.random.default_rng(5)
    many = rng.uniform(-50, 400, (10, 8)).astype(np.float32)
    np.testing.assert_array_equal(clip_boxes(many, 300, 200).numpy(), ref.clip_ref(many, 300, 200))
