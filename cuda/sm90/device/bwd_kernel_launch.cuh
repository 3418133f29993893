// Definition of launch_bwd_kernel, included by the instantiation TUs only.
#pragma once

#include "../../common/kernel_launch.h"
#include "../kernel/bwd_kernel_ws.cuh"
#include "bwd_kernel_launch.h"

namespace gna::sm90 {

template <DType kDType, int kHeadDim, int kRank>
cudaError_t launch_bwd_kernel(const BwdMaps& maps, const BwdParams& params, unsigned grid,
                              cudaStream_t stream) {
  using Element = typename ElementOf<kDType>::type;
  if (has_view(params)) {
    using Kernel = BwdKernel<Element, kHeadDim, kRank, true>;
    return launch_with_smem<Kernel>(&gna_bwd_sm90_kernel<Kernel>, Kernel::kSmemBytes,
                                    Kernel::kThreads, grid, stream, maps, params);
  }
  using Kernel = BwdKernel<Element, kHeadDim, kRank, false>;
  return launch_with_smem<Kernel>(&gna_bwd_sm90_kernel<Kernel>, Kernel::kSmemBytes,
                                  Kernel::kThreads, grid, stream, maps, params);
}

}  // namespace gna::sm90

// One explicit instantiation per (dtype, head dim, rank).
#define GNA_SM90_BWD_INSTANTIATE(DTYPE, HEAD_DIM, RANK)                                 \
  template cudaError_t gna::sm90::launch_bwd_kernel<gna::DType::DTYPE, HEAD_DIM, RANK>( \
      const gna::BwdMaps&, const gna::sm90::BwdParams&, unsigned, cudaStream_t);
