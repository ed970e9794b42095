"""ctypes bindings of libharness.so (harness_api.cu.cc) and two backends with the same calls: the CPU
kernels on host arrays, and the CUDA launchers on device copies. Used by run_harness.py. The TF op
library (lhrcnn/_lhrcnn_ops.so) carries the same C ABI: loaded in its place, with TensorFlow's
framework library it links against, the checks run on the binary TensorFlow loads.

Every output buffer is filled with garbage first (NaN / 0x7f7f7f7f), so a kernel that leaves an
element unwritten is caught by the comparison.
"""
import ctypes
import math
import os
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BUILD = os.path.join(HERE, "build")
ABI_VERSION = 2


class SetupError(Exception):
    """The harness cannot run at all (exit code 2)."""


# ---------------------------------------------------------------------------------------------
# Library loading.

_P = ctypes.c_void_p
_I = ctypes.c_int
_F = ctypes.c_float
_I64 = ctypes.c_int64
_SZ = ctypes.c_size_t
_ALIGN_ARGS = [_I, _I, _I, _I, _F, _I, _I, _I, _I, _I, _I, _I]  # params + feature shape

CPU_SIGNATURES = {
    "harness_has_cuda": (_I, []),
    "harness_abi_version": (_I, []),
    "hcpu_first_invalid_roi": (_I, [_P, _I, _I, _P]),
    "hcpu_first_invalid_nms_input": (_I64, [_P, _P, _I64, _P]),
    "hcpu_roi_align_forward": (_I, _ALIGN_ARGS + [_P, _P, _I, _P, _P]),
    "hcpu_roi_align_backward": (_I, _ALIGN_ARGS + [_P, _I, _P, _P, _P]),
    "hcpu_ps_roi_pool_forward": (_I, [_I, _F, _I, _I, _I, _I, _P, _P, _I, _P]),
    "hcpu_ps_roi_pool_backward": (_I, [_I, _F, _I, _I, _I, _I, _P, _I, _P, _P]),
    "hcpu_nms": (_I, [_I, _F, _F, _F, _P, _P, _P, _I, _P, _P]),
}
GPU_SIGNATURES = {
    "hgpu_device_count": (_I, [_P]),
    "hgpu_device_name": (_I, [_I, ctypes.c_char_p, _I]),
    "hgpu_device_capability": (_I, [_I, _P]),
    "hgpu_runtime_version": (_I, [_P]),
    "hgpu_driver_version": (_I, [_P]),
    "hgpu_error_string": (ctypes.c_char_p, [_I]),
    "hgpu_last_error": (_I, []),
    "hgpu_malloc": (_I, [ctypes.POINTER(_P), _SZ]),
    "hgpu_free": (_I, [_P]),
    "hgpu_memcpy_h2d": (_I, [_P, _P, _SZ]),
    "hgpu_memcpy_d2h": (_I, [_P, _P, _SZ]),
    "hgpu_memset": (_I, [_P, _I, _SZ]),
    "hgpu_synchronize": (_I, []),
    "hgpu_validate_rois": (_I, [_P, _I, _I, _P, _P, _P, _P]),
    "hgpu_validate_argmax": (_I, [_P, _I64, _I, _P, _P, _P]),
    "hgpu_roi_align_workspace_floats": (_I64, [_I, _I, _I, _I, _I, _I, _I]),
    "hgpu_roi_align_forward": (_I, _ALIGN_ARGS + [_P, _P, _I, _P, _P, _P]),
    "hgpu_roi_align_backward": (_I, _ALIGN_ARGS + [_P, _I, _P, _P, _P, _P]),
    "hgpu_ps_roi_pool_workspace_floats": (_I64, [_I, _I, _I, _I, _I]),
    "hgpu_ps_roi_pool_forward": (_I, [_I, _F, _I, _I, _I, _I, _P, _P, _I, _P, _P]),
    "hgpu_ps_roi_pool_backward": (_I, [_I, _F, _I, _I, _I, _I, _P, _I, _P, _P, _P]),
    "hgpu_validate_nms": (_I, [_P, _P, _I64, _P, _P, _P, _P]),
    "hgpu_nms_workspace_bytes": (_SZ, [_I, _I]),
    "hgpu_nms": (_I, [_I, _F, _F, _F, _P, _P, _P, _I, _I, _P, _P, _P, _SZ]),
}


