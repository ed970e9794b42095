// CPU greedy NMS (see nms.h). Kept boxes are stored per class as structure-of-arrays so the
// overlap test of a candidate against all kept boxes is one vectorised loop (AVX2 when the
// CPU has it, chosen at load time by function multi-versioning).
#include <algorithm>
#include <numeric>
#include <unordered_map>
#include <vector>

#include "common.h"
#include "nms.h"

namespace lhrcnn {

int64_t FirstInvalidNmsInputCpu(const float* boxes, const float* scores, int64_t n, int* code) {
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < 4; ++j) {
      if (!IsFinite(boxes[4 * i + j])) {
        *code = kNmsBoxNotFinite;
        return i;
      }
    }
    if (!IsFinite(scores[i])) {
      *code = kNmsScoreNotFinite;
      return i;
    }
  }
  *code = kNmsOk;
  return -1;
}

namespace {

// Kept boxes of one class, only those with positive area (the others overlap nothing).
struct KeptBoxes {
  std::vector<float> x1, y1, x2, y2, area;
  void Add(const NmsBox& b) {
    x1.push_back(b.x1); y1.push_back(b.y1); x2.push_back(b.x2); y2.push_back(b.y2);
    area.push_back(b.area);
  }
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LHRCNN_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define LHRCNN_MULTIVERSION
#endif

// True when some kept box overlaps b with IoU > threshold. Same arithmetic as NmsIou
// (all kept areas are > 0 and so is b.area when this is called).
LHRCNN_MULTIVERSION
bool AnyOverlapAbove(const float* x1, const float* y1, const float* x2, const float* y2,
                     const float* area, int n, float bx1, float by1, float bx2, float by2,
                     float barea, float threshold) {
  constexpr int kChunk = 32;
  for (int start = 0; start < n; start += kChunk) {
    const int stop = std::min(n, start + kChunk);
    int hit = 0;
    for (int j = start; j < stop; ++j) {
      const float iy1 = y1[j] > by1 ? y1[j] : by1;
      const float ix1 = x1[j] > bx1 ? x1[j] : bx1;
      const float iy2 = y2[j] < by2 ? y2[j] : by2;
      const float ix2 = x2[j] < bx2 ? x2[j] : bx2;
      const float iw = ix2 - ix1 > 0.f ? ix2 - ix1 : 0.f;
      const float ih = iy2 - iy1 > 0.f ? iy2 - iy1 : 0.f;
      const float inter = iw * ih;
      hit |= (inter / (barea + area[j] - inter)) > threshold;
    }
    if (hit) return true;
  }
  return false;
}

}  // namespace

int NmsCpu(const NmsParams& p, const float* boxes, const float* scores, const int32_t* class_ids,
           int n, int32_t* out_indices) {
  std::fill(out_indices, out_indices + p.max_output, -1);
  if (p.max_output <= 0 || n <= 0) return 0;
  std::vector<int32_t> order;
  order.reserve(n);
  const float threshold = NmsScore(p.score_threshold);
  for (int i = 0; i < n; ++i)
    if (NmsScore(scores[i]) > threshold) order.push_back(i);
  if (order.empty()) return 0;
  // Kept boxes per class: a flat table over the classes' range when it is small, else a map.
  KeptBoxes all_classes;
  std::vector<KeptBoxes> table;
  std::unordered_map<int32_t, KeptBoxes> map;
  int32_t min_class = 0;
  if (class_ids) {
    int32_t max_class = class_ids[order[0]];
    min_class = max_class;
    for (const int32_t i : order) {
      min_class = std::min(min_class, class_ids[i]);
      max_class = std::max(max_class, class_ids[i]);
    }
    if (static_cast<int64_t>(max_class) - min_class < 4096) table.resize(max_class - min_class + 1);
  }
  auto kept_of = [&](int32_t i) -> KeptBoxes& {
    if (!class_ids) return all_classes;
    return table.empty() ? map[class_ids[i]] : table[class_ids[i] - min_class];
  };
  // Visit in (score desc, index asc) order, sorting only as far as needed: chunks of growing
  // size are partially sorted out of the remaining candidates until max_output boxes are kept.
  const auto before = [scores](int32_t a, int32_t b) {
    const float sa = NmsScore(scores[a]), sb = NmsScore(scores[b]);
    return sa > sb || (sa == sb && a < b);
  };
  int kept = 0;
  size_t done = 0, chunk = std::max<size_t>(256, 4 * static_cast<size_t>(p.max_output));
  while (done < order.size()) {
    const size_t stop = std::min(order.size(), done + chunk);
    std::partial_sort(order.begin() + done, order.begin() + stop, order.end(), before);
    for (size_t j = done; j < stop; ++j) {
      const int32_t i = order[j];
      const NmsBox b = MakeNmsBox(boxes + 4 * static_cast<int64_t>(i), p.box_offset);
      KeptBoxes& list = kept_of(i);
      if (b.area > 0.f) {
        if (AnyOverlapAbove(list.x1.data(), list.y1.data(), list.x2.data(), list.y2.data(),
                            list.area.data(), static_cast<int>(list.area.size()), b.x1, b.y1,
                            b.x2, b.y2, b.area, p.iou_threshold))
          continue;
        list.Add(b);
      }
      out_indices[kept++] = i;
      if (kept == p.max_output) return kept;
    }
    done = stop;
    chunk *= 2;
  }
  return kept;
}

}  // namespace lhrcnn
