// Helpers shared by the CPU kernels, the CUDA kernels and the framework-free harness:
// bilinear sampling on a zero-padded map, RoI validation, and the NMS overlap.
// Nothing here includes TensorFlow or CUDA headers.
#ifndef LHRCNN_OPS_KERNELS_COMMON_H_
#define LHRCNN_OPS_KERNELS_COMMON_H_

#include <cmath>
#include <cstdint>
#include <functional>

#if defined(__CUDACC__)
#define LHRCNN_HD __host__ __device__ __forceinline__
#else
#define LHRCNN_HD inline
#endif

namespace lhrcnn {

// Text of a cudaError_t returned by a launcher (defined with the CUDA kernels).
const char* CudaErrorString(int code);

// Runs fn(begin, end) over [0, total) split into shards; cost_per_unit is a hint (cycles).
using ParallelFor = std::function<void(int64_t total, int64_t cost_per_unit,
                                       const std::function<void(int64_t, int64_t)>& fn)>;

// Runs everything on the calling thread (harness, tests).
void SerialFor(int64_t total, int64_t cost_per_unit,
               const std::function<void(int64_t, int64_t)>& fn);

// True for finite v (portable across host and device compilers; no -ffast-math here).
LHRCNN_HD bool IsFinite(float v) { return v - v == 0.f; }

// A score as NMS orders it: subnormals (and -0) as +0, whether or not the CPU flushes denormals
// (TensorFlow's CPU threads do; the GPU's radix sort on the bits would not), so CPU and GPU NMS
// order 1e-45 and 0 alike.
LHRCNN_HD float NmsScore(float v) { return fabsf(v) < 1.17549435e-38f ? 0.f : v; }

// The largest attribute values the ops accept (the same in lhrcnn/ops.py, the shape functions and
// the CPU and GPU kernels): every count and buffer size they imply fits in int32, and the work of
// one call stays proportional to its output (at most kMaxSamplingRatio^2 samples per output
// value, and a fixed number of bins per RoI).
constexpr int64_t kMaxGroupSize = 64;        // position-sensitive bins per side (G^2 <= 4096 planes)
constexpr int64_t kMaxPooledSize = 256;      // RoIAlign output bins per side
constexpr int64_t kMaxSamplingRatio = 64;    // samples per bin per side
constexpr int64_t kMaxNmsOutput = 1 << 24;   // NMS max_output_size

// Error codes produced by the validators (0 = valid).
enum RoiError : int {
  kRoiOk = 0,
  kRoiBatchNotInteger = 1,   // batch index is not a whole number (or not finite)
  kRoiBatchOutOfRange = 2,   // batch index outside [0, B)
  kRoiCoordNotFinite = 3,    // x1, y1, x2 or y2 is NaN or infinite
};

// Checks one RoI row (batch_index, x1, y1, x2, y2). Returns a RoiError.
LHRCNN_HD int CheckRoi(const float* roi, int batch) {
  const float b = roi[0];
  if (!IsFinite(b) || floorf(b) != b) return kRoiBatchNotInteger;
  if (b < 0.f || b >= static_cast<float>(batch)) return kRoiBatchOutOfRange;
  for (int i = 1; i < 5; ++i) {
    if (!IsFinite(roi[i])) return kRoiCoordNotFinite;
  }
  return kRoiOk;
}

// One axis of a bilinear sample on a map of size `size` zero-padded by one pixel:
// the sample at `v` reads pixels lo (weight wlo) and lo + 1 (weight whi); a pixel outside
// [0, size - 1] contributes nothing (its weight is set to 0 and its index clamped, so callers
// never read out of bounds). A point at an exact integer reads that pixel with weight 1
// (the original kernel added it twice; we do not).
struct AxisTap {
  int lo;      // first pixel (clamped to [0, size - 1])
  int hi;      // second pixel (clamped to [0, size - 1])
  float wlo;   // weight of lo (0 when the pixel is outside the map)
  float whi;   // weight of hi (0 when the pixel is outside the map)
};

LHRCNN_HD AxisTap MakeAxisTap(float v, int size) {
  AxisTap t;
  if (!(v > -1.f && v < static_cast<float>(size))) {  // also catches NaN
    t.lo = 0; t.hi = 0; t.wlo = 0.f; t.whi = 0.f;
    return t;
  }
  const float fl = floorf(v);
  const int lo = static_cast<int>(fl);
  const float l = v - fl;
  const float h = 1.f - l;
  t.wlo = lo >= 0 ? h : 0.f;
  t.whi = lo + 1 <= size - 1 ? l : 0.f;
  t.lo = lo < 0 ? 0 : lo;
  t.hi = lo + 1 > size - 1 ? size - 1 : lo + 1;
  return t;
}

// Geometry of RoI-Align style sampling for one RoI: the bin size and the start corner in
// feature-map coordinates. `offset` is 0.5 for the pixel-centre ("aligned") convention.
struct AlignGeometry {
  float ys, xs;   // start (y, x) in feature-map coordinates
  float bh, bw;   // bin height and width
};

LHRCNN_HD AlignGeometry MakeAlignGeometry(const float* roi, float spatial_scale,
                                          int pooled_h, int pooled_w, float offset) {
  AlignGeometry g;
  g.xs = roi[1] * spatial_scale - offset;
  g.ys = roi[2] * spatial_scale - offset;
  const float xe = roi[3] * spatial_scale - offset;
  const float ye = roi[4] * spatial_scale - offset;
  const float rw = fmaxf(xe - g.xs, 0.f);
  const float rh = fmaxf(ye - g.ys, 0.f);
  g.bw = rw / static_cast<float>(pooled_w);
  g.bh = rh / static_cast<float>(pooled_h);
  return g;
}

// Fraction of the bin at which sample i of S lies, plus the bin index: p + (i + 0.5) / S.
LHRCNN_HD float SampleFraction(int p, int i, int s) {
  return static_cast<float>(p) + (static_cast<float>(i) + 0.5f) / static_cast<float>(s);
}

// Position-sensitive RoI pooling (PSROIPool) geometry of bin (ph, pw): the half-open pixel
// ranges [hstart, hend) x [wstart, wend), clipped to the map. Corners are rounded half away
// from zero, x2/y2 get +1 (the original's convention), the RoI is at least 0.1 wide.
struct PoolBin {
  int hstart, hend, wstart, wend;
};

LHRCNN_HD int ClampToInt(float v, int lo, int hi) {
  // v is finite; clamp in float first so huge values never overflow the cast.
  v = fminf(fmaxf(v, static_cast<float>(lo)), static_cast<float>(hi));
  return static_cast<int>(v);
}

LHRCNN_HD PoolBin MakePoolBin(const float* roi, float spatial_scale, int group, int ph, int pw,
                              int height, int width) {
  const float xs = roundf(roi[1]) * spatial_scale;
  const float ys = roundf(roi[2]) * spatial_scale;
  const float xe = (roundf(roi[3]) + 1.f) * spatial_scale;
  const float ye = (roundf(roi[4]) + 1.f) * spatial_scale;
  const float rw = fmaxf(xe - xs, 0.1f);
  const float rh = fmaxf(ye - ys, 0.1f);
  const float bh = rh / static_cast<float>(group);
  const float bw = rw / static_cast<float>(group);
  PoolBin b;
  b.hstart = ClampToInt(floorf(static_cast<float>(ph) * bh + ys), 0, height);
  b.hend = ClampToInt(ceilf(static_cast<float>(ph + 1) * bh + ys), 0, height);
  b.wstart = ClampToInt(floorf(static_cast<float>(pw) * bw + xs), 0, width);
  b.wend = ClampToInt(ceilf(static_cast<float>(pw + 1) * bw + xs), 0, width);
  return b;
}

// A box prepared for NMS: corners ordered, the width/height offset applied to the far
// corner first (as the original did: boxes + [0, 0, 1, 1] before tf.image NMS).
struct NmsBox {
  float x1, y1, x2, y2, area;
};

LHRCNN_HD NmsBox MakeNmsBox(const float* b, float offset) {
  const float ax = b[0], ay = b[1], bx = b[2] + offset, by = b[3] + offset;
  NmsBox r;
  r.x1 = fminf(ax, bx); r.x2 = fmaxf(ax, bx);
  r.y1 = fminf(ay, by); r.y2 = fmaxf(ay, by);
  r.area = (r.x2 - r.x1) * (r.y2 - r.y1);
  return r;
}

// Intersection over union with the exact arithmetic of tf.image.non_max_suppression, so the
// pure-TF twin agrees bit for bit. Degenerate boxes (area <= 0) overlap nothing.
LHRCNN_HD float NmsIou(const NmsBox& a, const NmsBox& b) {
  if (a.area <= 0.f || b.area <= 0.f) return 0.f;
  const float iy1 = fmaxf(a.y1, b.y1), ix1 = fmaxf(a.x1, b.x1);
  const float iy2 = fminf(a.y2, b.y2), ix2 = fminf(a.x2, b.x2);
  const float inter = fmaxf(ix2 - ix1, 0.f) * fmaxf(iy2 - iy1, 0.f);
  return inter / (a.area + b.area - inter);
}

}  // namespace lhrcnn

#endif  // LHRCNN_OPS_KERNELS_COMMON_H_
