"""Python API of lhrcnn's custom ops, their pure-TF twins and gradients.

Every op takes `backend=None|"custom"|"tf"`. `None` uses the compiled op when
lhrcnn/_lhrcnn_ops.so loaded (else the twin, with one warning); the environment variable
LHRCNN_OPS=tf|custom overrides that default. The twins use stock TensorFlow ops only, so a
SavedModel built on them runs on a stock TF Serving; they compute the same functions as the
compiled ops (to float32 rounding), forward and backward.

The build (setup.py) writes lhrcnn/_lhrcnn_ops.json next to the library: the TensorFlow it was
built against, CUDA, or why the build failed. At import the recorded TensorFlow version is
compared with the running one; on a difference one warning line names both and the rebuild
command, and a library of another major.minor release is not loaded (the twins run instead).
build_info() returns all of it.

Conventions: features are NHWC float32 [B, H, W, C]; RoIs are [R, 5] float32 =
(batch_index, x1, y1, x2, y2) in input-image pixels; position-sensitive ops read input channel
c = (k * G + ph) * G + pw for output (ph, pw, k).

Difference from the original kernels (docs/original.md#ps-roi-align): when a sample coordinate is an
exact integer the original added the same pixel twice (value x2, x4 at integer x and y); here
every sample is plain bilinear interpolation on the map zero-padded by one pixel.
"""
import contextlib
import json
import logging
import math
import os
import sys

import numpy as np
import tensorflow as tf

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_PATH = os.path.join(_PACKAGE_DIR, "_lhrcnn_ops.so")
_RECORD_PATH = os.path.join(_PACKAGE_DIR, "_lhrcnn_ops.json")  # written by setup.py's build_ops
REBUILD_HINT = ("rebuild the ops: `pip install --force-reinstall --no-deps .` from the source checkout, "
                "or `make ops` in it")
_library = None
_load_error = None
_warned = False


def build_record():
    """The build record setup.py wrote next to the library (a dict: built, error, tensorflow,
    cuda, archs, ...), or None when there is none (a library built another way, or no build)."""
    try:
        with open(_RECORD_PATH) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return {"built": None, "error": f"unreadable build record {_RECORD_PATH}: {e}"}


def _major_minor(version):
    return tuple(version.split(".")[:2])


def _version_mismatch():
    """A one-line message when the record says the library was built against another
    TensorFlow than the running one, else None."""
    record = build_record() or {}
    built_with = record.get("tensorflow")
    if not record.get("built") or not built_with or built_with == tf.__version__:
        return None
    return (f"lhrcnn: the custom ops in {_LIBRARY_PATH} were built against TensorFlow {built_with} but "
            f"TensorFlow {tf.__version__} is running; {REBUILD_HINT}")


# Checked at import, so that a TensorFlow upgrade under an installed lhrcnn is reported at once.
_MISMATCH = _version_mismatch()
if _MISMATCH:
    print(f"WARNING: {_MISMATCH}", file=sys.stderr, flush=True)


def _load_library():
    """Loads the op library once; on failure keeps the reason in _load_error and returns None.
    A library built against another TensorFlow major.minor is not loaded: its ABI differs."""
    global _library, _load_error
    if _library is not None or _load_error is not None:
        return _library
    record = build_record() or {}
    if not os.path.exists(_LIBRARY_PATH):
        if record.get("built") is False and record.get("error"):
            _load_error = f"the custom ops were not built when lhrcnn was installed: {record['error']}; {REBUILD_HINT}"
        else:
            _load_error = f"{_LIBRARY_PATH} does not exist; {REBUILD_HINT}"
        return None
    if _MISMATCH and _major_minor(record["tensorflow"]) != _major_minor(tf.__version__):
        _load_error = f"{_MISMATCH} (the library was not loaded)"
        return None
    try:
        _library = tf.load_op_library(_LIBRARY_PATH)
    except (tf.errors.NotFoundError, OSError) as e:  # ABI mismatch, missing symbols
        _load_error = f"{_LIBRARY_PATH} failed to load: {e}" + (f" ({_MISMATCH})" if _MISMATCH else "")
    return _library


def _lib():
    """The loaded op library (resolve_backend has checked it is available)."""
    library = _load_library()
    if library is None:
        raise RuntimeError(f"the op library is unavailable: {_load_error}")
    return library


def library_path():
    """Path of the compiled op library."""
    return _LIBRARY_PATH


def custom_ops_available():
    """True when the compiled op library is loaded."""
    return _load_library() is not None


def custom_ops_load_error():
    """Why the compiled library is not available, or None."""
    _load_library()
    return _load_error


