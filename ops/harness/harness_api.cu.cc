// C ABI over the framework-free launchers of ops/kernels/, for the ctypes driver
// run_harness.py (no TensorFlow involved). Two parts:
//   * CPU wrappers (always built): the CPU kernels with SerialFor as the ParallelFor and their
//     scratch allocated here. All pointers are host pointers.
//   * CUDA wrappers (left out when HARNESS_CPU_ONLY is defined, i.e. the g++-only variant):
//     device memory helpers and the launchers on the default stream. All array pointers are
//     device pointers, except the bad_* outputs of the validators, which are host pointers.
// Every function returns 0 on success; CUDA wrappers return the cudaError_t otherwise (text
// from harness_error_string), CPU wrappers return -1 when the C++ side threw (e.g. bad_alloc).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../kernels/common.h"
#include "../kernels/nms.h"
#include "../kernels/roi_pooling.h"

#if !defined(HARNESS_CPU_ONLY)
#include <cuda_runtime.h>
#endif

#define HARNESS_API extern "C" __attribute__((visibility("default")))

namespace {

lhrcnn::AlignParams MakeAlign(int pooled_h, int pooled_w, int sample_h, int sample_w,
                              float spatial_scale, int position_sensitive, int max_pool,
                              int aligned) {
  lhrcnn::AlignParams p;
  p.pooled_h = pooled_h;
  p.pooled_w = pooled_w;
  p.sample_h = sample_h;
  p.sample_w = sample_w;
  p.spatial_scale = spatial_scale;
  p.position_sensitive = position_sensitive != 0;
  p.max_pool = max_pool != 0;
  p.aligned = aligned != 0;
  return p;
}

lhrcnn::PsPoolParams MakePsPool(int group, float spatial_scale) {
  lhrcnn::PsPoolParams p;
  p.group = group;
  p.spatial_scale = spatial_scale;
  return p;
}

lhrcnn::NmsParams MakeNms(int max_output, float iou_threshold, float score_threshold,
                          float box_offset) {
  lhrcnn::NmsParams p;
  p.max_output = max_output;
  p.iou_threshold = iou_threshold;
  p.score_threshold = score_threshold;
  p.box_offset = box_offset;
  return p;
}

lhrcnn::FeatureShape MakeShape(int batch, int height, int width, int channels) {
  return lhrcnn::FeatureShape{batch, height, width, channels};
}

template <typename F>
int Guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Build information.

// 1 when the CUDA part is compiled in, 0 for the CPU-only variant.
HARNESS_API int harness_has_cuda() {
#if defined(HARNESS_CPU_ONLY)
  return 0;
#else
  return 1;
#endif
}

// Version of this C ABI (bumped when a signature changes), so the driver can detect a stale
// library.
HARNESS_API int harness_abi_version() { return 2; }

// ------------------------------------------------------------------------------------------
// CPU kernels (host pointers).

HARNESS_API int hcpu_first_invalid_roi(const float* rois, int num_rois, int batch, int* code) {
  return lhrcnn::FirstInvalidRoiCpu(rois, num_rois, batch, code);
}

HARNESS_API int64_t hcpu_first_invalid_nms_input(const float* boxes, const float* scores,
                                                 int64_t n, int* code) {
  return lhrcnn::FirstInvalidNmsInputCpu(boxes, scores, n, code);
}

HARNESS_API int hcpu_roi_align_forward(int pooled_h, int pooled_w, int sample_h, int sample_w,
                                       float spatial_scale, int position_sensitive, int max_pool,
                                       int aligned, int batch, int height, int width,
                                       int channels, const float* features, const float* rois,
                                       int num_rois, float* out, int32_t* argmax) {
  return Guarded([&] {
    const auto p = MakeAlign(pooled_h, pooled_w, sample_h, sample_w, spatial_scale,
                             position_sensitive, max_pool, aligned);
    const auto fs = MakeShape(batch, height, width, channels);
    std::vector<float> ws(static_cast<size_t>(lhrcnn::RoiAlignCpuWorkspace(p, fs)));
    lhrcnn::RoiAlignForwardCpu(p, fs, features, rois, num_rois, out, argmax, ws.data(),
                               lhrcnn::SerialFor);
  });
}

HARNESS_API int hcpu_roi_align_backward(int pooled_h, int pooled_w, int sample_h, int sample_w,
                                        float spatial_scale, int position_sensitive, int max_pool,
                                        int aligned, int batch, int height, int width,
                                        int channels, const float* rois, int num_rois,
                                        const float* grad_out, const int32_t* argmax,
                                        float* grad_features) {
  return Guarded([&] {
    const auto p = MakeAlign(pooled_h, pooled_w, sample_h, sample_w, spatial_scale,
                             position_sensitive, max_pool, aligned);
    const auto fs = MakeShape(batch, height, width, channels);
    std::vector<float> ws(static_cast<size_t>(lhrcnn::RoiAlignCpuWorkspace(p, fs)));
    lhrcnn::RoiAlignBackwardCpu(p, fs, rois, num_rois, grad_out, argmax, grad_features,
                                ws.data(), lhrcnn::SerialFor);
  });
}

HARNESS_API int hcpu_ps_roi_pool_forward(int group, float spatial_scale, int batch, int height,
                                         int width, int channels, const float* features,
                                         const float* rois, int num_rois, float* out) {
  return Guarded([&] {
    const auto p = MakePsPool(group, spatial_scale);
    const auto fs = MakeShape(batch, height, width, channels);
    std::vector<float> ws(static_cast<size_t>(lhrcnn::PsRoiPoolCpuWorkspace(p, fs)));
    lhrcnn::PsRoiPoolForwardCpu(p, fs, features, rois, num_rois, out, ws.data(),
                                lhrcnn::SerialFor);
  });
}

HARNESS_API int hcpu_ps_roi_pool_backward(int group, float spatial_scale, int batch, int height,
                                          int width, int channels, const float* rois,
                                          int num_rois, const float* grad_out,
                                          float* grad_features) {
  return Guarded([&] {
    const auto p = MakePsPool(group, spatial_scale);
    const auto fs = MakeShape(batch, height, width, channels);
    std::vector<float> ws(static_cast<size_t>(lhrcnn::PsRoiPoolCpuWorkspace(p, fs)));
    lhrcnn::PsRoiPoolBackwardCpu(p, fs, rois, num_rois, grad_out, grad_features, ws.data(),
                                 lhrcnn::SerialFor);
  });
}

// One image: boxes [n, 4], scores [n], class_ids [n] or null; out_indices [max_output].
// *num_valid receives the count.
HARNESS_API int hcpu_nms(int max_output, float iou_threshold, float score_threshold,
                         float box_offset, const float* boxes, const float* scores,
                         const int32_t* class_ids, int n, int32_t* out_indices,
                         int32_t* num_valid) {
  return Guarded([&] {
    const auto p = MakeNms(max_output, iou_threshold, score_threshold, box_offset);
    *num_valid = lhrcnn::NmsCpu(p, boxes, scores, class_ids, n, out_indices);
  });
}

#if !defined(HARNESS_CPU_ONLY)
// ------------------------------------------------------------------------------------------
// CUDA runtime helpers.

HARNESS_API int hgpu_device_count(int* count) { return cudaGetDeviceCount(count); }

// Writes the name of device `device` (NUL-terminated, truncated to `size`) into `name`.
HARNESS_API int hgpu_device_name(int device, char* name, int size) {
  cudaDeviceProp prop;
  const cudaError_t e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) return e;
  int i = 0;
  for (; i + 1 < size && prop.name[i] != '\0'; ++i) name[i] = prop.name[i];
  if (size > 0) name[i] = '\0';
  return 0;
}

