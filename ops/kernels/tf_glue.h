// TensorFlow glue shared by the op registrations: the CPU thread pool as a ParallelFor, the
// CUDA stream of a GPU kernel, and the error messages for invalid RoIs / NMS inputs.
#ifndef LHRCNN_OPS_KERNELS_TF_GLUE_H_
#define LHRCNN_OPS_KERNELS_TF_GLUE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "common.h"
#include "roi_pooling.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/determinism.h"
#include "tensorflow/core/util/work_sharder.h"
#if LHRCNN_WITH_CUDA
#include "xla/stream_executor/stream.h"
#endif

// Like OP_REQUIRES_OK, for helpers that return a value.
#define LHRCNN_REQUIRES_OK_RETURN(ctx, value, expr)   \
  do {                                                 \
    const ::tensorflow::Status _lhrcnn_s = (expr);     \
    if (!_lhrcnn_s.ok()) {                             \
      (ctx)->CtxFailure(__FILE__, __LINE__, _lhrcnn_s); \
      return value;                                    \
    }                                                  \
  } while (0)

namespace lhrcnn {
namespace tfglue {

using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace errors = ::tensorflow::errors;
namespace shape_inference = ::tensorflow::shape_inference;

inline ParallelFor CpuParallelFor(OpKernelContext* ctx) {
  const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  return [workers](int64_t total, int64_t cost, const std::function<void(int64_t, int64_t)>& fn) {
    ::tensorflow::Shard(workers->num_threads, workers->workers, total, cost, fn);
  };
}

#if LHRCNN_WITH_CUDA
inline void* GpuStream(OpKernelContext* ctx) {
  return ctx->op_device_context()->stream()->platform_specific_handle().stream;
}
#endif

inline std::string RoiString(const float* row) {
  return absl::StrCat("(", row[0], ", ", row[1], ", ", row[2], ", ", row[3], ", ", row[4], ")");
}

inline Status RoiError(const char* op, int index, int code, const float* row, int batch) {
  const std::string where = absl::StrCat(op, ": rois[", index, "] = ", RoiString(row));
  switch (code) {
    case kRoiBatchNotInteger:
      return errors::InvalidArgument(where, " has batch index ", row[0],
                                     ", which is not a whole number (column 0 must hold an "
                                     "image index in [0, ", batch, "))");
    case kRoiBatchOutOfRange:
      return errors::InvalidArgument(where, " has batch index ", row[0],
                                     " outside [0, ", batch, "): features hold ", batch,
                                     " image(s)");
    default:
      return errors::InvalidArgument(where, " has a non-finite coordinate (NaN or Inf)");
  }
}

// Shapes of features [B, H, W, C] and rois [R, 5]; `channel_divisor` must divide C.
inline Status CheckFeaturesAndRois(const char* op, const Tensor& features, const Tensor& rois,
                                   int64_t channel_divisor) {
  if (features.dims() != 4)
    return errors::InvalidArgument(op, ": features must be rank 4 [B, H, W, C] (NHWC), got shape ",
                                   features.shape().DebugString());
  if (rois.dims() != 2 || rois.dim_size(1) != 5)
    return errors::InvalidArgument(op, ": rois must have shape [R, 5] = (batch_index, x1, y1, x2, "
                                   "y2), got shape ", rois.shape().DebugString());
  if (features.dim_size(1) == 0 || features.dim_size(2) == 0)
    return errors::InvalidArgument(op, ": features must have non-zero height and width, got shape ",
                                   features.shape().DebugString());
  if (features.dim_size(3) % channel_divisor != 0)
    return errors::InvalidArgument(op, ": features has ", features.dim_size(3),
                                   " channels, which is not divisible by ", channel_divisor,
                                   " (group_size^2, the number of position-sensitive bins)");
  const int64_t kMaxInt = 0x7fffffff;
  if (features.NumElements() > kMaxInt * 16 || rois.dim_size(0) > kMaxInt / 8 ||
      features.dim_size(0) > kMaxInt || features.dim_size(1) > kMaxInt ||
      features.dim_size(2) > kMaxInt || features.dim_size(3) > kMaxInt)
    return errors::InvalidArgument(op, ": tensors too large: features ",
                                   features.shape().DebugString(), ", rois ",
                                   rois.shape().DebugString());
  return ::tensorflow::OkStatus();
}

inline FeatureShape ShapeOf(const Tensor& features) {
  return FeatureShape{static_cast<int>(features.dim_size(0)), static_cast<int>(features.dim_size(1)),
                      static_cast<int>(features.dim_size(2)), static_cast<int>(features.dim_size(3))};
}

// Validates RoI values on the host (CPU kernels).
inline Status CheckRoisCpu(const char* op, const Tensor& rois, int batch) {
  int code = 0;
  const float* data = rois.flat<float>().data();
  const int bad = FirstInvalidRoiCpu(data, static_cast<int>(rois.dim_size(0)), batch, &code);
  if (bad < 0) return ::tensorflow::OkStatus();
  return RoiError(op, bad, code, data + 5 * static_cast<int64_t>(bad), batch);
}

// The error for argmax[index] = value outside the sample indices [0, samples).
inline Status ArgmaxError(const char* op, int64_t index, int32_t value, int samples) {
  return errors::InvalidArgument(op, ": argmax[", index, "] = ", value, " is not a sample index in [0, ",
                                 samples, ")");
}

// Validates the argmax input of a gradient op on the host (CPU kernels), on the op's threads.
inline Status CheckArgmaxCpu(OpKernelContext* ctx, const char* op, const Tensor& argmax, int samples) {
  const int32_t* a = argmax.flat<int32_t>().data();
  const int64_t bad = FirstInvalidArgmaxCpu(a, argmax.NumElements(), samples, CpuParallelFor(ctx));
  if (bad < 0) return ::tensorflow::OkStatus();
  return ArgmaxError(op, bad, a[bad], samples);
}

// A kernel's float workspace of `floats` elements (0: an empty tensor).
inline Status AllocateWorkspace(OpKernelContext* ctx, int64_t floats, Tensor* workspace) {
  return ctx->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({floats}), workspace);
}

#if LHRCNN_WITH_CUDA
// Validates RoI values on the device (GPU kernels); synchronizes the stream.
inline Status CheckRoisGpu(OpKernelContext* ctx, const char* op, const Tensor& rois, int batch) {
  Tensor scratch;
  TF_RETURN_IF_ERROR(ctx->allocate_temp(::tensorflow::DT_INT32, TensorShape({1}), &scratch));
  int bad = -1, code = 0;
  float row[5] = {0, 0, 0, 0, 0};
  const int e = ValidateRoisGpu(rois.flat<float>().data(), static_cast<int>(rois.dim_size(0)), batch,
                                scratch.flat<int32_t>().data(), &bad, &code, row, GpuStream(ctx));
  if (e != 0) return errors::Internal(op, ": CUDA error while validating rois: ", CudaErrorString(e));
  if (bad < 0) return ::tensorflow::OkStatus();
  return RoiError(op, bad, code, row, batch);
}

// Validates the argmax input of a gradient op on the device, as the CPU kernels do on the host;
// synchronizes the stream.
inline Status CheckArgmaxGpu(OpKernelContext* ctx, const char* op, const Tensor& argmax, int samples) {
  Tensor scratch;
  TF_RETURN_IF_ERROR(ctx->allocate_temp(::tensorflow::DT_INT64, TensorShape({1}), &scratch));
  int64_t bad = -1;
  int32_t value = 0;
  const int e = ValidateArgmaxGpu(argmax.flat<int32_t>().data(), argmax.NumElements(), samples,
                                  reinterpret_cast<unsigned long long*>(scratch.flat<int64_t>().data()),
                                  &bad, &value, GpuStream(ctx));
  if (e != 0) return errors::Internal(op, ": CUDA error while validating argmax: ", CudaErrorString(e));
  if (bad < 0) return ::tensorflow::OkStatus();
  return ArgmaxError(op, bad, value, samples);
}

// The GPU gradients add with atomicAdd, in an order that varies from run to run: under
// tf.config.experimental.enable_op_determinism() they refuse to run rather than break it.
inline Status RequireNondeterminismAllowed(const char* op) {
  if (!::tsl::OpDeterminismRequired()) return ::tensorflow::OkStatus();
  return errors::Unimplemented(op, ": the GPU gradient adds with atomicAdd, whose order varies between runs, "
                               "and op determinism is enabled (tf.config.experimental.enable_op_determinism()); "
                               "compute this gradient on the CPU, or use the pure-TF twins (ops_backend='tf')");
}
#endif

inline Status CheckScale(const char* op, float scale) {
  // Normal float32 only: a subnormal scale is 0 where denormals are flushed, and not elsewhere.
  if (!(scale > 0.f) || std::fpclassify(scale) != FP_NORMAL)
    return errors::InvalidArgument(op, ": spatial_scale must be a positive finite (normal) float32 number, "
                                   "got ", scale);
  return ::tensorflow::OkStatus();
}

// An integer attribute in [lo, hi] (the limits of common.h), read as int64 before any product.
inline Status CheckIntAttr(const char* op, const char* name, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi)
    return errors::InvalidArgument(op, ": ", name, " must be in [", lo, ", ", hi, "], got ", value);
  return ::tensorflow::OkStatus();
}

