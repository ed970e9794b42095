// CUDA kernels of the RoI pooling family and their framework-free launchers (see
// roi_pooling.h). One thread per output element on NHWC data; backward passes accumulate with
// atomicAdd after zeroing the gradient. Sampling and interpolation come from common.h, shared
// with the CPU kernels. Compiled with -fmad=false so results match the CPU to the last bit
// wherever the summation order is the same.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"
#include "roi_pooling.h"

namespace lhrcnn {
namespace {

constexpr int kThreads = 256;

inline int Blocks(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535LL * 64 ? b : 65535LL * 64);
}

#define LHRCNN_GRID_LOOP(i, n)                                                        \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

__global__ void ValidateRoisKernel(const float* rois, int num_rois, int batch, int* first_bad) {
  LHRCNN_GRID_LOOP(r, num_rois) {
    if (CheckRoi(rois + 5 * r, batch) != kRoiOk) atomicMin(first_bad, static_cast<int>(r));
  }
}

__global__ void ValidateArgmaxKernel(const int32_t* argmax, int64_t n, int samples,
                                     unsigned long long* first_bad) {
  LHRCNN_GRID_LOOP(i, n) {
    if (argmax[i] < 0 || argmax[i] >= samples) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
}

// Value of one bilinear sample of channel c.
__device__ __forceinline__ float Sample(const float* image, int width, int channels, int c,
                                        const AxisTap& ty, const AxisTap& tx) {
  const int64_t rlo = static_cast<int64_t>(ty.lo) * width, rhi = static_cast<int64_t>(ty.hi) * width;
  const float w1 = ty.wlo * tx.wlo, w2 = ty.wlo * tx.whi, w3 = ty.whi * tx.wlo,
              w4 = ty.whi * tx.whi;
  return w1 * image[(rlo + tx.lo) * channels + c] + w2 * image[(rlo + tx.hi) * channels + c] +
         w3 * image[(rhi + tx.lo) * channels + c] + w4 * image[(rhi + tx.hi) * channels + c];
}

__device__ __forceinline__ void Scatter(float* image, int width, int channels, int c,
                                        const AxisTap& ty, const AxisTap& tx, float g) {
  const int64_t rlo = static_cast<int64_t>(ty.lo) * width, rhi = static_cast<int64_t>(ty.hi) * width;
  const float w1 = ty.wlo * tx.wlo, w2 = ty.wlo * tx.whi, w3 = ty.whi * tx.wlo,
              w4 = ty.whi * tx.whi;
  if (w1 != 0.f) atomicAdd(image + (rlo + tx.lo) * channels + c, w1 * g);
  if (w2 != 0.f) atomicAdd(image + (rlo + tx.hi) * channels + c, w2 * g);
  if (w3 != 0.f) atomicAdd(image + (rhi + tx.lo) * channels + c, w3 * g);
  if (w4 != 0.f) atomicAdd(image + (rhi + tx.hi) * channels + c, w4 * g);
}

struct OutIndex {
  int64_t r;
  int ph, pw, k, c;
};

__device__ __forceinline__ OutIndex Decompose(int64_t i, const AlignParams& p, int K) {
  OutIndex o;
  o.k = static_cast<int>(i % K);
  int64_t t = i / K;
  o.pw = static_cast<int>(t % p.pooled_w);
  t /= p.pooled_w;
  o.ph = static_cast<int>(t % p.pooled_h);
  o.r = t / p.pooled_h;
  o.c = p.position_sensitive ? o.k * p.planes() + o.ph * p.pooled_w + o.pw : o.k;
  return o;
}

__global__ void RoiAlignForwardKernel(AlignParams p, FeatureShape fs, const float* features,
                                      const float* rois, int64_t total, float* out,
                                      int32_t* argmax) {
  const int K = p.position_sensitive ? fs.channels / p.planes() : fs.channels;
  const float offset = p.aligned ? 0.5f : 0.f;
  LHRCNN_GRID_LOOP(i, total) {
    const OutIndex o = Decompose(i, p, K);
    const float* roi = rois + 5 * o.r;
    const int b = static_cast<int>(roi[0]);
    if (b < 0 || b >= fs.batch) {  // validated before launch; never read out of bounds
      out[i] = 0.f;
      if (argmax) argmax[i] = 0;
      continue;
    }
    const AlignGeometry g = MakeAlignGeometry(roi, p.spatial_scale, p.pooled_h, p.pooled_w, offset);
    const float* image = features + static_cast<int64_t>(b) * fs.height * fs.width * fs.channels;
    float best = 0.f;
    int best_s = 0;
    for (int iy = 0; iy < p.sample_h; ++iy) {
      const AxisTap ty =
          MakeAxisTap(g.ys + g.bh * SampleFraction(o.ph, iy, p.sample_h), fs.height);
      for (int ix = 0; ix < p.sample_w; ++ix) {
        const AxisTap tx =
            MakeAxisTap(g.xs + g.bw * SampleFraction(o.pw, ix, p.sample_w), fs.width);
        const float v = Sample(image, fs.width, fs.channels, o.c, ty, tx);
        const int s = iy * p.sample_w + ix;
        if (s == 0) {
          best = v;
        } else if (p.max_pool) {
          if (v > best) {
            best = v;
            best_s = s;
          }
        } else {
          best += v;
        }
      }
    }
    out[i] = p.max_pool ? best : best / static_cast<float>(p.samples());
    if (argmax) argmax[i] = best_s;
  }
}

__global__ void RoiAlignBackwardKernel(AlignParams p, FeatureShape fs, const float* rois,
                                       int64_t total, const float* grad_out,
                                       const int32_t* argmax, float* grad_features) {
  const int K = p.position_sensitive ? fs.channels / p.planes() : fs.channels;
  const float offset = p.aligned ? 0.5f : 0.f;
  LHRCNN_GRID_LOOP(i, total) {
    const OutIndex o = Decompose(i, p, K);
    const float* roi = rois + 5 * o.r;
    const int b = static_cast<int>(roi[0]);
    if (b < 0 || b >= fs.batch) continue;
    const AlignGeometry g = MakeAlignGeometry(roi, p.spatial_scale, p.pooled_h, p.pooled_w, offset);
    float* image = grad_features + static_cast<int64_t>(b) * fs.height * fs.width * fs.channels;
    if (p.max_pool) {
      const int s = argmax[i];
      const int iy = s / p.sample_w, ix = s % p.sample_w;
      const AxisTap ty = MakeAxisTap(g.ys + g.bh * SampleFraction(o.ph, iy, p.sample_h), fs.height);
      const AxisTap tx = MakeAxisTap(g.xs + g.bw * SampleFraction(o.pw, ix, p.sample_w), fs.width);
      Scatter(image, fs.width, fs.channels, o.c, ty, tx, grad_out[i]);
    } else {
      const float gs = grad_out[i] / static_cast<float>(p.samples());
      for (int iy = 0; iy < p.sample_h; ++iy) {
        const AxisTap ty =
            MakeAxisTap(g.ys + g.bh * SampleFraction(o.ph, iy, p.sample_h), fs.height);
        for (int ix = 0; ix < p.sample_w; ++ix) {
          const AxisTap tx =
              MakeAxisTap(g.xs + g.bw * SampleFraction(o.pw, ix, p.sample_w), fs.width);
          Scatter(image, fs.width, fs.channels, o.c, ty, tx, gs);
        }
      }
    }
  }
}

__global__ void PsRoiPoolForwardKernel(PsPoolParams p, FeatureShape fs, const float* features,
                                       const float* rois, int64_t total, float* out) {
  const int G = p.group, K = fs.channels / (G * G);
  LHRCNN_GRID_LOOP(i, total) {
    const int k = static_cast<int>(i % K);
    int64_t t = i / K;
    const int pw = static_cast<int>(t % G);
    t /= G;
    const int ph = static_cast<int>(t % G);
    const int64_t r = t / G;
    const float* roi = rois + 5 * r;
    const int b = static_cast<int>(roi[0]);
    const PoolBin bin = MakePoolBin(roi, p.spatial_scale, G, ph, pw, fs.height, fs.width);
    if (b < 0 || b >= fs.batch || bin.hend <= bin.hstart || bin.wend <= bin.wstart) {
      out[i] = 0.f;
      continue;
    }
    const int c = (k * G + ph) * G + pw;
    const float* image = features + static_cast<int64_t>(b) * fs.height * fs.width * fs.channels;
    double acc = 0.0;
    for (int h = bin.hstart; h < bin.hend; ++h)
      for (int w = bin.wstart; w < bin.wend; ++w)
        acc += image[(static_cast<int64_t>(h) * fs.width + w) * fs.channels + c];
    const int64_t area = static_cast<int64_t>(bin.hend - bin.hstart) * (bin.wend - bin.wstart);
    out[i] = static_cast<float>(acc / area);
  }
}

__global__ void PsRoiPoolBackwardKernel(PsPoolParams p, FeatureShape fs, const float* rois,
                                        int64_t total, const float* grad_out,
                                        float* grad_features) {
  const int G = p.group, K = fs.channels / (G * G);
  LHRCNN_GRID_LOOP(i, total) {
    const int k = static_cast<int>(i % K);
    int64_t t = i / K;
    const int pw = static_cast<int>(t % G);
    t /= G;
    const int ph = static_cast<int>(t % G);
    const int64_t r = t / G;
    const float* roi = rois + 5 * r;
    const int b = static_cast<int>(roi[0]);
    const PoolBin bin = MakePoolBin(roi, p.spatial_scale, G, ph, pw, fs.height, fs.width);
    if (b < 0 || b >= fs.batch || bin.hend <= bin.hstart || bin.wend <= bin.wstart) continue;
    const int c = (k * G + ph) * G + pw;
    float* image = grad_features + static_cast<int64_t>(b) * fs.height * fs.width * fs.channels;
    const float area = static_cast<float>(static_cast<int64_t>(bin.hend - bin.hstart) * (bin.wend - bin.wstart));
    const float g = grad_out[i] / area;
    for (int h = bin.hstart; h < bin.hend; ++h)
      for (int w = bin.wstart; w < bin.wend; ++w)
        atomicAdd(image + (static_cast<int64_t>(h) * fs.width + w) * fs.channels + c, g);
  }
}

int64_t NumOutputs(const AlignParams& p, const FeatureShape& fs, int num_rois) {
  const int K = p.position_sensitive ? fs.channels / p.planes() : fs.channels;
  return static_cast<int64_t>(num_rois) * p.pooled_h * p.pooled_w * K;
}

int64_t FeatureSize(const FeatureShape& fs) {
  return static_cast<int64_t>(fs.batch) * fs.height * fs.width * fs.channels;
}

}  // namespace

int ValidateRoisGpu(const float* rois, int num_rois, int batch, int* scratch, int* bad_index,
                    int* bad_code, float* bad_row, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  *bad_index = -1;
  *bad_code = kRoiOk;
  if (num_rois == 0) return 0;
  const int sentinel = 0x7f7f7f7f;
  cudaError_t e = cudaMemsetAsync(scratch, 0x7f, sizeof(int), s);
  if (e != cudaSuccess) return e;
  ValidateRoisKernel<<<Blocks(num_rois), kThreads, 0, s>>>(rois, num_rois, batch, scratch);
  int first = sentinel;
  e = cudaMemcpyAsync(&first, scratch, sizeof(int), cudaMemcpyDeviceToHost, s);
  if (e != cudaSuccess) return e;
  e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) return e;
  if (first != sentinel) {
    e = cudaMemcpyAsync(bad_row, rois + 5 * static_cast<int64_t>(first), 5 * sizeof(float),
                        cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) return e;
    *bad_index = first;
    *bad_code = CheckRoi(bad_row, batch);
  }
  return cudaGetLastError();
}