def build_info():
    """How the compiled ops were built and whether they run here (what `lhrcnn info` reports).

    Returns a dict: loaded (bool), load_error (str or None), library (path), record (path),
    built (bool from the build record; None without one), build_error (the recorded reason a
    build failed), tensorflow_built (the version the library was built against),
    tensorflow_runtime (tf.__version__), version_match (bool; None when unknown), cuda (CUDA
    kernels compiled in), cuda_version, cuda_archs (list), cuda_runtime (the CUDA runtime the
    kernels use, from the build record), tensorflow_runtime_cuda (the running
    TensorFlow has CUDA support) and backend (what the ops use when called with backend=None:
    "custom" or "tf", or an error message when LHRCNN_OPS is invalid).
    """
    record = build_record()
    loaded = custom_ops_available()
    built_with = (record or {}).get("tensorflow")
    env = os.environ.get("LHRCNN_OPS", "").strip()
    if env:
        backend = env if env in ("tf", "custom") else f"invalid LHRCNN_OPS={env!r}"
    else:
        backend = "custom" if loaded else "tf"
    return {
        "loaded": loaded,
        "load_error": _load_error,
        "library": _LIBRARY_PATH,
        "record": _RECORD_PATH if record is not None else None,
        "built": (record or {}).get("built"),
        "build_error": (record or {}).get("error"),
        "tensorflow_built": built_with,
        "tensorflow_runtime": tf.__version__,
        "version_match": None if not built_with else built_with == tf.__version__,
        "cuda": bool((record or {}).get("cuda")),
        "cuda_version": (record or {}).get("cuda_version"),
        "cuda_archs": list((record or {}).get("archs") or []),
        "cuda_runtime": (record or {}).get("cuda_runtime"),
        "tensorflow_runtime_cuda": tf.test.is_built_with_cuda(),
        "backend": backend,
    }


def resolve_backend(backend=None):
    """The backend an op call with `backend` would use: "custom" or "tf"."""
    global _warned
    if backend is None:
        env = os.environ.get("LHRCNN_OPS", "").strip()
        if env:
            if env not in ("tf", "custom"):
                raise ValueError(f"LHRCNN_OPS must be 'tf' or 'custom', got {env!r}")
            backend = env
        elif custom_ops_available():
            backend = "custom"
        else:
            if not _warned:
                logging.warning("lhrcnn: compiled ops unavailable (%s); using the pure-TF twins",
                                _load_error)
                _warned = True
            backend = "tf"
    if backend not in ("tf", "custom"):
        raise ValueError(f"backend must be None, 'tf' or 'custom', got {backend!r}")
    if backend == "custom" and not custom_ops_available():
        raise RuntimeError(f"backend='custom' requested but the op library is unavailable: {_load_error}")
    return backend


# ----------------------------------------------------------------------------- argument checks


# The largest attribute values the ops accept, on both backends (the compiled ops check the same
# limits, ops/kernels/common.h): every count and buffer size they imply fits in int32, and the work
# of one call stays proportional to its output (at most MAX_SAMPLING_RATIO² samples per output
# value), so one request cannot stall a server.
MAX_GROUP_SIZE = 64
MAX_OUTPUT_SIZE = 256
MAX_SAMPLING_RATIO = 64
MAX_NMS_OUTPUT = 1 << 24
MAX_DEPTHWISE_KERNEL = 15
MAX_DEPTHWISE_STRIDE = 1 << 16


