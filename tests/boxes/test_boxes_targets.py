"""Anchor targets (docs/original.md#anchor-targets) and RoI targets (docs/original.md#roi-targets)
against NumPy references, hand cases
and the properties of the in-graph random subsampling."""
import numpy as np
import pytest
import tensorflow as tf

import reference_boxes as ref
from lhrcnn.boxes import anchor_targets, generate_base_anchors, grid_anchors, roi_targets

# ----------------------------------------------------------------------------- anchor targets

HAND_ANCHORS = np.array([[0, 0, 31, 31],     # 0: IoU 0.6 with GT 0, ties with 1 for GT 0's max -> 1
                         [16, 0, 47, 31],    # 1: IoU 0.6 with GT 0 -> 1
                         [60, 60, 91, 91],   # 2: equal to GT 1 -> 1
                         [-5, 0, 20, 20],    # 3: outside (x1 < 0) -> -1
                         [0, 50, 9, 59],     # 4: no overlap -> 0
                         [20, 0, 51, 31],    # 5: IoU 640 / 1408 = 0.45 with GT 0 -> -1 (between)
                         [92, 70, 100, 95]],  # 6: x2 = 100 is not < W = 100 -> outside
                        np.float32)
HAND_GT = np.array([[[8, 0, 39, 31], [0, 0, 0, 0], [60, 60, 91, 91]]], np.float32)
HAND_CLASSES = np.array([[2, 0, 1]], np.int32)
HAND_INFO = np.array([[100, 100, 1, 100, 100]], np.float32)


def test_hand_case_labels_and_targets():
    labels, targets = anchor_targets(HAND_ANCHORS, HAND_GT, HAND_CLASSES, HAND_INFO, subsample=False)
    assert labels.dtype == tf.int32 and labels.shape == (1, 7) and targets.shape == (1, 7, 4)
    assert labels.numpy().tolist() == [[1, 1, 1, -1, 0, -1, -1]]
    t = targets.numpy()[0]
    np.testing.assert_allclose(t[0], [0.25, 0, 0, 0], atol=1e-7)   # centre 16 -> 24, w = 32
    np.testing.assert_allclose(t[1], [-0.25, 0, 0, 0], atol=1e-7)  # centre 32 -> 24
    np.testing.assert_allclose(t[2], [0, 0, 0, 0], atol=1e-7)
    np.testing.assert_array_equal(t[3], 0)  # outside: 0
    np.testing.assert_array_equal(t[6], 0)
    # inside anchors get targets whatever their label (anchor 4's best GT is GT 0, first on ties)
    np.testing.assert_allclose(t[4], ref.encode_ref(HAND_ANCHORS[4:5], HAND_GT[0, :1])[0], rtol=1e-5)
    # subsampling with room for everything changes nothing
    sampled, _ = anchor_targets(HAND_ANCHORS, HAND_GT, HAND_CLASSES, HAND_INFO, seed=1)
    assert sampled.numpy().tolist() == labels.numpy().tolist()
    # allowed_border lets anchor 3 (x1 = -5) and anchor 6 (x2 = 100) in: both negatives
    wide, _ = anchor_targets(HAND_ANCHORS, HAND_GT, HAND_CLASSES, HAND_INFO, allowed_border=8, subsample=False)
    assert wide.numpy().tolist() == [[1, 1, 1, 0, 0, -1, 0]]


def test_image_without_gt_has_all_inside_anchors_negative():
    gt = np.concatenate([HAND_GT, np.zeros_like(HAND_GT)])
    classes = np.concatenate([HAND_CLASSES, np.zeros_like(HAND_CLASSES)])
    info = np.concatenate([HAND_INFO, HAND_INFO])
    labels, targets = anchor_targets(HAND_ANCHORS, gt, classes, info, subsample=False)
    assert labels.numpy()[1].tolist() == [0, 0, 0, -1, 0, 0, -1]
    np.testing.assert_array_equal(targets.numpy()[1], 0)
    assert labels.numpy()[0].tolist() == [1, 1, 1, -1, 0, -1, -1]


