#!/usr/bin/env python3
"""Checks the framework-free kernels of ops/kernels/ against the NumPy reference, without TensorFlow.

Loads libharness.so (built by build.sh) with ctypes and runs random cases through the CUDA
launchers and the CPU kernels: forward against tests/support/reference_ops.py (rtol 1e-5, atol 1e-5),
backward against it (atol 1e-4 scaled by the gradient's magnitude), GPU forward against the CPU
bit for bit (both are built without FMA contraction), NMS indices exactly, the validators' bad
index and code, R = 0 / N = 0. Then it times the GPU kernels on the benchmark shapes.

    python3 ops/harness/run_harness.py [--json timings.json]     # GPU + CPU (needs a GPU)
    python3 ops/harness/run_harness.py --cpu-only                # CPU kernels only (no GPU)

Prints one PASS/FAIL line per check and `N passed, M failed` at the end; exits 1 on any failure,
2 when it cannot run at all (no library, no reference, no GPU).
"""
import argparse
import ctypes
import importlib.util
import json
import math
import os
import platform
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backends import (AlignSpec, CpuBackend, GpuBackend, NmsSpec, SetupError,  # noqa: E402
                      default_library, load_library, ptr)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_REFERENCE = os.path.join(REPO, "tests", "support", "reference_ops.py")

RTOL_FWD, ATOL_FWD = 1e-5, 1e-5
RTOL_BWD, ATOL_BWD = 1e-5, 1e-4  # atol is multiplied by max(1, max |reference gradient|)

# RoiError / NmsError codes (common.h, nms.h).
ROI_OK, ROI_BATCH_NOT_INTEGER, ROI_BATCH_OUT_OF_RANGE, ROI_COORD_NOT_FINITE = 0, 1, 2, 3
NMS_OK, NMS_BOX_NOT_FINITE, NMS_SCORE_NOT_FINITE = 0, 1, 2


def load_reference(path):
    """The reference module (tests/support/reference_ops.py or another file with the same API)."""
    if not os.path.exists(path):
        raise SetupError(f"no NumPy reference at {path}")
    spec = importlib.util.spec_from_file_location("reference_ops", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_ops"] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Results.

class Results:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"PASS {name}" + (f"  ({detail})" if detail else ""), flush=True)
        else:
            self.failed.append(name)
            print(f"FAIL {name}: {detail}", flush=True)
        return ok

    def error(self, name, exc):
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        detail = f"{type(exc).__name__}: {exc}\n    " + "    ".join(tb[-3:])
        self.check(name, False, detail.rstrip())


def compare_close(got, want, rtol, atol):
    """(ok, detail) for |got - want| <= atol + rtol * |want| (NaN anywhere in got fails)."""
    want = np.asarray(want, np.float64)
    got = np.asarray(got, np.float64)
    if got.shape != want.shape:
        return False, f"shape {got.shape} != reference {want.shape}"
    if got.size == 0:
        return True, "empty"
    err = np.abs(got - want)
    bad = ~(err <= atol + rtol * np.abs(want))  # NaN counts as bad
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(np.isnan(err), np.inf, err)), err.shape)
        return False, (f"{int(bad.sum())}/{got.size} elements off; worst at {tuple(int(v) for v in i)}: "
                       f"got {got[i]!r}, want {want[i]!r}")
    return True, f"max err {err.max():.2e}"


def compare_exact(got, want):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False, f"shape {got.shape} != {want.shape}"
    same = (got == want) | (np.isnan(got) & np.isnan(want)) if got.dtype.kind == "f" else got == want
    if same.all():
        return True, "bitwise equal" if got.dtype.kind == "f" else "equal"
    i = tuple(int(v) for v in np.argwhere(~same)[0])
    return False, f"{int((~same).sum())}/{got.size} differ; first at {i}: {got[i]!r} vs {want[i]!r}"


def _tap(v, size):
    """One axis of a bilinear sample (common.h MakeAxisTap), float64 weights."""
    if not (v > -1.0 and v < size):
        return 0, 0, 0.0, 0.0
    lo = math.floor(v)
    frac = float(v) - lo
    return max(lo, 0), min(lo + 1, size - 1), (1.0 - frac if lo >= 0 else 0.0), (frac if lo + 1 <= size - 1 else 0.0)


def sample_value(spec, features, roi, ph, pw, k, s):
    """Value of sample s of output (ph, pw, k) of one RoI, geometry in float32 like common.h. Used only
    to decide whether two different argmax choices are a near-tie."""
    f = np.float32
    off = f(0.5) if spec.aligned else f(0)
    sc = f(spec.spatial_scale)
    xs, ys = f(f(roi[1]) * sc) - off, f(f(roi[2]) * sc) - off
    xe, ye = f(f(roi[3]) * sc) - off, f(f(roi[4]) * sc) - off
    bw = f(max(f(xe - xs), f(0)) / f(spec.pooled_w))
    bh = f(max(f(ye - ys), f(0)) / f(spec.pooled_h))
    iy, ix = divmod(int(s), spec.sample_w)
    fy = f(ph) + f(f(iy) + f(0.5)) / f(spec.sample_h)
    fx = f(pw) + f(f(ix) + f(0.5)) / f(spec.sample_w)
    _, H, W, _ = features.shape
    ylo, yhi, wylo, wyhi = _tap(float(f(ys + f(bh * fy))), H)
    xlo, xhi, wxlo, wxhi = _tap(float(f(xs + f(bw * fx))), W)
    c = k * spec.planes + ph * spec.pooled_w + pw if spec.position_sensitive else k
    img = features[int(roi[0])].astype(np.float64)
    return (wylo * wxlo * img[ylo, xlo, c] + wylo * wxhi * img[ylo, xhi, c]
            + wyhi * wxlo * img[yhi, xlo, c] + wyhi * wxhi * img[yhi, xhi, c])


