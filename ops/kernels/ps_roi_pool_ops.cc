// TensorFlow op LhrcnnPsRoiPool (the original's PSROIPool, R-FCN style average pooling over
// integer bins) and its gradient op: registration, shape function, validation, CPU / GPU
// kernels. Arithmetic in roi_pooling_cpu.cc and roi_pooling.cu.cc.
#include "tf_glue.h"

namespace lhrcnn {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::DEVICE_GPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

PsPoolParams ReadPoolParams(OpKernelConstruction* ctx) {
  PsPoolParams p;
  LHRCNN_REQUIRES_OK_RETURN(ctx, p, tfglue::CheckPoolAttrs(ctx, ctx->def().op().c_str()));
  LHRCNN_REQUIRES_OK_RETURN(ctx, p, ctx->GetAttr("group_size", &p.group));
  LHRCNN_REQUIRES_OK_RETURN(ctx, p, ctx->GetAttr("spatial_scale", &p.spatial_scale));
  return p;
}

template <bool kGpu>
class PsRoiPoolOp : public OpKernel {
 public:
  explicit PsRoiPoolOp(OpKernelConstruction* ctx) : OpKernel(ctx), p_(ReadPoolParams(ctx)) {}

  void Compute(OpKernelContext* ctx) override {
    const char* op = "LhrcnnPsRoiPool";
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    const int G = p_.group;
    OP_REQUIRES_OK(ctx, tfglue::CheckFeaturesAndRois(op, features, rois, G * G));
    const FeatureShape fs = tfglue::ShapeOf(features);
    const int num_rois = static_cast<int>(rois.dim_size(0));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({num_rois, G, G, fs.channels / (G * G)}),
                                             &out));
    if (num_rois == 0) return;
    if constexpr (kGpu) {
#if LHRCNN_WITH_CUDA
      OP_REQUIRES_OK(ctx, tfglue::CheckRoisGpu(ctx, op, rois, fs.batch));
      Tensor workspace;
      OP_REQUIRES_OK(ctx, tfglue::AllocateWorkspace(ctx, PsRoiPoolGpuWorkspace(p_, fs), &workspace));
      const int e = PsRoiPoolForwardGpu(p_, fs, features.flat<float>().data(), rois.flat<float>().data(),
                                        num_rois, out->flat<float>().data(), workspace.flat<float>().data(),
                                        tfglue::GpuStream(ctx));
      OP_REQUIRES(ctx, e == 0, errors::Internal(op, ": CUDA error: ", CudaErrorString(e)));
#endif
    } else {
      OP_REQUIRES_OK(ctx, tfglue::CheckRoisCpu(op, rois, fs.batch));
      Tensor workspace;
      OP_REQUIRES_OK(ctx, tfglue::AllocateWorkspace(ctx, PsRoiPoolCpuWorkspace(p_, fs), &workspace));
      PsRoiPoolForwardCpu(p_, fs, features.flat<float>().data(), rois.flat<float>().data(), num_rois,
                          out->flat<float>().data(), workspace.flat<float>().data(),
                          tfglue::CpuParallelFor(ctx));
    }
  }

 private:
  PsPoolParams p_;
};

template <bool kGpu>
class PsRoiPoolGradOp : public OpKernel {
 public:
  explicit PsRoiPoolGradOp(OpKernelConstruction* ctx) : OpKernel(ctx), p_(ReadPoolParams(ctx)) {}