def _positive_int(name, value, maximum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [1, {maximum}], got {value!r}")
    return int(value)


def _pair(name, value, maximum):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer in [1, {maximum}] or a pair of them, got {value!r}") from None
    return _positive_int(name, a, maximum), _positive_int(name, b, maximum)


def _positive_float(name, value):
    """A positive number that is a finite, normal float32 (the ops' attribute type): 1e-300 or
    1e-40 (0 or subnormal in float32) and 1e300 (inf) are refused, as the compiled ops refuse them."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    single = np.float32(v) if math.isfinite(v) and abs(v) <= float(np.finfo(np.float32).max) else np.float32(np.inf)
    if not (v > 0 and np.isfinite(single) and single >= np.finfo(np.float32).tiny):
        raise ValueError(f"{name} must be a positive finite number that is a normal float32 "
                         f"(in [{np.finfo(np.float32).tiny:.3g}, {np.finfo(np.float32).max:.3g}]), got {value!r}")
    return v


def _pooling(value):
    if value not in ("max", "avg"):
        raise ValueError(f"pooling must be 'max' or 'avg', got {value!r}")
    return value


def _check_pool_inputs(op, features, rois, channel_divisor):
    features = tf.convert_to_tensor(features)
    rois = tf.convert_to_tensor(rois)
    if features.dtype != tf.float32 or rois.dtype != tf.float32:
        raise ValueError(f"{op}: features and rois must be float32, got {features.dtype.name} and "
                         f"{rois.dtype.name}")
    if features.shape.rank is not None and features.shape.rank != 4:
        raise ValueError(f"{op}: features must be rank 4 [B, H, W, C] (NHWC), got shape {features.shape}")
    if rois.shape.rank is not None and (rois.shape.rank != 2 or rois.shape[1] not in (None, 5)):
        raise ValueError(f"{op}: rois must have shape [R, 5] = (batch_index, x1, y1, x2, y2), got "
                         f"shape {rois.shape}")
    channels = features.shape[3] if features.shape.rank == 4 else None
    if channels is not None and channels % channel_divisor:
        raise ValueError(f"{op}: features has {channels} channels, which is not divisible by "
                         f"{channel_divisor} (group_size^2, the number of position-sensitive bins)")
    for axis, what in ((1, "height"), (2, "width")):
        if features.shape.rank == 4 and features.shape[axis] == 0:
            raise ValueError(f"{op}: features must have non-zero {what}, got shape {features.shape}")
    return features, rois


# ----------------------------------------------------------------------------- twin helpers


def _runtime_checks(op, features, rois, channel_divisor):
    """Assertions the twins run on values (InvalidArgumentError naming the input)."""
    shape = tf.shape(features, out_type=tf.int64)
    checks = [
        tf.debugging.assert_rank(features, 4, message=f"{op}: features must be rank 4 [B, H, W, C]"),
        tf.debugging.assert_equal(tf.shape(rois)[-1], 5, message=f"{op}: rois must have shape [R, 5]"),
        tf.debugging.assert_equal(shape[3] % channel_divisor, tf.constant(0, tf.int64),
                                  message=f"{op}: features channels must be divisible by {channel_divisor}"),
        tf.debugging.assert_greater(tf.reduce_min(shape[1:3]), tf.constant(0, tf.int64),
                                    message=f"{op}: features must have non-zero height and width"),
    ]
    b = rois[:, 0]
    ok = (tf.math.is_finite(b) & tf.equal(tf.floor(b), b) & (b >= 0)
          & (b < tf.cast(shape[0], tf.float32)) & tf.reduce_all(tf.math.is_finite(rois[:, 1:]), axis=1))
    first_bad = tf.argmin(tf.concat([tf.cast(ok, tf.int32), [0]], 0), output_type=tf.int32)
    bad_row = tf.gather(tf.concat([rois, tf.zeros([1, 5], rois.dtype)], 0), first_bad)
    checks.append(tf.debugging.Assert(
        tf.reduce_all(ok),
        [f"{op}: invalid RoI: the batch index must be a whole number in [0, B) and the coordinates "
         "finite; first bad row index:", first_bad, "row (batch_index, x1, y1, x2, y2):", bad_row,
         "B:", shape[0]], summarize=8))
    return checks


def _axis_taps(coords, size):
    """Bilinear taps of sample coordinates along one axis on a map of `size` pixels zero-padded
    by one: (lo, hi) int32 indices clamped to the map and their weights (0 outside it)."""
    size_f = tf.cast(size, tf.float32)
    inside = (coords > -1.0) & (coords < size_f)
    fl = tf.floor(tf.clip_by_value(coords, -1.0, size_f))
    lo = tf.cast(fl, tf.int32)
    l = coords - fl
    h = 1.0 - l
    size_i = tf.cast(size, tf.int32)
    zero = tf.zeros_like(coords)
    w_lo = tf.where(inside & (lo >= 0), h, zero)
    w_hi = tf.where(inside & (lo + 1 <= size_i - 1), l, zero)
    return (tf.clip_by_value(lo, 0, size_i - 1), tf.clip_by_value(lo + 1, 0, size_i - 1), w_lo, w_hi)


def _opaque(value, dtype=tf.float32):
    """A constant that graph rewrites cannot fold into the arithmetic around it. Grappler's
    constant folding rewrites e.g. `c1 * (x / c2)` with constants c1, c2 into `(c1 / c2) * x`,
    which rounds differently: at a bin edge that is a whole number, floor / ceil then move by one
    pixel, and the twin stops matching the kernels (which compute each step in float32, in the
    order written). A PlaceholderWithDefault is not a constant to Grappler (it can be fed)."""
    value = np.asarray(value, dtype.as_numpy_dtype)
    return tf.raw_ops.PlaceholderWithDefault(input=tf.constant(value), shape=value.shape)


_FLOAT64_EMULATION = [True]


@contextlib.contextmanager
def float32_twin_arithmetic():
    """Within it, the twins trace _div and _mul_add as plain float32 ops instead of their float64
    emulation, and PS-RoI pooling sums in float32: for converters without float64 arithmetic
    (LiteRT's builtin ops), which apply no rewrite that reorders float32 rounding. Graph mode and
    XLA need the emulation (see _div)."""
    _FLOAT64_EMULATION.append(False)
    try:
        yield
    finally:
        _FLOAT64_EMULATION.pop()


def _div(x, divisor):
    """float32 x / divisor (a positive whole number), rounded as float32 division rounds, in
    graph mode and under XLA alike. XLA rewrites a division by a constant into a multiplication by
    its float32 reciprocal (3 / 7 then rounds up, and 7 · (3 / 7) exceeds 3); in float64 the
    reciprocal's error is far below the distance from any quotient of a float32 by a small whole
    number to a float32 rounding boundary, so the float64 quotient, however computed, rounds to
    the float32 one."""
    if not _FLOAT64_EMULATION[-1]:
        return x / _opaque(divisor)
    return tf.cast(tf.cast(x, tf.float64) / _opaque(divisor, tf.float64), tf.float32)


def _mul_add(a, b, c):
    """float32 a · b + c rounded after the product and after the sum, as the kernels compute it
    (-ffp-contract=off), in every mode: through float64, where the product of two float32s is
    exact and the sum rounds to the float32 sum, so XLA cannot fuse the two into one FMA."""
    if not _FLOAT64_EMULATION[-1]:
        return a * b + c
    product = tf.cast(tf.cast(a, tf.float64) * tf.cast(b, tf.float64), tf.float32)
    return tf.cast(tf.cast(product, tf.float64) + tf.cast(c, tf.float64), tf.float32)


def _sample_fractions(pooled, samples):
    """p + (i + 0.5) / S for every sample row, float32 as the kernels compute it."""
    p = np.repeat(np.arange(pooled, dtype=np.float32), samples)
    i = np.tile(np.arange(samples, dtype=np.float32), pooled)
    return _opaque(p + (i + np.float32(0.5)) / np.float32(samples))


def _align_twin(features, rois, pooled_h, pooled_w, sampling, spatial_scale, pooling, aligned,
                position_sensitive):
    """RoI-Align family in stock TF ops: gathers the K-vectors of the 4 taps of every sample
    from a plane-major copy of the map, then max (first maximal sample) or mean."""
    sh, sw = sampling
    shape = tf.shape(features)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    planes = pooled_h * pooled_w if position_sensitive else 1
    k = channels // planes
    # [B, H, W, K, PH, PW] -> [B, PH, PW, H, W, K]: the K channels of one bin are contiguous.
    if position_sensitive:
        table = tf.transpose(tf.reshape(features, [batch, height, width, k, pooled_h, pooled_w]),
                             [0, 4, 5, 1, 2, 3])
    else:
        table = features
    table = tf.reshape(table, [batch * planes * height * width, k])  # explicit: k may be 0

    scale = _opaque(spatial_scale)
    offset = _opaque(0.5 if aligned else 0.0)
    b = tf.cast(rois[:, 0], tf.int32)
    xs = rois[:, 1] * scale - offset
    ys = rois[:, 2] * scale - offset
    xe = rois[:, 3] * scale - offset
    ye = rois[:, 4] * scale - offset
    bw = _div(tf.maximum(xe - xs, 0.0), pooled_w)
    bh = _div(tf.maximum(ye - ys, 0.0), pooled_h)
    y = _mul_add(bh[:, None], _sample_fractions(pooled_h, sh)[None, :], ys[:, None])  # [R, PH*Sh]
    x = _mul_add(bw[:, None], _sample_fractions(pooled_w, sw)[None, :], xs[:, None])  # [R, PW*Sw]
    y_lo, y_hi, wy_lo, wy_hi = _axis_taps(y, height)
    x_lo, x_hi, wx_lo, wx_hi = _axis_taps(x, width)

    if position_sensitive:
        ph_of = np.repeat(np.arange(pooled_h, dtype=np.int32), sh)
        pw_of = np.repeat(np.arange(pooled_w, dtype=np.int32), sw)
        plane = (b[:, None, None] * pooled_h + ph_of[None, :, None]) * pooled_w + pw_of[None, None, :]
    else:
        plane = b[:, None, None] + tf.zeros([1, pooled_h * sh, pooled_w * sw], tf.int32)

    def gather(yy, xx):
        rows = (plane * height + yy[:, :, None]) * width + xx[:, None, :]
        return tf.gather(table, rows)  # [R, PH*Sh, PW*Sw, K]

    w = lambda a, c: (a[:, :, None] * c[:, None, :])[..., None]  # noqa: E731
    values = (w(wy_lo, wx_lo) * gather(y_lo, x_lo) + w(wy_lo, wx_hi) * gather(y_lo, x_hi)
              + w(wy_hi, wx_lo) * gather(y_hi, x_lo) + w(wy_hi, wx_hi) * gather(y_hi, x_hi))
    num_rois = tf.shape(rois)[0]
    values = tf.reshape(values, [num_rois, pooled_h, sh, pooled_w, sw, k])
    values = tf.reshape(tf.transpose(values, [0, 1, 3, 2, 4, 5]), [num_rois, pooled_h, pooled_w, sh * sw, k])
    if pooling == "max":
        winner = tf.argmax(values, axis=3, output_type=tf.int32)  # first maximal sample
        return tf.reduce_sum(values * tf.one_hot(winner, sh * sw, axis=3, dtype=values.dtype), axis=3)
    return _div(tf.reduce_sum(values, axis=3), sh * sw)


def _round_half_away(v):
    a = tf.abs(v)
    fl = tf.floor(a)
    return tf.sign(v) * (fl + tf.cast(a - fl >= 0.5, v.dtype))


def _ps_roi_pool_twin(features, rois, group_size, spatial_scale):
    """PSROIPool in stock TF ops: bin sums from a float64 summed-area table of each bin's plane."""
    g = group_size
    shape = tf.shape(features)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    k = channels // (g * g)
    planes = tf.transpose(tf.reshape(features, [batch, height, width, k, g, g]), [0, 4, 5, 1, 2, 3])
    # float64 sums (exact bin sums of float32 features up to 2^29 pixels); float32 where the
    # consumer has no float64 (float32_twin_arithmetic: LiteRT), which rounds the sums
    wide = tf.float64 if _FLOAT64_EMULATION[-1] else tf.float32
    planes = tf.reshape(planes, [batch * g * g, height, width, k])  # 4-D: LiteRT's PAD takes at most 5
    sat = tf.cumsum(tf.cumsum(tf.cast(planes, wide), axis=1), axis=2)
    sat = tf.pad(sat, [[0, 0], [1, 0], [1, 0], [0, 0]])  # [B·G·G, H+1, W+1, K]
    table = tf.reshape(sat, [batch * g * g * (height + 1) * (width + 1), k])

    # Every constant opaque (see _opaque): the bin edges are floor / ceil of float32 values.
    scale = _opaque(spatial_scale)
    b = tf.cast(rois[:, 0], tf.int32)
    xs = _round_half_away(rois[:, 1]) * scale
    ys = _round_half_away(rois[:, 2]) * scale
    xe = (_round_half_away(rois[:, 3]) + _opaque(1.0)) * scale
    ye = (_round_half_away(rois[:, 4]) + _opaque(1.0)) * scale
    bw = _div(tf.maximum(xe - xs, _opaque(0.1)), g)
    bh = _div(tf.maximum(ye - ys, _opaque(0.1)), g)
    p = _opaque(np.arange(g))
    p_end = _opaque(np.arange(1, g + 1))

    def bounds(start, size, limit):
        lo = tf.floor(_mul_add(p[None, :], size[:, None], start[:, None]))
        hi = tf.math.ceil(_mul_add(p_end[None, :], size[:, None], start[:, None]))
        lim = tf.cast(limit, tf.float32)

        def clamp(v):  # the kernels' ClampToInt: fmaxf / fminf, so NaN (0 · inf of a huge RoI) -> 0
            v = tf.where(v >= 0.0, v, tf.zeros_like(v))
            return tf.cast(tf.where(v <= lim, v, lim + tf.zeros_like(v)), tf.int32)

        return clamp(lo), clamp(hi)

    hs, he = bounds(ys, bh, height)  # [R, G]
    ws, we = bounds(xs, bw, width)
    plane = (b[:, None, None] * g + np.arange(g, dtype=np.int32)[None, :, None]) * g \
        + np.arange(g, dtype=np.int32)[None, None, :]

    def corner(yy, xx):
        rows = (plane * (height + 1) + yy[:, :, None]) * (width + 1) + xx[:, None, :]
        return tf.gather(table, rows)  # [R, G, G, K]

    total = corner(he, we) - corner(hs, we) - corner(he, ws) + corner(hs, ws)
    area = (he - hs)[:, :, None] * (we - ws)[:, None, :]
    nonempty = ((he > hs)[:, :, None] & (we > ws)[:, None, :])[..., None]
    mean = total / tf.cast(tf.maximum(area, 1), wide)[..., None]
    return tf.cast(tf.where(nonempty, mean, tf.zeros_like(mean)), tf.float32)


# ----------------------------------------------------------------------------- public ops


@tf.autograph.experimental.do_not_convert
def ps_roi_align(features, rois, group_size, spatial_scale, sampling_ratio=(2, 2), pooling="max",
                 backend=None):
    """Position-sensitive RoI-Align (the original PSAlignPool, docs/original.md#ps-roi-align).

    Args:
      features: [B, H, W, C] float32 with C = K * group_size².
      rois: [R, 5] float32 (batch_index, x1, y1, x2, y2) in input-image pixels (no +1, no rounding).
      group_size: G, bins per side. spatial_scale: feature pixels per input pixel (1/16).
      sampling_ratio: (Sh, Sw) samples per bin at (i + 0.5) / S of the bin.
      pooling: "max" (the original; gradient to the first maximal sample) or "avg".
    Returns:
      [R, G, G, K] float32; output (ph, pw, k) reads input channel (k * G + ph) * G + pw.
    """
    g = _positive_int("group_size", group_size, MAX_GROUP_SIZE)
    sampling = _pair("sampling_ratio", sampling_ratio, MAX_SAMPLING_RATIO)
    scale = _positive_float("spatial_scale", spatial_scale)
    pooling = _pooling(pooling)
    features, rois = _check_pool_inputs("ps_roi_align", features, rois, g * g)
    if resolve_backend(backend) == "custom":
        out, _ = _lib().lhrcnn_ps_roi_align(features, rois, group_size=g, sample_height=sampling[0],
                                              sample_width=sampling[1], spatial_scale=scale, pooling=pooling)
        return out
    with tf.control_dependencies(_runtime_checks("ps_roi_align", features, rois, g * g)):
        return _align_twin(features, rois, g, g, sampling, scale, pooling, False, True)


@tf.autograph.experimental.do_not_convert
def roi_align(features, rois, output_size, spatial_scale, sampling_ratio=(2, 2), pooling="avg",
              aligned=False, backend=None):
    """RoIAlign (channel-wise): the sampling and interpolation of `ps_roi_align`.

    Args:
      features: [B, H, W, C] float32. rois: [R, 5] as in `ps_roi_align`.
      output_size: PH or (PH, PW). sampling_ratio: (Sh, Sw).
      pooling: "avg" (mean of the samples) or "max" (the original RoiAlign op).
      aligned: subtract 0.5 from the scaled RoI coordinates (pixel-centre convention).
    Returns:
      [R, PH, PW, C] float32.
    """
    ph, pw = _pair("output_size", output_size, MAX_OUTPUT_SIZE)
    sampling = _pair("sampling_ratio", sampling_ratio, MAX_SAMPLING_RATIO)
    scale = _positive_float("spatial_scale", spatial_scale)
    pooling = _pooling(pooling)
    aligned = bool(aligned)
    features, rois = _check_pool_inputs("roi_align", features, rois, 1)
    if resolve_backend(backend) == "custom":
        out, _ = _lib().lhrcnn_roi_align(features, rois, pooled_height=ph, pooled_width=pw,
                                           sample_height=sampling[0], sample_width=sampling[1],
                                           spatial_scale=scale, pooling=pooling, aligned=aligned)
        return out
    with tf.control_dependencies(_runtime_checks("roi_align", features, rois, 1)):
        return _align_twin(features, rois, ph, pw, sampling, scale, pooling, aligned, False)


@tf.autograph.experimental.do_not_convert
def ps_roi_pool(features, rois, group_size, spatial_scale, backend=None):
    """Position-sensitive RoI pooling (the original PSROIPool, docs/original.md#ps-roi-pooling):
    corners rounded half away from zero, +1 on x2/y2, floor/ceil integer bins clipped to the map,
    mean; an empty bin gives 0.

    Returns:
      [R, G, G, K] float32; output (ph, pw, k) reads input channel (k * G + ph) * G + pw.
    """
    g = _positive_int("group_size", group_size, MAX_GROUP_SIZE)
    scale = _positive_float("spatial_scale", spatial_scale)
    features, rois = _check_pool_inputs("ps_roi_pool", features, rois, g * g)
    if resolve_backend(backend) == "custom":
        return _lib().lhrcnn_ps_roi_pool(features, rois, group_size=g, spatial_scale=scale)
    with tf.control_dependencies(_runtime_checks("ps_roi_pool", features, rois, g * g)):
        return _ps_roi_pool_twin(features, rois, g, scale)


@tf.autograph.experimental.do_not_convert
def nms(boxes, scores, max_output_size, iou_threshold, score_threshold=float("-inf"), class_ids=None,
        box_offset=0.0, backend=None):
    """Greedy non-maximum suppression, optionally class-aware and batched.

    Candidates have score > score_threshold and are visited in descending score (ties: lower
    index first); a candidate whose IoU with a kept box is > iou_threshold is suppressed. Areas
    and intersections use box_offset added to x2 and y2 (1.0 reproduces the original's +1).
    With class_ids, boxes of different classes never suppress each other.

    Args:
      boxes: [N, 4] or [B, N, 4] float32 (x1, y1, x2, y2). scores: [N] or [B, N] float32.
      max_output_size: K. class_ids: None or int32 with the shape of scores.
    Returns:
      (indices [K] or [B, K] int32 in visiting order padded with -1, num_valid scalar or [B] int32).
    """
    if isinstance(max_output_size, bool) or not isinstance(max_output_size, (int, np.integer)) \
            or not 0 <= max_output_size <= MAX_NMS_OUTPUT:
        raise ValueError(f"max_output_size must be an integer in [0, {MAX_NMS_OUTPUT}], got {max_output_size!r}")
    k = int(max_output_size)
    iou = float(iou_threshold)
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    score_threshold = float(score_threshold)
    if math.isnan(score_threshold):
        raise ValueError("score_threshold must not be NaN")
    box_offset = float(box_offset)
    if not math.isfinite(box_offset):
        raise ValueError(f"box_offset must be finite, got {box_offset!r}")
    boxes = tf.convert_to_tensor(boxes)
    scores = tf.convert_to_tensor(scores)
    if boxes.dtype != tf.float32 or scores.dtype != tf.float32:
        raise ValueError(f"nms: boxes and scores must be float32, got {boxes.dtype.name} and {scores.dtype.name}")
    rank = boxes.shape.rank
    if rank not in (2, 3) or boxes.shape[-1] not in (None, 4):
        raise ValueError(f"nms: boxes must have shape [N, 4] or [B, N, 4], got {boxes.shape}")
    if scores.shape.rank is not None and not scores.shape.is_compatible_with(boxes.shape[:-1]):
        raise ValueError(f"nms: scores must have shape {boxes.shape[:-1]} to match boxes {boxes.shape}, "
                         f"got {scores.shape}")
    if class_ids is not None:
        class_ids = tf.convert_to_tensor(class_ids)
        if class_ids.dtype != tf.int32:
            raise ValueError(f"nms: class_ids must be int32, got {class_ids.dtype.name}")
        if class_ids.shape.rank is not None and not class_ids.shape.is_compatible_with(boxes.shape[:-1]):
            raise ValueError(f"nms: class_ids must have shape {boxes.shape[:-1]} to match boxes "
                             f"{boxes.shape}, got {class_ids.shape}")
    if resolve_backend(backend) == "custom":
        classes = class_ids if class_ids is not None else tf.zeros([0], tf.int32)
        return _lib().lhrcnn_nms(boxes, scores, classes, max_output_size=k, iou_threshold=iou,
                                   score_threshold=score_threshold, box_offset=box_offset,
                                   class_aware=class_ids is not None)
    return _nms_twin(boxes, scores, k, iou, score_threshold, class_ids, box_offset)


# Batched twin NMS over at most this many problems of a static batch is unrolled (see _nms_twin).
NMS_UNROLL_LIMIT = 128


def _nms_checks(boxes, scores, class_ids):
    checks = [tf.debugging.assert_equal(tf.shape(scores), tf.shape(boxes)[:-1],
                                        message="nms: scores must match boxes' leading dimensions")]
    if class_ids is not None:
        checks.append(tf.debugging.assert_equal(tf.shape(class_ids), tf.shape(scores),
                                                message="nms: class_ids must have the shape of scores"))
    flat_boxes = tf.reshape(boxes, [-1, 4])
    flat_scores = tf.reshape(scores, [-1])
    for name, ok, values in (("boxes", tf.reduce_all(tf.math.is_finite(flat_boxes), axis=1), flat_boxes),
                             ("scores", tf.math.is_finite(flat_scores), flat_scores[:, None])):
        first_bad = tf.argmin(tf.concat([tf.cast(ok, tf.int32), [0]], 0), output_type=tf.int32)
        padded = tf.concat([values, tf.zeros([1, values.shape[1]])], 0)
        checks.append(tf.debugging.Assert(
            tf.reduce_all(ok), [f"nms: {name} has a non-finite value; first bad (flattened) index:",
                                first_bad, "value:", tf.gather(padded, first_bad)], summarize=8))
    return checks


def _nms_one(boxes, scores, k, iou, score_threshold, class_ids, box_offset):
    boxes = boxes + tf.constant([0.0, 0.0, box_offset, box_offset])
    if class_ids is None:
        idx, n = tf.raw_ops.NonMaxSuppressionV4(
            boxes=boxes, scores=scores, max_output_size=k, iou_threshold=iou,
            score_threshold=score_threshold, pad_to_max_output_size=True)
        return tf.where(tf.range(k) < n, idx, -1), n
    # Class-aware: classes never interact, so the kept set is the union of per-class runs;
    # ordering that union by (score desc, index asc) and truncating to k is the greedy result.
    candidates = scores > score_threshold
    classes, _ = tf.unique(tf.boolean_mask(class_ids, candidates))

    def body(i, kept):
        members = tf.cast(tf.where(tf.equal(class_ids, classes[i]))[:, 0], tf.int32)
        idx, n = tf.raw_ops.NonMaxSuppressionV4(
            boxes=tf.gather(boxes, members), scores=tf.gather(scores, members), max_output_size=k,
            iou_threshold=iou, score_threshold=score_threshold, pad_to_max_output_size=True)
        return i + 1, tf.concat([kept, tf.gather(members, idx[:n])], 0)

    _, kept = tf.while_loop(lambda i, kept: i < tf.size(classes), body,
                            (tf.constant(0), tf.zeros([0], tf.int32)),
                            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None])))
    kept = tf.sort(kept)  # index ascending, so the stable sort below breaks score ties by index
    kept = tf.gather(kept, tf.argsort(-tf.gather(scores, kept), stable=True))[:k]
    n = tf.size(kept)
    return tf.pad(kept, [[0, k - n]], constant_values=-1), n


