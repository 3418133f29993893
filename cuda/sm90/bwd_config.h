// Tile shapes of the sm90 backward kernels (host and device). The tile shapes use the
// forward's struct (cuda/common/fwd_params.h), with `stages` for the Q / dO ring; the launch
// parameters (BwdParams) are shared by the architectures (cuda/common/bwd_params.h).
//
// Kernel axes as in the forward (fwd_config.h): a rank-r problem is left-padded with trivial
// axes, tokens of a tile are row-major over the kernel axes (last axis fastest).
#pragma once

#include <cstdint>

#include "../common/bwd_params.h"
#include "kernel_table.h"

namespace gna::sm90 {

using ::gna::BwdParams;  // its launch parameters, shared with sm100

// Head dims (kBwdHeadDims) and tiles (bwd_tile_table) come from the kernel table,
// jax_gna/_kernel_table.py.

// Why these shapes (docs/design.md, "Tile shapes and why"): each KV tile is a forward
// configuration's, so stride-aligned windows cover whole tiles; the Q tile is half of that
// configuration's Q tile along the first axis with more than one position. The last Q axis stays a
// multiple of 8 (the n8 column blocks of S^T must not straddle a Q tile row). Q tile: 64 tokens
// (the N of the S^T = K Q^T GEMM); KV tile: 128 tokens (two consumer warpgroups x 64 rows); stages:
// of the Q / dO ring. The tiles are the same at every head dim up to 128
// (tests/test_kernel_table.py checks the table).
//
// d256: dK and dV of 64 KV rows would take 2 x 128 accumulator registers per thread, so the two
// consumer warpgroups split the head dim (64 + 64 each) over a 64-token KV tile, the forward's
// d256 KV tile (64, (8, 8), (1, 8, 8)): the Q tile stays 64 tokens and its last axis 8. Shared
// memory (bytes): K and V 2 x 32 K, one Q / dO stage 2 x 32 K, P^T and dS^T (two buffers each)
// 2 x 16 K, the dQ staging 2 x 16 K (a part of 64 columns per warpgroup at a time, so dQ takes
// two parts), the KV rows' windows 12 K: about 205 K of 227 K. A second Q / dO stage (64 K more)
// does not fit.
//
// Ranks 2 and 3 have two configurations each, as the forward: KV (16, 8) and (8, 16), KV
// (2, 8, 8) and (4, 4, 8). Where an axis' extent or its windows' starts are multiples of the
// smaller tile side but not of the larger one (Cosmos: 44 rows, the last windows starting at row
// 20; 2-D windows stepping by 8 rows and 16 columns), one shape visits partial tiles that the
// other covers whole. A call runs the one with the better simulated bound, as the forward does
// (jax_gna.sim.tile_candidates).
constexpr FwdTileConfigs bwd_tile_configs(int rank, int head_dim) {
  return bwd_tile_table(rank, head_dim);
}

// Configuration `index` (0: the default) of (rank, head dim).
constexpr FwdTileConfig bwd_tile_config(int rank, int head_dim, int index) {
  return bwd_tile_configs(rank, head_dim).config[index];
}

}  // namespace gna::sm90
