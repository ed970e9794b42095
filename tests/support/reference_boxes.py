"""NumPy references of the box machinery and losses, written from the description of the original
in docs/original.md (anchors, box coding, anchor and RoI targets, losses, OHEM), not from
lhrcnn/boxes: plain loops over boxes
and images, float64 unless a test needs float32 rounding (IoU, see `iou_ref`)."""
import math

import numpy as np


def box_iou_ref(a, b, offset=1.0):
    """IoU of two boxes as the Cython bbox_overlaps: intersection only when iw > 0 and ih > 0;
    boxes of non-positive width or height give 0. The ratio is rounded to float32 from
    exact products, so integer boxes give exactly what float32 TF computes."""
    wa, ha = a[2] - a[0] + offset, a[3] - a[1] + offset
    wb, hb = b[2] - b[0] + offset, b[3] - b[1] + offset
    if wa <= 0 or ha <= 0 or wb <= 0 or hb <= 0:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0]) + offset
    ih = min(a[3], b[3]) - max(a[1], b[1]) + offset
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = float(iw) * float(ih)
    union = float(wa) * float(ha) + float(wb) * float(hb) - inter
    return float(np.float32(inter) / np.float32(union))


def iou_ref(a, b, offset=1.0):
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = box_iou_ref(a[i], b[j], offset)
    return out


def encode_ref(ref, gt, offset=1.0, means=None, stds=None):
    out = np.zeros((len(ref), 4))
    for i, (r, g) in enumerate(zip(ref, gt)):
        rw, rh = r[2] - r[0] + offset, r[3] - r[1] + offset
        gw, gh = g[2] - g[0] + offset, g[3] - g[1] + offset
        rcx, rcy = r[0] + 0.5 * rw, r[1] + 0.5 * rh
        gcx, gcy = g[0] + 0.5 * gw, g[1] + 0.5 * gh
        d = np.array([(gcx - rcx) / rw, (gcy - rcy) / rh, math.log(gw / rw), math.log(gh / rh)])
        if means is not None:
            d = d - np.asarray(means)
        if stds is not None:
            d = d / np.asarray(stds)
        out[i] = d
    return out


