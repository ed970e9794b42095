"""Hostile attributes and values: the reproducers of the fuzz sweep as regression tests (each run
in a child process, so a crash fails the test instead of killing pytest), the attribute limits
both backends share, the twins' bin edges in eager, graph and XLA against the compiled op, and a
seeded fuzz over both backends, eager and tf.function, bounded in time."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from lhrcnn import ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_custom = pytest.mark.skipif(not ops.custom_ops_available(), reason="the compiled ops did not load")


def _child(code, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)


# The sweep's crashes, called on the raw compiled ops (no Python-side check in front) and through
# lhrcnn.ops, eagerly and inside tf.function. Each must end in one clean error naming the attribute.
REPRODUCERS = {
    "roi_align sampling 65536": (
        "lib.lhrcnn_roi_align(np.zeros([1,4,4,1],np.float32), np.array([[0,0,0,8,8]],np.float32), pooled_height=1, "
        "pooled_width=1, sample_height=65536, sample_width=65536, spatial_scale=0.25)", "sample_height"),
    "ps_roi_align group 65536": (
        "lib.lhrcnn_ps_roi_align(np.zeros([1,1,1,0],np.float32), np.zeros([0,5],np.float32), group_size=65536, "
        "spatial_scale=1.0)", "group_size"),
    "ps_roi_pool group 65536": (
        "lib.lhrcnn_ps_roi_pool(np.zeros([1,1,1,0],np.float32), np.zeros([0,5],np.float32), group_size=65536, "
        "spatial_scale=1.0)", "group_size"),
    "ps_roi_pool group 46341 in tf.function": (
        "tf.function(lambda: lib.lhrcnn_ps_roi_pool(tf.zeros([1,2,2,0]), tf.zeros([0,5]), group_size=46341, "
        "spatial_scale=1.0))()", "group_size"),
    "roi_align sampling 1000 (unbounded work)": (
        "lib.lhrcnn_roi_align(np.zeros([1,16,16,4],np.float32), np.tile(np.array([[0,0,0,15,15]],np.float32),(8,1)), "
        "pooled_height=14, pooled_width=14, sample_height=1000, sample_width=1000, spatial_scale=1.0)",
        "sample_height"),
    "nms max_output_size 2**40": (
        "lib.lhrcnn_nms(tf.zeros([3,4]), tf.zeros([3]), tf.zeros([0], tf.int32), max_output_size=2**40, "
        "iou_threshold=0.5, score_threshold=0.0)", "max_output_size"),
    "ps_roi_align subnormal scale": (
        "lib.lhrcnn_ps_roi_align(np.zeros([1,4,4,4],np.float32), np.zeros([1,5],np.float32), group_size=2, "
        "spatial_scale=1e-40)", "spatial_scale"),
}


@needs_custom
@pytest.mark.parametrize("name", sorted(REPRODUCERS))
def test_reproducers_of_the_compiled_ops_fail_cleanly(name):
    call, attribute = REPRODUCERS[name]
    code = ("import numpy as np, tensorflow as tf\nfrom lhrcnn import ops\nlib = ops._lib()\n"
            f"try:\n    {call}\n    print('NO ERROR')\n"
            "except (tf.errors.InvalidArgumentError, ValueError) as e:\n"
            "    print('CLEAN', type(e).__name__, str(e).splitlines()[0][:300])\n")
    proc = _child(code, timeout=120)
    assert proc.returncode == 0, f"{name}: the child died ({proc.returncode}): {proc.stderr[-2000:]}"
    assert "CLEAN" in proc.stdout and attribute in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("call,attribute", [
    (lambda b: ops.roi_align(np.zeros([1, 4, 4, 1], np.float32), np.array([[0, 0, 0, 8, 8]], np.float32), 1, 0.25,
                             sampling_ratio=(65536, 65536), backend=b), "sampling_ratio"),
    (lambda b: ops.ps_roi_align(np.zeros([1, 1, 1, 0], np.float32), np.zeros([0, 5], np.float32), 65536, 1.0,
                                backend=b), "group_size"),
    (lambda b: ops.ps_roi_pool(np.zeros([1, 1, 1, 0], np.float32), np.zeros([0, 5], np.float32), 65536, 1.0,
                               backend=b), "group_size"),
    (lambda b: ops.roi_align(np.zeros([1, 8, 8, 1], np.float32), np.zeros([8, 5], np.float32), 14, 1.0,
                             sampling_ratio=1000, backend=b), "sampling_ratio"),
    (lambda b: ops.roi_align(np.zeros([1, 8, 8, 1], np.float32), np.zeros([1, 5], np.float32), 257, 1.0,
                             backend=b), "output_size"),
    (lambda b: ops.nms(np.zeros([3, 4], np.float32), np.zeros([3], np.float32), 2 ** 40, 0.5, backend=b),
     "max_output_size"),
    (lambda b: ops.nms(np.zeros([3, 4], np.float32), np.zeros([3], np.float32), 2 ** 40, 0.5,
                       class_ids=np.zeros([3], np.int32), backend=b), "max_output_size"),
] + [(lambda b, s=s: ops.ps_roi_pool(np.zeros([1, 4, 4, 4], np.float32), np.zeros([1, 5], np.float32), 2, s,
                                      backend=b), "spatial_scale") for s in (1e-300, 1e-40, 1e300, -1e-40)])
def test_both_backends_refuse_alike(backend, call, attribute):
    with pytest.raises(ValueError, match=attribute):
        call(backend)
    with pytest.raises(ValueError, match=attribute):
        tf.function(lambda: call(backend))()


def test_limits_are_accepted_up_to_the_maximum(backend):
    f = np.random.default_rng(0).normal(size=(1, 6, 6, 4)).astype(np.float32)
    rois = np.array([[0, 0, 0, 5, 5]], np.float32)
    out = ops.roi_align(f, rois, 2, 1.0, sampling_ratio=ops.MAX_SAMPLING_RATIO, backend=backend)
    assert out.shape == (1, 2, 2, 4) and np.all(np.isfinite(out))
    idx, n = ops.nms(np.array([[0, 0, 1, 1]], np.float32), np.array([1.0], np.float32), 5, 0.5, backend=backend)
    assert int(n) == 1 and idx.shape == (5,)
    assert ops._positive_float("spatial_scale", float(np.finfo(np.float32).tiny)) > 0


@needs_custom
def test_huge_finite_roi_gives_the_compiled_ops_values():
    features = np.random.default_rng(1).normal(size=(1, 3, 4, 4)).astype(np.float32)
    rois = np.array([[0, -3e38, -3e38, 3e38, 3e38], [0, 0, 0, 2, 2]], np.float32)
    expected = ops.ps_roi_pool(features, rois, 2, 1.0, backend="custom").numpy()
    for run in (lambda: ops.ps_roi_pool(features, rois, 2, 1.0, backend="tf"),
                tf.function(lambda: ops.ps_roi_pool(features, rois, 2, 1.0, backend="tf"))):
        np.testing.assert_array_equal(np.asarray(run()), expected)


# ----------------------------------------------------------------------------- bin edges, every mode


def _grid_features(height, width, channels):
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.broadcast_to((10 * rows + cols)[None, :, :, None], (1, height, width, channels)).astype(np.float32).copy()


def _modes(call):
    return {"eager": call, "graph": tf.function(call), "xla": tf.function(call, jit_compile=True)}


@needs_custom
def test_the_sweeps_ps_roi_pool_case_in_every_mode():
    features = _grid_features(3, 4, 49)
    rois = np.array([[0, -2.4609, -0.572, 2.7013, 1.4315]], np.float32)
    expected = ops.ps_roi_pool(features, rois, 7, 1.0, backend="custom").numpy()
    np.testing.assert_array_equal(expected[0, -1, :, 0], [0, 0, 10, 10.5, 11.5, 12.5, 13])
    for mode, run in _modes(lambda f, r: ops.ps_roi_pool(f, r, 7, 1.0, backend="tf")).items():
        np.testing.assert_array_equal(np.asarray(run(features, rois)), expected, err_msg=mode)


@needs_custom
@pytest.mark.parametrize("seed", range(3))
def test_twins_agree_with_the_compiled_ops_in_every_mode(seed):
    """Bin edges on whole numbers (RoIs with coordinates k / 4, group sizes 2..7, scales 1, 1/2,
    1/16) and random ones: PS-RoI pooling bit for bit (the grid features' bin sums are exact), the
    RoI-Align family to float rounding, in eager, graph and XLA."""
    rng = np.random.default_rng(seed)
    g = int(rng.integers(2, 8))
    scale = float(rng.choice([1.0, 0.5, 1 / 16]))
    height, width = int(rng.integers(3, 12)), int(rng.integers(3, 12))
    features = _grid_features(height, width, g * g * 2)
    n = 24
    corners = np.concatenate([rng.integers(-8, 4 * width / scale, (n, 2)) / 4.0,
                              rng.integers(0, 4 * width / scale, (n, 2)) / 4.0], 1)
    corners[n // 2:] = rng.uniform(-3, width / scale + 3, (n - n // 2, 4))
    rois = np.concatenate([np.zeros([n, 1]), corners], 1).astype(np.float32)
    cases = {
        "ps_roi_pool": (lambda f, r, b: ops.ps_roi_pool(f, r, g, scale, backend=b), 0.0),
        "ps_roi_align": (lambda f, r, b: ops.ps_roi_align(f, r, g, scale, sampling_ratio=(2, 3), backend=b), 1e-4),
        "roi_align": (lambda f, r, b: ops.roi_align(f, r, (g, g + 1), scale, sampling_ratio=2, backend=b), 1e-4),
    }
    for name, (call, tolerance) in cases.items():
        expected = call(features, rois, "custom").numpy()
        for mode, run in _modes(lambda f, r: call(f, r, "tf")).items():
            got = np.asarray(run(features, rois))
            if tolerance == 0.0:
                np.testing.assert_array_equal(got, expected, err_msg=f"{name} {mode}")
            else:
                np.testing.assert_allclose(got, expected, atol=tolerance * (1 + np.abs(expected).max()),
                                           err_msg=f"{name} {mode}")


# ----------------------------------------------------------------------------- fuzz

FUZZ_PY = os.path.join(ROOT, "tests", "support", "ops_fuzz.py")


@needs_custom
@pytest.mark.parametrize("seed", range(4))
def test_fuzz_both_backends_eager_and_graph(seed, tmp_path):
    """120 calls per child: no crash, no hang, the same accept/reject on both backends and modes,
    the same values where accepted, every error one line that names something."""
    count = 120
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run([sys.executable, FUZZ_PY, str(seed), str(count)], capture_output=True, text=True,
                              timeout=600, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"fuzz seed {seed} hung: {str(e.stdout)[-500:]}")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = [line for line in lines if "done" in line]
    started = [line for line in lines if "start" in line]
    assert proc.returncode == 0 and len(done) == count, (
        f"fuzz seed {seed}: the child died ({proc.returncode}) in case {started[-1] if started else None}: "
        f"{proc.stderr[-2000:]}")
    disagreements = [d for d in done if not d["agree"] or not d["same"]]
    assert not disagreements, disagreements[:5]
    errors = [d for d in done if d["error"]]
    assert all(len(d["error"]) > 10 for d in errors), errors[:5]
    assert len(errors) > count // 5  # the fuzz does reach the checks
