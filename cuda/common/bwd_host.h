// Host side of the backward that every architecture's dispatcher (cuda/sm90, cuda/sm100)
// shares: the launch sequence around the family's main kernel. Host code (CUDA runtime and
// driver types, no CUTLASS); inline, as fwd_host.h.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "bwd_params.h"
#include "fwd_host.h"

namespace gna::bwd_host {

// The tensor maps of one backward launch: q and dO in Q tile boxes, k and v in KV tile boxes.
struct TensorMaps {
  CUtensorMap q, dout, k, v;
};

// A kernel family's backward, as the launch sequence calls it:
//   static constexpr bool built(DType, int head_dim, int rank): the build holds that kernel;
//   template <DType, int kHeadDim, int kRank> static cudaError_t launch(const TensorMaps&,
//       const BwdParams&, unsigned grid, cudaStream_t): the main kernel, one CTA per item;
//   static cudaError_t row_stats(DType, const BwdParams&, cudaStream_t), and dq_convert: the
//       element-wise passes (bwd_passes.cuh).

// The main kernel of (dtype, head dim, rank), from the ones Family's build holds.
template <class Family, int kHeadDim, int kRank>
cudaError_t launch_dtype(DType dtype, const TensorMaps& maps, const BwdParams& bp, unsigned grid,
                         cudaStream_t stream) {
  if constexpr (Family::built(DType::kBF16, kHeadDim, kRank)) {
    if (dtype == DType::kBF16)
      return Family::template launch<DType::kBF16, kHeadDim, kRank>(maps, bp, grid, stream);
  }
  if constexpr (Family::built(DType::kF16, kHeadDim, kRank)) {
    if (dtype == DType::kF16)
      return Family::template launch<DType::kF16, kHeadDim, kRank>(maps, bp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

template <class Family, int kHeadDim>
cudaError_t launch_rank(int rank, DType dtype, const TensorMaps& maps, const BwdParams& bp,
                        unsigned grid, cudaStream_t stream) {
  switch (rank) {
    case 1:
      return launch_dtype<Family, kHeadDim, 1>(dtype, maps, bp, grid, stream);
    case 2:
      return launch_dtype<Family, kHeadDim, 2>(dtype, maps, bp, grid, stream);
    case 3:
      return launch_dtype<Family, kHeadDim, 3>(dtype, maps, bp, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template <class Family>
cudaError_t launch_main(const Problem& p, const TensorMaps& maps, const BwdParams& bp,
                        unsigned grid, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32:
      return launch_rank<Family, 32>(p.rank, p.dtype, maps, bp, grid, stream);
    case 64:
      return launch_rank<Family, 64>(p.rank, p.dtype, maps, bp, grid, stream);
    case 128:
      return launch_rank<Family, 128>(p.rank, p.dtype, maps, bp, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// The launch sequence of a backward call with launch geometry `bp` (bwd_geometry with `tiles`)
// on `stream`: zero the dQ accumulator, the pre-pass, the tensor maps, the main kernel, the dQ
// conversion. Tensors as in the families' bwd_launch.h.
template <class Family>
cudaError_t launch(const Problem& p, const FwdTileConfig& tiles, BwdParams bp, const void* dout,
                   const void* q, const void* k, const void* v, const void* out, const float* lse,
                   const float* dlse, void* dq, void* dk, void* dv, void* workspace,
                   bool deterministic, cudaStream_t stream) {
  const KernelAxes ax = kernel_axes(p);
  bwd_bind(&bp, workspace, dout, out, lse, dlse, dq, dk, dv, deterministic);

  cudaError_t err;
  const size_t dq_bytes = size_t(bp.num_slots) * p.head_dim * sizeof(float);
  if ((err = cudaMemsetAsync(bp.dq_accum, 0, dq_bytes, stream))) return err;
  if ((err = Family::row_stats(p.dtype, bp, stream))) return err;

  TensorMaps maps;
  if ((err = fwd_host::make_qkv_tensor_maps(p, ax, tiles, q, k, v, &maps.q, &maps.k, &maps.v)))
    return err;
  if ((err = fwd_host::make_token_tensor_map(&maps.dout, dout, p.dtype, p.head_dim, p.heads, ax,
                                             p.batch, tiles.q, ax.q_extent)))
    return err;
  if ((err = launch_main<Family>(p, maps, bp, unsigned(bwd_num_items(bp)), stream))) return err;
  return Family::dq_convert(p.dtype, bp, stream);
}

}  // namespace gna::bwd_host
