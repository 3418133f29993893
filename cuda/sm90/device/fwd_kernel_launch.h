// Host-side interface between the dispatcher (fwd_dispatch.cu, plain host
// code) and the kernel instantiations (fwd_instance.cu, one TU per kernel, CUTLASS/CuTe).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "../../common/tensor_maps.h"
#include "../fwd_config.h"
#include "gna/problem.h"

namespace gna::sm90 {

// Launches the forward kernel of (dtype, head dim, rank, tile configuration
// index into fwd_tile_configs(kRank, kHeadDim)) with the given tensor maps (made
// by fwd_host::prepare_fwd_launch with the loads of that configuration's tiles).
template <DType kDType, int kHeadDim, int kRank, int kConfig>
cudaError_t launch_fwd_kernel(const FwdMaps& maps, const FwdParams& params, unsigned grid,
                              cudaStream_t stream);

}  // namespace gna::sm90
