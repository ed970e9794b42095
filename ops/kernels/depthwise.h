// The filter gradient of a depthwise convolution (depth multiplier 1, no dilation) on NHWC
// float32 maps: the CPU kernel (depthwise_cpu.cc). No TensorFlow here.
#ifndef LHRCNN_OPS_KERNELS_DEPTHWISE_H_
#define LHRCNN_OPS_KERNELS_DEPTHWISE_H_

#include <cstdint>

#include "common.h"

namespace lhrcnn {

// input [N, H, W, C], out_backprop [N, OH, OW, C]; output o reads input rows
// o * stride_h - pad_top .. + kernel_h - 1 (outside the map: zero), likewise along the width.
struct DepthwiseShape {
  int batch, height, width, channels;
  int out_height, out_width;
  int kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
};

// The largest kernel side the op accepts.
constexpr int kMaxDepthwiseKernel = 15;

// filter_grad [KH, KW, C]: sum over n, oh, ow of input[n, oh * sh + kh - pt, ow * sw + kw - pl, c] *
// out_backprop[n, oh, ow, c]. Each channel's sum is taken by one shard in a fixed order, so the
// result does not depend on the number of threads.
void DepthwiseFilterGradCpu(const DepthwiseShape& s, const float* input, const float* out_backprop,
                            float* filter_grad, const ParallelFor& pf);

}  // namespace lhrcnn

#endif  // LHRCNN_OPS_KERNELS_DEPTHWISE_H_