int ValidateArgmaxGpu(const int32_t* argmax, int64_t n, int samples, unsigned long long* scratch,
                      int64_t* bad_index, int32_t* bad_value, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  *bad_index = -1;
  if (n == 0) return 0;
  cudaError_t e = cudaMemsetAsync(scratch, 0xff, sizeof(unsigned long long), s);
  if (e != cudaSuccess) return e;
  ValidateArgmaxKernel<<<Blocks(n), kThreads, 0, s>>>(argmax, n, samples, scratch);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  unsigned long long first = ~0ull;
  e = cudaMemcpyAsync(&first, scratch, sizeof(first), cudaMemcpyDeviceToHost, s);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) return e;
  if (first != ~0ull) {
    e = cudaMemcpyAsync(bad_value, argmax + first, sizeof(int32_t), cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) return e;
    *bad_index = static_cast<int64_t>(first);
  }
  return 0;
}

int RoiAlignForwardGpu(const AlignParams& p, const FeatureShape& fs, const float* features,
                       const float* rois, int num_rois, float* out, int32_t* argmax,
                       void* stream) {
  const int64_t total = NumOutputs(p, fs, num_rois);
  if (total == 0) return 0;
  RoiAlignForwardKernel<<<Blocks(total), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, fs, features, rois, total, out, argmax);
  return cudaGetLastError();
}

