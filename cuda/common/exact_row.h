// The attention of one query row computed key by key over its own window, in fp32, straight
// from the q/k/v arrays: what a forward kernel writes for a row whose tile products came out
// non-finite.
//
// The kernels multiply masked probabilities by whole K/V tiles, and 0 * nan is nan: a
// non-finite key or value in a tile would reach every row of the Q tiles that visit it, not
// only the rows whose window holds it. A kernel therefore checks each row's result in its
// epilogue; a row with a non-finite output element or row sum (which a non-finite query, key
// or value of its tiles caused) is recomputed here, over its window only. The recomputation
// gives every row what the CPU kernel and the reference give: a non-finite value in channel c
// reaches channel c of the rows that see it, a non-finite query or key the whole row and its
// LSE (docs/nonfinite.md). Rows of finite inputs never come here, so its speed does not matter.
//
// Plain C++ (host and device), so host tests (tests/test_exact_row.py) run it as the kernels
// do: a kernel's threads may share a row, each holding some of its columns (`RowColumns`) and
// summing partial dot products with a `Reduce` over the threads of the row.
#pragma once

#include <cmath>
#include <cstdint>

#include "fwd_params.h"

// Partly unrolled on the device (GNA_UNROLL: fwd_params.h).
#if defined(__CUDACC__)
#define GNA_UNROLL_8 _Pragma("unroll 8")
#else
#define GNA_UNROLL_8
#endif

