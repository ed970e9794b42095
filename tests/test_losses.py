"""Losses against NumPy references (docs/original.md#losses, #ohem) and hand values; OHEM
selection and its gradient."""
import numpy as np
import pytest
import tensorflow as tf

import reference_boxes as ref
from lhrcnn.losses import ohem_rcnn_losses, rcnn_losses, rpn_losses, smooth_l1


def test_smooth_l1_hand_values():
    x = np.array([0.0, 0.05, -0.1, 1 / 9, 0.5, -2.0], np.float32)
    # sigma 3: 4.5 x² below 1/9, else |x| - 1/18
    want = [0.0, 4.5 * 0.0025, 4.5 * 0.01, 1 / 9 - 1 / 18, 0.5 - 1 / 18, 2 - 1 / 18]
    np.testing.assert_allclose(smooth_l1(x, 3.0).numpy(), want, rtol=1e-6)
    # sigma 1: the usual Huber-like loss
    huber = smooth_l1(np.array([0.5, -1.0, 3.0], np.float32), 1.0).numpy()
    np.testing.assert_allclose(huber, [0.125, 0.5, 2.5])
    want1 = [ref.smooth_l1_ref(float(v), 1.0) for v in x]
    np.testing.assert_allclose(smooth_l1(x, 1.0).numpy(), want1, rtol=1e-6)


def _rpn_case(seed):
    rng = np.random.default_rng(seed)
    b, h, w, a = 2, 3, 4, 3
    logits = rng.normal(size=(b, h, w, 2 * a)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (b, h, w, 4 * a)).astype(np.float32)
    labels = rng.choice([-1, 0, 1], (b, h * w * a), p=[0.5, 0.3, 0.2]).astype(np.int32)
    targets = rng.normal(0, 0.3, (b, h * w * a, 4)).astype(np.float32)
    return logits, deltas, labels, targets


def test_rpn_losses_match_reference():
    logits, deltas, labels, targets = _rpn_case(0)
    cls, box = rpn_losses(logits, deltas, labels, targets, sigma=3.0)
    want_cls, want_box = ref.rpn_losses_ref(logits.reshape(-1, 2), deltas.reshape(-1, 4), labels.reshape(-1),
                                            targets.reshape(-1, 4), 3.0)
    assert cls.numpy() == pytest.approx(want_cls, rel=1e-5) and box.numpy() == pytest.approx(want_box, rel=1e-5)
    # no labelled anchor: 0 instead of the original's NaN
    cls, box = rpn_losses(logits, deltas, -np.ones_like(labels), targets)
    assert float(cls) == 0.0 and float(box) == 0.0


def test_rpn_gradient_only_from_labelled_anchors():
    logits, deltas, labels, targets = _rpn_case(1)
    lg, dl = tf.constant(logits), tf.constant(deltas)
    with tf.GradientTape() as tape:
        tape.watch([lg, dl])
        total = tf.add_n(rpn_losses(lg, dl, labels, targets))
    g_logits, g_deltas = (g.numpy().reshape(-1, k) for g, k in zip(tape.gradient(total, [lg, dl]), (2, 4)))
    flat = labels.reshape(-1)
    assert np.all(g_logits[flat == -1] == 0) and np.all(np.abs(g_logits[flat >= 0]).sum(1) > 0)
    assert np.all(g_deltas[flat != 1] == 0) and np.all(np.abs(g_deltas[flat == 1]).sum(1) > 0)


def _rcnn_case(seed, rows=40, classes=5, class_specific=True):
    rng = np.random.default_rng(seed)
    width = 4 * classes if class_specific else 4
    logits = rng.normal(0, 2, (rows, classes)).astype(np.float32)
    deltas = rng.normal(0, 1, (rows, width)).astype(np.float32)
    labels = rng.integers(0, classes, rows).astype(np.int32)
    labels[rng.uniform(size=rows) < 0.1] = -1
    targets = rng.normal(0, 1, (rows, width)).astype(np.float32)
    valid = (rng.uniform(size=rows) > 0.2) & (labels >= 0)
    return logits, deltas, labels, targets, valid


