"""Bad input: every op, both backends, gives InvalidArgumentError (values, dynamic shapes) or
ValueError (Python-side arguments, static shapes) whose message names the input; never a crash."""
import math

import numpy as np
import pytest
import tensorflow as tf

from lhrcnn import ops

INVALID = tf.errors.InvalidArgumentError
F = np.random.default_rng(0).normal(size=(2, 4, 5, 18)).astype(np.float32)
GOOD_ROI = [0, 1.0, 2.0, 30.0, 40.0]


def _pool_ops(backend):
    return {
        "ps_roi_align": lambda f, r: ops.ps_roi_align(f, r, 3, 1 / 16, backend=backend),
        "ps_roi_pool": lambda f, r: ops.ps_roi_pool(f, r, 3, 1 / 16, backend=backend),
        "roi_align": lambda f, r: ops.roi_align(f, r, 2, 1 / 16, backend=backend),
    }


@pytest.mark.parametrize("bad_row,words", [
    ([1.5, 1, 2, 3, 4], ["1.5"]), ([2, 1, 2, 3, 4], ["2"]), ([-1, 1, 2, 3, 4], ["-1"]),
    ([math.nan, 1, 2, 3, 4], ["nan"]), ([0, math.nan, 2, 3, 4], ["nan"]), ([0, 1, math.inf, 3, 4], ["inf"])])
@pytest.mark.parametrize("op", ["ps_roi_align", "ps_roi_pool", "roi_align"])
def test_invalid_rois_name_the_row(backend, op, bad_row, words):
    rois = np.array([GOOD_ROI, GOOD_ROI, bad_row], np.float32)
    with pytest.raises(INVALID) as e:
        _pool_ops(backend)[op](F, rois)
    msg = str(e.value).lower()
    assert "roi" in msg and "2" in msg  # the bad row is index 2
    assert all(w in msg for w in words), msg


@pytest.mark.parametrize("op", ["ps_roi_align", "ps_roi_pool", "roi_align"])
def test_invalid_rois_in_graph_mode(backend, op):
    fn = tf.function(_pool_ops(backend)[op])
    with pytest.raises(INVALID):
        fn(F, np.array([GOOD_ROI, [5, 1, 2, 3, 4]], np.float32))


@pytest.mark.parametrize("op", ["ps_roi_align", "ps_roi_pool"])
def test_channels_not_divisible(backend, op):
    f = np.zeros((1, 4, 4, 10), np.float32)
    with pytest.raises(ValueError, match="divisible"):
        _pool_ops(backend)[op](f, np.array([GOOD_ROI], np.float32))
    fn = tf.function(_pool_ops(backend)[op], input_signature=[tf.TensorSpec([None, None, None, None]),
                                                              tf.TensorSpec([None, 5])])
    with pytest.raises(INVALID, match="divisible"):
        fn(f, np.array([GOOD_ROI], np.float32))


@pytest.mark.parametrize("op", ["ps_roi_align", "ps_roi_pool", "roi_align"])
def test_bad_shapes(backend, op):
    call = _pool_ops(backend)[op]
    with pytest.raises(ValueError, match="rank 4"):
        call(F[0], np.array([GOOD_ROI], np.float32))
    with pytest.raises(ValueError, match=r"\[R, 5\]"):
        call(F, np.array([GOOD_ROI[:4]], np.float32))
    with pytest.raises(ValueError, match="height"):
        call(np.zeros((1, 0, 4, 18), np.float32), np.array([GOOD_ROI], np.float32))
    with pytest.raises(ValueError, match="float32"):
        call(F.astype(np.float64), np.array([GOOD_ROI], np.float32))
    fn = tf.function(call, input_signature=[tf.TensorSpec(None), tf.TensorSpec(None)])
    with pytest.raises(INVALID):
        fn(F[0], np.array([GOOD_ROI], np.float32))
    with pytest.raises(INVALID):
        fn(F, np.array([GOOD_ROI[:4]], np.float32))


@pytest.mark.parametrize("kwargs,words", [
    (dict(group_size=0), "group_size"), (dict(group_size=2.5), "group_size"),
    (dict(sampling_ratio=(0, 2)), "sampling_ratio"), (dict(sampling_ratio=(2, 2, 2)), "sampling_ratio"),
    (dict(spatial_scale=0.0), "spatial_scale"), (dict(spatial_scale=-1.0), "spatial_scale"),
    (dict(spatial_scale=math.nan), "spatial_scale"), (dict(pooling="sum"), "pooling")])
def test_bad_arguments_are_value_errors(backend, kwargs, words):
    args = dict(group_size=3, spatial_scale=1 / 16, sampling_ratio=(2, 2), pooling="max")
    args.update(kwargs)
    with pytest.raises(ValueError, match=words):
        ops.ps_roi_align(F, np.array([GOOD_ROI], np.float32), backend=backend, **args)