namespace gna {

// The query row and its window's keys, in the kernel's arrays (heads-last, batch-major over
// the view's slices; kernel axes).
struct ExactRow {
  int64_t q;         // element offset of the query row's first channel
  int64_t batch;     // the row's batch entry
  int kv_extent[3];  // the k/v arrays' extents
  // Per axis, the window's keys (cut to the valid keys): array positions first, first + step,
  // ..., count of them.
  int first[3], step[3], count[3];
  int kv_heads, kv_head, head_dim;
  float scale_log2;  // a score: dot(q, k) * scale_log2, in log2 units
  float v_scale;     // values are multiplied by this (the FP8 value descale; else 1)
};

// Row `row` of the Q tile (shape `q_tile`) of work item `w`, stored at `token` (q_row_token),
// in the launch's units: its window (row_window), the scores' scale and the values' (FP8
// inputs: the descales of the item's query head, FwdParams::descale).
GNA_HOST_DEVICE ExactRow exact_row(const FwdParams& p, const FwdWork& w, const int q_tile[3],
                                   int row, int64_t token, int head_dim) {
  int o[3], lo[3], len[3];
  tile_offsets(q_tile, row, o);
  row_window(w, q_tile, o, lo, len);
  ExactRow r;
  r.q = (token * p.heads + w.head) * head_dim;
  r.batch = w.batch;
  GNA_UNROLL
  for (int a = 0; a < 3; ++a) {
    r.kv_extent[a] = p.kv_extent[a];
    r.first[a] = w.group[a] + p.dilation[a] * lo[a];
    r.step[a] = p.dilation[a];
    r.count[a] = len[a];
  }
  r.kv_heads = p.heads / p.kv_group;
  r.kv_head = w.head / p.kv_group;
  r.head_dim = head_dim;
  const HeadScales scales = head_scales(p, w.head);
  r.scale_log2 = scales.scale_log2;
  r.v_scale = scales.v_scale;
  return r;
}

// The columns of a row that one thread holds: kCount of them, column j at
// (j / kRun) * kStride + first + j % kRun (runs of kRun neighbours, kStride apart).
template <int kCount_, int kRun, int kStride>
struct RowColumns {
  static constexpr int kCount = kCount_;
  int first;
  GNA_HOST_DEVICE int operator()(int j) const { return (j / kRun) * kStride + first + j % kRun; }
};

// Calls f(offset) with the element offset of channel 0 of every key of the row's window, in
// row-major order.
template <class F>
GNA_HOST_DEVICE void for_each_window_key(const ExactRow& r, F&& f) {
  for (int i0 = 0; i0 < r.count[0]; ++i0) {
    const int64_t t0 = r.batch * r.kv_extent[0] + r.first[0] + i0 * r.step[0];
    for (int i1 = 0; i1 < r.count[1]; ++i1) {
      const int64_t t1 = t0 * r.kv_extent[1] + r.first[1] + i1 * r.step[1];
      for (int i2 = 0; i2 < r.count[2]; ++i2) {
        const int64_t token = t1 * r.kv_extent[2] + r.first[2] + i2 * r.step[2];
        f((token * r.kv_heads + r.kv_head) * r.head_dim);
      }
    }
  }
}

// The score of the key at `key` (element offset): this thread's partial dot product over its
// columns `dot`, summed by `reduce` over the threads of the row.
template <class Element, class DotColumns, class Reduce>
GNA_HOST_DEVICE float exact_score(const ExactRow& r, const Element* q, const Element* k,
                                  int64_t key, DotColumns dot, Reduce reduce) {
  float s = 0.f;
  // Eight at a time: unrolled whole, a row of up to 256 columns would hold its query in
  // registers through the key loop.
  GNA_UNROLL_8
  for (int j = 0; j < DotColumns::kCount; ++j) {
    const int c = dot(j);
    s += float(q[r.q + c]) * float(k[key + c]);
  }
  return reduce(s) * r.scale_log2;
}

struct ExactRowStats {
  float max;  // the largest score (log2 units; non-finite scores left out)
  float sum;  // sum of exp2(score - max)
};

// The row's max and sum. fmax leaves nan scores out of the max; exp2 of such a score is nan
// and so is the sum: a non-finite query or key makes the whole row nan, as in the CPU kernel.
template <class Element, class DotColumns, class Reduce>
GNA_HOST_DEVICE ExactRowStats exact_row_stats(const ExactRow& r, const Element* q, const Element* k,
                                              DotColumns dot, Reduce reduce) {
  ExactRowStats s{-INFINITY, 0.f};
  for_each_window_key(
      r, [&](int64_t key) { s.max = fmaxf(s.max, exact_score(r, q, k, key, dot, reduce)); });
  for_each_window_key(
      r, [&](int64_t key) { s.sum += exp2f(exact_score(r, q, k, key, dot, reduce) - s.max); });
  return s;
}

// The row's normalised output in the columns `cols`, times v_scale, into out(j) (a float&:
// column cols(j)); 0 for a row without keys.
template <class Element, class DotColumns, class Reduce, class OutColumns, class Out>
GNA_HOST_DEVICE void exact_row_values(const ExactRow& r, const ExactRowStats& s, const Element* q,
                                      const Element* k, const Element* v, DotColumns dot,
                                      Reduce reduce, OutColumns cols, Out&& out) {
  GNA_UNROLL
  for (int j = 0; j < OutColumns::kCount; ++j) out(j) = 0.f;
  for_each_window_key(r, [&](int64_t key) {
    const float weight = exp2f(exact_score(r, q, k, key, dot, reduce) - s.max);
    GNA_UNROLL
    for (int j = 0; j < OutColumns::kCount; ++j) out(j) += weight * float(v[key + cols(j)]);
  });
  // A nan sum (a non-finite score) makes every column nan; no keys: 0.
  const float inv = s.sum == 0.f ? 0.f : r.v_scale / s.sum;
  GNA_UNROLL
  for (int j = 0; j < OutColumns::kCount; ++j) out(j) *= inv;
}

// The row's LSE (natural log): -inf for a row without keys, nan where its sum is.
GNA_HOST_DEVICE float exact_row_lse(const ExactRowStats& s) {
  if (s.sum == 0.f) return -INFINITY;
  return (s.max + log2f(s.sum)) * 0.69314718055994531f;
}

}  // namespace gna
