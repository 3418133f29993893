// Device pieces of the fused forward that every architecture's kernel (cuda/sm90,
// cuda/sm100) shares: TMA loads of one token tile from the user's heads-last layout (the tensor
// maps of fwd_host.h), token offsets inside a multi-dimensional tile, and exp2.
#pragma once

#include <cuda.h>

#include <cutlass/cutlass.h>
#include <cute/arch/copy_sm90_tma.hpp>

#include "fwd_params.h"

namespace gna::fwd_device {

// TMA coordinate of group position `x` along kernel axis `a`.
CUTLASS_DEVICE int tma_coord(const FwdParams& p, const FwdWork& w, int a, int x) {
  return w.group[a] + p.dilation[a] * x;
}

// One token tile of `head` at TMA coordinates (c2, c1, c0) into `smem`, as kChunks boxes of
// kChunk head-dim elements each (chunk c lands `chunk_bytes` after chunk c - 1), completing
// on the transaction barrier `barrier`.
template <int kChunks, int kChunk, class Element>
CUTLASS_DEVICE void tma_load_tile(const CUtensorMap* map, uint64_t* barrier, Element* smem,
                                  uint32_t chunk_bytes, int head, int c2, int c1, int c0,
                                  uint64_t hint) {
  CUTLASS_PRAGMA_UNROLL
  for (int c = 0; c < kChunks; ++c) {
    cute::SM90_TMA_LOAD_5D::copy(map, barrier, hint,
                                 reinterpret_cast<char*>(smem) + c * chunk_bytes, c * kChunk, head,
                                 c2, c1, c0);
  }
}

// The tile of work item `w` at tile indices `t` (tiles of `tile` positions) as TMA
// coordinates: c0 includes the batch entry (folded into the first kernel axis).
CUTLASS_DEVICE void tile_coords(const FwdParams& p, const FwdWork& w, const int t[3],
                                const int tile[3], int* c2, int* c1, int* c0) {
  *c2 = tma_coord(p, w, 2, t[2] * tile[2]);
  *c1 = tma_coord(p, w, 1, t[1] * tile[1]);
  *c0 = w.batch * p.extent[0] + tma_coord(p, w, 0, t[0] * tile[0]);
}

// Token `r` of a T0 x T1 x T2 tile (row-major, last axis fastest) as per-axis offsets.
template <int T0, int T1, int T2>
CUTLASS_DEVICE void tile_offsets(int r, int o[3]) {
  o[0] = r / (T1 * T2);
  o[1] = (r / T2) % T1;
  o[2] = r % T2;
}

CUTLASS_DEVICE float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Global token index of row `row` of the Q tile of `w` (T0 x T1 x T2 tokens), or -1 when the
// row lies outside the token grid of its dilation group.
template <int T0, int T1, int T2>
CUTLASS_DEVICE int64_t q_row_token(const FwdParams& p, const FwdWork& w, int row) {
  constexpr int q_tile[3] = {T0, T1, T2};
  int o[3];
  tile_offsets<T0, T1, T2>(row, o);
  int64_t token = w.batch;
  CUTLASS_PRAGMA_UNROLL
  for (int a = 0; a < 3; ++a) {
    const int q = w.q_tile[a] * q_tile[a] + o[a];
    if (q >= w.axes[a].length) return -1;
    token = token * p.extent[a] + (w.group[a] + p.dilation[a] * q);
  }
  return token;
}

}  // namespace gna::fwd_device
