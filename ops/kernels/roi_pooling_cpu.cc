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

// NHWC [B, H, W, P * K] (channel c = k * P + p) -> plane-major [B, P, H, W, K].
void ToPlanes(const float* src, float* dst, const FeatureShape& fs, int planes,
              const ParallelFor& pf) {
  const int C = fs.channels, K = C / planes;
  const int64_t hw = static_cast<int64_t>(fs.height) * fs.width;
  pf(fs.batch * hw, 2 * C, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / hw, pix = i % hw;
      const float* s = src + i * C;
      for (int p = 0; p < planes; ++p) {
        float* d = dst + ((b * planes + p) * hw + pix) * K;
        for (int k = 0; k < K; ++k) d[k] = s[k * planes + p];
      }
    }
  });
}

// Inverse of ToPlanes.
void FromPlanes(const float* src, float* dst, const FeatureShape& fs, int planes,
                const ParallelFor& pf) {
  const int C = fs.channels, K = C / planes;
  const int64_t hw = static_cast<int64_t>(fs.height) * fs.width;
  pf(fs.batch * hw, 2 * C, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / hw, pix = i % hw;
      float* d = dst + i * C;
      for (int p = 0; p < planes; ++p) {
        const float* s = src + ((b * planes + p) * hw + pix) * K;
        for (int k = 0; k < K; ++k) d[k * planes + p] = s[k];
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

// The four taps of one sample inside a [H, W, K] plane.
struct SampleTaps {
  int64_t o1, o2, o3, o4;  // offsets (in floats) of the K-vectors
  float w1, w2, w3, w4;
};

inline SampleTaps MakeSampleTaps(const AxisTap& ty, const AxisTap& tx, int width, int K) {
  SampleTaps t;
  const int64_t rlo = static_cast<int64_t>(ty.lo) * width, rhi = static_cast<int64_t>(ty.hi) * width;
  t.o1 = (rlo + tx.lo) * K; t.o2 = (rlo + tx.hi) * K;
  t.o3 = (rhi + tx.lo) * K; t.o4 = (rhi + tx.hi) * K;
  t.w1 = ty.wlo * tx.wlo; t.w2 = ty.wlo * tx.whi;
  t.w3 = ty.whi * tx.wlo; t.w4 = ty.whi * tx.whi;
  return t;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LHRCNN_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define LHRCNN_MULTIVERSION
#endif

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
  void BinSamples(const AlignParams& p, int64_t r, int ph, int pw, int width, int K,
                  std::vector<SampleTaps>* out) const {
    out->resize(p.samples());
    const AxisTap* ty = &y[r * rows + ph * p.sample_h];
    const AxisTap* tx = &x[r * cols + pw * p.sample_w];
    for (int iy = 0; iy < p.sample_h; ++iy)
      for (int ix = 0; ix < p.sample_w; ++ix)
        (*out)[iy * p.sample_w + ix] = MakeSampleTaps(ty[iy], tx[ix], width, K);
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

// Pools one bin from a [H, W, K] plane into o[K] (and the winning samples into am[K]).
LHRCNN_MULTIVERSION
void PoolAlignBin(bool max_pool, const float* plane, int K, const SampleTaps* taps, int num_samples,
                  float* o, int32_t* am) {
  for (int s = 0; s < num_samples; ++s) {
    const SampleTaps& t = taps[s];
    const float *p1 = plane + t.o1, *p2 = plane + t.o2, *p3 = plane + t.o3, *p4 = plane + t.o4;
    const float w1 = t.w1, w2 = t.w2, w3 = t.w3, w4 = t.w4;
    if (s == 0) {
      for (int k = 0; k < K; ++k) o[k] = w1 * p1[k] + w2 * p2[k] + w3 * p3[k] + w4 * p4[k];
      if (am) std::fill(am, am + K, 0);
    } else if (max_pool) {
      for (int k = 0; k < K; ++k) {  // branch-free so it vectorises; strict > keeps the first max
        const float v = w1 * p1[k] + w2 * p2[k] + w3 * p3[k] + w4 * p4[k];
        const bool better = v > o[k];
        o[k] = better ? v : o[k];
        am[k] = better ? s : am[k];
      }
    } else {
      for (int k = 0; k < K; ++k) o[k] += w1 * p1[k] + w2 * p2[k] + w3 * p3[k] + w4 * p4[k];
    }
  }
  if (!max_pool) {
    const float count = static_cast<float>(num_samples);
    for (int k = 0; k < K; ++k) o[k] /= count;
  }
}

// Adds the gradient g[k0:k1) of one bin to a [H, W, K] plane: for max pooling each channel's
// gradient goes to its winning sample only.
void ScatterAlignBin(bool max_pool, float* plane, int k0, int k1, const SampleTaps* taps,
                     int num_samples, const float* g, const int32_t* am) {
  if (max_pool) {
    for (int k = k0; k < k1; ++k) {
      const SampleTaps& t = taps[am[k]];
      const float gk = g[k];
      plane[t.o1 + k] += t.w1 * gk;
      plane[t.o2 + k] += t.w2 * gk;
      plane[t.o3 + k] += t.w3 * gk;
      plane[t.o4 + k] += t.w4 * gk;
    }
    return;
  }
  const float count = static_cast<float>(num_samples);
  for (int s = 0; s < num_samples; ++s) {
    const SampleTaps& t = taps[s];
    for (int k = k0; k < k1; ++k) {
      const float gk = g[k] / count;
      plane[t.o1 + k] += t.w1 * gk;
      plane[t.o2 + k] += t.w2 * gk;
      plane[t.o3 + k] += t.w3 * gk;
      plane[t.o4 + k] += t.w4 * gk;
    }
  }
}

}  // namespace

int64_t RoiAlignCpuWorkspace(const AlignParams& p, const FeatureShape& fs) {
  if (!p.position_sensitive || p.planes() == 1) return 0;
  return static_cast<int64_t>(fs.batch) * fs.height * fs.width * fs.channels;
}

int64_t PsRoiPoolCpuWorkspace(const PsPoolParams& p, const FeatureShape& fs) {
  if (p.group == 1) return 0;
  return static_cast<int64_t>(fs.batch) * fs.height * fs.width * fs.channels;
}

void RoiAlignForwardCpu(const AlignParams& p, const FeatureShape& fs, const float* features,
                        const float* rois, int num_rois, float* out, int32_t* argmax,
                        float* workspace, const ParallelFor& pf) {
  const int P = p.planes(), K = fs.channels / P, H = fs.height, W = fs.width;
  const int PH = p.pooled_h, PW = p.pooled_w, S = p.samples();
  if (K == 0 || num_rois == 0) return;
  const int64_t plane_size = static_cast<int64_t>(H) * W * K;
  const int64_t bin_cost = static_cast<int64_t>(S) * (K * 10 + 20);
  TapTable table;
  table.Build(p, fs, rois, num_rois, pf);
  if (P == 1) {
    // Channel-wise RoIAlign: each tap reads K contiguous floats of the NHWC map; shard by RoI.
    pf(num_rois, bin_cost * PH * PW, [&](int64_t begin, int64_t end) {
      std::vector<SampleTaps> taps;
      for (int64_t r = begin; r < end; ++r) {
        const float* plane = features + static_cast<int64_t>(rois[5 * r]) * plane_size;
        for (int ph = 0; ph < PH; ++ph)
          for (int pw = 0; pw < PW; ++pw) {
            const int64_t o = ((r * PH + ph) * PW + pw) * K;
            table.BinSamples(p, r, ph, pw, W, K, &taps);
            PoolAlignBin(p.max_pool, plane, K, taps.data(), S, out + o, argmax ? argmax + o : nullptr);
          }
      }
    });
    return;
  }
  // Position-sensitive: bin (ph, pw) of every RoI reads only plane ph * PW + pw, so shard by
  // (image, plane) and keep that plane hot in cache while all RoIs of the image visit it.
  ToPlanes(features, workspace, fs, P, pf);
  const RoisByImage by_image(rois, num_rois, fs.batch);
  const int64_t rois_per_image = std::max<int64_t>(1, num_rois / std::max(1, fs.batch));
  pf(static_cast<int64_t>(fs.batch) * P, bin_cost * rois_per_image, [&](int64_t begin, int64_t end) {
    std::vector<SampleTaps> taps;
    for (int64_t u = begin; u < end; ++u) {
      const int b = static_cast<int>(u / P), plane_index = static_cast<int>(u % P);
      const int ph = plane_index / PW, pw = plane_index % PW;
      const float* plane = workspace + u * plane_size;
      for (int i = by_image.start[b]; i < by_image.start[b + 1]; ++i) {
        const int64_t r = by_image.order[i];
        table.BinSamples(p, r, ph, pw, W, K, &taps);
        const int64_t o = ((r * PH + ph) * PW + pw) * K;
        PoolAlignBin(p.max_pool, plane, K, taps.data(), S, out + o, argmax ? argmax + o : nullptr);
      }
    }
  });
}

void RoiAlignBackwardCpu(const AlignParams& p, const FeatureShape& fs, const float* rois,
                         int num_rois, const float* grad_out, const int32_t* argmax,
                         float* grad_features, float* workspace, const ParallelFor& pf) {
  const int P = p.planes(), K = fs.channels / P, H = fs.height, W = fs.width;
  const int PH = p.pooled_h, PW = p.pooled_w, S = p.samples();
  const int64_t plane_size = static_cast<int64_t>(H) * W * K;
  if (K == 0 || num_rois == 0 || fs.batch == 0) {
    ZeroFill(grad_features, plane_size * fs.batch * P, pf);
    return;
  }
  float* gplanes = P > 1 ? workspace : grad_features;
  ZeroFill(gplanes, plane_size * fs.batch * P, pf);
  TapTable table;
  table.Build(p, fs, rois, num_rois, pf);
  const RoisByImage by_image(rois, num_rois, fs.batch);
  // Shards own disjoint slices: one plane (position-sensitive) or a chunk of channels (RoIAlign).
  const int chunk = P > 1 ? K : std::min(K, 32);
  const int nchunks = (K + chunk - 1) / chunk;
  const int64_t units = static_cast<int64_t>(fs.batch) * P * nchunks;
  const int bins_per_unit = P > 1 ? 1 : PH * PW;
  const int64_t cost = std::max<int64_t>(1, num_rois / fs.batch) * bins_per_unit *
                       (chunk * (p.max_pool ? 12 : 10 * S) + 20 * S);
  pf(units, cost, [&](int64_t begin, int64_t end) {
    std::vector<SampleTaps> taps;
    for (int64_t u = begin; u < end; ++u) {
      const int64_t image_plane = u / nchunks;
      const int b = static_cast<int>(image_plane / P), plane_index = static_cast<int>(image_plane % P);
      const int k0 = static_cast<int>(u % nchunks) * chunk, k1 = std::min(K, k0 + chunk);
      float* plane = gplanes + image_plane * plane_size;
      const int ph_begin = P > 1 ? plane_index / PW : 0, ph_end = P > 1 ? ph_begin + 1 : PH;
      const int pw_begin = P > 1 ? plane_index % PW : 0, pw_end = P > 1 ? pw_begin + 1 : PW;
      for (int i = by_image.start[b]; i < by_image.start[b + 1]; ++i) {
        const int64_t r = by_image.order[i];
        for (int ph = ph_begin; ph < ph_end; ++ph)
          for (int pw = pw_begin; pw < pw_end; ++pw) {
            const int64_t o = ((r * PH + ph) * PW + pw) * K;
            table.BinSamples(p, r, ph, pw, W, K, &taps);
            ScatterAlignBin(p.max_pool, plane, k0, k1, taps.data(), S, grad_out + o,
                            p.max_pool ? argmax + o : nullptr);
          }
      }
    }
  });
  if (P > 1) FromPlanes(gplanes, grad_features, fs, P, pf);
}

void PsRoiPoolForwardCpu(const PsPoolParams& p, const FeatureShape& fs, const float* features,
                         const float* rois, int num_rois, float* out, float* workspace,
                         const ParallelFor& pf) {
  const int G = p.group, P = G * G, K = fs.channels / P, H = fs.height, W = fs.width;
  if (K == 0 || num_rois == 0) return;
  const float* planes = features;
  if (P > 1) {
    ToPlanes(features, workspace, fs, P, pf);
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
        const int area = (bin.hend - bin.hstart) * (bin.wend - bin.wstart);
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
        const float area = static_cast<float>((bin.hend - bin.hstart) * (bin.wend - bin.wstart));
        const float* g = grad_out + ((static_cast<int64_t>(r) * G + ph) * G + pw) * K;
        for (int h = bin.hstart; h < bin.hend; ++h)
          for (int w = bin.wstart; w < bin.wend; ++w) {
            float* v = plane + (static_cast<int64_t>(h) * W + w) * K;
            for (int k = 0; k < K; ++k) v[k] += g[k] / area;
          }
      }
    }
  });
  if (P > 1) FromPlanes(gplanes, grad_features, fs, P, pf);
}

}  // namespace lhrcnn
