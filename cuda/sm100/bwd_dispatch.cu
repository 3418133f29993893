// sm100 backward: validation, workspace, TMA tensor maps and the launch sequence (dQ
// accumulator memset, pre-pass, main kernel, dQ conversion). Host code only (no CUTLASS); the
// geometry and workspace layout are the architectures' shared ones (cuda/common/bwd_params.h).
#include <algorithm>
#include <cstdint>
#include <iterator>

#include "../common/bwd_host.h"
#include "../common/fwd_host.h"
#include "bwd_config.h"
#include "bwd_launch.h"
#include "device/bwd_kernel_launch.h"
#include "kernel_table.h"

namespace gna::sm100 {
namespace {

BwdParams geometry(const Problem& p) {
  return bwd_geometry(p, kernel_axes(p), bwd_tile_config(p.rank, p.head_dim));
}

// This family's backward for bwd_host::launch.
struct Family {
  static constexpr bool built(DType dtype, int head_dim, int rank) {
    return bwd_kernel_built(dtype, head_dim, rank);
  }
  template <DType kDType, int kHeadDim, int kRank>
  static cudaError_t launch(const BwdMaps& maps, const BwdParams& bp, unsigned grid,
                            cudaStream_t stream) {
    return launch_bwd_kernel<kDType, kHeadDim, kRank>(maps, bp, grid, stream);
  }
  static cudaError_t row_stats(DType dtype, const BwdParams& bp, cudaStream_t stream) {
    return launch_bwd_row_stats(dtype, bp, stream);
  }
  static cudaError_t dq_convert(DType dtype, const BwdParams& bp, cudaStream_t stream) {
    return launch_bwd_dq_convert(dtype, bp, stream);
  }
};

}  // namespace

const char* bwd_can_implement(const Problem& p) {
  if (p.dtype != DType::kF16 && p.dtype != DType::kBF16)
    return "the sm100 backward kernels take float16 or bfloat16 only";
  if (std::find(std::begin(kBwdHeadDims), std::end(kBwdHeadDims), p.head_dim) ==
      std::end(kBwdHeadDims))
    return "the sm100 backward kernels take head_dim 32, 64 or 128 only";
  if (p.head_dim_v != p.head_dim) return "the sm100 backward kernels need head_dim_v == head_dim";
  if (p.has_view())
    return "the sm100 kernels take whole axes only, not a view (a shard's queries against its "
           "key block: jax_gna.parallel runs those shards with the xla implementation)";
  if (!bwd_kernel_built(p.dtype, p.head_dim, p.rank))
    return "this build's sm100 kernel set (JAX_GNA_KERNEL_SET=smoke: bfloat16, head dim 128, "
           "rank 3) lacks this backward kernel";
  const KernelAxes ax = kernel_axes(p);
  if (const char* reason = fwd_host::check_common(p, ax)) return reason;
  TileLoads q_loads, kv_loads;
  if (const char* reason =
          plan_loads(p, ax, bwd_tile_config(p.rank, p.head_dim), &q_loads, &kv_loads))
    return reason;
  if (bwd_num_items(geometry(p)) >= (int64_t(1) << 31))
    return "the sm100 backward kernels need fewer than 2^31 work items";
  return nullptr;
}

size_t bwd_workspace_bytes(const Problem& p) {
  if (bwd_can_implement(p) != nullptr) return 0;
  return bwd_workspace_layout(geometry(p)).total;
}

cudaError_t bwd_launch(const Problem& p, const void* dout, const void* q, const void* k,
                       const void* v, const void* out, const float* lse, const float* dlse,
                       void* dq, void* dk, void* dv, void* workspace, bool deterministic,
                       cudaStream_t stream, std::string* error) {
  if (const char* reason = bwd_can_implement(p)) {
    *error = reason;
    return cudaErrorInvalidValue;
  }
  return bwd_host::launch<Family>(p, geometry(p), dout, q, k, v, out, lse, dlse, dq, dk, dv,
                                  workspace, deterministic, stream, error);
}

}  // namespace gna::sm100
