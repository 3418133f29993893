// Device pieces that every architecture's kernels (cuda/sm90, cuda/sm100) share: the TMA loads
// of one token tile from the user's heads-last layout (the boxes of tile_loads.h over the
// tensor maps of fwd_host.h) and their L2 hints, token offsets inside a multi-dimensional
// tile, the global token of a Q tile row, exp2 and packing fp32 values into 16-bit elements.
#pragma once

#include <cuda.h>

#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>
#include <cute/arch/copy_sm90_tma.hpp>

#include "fwd_params.h"
#include "tensor_maps.h"
#include "tile_loads.h"

namespace gna::fwd_device {

// L2 hints of the TMA loads: a work item's stationary tile (Q in the forward, K and V in the
// backward) is read once; the tiles it visits are read again by the neighbouring items.
inline constexpr uint64_t kEvictNormal = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);
inline constexpr uint64_t kEvictLast = uint64_t(cute::TMA::CacheHintSm90::EVICT_LAST);

// Where one tensor's tile goes: its maps, the shared memory it lands in (chunk c lands
// `chunk_bytes` after chunk c - 1) and the transaction barrier it completes on (which expects
// the whole tile's bytes: out-of-range positions load zeros and count).
struct TileTarget {
  const TensorMapPair& maps;
  uint64_t* barrier;
  void* smem;
};

// The T0 x T1 x T2 tile of dilation group `group`, batch entry `batch` and head `head` at group
// positions `origin` of every target (tensors of one shape and plan, e.g. K and V): every box
// of `loads` (tile_loads.h), each as kChunks boxes of kChunk head-dim elements of
// `elem_bytes` bytes, the targets' boxes issued together from one coordinate computation.
template <int T0, int T1, int T2, int kHeadDim, int kChunks, int kChunk, int kElemBytes,
          class... Targets>
CUTLASS_DEVICE void load_tiles(const TileLoads& loads, const int dilation[3], const int group[3],
                               int batch, int head, const int origin[3], uint32_t chunk_bytes,
                               uint64_t hint, const Targets&... targets) {
  for_each_tile_box<T0, T1, T2>(
      loads, dilation, group, batch, origin,
      [&](int map, int token, int c1, int c2, int c3, int c4) {
        const int c0 = head * kHeadDim;
        auto issue = [&](const TileTarget& t) {
          char* dst = static_cast<char*>(t.smem) + token * kChunk * kElemBytes;
          CUTLASS_PRAGMA_UNROLL
          for (int ch = 0; ch < kChunks; ++ch) {
            cute::SM90_TMA_LOAD_5D::copy(&t.maps.map[map], t.barrier, hint, dst + ch * chunk_bytes,
                                         c0 + ch * kChunk, c1, c2, c3, c4);
          }
        };
        (issue(targets), ...);
      });
}

// One tensor's tile (load_tiles).
template <int T0, int T1, int T2, int kHeadDim, int kChunks, int kChunk, class Element>
CUTLASS_DEVICE void load_tile(const TensorMapPair& maps, const TileLoads& loads,
                              const int dilation[3], const int group[3], int batch, int head,
                              const int origin[3], uint64_t* barrier, Element* smem,
                              uint32_t chunk_bytes, uint64_t hint) {
  load_tiles<T0, T1, T2, kHeadDim, kChunks, kChunk, int(sizeof(Element))>(
      loads, dilation, group, batch, head, origin, chunk_bytes, hint,
      TileTarget{maps, barrier, smem});
}

// 8 fp32 values as 8 elements (16 bytes), for one vector store.
template <class Element>
CUTLASS_DEVICE uint4 pack8(const float* f) {
  cutlass::NumericArrayConverter<Element, float, 8> cvt;
  cutlass::Array<float, 8> a;
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < 8; ++i) a[i] = f[i];
  const cutlass::Array<Element, 8> h = cvt(a);
  return *reinterpret_cast<const uint4*>(&h);
}

// Token `r` of a T0 x T1 x T2 tile as per-axis offsets (gna::tile_offsets, fwd_params.h).
template <int T0, int T1, int T2>
CUTLASS_DEVICE void tile_offsets(int r, int o[3]) {
  constexpr int tile[3] = {T0, T1, T2};
  gna::tile_offsets(tile, r, o);
}

CUTLASS_DEVICE float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Token index of row `row` of the Q tile (T0 x T1 x T2) of `w` (gna::q_row_token, fwd_params.h).
template <int T0, int T1, int T2>
CUTLASS_DEVICE int64_t q_row_token(const FwdParams& p, const FwdWork& w, int row) {
  constexpr int q_tile[3] = {T0, T1, T2};
  return gna::q_row_token(p, w, q_tile, row);
}

}  // namespace gna::fwd_device
