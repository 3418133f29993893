// The sm90 forwards' check of each row's result, and the recomputation of the rows that came
// out non-finite (cuda/common/exact_row.h says why), for the accumulator layout both kernels
// share: a thread holds two rows (r = 0, 1: 8 rows apart), the four threads of a quad the same
// two, each the column pairs 8 b + 2 (lane % 4) + {0, 1} of every 8-column block b; element i
// of the O fragment is row (i >> 1) & 1, column 8 (i >> 2) + 2 (lane % 4) + (i & 1).
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>

#include "../../common/exact_row.h"
#include "../../common/fwd_device.cuh"

namespace gna::sm90 {

// The first of the two rows of the 128-row Q tile that a consumer thread (threads 128..383: two
// warpgroups of 64 rows) holds: 64 per warpgroup, 16 per warp, lane / 4.
CUTLASS_DEVICE int fragment_row0() {
  const int ctid = threadIdx.x - 128;
  return 64 * (ctid / 128) + 16 * ((ctid / 32) & 3) + (threadIdx.x & 31) / 4;
}

// The windows of this consumer thread's two rows (fragment_row0() and 8 on) of the T0 x T1 x T2
// Q tile of item `w`, per axis cut to the valid keys (row_window).
template <int T0, int T1, int T2>
CUTLASS_DEVICE void fragment_row_windows(const FwdWork& w, int (&lo)[2][3], int (&len)[2][3]) {
  constexpr int q_tile[3] = {T0, T1, T2};
  CUTLASS_PRAGMA_UNROLL
  for (int r = 0; r < 2; ++r) {
    int o[3];
    fwd_device::tile_offsets<T0, T1, T2>(fragment_row0() + 8 * r, o);
    row_window(w, q_tile, o, lo[r], len[r]);
  }
}

// Whether a row of this thread's came out non-finite: an element of `o` (the normalised O
// fragment) or a row sum `sum` is not finite. One FFMA per element: x * 0 is 0 for a finite x
// and nan otherwise (no fast-math flag lets the compiler fold it).
template <class TensorO>
CUTLASS_DEVICE bool has_nonfinite_row(const TensorO& o, const float (&sum)[2]) {
  float probe = fmaf(sum[0], 0.f, sum[1] * 0.f);
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < cute::size(o); ++i) probe = fmaf(o(i), 0.f, probe);
  return probe != 0.f;  // nan != 0
}

// Row `row` of the Q tile of work item `w` of a forward `Kernel` (FwdKernel, FwdFp8Kernel: the
// tile shapes, Element), stored at `slot` (token * heads + head), recomputed over its own
// window by the four threads of its quad, each its own columns `cols`, summing the partial dot
// products over the quad (its lanes alone: other quads may take other branches), and stored
// again (O as OutElement, and the LSE).
template <class Kernel, class OutElement, class Columns>
CUTLASS_DEVICE void rewrite_row(const FwdParams& p, const FwdWork& w, int row, int64_t token,
                                Columns cols) {
  using Element = typename Kernel::Element;
  constexpr int kHeadDim = Kernel::kHeadDim;
  constexpr int q_tile[3] = {Kernel::kQ0, Kernel::kQ1, Kernel::kQ2};
  const ExactRow r = exact_row(p, w, q_tile, row, token, kHeadDim);
  const unsigned quad = 0xfu << ((threadIdx.x & 31) & ~3);
  auto reduce = [quad](float x) {
    x += __shfl_xor_sync(quad, x, 1);
    x += __shfl_xor_sync(quad, x, 2);
    return x;
  };
  const Element* q = static_cast<const Element*>(p.q);
  const Element* k = static_cast<const Element*>(p.k);
  const Element* v = static_cast<const Element*>(p.v);
  const ExactRowStats stats = exact_row_stats(r, q, k, cols, reduce);
  float out_cols[Columns::kCount];
  exact_row_values(r, stats, q, k, v, cols, reduce, cols,
                   [&](int j) -> float& { return out_cols[j]; });
  const int64_t slot = token * p.heads + w.head;
  if ((threadIdx.x & 3) == 0) p.lse[slot] = exact_row_lse(stats);
  OutElement* out = static_cast<OutElement*>(p.out) + slot * kHeadDim;
  cutlass::NumericArrayConverter<OutElement, float, 2> cvt;
  CUTLASS_PRAGMA_UNROLL
  for (int j = 0; j < Columns::kCount; j += 2)
    *reinterpret_cast<cutlass::Array<OutElement, 2>*>(out + cols(j)) =
        cvt(cutlass::Array<float, 2>{out_cols[j], out_cols[j + 1]});
}

// After a consumer thread's last item, where `seen` (has_nonfinite_row of every item it ran)
// says one of its warp's rows came out non-finite: each of its rows (fragment_row0() and 8 rows
// on, of every item's Q tile) whose stored output is not finite is recomputed over its own window
// and stored again, over what the tiles gave. Each thread reads back and rewrites the columns it
// stored (its own program order puts the new values last). Here, after the item loop, the rare
// path keeps nothing alive through the tile loop (in the epilogue, ptxas spilled in the FP8 and
// head dim 256 tile loops to make room for it).
template <class Kernel, class OutElement>
CUTLASS_DEVICE void rewrite_nonfinite_rows(const FwdParams& p, bool seen) {
  if (!__any_sync(0xffffffffu, seen)) return;
  const int row0 = fragment_row0();
  constexpr int kHeadDim = Kernel::kHeadDim;
  const RowColumns<kHeadDim / 4, 2, 8> cols{2 * int(threadIdx.x & 3)};
  for (int item = blockIdx.x; item < p.num_items; item += gridDim.x) {
    const FwdWork w = Kernel::decode_work(p, item);
    if (!w.valid) continue;  // every thread alike
    CUTLASS_PRAGMA_NO_UNROLL
    for (int row = row0; row < row0 + 16; row += 8) {
      const int64_t token =
          fwd_device::q_row_token<Kernel::kQ0, Kernel::kQ1, Kernel::kQ2>(p, w, row);
      float probe = 0.f;
      if (token >= 0) {
        const OutElement* out =
            static_cast<const OutElement*>(p.out) + (token * p.heads + w.head) * kHeadDim;
        CUTLASS_PRAGMA_UNROLL
        for (int j = 0; j < cols.kCount; ++j) probe = fmaf(float(out[cols(j)]), 0.f, probe);
      }
      probe += __shfl_xor_sync(0xffffffffu, probe, 1);
      probe += __shfl_xor_sync(0xffffffffu, probe, 2);
      if (token >= 0 && probe != 0.f) rewrite_row<Kernel, OutElement>(p, w, row, token, cols);
    }
  }
}

}  // namespace gna::sm90
