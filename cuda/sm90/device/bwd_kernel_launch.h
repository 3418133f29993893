// Host-side interface between the backward dispatcher (bwd_dispatch.cu, plain host code) and
// the kernels (bwd_instance.cu: one TU per main kernel, CUTLASS/CuTe; bwd_passes.cu: the
// pre-pass and the dQ conversion).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "../../common/tensor_maps.h"
#include "../bwd_config.h"
#include "gna/problem.h"

namespace gna::sm90 {

// The main backward kernel of (dtype, head dim, rank), one CTA per work item (KV tile, group,
// KV head, batch entry), with tensor maps over q, dO (Q tile boxes) and k, v (KV tile boxes)
// made by bwd_host::make_bwd_maps with the loads of bwd_tile_config(kRank)'s tiles.
template <DType kDType, int kHeadDim, int kRank>
cudaError_t launch_bwd_kernel(const BwdMaps& maps, const BwdParams& params, unsigned grid,
                              cudaStream_t stream);

// Pre-pass: the row statistics of every slot (bwd_config.h) and zeroed dQ semaphores.
cudaError_t launch_bwd_row_stats(DType dtype, const BwdParams& params, cudaStream_t stream);

// dq = scale * the fp32 partial sums of every slot (dq_order.h), in the problem's dtype.
cudaError_t launch_bwd_dq_convert(DType dtype, const BwdParams& params, cudaStream_t stream);

}  // namespace gna::sm90