def compare_argmax(spec, features, rois, got, want):
    """Exact, except where the two chosen samples have different but nearly equal values (then rounding
    decides and either choice is right). Exact ties (the same point, or both outside the map) must
    resolve to the first sample, so they are not excused."""
    if got.shape != want.shape:
        return False, f"shape {got.shape} != reference {want.shape}"
    diff = np.argwhere(got != want)
    ties = 0
    for r, ph, pw, k in diff:
        g, w = int(got[r, ph, pw, k]), int(want[r, ph, pw, k])
        if not 0 <= g < spec.sample_h * spec.sample_w:
            return False, f"argmax {g} out of range at {(int(r), int(ph), int(pw), int(k))}"
        vg = sample_value(spec, features, rois[r], ph, pw, k, g)
        vw = sample_value(spec, features, rois[r], ph, pw, k, w)
        if vg == vw or abs(vg - vw) > 1e-5 * max(1.0, abs(vw)):
            return False, (f"{len(diff)}/{got.size} differ; at {(int(r), int(ph), int(pw), int(k))}: sample {g} "
                           f"(value {vg:.7g}) vs reference {w} (value {vw:.7g})")
        ties += 1
    return True, ("equal" if ties == 0 else f"equal but {ties} near-tie(s)")


# ---------------------------------------------------------------------------------------------
# Random inputs.

def make_rois(rng, batch, height, width, scale, n, coords="float"):
    """[n, 5] RoIs in image pixels (map size / scale): inside, partly and wholly outside the map, tiny,
    zero-size and reversed, on random images. coords: float | integer | half (k + 0.5)."""
    img_h, img_w = height / scale, width / scale
    out = np.zeros((n, 5), np.float32)
    kinds = rng.integers(0, 7, n)
    for i, kind in enumerate(kinds):
        if kind in (0, 1):  # inside
            x1, y1 = rng.uniform(0, 0.8 * img_w), rng.uniform(0, 0.8 * img_h)
            x2, y2 = rng.uniform(x1 + 1, img_w), rng.uniform(y1 + 1, img_h)
        elif kind == 2:  # partly outside (possibly much larger than the map)
            x1, y1 = rng.uniform(-0.5 * img_w, 0.9 * img_w), rng.uniform(-0.5 * img_h, 0.9 * img_h)
            x2, y2 = x1 + rng.uniform(1, 1.5 * img_w), y1 + rng.uniform(1, 1.5 * img_h)
        elif kind == 3:  # wholly outside: past the far edge or before the near one
            if rng.random() < 0.5:
                x1 = (width + 1.5 + rng.uniform(0, 4)) / scale
                y1 = rng.uniform(0, img_h)
            else:
                x1 = rng.uniform(0, img_w)
                y1 = -(2.5 + rng.uniform(0, 4)) / scale - 40
            x2, y2 = x1 + rng.uniform(1, 30), y1 + rng.uniform(1, 30)
        elif kind == 4:  # tiny
            x1, y1 = rng.uniform(-2, img_w + 2), rng.uniform(-2, img_h + 2)
            x2, y2 = x1 + rng.uniform(0, 2), y1 + rng.uniform(0, 2)
        elif kind == 5:  # zero-size
            x1, y1 = rng.uniform(0, img_w), rng.uniform(0, img_h)
            x2, y2 = x1, y1
        else:  # reversed corners
            x1, y1 = rng.uniform(0, img_w), rng.uniform(0, img_h)
            x2, y2 = x1 - rng.uniform(0, 40), y1 - rng.uniform(0, 40)
        out[i] = (rng.integers(0, batch), x1, y1, x2, y2)
    if coords == "integer":
        out[:, 1:] = np.round(out[:, 1:])
    elif coords == "half":
        out[:, 1:] = np.floor(out[:, 1:]) + 0.5
    return out