@pytest.mark.parametrize("top_k,class_specific", [(8, True), (512, True), (8, False)])
def test_ohem_matches_reference(top_k, class_specific):
    case = _rcnn_case(2, class_specific=class_specific)
    cls, box = ohem_rcnn_losses(*case, top_k=top_k, class_specific=class_specific)
    want_cls, want_box, chosen = ref.ohem_ref(*case, top_k=top_k, class_specific=class_specific)
    assert len(chosen) == min(top_k, case[4].sum())
    assert cls.numpy() == pytest.approx(want_cls, rel=1e-5) and box.numpy() == pytest.approx(want_box, rel=1e-5)


def test_ohem_hand_case_selects_by_combined_loss():
    # 3 classes; equal logits -> CE = log 3 each. Box loss only for fg RoIs (label's columns).
    logits = np.zeros((4, 3), np.float32)
    deltas = np.zeros((4, 12), np.float32)
    targets = np.zeros((4, 12), np.float32)
    labels = np.array([0, 1, 2, 1], np.int32)
    deltas[1, 4] = 3.0      # RoI 1, class 1 column dx: smooth_l1 = 2.5
    deltas[2, 0] = 5.0      # RoI 2, class 0 column: not its label's, ignored
    deltas[3, 4:8] = 0.5    # RoI 3: 4 x 0.125 = 0.5
    deltas[0, 0:4] = 9.0    # RoI 0 is background: no box loss
    valid = np.array([True, True, True, False])
    cls, box = ohem_rcnn_losses(logits, deltas, labels, targets, valid, top_k=1)
    assert float(cls) == pytest.approx(np.log(3)) and float(box) == pytest.approx(2 * 2.5)  # RoI 1 only
    cls, box = ohem_rcnn_losses(logits, deltas, labels, targets, valid, top_k=512)
    # k = min(512, #valid = 3)
    assert float(cls) == pytest.approx(np.log(3)) and float(box) == pytest.approx(2 * 2.5 / 3)
    cls, box = ohem_rcnn_losses(logits, deltas, labels, targets, np.zeros(4, bool))
    assert float(cls) == 0.0 and float(box) == 0.0


def test_ohem_gradient_only_through_selected_rois():
    logits, deltas, labels, targets, valid = _rcnn_case(3)
    _, _, chosen = ref.ohem_ref(logits, deltas, labels, targets, valid, top_k=6)
    lg, dl = tf.constant(logits), tf.constant(deltas)
    with tf.GradientTape() as tape:
        tape.watch([lg, dl])
        total = tf.add_n(ohem_rcnn_losses(lg, dl, labels, targets, valid, top_k=6))
    g_logits, g_deltas = (g.numpy() for g in tape.gradient(total, [lg, dl]))
    selected = np.zeros(len(labels), bool)
    selected[chosen] = True
    assert np.all(g_logits[~selected] == 0) and np.all(g_deltas[~selected] == 0)
    assert np.all(np.abs(g_logits[selected]).sum(1) > 0)
    fg = selected & (labels > 0)
    for i in np.where(fg)[0]:  # only the label's 4 columns
        cols = np.zeros(g_deltas.shape[1], bool)
        cols[4 * labels[i]:4 * labels[i] + 4] = True
        assert np.all(g_deltas[i, ~cols] == 0) and np.abs(g_deltas[i, cols]).sum() > 0


def test_rcnn_losses_match_reference():
    logits, deltas, labels, targets, valid = _rcnn_case(4)
    cls, box = rcnn_losses(logits, deltas, labels, targets, valid, box_loss_weight=1.0)
    ce, bl = ref.rcnn_per_roi_ref(logits, deltas, labels, targets)
    rows = valid & (labels >= 0)
    assert float(cls) == pytest.approx(ce[rows].mean(), rel=1e-5)
    assert float(box) == pytest.approx(bl[rows].sum() / rows.sum(), rel=1e-5)