def test_gt_without_overlap_quirk():
    # GT [95, 0, 99, 5] overlaps no inside anchor: its max IoU is 0, so the original marks every
    # inside anchor with IoU 0 to it positive.
    gt = np.array([[[8, 0, 39, 31], [95, 0, 99, 5]]], np.float32)
    classes = np.array([[2, 1]], np.int32)
    labels, _ = anchor_targets(HAND_ANCHORS, gt, classes, HAND_INFO, subsample=False)
    assert labels.numpy().tolist() == [[1, 1, 1, -1, 1, 1, -1]]
    want, _ = ref.anchor_labels_ref(HAND_ANCHORS, gt, classes, HAND_INFO)
    np.testing.assert_array_equal(labels.numpy(), want)
    fixed, _ = anchor_targets(HAND_ANCHORS, gt, classes, HAND_INFO, subsample=False,
                              match_gt_without_overlap=False)
    assert fixed.numpy().tolist() == [[1, 1, 0, -1, 0, -1, -1]]


def _random_case(seed, batch=2, num_gt=6, height=96, width=128):
    rng = np.random.default_rng(seed)
    base = generate_base_anchors(16, (0.5, 1, 2), (1, 2, 4))
    anchors = grid_anchors(base, height // 16, width // 16, 16).numpy()
    xy = rng.integers(0, 80, (batch, num_gt, 2))
    wh = rng.integers(8, 60, (batch, num_gt, 2))
    gt = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    classes = rng.integers(1, 5, (batch, num_gt)).astype(np.int32)
    classes[0, -2:] = 0  # padding
    gt[0, -1] = 0
    info = np.array([[height, width, 1, height, width], [height - 20, width - 30, 1, height, width]],
                    np.float32)[:batch]
    return anchors, gt, classes, info


@pytest.mark.parametrize("offset,border", [(1.0, 0), (0.0, 0), (1.0, 16)])
def test_labels_before_subsampling_match_reference(offset, border):
    anchors, gt, classes, info = _random_case(int(offset) + border)
    labels, targets = anchor_targets(anchors, gt, classes, info, allowed_border=border, offset=offset,
                                     subsample=False)
    want_labels, want_targets = ref.anchor_labels_ref(anchors, gt, classes, info, border=border, offset=offset)
    assert (want_labels == 1).sum() > 5 and (want_labels == 0).sum() > 10 and (want_labels == -1).sum() > 10
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    np.testing.assert_allclose(targets.numpy(), want_targets, rtol=1e-4, atol=1e-5)
    # batch_size large enough that nothing is dropped: identical
    sampled, _ = anchor_targets(anchors, gt, classes, info, allowed_border=border, offset=offset,
                                batch_size=100000, seed=5)
    np.testing.assert_array_equal(sampled.numpy(), want_labels)


def test_subsampling_counts_and_candidates():
    anchors, gt, classes, info = _random_case(11, num_gt=12)
    pre, _ = anchor_targets(anchors, gt, classes, info, subsample=False)
    pre = pre.numpy()
    for batch_size, fraction, seed in ((16, 0.5, 1), (40, 0.25, 2), (256, 0.5, 3)):
        fg_cap = int(fraction * batch_size)
        labels, _ = anchor_targets(anchors, gt, classes, info, batch_size=batch_size, fg_fraction=fraction,
                                   seed=seed)
        labels = labels.numpy()
        for b in range(len(gt)):
            fg, bg = (labels[b] == 1), (labels[b] == 0)
            assert np.all(pre[b][fg] == 1) and np.all(pre[b][bg] == 0)   # only from the right candidates
            assert np.all(labels[b][pre[b] == -1] == -1)
            want_fg = min(fg_cap, (pre[b] == 1).sum())
            assert fg.sum() == want_fg <= fg_cap
            assert bg.sum() == min(batch_size - want_fg, (pre[b] == 0).sum())
            assert fg.sum() + bg.sum() <= batch_size
    assert (pre[0] == 1).sum() > 8  # the small batch sizes did subsample positives


def test_subsampling_randomness():
    anchors, gt, classes, info = _random_case(12)
    def draw(seed):
        return anchor_targets(anchors, gt, classes, info, batch_size=32, seed=seed)[0].numpy()

    np.testing.assert_array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))
    assert not np.array_equal(draw(None), draw(None))
    # every negative candidate of image 0 is drawn sometimes: the choice is not a fixed prefix
    pre = anchor_targets(anchors, gt, classes, info, subsample=False)[0].numpy()[0]
    hits = sum((draw(s)[0] == 0).astype(int) for s in range(40))
    assert hits[pre == 0].min() > 0 and hits[pre != 0].max() == 0


# ----------------------------------------------------------------------------- RoI targets


