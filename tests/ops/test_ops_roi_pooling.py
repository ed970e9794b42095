"""PS-RoI-Align, RoIAlign and PS-RoI pooling: both backends against the NumPy reference,
hand-computed values, forward and backward, and against each other."""
import numpy as np
import pytest
import tensorflow as tf

import reference_ops as ref
from lhrcnn import ops

SCALE = 1.0 / 16.0


def _rois(rng, batch, height, width, count):
    """RoIs in input pixels (stride 16): inside, partly outside, wholly outside, zero-size,
    tiny, and with integer corners."""
    h, w = height * 16, width * 16
    x1 = rng.uniform(-0.3 * w, w, count)
    y1 = rng.uniform(-0.3 * h, h, count)
    x2 = x1 + rng.uniform(0, 0.8 * w, count)
    y2 = y1 + rng.uniform(0, 0.8 * h, count)
    rois = np.stack([rng.integers(0, batch, count), x1, y1, x2, y2], 1).astype(np.float32)
    special = np.array([
        [0, 5.0, 7.0, 5.0, 7.0],             # zero-size
        [batch - 1, 10.0, 10.0, 10.4, 10.3],  # tiny
        [0, w + 40.0, h + 40.0, w + 90.0, h + 99.0],  # wholly outside
        [batch - 1, -60.0, -50.0, -20.0, -30.0],      # wholly outside, negative
        [0, 16.0, 32.0, 80.0, 96.0],          # integer corners
        [batch - 1, -20.0, -20.0, w + 20.0, h + 20.0],  # covers everything
    ], np.float32)
    return np.concatenate([rois, special])


def _grad(fn, features, out_grad):
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tf.convert_to_tensor(tape.gradient(y, x, output_gradients=out_grad)).numpy()


@pytest.mark.parametrize("group,k,sampling,pooling", [
    (7, 3, (2, 2), "max"), (7, 2, (2, 2), "avg"), (3, 4, (1, 3), "max"), (2, 1, (3, 2), "avg"),
    # channel counts that take the CPU kernels' 8 x 8 block transposes (P and K >= 8) and their remainders
    (3, 8, (2, 2), "max"), (4, 17, (2, 1), "avg"), (3, 9, (2, 2), "max"),
    # the CPU kernels' register-resident loops for 12 and 16 lanes (Light-Head's K = 10, and 13)
    (7, 10, (2, 2), "max"), (3, 13, (2, 2), "avg"), (3, 13, (1, 2), "max")])