// Compute capability as major * 10 + minor.
HARNESS_API int hgpu_device_capability(int device, int* cc) {
  int major = 0, minor = 0;
  cudaError_t e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (e != cudaSuccess) return e;
  *cc = major * 10 + minor;
  return 0;
}

HARNESS_API int hgpu_runtime_version(int* version) { return cudaRuntimeGetVersion(version); }
HARNESS_API int hgpu_driver_version(int* version) { return cudaDriverGetVersion(version); }

HARNESS_API const char* hgpu_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

// Returns the sticky/last error and clears it (cudaGetLastError).
HARNESS_API int hgpu_last_error() { return cudaGetLastError(); }

// bytes == 0 gives a null pointer (cudaMalloc(0) is allowed but pointless).
HARNESS_API int hgpu_malloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  if (bytes == 0) return 0;
  return cudaMalloc(ptr, bytes);
}

HARNESS_API int hgpu_free(void* ptr) { return ptr ? cudaFree(ptr) : 0; }

HARNESS_API int hgpu_memcpy_h2d(void* dst, const void* src, size_t bytes) {
  return bytes ? cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) : 0;
}

HARNESS_API int hgpu_memcpy_d2h(void* dst, const void* src, size_t bytes) {
  return bytes ? cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) : 0;
}

HARNESS_API int hgpu_memset(void* ptr, int value, size_t bytes) {
  return bytes ? cudaMemset(ptr, value, bytes) : 0;
}

HARNESS_API int hgpu_synchronize() { return cudaDeviceSynchronize(); }

// ------------------------------------------------------------------------------------------
// CUDA launchers (default stream).

HARNESS_API int hgpu_validate_rois(const float* rois, int num_rois, int batch, int* scratch,
                                   int* bad_index, int* bad_code, float* bad_row) {
  return lhrcnn::ValidateRoisGpu(rois, num_rois, batch, scratch, bad_index, bad_code, bad_row,
                                 nullptr);
}

