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

namespace gna::sm90 {
namespace {

// Launch geometry shared by bwd_workspace_bytes and bwd_launch.
BwdParams geometry(const Problem& p) {
  return bwd_geometry(p, kernel_axes(p), bwd_tile_config(p.rank));
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
    return "the sm90 backward kernels take float16 or bfloat16 only";
  if (std::find(std::begin(kBwdHeadDims), std::end(kBwdHeadDims), p.head_dim) ==
      std::end(kBwdHeadDims))
    return "the sm90 backward kernels take head_dim 32, 64 or 128 only";
  if (p.head_dim_v != p.head_dim) return "the sm90 backward kernels need head_dim_v == head_dim";
  if (!bwd_kernel_built(p.dtype, p.head_dim, p.rank))
    return "this build's sm90 kernel set (JAX_GNA_KERNEL_SET=smoke) lacks this dtype/head_dim";
  const KernelAxes ax = kernel_axes(p);
  if (const char* reason = fwd_host::check_common(p, ax)) return reason;
  if (const char* reason = fwd_host::check_view(p)) return reason;
  TileLoads q_loads, kv_loads;
  if (const char* reason = plan_loads(p, ax, bwd_tile_config(p.rank), &q_loads, &kv_loads))
    return reason;
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
                       cudaStream_t stream, std::string* error) {
  if (const char* reason = bwd_can_implement(p)) {
    *error = reason;
    return cudaErrorInvalidValue;
  }
  return bwd_host::launch<Family>(p, geometry(p), dout, q, k, v, out, lse, dlse, dq, dk, dv,
                                  workspace, deterministic, stream, error);
}

}  // namespace gna::sm90
