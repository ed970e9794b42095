// CPU kernels of the RoI pooling family (see roi_pooling.h). No TensorFlow here: the caller
// passes a ParallelFor (TF's thread pool in the op, a serial loop in the harness).
//
// Speed: position-sensitive ops first copy the map into plane-major layout [B, P, H, W, K]
// (P = PH * PW bins, K = channels per bin), so each bilinear tap reads K contiguous floats
// instead of K floats spread P apart. The backward pass shards over (image, plane, channel
// chunk): every shard owns a disjoint slice of the gradient, so there are no write conflicts
// and no atomics, and the result does not depend on the number of threads.
#include <algorithm>
#include <cstring>
#include <vector>

#include "common.h"
#include "roi_pooling.h"

namespace lhrcnn {

void SerialFor(int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
  if (total > 0) fn(0, total);
}

int FirstInvalidRoiCpu(const float* rois, int num_rois, int batch, int* code) {
  for (int r = 0; r < num_rois; ++r) {
    const int c = CheckRoi(rois + 5 * static_cast<int64_t>(r), batch);
    if (c != kRoiOk) {
      *code = c;
      return r;
    }
  }
  *code = kRoiOk;
  return -1;
}

namespace {

// The RoI-Align family works on vectors: a bin's K channels are padded to KP = round_up(K, 4)
// in the plane-major copy and processed as groups of 8 lanes plus, when 4 remain, one group of
// 4, so every sample is a few whole-vector multiply-adds (no scalar tails, no alias checks).
// GCC vector extensions compile to AVX2 in the multiversioned clones and to SSE elsewhere.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

inline int PadLanes(int k) { return (k + 3) / 4 * 4; }

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LHRCNN_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define LHRCNN_MULTIVERSION
#endif

template <typename V>
__attribute__((always_inline)) inline V Load(const float* p) {
  typedef float U __attribute__((vector_size(sizeof(V)), aligned(4), may_alias));
  return (V)(*reinterpret_cast<const U*>(p));
}
template <typename V>
__attribute__((always_inline)) inline void Store(float* p, V v) {
  typedef float U __attribute__((vector_size(sizeof(V)), aligned(4), may_alias));
  *reinterpret_cast<U*>(p) = (U)v;
}

// Transposes shard the map into blocks of kPixelBlock pixels.
constexpr int64_t kPixelBlock = 64;

// rows[i][j] -> rows[j][i] for an 8 x 8 block held in eight vectors (three rounds of two-vector
// shuffles: unpack pairs, then pairs of pairs, then 128-bit halves).
__attribute__((always_inline)) inline void Transpose8x8(v8f r[8]) {
  const v8i lo1 = {0, 8, 1, 9, 4, 12, 5, 13}, hi1 = {2, 10, 3, 11, 6, 14, 7, 15};
  const v8i lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const v8i lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
  v8f t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], lo1);
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], hi1);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], lo2);
    u[i + 1] = __builtin_shuffle(t[i], t[i + 2], hi2);
    u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], lo2);
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], hi2);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = __builtin_shuffle(u[j], u[j + 4], lo4);
    r[j + 4] = __builtin_shuffle(u[j], u[j + 4], hi4);
  }
}