  void Compute(OpKernelContext* ctx) override {
    const char* op = "LhrcnnPsRoiPoolGrad";
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    const Tensor& grad = ctx->input(2);
    const int G = p_.group;
    OP_REQUIRES_OK(ctx, tfglue::CheckFeaturesAndRois(op, features, rois, G * G));
    const FeatureShape fs = tfglue::ShapeOf(features);
    const int num_rois = static_cast<int>(rois.dim_size(0));
    const TensorShape out_shape({num_rois, G, G, fs.channels / (G * G)});
    OP_REQUIRES(ctx, grad.shape() == out_shape,
                errors::InvalidArgument(op, ": grad must have shape ", out_shape.DebugString(),
                                        ", got ", grad.shape().DebugString()));
    Tensor* grad_features = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, features.shape(), &grad_features));
    if constexpr (kGpu) {
#if LHRCNN_WITH_CUDA
      OP_REQUIRES_OK(ctx, tfglue::RequireNondeterminismAllowed(op));
      OP_REQUIRES_OK(ctx, tfglue::CheckRoisGpu(ctx, op, rois, fs.batch));
      Tensor workspace;
      OP_REQUIRES_OK(ctx, tfglue::AllocateWorkspace(ctx, PsRoiPoolGpuWorkspace(p_, fs), &workspace));
      const int e = PsRoiPoolBackwardGpu(p_, fs, rois.flat<float>().data(), num_rois,
                                         grad.flat<float>().data(), grad_features->flat<float>().data(),
                                         workspace.flat<float>().data(), tfglue::GpuStream(ctx));
      OP_REQUIRES(ctx, e == 0, errors::Internal(op, ": CUDA error: ", CudaErrorString(e)));
#endif
    } else {
      OP_REQUIRES_OK(ctx, tfglue::CheckRoisCpu(op, rois, fs.batch));
      Tensor workspace;
      OP_REQUIRES_OK(ctx, tfglue::AllocateWorkspace(ctx, PsRoiPoolCpuWorkspace(p_, fs), &workspace));
      PsRoiPoolBackwardCpu(p_, fs, rois.flat<float>().data(), num_rois, grad.flat<float>().data(),
                           grad_features->flat<float>().data(), workspace.flat<float>().data(),
                           tfglue::CpuParallelFor(ctx));
    }
  }

 private:
  PsPoolParams p_;
};

}  // namespace

REGISTER_OP("LhrcnnPsRoiPool")
    .Input("features: float")
    .Input("rois: float")
    .Output("output: float")
    .Attr("group_size: int >= 1")
    .Attr("spatial_scale: float")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(tfglue::CheckPoolAttrs(c, "LhrcnnPsRoiPool"));
      ShapeHandle features, rois;
      TF_RETURN_IF_ERROR(tfglue::InferPoolInputs(c, &features, &rois));
      int g;
      TF_RETURN_IF_ERROR(c->GetAttr("group_size", &g));
      DimensionHandle channels = c->Dim(features, 3);
      if (c->ValueKnown(channels) && c->Value(channels) % (g * g) != 0)
        return errors::InvalidArgument("LhrcnnPsRoiPool: features has ", c->Value(channels),
                                       " channels, which is not divisible by group_size^2 = ", g * g);
      TF_RETURN_IF_ERROR(c->Divide(channels, g * g, /*evenly_divisible=*/false, &channels));
      c->set_output(0, c->MakeShape({c->Dim(rois, 0), c->MakeDim(g), c->MakeDim(g), channels}));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Position-sensitive RoI pooling (R-FCN's PSROIPool as in Light-Head R-CNN): rounded corners,
+1 on x2/y2, floor/ceil integer bins clipped to the map, mean; empty bin = 0.
)doc");

REGISTER_OP("LhrcnnPsRoiPoolGrad")
    .Input("features: float")
    .Input("rois: float")
    .Input("grad: float")
    .Output("grad_features: float")
    .Attr("group_size: int >= 1")
    .Attr("spatial_scale: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("LhrcnnPsRoiPool").Device(DEVICE_CPU), PsRoiPoolOp<false>);
REGISTER_KERNEL_BUILDER(Name("LhrcnnPsRoiPoolGrad").Device(DEVICE_CPU), PsRoiPoolGradOp<false>);
#if LHRCNN_WITH_CUDA
REGISTER_KERNEL_BUILDER(Name("LhrcnnPsRoiPool").Device(DEVICE_GPU), PsRoiPoolOp<true>);
REGISTER_KERNEL_BUILDER(Name("LhrcnnPsRoiPoolGrad").Device(DEVICE_GPU), PsRoiPoolGradOp<true>);
#endif

}  // namespace lhrcnn
