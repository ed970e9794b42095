// Declarations of greedy non-maximum suppression: the CPU function (nms_cpu.cc) and the
// framework-free CUDA launcher (nms.cu.cc).
// Semantics (identical on both devices and in the pure-TF twin): candidates are the boxes with
// score > score_threshold, visited in descending score (ties: lower index first); a candidate
// is suppressed when its IoU (NmsIou in common.h, with box_offset added to x2/y2) with an
// already kept box of the same class (any class when class_ids is null) is > iou_threshold.
// Output: kept indices in visiting order, padded with -1 to max_output; returns the count.
#ifndef LHRCNN_OPS_KERNELS_NMS_H_
#define LHRCNN_OPS_KERNELS_NMS_H_

#include <cstddef>
#include <cstdint>

namespace lhrcnn {

struct NmsParams {
  int max_output = 100;
  float iou_threshold = 0.5f;
  float score_threshold = -__builtin_huge_valf();
  float box_offset = 0.f;
};

enum NmsError : int {
  kNmsOk = 0,
  kNmsBoxNotFinite = 1,
  kNmsScoreNotFinite = 2,
};

// First box (flat index into [n] boxes) with a non-finite coordinate or score, or -1.
int64_t FirstInvalidNmsInputCpu(const float* boxes, const float* scores, int64_t n, int* code);

// One image: boxes [n, 4], scores [n], class_ids [n] or null. Writes out_indices [max_output].
int NmsCpu(const NmsParams& p, const float* boxes, const float* scores, const int32_t* class_ids,
           int n, int32_t* out_indices);

// ---- CUDA (device pointers; `stream` is a cudaStream_t; return 0 or a cudaError_t).
// Batched: boxes [batch, n, 4], scores [batch, n], class_ids [batch, n] or null;
// out_indices [batch, max_output], out_num_valid [batch]. Scratch: NmsGpuWorkspaceBytes.
// Memory: the suppression bit matrix takes batch * n * ceil(n / 64) * 8 bytes.
size_t NmsGpuWorkspaceBytes(int batch, int n);
// `bad_row` (host, 5 floats) receives the bad box's 4 coordinates and its score.
int ValidateNmsGpu(const float* boxes, const float* scores, int64_t n, int* scratch,
                   int64_t* bad_index, int* bad_code, float* bad_row, void* stream);
int NmsGpu(const NmsParams& p, const float* boxes, const float* scores, const int32_t* class_ids,
           int batch, int n, int32_t* out_indices, int32_t* out_num_valid, void* workspace,
           size_t workspace_bytes, void* stream);

}  // namespace lhrcnn

#endif  // LHRCNN_OPS_KERNELS_NMS_H_
