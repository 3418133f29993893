// sm90 backward: validation, workspace layout, TMA tensor maps and the launch sequence
// (pre-pass, dQ accumulator memset, main kernel, dQ conversion). Host code only (no CUTLASS).
#include <algorithm>
#include <cstdint>
#include <iterator>

#include "../common/fwd_host.h"
#include "bwd_config.h"
#include "bwd_launch.h"
#include "device/bwd_kernel_launch.h"
#include "fwd_kernel_set.h"

namespace gna::sm90 {
namespace {

// Byte offsets of the workspace's parts, each 256-byte aligned.
struct BwdWorkspace {
  size_t lse2, delta, dq_accum, semaphore, total;
};

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

// Launch geometry shared by bwd_workspace_bytes and bwd_launch.
BwdParams geometry(const Problem& p) {
  const FwdTileConfig tiles = bwd_tile_config(p.rank);
  const KernelAxes ax = kernel_axes(p);
  BwdParams bp = {};
  bp.num_q_tiles = 1;
  bp.num_kv_tiles = 1;
  bp.num_groups = 1;
  for (int a = 0; a < 3; ++a) {
    bp.extent[a] = ax.extent[a];
    bp.kernel_size[a] = ax.kernel_size[a];
    bp.stride[a] = ax.stride[a];
    bp.dilation[a] = ax.dilation[a];
    bp.causal[a] = ax.causal[a];
    bp.q_offset[a] = ax.q_offset[a];
    bp.q_extent[a] = ax.q_extent[a];
    bp.kv_offset[a] = ax.kv_offset[a];
    bp.kv_extent[a] = ax.kv_extent[a];
    bp.q_tile[a] = tiles.q[a];
    // Tiles cover the local slices; local group 0 is the longest.
    const int q_lg0 = (ax.q_extent[a] + ax.dilation[a] - 1) / ax.dilation[a];
    const int kv_lg0 = (ax.kv_extent[a] + ax.dilation[a] - 1) / ax.dilation[a];
    bp.q_tiles[a] = (q_lg0 + tiles.q[a] - 1) / tiles.q[a];
    bp.kv_tiles[a] = (kv_lg0 + tiles.kv[a] - 1) / tiles.kv[a];
    bp.num_q_tiles *= bp.q_tiles[a];
    bp.num_kv_tiles *= bp.kv_tiles[a];
    bp.num_groups *= ax.dilation[a];
  }
  bp.heads = p.heads;
  bp.kv_heads = p.kv_heads;
  bp.kv_group = p.heads / p.kv_heads;
  bp.batch = int(p.batch);
  bp.head_dim = p.head_dim;
  bp.scale = p.scale;
  bp.scale_log2 = p.scale * 1.4426950408889634f;
  bp.num_slots = int64_t(p.batch) * p.heads * bp.num_groups * bp.num_q_tiles * tiles.q_size();
  return bp;
}

BwdWorkspace workspace_layout(const Problem& p, const BwdParams& bp) {
  BwdWorkspace w;
  const size_t slots = size_t(bp.num_slots);
  w.lse2 = 0;
  w.delta = align256(slots * sizeof(float));
  w.dq_accum = w.delta + align256(slots * sizeof(float));
  w.semaphore = w.dq_accum + align256(slots * p.head_dim * sizeof(float));
  w.total = w.semaphore + align256(slots / bwd_tile_config(p.rank).q_size() * sizeof(int));
  return w;
}

constexpr bool bwd_kernel_built(DType dtype, int head_dim) {
  return head_dim <= 128 && fwd_kernel_built(dtype, head_dim);
}

template <int kHeadDim, int kRank>
cudaError_t launch_typed(DType dtype, const CUtensorMap& mq, const CUtensorMap& mdo,
                         const CUtensorMap& mk, const CUtensorMap& mv, const BwdParams& bp,
                         unsigned grid, cudaStream_t stream) {
  if constexpr (bwd_kernel_built(DType::kBF16, kHeadDim)) {
    if (dtype == DType::kBF16)
      return launch_bwd_kernel<DType::kBF16, kHeadDim, kRank>(mq, mdo, mk, mv, bp, grid, stream);
  }
  if constexpr (bwd_kernel_built(DType::kF16, kHeadDim)) {
    if (dtype == DType::kF16)
      return launch_bwd_kernel<DType::kF16, kHeadDim, kRank>(mq, mdo, mk, mv, bp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

template <int kHeadDim>
cudaError_t launch_rank(int rank, DType dtype, const CUtensorMap& mq, const CUtensorMap& mdo,
                        const CUtensorMap& mk, const CUtensorMap& mv, const BwdParams& bp,
                        unsigned grid, cudaStream_t stream) {
  switch (rank) {
    case 1:
      return launch_typed<kHeadDim, 1>(dtype, mq, mdo, mk, mv, bp, grid, stream);
    case 2:
      return launch_typed<kHeadDim, 2>(dtype, mq, mdo, mk, mv, bp, grid, stream);
    case 3:
      return launch_typed<kHeadDim, 3>(dtype, mq, mdo, mk, mv, bp, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

const char* bwd_can_implement(const Problem& p) {
  if (p.dtype != DType::kF16 && p.dtype != DType::kBF16)
    return "the sm90 backward kernels take float16 or bfloat16 only";
  if (std::find(std::begin(kBwdHeadDims), std::end(kBwdHeadDims), p.head_dim) ==
      std::end(kBwdHeadDims))
    return "the sm90 backward kernels take head_dim 32, 64 or 128 only";
  if (p.head_dim_v != p.head_dim) return "the sm90 backward kernels need head_dim_v == head_dim";
  if (!bwd_kernel_built(p.dtype, p.head_dim))
    return "this build's sm90 kernel set (JAX_GNA_KERNEL_SET=smoke) lacks this dtype/head_dim";
  const KernelAxes ax = kernel_axes(p);
  if (const char* reason = fwd_host::check_common(p, ax)) return reason;
  if (const char* reason = fwd_host::check_view(p)) return reason;
  const FwdTileConfig tiles = bwd_tile_config(p.rank);
  if (!fwd_host::boxes_fit(tiles, ax))
    return "the sm90 backward kernels need tile * dilation <= 256 along every axis (a TMA box "
           "limit; KV tiles span 128 tokens in 1-D, 16 in 2-D and 8 in 3-D, so 1-D allows "
           "dilation <= 2)";
  const BwdParams bp = geometry(p);
  if (int64_t(bp.num_kv_tiles) * bp.num_groups * p.kv_heads * p.batch >= (int64_t(1) << 31))
    return "the sm90 backward kernels need fewer than 2^31 work items";
  return nullptr;
}

size_t bwd_workspace_bytes(const Problem& p) {
  if (bwd_can_implement(p) != nullptr) return 0;
  return workspace_layout(p, geometry(p)).total;
}

cudaError_t bwd_launch(const Problem& p, const void* dout, const void* q, const void* k,
                       const void* v, const void* out, const float* lse, const float* dlse,
                       void* dq, void* dk, void* dv, void* workspace, bool deterministic,
                       cudaStream_t stream) {
  if (bwd_can_implement(p) != nullptr) return cudaErrorInvalidValue;
  const FwdTileConfig tiles = bwd_tile_config(p.rank);
  const KernelAxes ax = kernel_axes(p);
  BwdParams bp = geometry(p);
  const BwdWorkspace ws = workspace_layout(p, bp);
  char* base = static_cast<char*>(workspace);
  bp.deterministic = deterministic ? 1 : 0;
  bp.out = out;
  bp.dout = dout;
  bp.lse = lse;
  bp.dlse = dlse;
  bp.row_lse2 = reinterpret_cast<float*>(base + ws.lse2);
  bp.row_delta = reinterpret_cast<float*>(base + ws.delta);
  bp.dq_accum = reinterpret_cast<float*>(base + ws.dq_accum);
  bp.dq_semaphore = reinterpret_cast<int*>(base + ws.semaphore);
  bp.dq = dq;
  bp.dk = dk;
  bp.dv = dv;

  cudaError_t err;
  const size_t dq_bytes = size_t(bp.num_slots) * p.head_dim * sizeof(float);
  if ((err = cudaMemsetAsync(bp.dq_accum, 0, dq_bytes, stream))) return err;
  if ((err = launch_bwd_row_stats(p.dtype, bp, stream))) return err;

  CUtensorMap mq, mdo, mk, mv;
  if ((err = fwd_host::make_qkv_tensor_maps(p, ax, tiles, q, k, v, &mq, &mk, &mv))) return err;
  if ((err = fwd_host::make_token_tensor_map(&mdo, dout, p.dtype, p.head_dim, p.heads, ax, p.batch,
                                             tiles.q, ax.q_extent)))
    return err;
  const unsigned grid = unsigned(int64_t(bp.num_kv_tiles) * bp.num_groups * p.kv_heads * p.batch);
  switch (p.head_dim) {
    case 32:
      err = launch_rank<32>(p.rank, p.dtype, mq, mdo, mk, mv, bp, grid, stream);
      break;
    case 64:
      err = launch_rank<64>(p.rank, p.dtype, mq, mdo, mk, mv, bp, grid, stream);
      break;
    case 128:
      err = launch_rank<128>(p.rank, p.dtype, mq, mdo, mk, mv, bp, grid, stream);
      break;
    default:
      err = cudaErrorInvalidValue;
  }
  if (err) return err;
  return launch_bwd_dq_convert(p.dtype, bp, stream);
}

}  // namespace gna::sm90
