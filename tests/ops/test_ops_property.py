"""Property-based tests: random shapes and values, valid and invalid, thrown at every op and
both backends. Nothing crashes; invalid input raises InvalidArgumentError on both backends;
valid input gives the same result on both (and NMS also equals the NumPy reference)."""
import math

import numpy as np
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import reference_ops as ref
from lhrcnn import ops

INVALID = tf.errors.InvalidArgumentError
coord = st.one_of(st.floats(-80, 250, width=32), st.integers(-20, 120).map(float),
                  st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def pool_case(draw):
    batch, height, width = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    group, k = draw(st.integers(1, 3)), draw(st.integers(0, 3))
    count = draw(st.integers(0, 6))
    rows = []
    for _ in range(count):
        b = draw(st.one_of(st.integers(0, batch - 1).map(float),
                           st.sampled_from([1.5, -1.0, float(batch), math.nan])))
        x1, y1 = draw(coord), draw(coord)
        x2 = draw(st.one_of(coord, st.floats(0, 90, width=32).map(lambda d, x=x1: x + d)))
        y2 = draw(st.one_of(coord, st.floats(0, 90, width=32).map(lambda d, y=y1: y + d)))
        rows.append([b, x1, y1, x2, y2])
    rois = np.array(rows, np.float32).reshape(count, 5)
    seed = draw(st.integers(0, 2 ** 16))
    features = np.random.default_rng(seed).normal(size=(batch, height, width, k * group * group))
    return dict(features=features.astype(np.float32), rois=rois, group=group,
                scale=draw(st.sampled_from([1 / 16, 0.25, 1.0, 0.07])),
                sampling=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                pooling=draw(st.sampled_from(["max", "avg"])), aligned=draw(st.booleans()))


def _valid_rois(rois, batch):
    b = rois[:, 0]
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.isfinite(rois)) and np.all(np.floor(b) == b) and np.all((b >= 0) & (b < batch)))


def _both_backends(call, valid):
    results = []
    for backend in ("custom", "tf"):
        try:
            results.append(call(backend))
        except INVALID:
            assert not valid, f"backend {backend} rejected valid input"
            results.append(None)
    if valid:
        return results
    assert results == [None, None], "invalid input was accepted"
    return None


def _forward_and_grad(fn, features):
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    weights = tf.reshape(tf.cast(tf.range(tf.size(y)) % 7, tf.float32) - 3.0, tf.shape(y))
    g = tape.gradient(y, x, output_gradients=weights)
    return y.numpy(), tf.convert_to_tensor(g).numpy()


@given(pool_case())
def test_pool_ops_agree_or_reject_together(case):
    f, rois, g = case["features"], case["rois"], case["group"]
    valid = _valid_rois(rois, f.shape[0])
    calls = {
        "ps_roi_align": lambda b: lambda x: ops.ps_roi_align(x, rois, g, case["scale"], case["sampling"],
                                                             case["pooling"], backend=b),
        "ps_roi_pool": lambda b: lambda x: ops.ps_roi_pool(x, rois, g, case["scale"], backend=b),
        "roi_align": lambda b: lambda x: ops.roi_align(x, rois, (g, g + 1), case["scale"], case["sampling"],
                                                       case["pooling"], case["aligned"], backend=b),
    }
    for name, make in calls.items():
        results = _both_backends(lambda b: _forward_and_grad(make(b), f), valid)
        if results is None:
            continue
        (out_c, grad_c), (out_t, grad_t) = results
        assert out_c.shape == out_t.shape
        np.testing.assert_allclose(out_c, out_t, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(grad_c, grad_t, rtol=1e-5, atol=1e-4, err_msg=name)


@st.composite
def nms_case(draw):
    batched = draw(st.booleans())
    batch = draw(st.integers(1, 3)) if batched else 1
    n = draw(st.integers(0, 25))
    grid = st.integers(0, 12).map(float)  # integer corners: exact IoU ties with thresholds happen
    shape = (batch, n) if batched else (n,)
    size = batch * n
    boxes = np.array([[draw(st.one_of(grid, st.floats(0, 12, width=32))) for _ in range(4)]
                      for _ in range(size)], np.float32).reshape(shape + (4,))
    scores = np.array([draw(st.sampled_from([0.1, 0.5, 0.5, 0.9]) | st.floats(0, 1, width=32))
                       for _ in range(size)], np.float32).reshape(shape)
    if size and draw(st.integers(0, 9)) == 0:  # sometimes a non-finite value
        where = draw(st.integers(0, size - 1))
        if draw(st.booleans()):
            boxes.reshape(-1, 4)[where, draw(st.integers(0, 3))] = draw(st.sampled_from([math.nan, math.inf]))
        else:
            scores.reshape(-1)[where] = draw(st.sampled_from([math.nan, -math.inf]))
    classes = None
    if draw(st.booleans()):
        classes = np.array([draw(st.integers(0, 2)) for _ in range(size)], np.int32).reshape(shape)
    return dict(boxes=boxes, scores=scores, classes=classes, k=draw(st.integers(0, 10)),
                iou=draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0])),
                score_threshold=draw(st.sampled_from([-math.inf, 0.2, 0.5])),
                offset=draw(st.sampled_from([0.0, 1.0])))


@given(nms_case())
def test_nms_agrees_with_reference_or_rejects(case):
    boxes, scores, classes = case["boxes"], case["scores"], case["classes"]
    valid = bool(np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores)))
    results = _both_backends(lambda b: tuple(t.numpy() for t in ops.nms(
        boxes, scores, case["k"], case["iou"], case["score_threshold"], classes, case["offset"], backend=b)),
        valid)
    if results is None:
        return
    (idx_c, n_c), (idx_t, n_t) = results
    np.testing.assert_array_equal(idx_c, idx_t)
    np.testing.assert_array_equal(n_c, n_t)
    images = [(boxes, scores, classes)] if boxes.ndim == 2 else [
        (boxes[i], scores[i], None if classes is None else classes[i]) for i in range(len(boxes))]
    idx_c = idx_c.reshape(len(images), -1)
    for i, (b, s, c) in enumerate(images):
        want, want_n = ref.nms_ref(b, s, case["k"], case["iou"], case["score_threshold"], c, case["offset"])
        np.testing.assert_array_equal(idx_c[i], want)
        assert np.reshape(n_c, -1)[i] == want_n