HARNESS_API int hgpu_validate_argmax(const int32_t* argmax, int64_t n, int samples, void* scratch,
                                     int64_t* bad_index, int32_t* bad_value) {
  return lhrcnn::ValidateArgmaxGpu(argmax, n, samples, static_cast<unsigned long long*>(scratch), bad_index,
                                   bad_value, nullptr);
}

HARNESS_API int hgpu_roi_align_forward(int pooled_h, int pooled_w, int sample_h, int sample_w,
                                       float spatial_scale, int position_sensitive, int max_pool,
                                       int aligned, int batch, int height, int width,
                                       int channels, const float* features, const float* rois,
                                       int num_rois, float* out, int32_t* argmax,
                                       float* workspace) {
  const auto p = MakeAlign(pooled_h, pooled_w, sample_h, sample_w, spatial_scale,
                           position_sensitive, max_pool, aligned);
  return lhrcnn::RoiAlignForwardGpu(p, MakeShape(batch, height, width, channels), features, rois,
                                    num_rois, out, argmax, workspace, nullptr);
}

HARNESS_API int hgpu_roi_align_backward(int pooled_h, int pooled_w, int sample_h, int sample_w,
                                        float spatial_scale, int position_sensitive, int max_pool,
                                        int aligned, int batch, int height, int width,
                                        int channels, const float* rois, int num_rois,
                                        const float* grad_out, const int32_t* argmax,
                                        float* grad_features, float* workspace) {
  const auto p = MakeAlign(pooled_h, pooled_w, sample_h, sample_w, spatial_scale,
                           position_sensitive, max_pool, aligned);
  return lhrcnn::RoiAlignBackwardGpu(p, MakeShape(batch, height, width, channels), rois, num_rois,
                                     grad_out, argmax, grad_features, workspace, nullptr);
}

// Floats of device scratch hgpu_roi_align_forward / _backward need (0: pass null).
HARNESS_API int64_t hgpu_roi_align_workspace_floats(int pooled_h, int pooled_w, int position_sensitive,
                                                    int batch, int height, int width, int channels) {
  const auto p = MakeAlign(pooled_h, pooled_w, 1, 1, 1.f, position_sensitive, 1, 0);
  return lhrcnn::RoiAlignGpuWorkspace(p, MakeShape(batch, height, width, channels));
}

HARNESS_API int hgpu_ps_roi_pool_forward(int group, float spatial_scale, int batch, int height,
                                         int width, int channels, const float* features,
                                         const float* rois, int num_rois, float* out,
                                         float* workspace) {
  return lhrcnn::PsRoiPoolForwardGpu(MakePsPool(group, spatial_scale),
                                     MakeShape(batch, height, width, channels), features, rois,
                                     num_rois, out, workspace, nullptr);
}

HARNESS_API int hgpu_ps_roi_pool_backward(int group, float spatial_scale, int batch, int height,
                                          int width, int channels, const float* rois,
                                          int num_rois, const float* grad_out,
                                          float* grad_features, float* workspace) {
  return lhrcnn::PsRoiPoolBackwardGpu(MakePsPool(group, spatial_scale),
                                      MakeShape(batch, height, width, channels), rois, num_rois,
                                      grad_out, grad_features, workspace, nullptr);
}

// Floats of device scratch hgpu_ps_roi_pool_forward / _backward need.
HARNESS_API int64_t hgpu_ps_roi_pool_workspace_floats(int group, int batch, int height, int width,
                                                      int channels) {
  return lhrcnn::PsRoiPoolGpuWorkspace(MakePsPool(group, 1.f), MakeShape(batch, height, width, channels));
}

HARNESS_API int hgpu_validate_nms(const float* boxes, const float* scores, int64_t n,
                                  int* scratch, int64_t* bad_index, int* bad_code,
                                  float* bad_row) {
  return lhrcnn::ValidateNmsGpu(boxes, scores, n, scratch, bad_index, bad_code, bad_row, nullptr);
}

HARNESS_API size_t hgpu_nms_workspace_bytes(int batch, int n) {
  return lhrcnn::NmsGpuWorkspaceBytes(batch, n);
}

// Batched: boxes [batch, n, 4], scores [batch, n], class_ids [batch, n] or null;
// out_indices [batch, max_output], out_num_valid [batch].
HARNESS_API int hgpu_nms(int max_output, float iou_threshold, float score_threshold,
                         float box_offset, const float* boxes, const float* scores,
                         const int32_t* class_ids, int batch, int n, int32_t* out_indices,
                         int32_t* out_num_valid, void* workspace, size_t workspace_bytes) {
  const auto p = MakeNms(max_output, iou_threshold, score_threshold, box_offset);
  return lhrcnn::NmsGpu(p, boxes, scores, class_ids, batch, n, out_indices, out_num_valid,
                        workspace, workspace_bytes, nullptr);
}
#endif  // !HARNESS_CPU_ONLY
