// TensorFlow op LhrcnnNms: greedy, optionally class-aware and batched NMS with the original's
// +1 box convention as an attribute (see nms.h for the exact semantics). Registration, shape
// function, validation, CPU / GPU kernels; arithmetic in nms_cpu.cc and nms.cu.cc.
#include <cmath>

#include "nms.h"
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

::tensorflow::Status NmsError(int64_t flat_index, int code, const float* row, int64_t n, bool batched) {
  const std::string where =
      batched ? absl::StrCat("[", flat_index / n, ", ", flat_index % n, "]") : absl::StrCat("[", flat_index, "]");
  if (code == kNmsBoxNotFinite)
    return errors::InvalidArgument("LhrcnnNms: boxes", where, " = (", row[0], ", ", row[1], ", ",
                                   row[2], ", ", row[3], ") has a non-finite coordinate");
  return errors::InvalidArgument("LhrcnnNms: scores", where, " = ", row[4], " is not finite");
}

template <bool kGpu>
class NmsOp : public OpKernel {
 public:
  explicit NmsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ::tensorflow::int64 k = 0;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_output_size", &k));
    OP_REQUIRES_OK(ctx, tfglue::CheckIntAttr("LhrcnnNms", "max_output_size", k, 0, kMaxNmsOutput));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_output_size", &p_.max_output));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("iou_threshold", &p_.iou_threshold));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("score_threshold", &p_.score_threshold));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("box_offset", &p_.box_offset));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("class_aware", &class_aware_));
    OP_REQUIRES(ctx, p_.iou_threshold >= 0.f && p_.iou_threshold <= 1.f,
                errors::InvalidArgument("LhrcnnNms: iou_threshold must be in [0, 1], got ", p_.iou_threshold));
    OP_REQUIRES(ctx, !std::isnan(p_.score_threshold),
                errors::InvalidArgument("LhrcnnNms: score_threshold must not be NaN"));
    OP_REQUIRES(ctx, std::isfinite(p_.box_offset),
                errors::InvalidArgument("LhrcnnNms: box_offset must be finite, got ", p_.box_offset));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& boxes = ctx->input(0);
    const Tensor& scores = ctx->input(1);
    const Tensor& classes = ctx->input(2);
    const bool batched = boxes.dims() == 3;
    OP_REQUIRES(ctx, (boxes.dims() == 2 || batched) && boxes.dim_size(boxes.dims() - 1) == 4,
                errors::InvalidArgument("LhrcnnNms: boxes must have shape [N, 4] or [B, N, 4], got ",
                                        boxes.shape().DebugString()));
    TensorShape score_shape = boxes.shape();
    score_shape.RemoveLastDims(1);
    OP_REQUIRES(ctx, scores.shape() == score_shape,
                errors::InvalidArgument("LhrcnnNms: scores must have shape ", score_shape.DebugString(),
                                        " to match boxes ", boxes.shape().DebugString(), ", got ",
                                        scores.shape().DebugString()));
    OP_REQUIRES(ctx, !class_aware_ || classes.shape() == score_shape,
                errors::InvalidArgument("LhrcnnNms: class_ids must have shape ", score_shape.DebugString(),
                                        " to match boxes ", boxes.shape().DebugString(), ", got ",
                                        classes.shape().DebugString()));
    const int64_t batch = batched ? boxes.dim_size(0) : 1;
    const int64_t n = boxes.dim_size(boxes.dims() - 2);
    OP_REQUIRES(ctx, n < (1LL << 31) && batch * n < (1LL << 31),
                errors::InvalidArgument("LhrcnnNms: too many boxes: ", boxes.shape().DebugString()));
    Tensor* indices = nullptr;
    Tensor* num_valid = nullptr;
    TensorShape ishape = batched ? TensorShape({batch, p_.max_output}) : TensorShape({p_.max_output});
    TensorShape nshape = batched ? TensorShape({batch}) : TensorShape({});
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ishape, &indices));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, nshape, &num_valid));
    const float* box_data = boxes.flat<float>().data();
    const float* score_data = scores.flat<float>().data();
    const int32_t* class_data = class_aware_ ? classes.flat<int32_t>().data() : nullptr;
    int32_t* out = indices->flat<int32_t>().data();
    int32_t* count = num_valid->flat<int32_t>().data();
    if constexpr (kGpu) {
#if LHRCNN_WITH_CUDA
      void* stream = tfglue::GpuStream(ctx);
      Tensor scratch;
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_INT32, TensorShape({1}), &scratch));
      int64_t bad = -1;
      int code = 0;
      float row[5] = {0, 0, 0, 0, 0};
      int e = ValidateNmsGpu(box_data, score_data, batch * n, scratch.flat<int32_t>().data(), &bad, &code,
                             row, stream);
      OP_REQUIRES(ctx, e == 0, errors::Internal("LhrcnnNms: CUDA error: ", CudaErrorString(e)));
      OP_REQUIRES_OK(ctx, bad < 0 ? ::tensorflow::OkStatus() : NmsError(bad, code, row, n, batched));
      // No candidate to visit (NmsGpu only writes the -1s and zero counts): no workspace.
      const size_t bytes = (n == 0 || p_.max_output == 0) ? 0
                           : NmsGpuWorkspaceBytes(static_cast<int>(batch), static_cast<int>(n));
      Tensor workspace;
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_INT8,
                                             TensorShape({static_cast<int64_t>(bytes)}), &workspace));
      e = NmsGpu(p_, box_data, score_data, class_data, static_cast<int>(batch), static_cast<int>(n), out,
                 count, workspace.flat<int8_t>().data(), bytes, stream);
      OP_REQUIRES(ctx, e == 0, errors::Internal("LhrcnnNms: CUDA error: ", CudaErrorString(e)));
