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

// Transposes work on blocks of kPixelBlock pixels: the block's NHWC rows stay in cache while
// every plane receives one contiguous run, instead of P interleaved write streams.
constexpr int64_t kPixelBlock = 64;

// NHWC [B, H, W, P * K] (channel c = k * P + p) -> plane-major [B, P, H, W, KP], KP >= K
// (the pad lanes are zero).
void ToPlanes(const float* src, float* dst, const FeatureShape& fs, int planes, int kp,
              const ParallelFor& pf) {
  const int C = fs.channels, K = C / planes;
  const int64_t hw = static_cast<int64_t>(fs.height) * fs.width;
  const int64_t blocks_per_image = (hw + kPixelBlock - 1) / kPixelBlock;
  pf(fs.batch * blocks_per_image, kPixelBlock * planes * kp * 2, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b = blk / blocks_per_image, pix0 = (blk % blocks_per_image) * kPixelBlock;
      const int64_t pix1 = std::min(hw, pix0 + kPixelBlock);
      for (int p = 0; p < planes; ++p) {
        float* d = dst + ((b * planes + p) * hw + pix0) * kp;
        for (int64_t pix = pix0; pix < pix1; ++pix, d += kp) {
          const float* s = src + (b * hw + pix) * C + p;
          for (int k = 0; k < K; ++k) d[k] = s[k * planes];
          for (int k = K; k < kp; ++k) d[k] = 0.f;
        }
      }
    }
  });
}

// Inverse of ToPlanes (the pad lanes are dropped).
void FromPlanes(const float* src, float* dst, const FeatureShape& fs, int planes, int kp,
                const ParallelFor& pf) {
  const int C = fs.channels, K = C / planes;
  const int64_t hw = static_cast<int64_t>(fs.height) * fs.width;
  const int64_t blocks_per_image = (hw + kPixelBlock - 1) / kPixelBlock;
  pf(fs.batch * blocks_per_image, kPixelBlock * planes * kp * 2, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b = blk / blocks_per_image, pix0 = (blk % blocks_per_image) * kPixelBlock;
      const int64_t pix1 = std::min(hw, pix0 + kPixelBlock);
      for (int p = 0; p < planes; ++p) {
        const float* s = src + ((b * planes + p) * hw + pix0) * kp;
        for (int64_t pix = pix0; pix < pix1; ++pix, s += kp) {
          float* d = dst + (b * hw + pix) * C + p;
          for (int k = 0; k < K; ++k) d[k * planes] = s[k];
        }
      }
    }
  });
}

void ZeroFill(float* dst, int64_t n, const ParallelFor& pf) {
  const int64_t block = 1 << 16;
  pf((n + block - 1) / block, block, [&](int64_t begin, int64_t end) {
    const int64_t lo = begin * block, hi = std::min(n, end * block);
    std::memset(dst + lo, 0, sizeof(float) * (hi - lo));
  });
}

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

// Axis taps of every sample row and column of every RoI, computed once per call:
// y[r * PH * Sh + ph * Sh + iy], x[r * PW * Sw + pw * Sw + ix].
struct TapTable {
  std::vector<AxisTap> y, x;
  int rows = 0, cols = 0;
  void Build(const AlignParams& p, const FeatureShape& fs, const float* rois, int num_rois,
             const ParallelFor& pf) {
    rows = p.pooled_h * p.sample_h;
    cols = p.pooled_w * p.sample_w;
    y.resize(static_cast<size_t>(num_rois) * rows);
    x.resize(static_cast<size_t>(num_rois) * cols);
    pf(num_rois, 20 * (rows + cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const AlignGeometry g = MakeAlignGeometry(rois + 5 * r, p.spatial_scale, p.pooled_h, p.pooled_w,
                                                  p.aligned ? 0.5f : 0.f);
        for (int ph = 0; ph < p.pooled_h; ++ph)
          for (int iy = 0; iy < p.sample_h; ++iy)
            y[r * rows + ph * p.sample_h + iy] =
                MakeAxisTap(g.ys + g.bh * SampleFraction(ph, iy, p.sample_h), fs.height);
        for (int pw = 0; pw < p.pooled_w; ++pw)
          for (int ix = 0; ix < p.sample_w; ++ix)
            x[r * cols + pw * p.sample_w + ix] =
                MakeAxisTap(g.xs + g.bw * SampleFraction(pw, ix, p.sample_w), fs.width);
      }
    });
  }
  // Taps of the samples of bin (ph, pw) of RoI r, in (iy, ix) order.
  void BinSamples(const AlignParams& p, int64_t r, int ph, int pw, int width, int kp,
                  std::vector<SampleTaps>* out) const {
    out->resize(p.samples());
    const AxisTap* ty = &y[r * rows + ph * p.sample_h];
    const AxisTap* tx = &x[r * cols + pw * p.sample_w];
    for (int iy = 0; iy < p.sample_h; ++iy)
      for (int ix = 0; ix < p.sample_w; ++ix)
        (*out)[iy * p.sample_w + ix] = MakeSampleTaps(ty[iy], tx[ix], width, kp);
  }
};

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