def decode_ref(ref, deltas, offset=1.0, means=None, stds=None, clip_scale=None):
    """ref [N, 4], deltas [N, 4k] -> [N, 4k]."""
    out = np.zeros(deltas.shape)
    for i in range(len(ref)):
        r = ref[i].astype(np.float64)
        w, h = r[2] - r[0] + offset, r[3] - r[1] + offset
        cx, cy = r[0] + 0.5 * w, r[1] + 0.5 * h
        for g in range(deltas.shape[1] // 4):
            d = deltas[i, 4 * g:4 * g + 4].astype(np.float64)
            if stds is not None:
                d = d * np.asarray(stds)
            if means is not None:
                d = d + np.asarray(means)
            dw, dh = d[2], d[3]
            if clip_scale is not None:
                dw, dh = min(dw, clip_scale), min(dh, clip_scale)
            pcx, pcy = d[0] * w + cx, d[1] * h + cy
            pw, ph = math.exp(dw) * w, math.exp(dh) * h
            out[i, 4 * g:4 * g + 4] = [pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph]
    return out


def clip_ref(boxes, height, width):
    out = np.array(boxes, np.float64)
    for i in range(len(out)):
        for c in range(out.shape[1]):
            hi = (width if c % 2 == 0 else height) - 1
            out[i, c] = min(max(out[i, c], 0.0), hi)
    return out


def grid_ref(base, height, width, stride):
    out = []
    for y in range(height):
        for x in range(width):
            for a in range(len(base)):
                out.append(base[a] + np.array([x, y, x, y]) * stride)
    return np.array(out).reshape(-1, 4)


def nms_ref(boxes, scores, max_out, threshold, offset=1.0):
    """Greedy NMS: visit by descending score (ties: lower index), drop IoU > threshold."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if len(keep) == max_out:
            break
        if all(_iou64(boxes[i], boxes[j], offset) <= threshold for j in keep):
            keep.append(i)
    return keep


def _iou64(a, b, offset):
    wa, ha = a[2] - a[0] + offset, a[3] - a[1] + offset
    wb, hb = b[2] - b[0] + offset, b[3] - b[1] + offset
    iw = min(a[2], b[2]) - max(a[0], b[0]) + offset
    ih = min(a[3], b[3]) - max(a[1], b[1]) + offset
    if wa <= 0 or ha <= 0 or wb <= 0 or hb <= 0 or iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / (wa * ha + wb * hb - iw * ih)


def proposals_ref(logits, deltas, anchors, image_info, pre, post, threshold, offset=1.0):
    """Per image: list of (boxes [n, 4], scores [n]) in keep order."""
    batch, hh, ww, two_a = logits.shape
    a = two_a // 2
    out = []
    for b in range(batch):
        scores, boxes = [], []
        for y in range(hh):
            for x in range(ww):
                for k in range(a):
                    bg, fg = float(logits[b, y, x, 2 * k]), float(logits[b, y, x, 2 * k + 1])
                    scores.append(math.exp(fg) / (math.exp(bg) + math.exp(fg)))
                    boxes.append(deltas[b, y, x, 4 * k:4 * k + 4])
        boxes = decode_ref(anchors, np.array(boxes), offset)
        boxes = clip_ref(boxes, image_info[b, 0], image_info[b, 1])
        scores = np.array(scores)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:min(pre, len(scores))]
        boxes, scores = boxes[order], scores[order]
        keep = nms_ref(boxes, scores, post, threshold, offset)
        out.append((boxes[keep], scores[keep]))
    return out


def anchor_labels_ref(anchors, gt_boxes, gt_classes, image_info, positive=0.7, negative=0.3, border=0,
                      offset=1.0):
    """Labels before subsampling and targets, per docs/original.md#anchor-targets (py-faster-rcnn's
    np.where logic)."""
    batch, n = len(gt_boxes), len(anchors)
    labels = -np.ones((batch, n), np.int64)
    targets = np.zeros((batch, n, 4))
    for b in range(batch):
        height, width = image_info[b, 0], image_info[b, 1]
        inside = [i for i in range(n) if anchors[i, 0] >= -border and anchors[i, 1] >= -border
                  and anchors[i, 2] < width + border and anchors[i, 3] < height + border]
        gts = np.array([g for g, c in zip(gt_boxes[b], gt_classes[b]) if c > 0]).reshape(-1, 4)
        if len(gts) == 0:
            labels[b, inside] = 0
            continue
        overlaps = iou_ref(anchors[inside], gts, offset)
        argmax = overlaps.argmax(axis=1)
        max_overlaps = overlaps[np.arange(len(inside)), argmax]
        gt_max = overlaps.max(axis=0)
        gt_argmax = np.where(overlaps == gt_max)[0]
        lab = -np.ones(len(inside), np.int64)
        lab[max_overlaps < negative] = 0
        lab[gt_argmax] = 1
        lab[max_overlaps >= positive] = 1
        labels[b, inside] = lab
        targets[b, inside] = encode_ref(anchors[inside], gts[argmax], offset)
    return labels, targets


def roi_targets_keep_all_ref(rois, valid, gt_boxes, gt_classes, num_classes, fg_thresh=0.5, bg_hi=0.5,
                             bg_lo=0.0, append_gt=True, means=(0, 0, 0, 0), stds=(0.1, 0.1, 0.2, 0.2),
                             class_specific=True, offset=1.0):
    """docs/original.md#roi-targets with BATCH_SIZE = -1, keeping the input row order (proposals,
    then GT)."""
    rows, row_valid = list(rois), list(valid)
    if append_gt:
        for b in range(len(gt_boxes)):
            for g, c in zip(gt_boxes[b], gt_classes[b]):
                rows.append(np.concatenate([[b], g]))
                row_valid.append(c > 0)
    rows = np.array(rows, np.float64)
    labels = -np.ones(len(rows), np.int64)
    targets = np.zeros((len(rows), 4 * num_classes if class_specific else 4))
    for r, (row, ok) in enumerate(zip(rows, row_valid)):
        if not ok:
            continue
        b = int(row[0])
        gts = [(g, c) for g, c in zip(gt_boxes[b], gt_classes[b]) if c > 0]
        ious = [box_iou_ref(row[1:], g, offset) for g, _ in gts]
        best = int(np.argmax(ious)) if ious else -1
        top = ious[best] if ious else 0.0
        if top >= fg_thresh:
            labels[r] = gts[best][1]
            t = encode_ref(row[None, 1:], gts[best][0][None], offset, means, stds)[0]
            col = 4 * labels[r] if class_specific else 0
            targets[r, col:col + 4] = t
        elif bg_lo <= top < bg_hi:
            labels[r] = 0
    return rows, labels, targets


def smooth_l1_ref(x, sigma):
    s2 = sigma * sigma
    return 0.5 * s2 * x * x if abs(x) < 1.0 / s2 else abs(x) - 0.5 / s2


def softmax_ce_ref(logits, label):
    m = max(logits)
    return math.log(sum(math.exp(v - m) for v in logits)) + m - logits[label]


def rpn_losses_ref(logits, deltas, labels, targets, sigma=3.0):
    """logits [N, 2], deltas [N, 4], labels [N], targets [N, 4]."""
    ces, box, count = [], 0.0, 0
    for i in range(len(labels)):
        if labels[i] == -1:
            continue
        count += 1
        ces.append(softmax_ce_ref(logits[i], labels[i]))
        if labels[i] > 0:
            box += sum(smooth_l1_ref(float(deltas[i, c] - targets[i, c]), sigma) for c in range(4))
    return (sum(ces) / len(ces) if ces else 0.0), box / max(1, count)


def rcnn_per_roi_ref(logits, deltas, labels, targets, sigma=1.0, class_specific=True):
    ce, box = [], []
    for i in range(len(labels)):
        lab = int(labels[i])
        ce.append(softmax_ce_ref(logits[i], max(lab, 0)))
        col = 4 * lab if class_specific else 0
        box.append(sum(smooth_l1_ref(float(deltas[i, col + c] - targets[i, col + c]), sigma) for c in range(4))
                   if lab > 0 else 0.0)
    return np.array(ce), np.array(box)


def ohem_ref(logits, deltas, labels, targets, valid, top_k=512, weight=2.0, sigma=1.0, class_specific=True):
    """Returns (cls, box, selected row indices)."""
    ce, box = rcnn_per_roi_ref(logits, deltas, labels, targets, sigma, class_specific)
    rows = [i for i in range(len(labels)) if valid[i] and labels[i] >= 0]
    rows.sort(key=lambda i: (-(ce[i] + box[i]), i))
    chosen = rows[:min(top_k, len(rows))]
    k = max(len(chosen), 1)
    return sum(ce[i] for i in chosen) / k, weight * sum(box[i] for i in chosen) / k, chosen
