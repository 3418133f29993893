// Tile shapes of the sm90 forward kernels: kernel_table.h's constexpr table (generated from
// jax_gna/_kernel_table.py), read by the kernels (compile time) and by fwd_can_implement (host).
//
// The kernels work on three "kernel axes": a rank-r problem is left-padded with
// trivial axes (extent 1), so problem axis i is kernel axis 3 - r + i. Tokens of
// a tile are row-major over the kernel axes (last axis fastest), which is the
// order a TMA box over the user's [.., X1, X2, X3, heads, D] layout delivers.
#pragma once

#include "../common/fwd_params.h"
#include "kernel_table.h"

namespace gna::sm90 {

// The shared structs (cuda/common/fwd_params.h), under this family's names too.
using gna::FwdParams;
using gna::FwdTileConfig;
using gna::FwdTileConfigs;
using gna::kMaxFwdTileConfigs;

// The head dims (kFwdHeadDims) and the compiled configurations of one (rank, head dim)
// (fwd_tile_table: at most kMaxFwdTileConfigs, the default, what an unset tile request runs,
// first) come from the kernel table, jax_gna/_kernel_table.py, like every list of kernels
// (the CMake and Bazel builds, the harness script, jax_gna._tiles).
// Why these shapes:
// - 128-token Q tiles feed two 64-row wgmma warpgroups; 128-token KV tiles give
//   a 64x128 S tile per warpgroup, the shape FA3 and CUTLASS 88 run fastest.
// - d <= 128: three K/V stages (Q 32 KB + 3 x (32 + 32) KB = 224 KB; O then goes out through
//   the Q tile). Two stages left the consumers waiting for K/V at the top of ~4% of visits; the
//   third gained 1-2% on HunyuanVideo GNA on an H100 and changed nothing measurable elsewhere
//   (docs/history.md, "sm90 forward on the H100").
// - d256: KV tiles of 64 tokens, or Q 32K + O/S registers and two K/V stages
//   (Q 64 KB + 2 x (32 + 32) KB = 192 KB) would not fit in 227 KB of smem.
//   One configuration each (their compile time buys little).
// - 2-D 16x8 and 3-D 2x8x8 (the defaults) keep the tile inside one stride group
//   for the standard problems (FLUX stride 16x16, HunyuanVideo 16x8x8), so their
//   stride-aligned windows cover whole KV tiles (no masks, no wasted tiles).
// - 2-D 8x16 and 3-D 4x4x8 are the alternatives: their KV boxes waste less for
//   windows not aligned to the defaults' stride groups. The simulator (Python's
//   jax_gna.sim, which picks the configuration per call) ranks 4x4x8 first for
//   Cosmos 16x24x16 (stride 1 and 1x8x16) and HunyuanVideo at stride 1, 8x16 for
//   windows or strides longer along the last axis. The last KV axis stays a
//   multiple of 8 (S column blocks, see the kernel).
constexpr FwdTileConfigs fwd_tile_configs(int rank, int head_dim) {
  FwdTileConfigs t = fwd_tile_table(rank, head_dim);
#if defined(GNA_SM90_STAGES_EXPERIMENT)  // a development knob (common/dev_knobs.h)
  static_assert(GNA_SM90_STAGES_EXPERIMENT >= 2, "a K/V pipeline needs at least two stages");
  if (head_dim <= 128)
    for (int i = 0; i < t.count; ++i) t.config[i].stages = GNA_SM90_STAGES_EXPERIMENT;
#endif
  return t;
}

// Configuration `index` (0: the default) of (rank, head dim).
constexpr FwdTileConfig fwd_tile_config(int rank, int head_dim, int index) {
  return fwd_tile_configs(rank, head_dim).config[index];
}

// Whether a forward CTA (16-bit and FP8 kernels) issues an item's last P V in the same GEMM turn
// as the next item's first S GEMM and runs the item's epilogue after that turn (their
// consumer()), or ends each item with a turn and an epilogue of its own: the development knob
// GNA_SM90_FWD_OVERLAP_ITEMS (common/dev_knobs.h), off unless set. Never at head dim 256: O's
// 128 registers a thread leave no room for the next item's S beside the epilogue (ptxas
// spills in the tile loop).
constexpr bool fwd_overlap_items(int head_dim) {
#if defined(GNA_SM90_FWD_OVERLAP_ITEMS)
  static_assert(GNA_SM90_FWD_OVERLAP_ITEMS == 0 || GNA_SM90_FWD_OVERLAP_ITEMS == 1,
                "GNA_SM90_FWD_OVERLAP_ITEMS: 0 or 1");
  return GNA_SM90_FWD_OVERLAP_ITEMS == 1 && head_dim <= 128;
#else
  (void)head_dim;
  return false;
#endif
}

}  // namespace gna::sm90