// Moves pixels [pix0, pix1) of image b from NHWC [B, H, W, P * K] (channel c = k * P + p) to
// plane-major [B, P, H, W, KP], KP >= K (kToPlanes: the pad lanes K..KP are zeroed), or back
// (the pad lanes are dropped). Per pixel the K x P matrix is transposed in 8 x 8 register blocks,
// the rest element by element.
template <bool kToPlanes>
__attribute__((always_inline)) inline void TransposePixels(const float* src, float* dst, int64_t hw, int P,
                                                           int K, int kp, int64_t b, int64_t pix0,
                                                           int64_t pix1) {
  const int64_t C = static_cast<int64_t>(P) * K, plane_stride = hw * kp;
  // Back from planes: eight planes at a time over the block's pixels, so that a pass reads eight
  // runs of consecutive pixels (which the prefetchers follow) rather than P of them, while the
  // block's pixels stay in cache from one pass to the next. To planes: one pass over all planes
  // (eight at a time is no faster there).
  const int planes_per_pass = kToPlanes ? P : 8;
  for (int pa = 0; pa < P; pa += planes_per_pass) {
    const int pb = std::min(P, pa + planes_per_pass);
    for (int64_t pix = pix0; pix < pix1; ++pix) {
      const int64_t n_at = (b * hw + pix) * C;          // channel (k, p) at n_at + k * P + p
      const int64_t q_at = (b * P * hw + pix) * kp;     // plane p, lane k at q_at + p * plane_stride + k
      // Only the source's side is read and the destination's written (the others stay null).
      const float* n_src = kToPlanes ? src + n_at : nullptr;
      const float* q_src = kToPlanes ? nullptr : src + q_at;
      float* n_dst = kToPlanes ? nullptr : dst + n_at;
      float* q_dst = kToPlanes ? dst + q_at : nullptr;
      int p0 = pa;
      for (; p0 + 8 <= pb; p0 += 8) {
        int k0 = 0;
        for (; k0 + 8 <= K; k0 += 8) {
          v8f r[8];
          if (kToPlanes) {
            for (int i = 0; i < 8; ++i) r[i] = Load<v8f>(n_src + (k0 + i) * P + p0);
            Transpose8x8(r);
            for (int j = 0; j < 8; ++j) Store<v8f>(q_dst + (p0 + j) * plane_stride + k0, r[j]);
          } else {
            for (int j = 0; j < 8; ++j) r[j] = Load<v8f>(q_src + (p0 + j) * plane_stride + k0);
            Transpose8x8(r);
            for (int i = 0; i < 8; ++i) Store<v8f>(n_dst + (k0 + i) * P + p0, r[i]);
          }
        }
        if (k0 < K) {
          // The last K - k0 < 8 rows, as one block with zero rows below them: a plane's lanes
          // k0 .. kp (at most 8, the pad lanes included) in one store or load.
          const int rows = K - k0, width = kp - k0;
          v8f r[8];
          if (kToPlanes) {
            for (int i = 0; i < 8; ++i) r[i] = i < rows ? Load<v8f>(n_src + (k0 + i) * P + p0) : v8f{};
            Transpose8x8(r);
            for (int j = 0; j < 8; ++j) {
              float* q = q_dst + (p0 + j) * plane_stride + k0;
              if (width == 8) {
                Store<v8f>(q, r[j]);
              } else if (width == 4) {
                Store<v4f>(q, v4f{r[j][0], r[j][1], r[j][2], r[j][3]});
              } else {
                for (int l = 0; l < width; ++l) q[l] = r[j][l];
              }
            }
          } else {
            for (int j = 0; j < 8; ++j) {
              const float* q = q_src + (p0 + j) * plane_stride + k0;
              if (width == 8) {
                r[j] = Load<v8f>(q);
              } else if (width == 4) {
                const v4f h = Load<v4f>(q);
                r[j] = v8f{h[0], h[1], h[2], h[3], 0.f, 0.f, 0.f, 0.f};
              } else {
                r[j] = v8f{};
                for (int l = 0; l < width; ++l) r[j][l] = q[l];
              }
            }
            Transpose8x8(r);
            for (int i = 0; i < rows; ++i) Store<v8f>(n_dst + (k0 + i) * P + p0, r[i]);
          }
        }
      }
      const int tail = p0;  // planes from here on are copied element by element
      for (; p0 < pb; ++p0)
        for (int k = 0; k < K; ++k) {
          if (kToPlanes) q_dst[p0 * plane_stride + k] = n_src[k * P + p0];
          else n_dst[k * P + p0] = q_src[p0 * plane_stride + k];
        }
      if (kToPlanes)
        for (int p = tail; p < pb; ++p)
          for (int k = K; k < kp; ++k) q_dst[p * plane_stride + k] = 0.f;
    }
  }
}

LHRCNN_MULTIVERSION
void PixelsToPlanes(const float* src, float* dst, int64_t hw, int P, int K, int kp, int64_t b,
                    int64_t pix0, int64_t pix1) {
  TransposePixels<true>(src, dst, hw, P, K, kp, b, pix0, pix1);
}

LHRCNN_MULTIVERSION
void PixelsFromPlanes(const float* src, float* dst, int64_t hw, int P, int K, int kp, int64_t b,
                      int64_t pix0, int64_t pix1) {
  TransposePixels<false>(src, dst, hw, P, K, kp, b, pix0, pix1);
}

// NHWC [B, H, W, P * K] (channel c = k * P + p) -> plane-major [B, P, H, W, KP], KP >= K
// (the pad lanes are zero), or back (the pad lanes are dropped).
void TransposeMap(bool to_planes, const float* src, float* dst, const FeatureShape& fs, int P, int kp,
                  const ParallelFor& pf) {
  const int K = fs.channels / P;
  const int64_t hw = static_cast<int64_t>(fs.height) * fs.width;
  const int64_t blocks_per_image = (hw + kPixelBlock - 1) / kPixelBlock;
  pf(fs.batch * blocks_per_image, kPixelBlock * P * kp * 2, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b = blk / blocks_per_image, pix0 = (blk % blocks_per_image) * kPixelBlock;
      const int64_t pix1 = std::min(hw, pix0 + kPixelBlock);
      if (to_planes) PixelsToPlanes(src, dst, hw, P, K, kp, b, pix0, pix1);
      else PixelsFromPlanes(src, dst, hw, P, K, kp, b, pix0, pix1);
    }
  });
}

void ToPlanes(const float* src, float* dst, const FeatureShape& fs, int planes, int kp,
              const ParallelFor& pf) {
  TransposeMap(true, src, dst, fs, planes, kp, pf);
}

void FromPlanes(const float* src, float* dst, const FeatureShape& fs, int planes, int kp,
                const ParallelFor& pf) {
  TransposeMap(false, src, dst, fs, planes, kp, pf);
}

void ZeroFill(float* dst, int64_t n, const ParallelFor& pf) {
  const int64_t block = 1 << 16;
  pf((n + block - 1) / block, block, [&](int64_t begin, int64_t end) {
    const int64_t lo = begin * block, hi = std::min(n, end * block);
    std::memset(dst + lo, 0, sizeof(float) * (hi - lo));
  });
}

// The four taps of one sample inside a [H, W, KP] plane: float offsets of their vectors.
struct SampleTaps {
  int64_t o1, o2, o3, o4;
  float w1, w2, w3, w4;
};

