// TensorFlow ops of the RoI-Align family: LhrcnnPsRoiAlign (position-sensitive, the original's
// PSAlignPool) and LhrcnnRoiAlign (channel-wise), with their gradient ops. Registration, shape
// functions, input validation and the CPU / GPU kernels; the arithmetic is in
// roi_pooling_cpu.cc and roi_pooling.cu.cc.
#include "tf_glue.h"

namespace lhrcnn {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::DEVICE_GPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;
using tfglue::CheckFeaturesAndRois;
using tfglue::CheckScale;
using tfglue::ShapeOf;

// Output [R, PH, PW, K] (K = C / (PH * PW) when position-sensitive); argmax the same shape for
// max pooling and [0] for mean pooling.
::tensorflow::Status AlignShape(InferenceContext* c, bool position_sensitive) {
  TF_RETURN_IF_ERROR(tfglue::CheckAlignAttrs(c, position_sensitive ? "LhrcnnPsRoiAlign" : "LhrcnnRoiAlign",
                                             position_sensitive));
  ShapeHandle features, rois;
  TF_RETURN_IF_ERROR(tfglue::InferPoolInputs(c, &features, &rois));
  int ph, pw;
  if (position_sensitive) {
    TF_RETURN_IF_ERROR(c->GetAttr("group_size", &ph));
    pw = ph;
  } else {
    TF_RETURN_IF_ERROR(c->GetAttr("pooled_height", &ph));
    TF_RETURN_IF_ERROR(c->GetAttr("pooled_width", &pw));
  }
  std::string pooling;
  TF_RETURN_IF_ERROR(c->GetAttr("pooling", &pooling));
  DimensionHandle channels = c->Dim(features, 3);
  if (position_sensitive) {
    if (c->ValueKnown(channels) && c->Value(channels) % (ph * pw) != 0)
      return errors::InvalidArgument("LhrcnnPsRoiAlign: features has ", c->Value(channels),
                                     " channels, which is not divisible by group_size^2 = ",
                                     ph * pw);
    TF_RETURN_IF_ERROR(c->Divide(channels, ph * pw, /*evenly_divisible=*/false, &channels));
  }
  ShapeHandle out = c->MakeShape({c->Dim(rois, 0), c->MakeDim(ph), c->MakeDim(pw), channels});
  c->set_output(0, out);
  c->set_output(1, pooling == "max" ? out : c->MakeShape({0}));
  return ::tensorflow::OkStatus();
}

AlignParams ReadAlignParams(OpKernelConstruction* ctx, bool position_sensitive) {
  AlignParams p;
  p.position_sensitive = position_sensitive;
  LHRCNN_REQUIRES_OK_RETURN(ctx, p, tfglue::CheckAlignAttrs(ctx, ctx->def().op().c_str(), position_sensitive));
  if (position_sensitive) {
    LHRCNN_REQUIRES_OK_RETURN(ctx, p, ctx->GetAttr("group_size", &p.pooled_h));
    p.pooled_w = p.pooled_h;
    p.aligned = false;
  } else {
    LHRCNN_REQUIRES_OK_RETURN(ctx, p, ctx->GetAttr("pooled_height", &p.pooled_h));
    LHRCNN_REQUIRES_OK_RETURN(ctx, p, ctx->GetAttr("pooled_width", &p.pooled_w));
    LHRCNN_REQUIRES_OK_RETURN(ctx, p, ctx->GetAttr("aligned", &p.aligned));
  }
  LHRCNN_REQUIRES_OK_RETURN(ctx, p, ctx->GetAttr("sample_height", &p.sample_h));
  LHRCNN_REQUIRES_OK_RETURN(ctx, p, ctx->GetAttr("sample_width", &p.sample_w));
  LHRCNN_REQUIRES_OK_RETURN(ctx, p, ctx->GetAttr("spatial_scale", &p.spatial_scale));
  std::string pooling;
  LHRCNN_REQUIRES_OK_RETURN(ctx, p, ctx->GetAttr("pooling", &pooling));
  p.max_pool = pooling == "max";
  LHRCNN_REQUIRES_OK_RETURN(ctx, p, CheckScale(ctx->def().op().c_str(), p.spatial_scale));
  return p;
}

template <bool kPositionSensitive, bool kGpu>
class AlignOp : public OpKernel {
 public:
  explicit AlignOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), p_(ReadAlignParams(ctx, kPositionSensitive)) {}

