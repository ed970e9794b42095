// CUDA greedy NMS and its framework-free launcher (see nms.h).
// 1. One 64-bit key per box: the image index above the score's order bits (descending; -inf for
//    score <= threshold), sorted by one stable device-wide radix sort over all images, so every
//    SM takes part whatever the batch size, and ties keep the lower index first. The number of
//    candidates per image is counted on the way.
// 2. A bit matrix: bit j of row i (in sorted order) says candidate i suppresses candidate j > i
//    (IoU > threshold, same class). 64 x 64 tiles, one block each.
// 3. One block per image walks the rows greedily, 64 candidates at a time: the tile's diagonal
//    words are loaded into shared memory in parallel, thread 0 resolves them in order, then all
//    threads OR the kept rows into the "removed" words.
#include <cuda_runtime.h>

#include <cub/cub.cuh>
#include <cstdint>

#include "common.h"
#include "nms.h"

namespace lhrcnn {
namespace {

constexpr int kTile = 64;
constexpr int kThreads = 256;

inline size_t Align256(size_t n) { return (n + 255) & ~static_cast<size_t>(255); }

struct Workspace {
  unsigned long long* keys_in; unsigned long long* keys_out;
  int32_t* vals_in; int32_t* vals_out;
  int32_t* candidates;          // [batch]
  unsigned long long* mask;     // [batch, n, col_blocks]
  unsigned long long* removed;  // [batch, col_blocks]
  void* cub_temp; size_t cub_bytes;
  size_t total;
};

size_t CubSortBytes(int batch, int n) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const unsigned long long*>(nullptr),
                                  static_cast<unsigned long long*>(nullptr),
                                  static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                  static_cast<int64_t>(batch) * n);
  return bytes;
}

Workspace Layout(char* base, int batch, int n) {
  Workspace w;
  const size_t items = static_cast<size_t>(batch) * n;
  const size_t cb = (n + kTile - 1) / kTile;
  size_t off = 0;
  auto take = [&](size_t bytes) { char* p = base ? base + off : nullptr; off += Align256(bytes); return p; };
  w.keys_in = reinterpret_cast<unsigned long long*>(take(items * sizeof(unsigned long long)));
  w.keys_out = reinterpret_cast<unsigned long long*>(take(items * sizeof(unsigned long long)));
  w.vals_in = reinterpret_cast<int32_t*>(take(items * sizeof(int32_t)));
  w.vals_out = reinterpret_cast<int32_t*>(take(items * sizeof(int32_t)));
  w.candidates = reinterpret_cast<int32_t*>(take(batch * sizeof(int32_t)));
  w.mask = reinterpret_cast<unsigned long long*>(take(items * cb * sizeof(unsigned long long)));
  w.removed = reinterpret_cast<unsigned long long*>(take(batch * cb * sizeof(unsigned long long)));
  w.cub_bytes = CubSortBytes(batch, n);
  w.cub_temp = take(w.cub_bytes);
  w.total = off;
  return w;
}

// Bits needed for image indices 0 .. batch - 1.
inline int ImageBits(int batch) {
  int bits = 0;
  while (bits < 31 && (1LL << bits) < batch) ++bits;
  return bits;
}

__global__ void ValidateKernel(const float* boxes, const float* scores, int64_t n, int* first_bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    bool ok = IsFinite(scores[i]);
    for (int j = 0; j < 4; ++j) ok = ok && IsFinite(boxes[4 * i + j]);
    if (!ok) atomicMin(first_bad, static_cast<int>(i));
  }
}

// Key of box i = (image, descending score order): image << 32 | ~order(score), where order maps
// floats to unsigned integers in ascending order; a box at or below the threshold gets -inf's
// key, the largest of its image, and is not counted as a candidate.
__global__ void PrepareKeysKernel(const float* scores, int batch, int n, float threshold,
                                  unsigned long long* keys, int32_t* vals, int32_t* candidates) {
  const int64_t items = static_cast<int64_t>(batch) * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const float s = NmsScore(scores[i]);  // subnormals and -0 as +0, as the CPU kernel orders them
    const bool candidate = s > NmsScore(threshold);
    const unsigned int u = __float_as_uint(candidate ? s : -__int_as_float(0x7f800000));
    const unsigned int order = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    const int64_t b = i / n;
    keys[i] = (static_cast<unsigned long long>(b) << 32) | static_cast<unsigned int>(~order);
    vals[i] = static_cast<int32_t>(i - b * n);
    if (candidate) atomicAdd(candidates + b, 1);
  }
}