def _roi_case(seed, batch=2, num_rois=40, num_gt=4):
    rng = np.random.default_rng(seed)
    gxy = rng.uniform(0, 100, (batch, num_gt, 2))
    gwh = rng.uniform(20, 60, (batch, num_gt, 2))
    gt = np.concatenate([gxy, gxy + gwh], -1).astype(np.float32)
    classes = rng.integers(1, 6, (batch, num_gt)).astype(np.int32)
    classes[1, -1] = 0
    gt[1, -1] = 0
    rows = []
    for i in range(batch * num_rois):
        b = i % batch
        g = gt[b, rng.integers(0, num_gt - 1)]
        jitter = rng.normal(0, 6, 4) if i % 3 else rng.uniform(-80, 80, 4)  # near a GT, or anywhere
        box = g + jitter
        box = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
        rows.append([b, *box])
    rois = np.array(rows, np.float32)
    valid = rng.uniform(size=len(rois)) > 0.15
    rois[~valid, 1:] = 0
    return rois, valid, gt, classes


@pytest.mark.parametrize("class_specific,append_gt,offset", [(True, True, 1.0), (False, True, 0.0),
                                                             (True, False, 1.0)])
def test_keep_all_mode_matches_reference(class_specific, append_gt, offset):
    rois, valid, gt, classes = _roi_case(3)
    out_rois, labels, targets, sample_valid = roi_targets(
        rois, valid, gt, classes, num_classes=6, batch_size_per_image=-1, append_gt=append_gt,
        class_specific=class_specific, offset=offset)
    want_rois, want_labels, want_targets = ref.roi_targets_keep_all_ref(
        rois, valid, gt, classes, 6, append_gt=append_gt, class_specific=class_specific, offset=offset)
    n = len(rois) + (gt.shape[0] * gt.shape[1] if append_gt else 0)
    assert out_rois.shape == (n, 5) and labels.shape == (n,) and sample_valid.shape == (n,)
    assert targets.shape == (n, 24 if class_specific else 4)
    np.testing.assert_array_equal(out_rois.numpy(), want_rois.astype(np.float32))
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    np.testing.assert_allclose(targets.numpy(), want_targets, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(sample_valid.numpy(), want_labels >= 0)
    assert (want_labels > 0).sum() > 5 and (want_labels == 0).sum() > 5


def test_keep_all_hand_case():
    gt = np.array([[[0, 0, 9, 9], [20, 20, 39, 39]]], np.float32)
    classes = np.array([[3, 7]], np.int32)
    rois = np.array([[0, 0, 0, 9, 9],      # = GT 0 -> class 3, zero targets
                     [0, 20, 20, 39, 43],  # IoU 400 / 480 with GT 1 -> class 7
                     [0, 50, 50, 60, 60],  # IoU 0 -> background
                     [0, 0, 0, 0, 0]], np.float32)  # padding
    out_rois, labels, targets, ok = roi_targets(rois, [True, True, True, False], gt, classes, 8, -1,
                                                stds=(0.1, 0.1, 0.2, 0.2))
    assert labels.numpy().tolist() == [3, 7, 0, -1, 3, 7]
    assert ok.numpy().tolist() == [True, True, True, False, True, True]
    t = targets.numpy()
    assert t.shape == (6, 32)
    np.testing.assert_array_equal(t[[0, 2, 3, 4, 5]], 0)
    # RoI 1: h = 24 -> 20, centre y 32 -> 30: dy = -2 / 24, dh = log(20 / 24), normalised by 0.1 / 0.2
    want = np.zeros(32)
    want[28:32] = [0, (-2 / 24) / 0.1, 0, np.log(20 / 24) / 0.2]
    np.testing.assert_allclose(t[1], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_image,bg_low", [(16, 0.0), (80, 0.0), (24, 0.1)])
def test_sampled_mode_counts_and_rows(per_image, bg_low):
    rois, valid, gt, classes = _roi_case(4, num_rois=60)
    all_rois, all_labels, all_targets, _ = (
        t.numpy() for t in roi_targets(rois, valid, gt, classes, 6, -1, bg_threshold_low=bg_low))
    out = roi_targets(rois, valid, gt, classes, 6, per_image, fg_fraction=0.25, bg_threshold_low=bg_low, seed=9)
    out_rois, labels, targets, ok = (t.numpy() for t in out)
    assert out_rois.shape == (2 * per_image, 5) and targets.shape == (2 * per_image, 24)
    for b in range(2):
        rows = slice(b * per_image, (b + 1) * per_image)
        mine = all_rois[:, 0] == b
        num_fg = min(round(0.25 * per_image), (all_labels[mine] > 0).sum())
        num_bg = min(per_image - num_fg, (all_labels[mine] == 0).sum())
        lab = labels[rows]
        assert lab.tolist() == list(lab[:num_fg]) + [0] * num_bg + [-1] * (per_image - num_fg - num_bg)
        assert np.all(lab[:num_fg] > 0)
        np.testing.assert_array_equal(ok[rows], lab >= 0)
        np.testing.assert_array_equal(out_rois[rows, 0], b)
        np.testing.assert_array_equal(out_rois[rows][num_fg + num_bg:, 1:], 0)
        picked = out_rois[rows][:num_fg + num_bg]
        assert len({tuple(r) for r in picked}) == len(picked)  # no row drawn twice (all rows differ here)
        for r in range(num_fg + num_bg):  # each row is a row of the keep-all output, with its targets
            match = np.where(np.all(all_rois == out_rois[rows][r], axis=1))[0]
            assert len(match) >= 1
            j = match[0]
            assert all_labels[j] == lab[r]
            np.testing.assert_array_equal(all_targets[j], targets[rows][r])
    if per_image == 80:
        assert np.any(labels == -1)  # fewer candidates than slots: padding rows
    if bg_low > 0:
        row_valid = np.concatenate([valid, classes.reshape(-1) > 0])
        assert np.any(all_labels[row_valid] == -1)  # IoU in (0, 0.1): ignored, never sampled (checked above)
    # small per-image size: only 1 fg slot (round(0.25 * 4) = 1), bg fill the rest
    _, labels4, _, _ = roi_targets(rois, valid, gt, classes, 6, 4, seed=1)
    lab = labels4.numpy().reshape(2, 4)
    assert np.all(lab[:, 0] > 0) and np.all(lab[:, 1:] == 0)


def test_sampled_mode_randomness_and_fg_fraction():
    rois, valid, gt, classes = _roi_case(5, num_rois=80)
    def draw(seed):
        return roi_targets(rois, valid, gt, classes, 6, 8, fg_fraction=0.5, seed=seed)[0].numpy()

    np.testing.assert_array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))