inline SampleTaps MakeSampleTaps(const AxisTap& ty, const AxisTap& tx, int width, int kp) {
  SampleTaps t;
  const int64_t rlo = static_cast<int64_t>(ty.lo) * width, rhi = static_cast<int64_t>(ty.hi) * width;
  t.o1 = (rlo + tx.lo) * kp; t.o2 = (rlo + tx.hi) * kp;
  t.o3 = (rhi + tx.lo) * kp; t.o4 = (rhi + tx.hi) * kp;
  t.w1 = ty.wlo * tx.wlo; t.w2 = ty.wlo * tx.whi;
  t.w3 = ty.whi * tx.wlo; t.w4 = ty.whi * tx.whi;
  return t;
}

// RoI indices grouped by image: rois of image b are order[start[b] .. start[b + 1]).
struct RoisByImage {
  std::vector<int32_t> order, start;
  RoisByImage(const float* rois, int num_rois, int batch) : order(num_rois), start(batch + 1, 0) {
    for (int r = 0; r < num_rois; ++r) ++start[static_cast<int>(rois[5 * r]) + 1];
    for (int b = 0; b < batch; ++b) start[b + 1] += start[b];
    std::vector<int32_t> next(start.begin(), start.end() - 1);
    for (int r = 0; r < num_rois; ++r) order[next[static_cast<int>(rois[5 * r])]++] = r;
  }
};

// Axis taps of every sample row and column of every RoI, computed once per call, for the RoIs
// in a given order (position i holds RoI order[i]), grouped by bin row and column:
// y[(ph * n + i) * Sh + iy], x[(pw * n + i) * Sw + ix]. A pass over one bin plane then reads the
// taps of consecutive positions from one contiguous run instead of one cache line per RoI.
struct TapTable {
  std::vector<AxisTap> y, x;
  const int32_t* order = nullptr;  // the RoI at each position
  int64_t n = 0;
  void Build(const AlignParams& p, const FeatureShape& fs, const float* rois, const int32_t* roi_order,
             int num_rois, const ParallelFor& pf) {
    order = roi_order;
    n = num_rois;
    y.resize(static_cast<size_t>(num_rois) * p.pooled_h * p.sample_h);
    x.resize(static_cast<size_t>(num_rois) * p.pooled_w * p.sample_w);
    pf(num_rois, 20 * (p.pooled_h * p.sample_h + p.pooled_w * p.sample_w), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const AlignGeometry g = MakeAlignGeometry(rois + 5 * static_cast<int64_t>(order[i]), p.spatial_scale,
                                                  p.pooled_h, p.pooled_w, p.aligned ? 0.5f : 0.f);
        for (int ph = 0; ph < p.pooled_h; ++ph)
          for (int iy = 0; iy < p.sample_h; ++iy)
            y[(ph * n + i) * p.sample_h + iy] = MakeAxisTap(g.ys + g.bh * SampleFraction(ph, iy, p.sample_h), fs.height);
        for (int pw = 0; pw < p.pooled_w; ++pw)
          for (int ix = 0; ix < p.sample_w; ++ix)
            x[(pw * n + i) * p.sample_w + ix] = MakeAxisTap(g.xs + g.bw * SampleFraction(pw, ix, p.sample_w), fs.width);
      }
    });
  }
  // Taps of the samples of bin (ph, pw) of the RoI at position i, in (iy, ix) order, into out[p.samples()].
  __attribute__((always_inline)) void BinSamples(const AlignParams& p, int64_t i, int ph, int pw, int width,
                                                 int kp, SampleTaps* out) const {
    const AxisTap* ty = &y[(ph * n + i) * p.sample_h];
    const AxisTap* tx = &x[(pw * n + i) * p.sample_w];
    for (int iy = 0; iy < p.sample_h; ++iy)
      for (int ix = 0; ix < p.sample_w; ++ix) out[iy * p.sample_w + ix] = MakeSampleTaps(ty[iy], tx[ix], width, kp);
  }
};

// Folds sample s's value into the running max (with its winner) or sum.
template <typename VF, typename VI>
__attribute__((always_inline)) inline void FoldSample(bool max_pool, int s, VF value, VF& acc, VI& arg) {
  if (s == 0) {
    acc = value;
  } else if (max_pool) {
    const VI better = value > acc;  // strict: the first maximal sample wins
    acc = (VF)(((VI)value & better) | ((VI)acc & ~better));
    arg = (s & better) | (arg & ~better);
  } else {
    acc += value;
  }
}

// Stores the first n lanes of v (all of them when n >= the vector's width); E is the lane type.
template <typename V, typename E>
__attribute__((always_inline)) inline void StoreFirst(E* dst, V v, int n) {
  constexpr int L = sizeof(V) / sizeof(E);
  if (n >= L) {
    typedef E U __attribute__((vector_size(sizeof(V)), aligned(4), may_alias));
    *reinterpret_cast<U*>(dst) = (U)v;
  } else {
    for (int l = 0; l < L; ++l)  // conditional stores: no library call for the tail
      if (l < n) dst[l] = v[l];
  }
}

// Loads the first n lanes from src, the others zero.
template <typename V, typename E>
__attribute__((always_inline)) inline V LoadFirst(const E* src, int n) {
  constexpr int L = sizeof(V) / sizeof(E);
  if (n >= L) {
    typedef E U __attribute__((vector_size(sizeof(V)), aligned(4), may_alias));
    return (V)(*reinterpret_cast<const U*>(src));
  }
  V v = {};
  for (int l = 0; l < L; ++l)
    if (l < n) v[l] = src[l];
  return v;
}