// grid (col_blocks, col_blocks, images of this launch), kTile threads: tile (row block, col
// block) of image first_image + blockIdx.z (gridDim.z is at most 65535: larger batches take
// several launches).
__global__ void MaskKernel(const float* boxes, const int32_t* class_ids, const int32_t* sorted_idx,
                           int n, int col_blocks, float threshold, float offset, int first_image,
                           unsigned long long* mask) {
  const int row_block = blockIdx.y, col_block = blockIdx.x, b = first_image + blockIdx.z;
  if (col_block < row_block) return;
  __shared__ NmsBox col_boxes[kTile];
  __shared__ int32_t col_class[kTile];
  const int32_t* idx = sorted_idx + static_cast<int64_t>(b) * n;
  const float* img_boxes = boxes + static_cast<int64_t>(b) * n * 4;
  const int col_start = col_block * kTile;
  const int col_count = min(kTile, n - col_start);
  if (threadIdx.x < col_count) {
    const int32_t j = idx[col_start + threadIdx.x];
    col_boxes[threadIdx.x] = MakeNmsBox(img_boxes + 4 * static_cast<int64_t>(j), offset);
    col_class[threadIdx.x] = class_ids ? class_ids[static_cast<int64_t>(b) * n + j] : 0;
  }
  __syncthreads();
  const int row = row_block * kTile + threadIdx.x;
  if (row >= n) return;
  const int32_t i = idx[row];
  const NmsBox me = MakeNmsBox(img_boxes + 4 * static_cast<int64_t>(i), offset);
  const int32_t my_class = class_ids ? class_ids[static_cast<int64_t>(b) * n + i] : 0;
  unsigned long long bits = 0;
  const int first = col_block == row_block ? threadIdx.x + 1 : 0;
  for (int t = first; t < col_count; ++t) {
    if (col_class[t] == my_class && NmsIou(me, col_boxes[t]) > threshold) bits |= 1ULL << t;
  }
  mask[(static_cast<int64_t>(b) * n + row) * col_blocks + col_block] = bits;
}

// One block per image.
__global__ void GreedyKernel(const int32_t* candidates, const int32_t* sorted_idx,
                             const unsigned long long* mask, unsigned long long* removed, int n,
                             int col_blocks, int max_output, int32_t* out_indices,
                             int32_t* out_num_valid) {
  const int b = blockIdx.x;
  const int32_t* idx = sorted_idx + static_cast<int64_t>(b) * n;
  const unsigned long long* m = mask + static_cast<int64_t>(b) * n * col_blocks;
  unsigned long long* rem = removed + static_cast<int64_t>(b) * col_blocks;
  int32_t* out = out_indices + static_cast<int64_t>(b) * max_output;
  __shared__ int s_keep[kTile];
  __shared__ unsigned long long s_diag[kTile];
  __shared__ int s_count, s_total, s_done;
  for (int w = threadIdx.x; w < col_blocks; w += blockDim.x) rem[w] = 0;
  if (threadIdx.x == 0) s_total = 0;
  __syncthreads();
  const int valid = candidates[b];  // the candidates form a prefix of the image's sorted boxes
  const int valid_blocks = max_output > 0 ? (valid + kTile - 1) / kTile : 0;
  for (int blk = 0; blk < valid_blocks; ++blk) {
    // The tile's diagonal words, loaded side by side instead of one dependent load per kept row.
    if (threadIdx.x < kTile) {
      const int i = blk * kTile + threadIdx.x;
      s_diag[threadIdx.x] = i < valid ? m[static_cast<int64_t>(i) * col_blocks + blk] : 0ULL;
    }
    __syncthreads();
    // Thread 0 resolves this tile's candidates in order; shared state it writes here is read by
    // the other threads only after the barrier below, and it cannot write again before the
    // second barrier, so every thread sees the same `done`.
    if (threadIdx.x == 0) {
      unsigned long long r = rem[blk];
      int count = 0;
      for (int t = 0; t < kTile; ++t) {
        const int i = blk * kTile + t;
        if (i >= valid || s_total >= max_output) break;
        if (!((r >> t) & 1ULL)) {
          s_keep[count++] = i;
          out[s_total++] = idx[i];
          r |= s_diag[t];
        }
      }
      rem[blk] = r;
      s_count = count;
      s_done = s_total >= max_output;
    }
    __syncthreads();
    const bool done = s_done;
    if (!done) {
      for (int w = blk + 1 + threadIdx.x; w < col_blocks; w += blockDim.x) {
        unsigned long long acc = 0;
        for (int q = 0; q < s_count; ++q) acc |= m[static_cast<int64_t>(s_keep[q]) * col_blocks + w];
        rem[w] |= acc;
      }
    }
    __syncthreads();
    if (done) break;
  }
  for (int k = s_total + threadIdx.x; k < max_output; k += blockDim.x) out[k] = -1;
  if (threadIdx.x == 0) out_num_valid[b] = s_total;
}

}  // namespace

