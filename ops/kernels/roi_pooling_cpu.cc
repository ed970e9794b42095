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

// Sample taps of one RoI along both axes: y taps for all PH * Sh sample rows, x taps for all
// PW * Sw sample columns (row ph * Sh + iy, column pw * Sw + ix).
struct RoiTaps {
  std::vector<AxisTap> y, x;
  void Compute(const AlignParams& p, const FeatureShape& fs, const float* roi) {
    const float offset = p.aligned ? 0.5f : 0.f;
    const AlignGeometry g = MakeAlignGeometry(roi, p.spatial_scale, p.pooled_h, p.pooled_w, offset);
    y.resize(p.pooled_h * p.sample_h);
    x.resize(p.pooled_w * p.sample_w);
    for (int ph = 0; ph < p.pooled_h; ++ph)
      for (int iy = 0; iy < p.sample_h; ++iy)
        y[ph * p.sample_h + iy] =
            MakeAxisTap(g.ys + g.bh * SampleFraction(ph, iy, p.sample_h), fs.height);
    for (int pw = 0; pw < p.pooled_w; ++pw)
      for (int ix = 0; ix < p.sample_w; ++ix)
        x[pw * p.sample_w + ix] =
            MakeAxisTap(g.xs + g.bw * SampleFraction(pw, ix, p.sample_w), fs.width);
  }
};

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
  const int PH = p.pooled_h, PW = p.pooled_w, Sh = p.sample_h, Sw = p.sample_w;
  const int S = p.samples();
  const float* planes = features;
  if (P > 1) {
    ToPlanes(features, workspace, fs, P, pf);
    planes = workspace;
  }
  const int64_t plane_size = static_cast<int64_t>(H) * W * K;
  const int64_t cost = static_cast<int64_t>(PH) * PW * S * K * 12 + 200;
  pf(num_rois, cost, [&](int64_t begin, int64_t end) {
    RoiTaps taps;
    for (int64_t r = begin; r < end; ++r) {
      const float* roi = rois + 5 * r;
      const int b = static_cast<int>(roi[0]);
      taps.Compute(p, fs, roi);
      for (int ph = 0; ph < PH; ++ph) {
        for (int pw = 0; pw < PW; ++pw) {
          const int plane_index = P > 1 ? ph * PW + pw : 0;
          const float* plane = planes + (static_cast<int64_t>(b) * P + plane_index) * plane_size;
          const int64_t out_offset = ((r * PH + ph) * PW + pw) * K;
          float* o = out + out_offset;
          int32_t* am = argmax ? argmax + out_offset : nullptr;
          for (int iy = 0; iy < Sh; ++iy) {
            const AxisTap& ty = taps.y[ph * Sh + iy];
            for (int ix = 0; ix < Sw; ++ix) {
              const SampleTaps t = MakeSampleTaps(ty, taps.x[pw * Sw + ix], W, K);
              const float *p1 = plane + t.o1, *p2 = plane + t.o2, *p3 = plane + t.o3,
                          *p4 = plane + t.o4;
              const int s = iy * Sw + ix;
              if (s == 0) {
                for (int k = 0; k < K; ++k)
                  o[k] = t.w1 * p1[k] + t.w2 * p2[k] + t.w3 * p3[k] + t.w4 * p4[k];
                if (am) std::fill(am, am + K, 0);
              } else if (p.max_pool) {
                for (int k = 0; k < K; ++k) {
                  const float v = t.w1 * p1[k] + t.w2 * p2[k] + t.w3 * p3[k] + t.w4 * p4[k];
                  if (v > o[k]) {
                    o[k] = v;
                    am[k] = s;
                  }
                }
              } else {
                for (int k = 0; k < K; ++k)
                  o[k] += t.w1 * p1[k] + t.w2 * p2[k] + t.w3 * p3[k] + t.w4 * p4[k];
              }
            }
          }
          if (!p.max_pool) {
            const float count = static_cast<float>(S);
            for (int k = 0; k < K; ++k) o[k] /= count;
          }
        }
      }
    }
  });
}

