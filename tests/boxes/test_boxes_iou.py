"""IoU against the NumPy reference (Cython bbox_overlaps semantics) and hand values."""
import numpy as np
import pytest

import reference_boxes as ref
from lhrcnn.boxes import batched_pairwise_iou, pairwise_iou


def test_hand_values_with_and_without_plus_one():
    a = np.array([[0, 0, 9, 9]], np.float32)
    b = np.array([[5, 5, 14, 14], [10, 10, 20, 20], [0, 0, 9, 9], [9, 9, 12, 12]], np.float32)
    # +1: areas 100; overlap 5x5 = 25 -> 25 / 175; touching at x = 9/10: 0; identical: 1;
    # [9, 9, 12, 12] shares the pixel (9, 9): 1 / (100 + 16 - 1)
    np.testing.assert_allclose(pairwise_iou(a, b).numpy(), [[25 / 175, 0, 1, 1 / 115]], rtol=1e-6)
    # no +1: areas 81; overlap 4x4 = 16 -> 16 / 146; [9, 9, 12, 12] only touches the corner: 0
    np.testing.assert_allclose(pairwise_iou(a, b, offset=0.0).numpy(), [[16 / 146, 0, 1, 0]], rtol=1e-6)


def test_degenerate_boxes_give_zero():
    a = np.array([[5, 5, 5, 5], [5, 5, 3, 8], [0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 5, 5, 5]], np.float32)
    got0 = pairwise_iou(a, b, offset=0.0).numpy()
    np.testing.assert_array_equal(got0, [[0, 0], [0, 0], [1, 0]])
    # with +1 the point box [5, 5, 5, 5] is a 1x1 box (area 1): IoU 1/121 with [0, 0, 10, 10]
    got1 = pairwise_iou(a, b, offset=1.0).numpy()
    np.testing.assert_allclose(got1, [[1 / 121, 1], [0, 0], [1, 1 / 121]], rtol=1e-6)
    np.testing.assert_allclose(got1, ref.iou_ref(a, b, 1.0), rtol=1e-6)


@pytest.mark.parametrize("offset", [1.0, 0.0])
def test_random_against_reference_single_and_batched(offset):
    rng = np.random.default_rng(7 + int(offset))
    xy = rng.integers(0, 60, (2, 30, 2))
    wh = rng.integers(-3, 40, (2, 30, 2))  # some degenerate
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    a, b = boxes[:, :20], boxes[:, 20:]
    got = batched_pairwise_iou(a, b, offset).numpy()
    assert got.shape == (2, 20, 10)
    for i in range(2):
        want = ref.iou_ref(a[i], b[i], offset)
        np.testing.assert_array_equal(got[i], want.astype(np.float32))
        np.testing.assert_array_equal(pairwise_iou(a[i], b[i], offset).numpy(), got[i])
