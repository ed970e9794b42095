"""The stock-op PS-RoI-Align formulations the ops benchmark times against compute what the op
computes (values and gradients), so the speed-ups compare like with like."""
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import ops_bench
from lhrcnn import ops


def _near_ties(features, rois, gap=1e-4):
    """[R, G, G, K] True where a bin's two largest samples are within `gap`: there float rounding
    may pick either sample for the max, and the gradient goes to the one picked."""
    g = ops_bench.G
    boxes, box_index = ops_bench._bin_boxes(features, rois)
    planes = ops_bench._bin_planes(features)
    samples = tf.stack([tf.image.crop_and_resize(planes[b], boxes[:, b // g, b % g], box_index, [2, 2])
                        for b in range(g * g)], axis=1)  # [R, G*G, 2, 2, K]
    k = samples.shape[-1]
    top2 = tf.math.top_k(tf.transpose(tf.reshape(samples, [-1, g * g, 4, k]), [0, 1, 3, 2]), 2).values
    return tf.reshape(top2[..., 0] - top2[..., 1] < gap, [-1, g, g, k]).numpy()


@pytest.mark.parametrize("name", ["stock_ps_roi_align_one_call", "stock_ps_roi_align_per_bin",
                                  "stock_ps_roi_align_strided"])
def test_stock_baselines_match_the_op(name):
    rng = np.random.default_rng(0)
    g = ops_bench.G
    features = tf.constant(rng.normal(size=(2, 12, 15, 3 * g * g)).astype(np.float32))
    rois = ops_bench._rois(rng, 30, 12 / ops_bench.SCALE, 15 / ops_bench.SCALE)
    # inside the map, where crop_and_resize (which extrapolates) and the op (which clamps) agree
    rois[:, [1, 3]] = np.clip(rois[:, [1, 3]], 0, 14 / ops_bench.SCALE)
    rois[:, [2, 4]] = np.clip(rois[:, [2, 4]], 0, 11 / ops_bench.SCALE)
    rois[15:, 0] = 1
    rois = tf.constant(rois)
    grad = rng.normal(size=(30, g, g, 3)).astype(np.float32)
    ties = _near_ties(features, rois)
    assert ties.mean() < 0.01  # a few bins at most
    grad = tf.constant(np.where(ties, 0.0, grad).astype(np.float32))  # no gradient through a near-tie
    baseline = getattr(ops_bench, name)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features)
        want = ops.ps_roi_align(features, rois, g, ops_bench.SCALE, backend="tf")
        got = baseline(features, rois)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    np.testing.assert_allclose(tape.gradient(got, features, output_gradients=grad).numpy(),
                               tape.gradient(want, features, output_gradients=grad).numpy(), atol=1e-4)
