// Tile shapes and launch parameters of the sm90 backward kernels (host and device).
//
// Kernel axes as in the forward (fwd_config.h): a rank-r problem is left-padded with trivial
// axes, tokens of a tile are row-major over the kernel axes (last axis fastest).
#pragma once

#include <cstdint>

namespace gna::sm90 {

// Head dims the sm90 backward kernels take (a build holds those of fwd_kernel_set.h that are
// also listed here). d256 would need 2 x 128 accumulator registers per thread for dK and dV.
inline constexpr int kBwdHeadDims[] = {32, 64, 128};

struct BwdTileConfig {
  int q[3];   // Q tile per kernel axis: 64 tokens (the N of the S^T = K Q^T GEMM)
  int kv[3];  // KV tile per kernel axis: 128 tokens (two consumer warpgroups x 64 rows)

  constexpr int q_size() const { return q[0] * q[1] * q[2]; }
  constexpr int kv_size() const { return kv[0] * kv[1] * kv[2]; }
};

// Why these shapes: the KV tile is the forward's default (cuda/sm90/NOTES.md, "Backward kernel
// plan"), so stride-aligned windows cover whole tiles; the Q tile is half of the forward's
// along the first axis with more than one position. The last Q axis stays a multiple of 8
// (the n8 column blocks of S^T must not straddle a Q tile row).
constexpr BwdTileConfig bwd_tile_config(int rank) {
  if (rank == 1) return {{1, 1, 64}, {1, 1, 128}};
  if (rank == 2) return {{1, 8, 8}, {1, 16, 8}};
  return {{1, 8, 8}, {2, 8, 8}};
}

// Runtime parameters of one launch, in kernel axes (trivial axes: extent 1, window 1, stride
// 1, dilation 1, not causal).
//
// Row statistics (`row_lse2`, `row_delta`) are laid out per Q tile so that the main kernel
// reads a tile's 64 values as one contiguous block: slot
//   (((batch * heads + head) * num_groups + group) * num_q_tiles + q_tile) * q_tile_size + row,
// with Q tiles counted row-major on group 0 (the longest); slots of rows outside their group
// hold lse2 = +inf (P = 0) and delta = 0.
struct BwdParams {
  int extent[3];
  int kernel_size[3];
  int stride[3];
  int dilation[3];
  int causal[3];
  int q_tile[3];   // Q tile shape (bwd_tile_config), for the pre-pass
  int q_tiles[3];  // Q tiles per axis, group 0
  int num_q_tiles;
  int kv_tiles[3];  // KV tiles per axis, group 0
  int num_kv_tiles;
  int num_groups;  // product of dilations
  int heads;
  int kv_heads;
  int kv_group;  // heads / kv_heads
  int batch;
  int head_dim;
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e)
  int deterministic;
  // Inputs of the pre-pass.
  const void* out;
  const void* dout;
  const float* lse;
  const float* dlse;
  // Workspace.
  float* row_lse2;    // lse * log2(e) per row-statistics slot
  float* row_delta;   // rowsum(dO * O) - dlse per slot
  float* dq_accum;    // fp32 [num_slots, D] in blocks per Q tile (dq_order.h), zeroed first
  int* dq_semaphore;  // per (batch, head, group, Q tile): deterministic mode's turn counter
  int64_t num_slots;
  // Results.
  void* dq;
  void* dk;
  void* dv;
};

}  // namespace gna::sm90