void RoiAlignBackwardCpu(const AlignParams& p, const FeatureShape& fs, const float* rois,
                         int num_rois, const float* grad_out, const int32_t* argmax,
                         float* grad_features, float* workspace, const ParallelFor& pf) {
  const int P = p.planes(), K = fs.channels / P, H = fs.height, W = fs.width;
  const int PH = p.pooled_h, PW = p.pooled_w, Sh = p.sample_h, Sw = p.sample_w;
  const int S = p.samples();
  const int64_t plane_size = static_cast<int64_t>(H) * W * K;
  if (K == 0 || num_rois == 0 || fs.batch == 0) {
    ZeroFill(grad_features, plane_size * fs.batch * P, pf);
    return;
  }
  float* gplanes = P > 1 ? workspace : grad_features;
  ZeroFill(gplanes, plane_size * fs.batch * P, pf);
  // Channel chunks keep shards numerous when there is a single plane (RoIAlign).
  const int chunk = P > 1 ? K : std::max(1, std::min(K, 32));
  const int nchunks = (K + chunk - 1) / chunk;
  const int64_t units = static_cast<int64_t>(fs.batch) * P * nchunks;
  const int bins_per_unit = P > 1 ? 1 : PH * PW;
  const int64_t cost = std::max<int64_t>(1, static_cast<int64_t>(num_rois) / fs.batch) *
                       bins_per_unit * chunk * (p.max_pool ? 12 : 10 * S);
  pf(units, cost, [&](int64_t begin, int64_t end) {
    RoiTaps taps;
    for (int64_t u = begin; u < end; ++u) {
      const int b = static_cast<int>(u / (static_cast<int64_t>(P) * nchunks));
      const int rem = static_cast<int>(u % (static_cast<int64_t>(P) * nchunks));
      const int plane_index = rem / nchunks;
      const int k0 = (rem % nchunks) * chunk, k1 = std::min(K, k0 + chunk);
      float* plane = gplanes + (static_cast<int64_t>(b) * P + plane_index) * plane_size;
      const int ph_begin = P > 1 ? plane_index / PW : 0, ph_end = P > 1 ? ph_begin + 1 : PH;
      const int pw_begin = P > 1 ? plane_index % PW : 0, pw_end = P > 1 ? pw_begin + 1 : PW;
      for (int r = 0; r < num_rois; ++r) {
        const float* roi = rois + 5 * static_cast<int64_t>(r);
        if (static_cast<int>(roi[0]) != b) continue;
        taps.Compute(p, fs, roi);
        for (int ph = ph_begin; ph < ph_end; ++ph) {
          for (int pw = pw_begin; pw < pw_end; ++pw) {
            const int64_t out_offset = ((static_cast<int64_t>(r) * PH + ph) * PW + pw) * K;
            const float* g = grad_out + out_offset;
            if (p.max_pool) {
              const int32_t* am = argmax + out_offset;
              for (int k = k0; k < k1; ++k) {
                const int s = am[k];
                const SampleTaps t =
                    MakeSampleTaps(taps.y[ph * Sh + s / Sw], taps.x[pw * Sw + s % Sw], W, K);
                const float gk = g[k];
                plane[t.o1 + k] += t.w1 * gk;
                plane[t.o2 + k] += t.w2 * gk;
                plane[t.o3 + k] += t.w3 * gk;
                plane[t.o4 + k] += t.w4 * gk;
              }
            } else {
              const float count = static_cast<float>(S);
              for (int iy = 0; iy < Sh; ++iy) {
                for (int ix = 0; ix < Sw; ++ix) {
                  const SampleTaps t =
                      MakeSampleTaps(taps.y[ph * Sh + iy], taps.x[pw * Sw + ix], W, K);
                  for (int k = k0; k < k1; ++k) {
                    const float gk = g[k] / count;
                    plane[t.o1 + k] += t.w1 * gk;
                    plane[t.o2 + k] += t.w2 * gk;
                    plane[t.o3 + k] += t.w3 * gk;
                    plane[t.o4 + k] += t.w4 * gk;
                  }
                }
              }
            }
          }
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
  const float* planes = features;
  if (P > 1) {
    ToPlanes(features, workspace, fs, P, pf);
    planes = workspace;
  }
  const int64_t plane_size = static_cast<int64_t>(H) * W * K;
  // Bins hold about (H * W) / P pixels for a RoI covering the map; use a modest guess.
  const int64_t cost = static_cast<int64_t>(P) * K * 40 + 200;
  pf(num_rois, cost, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(K);
    for (int64_t r = begin; r < end; ++r) {
      const float* roi = rois + 5 * r;
      const int b = static_cast<int>(roi[0]);
      for (int ph = 0; ph < G; ++ph) {
        for (int pw = 0; pw < G; ++pw) {
          const PoolBin bin = MakePoolBin(roi, p.spatial_scale, G, ph, pw, H, W);
          const float* plane = planes + (static_cast<int64_t>(b) * P + ph * G + pw) * plane_size;
          float* o = out + ((r * G + ph) * G + pw) * K;
          const int area = (bin.hend - bin.hstart) * (bin.wend - bin.wstart);
          if (bin.hend <= bin.hstart || bin.wend <= bin.wstart) {
            std::fill(o, o + K, 0.f);
            continue;
          }
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int h = bin.hstart; h < bin.hend; ++h)
            for (int w = bin.wstart; w < bin.wend; ++w) {
              const float* v = plane + (static_cast<int64_t>(h) * W + w) * K;
              for (int k = 0; k < K; ++k) acc[k] += v[k];
            }
          for (int k = 0; k < K; ++k) o[k] = static_cast<float>(acc[k] / area);
        }
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