def _nms_twin(boxes, scores, k, iou, score_threshold, class_ids, box_offset):
    with tf.control_dependencies(_nms_checks(boxes, scores, class_ids)):
        boxes = tf.identity(boxes)
    if boxes.shape.rank == 2:
        return _nms_one(boxes, scores, k, iou, score_threshold, class_ids, box_offset)
    problems = boxes.shape[0]
    if problems is not None and problems <= NMS_UNROLL_LIMIT and class_ids is None:
        # A static batch (e.g. a batch-1 export's per-class problems): one NMS op per problem and
        # no loop, which converters without control flow (LiteRT's calibrator) need. The same op
        # per problem as map_fn's body, so the same result.
        results = [_nms_one(boxes[i], scores[i], k, iou, score_threshold, None, box_offset) for i in range(problems)]
        return (tf.stack([r[0] for r in results]) if results else tf.zeros([0, k], tf.int32),
                tf.stack([r[1] for r in results]) if results else tf.zeros([0], tf.int32))
    elems = (boxes, scores) if class_ids is None else (boxes, scores, class_ids)
    return tf.map_fn(
        lambda e: _nms_one(e[0], e[1], k, iou, score_threshold, e[2] if class_ids is not None else None,
                           box_offset),
        elems, fn_output_signature=(tf.TensorSpec([k], tf.int32), tf.TensorSpec([], tf.int32)))