def test_ps_roi_align_matches_reference(backend, group, k, sampling, pooling):
    rng = np.random.default_rng(group * 10 + k)
    features = rng.normal(size=(2, 9, 11, k * group * group)).astype(np.float32)
    rois = _rois(rng, 2, 9, 11, 12)
    want, argmax = ref.ps_roi_align_ref(features, rois, group, SCALE, sampling, pooling)
    fn = lambda f: ops.ps_roi_align(f, rois, group, SCALE, sampling, pooling, backend=backend)  # noqa: E731
    got = fn(features).numpy()
    assert got.shape == (len(rois), group, group, k)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    out_grad = rng.normal(size=got.shape).astype(np.float32)
    want_grad = ref.ps_roi_align_grad_ref(features.shape, rois, out_grad, group, SCALE, sampling, pooling,
                                          argmax=argmax)
    np.testing.assert_allclose(_grad(fn, features, out_grad), want_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("size,sampling,pooling,aligned,channels", [
    ((7, 7), (2, 2), "avg", False, 5), ((3, 5), (1, 3), "max", False, 5), ((4, 4), (2, 2), "avg", True, 5),
    ((2, 3), (3, 1), "max", True, 5),
    # more than 16 lanes: the CPU kernels' general loops, the gradient in chunks of 32 lanes
    ((3, 3), (2, 2), "max", False, 37), ((2, 2), (2, 1), "avg", True, 37)])
def test_roi_align_matches_reference(backend, size, sampling, pooling, aligned, channels):
    rng = np.random.default_rng(sum(size) + sampling[0])
    features = rng.normal(size=(3, 8, 10, channels)).astype(np.float32)
    rois = _rois(rng, 3, 8, 10, 12)
    want, argmax = ref.roi_align_ref(features, rois, size, SCALE, sampling, pooling, aligned)
    fn = lambda f: ops.roi_align(f, rois, size, SCALE, sampling, pooling, aligned, backend=backend)  # noqa: E731
    got = fn(features).numpy()
    assert got.shape == (len(rois),) + size + (channels,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    out_grad = rng.normal(size=got.shape).astype(np.float32)
    want_grad = ref.roi_align_grad_ref(features.shape, rois, out_grad, size, SCALE, sampling, pooling,
                                       aligned, argmax=argmax)
    np.testing.assert_allclose(_grad(fn, features, out_grad), want_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("group,k", [(7, 2), (3, 3), (1, 4), (3, 9), (4, 16)])
def test_ps_roi_pool_matches_reference(backend, group, k):
    rng = np.random.default_rng(group + 100 * k)
    features = rng.normal(size=(2, 9, 11, k * group * group)).astype(np.float32)
    rois = _rois(rng, 2, 9, 11, 12)
    rois = np.concatenate([rois, [[1, 7.5, 8.5, 30.5, -0.5], [0, -7.5, 2.5, 2.5, 40.5]]]).astype(np.float32)
    want = ref.ps_roi_pool_ref(features, rois, group, SCALE)
    fn = lambda f: ops.ps_roi_pool(f, rois, group, SCALE, backend=backend)  # noqa: E731
    got = fn(features).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    out_grad = rng.normal(size=got.shape).astype(np.float32)
    want_grad = ref.ps_roi_pool_grad_ref(features.shape, rois, out_grad, group, SCALE)
    np.testing.assert_allclose(_grad(fn, features, out_grad), want_grad, rtol=1e-5, atol=1e-5)


def test_backends_agree_forward_and_backward_on_a_detector_sized_case():
    assert ops.custom_ops_available(), ops.custom_ops_load_error()
    rng = np.random.default_rng(7)
    features = rng.normal(size=(2, 20, 30, 490)).astype(np.float32)
    rois = _rois(rng, 2, 20, 30, 200)
    out_grad = rng.normal(size=(len(rois), 7, 7, 10)).astype(np.float32)
    for op in (lambda f, b: ops.ps_roi_align(f, rois, 7, SCALE, backend=b),
               lambda f, b: ops.ps_roi_align(f, rois, 7, SCALE, pooling="avg", backend=b),
               lambda f, b: ops.ps_roi_pool(f, rois, 7, SCALE, backend=b)):
        np.testing.assert_allclose(op(features, "custom").numpy(), op(features, "tf").numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_grad(lambda f: op(f, "custom"), features, out_grad),
                                   _grad(lambda f: op(f, "tf"), features, out_grad), rtol=1e-5, atol=1e-5)


def test_ps_roi_align_channel_mapping_by_hand(backend):
    # Channel c holds the constant c: output (ph, pw, k) must equal (k * G + ph) * G + pw.
    g, k = 3, 2
    features = np.broadcast_to(np.arange(g * g * k, dtype=np.float32), (1, 6, 6, g * g * k)).copy()
    rois = np.array([[0, 16.0, 16.0, 64.0, 64.0]], np.float32)  # well inside: full weights
    got = ops.ps_roi_align(features, rois, g, SCALE, backend=backend).numpy()[0]
    for ph in range(g):
        for pw in range(g):
            for kk in range(k):
                assert got[ph, pw, kk] == (kk * g + ph) * g + pw


def test_integer_sample_points_are_plain_bilinear(backend):
    # The original doubled the pixel at exact integer coordinates; we must return the pixel.
    features = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1) + 1.0
    # scale 1, one bin, one sample at the centre (3, 3): F[3, 3] = 3 * 5 + 3 + 1 = 19.
    rois = np.array([[0, 2.0, 2.0, 4.0, 4.0]], np.float32)
    got = ops.ps_roi_align(features, rois, 1, 1.0, sampling_ratio=1, backend=backend).numpy()
    assert got.reshape(-1)[0] == 19.0
    # Half-way between pixels (x = 2.5, y = 3): (F[3, 2] + F[3, 3]) / 2 = (18 + 19) / 2.
    rois = np.array([[0, 1.5, 2.0, 3.5, 4.0]], np.float32)
    got = ops.roi_align(features, rois, 1, 1.0, sampling_ratio=1, backend=backend).numpy()
    assert got.reshape(-1)[0] == pytest.approx(18.5)
    # Half a pixel outside the map: the padded zero pulls the value to half of F[0, 0] = 1.
    rois = np.array([[0, -1.0, 0.0, 0.0, 0.0]], np.float32)  # centre x = -0.5, y = 0
    got = ops.roi_align(features, rois, 1, 1.0, sampling_ratio=1, backend=backend).numpy()
    assert got.reshape(-1)[0] == pytest.approx(0.5)


def test_aligned_shifts_by_half_a_pixel(backend):
    features = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    rois = np.array([[0, 2.0, 2.0, 4.0, 4.0]], np.float32)
    # aligned: centre (3 - 0.5, 3 - 0.5) = (2.5, 2.5): mean of F[2..3, 2..3] = (12 + 13 + 17 + 18) / 4
    got = ops.roi_align(features, rois, 1, 1.0, sampling_ratio=1, aligned=True, backend=backend).numpy()
    assert got.reshape(-1)[0] == pytest.approx(15.0)


def test_ps_roi_pool_by_hand(backend):
    # G = 2, K = 1, scale 1: RoI (0, 0)-(3, 3) -> x2, y2 + 1 = 4 -> bins [0, 2) and [2, 4).
    g = 2
    plane = np.arange(16, dtype=np.float32).reshape(4, 4)
    features = np.stack([plane + 100 * c for c in range(4)], -1)[None]  # channel c = ph * 2 + pw
    rois = np.array([[0, 0.0, 0.0, 3.0, 3.0]], np.float32)
    got = ops.ps_roi_pool(features, rois, g, 1.0, backend=backend).numpy()[0, :, :, 0]
    want = np.array([[plane[0:2, 0:2].mean(), 100 + plane[0:2, 2:4].mean()],
                     [200 + plane[2:4, 0:2].mean(), 300 + plane[2:4, 2:4].mean()]])
    np.testing.assert_allclose(got, want)
    # Corners are rounded half away from zero: 0.5 -> 1, so the RoI (1, 1)-(3, 3) has 3x3 pixels
    # and bins [1, 2.5) -> [1, 3) and [2.5, 4) -> [2, 4) (floor/ceil).
    rois = np.array([[0, 0.5, 0.5, 2.5, 2.5]], np.float32)
    got = ops.ps_roi_pool(features, rois, g, 1.0, backend=backend).numpy()[0, :, :, 0]
    assert got[0, 0] == pytest.approx(plane[1:3, 1:3].mean())
    assert got[1, 1] == pytest.approx(300 + plane[2:4, 2:4].mean())


def test_rois_outside_the_map_give_zero(backend):
    features = np.random.default_rng(0).normal(size=(1, 4, 4, 2 * 4)).astype(np.float32)
    rois = np.array([[0, 500.0, 500.0, 900.0, 900.0]], np.float32)
    for out in (ops.ps_roi_align(features, rois, 2, SCALE, backend=backend),
                ops.ps_roi_pool(features, rois, 2, SCALE, backend=backend),
                ops.roi_align(features, rois, 2, SCALE, backend=backend)):
        assert not np.any(out.numpy())


def test_empty_rois_give_empty_results(backend):
    features = tf.random.normal([2, 5, 6, 18])
    rois = tf.zeros([0, 5])
    for fn, shape in ((lambda f: ops.ps_roi_align(f, rois, 3, SCALE, backend=backend), (0, 3, 3, 2)),
                      (lambda f: ops.ps_roi_pool(f, rois, 3, SCALE, backend=backend), (0, 3, 3, 2)),
                      (lambda f: ops.roi_align(f, rois, (2, 4), SCALE, backend=backend), (0, 2, 4, 18))):
        assert fn(features).shape == shape
        grad = _grad(fn, features.numpy(), np.zeros(shape, np.float32))
        assert grad.shape == (2, 5, 6, 18) and not grad.any()


def test_max_pooling_gradient_goes_to_the_first_maximal_sample(backend):
    # A constant map: all four samples of a bin tie, so the whole gradient goes to sample 0.
    features = np.ones((1, 8, 8, 1), np.float32)
    rois = np.array([[0, 1.0, 1.0, 5.0, 5.0]], np.float32)  # scale 1: samples at 2, 4 (exact pixels)
    grad = _grad(lambda f: ops.roi_align(f, rois, 1, 1.0, pooling="max", backend=backend), features,
                 np.ones((1, 1, 1, 1), np.float32))
    want = np.zeros_like(features)
    want[0, 2, 2, 0] = 1.0
    np.testing.assert_array_equal(grad, want)


@pytest.mark.parametrize("op", ["ps_roi_align", "roi_align", "ps_roi_pool"])
def test_works_in_tf_function_with_unknown_shapes(backend, op):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(2, 6, 7, 18)).astype(np.float32)
    rois = _rois(rng, 2, 6, 7, 5)
    call = {"ps_roi_align": lambda f, r: ops.ps_roi_align(f, r, 3, SCALE, backend=backend),
            "roi_align": lambda f, r: ops.roi_align(f, r, 3, SCALE, backend=backend),
            "ps_roi_pool": lambda f, r: ops.ps_roi_pool(f, r, 3, SCALE, backend=backend)}[op]
    graph_fn = tf.function(call, input_signature=[tf.TensorSpec([None, None, None, None]),
                                                  tf.TensorSpec([None, 5])])
    np.testing.assert_allclose(graph_fn(features, rois).numpy(), call(features, rois).numpy(), rtol=1e-5, atol=1e-6)


def test_twins_compile_with_xla():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(1, 6, 7, 2 * 49)).astype(np.float32)
    rois = _rois(rng, 1, 6, 7, 5)

    @tf.function(jit_compile=True)
    def run(f, r):
        return (ops.ps_roi_align(f, r, 7, SCALE, backend="tf"), ops.ps_roi_pool(f, r, 7, SCALE, backend="tf"),
                ops.roi_align(f, r, (2, 3), SCALE, aligned=True, backend="tf"))

    for got, want in zip(run(features, rois), (
            ref.ps_roi_align_ref(features, rois, 7, SCALE)[0], ref.ps_roi_pool_ref(features, rois, 7, SCALE),
            ref.roi_align_ref(features, rois, (2, 3), SCALE, aligned=True)[0])):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
