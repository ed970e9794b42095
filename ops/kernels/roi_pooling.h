// Declarations of the RoI pooling kernels (PS-RoI-Align, RoIAlign, PS-RoI pooling): the CPU
// functions (roi_pooling_cpu.cc) and the framework-free CUDA launchers (roi_pooling.cu.cc).
// Layouts: features [B, H, W, C] float32 (NHWC); rois [R, 5] = (batch_index, x1, y1, x2, y2) in
// input-image pixels; outputs [R, PH, PW, K]. Position-sensitive ops read input channel
// c = k * PH * PW + ph * PW + pw for output (ph, pw, k), i.e. c = (k * G + ph) * G + pw.
#ifndef LHRCNN_OPS_KERNELS_ROI_POOLING_H_
#define LHRCNN_OPS_KERNELS_ROI_POOLING_H_

#include <cstdint>
#include <functional>

#include "common.h"

namespace lhrcnn {

struct FeatureShape {
  int batch, height, width, channels;
};

// RoI-Align family: sample_h x sample_w bilinear samples per bin at (i + 0.5) / S of the bin,
// on the map zero-padded by one pixel; max (first maximal sample wins) or mean over them.
struct AlignParams {
  int pooled_h = 7, pooled_w = 7;
  int sample_h = 2, sample_w = 2;
  float spatial_scale = 1.f / 16.f;
  bool position_sensitive = true;
  bool max_pool = true;
  bool aligned = false;  // subtract 0.5 from scaled coordinates (pixel-centre convention)

  LHRCNN_HD int planes() const { return position_sensitive ? pooled_h * pooled_w : 1; }
  LHRCNN_HD int samples() const { return sample_h * sample_w; }
};

// PSROIPool: mean over integer bins (rounded corners, +1 on x2/y2), empty bin = 0.
struct PsPoolParams {
  int group = 7;
  float spatial_scale = 1.f / 16.f;
};

// Floats of scratch the CPU kernels need (the plane-major copy of features or gradient).
int64_t RoiAlignCpuWorkspace(const AlignParams& p, const FeatureShape& fs);
int64_t PsRoiPoolCpuWorkspace(const PsPoolParams& p, const FeatureShape& fs);

// CPU kernels. RoIs must have been validated (CheckRoi). `argmax` [R, PH, PW, K] receives the
// winning sample index (iy * sample_w + ix) for max pooling and may be null for mean pooling.
// Backward functions overwrite grad_features entirely.
void RoiAlignForwardCpu(const AlignParams& p, const FeatureShape& fs, const float* features,
                        const float* rois, int num_rois, float* out, int32_t* argmax,
                        float* workspace, const ParallelFor& pf);
void RoiAlignBackwardCpu(const AlignParams& p, const FeatureShape& fs, const float* rois,
                         int num_rois, const float* grad_out, const int32_t* argmax,
                         float* grad_features, float* workspace, const ParallelFor& pf);
void PsRoiPoolForwardCpu(const PsPoolParams& p, const FeatureShape& fs, const float* features,
                         const float* rois, int num_rois, float* out, float* workspace,
                         const ParallelFor& pf);
void PsRoiPoolBackwardCpu(const PsPoolParams& p, const FeatureShape& fs, const float* rois,
                          int num_rois, const float* grad_out, float* grad_features,
                          float* workspace, const ParallelFor& pf);

// Index of the first argmax value outside [0, samples), or -1 when all are valid.
int64_t FirstInvalidArgmaxCpu(const int32_t* argmax, int64_t n, int samples, const ParallelFor& pf);

// First invalid RoI (index into rois, or -1) and its RoiError code, on the host.
int FirstInvalidRoiCpu(const float* rois, int num_rois, int batch, int* code);

// ---- CUDA launchers (device pointers, `stream` is a cudaStream_t). Return 0 or a cudaError_t.
// ValidateRoisGpu synchronizes the stream and reports the first invalid RoI like the CPU one;
// `scratch` is device memory for 1 int; `bad_row` (host, 5 floats) receives the bad RoI.
int ValidateRoisGpu(const float* rois, int num_rois, int batch, int* scratch, int* bad_index,
                    int* bad_code, float* bad_row, void* stream);
// ValidateArgmaxGpu synchronizes the stream and reports the first argmax value outside
// [0, samples) (bad_index -1 when there is none) and the value; `scratch` is device memory for
// one unsigned long long.
int ValidateArgmaxGpu(const int32_t* argmax, int64_t n, int samples, unsigned long long* scratch,
                      int64_t* bad_index, int32_t* bad_value, void* stream);
// Floats of device scratch the RoI-Align launchers need: the plane-major copy of the map for
// PS-RoI-Align, none for RoIAlign (`workspace` may then be null).
int64_t RoiAlignGpuWorkspace(const AlignParams& p, const FeatureShape& fs);
int RoiAlignForwardGpu(const AlignParams& p, const FeatureShape& fs, const float* features,
                       const float* rois, int num_rois, float* out, int32_t* argmax,
                       float* workspace, void* stream);
int RoiAlignBackwardGpu(const AlignParams& p, const FeatureShape& fs, const float* rois,
                        int num_rois, const float* grad_out, const int32_t* argmax,
                        float* grad_features, float* workspace, void* stream);
// Floats of device scratch the PS-RoI pooling launchers need (the plane-major copy of the map).
int64_t PsRoiPoolGpuWorkspace(const PsPoolParams& p, const FeatureShape& fs);
int PsRoiPoolForwardGpu(const PsPoolParams& p, const FeatureShape& fs, const float* features,
                        const float* rois, int num_rois, float* out, float* workspace, void* stream);
int PsRoiPoolBackwardGpu(const PsPoolParams& p, const FeatureShape& fs, const float* rois,
                         int num_rois, const float* grad_out, float* grad_features, float* workspace,
                         void* stream);

}  // namespace lhrcnn

#endif  // LHRCNN_OPS_KERNELS_ROI_POOLING_H_