def test_bad_backend_and_roi_align_arguments(backend):
    with pytest.raises(ValueError, match="backend"):
        ops.ps_roi_align(F, np.array([GOOD_ROI], np.float32), 3, 1 / 16, backend="gpu")
    with pytest.raises(ValueError, match="output_size"):
        ops.roi_align(F, np.array([GOOD_ROI], np.float32), (0, 3), 1 / 16, backend=backend)
    with pytest.raises(ValueError, match="group_size"):
        ops.ps_roi_pool(F, np.array([GOOD_ROI], np.float32), -2, 1 / 16, backend=backend)


BOXES = np.array([[0, 0, 10, 10], [1, 1, 12, 12], [20, 20, 30, 30]], np.float32)
SCORES = np.array([0.9, 0.8, 0.7], np.float32)


@pytest.mark.parametrize("where,value,words", [
    ("box", math.nan, ["boxes", "1"]), ("box", math.inf, ["boxes", "1"]), ("score", math.nan, ["scores", "1"]),
    ("score", -math.inf, ["scores", "1"])])
def test_nms_non_finite_inputs(backend, where, value, words):
    boxes, scores = BOXES.copy(), SCORES.copy()
    if where == "box":
        boxes[1, 2] = value
    else:
        scores[1] = value
    with pytest.raises(INVALID) as e:
        ops.nms(boxes, scores, 3, 0.5, backend=backend)
    msg = str(e.value).lower()
    assert all(w in msg for w in words), msg


def test_nms_bad_arguments(backend):
    with pytest.raises(ValueError, match="iou_threshold"):
        ops.nms(BOXES, SCORES, 3, 1.5, backend=backend)
    with pytest.raises(ValueError, match="max_output_size"):
        ops.nms(BOXES, SCORES, -1, 0.5, backend=backend)
    with pytest.raises(ValueError, match="score_threshold"):
        ops.nms(BOXES, SCORES, 3, 0.5, score_threshold=math.nan, backend=backend)
    with pytest.raises(ValueError, match="scores"):
        ops.nms(BOXES, SCORES[:2], 3, 0.5, backend=backend)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        ops.nms(BOXES[:, :3], SCORES, 3, 0.5, backend=backend)
    with pytest.raises(ValueError, match="class_ids"):
        ops.nms(BOXES, SCORES, 3, 0.5, class_ids=np.array([1, 2], np.int32), backend=backend)
    with pytest.raises(ValueError, match="int32"):
        ops.nms(BOXES, SCORES, 3, 0.5, class_ids=np.array([1, 2, 3], np.int64), backend=backend)
    fn = tf.function(lambda b, s: ops.nms(b, s, 3, 0.5, backend=backend),
                     input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None])])
    with pytest.raises(INVALID):
        fn(BOXES, SCORES[:2])


def test_kernel_level_checks_of_the_raw_ops():
    # The compiled ops check what only their direct callers could get wrong.
    assert ops.custom_ops_available(), ops.custom_ops_load_error()
    lib = ops._library
    rois = np.array([GOOD_ROI], np.float32)
    out, argmax = lib.lhrcnn_ps_roi_align(F, rois, group_size=3, spatial_scale=1 / 16)
    with pytest.raises(INVALID, match="argmax"):
        lib.lhrcnn_ps_roi_align_grad(F, rois, argmax + 7, tf.ones_like(out), group_size=3, spatial_scale=1 / 16)
    for value in (-1, 4):  # one bad entry among good ones is named, by its flat index
        bad = argmax.numpy().copy()
        bad.flat[5] = value
        with pytest.raises(INVALID, match=rf"argmax\[5\] = {value} is not a sample index in \[0, 4\)"):
            lib.lhrcnn_ps_roi_align_grad(F, rois, bad, tf.ones_like(out), group_size=3, spatial_scale=1 / 16)
    with pytest.raises(INVALID, match="grad"):
        lib.lhrcnn_ps_roi_align_grad(F, rois, argmax, tf.ones([2, 3, 3, 2]), group_size=3, spatial_scale=1 / 16)
    with pytest.raises(INVALID, match="spatial_scale"):
        lib.lhrcnn_ps_roi_pool(F, rois, group_size=3, spatial_scale=-1.0)
    with pytest.raises(INVALID, match="group_size"):
        lib.lhrcnn_ps_roi_pool(F, rois, group_size=0, spatial_scale=1.0)
    with pytest.raises(INVALID, match="iou_threshold"):
        lib.lhrcnn_nms(BOXES, SCORES, tf.zeros([0], tf.int32), max_output_size=2, iou_threshold=2.0,
                       score_threshold=0.0)
    with pytest.raises(INVALID, match="class_ids"):
        lib.lhrcnn_nms(BOXES, SCORES, tf.zeros([2], tf.int32), max_output_size=2, iou_threshold=0.5,
                       score_threshold=0.0, class_aware=True)
