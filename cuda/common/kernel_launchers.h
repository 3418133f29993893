// The kernel launchers the shared dispatchers (fwd_dispatch.h, bwd_dispatch.h, plain host code)
// call and an architecture's CUDA translation units define, over its traits `Arch`
// (cuda/<arch>/arch.h):
//   launch_fwd_kernel, launch_bwd_kernel: kernel_instance.cuh, one explicit instantiation per
//     kernel of the kernel table (cuda/<arch>/fwd_instance.cu, bwd_instance.cu: one TU each);
//   launch_bwd_row_stats, launch_bwd_dq_convert: the backward's element-wise passes
//     (bwd_passes.cuh, specialised by cuda/<arch>/bwd_passes.cu).
#pragma once

#include <cuda_runtime.h>

#include "bwd_params.h"
#include "fwd_params.h"
#include "gna/problem.h"
#include "tensor_maps.h"

namespace gna {

// The forward kernel of (dtype, head dim, rank, tile configuration: an index into
// Arch::fwd_tile_configs(kRank, kHeadDim)) on `grid` CTAs, with tensor maps made by
// fwd_host::prepare_fwd_launch with the loads of that configuration's tiles.
template <class Arch, DType kDType, int kHeadDim, int kRank, int kConfig>
cudaError_t launch_fwd_kernel(const FwdMaps& maps, const FwdParams& params, unsigned grid,
                              cudaStream_t stream);

// The main backward kernel of (dtype, head dim, rank, tile configuration: an index into
// Arch::bwd_tile_configs(kRank, kHeadDim)), one CTA per work item (KV tile, group, KV head,
// batch entry), with tensor maps over q, dO (Q tile boxes) and k, v (KV tile boxes) made by
// make_bwd_maps (bwd_dispatch.h) with the loads of that configuration's tiles.
template <class Arch, DType kDType, int kHeadDim, int kRank, int kConfig>
cudaError_t launch_bwd_kernel(const BwdMaps& maps, const BwdParams& params, unsigned grid,
                              cudaStream_t stream);

// Pre-pass: the row statistics of every slot (bwd_params.h) and zeroed dQ semaphores.
template <class Arch>
cudaError_t launch_bwd_row_stats(DType dtype, const BwdParams& params, cudaStream_t stream);

// dq = scale * the fp32 partial sums of every slot, read in the order in which the
// architecture's main kernel leaves them, in the problem's dtype.
template <class Arch>
cudaError_t launch_bwd_dq_convert(DType dtype, const BwdParams& params, cudaStream_t stream);

}  // namespace gna