# ----------------------------------------------------------------------------- gradients

def _attrs(op, names):
    values = {name: op.get_attr(name) for name in names}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


_PS_ALIGN_ATTRS = ("group_size", "sample_height", "sample_width", "spatial_scale", "pooling")
_ALIGN_ATTRS = ("pooled_height", "pooled_width", "sample_height", "sample_width", "spatial_scale",
                "pooling", "aligned")
_PS_POOL_ATTRS = ("group_size", "spatial_scale")


@tf.autograph.experimental.do_not_convert
def depthwise_filter_grad(inputs, out_backprop, kernel_size, strides=1, padding="SAME", backend=None):
    """The filter gradient of `tf.nn.depthwise_conv2d` (depth multiplier 1, no dilation) on NHWC
    float32: what DepthwiseConv2dNativeBackpropFilter computes, on the CPU by the compiled op
    ("custom", several times faster than TensorFlow's kernel, docs/benchmarks.md#ops) or by
    TensorFlow's own kernel ("tf").

    Args:
      inputs: [N, H, W, C] float32, the convolution's input.
      out_backprop: [N, OH, OW, C] float32, the gradient of its output.
      kernel_size: KH or (KH, KW), each in [1, 15]. strides: S or (SH, SW).
      padding: "SAME" or "VALID" (TensorFlow's rules).
    Returns:
      [KH, KW, C, 1] float32, the gradient of the depthwise filter.
    """
    kh, kw = _pair("kernel_size", kernel_size, MAX_DEPTHWISE_KERNEL)
    sh, sw = _pair("strides", strides, MAX_DEPTHWISE_STRIDE)
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    inputs = tf.convert_to_tensor(inputs)
    out_backprop = tf.convert_to_tensor(out_backprop)
    for name, t in (("inputs", inputs), ("out_backprop", out_backprop)):
        if t.dtype != tf.float32:
            raise ValueError(f"depthwise_filter_grad: {name} must be float32, got {t.dtype.name}")
        if t.shape.rank is not None and t.shape.rank != 4:
            raise ValueError(f"depthwise_filter_grad: {name} must be rank 4 (NHWC), got shape {t.shape}")
    if resolve_backend(backend) == "custom":
        return _lib().lhrcnn_depthwise_filter_grad(inputs, out_backprop, kernel_size=[kh, kw], strides=[sh, sw],
                                                   padding=padding)
    filter_sizes = tf.stack([kh, kw, tf.shape(inputs)[3], 1])
    return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(input=inputs, filter_sizes=filter_sizes,
                                                          out_backprop=out_backprop, strides=[1, sh, sw, 1],
                                                          padding=padding)


@tf.RegisterGradient("LhrcnnPsRoiAlign")
def _ps_roi_align_grad(op, grad, _argmax_grad):
    d = _lib().lhrcnn_ps_roi_align_grad(op.inputs[0], op.inputs[1], op.outputs[1], grad,
                                          **_attrs(op, _PS_ALIGN_ATTRS))
    return d, None


@tf.RegisterGradient("LhrcnnRoiAlign")
def _roi_align_grad(op, grad, _argmax_grad):
    d = _lib().lhrcnn_roi_align_grad(op.inputs[0], op.inputs[1], op.outputs[1], grad,
                                       **_attrs(op, _ALIGN_ATTRS))
    return d, None


@tf.RegisterGradient("LhrcnnPsRoiPool")
def _ps_roi_pool_grad(op, grad):
    d = _lib().lhrcnn_ps_roi_pool_grad(op.inputs[0], op.inputs[1], grad, **_attrs(op, _PS_POOL_ATTRS))
    return d, None


tf.no_gradient("LhrcnnNms")
tf.no_gradient("LhrcnnDepthwiseFilterGrad")
