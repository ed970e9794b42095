"""NumPy reference implementations of the custom ops, written from the semantics in
docs/original.md#ops (not from the kernels): plain loops, float32
arithmetic where the original computes in float32, and bilinear sampling expressed as standard
interpolation on an explicitly zero-padded map. Tests compare both backends against these.
"""
import math

import numpy as np

f32 = np.float32


def _round_half_away(v):
    v = float(v)
    return f32(math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5))


def _padded(image):
    """[H, W, C] -> [H + 2, W + 2, C] with a one-pixel zero border."""
    return np.pad(image, ((1, 1), (1, 1), (0, 0)))


def _bilinear(padded, y, x):
    """Standard bilinear value at map point (y, x) on a map zero-padded by one pixel.
    Returns (value [C], taps) where taps = [(yy, xx, weight)] in unpadded coordinates
    (weights of pixels outside the map are dropped)."""
    hp, wp = padded.shape[0], padded.shape[1]
    py, px = f32(y) + f32(1), f32(x) + f32(1)  # padded coordinates
    if not (py > 0 and py < hp - 1 and px > 0 and px < wp - 1):
        return np.zeros(padded.shape[2], np.float32), []
    y0, x0 = int(math.floor(py)), int(math.floor(px))
    ly, lx = f32(py - f32(y0)), f32(px - f32(x0))
    taps = []
    for yy, wy in ((y0, f32(1) - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, f32(1) - lx), (x0 + 1, lx)):
            if 1 <= yy <= hp - 2 and 1 <= xx <= wp - 2 and wy * wx != 0:
                taps.append((yy - 1, xx - 1, f32(wy * wx)))
    value = np.zeros(padded.shape[2], np.float32)
    for yy, xx, w in taps:
        value = value + w * padded[yy + 1, xx + 1]
    return value.astype(np.float32), taps


def _align_samples(roi, spatial_scale, ph_count, pw_count, ph, pw, sampling, aligned):
    """Sample points (y, x) of bin (ph, pw) of a RoI, in (iy, ix) order."""
    s = f32(spatial_scale)
    off = f32(0.5) if aligned else f32(0)
    xs, ys = f32(roi[1]) * s - off, f32(roi[2]) * s - off
    xe, ye = f32(roi[3]) * s - off, f32(roi[4]) * s - off
    bw = f32(max(xe - xs, f32(0))) / f32(pw_count)
    bh = f32(max(ye - ys, f32(0))) / f32(ph_count)
    sh, sw = sampling
    points = []
    for iy in range(sh):
        for ix in range(sw):
            fy = f32(ph) + (f32(iy) + f32(0.5)) / f32(sh)
            fx = f32(pw) + (f32(ix) + f32(0.5)) / f32(sw)
            points.append((ys + bh * fy, xs + bw * fx))
    return points


def _align(features, rois, ph_count, pw_count, spatial_scale, sampling, pooling, aligned,
           position_sensitive, grad=None, argmax_in=None):
    features = np.asarray(features, np.float32)
    rois = np.asarray(rois, np.float32)
    _, _, _, c = features.shape
    k_count = c // (ph_count * pw_count) if position_sensitive else c
    r_count = rois.shape[0]
    out = np.zeros((r_count, ph_count, pw_count, k_count), np.float32)
    argmax = np.zeros(out.shape, np.int32)
    d_features = np.zeros_like(features) if grad is not None else None
    padded = [_padded(img) for img in features]
    for r in range(r_count):
        b = int(rois[r, 0])
        for ph in range(ph_count):
            for pw in range(pw_count):
                if position_sensitive:
                    chans = np.arange(k_count) * ph_count * pw_count + ph * pw_count + pw
                else:
                    chans = np.arange(k_count)
                samples = [_bilinear(padded[b][:, :, chans], y, x)
                           for y, x in _align_samples(rois[r], spatial_scale, ph_count, pw_count,
                                                      ph, pw, sampling, aligned)]
                values = np.stack([v for v, _ in samples])  # [S, K]
                if pooling == "max":
                    win = np.argmax(values, axis=0)  # first maximal sample
                    out[r, ph, pw] = values[win, np.arange(k_count)]
                    argmax[r, ph, pw] = win
                else:
                    out[r, ph, pw] = values.sum(axis=0) / f32(len(samples))
                if grad is None:
                    continue
                g = grad[r, ph, pw]
                if pooling == "max":
                    win = argmax_in[r, ph, pw] if argmax_in is not None else argmax[r, ph, pw]
                    for k in range(k_count):
                        for yy, xx, w in samples[win[k]][1]:
                            d_features[b, yy, xx, chans[k]] += w * g[k]
                else:
                    for _, taps in samples:
                        for yy, xx, w in taps:
                            d_features[b, yy, xx, chans] += w * (g / f32(len(samples)))
    if grad is not None:
        return d_features
    return out, (argmax if pooling == "max" else None)


def ps_roi_align_ref(features, rois, group_size, spatial_scale, sampling_ratio=(2, 2), pooling="max"):
    """Original PSAlignPool (with plain bilinear at integer coordinates)."""
    return _align(features, rois, group_size, group_size, spatial_scale, sampling_ratio, pooling,
                  False, True)


def roi_align_ref(features, rois, output_size, spatial_scale, sampling_ratio=(2, 2), pooling="avg",
                  aligned=False):
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    return _align(features, rois, ph, pw, spatial_scale, sampling_ratio, pooling, aligned, False)


def ps_roi_align_grad_ref(features_shape, rois, grad, group_size, spatial_scale, sampling_ratio=(2, 2),
                          pooling="max", argmax=None, features=None):
    """d features. For max pooling the winner comes from `argmax` or from `features`."""
    feats = np.zeros(features_shape, np.float32) if features is None else features
    return _align(feats, rois, group_size, group_size, spatial_scale, sampling_ratio, pooling, False,
                  True, grad=np.asarray(grad, np.float32), argmax_in=argmax)


