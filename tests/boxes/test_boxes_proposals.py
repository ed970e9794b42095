"""RPN proposals against a NumPy reference with its own greedy NMS (docs/original.md#proposals)."""
import numpy as np
import pytest
import tensorflow as tf

import reference_boxes as ref
from lhrcnn.boxes import generate_base_anchors, generate_proposals, grid_anchors


def _case(seed, batch=2, height=4, width=5):
    rng = np.random.default_rng(seed)
    base = generate_base_anchors(16, (0.5, 1, 2), (1, 2, 4))
    a = len(base)
    logits = rng.normal(0, 2, (batch, height, width, 2 * a)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (batch, height, width, 4 * a)).astype(np.float32)
    anchors = grid_anchors(base, height, width, 16).numpy()
    info = np.array([[60, 75, 1.0, 60, 75], [48, 80, 1.0, 48, 80], [64, 64, 1.0, 64, 64]][:batch], np.float32)
    return logits, deltas, anchors, info


def _check(got, want, batch, post):
    rois, scores, valid = (t.numpy() for t in got)
    assert rois.shape == (batch * post, 5) and scores.shape == valid.shape == (batch * post,)
    assert rois.dtype == np.float32 and valid.dtype == bool
    for b in range(batch):
        rows = slice(b * post, (b + 1) * post)
        want_boxes, want_scores = want[b]
        n = len(want_scores)
        assert valid[rows].tolist() == [True] * n + [False] * (post - n)
        np.testing.assert_array_equal(rois[rows, 0], b)
        np.testing.assert_allclose(rois[rows][:n, 1:], want_boxes, atol=1e-3, rtol=1e-5)
        np.testing.assert_allclose(scores[rows][:n], want_scores, rtol=1e-5, atol=1e-6)
        assert np.all(rois[rows][n:, 1:] == 0) and np.all(scores[rows][n:] == 0)


@pytest.mark.parametrize("offset", [1.0, 0.0])
@pytest.mark.parametrize("backend", ["custom", "tf"])
def test_matches_reference(backend, offset):
    logits, deltas, anchors, info = _case(1)
    pre, post, thresh = 150, 40, 0.7
    got = generate_proposals(logits, deltas, anchors, info, pre, post, thresh, offset=offset, backend=backend)
    _check(got, ref.proposals_ref(logits, deltas, anchors, info, pre, post, thresh, offset), 2, post)


def test_pre_nms_top_n_larger_than_anchor_count_and_padding():
    # 1 x 2 x 9 = 18 anchors < pre_nms_top_n; strong suppression leaves fewer than post rows
    logits, deltas, anchors, info = _case(2, batch=3, height=1, width=2)
    got = generate_proposals(logits, deltas, anchors, info, 1000, 30, 0.3, backend="tf")
    want = ref.proposals_ref(logits, deltas, anchors, info, 1000, 30, 0.3)
    assert all(len(w[1]) < 30 for w in want)
    _check(got, want, 3, 30)


def test_dynamic_feature_size_and_no_gradient():
    logits, deltas, anchors, info = _case(3)
    base = generate_base_anchors(16, (0.5, 1, 2), (1, 2, 4))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 18]), tf.TensorSpec([None, None, None, 36]),
                                  tf.TensorSpec([None, 5])])
    def propose(lg, dl, im):
        shape = tf.shape(lg)
        return generate_proposals(lg, dl, grid_anchors(base, shape[1], shape[2], 16), im, 100, 20, 0.7,
                                  backend="tf")

    _check(propose(logits, deltas, info), ref.proposals_ref(logits, deltas, anchors, info, 100, 20, 0.7), 2, 20)
    lg = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(lg)
        rois, scores, _ = generate_proposals(lg, deltas, anchors, info, 100, 20, 0.7, backend="tf")
        total = tf.reduce_sum(rois) + tf.reduce_sum(scores)
    assert tape.gradient(total, lg) is None


def test_saturated_probabilities_are_ranked_by_logit_margin():
    # fg - bg margins 17, 30, 20, -1: float32 softmax gives 1.0 for the first three (a tie);
    # the proposals still come in the true order 1, 2, 0, 3.
    anchors = np.array([[0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9], [60, 0, 69, 9]], np.float32)
    logits = np.zeros((1, 1, 4, 2), np.float32)
    logits[0, 0, :, 1] = [17, 30, 20, -1]
    assert len(set(tf.nn.softmax(logits, -1).numpy()[0, 0, :3, 1])) == 1
    rois, scores, valid = generate_proposals(logits, np.zeros((1, 1, 4, 4), np.float32), anchors,
                                             np.array([[100, 100, 1, 100, 100]], np.float32), 10, 4, 0.7)
    np.testing.assert_array_equal(rois.numpy()[:, 1], [20, 40, 0, 60])
    np.testing.assert_allclose(scores.numpy(), [1, 1, 1, 1 / (1 + np.e)], rtol=1e-6)
