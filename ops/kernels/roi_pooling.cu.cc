// CUDA kernels of the RoI pooling family and their framework-free launchers (see
// roi_pooling.h). One thread per output element; backward passes accumulate with
// atomicAdd after zeroing the gradient. Sampling and interpolation come from common.h, shared
// with the CPU kernels. Compiled with -fmad=false so results match the CPU to the last bit
// wherever the summation order is the same.
//
// The position-sensitive kernels (PS-RoI-Align, PS-RoI pooling) work on a plane-major copy of
// the thin map, [B, P, H, W, K] (P = PH * PW bins, K = C / P), as the CPU kernels do: in NHWC the
// K channels of one bin lie P floats apart, so the adjacent threads of a warp (adjacent k) would
// each read their own sector; in planes they read K contiguous floats. The forward passes
// transpose into the workspace first, the backward passes accumulate into it and transpose back.
// Index arithmetic is 32-bit when the output count fits.
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

// Runs launch(Index{}) with Index = int when a grid-stride loop over `total` outputs keeps every
// index (i + stride) below 2^31, so that the kernel's index arithmetic is 32-bit; int64_t otherwise.
template <typename Launch>
void WithIndexType(int64_t total, const Launch& launch) {
  if (total + static_cast<int64_t>(kThreads) * Blocks(total) <= 0x7fffffffLL) {
    launch(0);
  } else {
    launch(int64_t{0});
  }
}

#define LHRCNN_GRID_LOOP_OF(Index, i, n)                                                    \
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < (n);      \
       i += static_cast<Index>(blockDim.x) * gridDim.x)
#define LHRCNN_GRID_LOOP(i, n) LHRCNN_GRID_LOOP_OF(int64_t, i, n)

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

template <typename Index>
struct OutIndex {
  Index r;
  int ph, pw, k, c;
};

// Output element i = ((r * PH + ph) * PW + pw) * K + k, split into its indices; c (set by
// Decompose) is its channel in the NHWC map.
template <typename Index>
__device__ __forceinline__ OutIndex<Index> Split(Index i, int PH, int PW, int K) {
  OutIndex<Index> o;
  const Index t = i / K;
  o.k = static_cast<int>(i - t * K);
  const Index u = t / PW;
  o.pw = static_cast<int>(t - u * PW);
  o.r = u / PH;
  o.ph = static_cast<int>(u - o.r * PH);
  o.c = 0;
  return o;
}

template <typename Index>
__device__ __forceinline__ OutIndex<Index> Decompose(Index i, const AlignParams& p, int K) {
  OutIndex<Index> o = Split(i, p.pooled_h, p.pooled_w, K);
  o.c = p.position_sensitive ? o.k * p.planes() + o.ph * p.pooled_w + o.pw : o.k;
  return o;
}

// Where output o reads the map (or adds to its gradient): the offset in floats of its image
// (RoIAlign, NHWC) or of its bin's plane (PS-RoI-Align, plane-major), the floats per pixel there
// and its channel among them.
struct MapView {
  int64_t offset;
  int channels, c;
};

template <typename Index>
__device__ __forceinline__ MapView ViewOf(const OutIndex<Index>& o, int b, const AlignParams& p,
                                          const FeatureShape& fs, int K) {
  const int64_t pixels = static_cast<int64_t>(fs.height) * fs.width;
  if (!p.position_sensitive) return {b * pixels * fs.channels, fs.channels, o.c};
  const int64_t plane = static_cast<int64_t>(b) * p.planes() + o.ph * p.pooled_w + o.pw;
  return {plane * pixels * K, K, o.k};
}

// NHWC [B, H, W, K * P] (channel k * P + q) <-> planes [B, P, H, W, K], a block per run of
// `tile` pixels: the run's channels are contiguous in NHWC and its bins' K-vectors contiguous in
// each plane, so both sides move whole sectors; kShared stages the run in shared memory (when
// tile * C floats fit), otherwise the strided side reads or writes global memory directly.
template <bool kToPlanes, bool kShared>
__global__ void TransposePlanesKernel(const float* src, float* dst, int64_t num_pixels,
                                      int64_t pixels_per_image, int P, int K, int tile) {
  extern __shared__ float staged[];
  const int C = P * K;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * tile;
  if (n0 >= num_pixels) return;
  const int count = static_cast<int>(num_pixels - n0 < tile ? num_pixels - n0 : tile);
  const int contiguous = count * C;
  if (kToPlanes && kShared) {
    for (int j = threadIdx.x; j < contiguous; j += blockDim.x) staged[j] = src[n0 * C + j];
    __syncthreads();
  }
  for (int j = threadIdx.x; j < contiguous; j += blockDim.x) {
    // j enumerates (q, pixel, k), k fastest: the plane-side order
    const int k = j % K, t = j / K, pixel = t % count, q = t / count;
    const int64_t n = n0 + pixel, b = n / pixels_per_image, in_image = n - b * pixels_per_image;
    const int64_t planar = ((b * P + q) * pixels_per_image + in_image) * K + k;
    const int nhwc = pixel * C + k * P + q;  // within the run
    if (kToPlanes) {
      dst[planar] = kShared ? staged[nhwc] : src[n0 * C + nhwc];
    } else if (kShared) {
      staged[nhwc] = src[planar];
    } else {
      dst[n0 * C + nhwc] = src[planar];
    }
  }
  if (!kToPlanes && kShared) {
    __syncthreads();
    for (int j = threadIdx.x; j < contiguous; j += blockDim.x) dst[n0 * C + j] = staged[j];
  }
}