def roi_align_grad_ref(features_shape, rois, grad, output_size, spatial_scale, sampling_ratio=(2, 2),
                       pooling="avg", aligned=False, argmax=None, features=None):
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    feats = np.zeros(features_shape, np.float32) if features is None else features
    return _align(feats, rois, ph, pw, spatial_scale, sampling_ratio, pooling, aligned, False,
                  grad=np.asarray(grad, np.float32), argmax_in=argmax)


def _pool_bins(roi, spatial_scale, group_size, height, width):
    s = f32(spatial_scale)
    xs = _round_half_away(roi[1]) * s
    ys = _round_half_away(roi[2]) * s
    xe = (_round_half_away(roi[3]) + f32(1)) * s
    ye = (_round_half_away(roi[4]) + f32(1)) * s
    rw = max(f32(xe - xs), f32(0.1))
    rh = max(f32(ye - ys), f32(0.1))
    bh, bw = f32(rh / f32(group_size)), f32(rw / f32(group_size))
    bins = {}
    for ph in range(group_size):
        for pw in range(group_size):
            hs = min(max(math.floor(f32(f32(ph) * bh + ys)), 0), height)
            he = min(max(math.ceil(f32(f32(ph + 1) * bh + ys)), 0), height)
            ws = min(max(math.floor(f32(f32(pw) * bw + xs)), 0), width)
            we = min(max(math.ceil(f32(f32(pw + 1) * bw + xs)), 0), width)
            bins[ph, pw] = (hs, he, ws, we)
    return bins


def ps_roi_pool_ref(features, rois, group_size, spatial_scale):
    """Original PSROIPool: mean over the bin's pixels of channel (k * G + ph) * G + pw."""
    features = np.asarray(features, np.float32)
    rois = np.asarray(rois, np.float32)
    _, h, w, c = features.shape
    g = group_size
    k_count = c // (g * g)
    out = np.zeros((rois.shape[0], g, g, k_count), np.float32)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        for (ph, pw), (hs, he, ws, we) in _pool_bins(roi, spatial_scale, g, h, w).items():
            if he <= hs or we <= ws:
                continue
            chans = (np.arange(k_count) * g + ph) * g + pw
            region = features[b, hs:he, ws:we][:, :, chans].astype(np.float64)
            out[r, ph, pw] = (region.sum(axis=(0, 1)) / ((he - hs) * (we - ws))).astype(np.float32)
    return out


def ps_roi_pool_grad_ref(features_shape, rois, grad, group_size, spatial_scale):
    rois = np.asarray(rois, np.float32)
    _, h, w, c = features_shape
    g = group_size
    k_count = c // (g * g)
    d = np.zeros(features_shape, np.float64)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        for (ph, pw), (hs, he, ws, we) in _pool_bins(roi, spatial_scale, g, h, w).items():
            if he <= hs or we <= ws:
                continue
            chans = (np.arange(k_count) * g + ph) * g + pw
            region = d[b, hs:he, ws:we]  # a view: the fancy-indexed update below writes into d
            region[:, :, chans] += grad[r, ph, pw] / ((he - hs) * (we - ws))
    return d.astype(np.float32)


def _iou(a, b, offset):
    """IoU as tf.image.non_max_suppression computes it, on boxes (x1, y1, x2 + o, y2 + o)."""
    def norm(box):
        x1, y1, x2, y2 = f32(box[0]), f32(box[1]), f32(box[2]) + f32(offset), f32(box[3]) + f32(offset)
        return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)
    ax1, ay1, ax2, ay2 = norm(a)
    bx1, by1, bx2, by2 = norm(b)
    area_a = f32((ax2 - ax1) * (ay2 - ay1))
    area_b = f32((bx2 - bx1) * (by2 - by1))
    if area_a <= 0 or area_b <= 0:
        return f32(0)
    inter = f32(max(f32(min(ax2, bx2) - max(ax1, bx1)), f32(0)) * max(f32(min(ay2, by2) - max(ay1, by1)), f32(0)))
    return f32(inter / f32(f32(area_a + area_b) - inter))


def _flush_denormals(x):
    return np.where(np.abs(x) < np.finfo(np.float32).tiny, np.float32(0), x).astype(np.float32)


def nms_ref(boxes, scores, max_output_size, iou_threshold, score_threshold=-np.inf, class_ids=None,
            box_offset=0.0):
    """Greedy NMS, one image: visit by descending score (ties: lower index), suppress IoU > t.

    Inputs are read as TensorFlow's CPU kernels read them: TF runs its ops with denormals flushed
    to zero (FTZ/DAZ), so a subnormal score such as 1e-45 ties with 0 there (found by hypothesis:
    scores (0, 1e-45) kept in index order by both backends). The kernels flush scores and the
    score threshold themselves, so they order them so on the GPU and outside TensorFlow too."""
    boxes = _flush_denormals(np.asarray(boxes, np.float32))
    scores = _flush_denormals(np.asarray(scores, np.float32))
    threshold = _flush_denormals(np.float32(score_threshold))  # read as the scores are
    order = sorted((i for i in range(len(scores)) if scores[i] > threshold),
                   key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        if len(kept) == max_output_size:
            break
        if any((class_ids is None or class_ids[j] == class_ids[i])
               and _iou(boxes[j], boxes[i], box_offset) > f32(iou_threshold) for j in kept):
            continue
        kept.append(i)
    out = np.full(max_output_size, -1, np.int32)
    out[:len(kept)] = kept
    return out, len(kept)
