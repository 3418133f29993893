// The backward dispatcher every architecture shares: validation, the workspace, TMA tensor maps
// and the launch sequence around the architecture's main kernel (a memset of the dQ
// accumulator, the pre-pass, the main kernel, the dQ conversion), over its traits `Arch`
// (cuda/<arch>/arch.h; what it holds: fwd_dispatch.h). The launch geometry and the workspace
// layout are bwd_params.h's. Defines the backward half of launch_api.h;
// cuda/<arch>/bwd_dispatch.cu instantiates it (GNA_BWD_DISPATCH_INSTANTIATE). Host code only
// (CUDA runtime and driver types, no CUTLASS).
#pragma once

#include <cstdint>
#include <iterator>
#include <string>

#include <cuda.h>
#include <cuda_runtime.h>

#include "bwd_params.h"
#include "fwd_host.h"
#include "kernel_launchers.h"
#include "launch_api.h"

namespace gna {
namespace bwd_dispatch {

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

// The main kernel of (dtype, head dim, rank, tile configuration), from the ones Arch's build
// holds.
template <class Arch, int kHeadDim, int kRank, int kConfig>
cudaError_t launch_dtype(DType dtype, const BwdMaps& maps, const BwdParams& bp, unsigned grid,
                         cudaStream_t stream) {
  if constexpr (Arch::bwd_kernel_built(DType::kBF16, kHeadDim, kRank, kConfig)) {
    if (dtype == DType::kBF16)
      return launch_bwd_kernel<Arch, DType::kBF16, kHeadDim, kRank, kConfig>(maps, bp, grid,
                                                                             stream);
  }
  if constexpr (Arch::bwd_kernel_built(DType::kF16, kHeadDim, kRank, kConfig)) {
    if (dtype == DType::kF16)
      return launch_bwd_kernel<Arch, DType::kF16, kHeadDim, kRank, kConfig>(maps, bp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

// Configuration `config` of (kHeadDim, kRank).
template <class Arch, int kHeadDim, int kRank>
cudaError_t launch_config(int config, DType dtype, const BwdMaps& maps, const BwdParams& bp,
                          unsigned grid, cudaStream_t stream) {
  constexpr int kCount = Arch::bwd_tile_configs(kRank, kHeadDim).count;
  return fwd_host::with_config<kCount>(config, [&](auto c) {
    return launch_dtype<Arch, kHeadDim, kRank, decltype(c)::value>(dtype, maps, bp, grid, stream);
  });
}

template <class Arch, int kHeadDim>
cudaError_t launch_rank(int rank, int config, DType dtype, const BwdMaps& maps, const BwdParams& bp,
                        unsigned grid, cudaStream_t stream) {
  switch (rank) {
    case 1:
      return launch_config<Arch, kHeadDim, 1>(config, dtype, maps, bp, grid, stream);
    case 2:
      return launch_config<Arch, kHeadDim, 2>(config, dtype, maps, bp, grid, stream);
    case 3:
      return launch_config<Arch, kHeadDim, 3>(config, dtype, maps, bp, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// Head dim `head_dim`, tried from Arch::kBwdHeadDims[kIndex] up.
template <class Arch, size_t kIndex = 0>
cudaError_t launch_head_dim(int head_dim, int rank, int config, DType dtype, const BwdMaps& maps,
                            const BwdParams& bp, unsigned grid, cudaStream_t stream) {
  if constexpr (kIndex < std::size(Arch::kBwdHeadDims)) {
    constexpr int kHeadDim = Arch::kBwdHeadDims[kIndex];
    if (head_dim == kHeadDim)
      return launch_rank<Arch, kHeadDim>(rank, config, dtype, maps, bp, grid, stream);
    return launch_head_dim<Arch, kIndex + 1>(head_dim, rank, config, dtype, maps, bp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

// Launch geometry of configuration `config`, shared by bwd_workspace_bytes and bwd_launch.
template <class Arch>
BwdParams geometry(const Problem& p, bool deterministic, int config) {
  return bwd_geometry(p, kernel_axes(p), Arch::bwd_tile_configs(p.rank, p.head_dim).config[config],
                      deterministic ? Arch::deterministic_dq_buffers() : 1);
}

// bwd_can_implement, and the index of the configuration that runs `p`: the requested tiles
// (p.q_tile, p.kv_tile: the backward's own), else the first the TMA unit can load.
template <class Arch>
const char* can_implement(const Problem& p, int* config) {
  static const std::string kernels = std::string("the ") + Arch::kName + " backward kernels";
  static const fwd_host::KernelRefusals refusals(kernels, Arch::kBwdHeadDims);
  static const std::string too_many_items = kernels + " need fewer than 2^31 work items";
  if (const char* reason = refusals.check(p)) return reason;
  if constexpr (!Arch::kTakesViews) {
    if (p.has_view()) return Arch::kViewRefusal;
  }
  if (!fwd_host::any_config_built(Arch::bwd_tile_configs, Arch::bwd_kernel_built, p.dtype,
                                  p.head_dim, p.rank))
    return Arch::kBwdSetRefusal;
  const KernelAxes ax = kernel_axes(p);
  if (const char* reason = fwd_host::check_common(p, ax)) return reason;
  if constexpr (Arch::kTakesViews) {
    if (const char* reason = fwd_host::check_view(p)) return reason;
  }
  static const fwd_host::NotCompiled not_compiled(Arch::kName, Arch::kBwdHeadDims,
                                                  Arch::bwd_tile_configs, "backward ");
  if (const char* reason = fwd_host::pick_config(p, ax, Arch::bwd_tile_configs(p.rank, p.head_dim),
                                                 not_compiled(p.rank, p.head_dim), config))
    return reason;
  if (!Arch::bwd_kernel_built(p.dtype, p.head_dim, p.rank, *config)) return Arch::kBwdSetRefusal;
  if (bwd_num_items(geometry<Arch>(p, false, *config)) >= (int64_t(1) << 31))
    return too_many_items.c_str();
  return nullptr;
}

// The launch sequence of a backward call with launch geometry `bp` (geometry<Arch>(p, ...,
// config)) on `stream`: the tensor maps and every host-side check first (so that a refusal enqueues
// nothing; the reason goes to *error), then zero the dQ accumulator, the pre-pass, the main
// kernel, the dQ conversion. Tensors as in launch_api.h.
template <class Arch>
cudaError_t launch(const Problem& p, int config, BwdParams bp, const void* dout, const void* q,
                   const void* k, const void* v, const void* out, const float* lse,
                   const float* dlse, void* dq, void* dk, void* dv, void* workspace,
                   bool deterministic, cudaStream_t stream, std::string* error) {
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

  const BwdWorkspace ws = bwd_workspace_layout(bp);
  if ((err = cudaMemsetAsync(bp.dq_accum, 0, ws.semaphore - ws.dq_accum, stream))) return err;
  if ((err = launch_bwd_row_stats<Arch>(p.dtype, bp, stream))) return err;
  if ((err = launch_head_dim<Arch>(p.head_dim, p.rank, config, p.dtype, maps, bp, unsigned(items),
                                   stream)))
    return err;
  return launch_bwd_dq_convert<Arch>(p.dtype, bp, stream);
}

}  // namespace bwd_dispatch

template <class Arch>
const char* bwd_can_implement(const Problem& p) {
  int config;
  return bwd_dispatch::can_implement<Arch>(p, &config);
}

template <class Arch>
size_t bwd_workspace_bytes(const Problem& p, bool deterministic) {
  int config;
  if (bwd_dispatch::can_implement<Arch>(p, &config) != nullptr) return 0;
  return bwd_workspace_layout(bwd_dispatch::geometry<Arch>(p, deterministic, config)).total;
}

template <class Arch>
cudaError_t bwd_launch(const Problem& p, const void* dout, const void* q, const void* k,
                       const void* v, const void* out, const float* lse, const float* dlse,
                       void* dq, void* dk, void* dv, void* workspace, bool deterministic,
                       cudaStream_t stream, std::string* error) {
  int config;
  if (const char* reason = bwd_dispatch::can_implement<Arch>(p, &config)) {
    *error = reason;
    return cudaErrorInvalidValue;
  }
  return bwd_dispatch::launch<Arch>(
      p, config, bwd_dispatch::geometry<Arch>(p, deterministic, config), dout, q, k, v, out, lse,
      dlse, dq, dk, dv, workspace, deterministic, stream, error);
}

}  // namespace gna

// The backward half of launch_api.h for architecture ARCH (its traits), in the one TU that
// includes this with it.
#define GNA_BWD_DISPATCH_INSTANTIATE(ARCH)                                                  \
  template const char* gna::bwd_can_implement<ARCH>(const gna::Problem&);                   \
  template size_t gna::bwd_workspace_bytes<ARCH>(const gna::Problem&, bool);                \
  template cudaError_t gna::bwd_launch<ARCH>(                                               \
      const gna::Problem&, const void*, const void*, const void*, const void*, const void*, \
      const float*, const float*, void*, void*, void*, void*, bool, cudaStream_t, std::string*);