  void Compute(::tensorflow::OpKernelContext* ctx) override {
    const char* op = kPositionSensitive ? "LhrcnnPsRoiAlign" : "LhrcnnRoiAlign";
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckFeaturesAndRois(op, features, rois, p_.planes()));
    const FeatureShape fs = ShapeOf(features);
    const int num_rois = static_cast<int>(rois.dim_size(0));
    const int64_t K = fs.channels / p_.planes();
    Tensor* out = nullptr;
    Tensor* argmax = nullptr;
    const TensorShape out_shape({num_rois, p_.pooled_h, p_.pooled_w, K});
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, p_.max_pool ? out_shape : TensorShape({0}), &argmax));
    int32_t* argmax_data = p_.max_pool ? argmax->flat<int32_t>().data() : nullptr;
    if (num_rois == 0) return;
    if constexpr (kGpu) {
#if LHRCNN_WITH_CUDA
      OP_REQUIRES_OK(ctx, tfglue::CheckRoisGpu(ctx, op, rois, fs.batch));
      Tensor workspace;
      OP_REQUIRES_OK(ctx, tfglue::AllocateWorkspace(ctx, RoiAlignGpuWorkspace(p_, fs), &workspace));
      const int e = RoiAlignForwardGpu(p_, fs, features.flat<float>().data(), rois.flat<float>().data(),
                                       num_rois, out->flat<float>().data(), argmax_data,
                                       workspace.flat<float>().data(), tfglue::GpuStream(ctx));
      OP_REQUIRES(ctx, e == 0, errors::Internal(op, ": CUDA error: ", CudaErrorString(e)));
#endif
    } else {
      OP_REQUIRES_OK(ctx, tfglue::CheckRoisCpu(op, rois, fs.batch));
      Tensor workspace;
      OP_REQUIRES_OK(ctx, tfglue::AllocateWorkspace(ctx, RoiAlignCpuWorkspace(p_, fs), &workspace));
      RoiAlignForwardCpu(p_, fs, features.flat<float>().data(), rois.flat<float>().data(), num_rois,
                         out->flat<float>().data(), argmax_data, workspace.flat<float>().data(),
                         tfglue::CpuParallelFor(ctx));
    }
  }

 private:
  AlignParams p_;
};

// Inputs: features (for its shape), rois, argmax, grad [R, PH, PW, K]. Output: d features.
template <bool kPositionSensitive, bool kGpu>
class AlignGradOp : public OpKernel {
 public:
  explicit AlignGradOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), p_(ReadAlignParams(ctx, kPositionSensitive)) {}

  void Compute(::tensorflow::OpKernelContext* ctx) override {
    const char* op = kPositionSensitive ? "LhrcnnPsRoiAlignGrad" : "LhrcnnRoiAlignGrad";
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    const Tensor& argmax = ctx->input(2);
    const Tensor& grad = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckFeaturesAndRois(op, features, rois, p_.planes()));
    const FeatureShape fs = ShapeOf(features);
    const int num_rois = static_cast<int>(rois.dim_size(0));
    const TensorShape out_shape({num_rois, p_.pooled_h, p_.pooled_w, fs.channels / p_.planes()});
    OP_REQUIRES(ctx, grad.shape() == out_shape,
                errors::InvalidArgument(op, ": grad must have shape ", out_shape.DebugString(),
                                        ", got ", grad.shape().DebugString()));
    OP_REQUIRES(ctx, !p_.max_pool || argmax.shape() == out_shape,
                errors::InvalidArgument(op, ": argmax must have shape ", out_shape.DebugString(),
                                        ", got ", argmax.shape().DebugString()));
    Tensor* grad_features = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, features.shape(), &grad_features));
    const int32_t* argmax_data = p_.max_pool ? argmax.flat<int32_t>().data() : nullptr;
    if constexpr (kGpu) {
#if LHRCNN_WITH_CUDA
      OP_REQUIRES_OK(ctx, tfglue::RequireNondeterminismAllowed(op));
      OP_REQUIRES_OK(ctx, tfglue::CheckRoisGpu(ctx, op, rois, fs.batch));
      if (p_.max_pool) OP_REQUIRES_OK(ctx, tfglue::CheckArgmaxGpu(ctx, op, argmax, p_.samples()));
      Tensor workspace;
      OP_REQUIRES_OK(ctx, tfglue::AllocateWorkspace(ctx, RoiAlignGpuWorkspace(p_, fs), &workspace));
      const int e = RoiAlignBackwardGpu(p_, fs, rois.flat<float>().data(), num_rois,
                                        grad.flat<float>().data(), argmax_data,
                                        grad_features->flat<float>().data(), workspace.flat<float>().data(),
                                        tfglue::GpuStream(ctx));
      OP_REQUIRES(ctx, e == 0, errors::Internal(op, ": CUDA error: ", CudaErrorString(e)));
#endif
    } else {
      OP_REQUIRES_OK(ctx, tfglue::CheckRoisCpu(op, rois, fs.batch));
      if (p_.max_pool) OP_REQUIRES_OK(ctx, tfglue::CheckArgmaxCpu(ctx, op, argmax, p_.samples()));
      Tensor workspace;
      OP_REQUIRES_OK(ctx, tfglue::AllocateWorkspace(ctx, RoiAlignCpuWorkspace(p_, fs), &workspace));
      RoiAlignBackwardCpu(p_, fs, rois.flat<float>().data(), num_rois, grad.flat<float>().data(),
                          argmax_data, grad_features->flat<float>().data(),
                          workspace.flat<float>().data(), tfglue::CpuParallelFor(ctx));
    }
  }

 private:
  AlignParams p_;
};

}  // namespace