def make_features(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def make_boxes(rng, n, kind, size=600.0):
    """[n, 4] boxes (x1, y1, x2, y2)."""
    if kind == "uniform":
        xy = rng.uniform(0, size, (n, 2))
        wh = rng.uniform(4, size / 5, (n, 2))
    elif kind == "clustered":
        centers = rng.uniform(0, size, (max(1, n // 40), 2))
        scales = rng.uniform(16, size / 4, (len(centers), 2))
        pick = rng.integers(0, len(centers), n)
        wh = scales[pick] * rng.uniform(0.8, 1.25, (n, 2))
        xy = centers[pick] + rng.normal(0, 1, (n, 2)) * wh * 0.15 - wh / 2
    else:
        raise ValueError(kind)
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Cases.

class Harness:
    def __init__(self, lib, ref, backends, results, seed):
        self.lib, self.ref, self.backends, self.results = lib, ref, backends, results
        self.seed = seed
        self.cpu = next((b for b in backends if b.name == "cpu"), None)
        self.gpu = next((b for b in backends if b.name == "gpu"), None)

    def rng(self, tag):
        return np.random.default_rng([self.seed, sum(map(ord, tag)) * 7919 + len(tag)])

    def run(self, name, fn):
        try:
            fn()
        except Exception as exc:  # report and go on with the next case
            self.results.error(name, exc)
        finally:
            if self.gpu:
                self.gpu.free_all()

    # ---- RoI-Align family -------------------------------------------------------------------
    def reference_align(self, spec, features, rois):
        pooling = "max" if spec.max_pool else "avg"
        ratio = (spec.sample_h, spec.sample_w)
        if spec.position_sensitive:
            out, am = self.ref.ps_roi_align_ref(features, rois, spec.pooled_h, spec.spatial_scale,
                                                sampling_ratio=ratio, pooling=pooling)
        else:
            size = spec.pooled_h if spec.pooled_h == spec.pooled_w else (spec.pooled_h, spec.pooled_w)
            out, am = self.ref.roi_align_ref(features, rois, size, spec.spatial_scale, sampling_ratio=ratio,
                                             pooling=pooling, aligned=spec.aligned)
        return np.asarray(out), (None if am is None else np.asarray(am))

    def reference_align_grad(self, spec, shape, rois, grad, argmax):
        pooling = "max" if spec.max_pool else "avg"
        ratio = (spec.sample_h, spec.sample_w)
        if spec.position_sensitive:
            return np.asarray(self.ref.ps_roi_align_grad_ref(shape, rois, grad, spec.pooled_h, spec.spatial_scale,
                                                             sampling_ratio=ratio, pooling=pooling, argmax=argmax))
        size = spec.pooled_h if spec.pooled_h == spec.pooled_w else (spec.pooled_h, spec.pooled_w)
        return np.asarray(self.ref.roi_align_grad_ref(shape, rois, grad, size, spec.spatial_scale, ratio, pooling,
                                                      spec.aligned, argmax=argmax))

    def align_case(self, label, spec, shape, rois, features=None, use_reference=True):
        name = f"{label}: {spec.text()} features{list(shape)} R={len(rois)}"
        rng = self.rng(name)
        if features is None:
            features = make_features(rng, shape)
        out_shape = spec.out_shape(shape, len(rois))
        grad = rng.standard_normal(out_shape).astype(np.float32)
        has_ref = use_reference and (not spec.position_sensitive or (spec.pooled_h == spec.pooled_w
                                                                      and not spec.aligned))
        ref_out = ref_am = ref_grad = None
        if has_ref:
            ref_out, ref_am = self.reference_align(spec, features, rois)
            if spec.max_pool and ref_am is None:
                raise RuntimeError("reference returned no argmax for max pooling")
        fwd = {}
        for be in self.backends:
            out, am = be.roi_align_forward(spec, features, rois)
            fwd[be.name] = (out, am)
            if has_ref:
                self.results.check(f"{name} [{be.name} forward]", *compare_close(out, ref_out, RTOL_FWD, ATOL_FWD))
                if spec.max_pool:
                    self.results.check(f"{name} [{be.name} argmax]",
                                       *compare_argmax(spec, features, rois, am, ref_am))
        if self.cpu and self.gpu:
            (go, ga), (co, ca) = fwd["gpu"], fwd["cpu"]
            ok, detail = compare_exact(go, co)
            if ok and spec.max_pool:
                ok, detail = compare_exact(ga, ca)
            self.results.check(f"{name} [gpu == cpu forward]", ok, detail)
        # Backward: every implementation gets the same argmax (the reference's, else the CPU's), so
        # near-ties in the forward pass cannot make the gradients differ.
        argmax = None
        if spec.max_pool:
            argmax = ref_am.astype(np.int32) if ref_am is not None else fwd[self.backends[0].name][1]
            argmax = np.ascontiguousarray(argmax)
        if has_ref:
            ref_grad = self.reference_align_grad(spec, shape, rois, grad, argmax)
        bwd = {}
        for be in self.backends:
            d = be.roi_align_backward(spec, shape, rois, grad, argmax)
            bwd[be.name] = d
            if has_ref:
                atol = ATOL_BWD * max(1.0, float(np.abs(ref_grad).max()) if ref_grad.size else 1.0)
                self.results.check(f"{name} [{be.name} backward]", *compare_close(d, ref_grad, RTOL_BWD, atol))
        if self.cpu and self.gpu:
            scale = max(1.0, float(np.abs(bwd["cpu"]).max()) if bwd["cpu"].size else 1.0)
            self.results.check(f"{name} [gpu ~ cpu backward]",
                               *compare_close(bwd["gpu"], bwd["cpu"], RTOL_BWD, ATOL_BWD * scale))

    def align_cases(self):
        s16, s8 = 1.0 / 16, 1.0 / 8
        B2 = (2, 13, 17)
        cases = [
            ("psalign-mixed", AlignSpec(7, 7, 2, 2, s16, True, True, False), B2 + (49 * 2,), 24, "float"),
            ("psalign-mixed", AlignSpec(7, 7, 2, 2, s16, True, False, False), B2 + (49 * 2,), 24, "float"),
            ("psalign-int", AlignSpec(7, 7, 2, 2, s16, True, True, False), B2 + (49 * 2,), 20, "integer"),
            ("psalign-g3", AlignSpec(3, 3, 1, 3, s16, True, True, False), (3, 11, 9, 9 * 4), 30, "float"),
            ("psalign-g3", AlignSpec(3, 3, 1, 3, s8, True, False, False), (3, 11, 9, 9 * 4), 30, "integer"),
            ("psalign-g3", AlignSpec(3, 3, 2, 2, s8, True, True, False), (1, 6, 7, 9 * 3), 30, "half"),
            ("roialign", AlignSpec(7, 7, 2, 2, s16, False, False, False), (2, 12, 15, 5), 20, "float"),
            ("roialign", AlignSpec(7, 7, 2, 2, s16, False, False, True), (2, 12, 15, 5), 20, "float"),
            ("roialign", AlignSpec(7, 7, 1, 3, s16, False, True, True), (2, 12, 15, 5), 20, "integer"),
            ("roialign", AlignSpec(7, 7, 2, 2, s8, False, True, False), (2, 12, 15, 6), 20, "float"),
            ("roialign", AlignSpec(3, 3, 1, 3, s8, False, False, True), (3, 9, 10, 4), 25, "half"),
            ("roialign-rect", AlignSpec(5, 3, 2, 2, s16, False, True, False), (2, 12, 15, 4), 16, "float"),
            ("roialign-rect", AlignSpec(4, 6, 1, 3, s16, False, False, True), (2, 12, 15, 4), 16, "float"),
            ("roialign-scale1", AlignSpec(3, 3, 2, 2, 1.0, False, True, True), (1, 8, 8, 3), 20, "integer"),
        ]
        for label, spec, shape, n, coords in cases:
            rois = make_rois(self.rng(label + spec.text()), shape[0], shape[1], shape[2], spec.spatial_scale, n, coords)
            self.run(f"{label} {spec.text()}", lambda s=spec, sh=shape, r=rois, l=label: self.align_case(l, s, sh, r))
        # No reference for PS + aligned or non-square PS: GPU against CPU only.
        if self.cpu and self.gpu:
            for spec in (AlignSpec(7, 7, 2, 2, s16, True, True, True), AlignSpec(3, 3, 1, 3, s16, True, False, True)):
                shape = (2, 13, 17, spec.planes * 2)
                rois = make_rois(self.rng("psalign-aligned"), 2, 13, 17, s16, 24)
                self.run(f"psalign-aligned {spec.text()}",
                         lambda s=spec, sh=shape, r=rois: self.align_case("psalign-aligned", s, sh, r,
                                                                           use_reference=False))
        # Degenerate sizes: no RoIs, RoIs only outside the map (all zero, zero gradient).
        for spec in (AlignSpec(7, 7, 2, 2, s16, True, True, False), AlignSpec(7, 7, 2, 2, s16, False, False, True)):
            shape = (2, 10, 12, spec.planes * 2)
            empty = np.zeros((0, 5), np.float32)
            self.run(f"R=0 {spec.text()}", lambda s=spec, sh=shape: self.align_case("R=0", s, sh, empty))
            outside = np.array([[0, 400, 10, 480, 90], [1, -300, -300, -40, -40], [1, 10, 250, 60, 300]], np.float32)
            self.run(f"outside {spec.text()}",
                     lambda s=spec, sh=shape, r=outside: self.outside_case(s, sh, r))

    def outside_case(self, spec, shape, rois):
        """RoIs wholly outside the map (beyond the one-pixel zero padding): output 0, gradient 0."""
        self.align_case("outside", spec, shape, rois)
        features = make_features(self.rng("outside"), shape)
        for be in self.backends:
            out, am = be.roi_align_forward(spec, features, rois)
            ok = bool((out == 0).all()) and (am is None or bool((am == 0).all()))
            self.results.check(f"outside {spec.text()} [{be.name} zeros, argmax 0]", ok,
                               "" if ok else f"max |out| {np.abs(out).max()}")

    # ---- PS-RoI pooling ---------------------------------------------------------------------
    def pool_case(self, label, group, scale, shape, rois):
        name = f"{label}: ps_roi_pool G={group} scale={scale:g} features{list(shape)} R={len(rois)}"
        rng = self.rng(name)
        features = make_features(rng, shape)
        grad = rng.standard_normal((len(rois), group, group, shape[3] // (group * group))).astype(np.float32)
        ref_out = np.asarray(self.ref.ps_roi_pool_ref(features, rois, group, scale))
        ref_grad = np.asarray(self.ref.ps_roi_pool_grad_ref(shape, rois, grad, group, scale))
        atol = ATOL_BWD * max(1.0, float(np.abs(ref_grad).max()) if ref_grad.size else 1.0)
        outs, grads = {}, {}
        for be in self.backends:
            outs[be.name] = be.ps_roi_pool_forward(group, scale, features, rois)
            self.results.check(f"{name} [{be.name} forward]",
                               *compare_close(outs[be.name], ref_out, RTOL_FWD, ATOL_FWD))
            grads[be.name] = be.ps_roi_pool_backward(group, scale, shape, rois, grad)
            self.results.check(f"{name} [{be.name} backward]",
                               *compare_close(grads[be.name], ref_grad, RTOL_BWD, atol))
        if self.cpu and self.gpu:
            self.results.check(f"{name} [gpu == cpu forward]", *compare_exact(outs["gpu"], outs["cpu"]))
            self.results.check(f"{name} [gpu ~ cpu backward]",
                               *compare_close(grads["gpu"], grads["cpu"], RTOL_BWD, atol))

    def pool_cases(self):
        cases = [
            ("pspool", 7, 1.0 / 16, (2, 13, 17, 49 * 2), 24, "half"),
            ("pspool", 7, 1.0 / 16, (2, 13, 17, 49 * 2), 24, "float"),
            ("pspool", 3, 1.0 / 4, (3, 20, 18, 9 * 4), 30, "integer"),
            ("pspool", 3, 1.0 / 4, (3, 20, 18, 9 * 4), 30, "half"),
            ("pspool", 3, 1.0, (1, 9, 9, 9 * 2), 20, "integer"),
        ]
        for label, group, scale, shape, n, coords in cases:
            rois = make_rois(self.rng(f"{label}{group}{coords}"), shape[0], shape[1], shape[2], scale, n, coords)
            self.run(f"{label} G={group} {coords}",
                     lambda g=group, s=scale, sh=shape, r=rois, l=label: self.pool_case(l, g, s, sh, r))
        self.run("pspool R=0", lambda: self.pool_case("R=0", 7, 1.0 / 16, (1, 5, 6, 49), np.zeros((0, 5), np.float32)))

    # ---- validation ---------------------------------------------------------------------------
    def roi_validation_cases(self):
        rng = self.rng("validate-rois")
        batch = 3
        good = make_rois(rng, batch, 10, 10, 1.0 / 16, 40)
        bad_rows = [
            ("batch 1.5", [1.5, 0, 0, 10, 10], ROI_BATCH_NOT_INTEGER),
            ("batch NaN", [np.nan, 0, 0, 10, 10], ROI_BATCH_NOT_INTEGER),
            ("batch inf", [np.inf, 0, 0, 10, 10], ROI_BATCH_NOT_INTEGER),
            ("batch -1", [-1, 0, 0, 10, 10], ROI_BATCH_OUT_OF_RANGE),
            ("batch == B", [batch, 0, 0, 10, 10], ROI_BATCH_OUT_OF_RANGE),
            ("batch 1e10", [1e10, 0, 0, 10, 10], ROI_BATCH_OUT_OF_RANGE),
            ("x1 NaN", [0, np.nan, 0, 10, 10], ROI_COORD_NOT_FINITE),
            ("y2 -inf", [1, 0, 0, 10, -np.inf], ROI_COORD_NOT_FINITE),
            ("batch 2.5 + x2 NaN", [2.5, 0, 0, np.nan, 10], ROI_BATCH_NOT_INTEGER),
        ]

        def check_one(label, rois, want_index, want_code):
            for be in self.backends:
                index, code, row = be.validate_rois(rois, batch)
                ok = index == want_index and code == want_code
                detail = f"index {index} code {code}, want {want_index} {want_code}"
                if ok and want_index >= 0:
                    ok = bool(np.array_equal(row, rois[want_index], equal_nan=True))
                    detail += "" if ok else f"; bad row {row} != {rois[want_index]}"
                self.results.check(f"validate rois {label} [{be.name}]", ok, detail)

        def all_cases():
            check_one("all valid (incl. batch -0.0)", np.concatenate([good, [[-0.0, 1, 2, 3, 4]]]).astype(np.float32),
                      -1, ROI_OK)
            check_one("R=0", np.zeros((0, 5), np.float32), -1, ROI_OK)
            for k, (label, row, code) in enumerate(bad_rows):
                rois = good.copy()
                at = (7 * k + 3) % len(rois)
                rois[at] = row
                rois[-1] = [np.nan, np.nan, 0, 0, 0]  # a later bad row must not win
                check_one(f"{label} at {at}", rois, at, code)
            big = make_rois(rng, batch, 10, 10, 1.0 / 16, 70000)
            big[65001] = [0, 0, np.inf, 1, 1]
            big[69999] = [-5, 0, 0, 1, 1]
            check_one("R=70000, bad at 65001", big, 65001, ROI_COORD_NOT_FINITE)

        self.run("validate rois", all_cases)

    def argmax_validation_cases(self):
        """The gradient ops' argmax check on the device (the CPU glue checks on the host)."""
        if not self.gpu:
            return
        rng = self.rng("validate-argmax")
        gpu = next(be for be in self.backends if be.name == "gpu")

        def all_cases():
            good = rng.integers(0, 4, 70000).astype(np.int32)
            for label, edits, want in [
                    ("all valid", {}, (-1, None)),
                    ("-1 at 65001, 4 later", {65001: -1, 69000: 4}, (65001, -1)),
                    ("4 (== samples) at 3", {3: 4, 10: -2}, (3, 4)),
                    ("INT32_MIN at 69999", {69999: -2 ** 31}, (69999, -2 ** 31))]:
                a = good.copy()
                for at, v in edits.items():
                    a[at] = v
                got = gpu.validate_argmax(a, 4)
                self.results.check(f"validate argmax {label} [gpu]", got == want, f"got {got}, want {want}")
            got = gpu.validate_argmax(np.zeros(0, np.int32), 4)
            self.results.check("validate argmax n=0 [gpu]", got == (-1, None), f"got {got}")

        self.run("validate argmax", all_cases)

    def determinism_cases(self):
        """GPU forward passes give the same bits run after run; the atomicAdd backward may not
        (reported, not failed: the op refuses to run under enable_op_determinism)."""
        if not self.gpu:
            return
        gpu = next(be for be in self.backends if be.name == "gpu")
        rng = self.rng("determinism")
        spec = AlignSpec(7, 7, 2, 2, 1.0 / 16, True, True, False)
        shape = (2, 25, 31, 49 * 10)
        features = make_features(rng, shape)
        rois = make_rois(rng, 2, 25, 31, 1.0 / 16, 600)
        grad = rng.standard_normal(spec.out_shape(shape, len(rois))).astype(np.float32)

        def all_cases():
            outs = [gpu.roi_align_forward(spec, features, rois) for _ in range(3)]
            same = all(np.array_equal(o[0], outs[0][0]) and np.array_equal(o[1], outs[0][1]) for o in outs)
            self.results.check("determinism psalign forward x3 [gpu]", same, "bitwise equal" if same else "differs")
            argmax = np.ascontiguousarray(outs[0][1])
            grads = [gpu.roi_align_backward(spec, shape, rois, grad, argmax) for _ in range(3)]
            same = all(np.array_equal(g, grads[0]) for g in grads)
            spread = max(float(np.abs(g - grads[0]).max()) for g in grads)
            self.results.check("determinism psalign backward x3 [gpu] (atomicAdd; informational)", True,
                               f"bitwise equal: {same}; largest difference {spread:.3g}")

        self.run("determinism", all_cases)

    def nms_validation_cases(self):
        rng = self.rng("validate-nms")

        def check_one(label, boxes, scores, want_index, want_code):
            for be in self.backends:
                index, code, row = be.validate_nms(boxes, scores)
                ok = index == want_index and code == want_code
                detail = f"index {index} code {code}, want {want_index} {want_code}"
                if ok and want_index >= 0:
                    want_row = np.concatenate([boxes.reshape(-1, 4)[want_index], scores.reshape(-1)[want_index:][:1]])
                    ok = bool(np.array_equal(row, want_row, equal_nan=True))
                    detail += "" if ok else f"; bad row {row} != {want_row}"
                self.results.check(f"validate nms {label} [{be.name}]", ok, detail)

        def all_cases():
            boxes = make_boxes(rng, 500, "uniform")
            scores = rng.random(500).astype(np.float32)
            check_one("all valid", boxes, scores, -1, NMS_OK)
            check_one("N=0", np.zeros((0, 4), np.float32), np.zeros(0, np.float32), -1, NMS_OK)
            for label, at, box_col, score_val, code in [
                ("box NaN", 17, 2, None, NMS_BOX_NOT_FINITE),
                ("box -inf", 0, 0, None, NMS_BOX_NOT_FINITE),
                ("score inf", 250, None, np.inf, NMS_SCORE_NOT_FINITE),
                ("score NaN", 499, None, np.nan, NMS_SCORE_NOT_FINITE),
                ("box and score NaN", 77, 3, np.nan, NMS_BOX_NOT_FINITE),
            ]:
                b, s = boxes.copy(), scores.copy()
                if box_col is not None:
                    b[at, box_col] = np.nan if "NaN" in label else -np.inf
                if score_val is not None:
                    s[at] = score_val
                if at < 499:
                    s[499] = np.nan  # a later bad entry must not win
                check_one(f"{label} at {at}", b, s, at, code)
            # batched [3, 200]: the index is flat over batch * n
            bb = make_boxes(rng, 600, "uniform").reshape(3, 200, 4)
            ss = rng.random((3, 200)).astype(np.float32)
            bb[1, 13, 1] = np.inf
            ss[2, 5] = np.nan
            check_one("batched [3,200], bad box at [1,13]", bb, ss, 213, NMS_BOX_NOT_FINITE)

        self.run("validate nms", all_cases)

    # ---- NMS ------------------------------------------------------------------------------------
    def nms_case(self, label, spec, boxes, scores, class_ids=None, use_reference=True):
        """boxes [B, N, 4]: every backend against the reference image by image."""
        batch, n = scores.shape
        name = (f"nms {label}: B={batch} N={n} max={spec.max_output} iou={spec.iou_threshold:g} "
                f"score>{spec.score_threshold:g} offset={spec.box_offset:g}{' class-aware' if class_ids is not None else ''}")
        boxes = np.ascontiguousarray(boxes, np.float32)
        scores = np.ascontiguousarray(scores, np.float32)
        want_idx = np.full((batch, spec.max_output), -1, np.int32)
        want_num = np.zeros(batch, np.int32)
        if use_reference:
            for b in range(batch):
                idx, num = self.ref.nms_ref(boxes[b], scores[b], spec.max_output, spec.iou_threshold,
                                            score_threshold=spec.score_threshold,
                                            class_ids=None if class_ids is None else class_ids[b],
                                            box_offset=spec.box_offset)
                want_idx[b], want_num[b] = np.asarray(idx).reshape(-1), int(num)
        got = {}
        for be in self.backends:
            idx, num = be.nms(spec, boxes, scores, class_ids)
            got[be.name] = (idx, num)
            if use_reference:
                ok, detail = compare_exact(num, want_num)
                if ok:
                    ok, detail = compare_exact(idx, want_idx)
                    detail = f"{int(want_num.sum())} kept" if ok else detail
                else:
                    detail = f"num_valid {num.tolist()} != reference {want_num.tolist()}"
                self.results.check(f"{name} [{be.name}]", ok, detail)
        if self.cpu and self.gpu:
            (gi, gn), (ci, cn) = got["gpu"], got["cpu"]
            ok = np.array_equal(gi, ci) and np.array_equal(gn, cn)
            if ok:
                detail = f"{int(cn.sum())} kept"
            elif not np.array_equal(gn, cn):
                detail = f"num_valid gpu {gn.tolist()} != cpu {cn.tolist()}"
            else:
                detail = "indices: " + compare_exact(gi, ci)[1]
            self.results.check(f"{name} [gpu == cpu]", ok, detail)

    def nms_cases(self):
        rng = self.rng("nms")
        one = lambda a: a[None]

        def case(label, spec, boxes, scores, class_ids=None, **kw):
            self.run(f"nms {label}", lambda: self.nms_case(label, spec, boxes, scores, class_ids, **kw))

        b = make_boxes(rng, 300, "uniform")
        case("uniform", NmsSpec(100, 0.5), one(b), one(rng.random(300)))
        case("uniform all kept", NmsSpec(400, 0.5), one(b), one(rng.random(300)))
        b = make_boxes(rng, 800, "clustered")
        case("clustered", NmsSpec(300, 0.7), one(b), one(rng.random(800)))
        case("clustered offset 1 integer", NmsSpec(300, 0.7, box_offset=1.0), one(np.round(b)), one(rng.random(800)))
        case("clustered score threshold", NmsSpec(50, 0.6, score_threshold=0.5), one(b), one(rng.random(800)))
        case("clustered iou 0", NmsSpec(800, 0.0), one(b), one(rng.random(800)))
        case("clustered iou 1", NmsSpec(250, 1.0), one(b[:250]), one(rng.random(250)))
        cls = rng.integers(0, 4, 800).astype(np.int32)
        case("class-aware", NmsSpec(200, 0.3), one(b), one(rng.random(800)), one(cls))
        # Batched and class-aware: images with different contents, N not a multiple of 64.
        bb = np.stack([make_boxes(rng, 333, k) for k in ("uniform", "clustered", "clustered")])
        ss = rng.random((3, 333)).astype(np.float32)
        case("batched", NmsSpec(120, 0.5, box_offset=1.0), bb, ss)
        case("batched class-aware", NmsSpec(120, 0.5), bb, ss, rng.integers(0, 5, (3, 333)).astype(np.int32))
        # Tied scores (lower index first), duplicated boxes (IoU 1), degenerate and reversed boxes.
        b = make_boxes(rng, 400, "clustered")
        b[100:150] = b[0:50]
        b[200:220, 2] = b[200:220, 0]  # zero width
        b[220:240, [0, 2]] = b[220:240, [2, 0]]  # reversed x corners
        b[240:250, 3] = b[240:250, 1] - 0.5  # reversed and thinner than 1 (offset 1 makes it positive)
        s = (rng.integers(0, 6, 400) / 6).astype(np.float32)
        for off in (0.0, 1.0):
            case(f"ties duplicates degenerate offset {off:g}", NmsSpec(250, 0.5, box_offset=off), one(b), one(s))
        # IoU exactly at the threshold is not suppressed (> not >=).
        b = np.array([[0, 0, 4, 1], [0, 0, 2, 1], [2, 0, 4, 1], [0, 0, 8, 1], [10, 10, 13, 12]], np.float32)
        case("iou == threshold", NmsSpec(5, 0.5), one(b), one(np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)))
        # Tile boundaries of the GPU bit matrix.
        for n in (1, 63, 64, 65, 129):
            b = make_boxes(rng, n, "clustered", size=150)
            case(f"N={n}", NmsSpec(n, 0.4), one(b), one(rng.random(n)))
        b = make_boxes(rng, 50, "uniform")
        case("max_output 0", NmsSpec(0, 0.5), one(b), one(rng.random(50)))
        case("max_output 0 batched", NmsSpec(0, 0.5), np.stack([b, b]), rng.random((2, 50)))
        case("N=0", NmsSpec(10, 0.5), np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.float32))
        case("no candidate above threshold", NmsSpec(10, 0.5, score_threshold=2.0), one(b), one(rng.random(50)))
        # Larger (the reference is a plain Python loop: keep it to seconds). The benchmark shape
        # (12000 -> 2000) is checked GPU against CPU in bench_correctness.
        b = make_boxes(rng, 1500, "clustered", size=1000)
        case("N=1500 offset 1", NmsSpec(300, 0.7, box_offset=1.0), one(b), one(rng.random(1500)))
        # Subnormal scores tie with 0 (TensorFlow's CPU threads flush denormals; the kernels flush
        # them explicitly, so the harness's CPU calls, made without flushing, and the GPU agree).
        b = np.array([[20 * k, 0, 20 * k + 10, 10] for k in range(6)], np.float32)
        s = np.array([0.0, 1e-45, -1e-45, 1e-38, 0.5, -0.0], np.float32)
        case("subnormal scores tie with 0", NmsSpec(6, 0.5), one(b), one(s))
        case("subnormal scores, threshold -1e-45", NmsSpec(6, 0.5, score_threshold=-1e-45), one(b), one(s))
        # More images than a grid's z dimension holds (65535): the mask kernel runs in several launches.
        bb = make_boxes(rng, 3 * 70000, "uniform", size=30).reshape(70000, 3, 4)
        case("B=70000 (> gridDim.z)", NmsSpec(3, 0.3), bb, rng.random((70000, 3)).astype(np.float32))

    # ---- benchmark shapes ---------------------------------------------------------------------
    def bench_inputs(self):
        rng = np.random.default_rng([self.seed, 2024])
        shape = (1, 50, 84, 490)
        features = make_features(rng, shape)
        img_w, img_h = 84 * 16, 50 * 16
        wh = np.exp(rng.uniform(np.log(16), np.log(600), (2000, 2)))
        xy = rng.uniform(0, 1, (2000, 2)) * ([img_w, img_h] - wh * 0.5)
        rois = np.concatenate([np.zeros((2000, 1)), xy, np.minimum(xy + wh, [img_w - 1, img_h - 1])], axis=1)
        boxes = make_boxes(rng, 12000, "clustered", size=1000)
        scores = rng.random(12000).astype(np.float32)
        return shape, features, rois.astype(np.float32), boxes, scores

    def bench_correctness(self):
        """The benchmark shapes, GPU against CPU (too big for a slow reference)."""
        shape, features, rois, boxes, scores = self.bench_inputs()
        spec = AlignSpec(7, 7, 2, 2, 1.0 / 16, True, True, False)
        self.run("bench-shape ps_roi_align",
                 lambda: self.align_case("bench-shape", spec, shape, rois, features=features, use_reference=False))
        self.run("bench-shape nms", lambda: self.nms_case("bench-shape", NmsSpec(2000, 0.7, box_offset=1.0),
                                                          boxes[None], scores[None], use_reference=False))

    def benchmark(self, reps, rounds=3):
        """GPU milliseconds per call (cudaDeviceSynchronize around `reps` calls; best of `rounds`)."""
        gpu, lib = self.gpu, self.lib
        shape, features, rois, boxes, scores = self.bench_inputs()
        timings = {}

        def timeit(label, launch):
            try:
                for _ in range(3):
                    gpu.check(launch(), label)
                gpu.sync(label)
                best = math.inf
                for _ in range(rounds):
                    code = 0
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        code = code or launch()
                    gpu.sync(label)
                    best = min(best, (time.perf_counter() - t0) / reps)
                    gpu.check(code, label)
                timings[label] = round(best * 1e3, 4)
                print(f"TIME {label}: {best * 1e3:.3f} ms", flush=True)
            except Exception as exc:
                self.results.error(f"benchmark {label}", exc)

        try:
            f, r = gpu.put(features), gpu.put(rois)
            for spec, tag in [(AlignSpec(7, 7, 2, 2, 1.0 / 16, True, True, False), "ps_roi_align_max"),
                              (AlignSpec(7, 7, 2, 2, 1.0 / 16, True, False, False), "ps_roi_align_avg")]:
                n = 2000 * 49 * 10
                out, am = gpu.alloc(4 * n), gpu.alloc(4 * n)
                grad = gpu.put(np.random.default_rng(1).standard_normal(n).astype(np.float32))
                d = gpu.alloc(4 * int(np.prod(shape)))
                args = spec.args(shape)
                amp = am.ptr if spec.max_pool else None
                ws = gpu.workspace(spec, shape)
                wsp = ws.ptr if ws else None
                timeit(f"{tag}_forward",
                       lambda: lib.hgpu_roi_align_forward(*args, f.ptr, r.ptr, 2000, out.ptr, amp, wsp))
                timeit(f"{tag}_backward",
                       lambda: lib.hgpu_roi_align_backward(*args, r.ptr, 2000, grad.ptr, amp, d.ptr, wsp))
            n = 2000 * 49 * 10
            out, grad = gpu.alloc(4 * n), gpu.put(np.ones(n, np.float32))
            d = gpu.alloc(4 * int(np.prod(shape)))
            ws = gpu.pool_workspace(7, shape)
            timeit("ps_roi_pool_forward",
                   lambda: lib.hgpu_ps_roi_pool_forward(7, 1.0 / 16, *shape, f.ptr, r.ptr, 2000, out.ptr, ws.ptr))
            timeit("ps_roi_pool_backward",
                   lambda: lib.hgpu_ps_roi_pool_backward(7, 1.0 / 16, *shape, r.ptr, 2000, grad.ptr, d.ptr, ws.ptr))
            scratch, idx, code, row = gpu.alloc(4), ctypes.c_int(0), ctypes.c_int(0), np.zeros(5, np.float32)
            timeit("validate_rois_2000", lambda: lib.hgpu_validate_rois(r.ptr, 2000, 1, scratch.ptr, ctypes.byref(idx),
                                                                        ctypes.byref(code), ptr(row)))
            bx, sc = gpu.put(boxes), gpu.put(scores)
            oi, on = gpu.alloc(4 * 2000), gpu.alloc(4)
            wbytes = lib.hgpu_nms_workspace_bytes(1, 12000)
            ws = gpu.alloc(wbytes)
            timeit("nms_12000_to_2000_iou0.7",
                   lambda: lib.hgpu_nms(2000, 0.7, -math.inf, 1.0, bx.ptr, sc.ptr, None, 1, 12000, oi.ptr, on.ptr,
                                        ws.ptr, wbytes))
            idx64 = ctypes.c_int64(0)
            timeit("validate_nms_12000", lambda: lib.hgpu_validate_nms(bx.ptr, sc.ptr, 12000, scratch.ptr,
                                                                       ctypes.byref(idx64), ctypes.byref(code),
                                                                       ptr(row)))
            bb = gpu.put(np.stack([boxes] * 8)), gpu.put(np.stack([scores] * 8))
            oi8, on8 = gpu.alloc(4 * 8 * 2000), gpu.alloc(4 * 8)
            w8 = lib.hgpu_nms_workspace_bytes(8, 12000)
            ws8 = gpu.alloc(w8)
            timeit("nms_batch8_12000_to_2000_iou0.7",
                   lambda: lib.hgpu_nms(2000, 0.7, -math.inf, 1.0, bb[0].ptr, bb[1].ptr, None, 8, 12000, oi8.ptr,
                                        on8.ptr, ws8.ptr, w8))
        except Exception as exc:
            self.results.error("benchmark setup", exc)
        finally:
            gpu.free_all()
        return timings


BENCH_SHAPES = {
    "features": [1, 50, 84, 490], "rois": 2000, "group": 7, "sampling": [2, 2], "spatial_scale": 1 / 16,
    "nms": {"boxes": 12000, "max_output": 2000, "iou_threshold": 0.7, "box_offset": 1.0},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", help="path of libharness.so (default: ops/harness/build/libharness.so; with "
                                   "--cpu-only the newer of it and libharness_cpu.so), or of the TF op library "
                                   "lhrcnn/_lhrcnn_ops.so, which carries the same C ABI (needs TensorFlow "
                                   "installed, not imported)")
    ap.add_argument("--reference", default=DEFAULT_REFERENCE, help="the NumPy reference module (a .py path)")
    ap.add_argument("--cpu-only", action="store_true", help="CPU kernels against the reference; no GPU needed")
    ap.add_argument("--json", help="write timings and the summary to this json file")
    ap.add_argument("--reps", type=int, default=50, help="repetitions per timing (default 50)")
    ap.add_argument("--no-bench", action="store_true", help="skip the GPU timings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated groups: align,pool,validate,nms,determinism,bench-check")
    args = ap.parse_args(argv)

    results = Results()
    report = {"mode": "cpu-only" if args.cpu_only else "gpu+cpu", "seed": args.seed, "host": platform.node(),
              "timings_ms": {}, "bench_shapes": BENCH_SHAPES}
    try:
        lib_path = os.path.abspath(args.lib or default_library(args.cpu_only))
        lib = load_library(lib_path)
        ref = load_reference(os.path.abspath(args.reference))
        backends = [CpuBackend(lib)]
        if not args.cpu_only:
            gpu = GpuBackend(lib)
            backends.append(gpu)
            report.update(device=gpu.device_name, capability=gpu.capability, cuda_runtime=gpu.runtime_version,
                          cuda_driver=gpu.driver_version)
            print(f"device: {gpu.device_name} (sm_{gpu.capability}), CUDA runtime {gpu.runtime_version}, "
                  f"driver {gpu.driver_version}")
    except SetupError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    print(f"library: {lib_path} ({'CUDA' if lib.harness_has_cuda() else 'CPU-only'} build); "
          f"reference: {os.path.abspath(args.reference)}; backends: {', '.join(b.name for b in backends)}",
          flush=True)

    harness = Harness(lib, ref, backends, results, args.seed)
    groups = [g for g in args.only.split(",") if g] or ["validate", "align", "pool", "nms", "determinism",
                                                        "bench-check"]
    t0 = time.perf_counter()
    if "validate" in groups:
        harness.roi_validation_cases()
        harness.argmax_validation_cases()
        harness.nms_validation_cases()
    if "determinism" in groups:
        harness.determinism_cases()
    if "align" in groups:
        harness.align_cases()
    if "pool" in groups:
        harness.pool_cases()
    if "nms" in groups:
        harness.nms_cases()
    if "bench-check" in groups and harness.gpu:
        harness.bench_correctness()
    if harness.gpu and not args.no_bench:
        report["timings_ms"] = harness.benchmark(args.reps)
    elapsed = time.perf_counter() - t0

    report.update(passed=results.passed, failed=len(results.failed), failures=results.failed,
                  seconds=round(elapsed, 2))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    print(f"{results.passed} passed, {len(results.failed)} failed ({elapsed:.1f} s)")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
