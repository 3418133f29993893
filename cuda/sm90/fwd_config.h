// Tile shapes of the sm90 forward kernels: one constexpr table, read by the
// kernels (compile time) and by fwd_can_implement (host).
//
// The kernels work on three "kernel axes": a rank-r problem is left-padded with
// trivial axes (extent 1), so problem axis i is kernel axis 3 - r + i. Tokens of
// a tile are row-major over the kernel axes (last axis fastest), which is the
// order a TMA box over the user's [.., X1, X2, X3, heads, D] layout delivers.
#pragma once

namespace gna::sm90 {

struct FwdTileConfig {
  int q[3];    // Q tile per kernel axis; product 128 (two consumer warpgroups x 64 rows)
  int kv[3];   // KV tile per kernel axis
  int stages;  // K and V pipeline stages

  constexpr int q_size() const { return q[0] * q[1] * q[2]; }
  constexpr int kv_size() const { return kv[0] * kv[1] * kv[2]; }
};

// Why these shapes:
// - 128-token Q tiles feed two 64-row wgmma warpgroups; 128-token KV tiles give
//   a 64x128 S tile per warpgroup, the shape FA3 and CUTLASS 88 run fastest.
// - d256: KV tiles of 64 tokens, or Q 32K + O/S registers and two K/V stages
//   (Q 64 KB + 2 x (32 + 32) KB = 192 KB) would not fit in 227 KB of smem.
// - 2-D 16x8 and 3-D 2x8x8 keep the tile inside one stride group for the
//   standard problems (FLUX stride 16x16, HunyuanVideo 16x8x8), so their
//   stride-aligned windows cover whole KV tiles (no masks, no wasted tiles).
constexpr FwdTileConfig fwd_tile_config(int rank, int head_dim) {
  const bool d256 = head_dim > 128;
#if defined(GNA_SM90_STAGES_EXPERIMENT)  // development only: K/V stages for d <= 128
  if (!d256) {
    const int s = GNA_SM90_STAGES_EXPERIMENT;
    if (rank == 1) return FwdTileConfig{{1, 1, 128}, {1, 1, 128}, s};
    if (rank == 2) return FwdTileConfig{{1, 16, 8}, {1, 16, 8}, s};
    return FwdTileConfig{{2, 8, 8}, {2, 8, 8}, s};
  }
#endif
  if (rank == 1)
    return d256 ? FwdTileConfig{{1, 1, 128}, {1, 1, 64}, 2}
                : FwdTileConfig{{1, 1, 128}, {1, 1, 128}, 2};
  if (rank == 2)
    return d256 ? FwdTileConfig{{1, 16, 8}, {1, 8, 8}, 2}
                : FwdTileConfig{{1, 16, 8}, {1, 16, 8}, 2};
  return d256 ? FwdTileConfig{{2, 8, 8}, {1, 8, 8}, 2} : FwdTileConfig{{2, 8, 8}, {2, 8, 8}, 2};
}

// Runtime parameters of one launch, in kernel axes (trivial axes: extent 1,
// window 1, stride 1, dilation 1, not causal).
struct FwdParams {
  int extent[3];
  int kernel_size[3];
  int stride[3];
  int dilation[3];
  int causal[3];
  int q_tiles[3];     // Q tiles per axis, for dilation group 0 (the longest)
  int num_q_tiles;    // product of q_tiles
  int tile_order[3];  // axes from fastest to slowest in the CTA order (L2 reuse)
  int num_groups;     // product of dilations
  int heads;
  int kv_group;  // heads / kv_heads
  int batch;
  float scale_log2;  // softmax scale * log2(e)
  int prescale;      // 1: multiply S by scale_log2 before the max (scale <= 0)
  void* out;
  float* lse;
};

}  // namespace gna::sm90