REGISTER_OP("LhrcnnPsRoiAlign")
    .Input("features: float")
    .Input("rois: float")
    .Output("output: float")
    .Output("argmax: int32")
    .Attr("group_size: int >= 1")
    .Attr("sample_height: int >= 1 = 2")
    .Attr("sample_width: int >= 1 = 2")
    .Attr("spatial_scale: float")
    .Attr("pooling: {'max', 'avg'} = 'max'")
    .SetShapeFn([](InferenceContext* c) { return AlignShape(c, true); })
    .Doc(R"doc(
Position-sensitive RoI-Align (Light-Head R-CNN's PSAlignPool). features [B, H, W, C] with
C = K * group_size^2, rois [R, 5] = (batch_index, x1, y1, x2, y2) in input pixels.
output [R, G, G, K]; argmax holds the winning sample index for max pooling.
)doc");

REGISTER_OP("LhrcnnPsRoiAlignGrad")
    .Input("features: float")
    .Input("rois: float")
    .Input("argmax: int32")
    .Input("grad: float")
    .Output("grad_features: float")
    .Attr("group_size: int >= 1")
    .Attr("sample_height: int >= 1 = 2")
    .Attr("sample_width: int >= 1 = 2")
    .Attr("spatial_scale: float")
    .Attr("pooling: {'max', 'avg'} = 'max'")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("LhrcnnRoiAlign")
    .Input("features: float")
    .Input("rois: float")
    .Output("output: float")
    .Output("argmax: int32")
    .Attr("pooled_height: int >= 1")
    .Attr("pooled_width: int >= 1")
    .Attr("sample_height: int >= 1 = 2")
    .Attr("sample_width: int >= 1 = 2")
    .Attr("spatial_scale: float")
    .Attr("pooling: {'max', 'avg'} = 'avg'")
    .Attr("aligned: bool = false")
    .SetShapeFn([](InferenceContext* c) { return AlignShape(c, false); })
    .Doc(R"doc(
RoIAlign on NHWC features: output [R, pooled_height, pooled_width, C].
)doc");

REGISTER_OP("LhrcnnRoiAlignGrad")
    .Input("features: float")
    .Input("rois: float")
    .Input("argmax: int32")
    .Input("grad: float")
    .Output("grad_features: float")
    .Attr("pooled_height: int >= 1")
    .Attr("pooled_width: int >= 1")
    .Attr("sample_height: int >= 1 = 2")
    .Attr("sample_width: int >= 1 = 2")
    .Attr("spatial_scale: float")
    .Attr("pooling: {'max', 'avg'} = 'avg'")
    .Attr("aligned: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("LhrcnnPsRoiAlign").Device(DEVICE_CPU), AlignOp<true, false>);
REGISTER_KERNEL_BUILDER(Name("LhrcnnPsRoiAlignGrad").Device(DEVICE_CPU), AlignGradOp<true, false>);
REGISTER_KERNEL_BUILDER(Name("LhrcnnRoiAlign").Device(DEVICE_CPU), AlignOp<false, false>);
REGISTER_KERNEL_BUILDER(Name("LhrcnnRoiAlignGrad").Device(DEVICE_CPU), AlignGradOp<false, false>);
#if LHRCNN_WITH_CUDA
REGISTER_KERNEL_BUILDER(Name("LhrcnnPsRoiAlign").Device(DEVICE_GPU), AlignOp<true, true>);
REGISTER_KERNEL_BUILDER(Name("LhrcnnPsRoiAlignGrad").Device(DEVICE_GPU), AlignGradOp<true, true>);
REGISTER_KERNEL_BUILDER(Name("LhrcnnRoiAlign").Device(DEVICE_GPU), AlignOp<false, true>);
REGISTER_KERNEL_BUILDER(Name("LhrcnnRoiAlignGrad").Device(DEVICE_GPU), AlignGradOp<false, true>);
#endif

}  // namespace lhrcnn