// The attributes of PS-RoI pooling, checked in the shape functions and the kernels alike.
template <typename Context>
Status CheckPoolAttrs(Context* c, const char* op) {
  ::tensorflow::int64 v = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("group_size", &v));
  TF_RETURN_IF_ERROR(CheckIntAttr(op, "group_size", v, 1, kMaxGroupSize));
  float scale = 0.f;
  TF_RETURN_IF_ERROR(c->GetAttr("spatial_scale", &scale));
  return CheckScale(op, scale);
}

// The attributes of the RoI-Align family, checked in the shape functions and the kernels alike.
template <typename Context>
Status CheckAlignAttrs(Context* c, const char* op, bool position_sensitive) {
  ::tensorflow::int64 v = 0;
  if (position_sensitive) {
    TF_RETURN_IF_ERROR(c->GetAttr("group_size", &v));
    TF_RETURN_IF_ERROR(CheckIntAttr(op, "group_size", v, 1, kMaxGroupSize));
  } else {
    TF_RETURN_IF_ERROR(c->GetAttr("pooled_height", &v));
    TF_RETURN_IF_ERROR(CheckIntAttr(op, "pooled_height", v, 1, kMaxPooledSize));
    TF_RETURN_IF_ERROR(c->GetAttr("pooled_width", &v));
    TF_RETURN_IF_ERROR(CheckIntAttr(op, "pooled_width", v, 1, kMaxPooledSize));
  }
  TF_RETURN_IF_ERROR(c->GetAttr("sample_height", &v));
  TF_RETURN_IF_ERROR(CheckIntAttr(op, "sample_height (sampling_ratio)", v, 1, kMaxSamplingRatio));
  TF_RETURN_IF_ERROR(c->GetAttr("sample_width", &v));
  TF_RETURN_IF_ERROR(CheckIntAttr(op, "sample_width (sampling_ratio)", v, 1, kMaxSamplingRatio));
  float scale = 0.f;
  TF_RETURN_IF_ERROR(c->GetAttr("spatial_scale", &scale));
  return CheckScale(op, scale);
}

// Shape function helper: features [B, H, W, C], rois [R, 5]; returns C and R handles.
inline Status InferPoolInputs(shape_inference::InferenceContext* c,
                              shape_inference::ShapeHandle* features,
                              shape_inference::ShapeHandle* rois) {
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, features));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, rois));
  shape_inference::DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(*rois, 1), 5, &unused));
  return ::tensorflow::OkStatus();
}

}  // namespace tfglue
}  // namespace lhrcnn

#endif  // LHRCNN_OPS_KERNELS_TF_GLUE_H_
