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

// One of a family's element-wise passes (bwd_passes.cuh).
using Pass = cudaError_t (*)(DType, const BwdParams&, cudaStream_t);

// The launch sequence of a backward call with launch geometry `bp` (bwd_geometry with `tiles`)
// on `stream`: zero the dQ accumulator, the pre-pass, the tensor maps, the main kernel
// (`main_kernel(maps, params, grid)`, one CTA per work item), the dQ conversion. Tensors as in
// the families' bwd_launch.h.
template <class MainKernel>
cudaError_t launch(const Problem& p, const FwdTileConfig& tiles, BwdParams bp, const void* dout,
                   const void* q, const void* k, const void* v, const void* out, const float* lse,
                   const float* dlse, void* dq, void* dk, void* dv, void* workspace,
                   bool deterministic, cudaStream_t stream, Pass row_stats, Pass dq_convert,
                   MainKernel&& main_kernel) {
  const KernelAxes ax = kernel_axes(p);
  bwd_bind(&bp, workspace, dout, out, lse, dlse, dq, dk, dv, deterministic);

  cudaError_t err;
  const size_t dq_bytes = size_t(bp.num_slots) * p.head_dim * sizeof(float);
  if ((err = cudaMemsetAsync(bp.dq_accum, 0, dq_bytes, stream))) return err;
  if ((err = row_stats(p.dtype, bp, stream))) return err;

  TensorMaps maps;
  if ((err = fwd_host::make_qkv_tensor_maps(p, ax, tiles, q, k, v, &maps.q, &maps.k, &maps.v)))
    return err;
  if ((err = fwd_host::make_token_tensor_map(&maps.dout, dout, p.dtype, p.head_dim, p.heads, ax,
                                             p.batch, tiles.q)))
    return err;
  if ((err = main_kernel(static_cast<const TensorMaps&>(maps), static_cast<const BwdParams&>(bp),
                         unsigned(bwd_num_items(bp)))))
    return err;
  return dq_convert(p.dtype, bp, stream);
}

}  // namespace gna::bwd_host
