// TensorFlow op LhrcnnDepthwiseFilterGrad: the filter gradient of a depthwise convolution
// (tf.nn.depthwise_conv2d with depth multiplier 1 and no dilation), the value of
// DepthwiseConv2dNativeBackpropFilter. Registration, shape function, validation and the CPU
// kernel; the arithmetic is in depthwise_cpu.cc. CPU only: on a GPU, TensorFlow's own kernel.
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "depthwise.h"
#include "tf_glue.h"

namespace lhrcnn {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

constexpr char kOp[] = "LhrcnnDepthwiseFilterGrad";

struct DepthwiseAttrs {
  int kernel_h = 0, kernel_w = 0, stride_h = 1, stride_w = 1;
  bool same = true;
};

// Reads and checks the attributes (a ctx with GetAttr: the kernel's construction or the shape
// function's context).
template <typename Ctx>
Status ReadAttrs(Ctx* c, DepthwiseAttrs* a) {
  std::vector<int> kernel, strides;
  std::string padding;
  TF_RETURN_IF_ERROR(c->GetAttr("kernel_size", &kernel));
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  if (kernel.size() != 2 || kernel[0] < 1 || kernel[1] < 1 || kernel[0] > kMaxDepthwiseKernel ||
      kernel[1] > kMaxDepthwiseKernel)
    return errors::InvalidArgument(kOp, ": kernel_size must be [KH, KW], each in [1, ", kMaxDepthwiseKernel,
                                   "], got [", absl::StrJoin(kernel, ", "), "]");
  if (strides.size() != 2 || strides[0] < 1 || strides[1] < 1 || strides[0] > (1 << 16) || strides[1] > (1 << 16))
    return errors::InvalidArgument(kOp, ": strides must be [SH, SW], each in [1, 65536], got [",
                                   absl::StrJoin(strides, ", "), "]");
  a->kernel_h = kernel[0];
  a->kernel_w = kernel[1];
  a->stride_h = strides[0];
  a->stride_w = strides[1];
  a->same = padding == "SAME";
  return ::tensorflow::OkStatus();
}

// Output size and leading padding of one axis, as TensorFlow's SAME / VALID rules give them.
void Axis(const DepthwiseAttrs& a, int64_t size, int kernel, int stride, int64_t* out, int* pad) {
  if (a.same) {
    *out = (size + stride - 1) / stride;
    *pad = static_cast<int>(std::max<int64_t>((*out - 1) * stride + kernel - size, 0) / 2);
  } else {
    *out = size >= kernel ? (size - kernel) / stride + 1 : 0;
    *pad = 0;
  }
}

class DepthwiseFilterGradOp : public OpKernel {
 public:
  explicit DepthwiseFilterGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &a_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& grad = ctx->input(1);
    OP_REQUIRES(ctx, input.dims() == 4,
                errors::InvalidArgument(kOp, ": input must be rank 4 [N, H, W, C], got shape ",
                                        input.shape().DebugString()));
    OP_REQUIRES(ctx, grad.dims() == 4,
                errors::InvalidArgument(kOp, ": out_backprop must be rank 4 [N, OH, OW, C], got shape ",
                                        grad.shape().DebugString()));
    const int64_t limit = std::numeric_limits<int32_t>::max();
    for (int d = 0; d < 4; ++d)
      OP_REQUIRES(ctx, input.dim_size(d) <= limit && grad.dim_size(d) <= limit,
                  errors::InvalidArgument(kOp, ": dimensions must fit in int32, got input ",
                                          input.shape().DebugString(), " and out_backprop ",
                                          grad.shape().DebugString()));
    int64_t oh, ow;
    int pt, pl;
    Axis(a_, input.dim_size(1), a_.kernel_h, a_.stride_h, &oh, &pt);
    Axis(a_, input.dim_size(2), a_.kernel_w, a_.stride_w, &ow, &pl);
    const TensorShape want({input.dim_size(0), oh, ow, input.dim_size(3)});
    OP_REQUIRES(ctx, grad.shape() == want,
                errors::InvalidArgument(kOp, ": out_backprop must have shape ", want.DebugString(),
                                        " for input ", input.shape().DebugString(), " (kernel ", a_.kernel_h,
                                        "x", a_.kernel_w, ", strides ", a_.stride_h, "x", a_.stride_w, ", ",
                                        a_.same ? "SAME" : "VALID", " padding), got ", grad.shape().DebugString()));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({a_.kernel_h, a_.kernel_w, input.dim_size(3), 1}), &out));
    const DepthwiseShape s{static_cast<int>(input.dim_size(0)), static_cast<int>(input.dim_size(1)),
                           static_cast<int>(input.dim_size(2)), static_cast<int>(input.dim_size(3)),
                           static_cast<int>(oh), static_cast<int>(ow), a_.kernel_h, a_.kernel_w,
                           a_.stride_h, a_.stride_w, pt, pl};
    DepthwiseFilterGradCpu(s, input.flat<float>().data(), grad.flat<float>().data(), out->flat<float>().data(),
                           tfglue::CpuParallelFor(ctx));
  }

 private:
  DepthwiseAttrs a_;
};

}  // namespace

REGISTER_OP("LhrcnnDepthwiseFilterGrad")
    .Input("input: float")
    .Input("out_backprop: float")
    .Output("filter_grad: float")
    .Attr("kernel_size: list(int)")
    .Attr("strides: list(int)")
    .Attr("padding: {'SAME', 'VALID'}")
    .SetShapeFn([](InferenceContext* c) {
      DepthwiseAttrs a;
      TF_RETURN_IF_ERROR(ReadAttrs(c, &a));
      ShapeHandle input, grad;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &grad));
      c->set_output(0, c->MakeShape({c->MakeDim(a.kernel_h), c->MakeDim(a.kernel_w), c->Dim(input, 3),
                                     c->MakeDim(1)}));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Filter gradient of a depthwise convolution (depth multiplier 1, no dilation) on NHWC float32:
input [N, H, W, C], out_backprop [N, OH, OW, C] -> [KH, KW, C, 1], the value of
DepthwiseConv2dNativeBackpropFilter with the same kernel_size, strides and padding.
)doc");

REGISTER_KERNEL_BUILDER(Name("LhrcnnDepthwiseFilterGrad").Device(DEVICE_CPU), DepthwiseFilterGradOp);

}  // namespace lhrcnn