int RoiAlignBackwardGpu(const AlignParams& p, const FeatureShape& fs, const float* rois,
                        int num_rois, const float* grad_out, const int32_t* argmax,
                        float* grad_features, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemsetAsync(grad_features, 0, sizeof(float) * FeatureSize(fs), s);
  if (e != cudaSuccess) return e;
  const int64_t total = NumOutputs(p, fs, num_rois);
  if (total == 0) return 0;
  RoiAlignBackwardKernel<<<Blocks(total), kThreads, 0, s>>>(p, fs, rois, total, grad_out, argmax,
                                                            grad_features);
  return cudaGetLastError();
}

int PsRoiPoolForwardGpu(const PsPoolParams& p, const FeatureShape& fs, const float* features,
                        const float* rois, int num_rois, float* out, void* stream) {
  const int64_t total = static_cast<int64_t>(num_rois) * fs.channels;  // R * G * G * K
  if (total == 0) return 0;
  PsRoiPoolForwardKernel<<<Blocks(total), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, fs, features, rois, total, out);
  return cudaGetLastError();
}

int PsRoiPoolBackwardGpu(const PsPoolParams& p, const FeatureShape& fs, const float* rois,
                         int num_rois, const float* grad_out, float* grad_features, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemsetAsync(grad_features, 0, sizeof(float) * FeatureSize(fs), s);
  if (e != cudaSuccess) return e;
  const int64_t total = static_cast<int64_t>(num_rois) * fs.channels;
  if (total == 0) return 0;
  PsRoiPoolBackwardKernel<<<Blocks(total), kThreads, 0, s>>>(p, fs, rois, total, grad_out,
                                                             grad_features);
  return cudaGetLastError();
}

}  // namespace lhrcnn
