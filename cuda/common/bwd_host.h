// Host side of the backward that every architecture's dispatcher (cuda/sm90, cuda/sm100)
// shares: the launch sequence around the family's main kernel. Host code (CUDA runtime and
// driver types, no CUTLASS); inline, as fwd_host.h.
#pragma once

#include <string>

#include <cuda.h>
#include <cuda_runtime.h>

#include "bwd_params.h"
#include "fwd_host.h"

namespace gna::bwd_host {

// The tensor maps of one backward launch with parameters `bp` (its loads): q and dO in Q
// tiles, k and v in KV tiles.
inline cudaError_t make_bwd_maps(const Problem& p, const KernelAxes& ax, const BwdParams& bp,
                                 const void* q, const void* dout, const void* k, const void* v,
                                 BwdMaps* maps, std::string* error) {
  using fwd_host::encode_tensor_maps;
  cudaError_t err;
  if ((err = encode_tensor_maps(&maps->q, "q", q, p.dtype, p.heads, p.head_dim, bp.q_loads,
                                ax.dilation, ax.q_extent, p.batch, error)) ||
      (err = encode_tensor_maps(&maps->dout, "dout", dout, p.dtype, p.heads, p.head_dim, bp.q_loads,
                                ax.dilation, ax.q_extent, p.batch, error)) ||
      (err = encode_tensor_maps(&maps->k, "k", k, p.dtype, p.kv_heads, p.head_dim, bp.kv_loads,
                                ax.dilation, ax.kv_extent, p.batch, error)))
    return err;
  return encode_tensor_maps(&maps->v, "v", v, p.dtype, p.kv_heads, p.head_dim, bp.kv_loads,
                            ax.dilation, ax.kv_extent, p.batch, error);
}

// A kernel family's backward, as the launch sequence calls it:
//   static constexpr bool built(DType, int head_dim, int rank): the build holds that kernel;
//   template <DType, int kHeadDim, int kRank> static cudaError_t launch(const BwdMaps&,
//       const BwdParams&, unsigned grid, cudaStream_t): the main kernel, one CTA per item;
//   static cudaError_t row_stats(DType, const BwdParams&, cudaStream_t), and dq_convert: the
//       element-wise passes (bwd_passes.cuh).

// The main kernel of (dtype, head dim, rank), from the ones Family's build holds.
template <class Family, int kHeadDim, int kRank>
cudaError_t launch_dtype(DType dtype, const BwdMaps& maps, const BwdParams& bp, unsigned grid,
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
cudaError_t launch_rank(int rank, DType dtype, const BwdMaps& maps, const BwdParams& bp,
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
cudaError_t launch_main(const Problem& p, const BwdMaps& maps, const BwdParams& bp, unsigned grid,
                        cudaStream_t stream) {
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
// on `stream`: the tensor maps and every host-side check first (so that a refusal enqueues
// nothing; the reason goes to *error), then zero the dQ accumulator, the pre-pass, the main
// kernel, the dQ conversion. Tensors as in the families' bwd_launch.h.
template <class Family>
cudaError_t launch(const Problem& p, BwdParams bp, const void* dout, const void* q, const void* k,
                   const void* v, const void* out, const float* lse, const float* dlse, void* dq,
                   void* dk, void* dv, void* workspace, bool deterministic, cudaStream_t stream,
                   std::string* error) {
  const KernelAxes ax = kernel_axes(p);
  using fwd_host::aligned;
  // 16 bytes: the passes' and the epilogues' vector accesses; 4: fp32 row statistics.
  if (!aligned(out, 16, "out", error) || !aligned(dq, 16, "dq", error) ||
      !aligned(dk, 16, "dk", error) || !aligned(dv, 16, "dv", error) ||
      !aligned(lse, 4, "lse", error) || !aligned(dlse, 4, "dlse", error) ||
      !aligned(workspace, 16, "the workspace", error))
    return cudaErrorInvalidValue;
  const int64_t items = bwd_num_items(bp);
  if (items >= (int64_t(1) << 31)) {
    *error = "too many work items for one launch (2^31)";
    return cudaErrorInvalidValue;
  }
  BwdMaps maps;
  cudaError_t err;
  if ((err = make_bwd_maps(p, ax, bp, q, dout, k, v, &maps, error))) return err;
  bwd_bind(&bp, workspace, dout, out, lse, dlse, dq, dk, dv, deterministic);

  const size_t dq_bytes = size_t(bp.num_slots) * p.head_dim * sizeof(float);
  if ((err = cudaMemsetAsync(bp.dq_accum, 0, dq_bytes, stream))) return err;
  if ((err = Family::row_stats(p.dtype, bp, stream))) return err;
  if ((err = launch_main<Family>(p, maps, bp, unsigned(items), stream))) return err;
  return Family::dq_convert(p.dtype, bp, stream);
}

}  // namespace gna::bwd_host
