// Tile shapes and launch parameters of the sm90 backward kernels (host and device). The tile
// shapes use the forward's struct (cuda/common/fwd_params.h), with `stages` for the Q / dO ring.
//
// Kernel axes as in the forward (fwd_config.h): a rank-r problem is left-padded with trivial
// axes, tokens of a tile are row-major over the kernel axes (last axis fastest).
#pragma once

#include <cstdint>

#include "../common/fwd_params.h"

namespace gna::sm90 {

// Head dims the sm90 backward kernels take (a build holds those of fwd_kernel_set.h that are
// also listed here). d256 would need 2 x 128 accumulator registers per thread for dK and dV.
inline constexpr int kBwdHeadDims[] = {32, 64, 128};

// Why these shapes: the KV tile is the forward's default (cuda/sm90/NOTES.md, "Backward kernel
// plan"), so stride-aligned windows cover whole tiles; the Q tile is half of the forward's
// along the first axis with more than one position. The last Q axis stays a multiple of 8
// (the n8 column blocks of S^T must not straddle a Q tile row). Q tile: 64 tokens (the N of
// the S^T = K Q^T GEMM); KV tile: 128 tokens (two consumer warpgroups x 64 rows); stages: of
// the Q / dO ring.
constexpr FwdTileConfig bwd_tile_config(int rank) {
  if (rank == 1) return {{1, 1, 64}, {1, 1, 128}, 2};
  if (rank == 2) return {{1, 8, 8}, {1, 16, 8}, 2};
  return {{1, 8, 8}, {2, 8, 8}, 2};
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
  int extent[3];  // the whole axes (windows); the arrays hold the view's slices below
  // The view (gna/problem.h): q/dout/out/lse/dq hold q_extent positions from q_offset on,
  // k/v/dk/dv hold kv_extent from kv_offset on. Whole axes: offsets 0, extents = extent.
  int q_offset[3];
  int q_extent[3];
  int kv_offset[3];
  int kv_extent[3];
  int kernel_size[3];
  int stride[3];
  int dilation[3];
  int causal[3];
  int q_tile[3];   // Q tile shape (bwd_tile_config), for the pre-pass
  int q_tiles[3];  // Q tiles per axis, local group 0
  int num_q_tiles;
  int kv_tiles[3];  // KV tiles per axis, local group 0
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

// Axis `a` of local dilation group `group` of the launch's view, in group coordinates
// (tile_box.h); for whole axes the same numbers as group_axis(Axis, group).
GNA_HOST_DEVICE GroupAxis bwd_group_axis(const BwdParams& p, int a, int group) {
  return group_axis(
      Axis{p.extent[a], p.kernel_size[a], p.stride[a], p.dilation[a], p.causal[a] != 0},
      AxisView{p.q_offset[a], p.q_extent[a], p.kv_offset[a], p.kv_extent[a]}, group);
}

}  // namespace gna::sm90