const char* CudaErrorString(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

size_t NmsGpuWorkspaceBytes(int batch, int n) { return Layout(nullptr, batch, n).total; }

int ValidateNmsGpu(const float* boxes, const float* scores, int64_t n, int* scratch,
                   int64_t* bad_index, int* bad_code, float* row, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  *bad_index = -1;
  *bad_code = kNmsOk;
  if (n == 0) return 0;
  cudaError_t e = cudaMemsetAsync(scratch, 0x7f, sizeof(int), s);
  if (e != cudaSuccess) return e;
  const int blocks = static_cast<int>((n + kThreads - 1) / kThreads < 65535 * 64 ? (n + kThreads - 1) / kThreads : 65535 * 64);
  ValidateKernel<<<blocks, kThreads, 0, s>>>(boxes, scores, n, scratch);
  int first = 0x7f7f7f7f;
  e = cudaMemcpyAsync(&first, scratch, sizeof(int), cudaMemcpyDeviceToHost, s);
  if (e != cudaSuccess) return e;
  e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) return e;
  if (first != 0x7f7f7f7f) {
    // on the op's stream, not the legacy default stream
    e = cudaMemcpyAsync(row, boxes + 4 * static_cast<int64_t>(first), 4 * sizeof(float), cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaMemcpyAsync(row + 4, scores + first, sizeof(float), cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) return e;
    *bad_index = first;
    bool box_ok = true;
    for (int j = 0; j < 4; ++j) box_ok = box_ok && IsFinite(row[j]);
    *bad_code = box_ok ? kNmsScoreNotFinite : kNmsBoxNotFinite;
  }
  return cudaGetLastError();
}

int NmsGpu(const NmsParams& p, const float* boxes, const float* scores, const int32_t* class_ids,
           int batch, int n, int32_t* out_indices, int32_t* out_num_valid, void* workspace,
           size_t workspace_bytes, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (batch == 0) return 0;
  if (n == 0 || p.max_output == 0) {  // nothing to visit: all -1, counts 0
    if (p.max_output > 0) {
      cudaError_t e = cudaMemsetAsync(out_indices, 0xff, sizeof(int32_t) * batch * p.max_output, s);
      if (e != cudaSuccess) return e;
    }
    return cudaMemsetAsync(out_num_valid, 0, sizeof(int32_t) * batch, s);
  }
  Workspace w = Layout(static_cast<char*>(workspace), batch, n);
  if (workspace_bytes < w.total) return cudaErrorInvalidValue;
  const int64_t items = static_cast<int64_t>(batch) * n;
  const int blocks = static_cast<int>(items / kThreads + 1 < 4096 ? items / kThreads + 1 : 4096);
  cudaError_t e = cudaMemsetAsync(w.candidates, 0, sizeof(int32_t) * batch, s);
  if (e != cudaSuccess) return e;
  PrepareKeysKernel<<<blocks, kThreads, 0, s>>>(scores, batch, n, p.score_threshold, w.keys_in,
                                               w.vals_in, w.candidates);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  e = cub::DeviceRadixSort::SortPairs(w.cub_temp, w.cub_bytes, w.keys_in, w.keys_out, w.vals_in, w.vals_out,
                                      items, 0, 32 + ImageBits(batch), s);
  if (e != cudaSuccess) return e;
  const int col_blocks = (n + kTile - 1) / kTile;
  constexpr int kMaxGridZ = 65535;
  for (int first = 0; first < batch; first += kMaxGridZ) {
    dim3 grid(col_blocks, col_blocks, batch - first < kMaxGridZ ? batch - first : kMaxGridZ);
    MaskKernel<<<grid, kTile, 0, s>>>(boxes, class_ids, w.vals_out, n, col_blocks, p.iou_threshold,
                                      p.box_offset, first, w.mask);
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  GreedyKernel<<<batch, kThreads, 0, s>>>(w.candidates, w.vals_out, w.mask, w.removed, n, col_blocks,
                                          p.max_output, out_indices, out_num_valid);
  return cudaGetLastError();
}

}  // namespace lhrcnn