// One lane group (8 or 4 lanes at offset k) of PoolBins; `n` lanes are real.
template <typename VF, typename VI>
__attribute__((always_inline)) inline void PoolLanes(bool max_pool, const float* plane, int k, int n,
                                                     const SampleTaps* taps, int num_samples,
                                                     float* out, int32_t* win) {
  VF acc = {};
  VI arg = {};
  for (int s = 0; s < num_samples; ++s) {
    const SampleTaps& t = taps[s];
    const VF value = t.w1 * Load<VF>(plane + t.o1 + k) + t.w2 * Load<VF>(plane + t.o2 + k) +
                     t.w3 * Load<VF>(plane + t.o3 + k) + t.w4 * Load<VF>(plane + t.o4 + k);
    FoldSample(max_pool, s, value, acc, arg);
  }
  if (!max_pool) acc /= static_cast<float>(num_samples);
  StoreFirst(out + k, acc, n);
  if (win) StoreFirst(win + k, arg, n);
}

// One lane group (8 or 4 lanes at offset k) of ScatterBins; `n` lanes are real.
template <typename VF, typename VI>
__attribute__((always_inline)) inline void ScatterLanes(bool max_pool, float* plane, int k, int n,
                                                        const SampleTaps* taps, int num_samples,
                                                        const float* g, const int32_t* win) {
  const VF grad = LoadFirst<VF>(g + k, n);
  const VI arg = max_pool ? LoadFirst<VI>(win + k, n) : VI{};
  const float count = static_cast<float>(num_samples);
  for (int s = 0; s < num_samples; ++s) {
    const SampleTaps& t = taps[s];
    const VF gs = max_pool ? (VF)((VI)grad & (arg == s)) : grad / count;
    Store<VF>(plane + t.o1 + k, Load<VF>(plane + t.o1 + k) + t.w1 * gs);
    Store<VF>(plane + t.o2 + k, Load<VF>(plane + t.o2 + k) + t.w2 * gs);
    Store<VF>(plane + t.o3 + k, Load<VF>(plane + t.o3 + k) + t.w3 * gs);
    Store<VF>(plane + t.o4 + k, Load<VF>(plane + t.o4 + k) + t.w4 * gs);
  }
}

// The RoIs and bins one shard pools or scatters: the RoIs at positions [begin, end) of the tap
// table's order, bins [ph0, ph1) x [pw0, pw1) of each.
struct BinRange {
  int64_t begin, end;
  int ph0, ph1, pw0, pw1;
};

// Pools the range's bins from one [H, W, KP] plane into out and, for max pooling, the winners
// into argmax (layout [R, PH, PW, K]); taps holds p.samples() entries.
LHRCNN_MULTIVERSION
void PoolBins(const AlignParams& p, const TapTable& table, const float* plane, int k_count,
              int width, const BinRange& range, float* out, int32_t* argmax, SampleTaps* taps) {
  const int kp = PadLanes(k_count), S = p.samples();
  for (int64_t i = range.begin; i < range.end; ++i) {
    const int64_t r = table.order[i];
    for (int ph = range.ph0; ph < range.ph1; ++ph)
      for (int pw = range.pw0; pw < range.pw1; ++pw) {
        table.BinSamples(p, i, ph, pw, width, kp, taps);
        const int64_t o = ((r * p.pooled_h + ph) * p.pooled_w + pw) * k_count;
        float* bin_out = out + o;
        int32_t* bin_win = argmax ? argmax + o : nullptr;
        int k = 0;
        for (; kp - k >= 8; k += 8)
          PoolLanes<v8f, v8i>(p.max_pool, plane, k, k_count - k, taps, S, bin_out, bin_win);
        if (k < kp) PoolLanes<v4f, v4i>(p.max_pool, plane, k, k_count - k, taps, S, bin_out, bin_win);
      }
  }
}

// Adds the gradients of the range's bins, lanes [k0, k0 + lanes) of their k_count, to a
// [H, W, kp] gradient plane (plane points at lane k0). Every sample adds an exact zero to the
// lanes it did not win, so the loops are whole vectors; the taps of one sample may alias
// (clamped at the border) and are applied one after the other.
LHRCNN_MULTIVERSION
void ScatterBins(const AlignParams& p, const TapTable& table, float* plane, int k_count,
                 int k0, int lanes, int kp, int width, const BinRange& range, const float* grad_out, const int32_t* argmax,
                 SampleTaps* taps) {
  const int lp = PadLanes(lanes), S = p.samples();
  for (int64_t i = range.begin; i < range.end; ++i) {
    const int64_t r = table.order[i];
    for (int ph = range.ph0; ph < range.ph1; ++ph)
      for (int pw = range.pw0; pw < range.pw1; ++pw) {
        table.BinSamples(p, i, ph, pw, width, kp, taps);
        const int64_t o = ((r * p.pooled_h + ph) * p.pooled_w + pw) * k_count + k0;
        const float* g = grad_out + o;
        const int32_t* win = p.max_pool ? argmax + o : nullptr;
        int k = 0;
        for (; lp - k >= 8; k += 8) ScatterLanes<v8f, v8i>(p.max_pool, plane, k, lanes - k, taps, S, g, win);
        if (k < lp) ScatterLanes<v4f, v4i>(p.max_pool, plane, k, lanes - k, taps, S, g, win);
      }
  }
}

