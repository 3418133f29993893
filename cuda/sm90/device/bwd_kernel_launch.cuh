// Definition of launch_bwd_kernel, included by the instantiation TUs only.
#pragma once

#include "../kernel/bwd_kernel_ws.cuh"
#include "bwd_kernel_launch.h"
#include "element_of.h"

namespace gna::sm90 {

template <DType kDType, int kHeadDim, int kRank>
cudaError_t launch_bwd_kernel(const CUtensorMap& map_q, const CUtensorMap& map_do,
                              const CUtensorMap& map_k, const CUtensorMap& map_v,
                              const BwdParams& params, unsigned grid, cudaStream_t stream) {
  using Kernel = BwdKernel<typename ElementOf<kDType>::type, kHeadDim, kRank>;
  auto* kernel = &gna_bwd_sm90_kernel<Kernel>;
  if (cudaError_t err = raise_smem_limit<Kernel>(kernel, Kernel::kSmemBytes)) return err;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid, 1, 1);
  config.blockDim = dim3(Kernel::kThreads, 1, 1);
  config.dynamicSmemBytes = Kernel::kSmemBytes;
  config.stream = stream;
  return cudaLaunchKernelEx(&config, kernel, map_q, map_do, map_k, map_v, params);
}

}  // namespace gna::sm90

// One explicit instantiation per (dtype, head dim, rank).
#define GNA_SM90_BWD_INSTANTIATE(DTYPE, HEAD_DIM, RANK)                                 \
  template cudaError_t gna::sm90::launch_bwd_kernel<gna::DType::DTYPE, HEAD_DIM, RANK>( \
      const CUtensorMap&, const CUtensorMap&, const CUtensorMap&, const CUtensorMap&,   \
      const gna::sm90::BwdParams&, unsigned, cudaStream_t);