constexpr int kTransposeSharedFloats = 12 * 1024;  // 48 KB, the default per-block limit

cudaError_t TransposePlanes(bool to_planes, const float* src, float* dst, const FeatureShape& fs,
                            int P, cudaStream_t s) {
  const int K = fs.channels / P;
  const int64_t pixels_per_image = static_cast<int64_t>(fs.height) * fs.width;
  const int64_t num_pixels = fs.batch * pixels_per_image;
  if (num_pixels == 0) return cudaSuccess;
  const bool shared = fs.channels <= kTransposeSharedFloats;
  // a run of pixels per block: up to the shared budget, and at least a block's worth of floats
  int tile = shared ? kTransposeSharedFloats / fs.channels
                    : (kThreads + fs.channels - 1) / fs.channels;
  if (tile < 1) tile = 1;
  const int64_t blocks = (num_pixels + tile - 1) / tile;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const size_t smem = shared ? sizeof(float) * tile * fs.channels : 0;
  const dim3 grid(static_cast<unsigned>(blocks));
  const auto launch = [&](auto kernel, size_t bytes) {
    kernel<<<grid, kThreads, bytes, s>>>(src, dst, num_pixels, pixels_per_image, P, K, tile);
  };
  if (to_planes) {
    shared ? launch(TransposePlanesKernel<true, true>, smem) : launch(TransposePlanesKernel<true, false>, 0);
  } else {
    shared ? launch(TransposePlanesKernel<false, true>, smem) : launch(TransposePlanesKernel<false, false>, 0);
  }
  return cudaGetLastError();
}

// `map` is the NHWC features (RoIAlign) or their plane-major copy (PS-RoI-Align).
template <typename Index>
__global__ void RoiAlignForwardKernel(AlignParams p, FeatureShape fs, const float* map,
                                      const float* rois, Index total, float* out,
                                      int32_t* argmax) {
  const int K = p.position_sensitive ? fs.channels / p.planes() : fs.channels;
  const float offset = p.aligned ? 0.5f : 0.f;
  LHRCNN_GRID_LOOP_OF(Index, i, total) {
    const OutIndex<Index> o = Decompose(i, p, K);
    const float* roi = rois + 5 * static_cast<int64_t>(o.r);
    const int b = static_cast<int>(roi[0]);
    if (b < 0 || b >= fs.batch) {  // validated before launch; never read out of bounds
      out[i] = 0.f;
      if (argmax) argmax[i] = 0;
      continue;
    }
    const AlignGeometry g = MakeAlignGeometry(roi, p.spatial_scale, p.pooled_h, p.pooled_w, offset);
    const MapView v = ViewOf(o, b, p, fs, K);
    float best = 0.f;
    int best_s = 0;
    for (int iy = 0; iy < p.sample_h; ++iy) {
      const AxisTap ty =
          MakeAxisTap(g.ys + g.bh * SampleFraction(o.ph, iy, p.sample_h), fs.height);
      for (int ix = 0; ix < p.sample_w; ++ix) {
        const AxisTap tx =
            MakeAxisTap(g.xs + g.bw * SampleFraction(o.pw, ix, p.sample_w), fs.width);
        const float value = Sample(map + v.offset, fs.width, v.channels, v.c, ty, tx);
        const int s = iy * p.sample_w + ix;
        if (s == 0) {
          best = value;
        } else if (p.max_pool) {
          if (value > best) {
            best = value;
            best_s = s;
          }
        } else {
          best += value;
        }
      }
    }
    out[i] = p.max_pool ? best : best / static_cast<float>(p.samples());
    if (argmax) argmax[i] = best_s;
  }
}

