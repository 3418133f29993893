// Definition of launch_fwd_kernel, included by the instantiation TUs only.
#pragma once

#include "../../common/kernel_launch.h"
#include "../kernel/fwd_kernel_ws.cuh"
#include "fwd_kernel_launch.h"

namespace gna::sm90 {

template <DType kDType, int kHeadDim, int kRank, int kConfig>
cudaError_t launch_fwd_kernel(const FwdMaps& maps, const FwdParams& params, unsigned grid,
                              cudaStream_t stream) {
  static_assert(kConfig >= 0 && kConfig < fwd_tile_configs(kRank, kHeadDim).count,
                "no such tile configuration: the build's kernel list disagrees with fwd_config.h");
  using Element = typename ElementOf<kDType>::type;
  if (has_view(params)) {
    using Kernel = FwdKernel<Element, kHeadDim, kRank, kConfig, true>;
    return launch_with_smem<Kernel>(&gna_fwd_sm90_kernel<Kernel>, Kernel::kSmemBytes,
                                    Kernel::kThreads, grid, stream, maps, params);
  }
  using Kernel = FwdKernel<Element, kHeadDim, kRank, kConfig, false>;
  return launch_with_smem<Kernel>(&gna_fwd_sm90_kernel<Kernel>, Kernel::kSmemBytes,
                                  Kernel::kThreads, grid, stream, maps, params);
}

}  // namespace gna::sm90

// One explicit instantiation per (dtype, head dim, rank, tile configuration).
#define GNA_SM90_FWD_INSTANTIATE(DTYPE, HEAD_DIM, RANK, CONFIG)                                 \
  template cudaError_t gna::sm90::launch_fwd_kernel<gna::DType::DTYPE, HEAD_DIM, RANK, CONFIG>( \
      const gna::FwdMaps&, const gna::FwdParams&, unsigned, cudaStream_t);