#endif
    } else {
      // Each image is validated by the shard that processes it; the first bad image reports.
      std::vector<int64_t> bad(batch, -1);
      std::vector<int> codes(batch, 0);
      tfglue::CpuParallelFor(ctx)(batch, 200 * n, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          bad[b] = FirstInvalidNmsInputCpu(box_data + 4 * b * n, score_data + b * n, n, &codes[b]);
          if (bad[b] >= 0) continue;
          count[b] = NmsCpu(p_, box_data + 4 * b * n, score_data + b * n,
                            class_data ? class_data + b * n : nullptr, static_cast<int>(n),
                            out + b * p_.max_output);
        }
      });
      for (int64_t b = 0; b < batch; ++b) {
        if (bad[b] < 0) continue;
        const int64_t i = b * n + bad[b];
        float row[5] = {box_data[4 * i], box_data[4 * i + 1], box_data[4 * i + 2], box_data[4 * i + 3],
                        score_data[i]};
        OP_REQUIRES_OK(ctx, NmsError(i, codes[b], row, n, batched));
      }
    }
  }

 private:
  NmsParams p_;
  bool class_aware_ = false;
};

}  // namespace

REGISTER_OP("LhrcnnNms")
    .Input("boxes: float")
    .Input("scores: float")
    .Input("class_ids: int32")
    .Output("indices: int32")
    .Output("num_valid: int32")
    .Attr("max_output_size: int >= 0")
    .Attr("iou_threshold: float")
    .Attr("score_threshold: float")
    .Attr("box_offset: float = 0.0")
    .Attr("class_aware: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ::tensorflow::int64 k64 = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("max_output_size", &k64));
      TF_RETURN_IF_ERROR(tfglue::CheckIntAttr("LhrcnnNms", "max_output_size", k64, 0, kMaxNmsOutput));
      int k;
      bool class_aware;
      TF_RETURN_IF_ERROR(c->GetAttr("max_output_size", &k));
      TF_RETURN_IF_ERROR(c->GetAttr("class_aware", &class_aware));
      ShapeHandle boxes = c->input(0), scores;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(boxes, 2, &boxes));
      TF_RETURN_IF_ERROR(c->WithRankAtMost(boxes, 3, &boxes));
      DimensionHandle four;
      TF_RETURN_IF_ERROR(c->WithValue(c->Dim(boxes, -1), 4, &four));
      ShapeHandle expected;
      TF_RETURN_IF_ERROR(c->Subshape(boxes, 0, -1, &expected));
      TF_RETURN_IF_ERROR(c->Merge(c->input(1), expected, &scores));
      if (class_aware) {
        ShapeHandle classes;
        TF_RETURN_IF_ERROR(c->Merge(c->input(2), expected, &classes));
      }
      if (c->Rank(boxes) == 3) {
        c->set_output(0, c->MakeShape({c->Dim(boxes, 0), c->MakeDim(k)}));
        c->set_output(1, c->MakeShape({c->Dim(boxes, 0)}));
      } else {
        c->set_output(0, c->MakeShape({k}));
        c->set_output(1, c->Scalar());
      }
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Greedy NMS. boxes [N, 4] or [B, N, 4] as (x1, y1, x2, y2); scores [N] / [B, N]; class_ids of
the same shape when class_aware (else ignored, pass an empty tensor). indices [K] / [B, K] in
visiting order padded with -1, num_valid scalar / [B].
)doc");

REGISTER_KERNEL_BUILDER(Name("LhrcnnNms").Device(DEVICE_CPU), NmsOp<false>);
#if LHRCNN_WITH_CUDA
REGISTER_KERNEL_BUILDER(Name("LhrcnnNms").Device(DEVICE_GPU), NmsOp<true>);
#endif

}  // namespace lhrcnn
