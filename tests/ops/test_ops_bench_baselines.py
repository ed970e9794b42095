"""The stock-op PS-RoI-Align formulations the ops benchmark times against compute what the op
computes (values and gradients), so the speed-ups compare like with like."""
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import ops_bench
from lhrcnn import ops


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
    grad = tf.constant(rng.normal(size=(30, g, g, 3)).astype(np.float32))
    baseline = getattr(ops_bench, name)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features)
        want = ops.ps_roi_align(features, rois, g, ops_bench.SCALE, backend="tf")
        got = baseline(features, rois)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    np.testing.assert_allclose(tape.gradient(got, features, output_gradients=grad).numpy(),
                               tape.gradient(want, features, output_gradients=grad).numpy(), atol=1e-4)
