// The output rows of an sm90 forward work item (16-bit and FP8 kernels): where a consumer
// thread's two rows go, what normalises them, and their store from the O fragment (the layout of
// nonfinite_rows.cuh: rows fragment_row0() and 8 on, the four threads of a quad each holding its
// column pairs 8 b + 2 (lane % 4) + {0, 1}).
#pragma once

#include <cmath>

#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>

#include "../../common/fwd_device.cuh"
#include "nonfinite_rows.cuh"

namespace gna::sm90 {

// Where the rows go: set at the item's end (its epilogue may run once the next item has
// begun); what normalises them: set by scale() before the store (the FP8 kernel, whose next
// item brings its own descales, at the item's end too).
struct OutRows {
  int64_t token[2] = {-1, -1};  // per row: its token (q_row_token), or -1: never stored
  int head = 0;
  float inv[2] = {0.f, 0.f};  // O's factor per row: the FP8 v descale (else 1) over the row sum
  float lse[2] = {-INFINITY, -INFINITY};
  float sum[2] = {0.f, 0.f};  // the row sums, for the non-finite check

  // The rows of item `w` (Q tile T0 x T1 x T2).
  template <int T0, int T1, int T2>
  CUTLASS_DEVICE void set(const FwdParams& p, const FwdWork& w) {
    const int row0 = fragment_row0();
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < 2; ++r) token[r] = fwd_device::q_row_token<T0, T1, T2>(p, w, row0 + 8 * r);
    head = w.head;
  }

  // From this thread's partial row sums and its rows' maxima: scores enter exp2 as S * mult
  // (log2 units), P offset by 2^p_offset_log2 (FP8), values times v_scale.
  CUTLASS_DEVICE void scale(const float (&row_sum)[2], const float (&row_max)[2], float mult,
                            float v_scale, int p_offset_log2) {
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < 2; ++r) {
      float s = row_sum[r];
      s += __shfl_xor_sync(0xffffffff, s, 1);
      s += __shfl_xor_sync(0xffffffff, s, 2);
      sum[r] = s;
      inv[r] = s > 0.f ? v_scale / s : 0.f;
      const float m_scaled = row_max[r] == -INFINITY ? 0.f : row_max[r] * mult;
      lse[r] = s > 0.f ? (m_scaled - float(p_offset_log2) + __log2f(s)) * 0.69314718055994531f
                       : -INFINITY;
    }
  }

  // The epilogue, once the item's last P V landed: O = o * inv (o normalised in place) as
  // OutElement and the LSE (by the first thread of each quad). kEmpty: an item without keys,
  // O = 0 and lse = -inf, `o` untouched (it must not be written outside the GEMMs' stages).
  // Returns whether a row came out non-finite (has_nonfinite_row).
  template <bool kEmpty, int kHeadDim, class OutElement, class TensorO>
  CUTLASS_DEVICE bool store(const FwdParams& p, TensorO& o) const {
    if constexpr (!kEmpty) {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < cute::size(o); ++i) o(i) *= inv[(i >> 1) & 1];
    }
    if ((threadIdx.x & 3) == 0) {
      CUTLASS_PRAGMA_UNROLL
      for (int r = 0; r < 2; ++r)
        if (token[r] >= 0) p.lse[token[r] * p.heads + head] = kEmpty ? -INFINITY : lse[r];
    }
    // Each thread stores its pairs of neighbouring columns (one 32-bit word each): the four
    // threads of a row write 16 contiguous bytes per 8-column block.
    const int col_base = 2 * (threadIdx.x & 3);
    cutlass::NumericArrayConverter<OutElement, float, 2> cvt;
    using Pair = cutlass::Array<OutElement, 2>;
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < 2; ++r) {
      if (token[r] < 0) continue;
      OutElement* row_out =
          static_cast<OutElement*>(p.out) + (token[r] * p.heads + head) * kHeadDim;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 2 * r; i < cute::size(o); i += 4) {  // element i: row 8 r, column 8 (i >> 2)
        *reinterpret_cast<Pair*>(row_out + 8 * (i >> 2) + col_base) =
            kEmpty ? Pair{} : cvt(cutlass::Array<float, 2>{o(i), o(i + 1)});
      }
    }
    if constexpr (kEmpty)
      return false;
    else
      return has_nonfinite_row(o, sum);
  }
};

}  // namespace gna::sm90