def load_library(path):
    if not os.path.exists(path):
        raise SetupError(f"no harness library at {path}: run `bash ops/harness/build.sh` first "
                         "(HARNESS_CPU_ONLY=1 for the CPU-only variant)")
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        if "libtensorflow_framework" not in str(exc):
            raise SetupError(f"cannot load {path}: {exc}") from None
        _load_tensorflow_framework(path)
        lib = ctypes.CDLL(path)
    if not hasattr(lib, "harness_abi_version"):
        raise SetupError(f"{path} has no harness ABI (harness_abi_version): an op library built before the "
                         "harness was linked into it? Rebuild it (`make ops`)")
    for name, (restype, argtypes) in CPU_SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    if lib.harness_abi_version() != ABI_VERSION:
        raise SetupError(f"{path} is stale (ABI {lib.harness_abi_version()}, want {ABI_VERSION}): rebuild it")
    if lib.harness_has_cuda():
        for name, (restype, argtypes) in GPU_SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    return lib


def _load_tensorflow_framework(path):
    """Loads the libtensorflow_framework.so.2 of the installed TensorFlow (found without importing
    it), for the op library at `path`, which names it as a dependency: loaded first, it satisfies
    that dependency by its soname. Its symbols stay local: loaded globally, the BoringSSL inside
    it would interpose on the libcrypto that Python's hashlib uses."""
    import importlib.util
    spec = importlib.util.find_spec("tensorflow")
    folders = list(spec.submodule_search_locations or []) if spec else []
    found = [p for p in (os.path.join(f, "libtensorflow_framework.so.2") for f in folders) if os.path.exists(p)]
    if not found:
        raise SetupError(f"{path} is the TF op library: it needs TensorFlow's libtensorflow_framework.so.2, and "
                         "no TensorFlow is installed for this Python (use ops/harness/build/libharness.so instead)")
    try:
        ctypes.CDLL(found[0])
    except OSError as exc:
        raise SetupError(f"cannot load {found[0]} for {path}: {exc}") from None


def default_library(cpu_only):
    full = os.path.join(DEFAULT_BUILD, "libharness.so")
    cpu = os.path.join(DEFAULT_BUILD, "libharness_cpu.so")
    if cpu_only:  # either works: take the newer one
        present = [p for p in (full, cpu) if os.path.exists(p)]
        return max(present, key=os.path.getmtime) if present else cpu
    return full


def ptr(a):
    """Address of a host array's data, or None."""
    return None if a is None else a.ctypes.data


# ---------------------------------------------------------------------------------------------
# Parameters and backends (the same calls on the CPU kernels and on the CUDA launchers).