// Maps of at most 16 lanes per bin (KP = 4, 8, 12 or 16; PS-RoI-Align's usual K = 10 is one):
// one bin's lanes and each sample's weights and tap addresses stay in registers, which the
// general loops above round-trip through the SampleTaps array, a memory dependency on every
// load's address. Per lane the operations and their order are those of PoolLanes and
// ScatterLanes, so the results are the same bits.
template <int KP>
struct SmallLanes {
  static constexpr int kGroups8 = KP / 8;          // whole 8-lane groups
  static constexpr bool kHas4 = KP % 8 != 0;      // and one 4-lane group after them
  static constexpr int kSlots = kGroups8 > 0 ? kGroups8 : 1;
};

// PoolBins for KP lanes per pixel (k_count real ones).
template <int KP>
__attribute__((always_inline)) inline void PoolSmall(const AlignParams& p, const TapTable& table, const float* plane,
                                                     int k_count, int width, const BinRange& range, float* out,
                                                     int32_t* argmax) {
  using Lanes = SmallLanes<KP>;
  constexpr int G8 = Lanes::kGroups8, T4 = 8 * G8;  // T4: the 4-lane group's first lane
  const int Sh = p.sample_h, Sw = p.sample_w;
  const int64_t row = static_cast<int64_t>(width) * KP;
  for (int64_t i = range.begin; i < range.end; ++i) {
    const int64_t r = table.order[i];
    for (int ph = range.ph0; ph < range.ph1; ++ph)
      for (int pw = range.pw0; pw < range.pw1; ++pw) {
        const AxisTap* ty = &table.y[(ph * table.n + i) * Sh];
        const AxisTap* tx = &table.x[(pw * table.n + i) * Sw];
        v8f acc8[Lanes::kSlots] = {};
        v8i arg8[Lanes::kSlots] = {};
        v4f acc4 = {};
        v4i arg4 = {};
        for (int iy = 0; iy < Sh; ++iy) {
          const float* lo_row = plane + ty[iy].lo * row;
          const float* hi_row = plane + ty[iy].hi * row;
          for (int ix = 0; ix < Sw; ++ix) {
            const AxisTap& t = tx[ix];
            // The four taps and weights of MakeSampleTaps.
            const float w1 = ty[iy].wlo * t.wlo, w2 = ty[iy].wlo * t.whi;
            const float w3 = ty[iy].whi * t.wlo, w4 = ty[iy].whi * t.whi;
            const float* a = lo_row + t.lo * KP;
            const float* b = lo_row + t.hi * KP;
            const float* c = hi_row + t.lo * KP;
            const float* d = hi_row + t.hi * KP;
            const int s = iy * Sw + ix;
            for (int g = 0; g < G8; ++g) {
              const int k = 8 * g;
              const v8f value = w1 * Load<v8f>(a + k) + w2 * Load<v8f>(b + k) + w3 * Load<v8f>(c + k) +
                                w4 * Load<v8f>(d + k);
              FoldSample(p.max_pool, s, value, acc8[g], arg8[g]);
            }
            if (Lanes::kHas4) {
              const v4f value = w1 * Load<v4f>(a + T4) + w2 * Load<v4f>(b + T4) + w3 * Load<v4f>(c + T4) +
                                w4 * Load<v4f>(d + T4);
              FoldSample(p.max_pool, s, value, acc4, arg4);
            }
          }
        }
        const int64_t o = ((r * p.pooled_h + ph) * p.pooled_w + pw) * k_count;
        const float count = static_cast<float>(Sh * Sw);
        for (int g = 0; g < G8; ++g) {
          if (!p.max_pool) acc8[g] /= count;
          StoreFirst(out + o + 8 * g, acc8[g], k_count - 8 * g);
          if (argmax) StoreFirst(argmax + o + 8 * g, arg8[g], k_count - 8 * g);
        }
        if (Lanes::kHas4) {
          if (!p.max_pool) acc4 /= count;
          StoreFirst(out + o + T4, acc4, k_count - T4);
          if (argmax) StoreFirst(argmax + o + T4, arg4, k_count - T4);
        }
      }
  }
}