// `grad_map` is the NHWC gradient (RoIAlign) or its plane-major copy (PS-RoI-Align), zeroed.
template <typename Index>
__global__ void RoiAlignBackwardKernel(AlignParams p, FeatureShape fs, const float* rois,
                                       Index total, const float* grad_out,
                                       const int32_t* argmax, float* grad_map) {
  const int K = p.position_sensitive ? fs.channels / p.planes() : fs.channels;
  const float offset = p.aligned ? 0.5f : 0.f;
  LHRCNN_GRID_LOOP_OF(Index, i, total) {
    const OutIndex<Index> o = Decompose(i, p, K);
    const float* roi = rois + 5 * static_cast<int64_t>(o.r);
    const int b = static_cast<int>(roi[0]);
    if (b < 0 || b >= fs.batch) continue;
    const AlignGeometry g = MakeAlignGeometry(roi, p.spatial_scale, p.pooled_h, p.pooled_w, offset);
    const MapView v = ViewOf(o, b, p, fs, K);
    float* image = grad_map + v.offset;
    if (p.max_pool) {
      const int s = argmax[i];
      const int iy = s / p.sample_w, ix = s - iy * p.sample_w;
      const AxisTap ty = MakeAxisTap(g.ys + g.bh * SampleFraction(o.ph, iy, p.sample_h), fs.height);
      const AxisTap tx = MakeAxisTap(g.xs + g.bw * SampleFraction(o.pw, ix, p.sample_w), fs.width);
      Scatter(image, fs.width, v.channels, v.c, ty, tx, grad_out[i]);
    } else {
      const float gs = grad_out[i] / static_cast<float>(p.samples());
      for (int iy = 0; iy < p.sample_h; ++iy) {
        const AxisTap ty =
            MakeAxisTap(g.ys + g.bh * SampleFraction(o.ph, iy, p.sample_h), fs.height);
        for (int ix = 0; ix < p.sample_w; ++ix) {
          const AxisTap tx =
              MakeAxisTap(g.xs + g.bw * SampleFraction(o.pw, ix, p.sample_w), fs.width);
          Scatter(image, fs.width, v.channels, v.c, ty, tx, gs);
        }
      }
    }
  }
}

// PS-RoI pooling on the plane-major copy of the map: plane q = ph * G + pw of image b holds the
// K channels (k * G + ph) * G + pw of the NHWC map, i.e. k * G^2 + q, as for PS-RoI-Align.
// Output i's bin: its pixel range, its channel k and the offset (in floats) of its plane; empty
// when the RoI's image is out of range or the bin has no pixels.
struct PoolTarget {
  PoolBin bin;
  int64_t plane;
  int k;
  bool empty;
};

template <typename Index>
__device__ __forceinline__ PoolTarget TargetOf(Index i, const PsPoolParams& p, const FeatureShape& fs,
                                               const float* rois) {
  const int G = p.group, K = fs.channels / (G * G);
  const OutIndex<Index> o = Split(i, G, G, K);
  const float* roi = rois + 5 * static_cast<int64_t>(o.r);
  const int b = static_cast<int>(roi[0]);
  PoolTarget t;
  t.bin = MakePoolBin(roi, p.spatial_scale, G, o.ph, o.pw, fs.height, fs.width);
  t.empty = b < 0 || b >= fs.batch || t.bin.hend <= t.bin.hstart || t.bin.wend <= t.bin.wstart;
  t.plane = ((static_cast<int64_t>(b) * G + o.ph) * G + o.pw) * fs.height * fs.width * K;
  t.k = o.k;
  return t;
}

template <typename Index>
__global__ void PsRoiPoolForwardKernel(PsPoolParams p, FeatureShape fs, const float* planes,
                                       const float* rois, Index total, float* out) {
  const int K = fs.channels / (p.group * p.group);
  LHRCNN_GRID_LOOP_OF(Index, i, total) {
    const PoolTarget t = TargetOf(i, p, fs, rois);
    if (t.empty) {
      out[i] = 0.f;
      continue;
    }
    const float* plane = planes + t.plane;
    const PoolBin& bin = t.bin;
    double acc = 0.0;
    for (int h = bin.hstart; h < bin.hend; ++h)
      for (int w = bin.wstart; w < bin.wend; ++w)
        acc += plane[(static_cast<int64_t>(h) * fs.width + w) * K + t.k];
    const int64_t area = static_cast<int64_t>(bin.hend - bin.hstart) * (bin.wend - bin.wstart);
    out[i] = static_cast<float>(acc / area);
  }
}