// One lane group (8 or 4 lanes at offset k) of PoolAlignBin; `n` lanes are real.
template <typename VF, typename VI>
__attribute__((always_inline)) inline void PoolLanes(bool max_pool, const float* plane, int k, int n,
                                                     const SampleTaps* taps, int num_samples,
                                                     float* out, int32_t* win) {
  constexpr int L = sizeof(VF) / sizeof(float);
  VF acc = {};
  VI arg = {};
  for (int s = 0; s < num_samples; ++s) {
    const SampleTaps& t = taps[s];
    const VF value = t.w1 * Load<VF>(plane + t.o1 + k) + t.w2 * Load<VF>(plane + t.o2 + k) +
                     t.w3 * Load<VF>(plane + t.o3 + k) + t.w4 * Load<VF>(plane + t.o4 + k);
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
  if (!max_pool) acc /= static_cast<float>(num_samples);
  if (n >= L) {
    Store<VF>(out + k, acc);
  } else {
    for (int l = 0; l < L; ++l)  // conditional stores: no library call for the tail
      if (l < n) out[k + l] = acc[l];
  }
  if (win) {
    for (int l = 0; l < L; ++l)
      if (l < n) win[k + l] = arg[l];
  }
}

// Pools lanes [0, k_count) of one bin from a [H, W, KP] plane (KP = PadLanes(k_count)) into
// out[k_count] and, for max pooling, the first maximal sample's index into win[k_count].
LHRCNN_MULTIVERSION
void PoolAlignBin(bool max_pool, const float* plane, int k_count, const SampleTaps* taps,
                  int num_samples, float* out, int32_t* win) {
  const int kp = PadLanes(k_count);
  int k = 0;
  for (; kp - k >= 8; k += 8) PoolLanes<v8f, v8i>(max_pool, plane, k, k_count - k, taps, num_samples, out, win);
  if (k < kp) PoolLanes<v4f, v4i>(max_pool, plane, k, k_count - k, taps, num_samples, out, win);
}

// One lane group of ScatterAlignBin.
template <typename VF, typename VI>
__attribute__((always_inline)) inline void ScatterLanes(bool max_pool, float* plane, int k, int n,
                                                        const SampleTaps* taps, int num_samples,
                                                        const float* g, const int32_t* win) {
  constexpr int L = sizeof(VF) / sizeof(float);
  VF grad = {};
  VI arg = {};
  for (int l = 0; l < L; ++l) {
    if (l < n) {
      grad[l] = g[k + l];
      if (max_pool) arg[l] = win[k + l];
    }
  }
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

// Adds the gradient g[0, k_count) of one bin (winners in win for max pooling) to a
// [H, W, KP] plane. Every sample adds an exact zero to the lanes it did not win, so the loop
// is whole vectors; the taps of one sample may alias (clamped at the border) and are applied
// one after the other.
LHRCNN_MULTIVERSION
void ScatterAlignBin(bool max_pool, float* plane, int k_count, const SampleTaps* taps,
                     int num_samples, const float* g, const int32_t* win) {
  const int kp = PadLanes(k_count);
  int k = 0;
  for (; kp - k >= 8; k += 8) ScatterLanes<v8f, v8i>(max_pool, plane, k, k_count - k, taps, num_samples, g, win);
  if (k < kp) ScatterLanes<v4f, v4i>(max_pool, plane, k, k_count - k, taps, num_samples, g, win);
}

}  // namespace

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
  TapTable table;
  table.Build(p, fs, rois, num_rois, pf);
  const int64_t bin_cost = static_cast<int64_t>(S) * (KP * 2 + 30);
  auto pool = [&](const float* plane, int64_t r, int ph, int pw, std::vector<SampleTaps>* taps) {
    table.BinSamples(p, r, ph, pw, W, KP, taps);
    const int64_t o = ((r * PH + ph) * PW + pw) * K;
    PoolAlignBin(p.max_pool, plane, K, taps->data(), S, out + o, argmax ? argmax + o : nullptr);
  };
  if (P == 1) {
    // Channel-wise RoIAlign: every bin reads the image's single plane; shard by RoI.
    pf(num_rois, bin_cost * PH * PW, [&](int64_t begin, int64_t end) {
      std::vector<SampleTaps> taps;
      for (int64_t r = begin; r < end; ++r) {
        const float* plane = planes + static_cast<int64_t>(rois[5 * r]) * plane_size;
        for (int ph = 0; ph < PH; ++ph)
          for (int pw = 0; pw < PW; ++pw) pool(plane, r, ph, pw, &taps);
      }
    });
    return;
  }
  // Position-sensitive: bin (ph, pw) of every RoI reads only plane ph * PW + pw, so shard by
  // (image, plane) and keep that plane hot in cache while all RoIs of the image visit it.
  const RoisByImage by_image(rois, num_rois, fs.batch);
  const int64_t rois_per_image = std::max<int64_t>(1, num_rois / std::max(1, fs.batch));
  pf(static_cast<int64_t>(fs.batch) * P, bin_cost * rois_per_image, [&](int64_t begin, int64_t end) {
    std::vector<SampleTaps> taps;
    for (int64_t u = begin; u < end; ++u) {
      const int b = static_cast<int>(u / P), plane_index = static_cast<int>(u % P);
      const float* plane = planes + u * plane_size;
      for (int i = by_image.start[b]; i < by_image.start[b + 1]; ++i)
        pool(plane, by_image.order[i], plane_index / PW, plane_index % PW, &taps);
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
  TapTable table;
  table.Build(p, fs, rois, num_rois, pf);
  const RoisByImage by_image(rois, num_rois, fs.batch);
  // Shards own disjoint slices: one plane (position-sensitive) or 32 lanes of the map (RoIAlign).
  const int chunk = P > 1 ? KP : std::min(KP, 32);
  const int nchunks = (KP + chunk - 1) / chunk;
  const int64_t units = static_cast<int64_t>(fs.batch) * P * nchunks;
  const int bins_per_unit = P > 1 ? 1 : PH * PW;
  const int64_t cost = std::max<int64_t>(1, num_rois / fs.batch) * bins_per_unit * S * (chunk * 3 + 30);
  pf(units, cost, [&](int64_t begin, int64_t end) {
    std::vector<SampleTaps> taps;
    for (int64_t u = begin; u < end; ++u) {
      const int64_t image_plane = u / nchunks;
      const int b = static_cast<int>(image_plane / P), plane_index = static_cast<int>(image_plane % P);
      const int k0 = static_cast<int>(u % nchunks) * chunk;
      const int lanes = std::min(K, k0 + chunk) - k0;  // real (unpadded) lanes of this chunk
      float* plane = gplanes + image_plane * plane_size + k0;
      // Each shard zeroes the slice it owns right before accumulating into it (in cache).
      const int width = std::min(chunk, KP - k0);
      for (int64_t pix = 0; pix < static_cast<int64_t>(H) * W; ++pix)
        std::fill(plane + pix * KP, plane + pix * KP + width, 0.f);
      if (lanes <= 0) continue;
      const int ph_begin = P > 1 ? plane_index / PW : 0, ph_end = P > 1 ? ph_begin + 1 : PH;
      const int pw_begin = P > 1 ? plane_index % PW : 0, pw_end = P > 1 ? pw_begin + 1 : PW;
      for (int i = by_image.start[b]; i < by_image.start[b + 1]; ++i) {
        const int64_t r = by_image.order[i];
        for (int ph = ph_begin; ph < ph_end; ++ph)
          for (int pw = pw_begin; pw < pw_end; ++pw) {
            const int64_t o = ((r * PH + ph) * PW + pw) * K + k0;
            table.BinSamples(p, r, ph, pw, W, KP, &taps);
            ScatterAlignBin(p.max_pool, plane, lanes, taps.data(), S, grad_out + o,
                            p.max_pool ? argmax + o : nullptr);
          }
      }
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
