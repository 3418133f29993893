// sm100 forward: validation, TMA tensor maps and dispatch to the kernel instantiations. Host
// code only (no CUTLASS), so it compiles fast; the shared parts live in
// cuda/common/fwd_host.h.
#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

#include "../common/fwd_host.h"
#include "device/fwd_kernel_launch.h"
#include "fwd_config.h"
#include "fwd_kernel_set.h"
#include "fwd_launch.h"

namespace gna::sm100 {
namespace {

template <int kHeadDim, int kRank, int kConfig>
cudaError_t launch_typed(DType dtype, const FwdMaps& maps, const FwdParams& fp, unsigned grid,
                         cudaStream_t stream) {
  if constexpr (fwd_kernel_built(DType::kBF16, kHeadDim, kRank, kConfig)) {
    if (dtype == DType::kBF16)
      return launch_fwd_kernel<DType::kBF16, kHeadDim, kRank, kConfig>(maps, fp, grid, stream);
  }
  if constexpr (fwd_kernel_built(DType::kF16, kHeadDim, kRank, kConfig)) {
    if (dtype == DType::kF16)
      return launch_fwd_kernel<DType::kF16, kHeadDim, kRank, kConfig>(maps, fp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

// Configuration `config` of (kHeadDim, kRank), tried from index kConfig up.
template <int kHeadDim, int kRank, int kConfig = 0>
cudaError_t launch_config(int config, DType dtype, const FwdMaps& maps, const FwdParams& fp,
                          unsigned grid, cudaStream_t stream) {
  if constexpr (kConfig < fwd_tile_configs(kRank, kHeadDim).count) {
    if (config == kConfig)
      return launch_typed<kHeadDim, kRank, kConfig>(dtype, maps, fp, grid, stream);
    return launch_config<kHeadDim, kRank, kConfig + 1>(config, dtype, maps, fp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

template <int kHeadDim>
cudaError_t launch_rank(int rank, int config, DType dtype, const FwdMaps& maps, const FwdParams& fp,
                        unsigned grid, cudaStream_t stream) {
  switch (rank) {
    case 1:
      return launch_config<kHeadDim, 1>(config, dtype, maps, fp, grid, stream);
    case 2:
      return launch_config<kHeadDim, 2>(config, dtype, maps, fp, grid, stream);
    case 3:
      return launch_config<kHeadDim, 3>(config, dtype, maps, fp, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// Why a tile request of (rank, head dim) is refused, naming the compiled configurations.
const char* not_compiled(int rank, int head_dim) {
  static const auto reasons = [] {
    std::vector<std::string> r;
    for (int rk = 1; rk <= 3; ++rk)
      for (int d : kFwdHeadDims)
        r.push_back(fwd_host::not_compiled_text("sm100", rk, d, fwd_tile_configs(rk, d)));
    return r;
  }();
  int d = 0;
  while (kFwdHeadDims[d] != head_dim) ++d;  // the caller checked the head dim
  return reasons[(rank - 1) * std::size(kFwdHeadDims) + d].c_str();
}

// fwd_can_implement, and the index of the configuration that runs `p`.
const char* can_implement(const Problem& p, int* config) {
  if (p.has_view())
    return "the sm100 kernels take whole axes only, not a view (a shard's queries against its "
           "key block: jax_gna.parallel runs those shards with the xla implementation)";
  if (p.dtype != DType::kF16 && p.dtype != DType::kBF16)
    return "the sm100 kernels take float16 or bfloat16 only";
  if (std::find(std::begin(kFwdHeadDims), std::end(kFwdHeadDims), p.head_dim) ==
      std::end(kFwdHeadDims))
    return "the sm100 kernels take head_dim 32, 64 or 128 only";
  if (p.head_dim_v != p.head_dim) return "the sm100 kernels need head_dim_v == head_dim";
  const KernelAxes ax = kernel_axes(p);
  if (const char* reason = fwd_host::check_common(p, ax)) return reason;
  if (const char* reason = fwd_host::pick_config(p, ax, fwd_tile_configs(p.rank, p.head_dim),
                                                 not_compiled(p.rank, p.head_dim), config))
    return reason;
  if (!fwd_kernel_built(p.dtype, p.head_dim, p.rank, *config))
    return "this build's sm100 kernel set (JAX_GNA_KERNEL_SET=smoke: bfloat16, head dim 128, "
           "rank 3, default tiles) lacks this kernel";
  return nullptr;
}

}  // namespace

const char* fwd_can_implement(const Problem& p) {
  int config;
  return can_implement(p, &config);
}

size_t fwd_workspace_bytes(const Problem&) { return 0; }

cudaError_t fwd_launch(const Problem& p, const void* q, const void* k, const void* v, void* out,
                       float* lse, void* /*workspace*/, cudaStream_t stream, std::string* error) {
  int config;
  if (const char* reason = can_implement(p, &config)) {
    *error = reason;
    return cudaErrorInvalidValue;
  }
  const FwdTileConfig tiles = fwd_tile_config(p.rank, p.head_dim, config);
  FwdParams fp;
  FwdMaps maps;
  if (cudaError_t err =
          fwd_host::prepare_fwd_launch(p, tiles, q, k, v, out, lse, &fp, &maps, error))
    return err;

  // One CTA per work item (no persistent grid yet: docs/blackwell.md).
  const unsigned grid = unsigned(fp.num_items);
  switch (p.head_dim) {
    case 32:
      return launch_rank<32>(p.rank, config, p.dtype, maps, fp, grid, stream);
    case 64:
      return launch_rank<64>(p.rank, config, p.dtype, maps, fp, grid, stream);
    case 128:
      return launch_rank<128>(p.rank, config, p.dtype, maps, fp, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace gna::sm100