// ScatterBins for KP lanes per pixel, all k_count real lanes of a bin in one pass.
template <int KP>
__attribute__((always_inline)) inline void ScatterSmall(const AlignParams& p, const TapTable& table, float* plane,
                                                        int k_count, int width, const BinRange& range,
                                                        const float* grad_out, const int32_t* argmax) {
  using Lanes = SmallLanes<KP>;
  constexpr int G8 = Lanes::kGroups8, T4 = 8 * G8;
  const int Sh = p.sample_h, Sw = p.sample_w;
  const int64_t row = static_cast<int64_t>(width) * KP;
  const float count = static_cast<float>(Sh * Sw);
  for (int64_t i = range.begin; i < range.end; ++i) {
    const int64_t r = table.order[i];
    for (int ph = range.ph0; ph < range.ph1; ++ph)
      for (int pw = range.pw0; pw < range.pw1; ++pw) {
        const AxisTap* ty = &table.y[(ph * table.n + i) * Sh];
        const AxisTap* tx = &table.x[(pw * table.n + i) * Sw];
        const int64_t o = ((r * p.pooled_h + ph) * p.pooled_w + pw) * k_count;
        v8f grad8[Lanes::kSlots] = {};
        v8i arg8[Lanes::kSlots] = {};
        v4f grad4 = {};
        v4i arg4 = {};
        for (int g = 0; g < G8; ++g) {
          grad8[g] = LoadFirst<v8f>(grad_out + o + 8 * g, k_count - 8 * g);
          if (p.max_pool) arg8[g] = LoadFirst<v8i>(argmax + o + 8 * g, k_count - 8 * g);
        }
        if (Lanes::kHas4) {
          grad4 = LoadFirst<v4f>(grad_out + o + T4, k_count - T4);
          if (p.max_pool) arg4 = LoadFirst<v4i>(argmax + o + T4, k_count - T4);
        }
        for (int iy = 0; iy < Sh; ++iy) {
          float* lo_row = plane + ty[iy].lo * row;
          float* hi_row = plane + ty[iy].hi * row;
          for (int ix = 0; ix < Sw; ++ix) {
            const AxisTap& t = tx[ix];
            const float w[4] = {ty[iy].wlo * t.wlo, ty[iy].wlo * t.whi, ty[iy].whi * t.wlo, ty[iy].whi * t.whi};
            float* const at[4] = {lo_row + t.lo * KP, lo_row + t.hi * KP, hi_row + t.lo * KP, hi_row + t.hi * KP};
            const int s = iy * Sw + ix;
            // The taps may alias (clamped at the border): each is added after the one before.
            for (int j = 0; j < 4; ++j) {
              for (int g = 0; g < G8; ++g) {
                const v8f gs = p.max_pool ? (v8f)((v8i)grad8[g] & (arg8[g] == s)) : grad8[g] / count;
                float* v = at[j] + 8 * g;
                Store<v8f>(v, Load<v8f>(v) + w[j] * gs);
              }
              if (Lanes::kHas4) {
                const v4f gs = p.max_pool ? (v4f)((v4i)grad4 & (arg4 == s)) : grad4 / count;
                float* v = at[j] + T4;
                Store<v4f>(v, Load<v4f>(v) + w[j] * gs);
              }
            }
          }
        }
      }
  }
}

// PoolBins / ScatterBins, through the register-resident loops when a pixel has at most 16 lanes.
LHRCNN_MULTIVERSION
void PoolBinsAnyLanes(const AlignParams& p, const TapTable& table, const float* plane, int k_count, int width,
                      const BinRange& range, float* out, int32_t* argmax, SampleTaps* taps) {
  switch (PadLanes(k_count)) {
    case 4: return PoolSmall<4>(p, table, plane, k_count, width, range, out, argmax);
    case 8: return PoolSmall<8>(p, table, plane, k_count, width, range, out, argmax);
    case 12: return PoolSmall<12>(p, table, plane, k_count, width, range, out, argmax);
    case 16: return PoolSmall<16>(p, table, plane, k_count, width, range, out, argmax);
    default: return PoolBins(p, table, plane, k_count, width, range, out, argmax, taps);
  }
}

LHRCNN_MULTIVERSION
void ScatterBinsAnyLanes(const AlignParams& p, const TapTable& table, float* plane, int k_count, int k0, int lanes,
                         int kp, int width, const BinRange& range, const float* grad_out, const int32_t* argmax,
                         SampleTaps* taps) {
  if (k0 == 0 && lanes == k_count) {  // the bin's whole pixel, one chunk
    switch (kp) {
      case 4: return ScatterSmall<4>(p, table, plane, k_count, width, range, grad_out, argmax);
      case 8: return ScatterSmall<8>(p, table, plane, k_count, width, range, grad_out, argmax);
      case 12: return ScatterSmall<12>(p, table, plane, k_count, width, range, grad_out, argmax);
      case 16: return ScatterSmall<16>(p, table, plane, k_count, width, range, grad_out, argmax);
      default: break;
    }
  }
  ScatterBins(p, table, plane, k_count, k0, lanes, kp, width, range, grad_out, argmax, taps);
}

// The largest of a[0 .. n) as unsigned (a negative value counts as larger than any valid one).
LHRCNN_MULTIVERSION
uint32_t UnsignedMax(const int32_t* a, int64_t n) {
  uint32_t largest = 0;
  for (int64_t i = 0; i < n; ++i) largest = std::max(largest, static_cast<uint32_t>(a[i]));
  return largest;
}

}  // namespace

int64_t FirstInvalidArgmaxCpu(const int32_t* argmax, int64_t n, int samples, const ParallelFor& pf) {
  const int64_t block = 1 << 16, blocks = (n + block - 1) / block;
  std::vector<char> bad(blocks, 0);
  pf(blocks, block, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t lo = b * block, len = std::min(n, lo + block) - lo;
      bad[b] = UnsignedMax(argmax + lo, len) >= static_cast<uint32_t>(samples);
    }
  });
  for (int64_t b = 0; b < blocks; ++b) {
    if (!bad[b]) continue;
    for (int64_t i = b * block;; ++i)
      if (argmax[i] < 0 || argmax[i] >= samples) return i;
  }
  return -1;
}

int64_t RoiAlignCpuWorkspace(const AlignParams& p, const FeatureShape& fs) {
  const int P = p.planes(), K = fs.channels / P;
  if (P == 1 && K == PadLanes(K)) return 0;  // RoIAlign on a lane-aligned map reads it in place
  return static_cast<int64_t>(fs.batch) * fs.height * fs.width * P * PadLanes(K);
}

