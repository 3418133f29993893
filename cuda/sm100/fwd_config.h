// Tile shapes of the sm100 (Blackwell) forward kernels: kernel_table.h's constexpr table
// (generated from jax_gna/_kernel_table.py), read by the kernels (compile time) and by
// fwd_can_implement (host). Kernel axes and token order as in
// cuda/common/fwd_params.h.
#pragma once

#include "../common/fwd_params.h"
#include "kernel_table.h"

namespace gna::sm100 {

// Head dims (kFwdHeadDims): O lives in tensor memory next to two S buffers (2 x 128 + D <= 512
// columns), so D <= 128 here; d256 needs another split (one S buffer, or O in two halves) and
// is not built.

// Why these shapes:
// - The Q and KV tile shapes are the sm90 ones (cuda/sm90/fwd_config.h, Python's
//   jax_gna/_tiles.py SM90_FORWARD), so the simulator's choice of a tile configuration and a
//   user's tile request mean the same on both architectures. 128-token Q tiles are one
//   M = 128 tcgen05.mma (cta_group::1: one row per TMEM lane); 128-token KV tiles make
//   S = Q K^T one 128 x 128 UMMA and P V one 128 x D UMMA with K = 128.
// - Stages: shared memory holds Q (128 x D), P (128 x 128, 32 KB) and `stages` K and V tiles:
//   d128 192 KB at 2 stages, d64 144 KB at 3, d32 136 KB at 6 (of 227 KB). Every kernel keeps
//   above half the SM's shared memory, so one CTA runs per SM: each CTA allocates all 512 TMEM
//   columns, and a second CTA on the SM would only wait in tcgen05.alloc.
constexpr FwdTileConfigs fwd_tile_configs(int rank, int head_dim) {
  return fwd_tile_table(rank, head_dim);
}

// Configuration `index` (0: the default) of (rank, head dim).
constexpr FwdTileConfig fwd_tile_config(int rank, int head_dim, int index) {
  return fwd_tile_configs(rank, head_dim).config[index];
}

}  // namespace gna::sm100
