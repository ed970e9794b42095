// CPU kernel of the depthwise convolution's filter gradient (see depthwise.h).
//
// Work is sharded by blocks of 16 channels. A block's KH x KW sums live in 16-lane vectors for
// the whole pass (in registers for 3 x 3 and 5 x 5 kernels): for every output pixel, one load of
// the gradient's 16 lanes and one multiply-add per tap with the input's 16 lanes under it. The
// block reads each input and gradient cache line once.
#include <algorithm>

#include "depthwise.h"

namespace lhrcnn {
namespace {

typedef float v16f __attribute__((vector_size(64)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LHRCNN_DW_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LHRCNN_DW_MULTIVERSION
#endif

constexpr int kLanes = 16;

// The first n lanes at p (all 16 when kFull), the others zero.
template <bool kFull>
__attribute__((always_inline)) inline v16f LoadLanes(const float* p, int n) {
  if (kFull) {
    typedef float U __attribute__((vector_size(64), aligned(4), may_alias));
    return (v16f)(*reinterpret_cast<const U*>(p));
  }
  v16f v = {};
  for (int l = 0; l < kLanes; ++l)
    if (l < n) v[l] = p[l];
  return v;
}

// One block of channels [c0, c0 + n); KH, KW > 0 fix the kernel at compile time, 0 reads it from s.
template <int KH, int KW, bool kFull>
__attribute__((always_inline)) inline void Block(const DepthwiseShape& s, const float* input, const float* grad,
                                                 float* filter_grad, int c0, int n) {
  const int kh_count = KH > 0 ? KH : s.kernel_h, kw_count = KW > 0 ? KW : s.kernel_w;
  constexpr int kTaps = KH > 0 ? KH * KW : kMaxDepthwiseKernel * kMaxDepthwiseKernel;
  v16f acc[kTaps];
  for (int t = 0; t < kh_count * kw_count; ++t) acc[t] = v16f{};
  const int64_t C = s.channels;
  for (int b = 0; b < s.batch; ++b)
    for (int oh = 0; oh < s.out_height; ++oh) {
      const float* grad_row = grad + (static_cast<int64_t>(b) * s.out_height + oh) * s.out_width * C + c0;
      for (int kh = 0; kh < kh_count; ++kh) {
        const int ih = oh * s.stride_h + kh - s.pad_top;
        if (ih < 0 || ih >= s.height) continue;
        const float* in_row = input + (static_cast<int64_t>(b) * s.height + ih) * s.width * C + c0;
        v16f* row_acc = acc + kh * kw_count;
        for (int ow = 0; ow < s.out_width; ++ow) {
          const v16f g = LoadLanes<kFull>(grad_row + ow * C, n);
          const int iw0 = ow * s.stride_w - s.pad_left;
          if (iw0 >= 0 && iw0 + kw_count <= s.width) {
            const float* in_px = in_row + iw0 * C;
            for (int kw = 0; kw < kw_count; ++kw) row_acc[kw] += LoadLanes<kFull>(in_px + kw * C, n) * g;
          } else {
            for (int kw = 0; kw < kw_count; ++kw) {
              const int iw = iw0 + kw;
              if (iw >= 0 && iw < s.width) row_acc[kw] += LoadLanes<kFull>(in_row + iw * C, n) * g;
            }
          }
        }
      }
    }
  for (int t = 0; t < kh_count * kw_count; ++t)
    for (int l = 0; l < n; ++l) filter_grad[t * C + c0 + l] = acc[t][l];
}

template <int KH, int KW>
__attribute__((always_inline)) inline void Blocks(const DepthwiseShape& s, const float* input, const float* grad,
                                                  float* filter_grad, int64_t begin, int64_t end) {
  for (int64_t blk = begin; blk < end; ++blk) {
    const int c0 = static_cast<int>(blk) * kLanes, n = std::min(kLanes, s.channels - c0);
    if (n == kLanes) Block<KH, KW, true>(s, input, grad, filter_grad, c0, n);
    else Block<KH, KW, false>(s, input, grad, filter_grad, c0, n);
  }
}

LHRCNN_DW_MULTIVERSION
void FilterGradBlocks(const DepthwiseShape& s, const float* input, const float* grad, float* filter_grad,
                      int64_t begin, int64_t end) {
  if (s.kernel_h == 5 && s.kernel_w == 5) return Blocks<5, 5>(s, input, grad, filter_grad, begin, end);
  if (s.kernel_h == 3 && s.kernel_w == 3) return Blocks<3, 3>(s, input, grad, filter_grad, begin, end);
  Blocks<0, 0>(s, input, grad, filter_grad, begin, end);
}

}  // namespace

void DepthwiseFilterGradCpu(const DepthwiseShape& s, const float* input, const float* out_backprop,
                            float* filter_grad, const ParallelFor& pf) {
  const int64_t blocks = (s.channels + kLanes - 1) / kLanes;
  const int64_t cost = static_cast<int64_t>(s.batch) * s.out_height * s.out_width * s.kernel_h * s.kernel_w * 2;
  pf(blocks, std::max<int64_t>(cost, 1), [&](int64_t begin, int64_t end) {
    FilterGradBlocks(s, input, out_backprop, filter_grad, begin, end);
  });
}

}  // namespace lhrcnn
