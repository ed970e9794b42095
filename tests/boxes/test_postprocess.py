"""Test-time post-processing against a NumPy implementation of docs/original.md#post-processing
(per-class loop, decode in original pixels with +1, clip, NMS per class, merge, best K)."""
import math

import numpy as np
import pytest

import reference_ops as ref
from lhrcnn.boxes.postprocess import detect


def _decode_np(boxes, deltas, offset):
    w = boxes[:, 2] - boxes[:, 0] + offset
    h = boxes[:, 3] - boxes[:, 1] + offset
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    pcx, pcy = deltas[:, 0] * w + cx, deltas[:, 1] * h + cy
    pw, ph = np.exp(deltas[:, 2]) * w, np.exp(deltas[:, 3]) * h
    return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 1)


def _detect_np(logits, deltas, rois, valid, info, classes, nms, thr, k, stds, offset):
    out = []
    per_image = len(rois) // len(info)
    for b in range(len(info)):
        sl = slice(b * per_image, (b + 1) * per_image)
        z = logits[sl] - logits[sl].max(1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        boxes = rois[sl, 1:] / info[b, 2]
        dets = []
        for j in range(1, classes):
            d = deltas[sl, 4 * j:4 * j + 4] * np.array(stds)
            pred = _decode_np(boxes, d, offset)
            pred[:, 0::2] = np.clip(pred[:, 0::2], 0, info[b, 4] - 1)
            pred[:, 1::2] = np.clip(pred[:, 1::2], 0, info[b, 3] - 1)
            scores = np.where(valid[sl], probs[:, j], -1.0)
            keep, n = ref.nms_ref(pred, scores, per_image, nms, thr, box_offset=offset)
            dets += [(scores[i], j, pred[i]) for i in keep[:n]]
        dets.sort(key=lambda d: -d[0])
        out.append(dets[:k])
    return out


@pytest.mark.parametrize("backend", ["custom", "tf"])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_detect_matches_numpy(backend, offset):
    rng = np.random.default_rng(int(offset))
    b, r, classes, k = 2, 40, 5, 12
    info = np.array([[320, 480, 0.8, 400, 600], [300, 320, 1.5, 200, 213]], np.float32)
    xy = rng.uniform(0, 250, (b * r, 2))
    wh = rng.uniform(10, 120, (b * r, 2))
    rois = np.concatenate([np.repeat(np.arange(b), r)[:, None], xy, xy + wh], 1).astype(np.float32)
    logits = rng.normal(0, 2, (b * r, classes)).astype(np.float32)
    deltas = rng.normal(0, 1, (b * r, 4 * classes)).astype(np.float32)
    valid = rng.uniform(size=b * r) > 0.1
    stds = (0.1, 0.1, 0.2, 0.2)
    got = detect(logits, deltas, rois, valid, info, classes, nms_threshold=0.5, score_threshold=0.05,
                 max_detections=k, bbox_stds=stds, offset=offset, backend=backend)
    want = _detect_np(logits, deltas, rois, valid, info, classes, 0.5, 0.05, k, stds, offset)
    for i in range(b):
        n = int(got["num_detections"][i])
        assert n == len(want[i])
        np.testing.assert_allclose(got["scores"][i, :n].numpy(), [d[0] for d in want[i]], rtol=1e-5)
        np.testing.assert_array_equal(got["classes"][i, :n].numpy(), [d[1] for d in want[i]])
        np.testing.assert_allclose(got["boxes"][i, :n].numpy(), np.stack([d[2] for d in want[i]]), rtol=1e-4,
                                   atol=1e-2)
        assert not got["scores"][i, n:].numpy().any() and not got["classes"][i, n:].numpy().any()


def test_shared_regression_and_no_candidates():
    logits = np.zeros((3, 3), np.float32)
    logits[:, 0] = 10  # background wins everywhere: foreground probabilities ~ 1e-5
    rois = np.array([[0, 1, 1, 20, 20]] * 3, np.float32)
    out = detect(logits, np.zeros((3, 4), np.float32), rois, np.ones(3, bool),
                 np.array([[64, 64, 1, 64, 64]], np.float32), 3, score_threshold=0.01, max_detections=4)
    assert int(out["num_detections"][0]) == 0 and out["boxes"].shape == (1, 4, 4)
    assert math.isclose(float(out["scores"].numpy().sum()), 0.0)
