// sm90 backward: validation, workspace layout, TMA tensor maps and the launch sequence
// (pre-pass, dQ accumulator memset, main kernel, dQ conversion). Host code only (no CUTLASS).
#include <algorithm>
#include <cstdint>
#include <iterator>

#include "../common/bwd_host.h"
#include "../common/fwd_host.h"
#include "bwd_config.h"
#include "bwd_launch.h"
#include "device/bwd_kernel_launch.h"
#include "fwd_kernel_set.h"

namespace gna::sm90 {
namespace {

// Launch geometry shared by bwd_workspace_bytes and bwd_launch.
BwdParams geometry(const Problem& p) {
  return bwd_geometry(p, kernel_axes(p), bwd_tile_config(p.rank));
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
  const FwdTileConfig tiles = bwd_tile_config(p.rank);
  if (!fwd_host::boxes_fit(tiles, ax))
    return "the sm90 backward kernels need tile * dilation <= 256 along every axis (a TMA box "
           "limit; KV tiles span 128 tokens in 1-D, 16 in 2-D and 8 in 3-D, so 1-D allows "
           "dilation <= 2)";
  const BwdParams bp = geometry(p);
  if (bwd_num_items(bp) >= (int64_t(1) << 31))
    return "the sm90 backward kernels need fewer than 2^31 work items";
  return nullptr;
}

size_t bwd_workspace_bytes(const Problem& p) {
  if (bwd_can_implement(p) != nullptr) return 0;
  return bwd_workspace_layout(geometry(p)).total;
}

cudaError_t bwd_launch(const Problem& p, const void* dout, const void* q, const void* k,
                       const void* v, const void* out, const float* lse, const float* dlse,
                       void* dq, void* dk, void* dv, void* workspace, bool deterministic,
                       cudaStream_t stream) {
  if (bwd_can_implement(p) != nullptr) return cudaErrorInvalidValue;
  const auto main_kernel = [&](const bwd_host::TensorMaps& m, const BwdParams& bp, unsigned grid) {
    switch (p.head_dim) {
      case 32:
        return launch_rank<32>(p.rank, p.dtype, m.q, m.dout, m.k, m.v, bp, grid, stream);
      case 64:
        return launch_rank<64>(p.rank, p.dtype, m.q, m.dout, m.k, m.v, bp, grid, stream);
      case 128:
        return launch_rank<128>(p.rank, p.dtype, m.q, m.dout, m.k, m.v, bp, grid, stream);
      default:
        return cudaErrorInvalidValue;
    }
  };
  return bwd_host::launch(p, bwd_tile_config(p.rank), geometry(p), dout, q, k, v, out, lse, dlse,
                          dq, dk, dv, workspace, deterministic, stream, launch_bwd_row_stats,
                          launch_bwd_dq_convert, main_kernel);
}

}  // namespace gna::sm90