@dataclass(frozen=True)
class AlignSpec:
    pooled_h: int
    pooled_w: int
    sample_h: int
    sample_w: int
    spatial_scale: float
    position_sensitive: bool
    max_pool: bool
    aligned: bool

    @property
    def planes(self):
        return self.pooled_h * self.pooled_w if self.position_sensitive else 1

    def args(self, shape):
        return [self.pooled_h, self.pooled_w, self.sample_h, self.sample_w, self.spatial_scale,
                int(self.position_sensitive), int(self.max_pool), int(self.aligned)] + list(shape)

    def out_shape(self, shape, num_rois):
        return (num_rois, self.pooled_h, self.pooled_w, shape[3] // self.planes)

    def text(self):
        kind = "ps_roi_align" if self.position_sensitive else "roi_align"
        return (f"{kind} {self.pooled_h}x{self.pooled_w} s{self.sample_h}x{self.sample_w} "
                f"{'max' if self.max_pool else 'avg'}{' aligned' if self.aligned else ''} "
                f"scale={self.spatial_scale:g}")


@dataclass(frozen=True)
class NmsSpec:
    max_output: int
    iou_threshold: float
    score_threshold: float = -math.inf
    box_offset: float = 0.0


class CpuBackend:
    name = "cpu"

    def __init__(self, lib):
        self.lib = lib

    def _check(self, code, what):
        if code != 0:
            raise RuntimeError(f"{what} failed on the CPU (the C++ side threw)")

    def roi_align_forward(self, spec, features, rois):
        out = np.full(spec.out_shape(features.shape, len(rois)), np.nan, np.float32)
        argmax = np.full(out.shape, 0x7F7F7F7F, np.int32) if spec.max_pool else None
        self._check(self.lib.hcpu_roi_align_forward(*spec.args(features.shape), ptr(features), ptr(rois),
                                                    len(rois), ptr(out), ptr(argmax)), "RoiAlignForwardCpu")
        return out, argmax

    def roi_align_backward(self, spec, shape, rois, grad, argmax):
        d = np.full(shape, np.nan, np.float32)
        self._check(self.lib.hcpu_roi_align_backward(*spec.args(shape), ptr(rois), len(rois), ptr(grad),
                                                     ptr(argmax), ptr(d)), "RoiAlignBackwardCpu")
        return d

    def ps_roi_pool_forward(self, group, scale, features, rois):
        out = np.full((len(rois), group, group, features.shape[3] // (group * group)), np.nan, np.float32)
        self._check(self.lib.hcpu_ps_roi_pool_forward(group, scale, *features.shape, ptr(features), ptr(rois),
                                                      len(rois), ptr(out)), "PsRoiPoolForwardCpu")
        return out

    def ps_roi_pool_backward(self, group, scale, shape, rois, grad):
        d = np.full(shape, np.nan, np.float32)
        self._check(self.lib.hcpu_ps_roi_pool_backward(group, scale, *shape, ptr(rois), len(rois), ptr(grad),
                                                       ptr(d)), "PsRoiPoolBackwardCpu")
        return d

    def validate_rois(self, rois, batch):
        code = ctypes.c_int(-7)
        index = self.lib.hcpu_first_invalid_roi(ptr(rois), len(rois), batch, ctypes.byref(code))
        return index, code.value, (rois[index].copy() if index >= 0 else None)

    def validate_nms(self, boxes, scores):
        code = ctypes.c_int(-7)
        n = scores.size
        index = self.lib.hcpu_first_invalid_nms_input(ptr(boxes), ptr(scores), n, ctypes.byref(code))
        row = None
        if index >= 0:
            row = np.concatenate([boxes.reshape(-1, 4)[index], scores.reshape(-1)[index:index + 1]])
        return index, code.value, row

    def nms(self, spec, boxes, scores, class_ids):
        """boxes [B, N, 4], scores [B, N], class_ids [B, N] or None -> indices [B, K], num_valid [B]."""
        batch, n = scores.shape
        out = np.full((batch, spec.max_output), 0x7F7F7F7F, np.int32)
        num = np.full(batch, 0x7F7F7F7F, np.int32)
        for b in range(batch):
            cls = None if class_ids is None else np.ascontiguousarray(class_ids[b])
            bx, sc = np.ascontiguousarray(boxes[b]), np.ascontiguousarray(scores[b])
            o, v = out[b], num[b:b + 1]
            self._check(self.lib.hcpu_nms(spec.max_output, spec.iou_threshold, spec.score_threshold,
                                          spec.box_offset, ptr(bx), ptr(sc), ptr(cls), n, ptr(o), ptr(v)),
                        "NmsCpu")
        return out, num


class CudaError(RuntimeError):
    pass


class DeviceBuffer:
    def __init__(self, gpu, nbytes):
        self.gpu, self.nbytes, self.ptr = gpu, nbytes, None
        p = _P()
        gpu.check(gpu.lib.hgpu_malloc(ctypes.byref(p), nbytes), f"cudaMalloc({nbytes})")
        self.ptr = p.value
        gpu.live.append(self)

    def free(self):
        if self.ptr is not None:
            self.gpu.lib.hgpu_free(self.ptr)
            self.ptr = None


class GpuBackend:
    name = "gpu"

    def __init__(self, lib):
        if not lib.harness_has_cuda():
            raise SetupError("this library is the CPU-only variant: rebuild without HARNESS_CPU_ONLY, "
                             "or pass --cpu-only")
        self.lib = lib
        self.live = []
        count = ctypes.c_int(0)
        e = lib.hgpu_device_count(ctypes.byref(count))
        if e != 0 or count.value == 0:
            raise SetupError(f"no usable CUDA device ({self.error_text(e) if e else 'device count is 0'}); "
                             "use --cpu-only on a machine without a GPU")
        name = ctypes.create_string_buffer(256)
        self.check(lib.hgpu_device_name(0, name, 256), "cudaGetDeviceProperties")
        cc, rt, drv = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        self.check(lib.hgpu_device_capability(0, ctypes.byref(cc)), "cudaDeviceGetAttribute")
        lib.hgpu_runtime_version(ctypes.byref(rt))
        lib.hgpu_driver_version(ctypes.byref(drv))
        self.device_name = name.value.decode()
        self.capability = cc.value
        self.runtime_version = rt.value
        self.driver_version = drv.value

    def error_text(self, code):
        return f"error {code}: {self.lib.hgpu_error_string(code).decode()}"

    def check(self, code, what):
        if code != 0:
            raise CudaError(f"{what}: CUDA {self.error_text(code)}")

    def sync(self, what="cudaDeviceSynchronize"):
        self.check(self.lib.hgpu_synchronize(), what)

    # memory
    def alloc(self, nbytes, fill_byte=None):
        buf = DeviceBuffer(self, nbytes)
        if fill_byte is not None and nbytes:
            self.check(self.lib.hgpu_memset(buf.ptr, fill_byte, nbytes), "cudaMemset")
        return buf

    def put(self, a):
        a = np.ascontiguousarray(a)
        buf = self.alloc(a.nbytes)
        if a.nbytes:
            self.check(self.lib.hgpu_memcpy_h2d(buf.ptr, ptr(a), a.nbytes), "cudaMemcpy H2D")
        return buf

    def get(self, buf, shape, dtype):
        a = np.empty(shape, dtype)
        if a.nbytes:
            self.check(self.lib.hgpu_memcpy_d2h(ptr(a), buf.ptr, a.nbytes), "cudaMemcpy D2H")
        return a

    def free_all(self):
        for b in self.live:
            b.free()
        self.live = []

    def workspace(self, spec, shape):
        """The RoI-Align launchers' scratch for this map (None when they need none), filled with
        garbage; pool_workspace, the PS-RoI pooling launchers'."""
        floats = self.lib.hgpu_roi_align_workspace_floats(spec.pooled_h, spec.pooled_w, int(spec.position_sensitive),
                                                          *shape)
        return self.alloc(4 * floats, 0xFF) if floats else None

    def pool_workspace(self, group, shape):
        floats = self.lib.hgpu_ps_roi_pool_workspace_floats(group, *shape)
        return self.alloc(4 * floats, 0xFF) if floats else None

    # kernels: every output is filled with garbage first (0xff = NaN / -1, 0x7f = huge) so a
    # launcher that leaves an element unwritten is caught.
    def roi_align_forward(self, spec, features, rois):
        shape = spec.out_shape(features.shape, len(rois))
        n = int(np.prod(shape))
        f, r = self.put(features), self.put(rois)
        out = self.alloc(4 * n, 0xFF)
        am = self.alloc(4 * n, 0x7F) if spec.max_pool else None
        ws = self.workspace(spec, features.shape)
        self.check(self.lib.hgpu_roi_align_forward(*spec.args(features.shape), f.ptr, r.ptr, len(rois), out.ptr,
                                                   am.ptr if am else None, ws.ptr if ws else None),
                   "RoiAlignForwardGpu")
        self.sync("RoiAlignForwardGpu (sync)")
        return self.get(out, shape, np.float32), (self.get(am, shape, np.int32) if am else None)

    def roi_align_backward(self, spec, shape, rois, grad, argmax):
        r, g = self.put(rois), self.put(grad)
        am = self.put(argmax) if argmax is not None else None
        n = int(np.prod(shape))
        d = self.alloc(4 * n, 0xFF)
        ws = self.workspace(spec, shape)
        self.check(self.lib.hgpu_roi_align_backward(*spec.args(shape), r.ptr, len(rois), g.ptr,
                                                    am.ptr if am else None, d.ptr, ws.ptr if ws else None),
                   "RoiAlignBackwardGpu")
        self.sync("RoiAlignBackwardGpu (sync)")
        return self.get(d, shape, np.float32)

    def ps_roi_pool_forward(self, group, scale, features, rois):
        shape = (len(rois), group, group, features.shape[3] // (group * group))
        f, r = self.put(features), self.put(rois)
        out = self.alloc(4 * int(np.prod(shape)), 0xFF)
        ws = self.pool_workspace(group, features.shape)
        self.check(self.lib.hgpu_ps_roi_pool_forward(group, scale, *features.shape, f.ptr, r.ptr, len(rois),
                                                     out.ptr, ws.ptr if ws else None), "PsRoiPoolForwardGpu")
        self.sync("PsRoiPoolForwardGpu (sync)")
        return self.get(out, shape, np.float32)

    def ps_roi_pool_backward(self, group, scale, shape, rois, grad):
        r, g = self.put(rois), self.put(grad)
        d = self.alloc(4 * int(np.prod(shape)), 0xFF)
        ws = self.pool_workspace(group, shape)
        self.check(self.lib.hgpu_ps_roi_pool_backward(group, scale, *shape, r.ptr, len(rois), g.ptr, d.ptr,
                                                      ws.ptr if ws else None), "PsRoiPoolBackwardGpu")
        self.sync("PsRoiPoolBackwardGpu (sync)")
        return self.get(d, shape, np.float32)

    def validate_rois(self, rois, batch):
        r = self.put(rois)
        scratch = self.alloc(4)
        index, code = ctypes.c_int(-7), ctypes.c_int(-7)
        row = np.full(5, -12345.0, np.float32)
        self.check(self.lib.hgpu_validate_rois(r.ptr, len(rois), batch, scratch.ptr, ctypes.byref(index),
                                               ctypes.byref(code), ptr(row)), "ValidateRoisGpu")
        return index.value, code.value, (row if index.value >= 0 else None)

    def validate_argmax(self, argmax, samples):
        """(first index of a value outside [0, samples) or -1, that value) by ValidateArgmaxGpu."""
        a = self.put(np.ascontiguousarray(argmax, np.int32))
        scratch = self.alloc(8)
        index, value = ctypes.c_int64(-7), ctypes.c_int32(-7)
        self.check(self.lib.hgpu_validate_argmax(a.ptr, argmax.size, samples, scratch.ptr, ctypes.byref(index),
                                                 ctypes.byref(value)), "ValidateArgmaxGpu")
        return index.value, (value.value if index.value >= 0 else None)

    def validate_nms(self, boxes, scores):
        b, s = self.put(boxes), self.put(scores)
        scratch = self.alloc(4)
        index, code = ctypes.c_int64(-7), ctypes.c_int(-7)
        row = np.full(5, -12345.0, np.float32)
        self.check(self.lib.hgpu_validate_nms(b.ptr, s.ptr, scores.size, scratch.ptr, ctypes.byref(index),
                                              ctypes.byref(code), ptr(row)), "ValidateNmsGpu")
        return index.value, code.value, (row if index.value >= 0 else None)

    def nms(self, spec, boxes, scores, class_ids):
        batch, n = scores.shape
        bx, sc = self.put(boxes.astype(np.float32)), self.put(scores.astype(np.float32))
        cls = self.put(class_ids.astype(np.int32)) if class_ids is not None else None
        out = self.alloc(4 * batch * spec.max_output, 0x7F)
        num = self.alloc(4 * batch, 0x7F)
        wbytes = self.lib.hgpu_nms_workspace_bytes(batch, n)
        ws = self.alloc(wbytes)
        self.check(self.lib.hgpu_nms(spec.max_output, spec.iou_threshold, spec.score_threshold, spec.box_offset,
                                     bx.ptr, sc.ptr, cls.ptr if cls else None, batch, n, out.ptr, num.ptr, ws.ptr,
                                     wbytes), "NmsGpu")
        self.sync("NmsGpu (sync)")
        return self.get(out, (batch, spec.max_output), np.int32), self.get(num, (batch,), np.int32)