def _pad_slots(gt, classes, slots, seed):
    """gt, classes spread over `slots` slots (columns in random order), the extra slots padding
    (class 0) holding garbage boxes that overlap everything."""
    rng = np.random.default_rng(seed)
    batch, m = classes.shape
    big_gt = np.tile(np.array([0, 0, 200, 200], np.float32), (batch, slots, 1))
    big_classes = np.zeros((batch, slots), np.int32)
    for b in range(batch):
        where = np.sort(rng.choice(slots - 1, m, replace=False))  # the last slot always padding
        big_gt[b, where], big_classes[b, where] = gt[b], classes[b]
    return big_gt, big_classes


@pytest.mark.parametrize("graph", [False, True])
def test_padding_slots_do_not_change_targets(graph):
    """The targets cut the GT padding (up to the batch's last real GT) before the IoU matrices;
    wherever the padding sits and however many slots there are, the targets are the same."""
    run = tf.function if graph else (lambda f: f)
    anchors, gt, classes, info = _random_case(7)
    big_gt, big_classes = _pad_slots(gt, classes, 100, seed=1)
    rpn = run(lambda g, c: anchor_targets(anchors, g, c, info, batch_size=32, seed=9))
    for got, want in zip(rpn(big_gt, big_classes), rpn(gt, classes)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    want_labels, _ = ref.anchor_labels_ref(anchors, gt, classes, info, border=0, offset=1.0)
    pre, _ = anchor_targets(anchors, big_gt, big_classes, info, subsample=False)
    np.testing.assert_array_equal(pre.numpy(), want_labels)

    rois, valid, gt, classes = _roi_case(5)
    big_gt, big_classes = _pad_slots(gt, classes, 100, seed=2)
    for per_image in (-1, 8):
        rcnn = run(lambda g, c: roi_targets(rois, valid, g, c, 6, per_image, append_gt=False, seed=4))
        for got, want in zip(rcnn(big_gt, big_classes), rcnn(gt, classes)):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    # no GT anywhere in the batch: one padding slot is kept, every RoI is background
    empty = np.zeros_like(big_classes)
    _, labels, _, _ = roi_targets(rois, valid, big_gt, empty, 6, -1, append_gt=False)
    np.testing.assert_array_equal(labels.numpy(), np.where(valid, 0, -1))
    labels, _ = anchor_targets(anchors, big_gt, empty[:, :], info, subsample=False)
    assert set(np.unique(labels.numpy())) <= {0, -1} and (labels.numpy() == 0).sum() > 0