// Adds into the zeroed plane-major gradient.
template <typename Index>
__global__ void PsRoiPoolBackwardKernel(PsPoolParams p, FeatureShape fs, const float* rois,
                                        Index total, const float* grad_out, float* grad_planes) {
  const int K = fs.channels / (p.group * p.group);
  LHRCNN_GRID_LOOP_OF(Index, i, total) {
    const PoolTarget t = TargetOf(i, p, fs, rois);
    if (t.empty) continue;
    float* plane = grad_planes + t.plane;
    const PoolBin& bin = t.bin;
    const float area = static_cast<float>(static_cast<int64_t>(bin.hend - bin.hstart) * (bin.wend - bin.wstart));
    const float g = grad_out[i] / area;
    for (int h = bin.hstart; h < bin.hend; ++h)
      for (int w = bin.wstart; w < bin.wend; ++w)
        atomicAdd(plane + (static_cast<int64_t>(h) * fs.width + w) * K + t.k, g);
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

int64_t RoiAlignGpuWorkspace(const AlignParams& p, const FeatureShape& fs) {
  return p.position_sensitive ? FeatureSize(fs) : 0;
}

int RoiAlignForwardGpu(const AlignParams& p, const FeatureShape& fs, const float* features,
                       const float* rois, int num_rois, float* out, int32_t* argmax,
                       float* workspace, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t total = NumOutputs(p, fs, num_rois);
  if (total == 0) return 0;
  const float* map = features;
  if (p.position_sensitive) {
    const cudaError_t e = TransposePlanes(true, features, workspace, fs, p.planes(), s);
    if (e != cudaSuccess) return e;
    map = workspace;
  }
  WithIndexType(total, [&](auto index) {
    using Index = decltype(index);
    RoiAlignForwardKernel<Index><<<Blocks(total), kThreads, 0, s>>>(p, fs, map, rois, static_cast<Index>(total),
                                                                    out, argmax);
  });
  return cudaGetLastError();
}

int RoiAlignBackwardGpu(const AlignParams& p, const FeatureShape& fs, const float* rois,
                        int num_rois, const float* grad_out, const int32_t* argmax,
                        float* grad_features, float* workspace, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  float* grad_map = p.position_sensitive ? workspace : grad_features;
  cudaError_t e = cudaMemsetAsync(grad_map, 0, sizeof(float) * FeatureSize(fs), s);
  if (e != cudaSuccess) return e;
  const int64_t total = NumOutputs(p, fs, num_rois);
  if (total > 0) {
    WithIndexType(total, [&](auto index) {
      using Index = decltype(index);
      RoiAlignBackwardKernel<Index><<<Blocks(total), kThreads, 0, s>>>(p, fs, rois, static_cast<Index>(total),
                                                                       grad_out, argmax, grad_map);
    });
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  if (p.position_sensitive) return TransposePlanes(false, workspace, grad_features, fs, p.planes(), s);
  return 0;
}

int64_t PsRoiPoolGpuWorkspace(const PsPoolParams& p, const FeatureShape& fs) { return FeatureSize(fs); }

int PsRoiPoolForwardGpu(const PsPoolParams& p, const FeatureShape& fs, const float* features,
                        const float* rois, int num_rois, float* out, float* workspace, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t total = static_cast<int64_t>(num_rois) * fs.channels;  // R * G * G * K
  if (total == 0) return 0;
  const cudaError_t e = TransposePlanes(true, features, workspace, fs, p.group * p.group, s);
  if (e != cudaSuccess) return e;
  WithIndexType(total, [&](auto index) {
    using Index = decltype(index);
    PsRoiPoolForwardKernel<Index><<<Blocks(total), kThreads, 0, s>>>(p, fs, workspace, rois,
                                                                     static_cast<Index>(total), out);
  });
  return cudaGetLastError();
}

int PsRoiPoolBackwardGpu(const PsPoolParams& p, const FeatureShape& fs, const float* rois,
                         int num_rois, const float* grad_out, float* grad_features, float* workspace,
                         void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemsetAsync(workspace, 0, sizeof(float) * FeatureSize(fs), s);
  if (e != cudaSuccess) return e;
  const int64_t total = static_cast<int64_t>(num_rois) * fs.channels;
  if (total > 0) {
    WithIndexType(total, [&](auto index) {
      using Index = decltype(index);
      PsRoiPoolBackwardKernel<Index><<<Blocks(total), kThreads, 0, s>>>(p, fs, rois, static_cast<Index>(total),
                                                                        grad_out, workspace);
    });
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return TransposePlanes(false, workspace, grad_features, fs, p.group * p.group, s);
}

}  // namespace lhrcnn
