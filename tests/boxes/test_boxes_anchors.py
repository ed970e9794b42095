"""Anchors: the py-faster-rcnn table of docs/original.md#anchors and the (y, x, a) grid order."""
import numpy as np
import tensorflow as tf

import reference_boxes as ref
from lhrcnn.boxes import generate_base_anchors, grid_anchors

# docs/original.md#anchors: index a = ratio_index * 5 + scale_index
TABLE = [[-15, -4, 30, 19], [-38, -16, 53, 31], [-84, -40, 99, 55], [-176, -88, 191, 103],
         [-360, -184, 375, 199], [-8, -8, 23, 23], [-24, -24, 39, 39], [-56, -56, 71, 71],
         [-120, -120, 135, 135], [-248, -248, 263, 263], [-3, -14, 18, 29], [-14, -36, 29, 51],
         [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]
SIZES = [(46, 24), (92, 48), (184, 96), (368, 192), (736, 384), (32, 32), (64, 64), (128, 128),
         (256, 256), (512, 512), (22, 44), (44, 88), (88, 176), (176, 352), (352, 704)]


def test_base_anchors_match_the_reference_table():
    anchors = generate_base_anchors()
    assert anchors.dtype == np.float32 and anchors.shape == (15, 4)
    np.testing.assert_array_equal(anchors, np.array(TABLE, np.float32))
    np.testing.assert_array_equal(anchors[:, 2:] - anchors[:, :2] + 1, np.array(SIZES, np.float32))


def test_classic_nine_anchors_are_the_matching_rows():
    anchors = generate_base_anchors(16, (0.5, 1, 2), (8, 16, 32))
    np.testing.assert_array_equal(anchors, np.array(TABLE, np.float32)[[2, 3, 4, 7, 8, 9, 12, 13, 14]])


def test_rounding_is_half_to_even():
    # base 18, ratio 0.5: ws = round(sqrt(648) = 25.46) = 25, hs = round(12.5) = 12 (half-even; not 13).
    # centre 8.5: (8.5 - 12, 8.5 - 5.5, 8.5 + 12, 8.5 + 5.5)
    np.testing.assert_array_equal(generate_base_anchors(18, (0.5,), (1,)), [[-3.5, 3.0, 20.5, 14.0]])


def test_grid_order_is_y_x_anchor():
    base = generate_base_anchors(16, (0.5, 1, 2), (2, 4))
    got = grid_anchors(base, 3, 5, 16).numpy()
    assert got.shape == (3 * 5 * 6, 4)
    np.testing.assert_array_equal(got, ref.grid_ref(base, 3, 5, 16))
    # index (y * W + x) * A + a
    y, x, a = 2, 3, 4
    np.testing.assert_array_equal(got[(y * 5 + x) * 6 + a], base[a] + [48, 32, 48, 32])


def test_grid_with_dynamic_feature_size():
    base = generate_base_anchors()

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 8])])
    def anchors_of(features):
        shape = tf.shape(features)
        return grid_anchors(base, shape[1], shape[2], 16)

    np.testing.assert_array_equal(anchors_of(tf.zeros([1, 2, 3, 8])).numpy(), ref.grid_ref(base, 2, 3, 16))
    assert anchors_of(tf.zeros([1, 4, 1, 8])).shape == (4 * 1 * 15, 4)
