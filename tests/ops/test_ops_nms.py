"""Greedy NMS: both backends against tf.image.non_max_suppression (where the semantics agree),
against the NumPy reference (offsets, classes, batching) and against hand-made cases."""
import numpy as np
import pytest
import tensorflow as tf

import reference_ops as ref
from lhrcnn import ops


def _boxes(rng, n, clustered=False, extent=800.0):
    if clustered:
        centres = rng.uniform(0, extent, (max(1, n // 50), 2))
        c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 8, (n, 2))
    else:
        c = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(8, 200, (n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)


@pytest.mark.parametrize("n,k,iou,clustered,score_threshold", [
    (500, 100, 0.7, False, float("-inf")), (500, 500, 0.5, True, float("-inf")),
    (800, 50, 0.3, False, 0.4), (300, 300, 0.0, True, 0.1), (300, 300, 1.0, False, float("-inf"))])
def test_matches_tf_image_nms(backend, n, k, iou, clustered, score_threshold):
    rng = np.random.default_rng(n + k)
    boxes = _boxes(rng, n, clustered)
    scores = rng.uniform(size=n).astype(np.float32)
    want = tf.image.non_max_suppression(boxes, scores, k, iou, score_threshold).numpy()
    idx, num = ops.nms(boxes, scores, k, iou, score_threshold, backend=backend)
    assert int(num) == len(want)
    np.testing.assert_array_equal(idx.numpy()[:len(want)], want)
    assert np.all(idx.numpy()[len(want):] == -1) and idx.shape == (k,)


@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("classes", [None, 3, 40])
def test_matches_reference_with_offsets_and_classes(backend, offset, classes):
    rng = np.random.default_rng(int(offset) * 100 + (classes or 0))
    boxes = _boxes(rng, 400, clustered=True, extent=300)
    scores = rng.uniform(size=400).astype(np.float32)
    class_ids = None if classes is None else rng.integers(0, classes, 400).astype(np.int32)
    want, want_n = ref.nms_ref(boxes, scores, 150, 0.5, 0.05, class_ids, offset)
    idx, num = ops.nms(boxes, scores, 150, 0.5, 0.05, class_ids, offset, backend=backend)
    np.testing.assert_array_equal(idx.numpy(), want)
    assert int(num) == want_n


def test_batched_is_one_op_and_matches_per_image_reference(backend):
    rng = np.random.default_rng(5)
    b, n, k = 3, 250, 60
    boxes = np.stack([_boxes(rng, n, clustered=i == 1, extent=300) for i in range(b)])
    scores = rng.uniform(size=(b, n)).astype(np.float32)
    class_ids = rng.integers(0, 5, (b, n)).astype(np.int32)
    for cls in (None, class_ids):
        idx, num = ops.nms(boxes, scores, k, 0.6, class_ids=cls, box_offset=1.0, backend=backend)
        assert idx.shape == (b, k) and num.shape == (b,)
        for i in range(b):
            want, want_n = ref.nms_ref(boxes[i], scores[i], k, 0.6, class_ids=None if cls is None else cls[i],
                                       box_offset=1.0)
            np.testing.assert_array_equal(idx.numpy()[i], want)
            assert int(num[i]) == want_n
    if backend == "custom":
        graph = tf.function(lambda x, s: ops.nms(x, s, k, 0.6, backend="custom")).get_concrete_function(
            tf.TensorSpec([b, n, 4]), tf.TensorSpec([b, n])).graph
        types = [o.type for o in graph.get_operations()]
        assert types.count("LhrcnnNms") == 1 and not any("While" in t for t in types)


def test_ties_visit_lower_index_first(backend):
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.5, 0.9, 0.9], np.float32)
    idx, num = ops.nms(boxes, scores, 3, 0.5, backend=backend)
    assert idx.numpy().tolist() == [1, -1, -1] and int(num) == 1


def test_iou_equal_to_threshold_is_kept_and_offset_changes_it(backend):
    # IoU([0,0,4,1], [0,0,2,1]) = 2 / 4 = 0.5 exactly: not > 0.5, so both are kept.
    boxes = np.array([[0, 0, 4, 1], [0, 0, 2, 1]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    idx, num = ops.nms(boxes, scores, 2, 0.5, backend=backend)
    assert idx.numpy().tolist() == [0, 1]
    # +1 widths: areas 5 * 2 = 10 and 3 * 2 = 6, IoU = 6 / 10 = 0.6 > 0.5: suppressed.
    idx, num = ops.nms(boxes, scores, 2, 0.5, box_offset=1.0, backend=backend)
    assert idx.numpy().tolist() == [0, -1] and int(num) == 1


def test_score_threshold_is_strict_and_degenerate_boxes_never_suppress(backend):
    boxes = np.array([[0, 0, 10, 10], [5, 5, 5, 5], [0, 0, 10, 10], [1, 1, 9, 9]], np.float32)
    scores = np.array([0.9, 0.95, 0.3, 0.5], np.float32)
    idx, num = ops.nms(boxes, scores, 4, 0.5, score_threshold=0.3, backend=backend)
    # order: 1 (zero area, kept, suppresses nothing), 0, 3 (IoU 0.64 with 0: suppressed); 2 not > 0.3
    assert idx.numpy().tolist() == [1, 0, -1, -1] and int(num) == 2


def test_class_aware_boxes_of_other_classes_do_not_suppress(backend):
    boxes = np.array([[0, 0, 10, 10]] * 3, np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    idx, num = ops.nms(boxes, scores, 3, 0.5, class_ids=np.array([1, 2, 1], np.int32), backend=backend)
    assert idx.numpy().tolist() == [0, 1, -1] and int(num) == 2


def test_empty_inputs(backend):
    idx, num = ops.nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 5, 0.5, backend=backend)
    assert idx.numpy().tolist() == [-1] * 5 and int(num) == 0
    idx, num = ops.nms(np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.float32), 3, 0.5, backend=backend)
    assert idx.shape == (2, 3) and np.all(idx.numpy() == -1) and num.numpy().tolist() == [0, 0]
    idx, num = ops.nms(np.ones((3, 4), np.float32), np.ones((3,), np.float32), 0, 0.5, backend=backend)
    assert idx.shape == (0,) and int(num) == 0


def test_nms_has_no_gradient():
    boxes = tf.constant(_boxes(np.random.default_rng(0), 10))
    with tf.GradientTape() as tape:
        tape.watch(boxes)
        idx, _ = ops.nms(boxes, tf.ones([10]), 5, 0.5, backend="custom")
        y = tf.reduce_sum(tf.gather(boxes, tf.maximum(idx, 0)))
    grad = tape.gradient(y, boxes)  # flows through gather only, not through the op
    assert grad is not None


def test_first_use_inside_tf_function_in_a_fresh_process():
    # Regression: the library must load when the first call of an op is traced by tf.function.
    import subprocess
    import sys
    code = ("import tensorflow as tf\n"
            "from lhrcnn import ops\n"
            "f = tf.function(lambda b, s: ops.nms(b, s, 2, 0.5, backend='custom'))\n"
            "g = tf.function(lambda x, r: ops.ps_roi_align(x, r, 1, 1.0, backend='custom'))\n"
            "idx, n = f(tf.constant([[0., 0, 4, 4], [0, 0, 4, 4]]), tf.constant([0.5, 0.9]))\n"
            "out = g(tf.ones([1, 3, 3, 1]), tf.constant([[0., 0, 0, 2, 2]]))\n"
            "print(idx.numpy().tolist(), int(n), float(out[0, 0, 0, 0]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[1, -1] 1 1.0"