int64_t PsRoiPoolCpuWorkspace(const PsPoolParams& p, const FeatureShape& fs) {
  if (p.group == 1) return 0;
  return static_cast<int64_t>(fs.batch) * fs.height * fs.width * fs.channels;
}

void RoiAlignForwardCpu(const AlignParams& p, const FeatureShape& fs, const float* features,
                        const float* rois, int num_rois, float* out, int32_t* argmax,
                        float* workspace, const ParallelFor& pf) {
  const int P = p.planes(), K = fs.channels / P, KP = PadLanes(K), H = fs.height, W = fs.width;
  const int PH = p.pooled_h, PW = p.pooled_w, S = p.samples();
  if (K == 0 || num_rois == 0) return;
  const int64_t plane_size = static_cast<int64_t>(H) * W * KP;
  const float* planes = features;
  if (RoiAlignCpuWorkspace(p, fs) > 0) {
    ToPlanes(features, workspace, fs, P, KP, pf);
    planes = workspace;
  }
  const RoisByImage by_image(rois, num_rois, fs.batch);
  const int32_t* order = by_image.order.data();
  TapTable table;
  table.Build(p, fs, rois, order, num_rois, pf);
  const int64_t bin_cost = static_cast<int64_t>(S) * (KP * 2 + 30);
  if (P == 1) {
    // Channel-wise RoIAlign: every bin reads the image's single plane; shard by RoI.
    pf(num_rois, bin_cost * PH * PW, [&](int64_t begin, int64_t end) {
      std::vector<SampleTaps> taps(S);
      for (int64_t i = begin; i < end; ++i) {
        const float* plane = planes + static_cast<int64_t>(rois[5 * static_cast<int64_t>(order[i])]) * plane_size;
        PoolBinsAnyLanes(p, table, plane, K, W, BinRange{i, i + 1, 0, PH, 0, PW}, out, argmax, taps.data());
      }
    });
    return;
  }
  // Position-sensitive: bin (ph, pw) of every RoI reads only plane ph * PW + pw, so shard by
  // (image, plane) and keep that plane hot in cache while all RoIs of the image visit it.
  const int64_t rois_per_image = std::max<int64_t>(1, num_rois / std::max(1, fs.batch));
  pf(static_cast<int64_t>(fs.batch) * P, bin_cost * rois_per_image, [&](int64_t begin, int64_t end) {
    std::vector<SampleTaps> taps(S);
    for (int64_t u = begin; u < end; ++u) {
      const int b = static_cast<int>(u / P), ph = static_cast<int>(u % P) / PW, pw = static_cast<int>(u % P) % PW;
      const BinRange range{by_image.start[b], by_image.start[b + 1], ph, ph + 1, pw, pw + 1};
      const float* plane = planes + u * plane_size;
      // The RoIs read the plane at random: stream it into L2 first (sequential prefetches run at
      // bandwidth, the RoIs' first touches would each wait for a miss).
      for (int64_t f = 0; f < plane_size; f += 16) __builtin_prefetch(plane + f, 0, 2);
      PoolBinsAnyLanes(p, table, plane, K, W, range, out, argmax, taps.data());
    }
  });
}

void RoiAlignBackwardCpu(const AlignParams& p, const FeatureShape& fs, const float* rois,
                         int num_rois, const float* grad_out, const int32_t* argmax,
                         float* grad_features, float* workspace, const ParallelFor& pf) {
  const int P = p.planes(), K = fs.channels / P, KP = PadLanes(K), H = fs.height, W = fs.width;
  const int PH = p.pooled_h, PW = p.pooled_w, S = p.samples();
  if (K == 0 || num_rois == 0 || fs.batch == 0) {
    ZeroFill(grad_features, static_cast<int64_t>(fs.batch) * H * W * fs.channels, pf);
    return;
  }
  const bool in_place = RoiAlignCpuWorkspace(p, fs) == 0;
  float* gplanes = in_place ? grad_features : workspace;
  const int64_t plane_size = static_cast<int64_t>(H) * W * KP;
  const RoisByImage by_image(rois, num_rois, fs.batch);
  const int32_t* order = by_image.order.data();
  TapTable table;
  table.Build(p, fs, rois, order, num_rois, pf);
  // Shards own disjoint slices: one plane (position-sensitive) or 32 lanes of the map (RoIAlign).
  const int chunk = P > 1 ? KP : std::min(KP, 32);
  const int nchunks = (KP + chunk - 1) / chunk;
  const int64_t units = static_cast<int64_t>(fs.batch) * P * nchunks;
  const int bins_per_unit = P > 1 ? 1 : PH * PW;
  const int64_t cost = std::max<int64_t>(1, num_rois / fs.batch) * bins_per_unit * S * (chunk * 3 + 30);
  pf(units, cost, [&](int64_t begin, int64_t end) {
    std::vector<SampleTaps> taps(S);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t image_plane = u / nchunks;
      const int b = static_cast<int>(image_plane / P), plane_index = static_cast<int>(image_plane % P);
      const int k0 = static_cast<int>(u % nchunks) * chunk;
      const int lanes = std::min(K, k0 + chunk) - k0;  // real (unpadded) lanes of this chunk
      float* plane = gplanes + image_plane * plane_size + k0;
      // Each shard zeroes the slice it owns right before accumulating into it (in cache).
      const int width = std::min(chunk, KP - k0);
      if (width == KP) {
        std::memset(plane, 0, sizeof(float) * plane_size);  // the whole plane: one contiguous run
      } else {
        for (int64_t pix = 0; pix < static_cast<int64_t>(H) * W; ++pix)
          std::fill(plane + pix * KP, plane + pix * KP + width, 0.f);
      }
      if (lanes <= 0) continue;
      const int ph0 = P > 1 ? plane_index / PW : 0, ph1 = P > 1 ? ph0 + 1 : PH;
      const int pw0 = P > 1 ? plane_index % PW : 0, pw1 = P > 1 ? pw0 + 1 : PW;
      const BinRange range{by_image.start[b], by_image.start[b + 1], ph0, ph1, pw0, pw1};
      ScatterBinsAnyLanes(p, table, plane, K, k0, lanes, KP, W, range, grad_out, argmax, taps.data());
    }
  });
  if (!in_place) FromPlanes(gplanes, grad_features, fs, P, KP, pf);
}

