// Tile shapes of the sm100 (Blackwell) backward kernels, and where they leave dQ partials
// (host and device). Kernel axes and token order as in cuda/common/fwd_params.h; the launch
// parameters are the architectures' shared BwdParams (cuda/common/bwd_params.h).
#pragma once

#include "../common/bwd_params.h"
#include "fwd_config.h"

namespace gna::sm100 {

// Head dims (kBwdHeadDims, kernel_table.h): dK and dV accumulate in tensor memory next to S^T
// and dP^T (2 D + 2 x 128 <= 512 columns).

// Why these shapes: Q and KV tiles are the forward's default (fwd_config.h), 128 tokens each,
// so every GEMM is one M = 128 UMMA with a row per TMEM lane: S^T = K Q^T and dP^T = V dO^T
// (KV rows), dV += P^T dO and dK += dS^T Q (KV rows), dQ = dS K (Q rows). Stages of the Q / dO
// ring: shared memory holds K, V, P^T, dS^T (2 x 32 KB) and `stages` Q and dO tiles: d128
// 193 KB at 1 stage, d64 161 KB at 2, d32 129 KB at 3 (of 227 KB; above half the SM's, so one
// CTA per SM, which allocates all 512 TMEM columns).
// The table: kernel_table.h (tests/test_kernel_table.py checks the tiles are the forward's
// default).
// One configuration per (rank, head dim).
constexpr FwdTileConfigs bwd_tile_configs(int rank, int head_dim) {
  return bwd_tile_table(rank, head_dim);
}

constexpr FwdTileConfig bwd_tile_config(int rank, int head_dim, int index = 0) {
  return bwd_tile_configs(rank, head_dim).config[index];
}

// Offset (floats) of dQ element (row, col) of a Q tile inside its block of the workspace's
// accumulator: row-major (a compute thread owns one Q row, its TMEM lane, and adds it whole).
GNA_HOST_DEVICE int dq_offset(int row, int col, int head_dim) { return row * head_dim + col; }

}  // namespace gna::sm100