void PsRoiPoolForwardCpu(const PsPoolParams& p, const FeatureShape& fs, const float* features,
                         const float* rois, int num_rois, float* out, float* workspace,
                         const ParallelFor& pf) {
  const int G = p.group, P = G * G, K = fs.channels / P, H = fs.height, W = fs.width;
  if (K == 0 || num_rois == 0) return;
  const float* planes = features;
  if (P > 1) {
    ToPlanes(features, workspace, fs, P, K, pf);
    planes = workspace;
  }
  const int64_t plane_size = static_cast<int64_t>(H) * W * K;
  const int64_t rois_per_image = std::max<int64_t>(1, num_rois / std::max(1, fs.batch));
  // Shard by (image, plane), as PS-RoI-Align does; a bin of a RoI covering the map holds about
  // H * W / P pixels.
  const int64_t cost = rois_per_image * (static_cast<int64_t>(H) * W / P + 1) * K * 2;
  pf(static_cast<int64_t>(fs.batch) * P, cost, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(K);
    for (int64_t u = begin; u < end; ++u) {
      const int b = static_cast<int>(u / P), bin_index = static_cast<int>(u % P);
      const int ph = bin_index / G, pw = bin_index % G;
      const float* plane = planes + u * plane_size;
      for (int64_t r = 0; r < num_rois; ++r) {
        const float* roi = rois + 5 * r;
        if (static_cast<int>(roi[0]) != b) continue;
        const PoolBin bin = MakePoolBin(roi, p.spatial_scale, G, ph, pw, H, W);
        float* o = out + ((r * G + ph) * G + pw) * K;
        if (bin.hend <= bin.hstart || bin.wend <= bin.wstart) {
          std::fill(o, o + K, 0.f);
          continue;
        }
        const int64_t area = static_cast<int64_t>(bin.hend - bin.hstart) * (bin.wend - bin.wstart);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int h = bin.hstart; h < bin.hend; ++h)
          for (int w = bin.wstart; w < bin.wend; ++w) {
            const float* v = plane + (static_cast<int64_t>(h) * W + w) * K;
            for (int k = 0; k < K; ++k) acc[k] += v[k];
          }
        for (int k = 0; k < K; ++k) o[k] = static_cast<float>(acc[k] / area);
      }
    }
  });
}

void PsRoiPoolBackwardCpu(const PsPoolParams& p, const FeatureShape& fs, const float* rois,
                          int num_rois, const float* grad_out, float* grad_features,
                          float* workspace, const ParallelFor& pf) {
  const int G = p.group, P = G * G, K = fs.channels / P, H = fs.height, W = fs.width;
  const int64_t plane_size = static_cast<int64_t>(H) * W * K;
  if (K == 0 || num_rois == 0 || fs.batch == 0) {
    ZeroFill(grad_features, plane_size * fs.batch * P, pf);
    return;
  }
  float* gplanes = P > 1 ? workspace : grad_features;
  ZeroFill(gplanes, plane_size * fs.batch * P, pf);
  const int64_t units = static_cast<int64_t>(fs.batch) * P;
  const int64_t cost = std::max<int64_t>(1, num_rois / fs.batch) * K * 40;
  pf(units, cost, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int b = static_cast<int>(u / P), bin_index = static_cast<int>(u % P);
      const int ph = bin_index / G, pw = bin_index % G;
      float* plane = gplanes + u * plane_size;
      for (int r = 0; r < num_rois; ++r) {
        const float* roi = rois + 5 * static_cast<int64_t>(r);
        if (static_cast<int>(roi[0]) != b) continue;
        const PoolBin bin = MakePoolBin(roi, p.spatial_scale, G, ph, pw, H, W);
        if (bin.hend <= bin.hstart || bin.wend <= bin.wstart) continue;
        const float area = static_cast<float>(static_cast<int64_t>(bin.hend - bin.hstart) * (bin.wend - bin.wstart));
        const float* g = grad_out + ((static_cast<int64_t>(r) * G + ph) * G + pw) * K;
        for (int h = bin.hstart; h < bin.hend; ++h)
          for (int w = bin.wstart; w < bin.wend; ++w) {
            float* v = plane + (static_cast<int64_t>(h) * W + w) * K;
            for (int k = 0; k < K; ++k) v[k] += g[k] / area;
          }
      }
    }
  });
  if (P > 1) FromPlanes(gplanes, grad_features, fs, P, K, pf);
}

}  // namespace lhrcnn
