// The forward dispatcher every architecture shares: validation, the choice of a compiled tile
// configuration, TMA tensor maps and the dispatch to the architecture's kernel instantiations,
// over its traits `Arch` (cuda/<arch>/arch.h). Defines the forward half of launch_api.h;
// cuda/<arch>/fwd_dispatch.cu instantiates it (GNA_FWD_DISPATCH_INSTANTIATE). Host code only
// (no CUTLASS), so it compiles fast.
//
// An architecture's traits, as this file and bwd_dispatch.h read them:
//   kName ("sm90"); kFwdHeadDims, kBwdHeadDims, fwd_kernel_built, bwd_kernel_built (its
//     kernel_table.h); fwd_tile_configs (fwd_config.h), bwd_tile_configs (bwd_config.h);
//   kTakesViews: the kernels take views (fwd_host::check_view says which); without,
//     kViewRefusal says why a view is refused;
//   kFwdSetRefusal, kBwdSetRefusal: why a kernel outside this build's kernel set is refused;
//   persistent_grid(p, tiles): whether the forward of `p` runs one CTA per SM looping over the
//     work items rather than one CTA per item;
//   deterministic_dq_buffers(): copies of the backward's dQ accumulator in deterministic mode
//     (bwd_params.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>

#include "fwd_host.h"
#include "kernel_launchers.h"
#include "launch_api.h"

namespace gna {
namespace fwd_dispatch {

template <class Arch, int kHeadDim, int kRank, int kConfig>
cudaError_t launch_dtype(DType dtype, const FwdMaps& maps, const FwdParams& fp, unsigned grid,
                         cudaStream_t stream) {
  if constexpr (Arch::fwd_kernel_built(DType::kBF16, kHeadDim, kRank, kConfig)) {
    if (dtype == DType::kBF16)
      return launch_fwd_kernel<Arch, DType::kBF16, kHeadDim, kRank, kConfig>(maps, fp, grid,
                                                                             stream);
  }
  if constexpr (Arch::fwd_kernel_built(DType::kF16, kHeadDim, kRank, kConfig)) {
    if (dtype == DType::kF16)
      return launch_fwd_kernel<Arch, DType::kF16, kHeadDim, kRank, kConfig>(maps, fp, grid, stream);
  }
  if constexpr (Arch::fwd_kernel_built(DType::kE4M3, kHeadDim, kRank, kConfig)) {
    if (dtype == DType::kE4M3)
      return launch_fwd_kernel<Arch, DType::kE4M3, kHeadDim, kRank, kConfig>(maps, fp, grid,
                                                                             stream);
  }
  return cudaErrorInvalidValue;
}

// Configuration `config` of (kHeadDim, kRank).
template <class Arch, int kHeadDim, int kRank>
cudaError_t launch_config(int config, DType dtype, const FwdMaps& maps, const FwdParams& fp,
                          unsigned grid, cudaStream_t stream) {
  constexpr int kCount = Arch::fwd_tile_configs(kRank, kHeadDim).count;
  return fwd_host::with_config<kCount>(config, [&](auto c) {
    return launch_dtype<Arch, kHeadDim, kRank, decltype(c)::value>(dtype, maps, fp, grid, stream);
  });
}

template <class Arch, int kHeadDim>
cudaError_t launch_rank(int rank, int config, DType dtype, const FwdMaps& maps, const FwdParams& fp,
                        unsigned grid, cudaStream_t stream) {
  switch (rank) {
    case 1:
      return launch_config<Arch, kHeadDim, 1>(config, dtype, maps, fp, grid, stream);
    case 2:
      return launch_config<Arch, kHeadDim, 2>(config, dtype, maps, fp, grid, stream);
    case 3:
      return launch_config<Arch, kHeadDim, 3>(config, dtype, maps, fp, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// Head dim `head_dim`, tried from Arch::kFwdHeadDims[kIndex] up.
template <class Arch, size_t kIndex = 0>
cudaError_t launch_head_dim(int head_dim, int rank, int config, DType dtype, const FwdMaps& maps,
                            const FwdParams& fp, unsigned grid, cudaStream_t stream) {
  if constexpr (kIndex < std::size(Arch::kFwdHeadDims)) {
    constexpr int kHeadDim = Arch::kFwdHeadDims[kIndex];
    if (head_dim == kHeadDim)
      return launch_rank<Arch, kHeadDim>(rank, config, dtype, maps, fp, grid, stream);
    return launch_head_dim<Arch, kIndex + 1>(head_dim, rank, config, dtype, maps, fp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

// fwd_can_implement, and the index of the configuration that runs `p`.
template <class Arch>
const char* can_implement(const Problem& p, int* config) {
  if constexpr (!Arch::kTakesViews) {
    if (p.has_view()) return Arch::kViewRefusal;
  }
  static const fwd_host::KernelRefusals refusals(std::string("the ") + Arch::kName + " kernels",
                                                 Arch::kFwdHeadDims, Arch::kFwdTakesFp8);
  if (const char* reason = refusals.check(p)) return reason;
  if (p.dtype == DType::kE4M3 && !Arch::fwd_fp8_head_dim(p.head_dim)) {
    static const std::string fp8_head_dims =
        std::string("the ") + Arch::kName +
        " FP8 (float8_e4m3fn) forward kernels do not take "
        "this head_dim (the kernel table, jax_gna/_kernel_table.py FP8_FORWARD, lists theirs)";
    return fp8_head_dims.c_str();
  }
  if (!fwd_host::any_config_built(Arch::fwd_tile_configs, Arch::fwd_kernel_built, p.dtype,
                                  p.head_dim, p.rank))
    return Arch::kFwdSetRefusal;
  const KernelAxes ax = kernel_axes(p);
  if (const char* reason = fwd_host::check_common(p, ax)) return reason;
  if constexpr (Arch::kTakesViews) {
    if (const char* reason = fwd_host::check_view(p)) return reason;
  }
  static const fwd_host::NotCompiled not_compiled(Arch::kName, Arch::kFwdHeadDims,
                                                  Arch::fwd_tile_configs);
  if (const char* reason = fwd_host::pick_config(p, ax, Arch::fwd_tile_configs(p.rank, p.head_dim),
                                                 not_compiled(p.rank, p.head_dim), config))
    return reason;
  // A kernel set may hold some configurations of a (dtype, head dim, rank) only (sm100's
  // smoke set: the default).
  if (!Arch::fwd_kernel_built(p.dtype, p.head_dim, p.rank, *config)) return Arch::kFwdSetRefusal;
  return nullptr;
}

}  // namespace fwd_dispatch

template <class Arch>
const char* fwd_can_implement(const Problem& p) {
  int config;
  return fwd_dispatch::can_implement<Arch>(p, &config);
}

template <class Arch>
size_t fwd_workspace_bytes(const Problem&) {
  return 0;
}

template <class Arch>
cudaError_t fwd_launch(const Problem& p, const void* q, const void* k, const void* v, void* out,
                       float* lse, void* /*workspace*/, cudaStream_t stream, std::string* error,
                       const float* descale) {
  int config;
  if (const char* reason = fwd_dispatch::can_implement<Arch>(p, &config)) {
    *error = reason;
    return cudaErrorInvalidValue;
  }
  if (p.dtype == DType::kE4M3 &&
      (descale == nullptr || !fwd_host::aligned(descale, 4, "descale", error))) {
    if (descale == nullptr) *error = "float8_e4m3fn inputs need their descales";
    return cudaErrorInvalidValue;
  }
  const FwdTileConfig tiles = Arch::fwd_tile_configs(p.rank, p.head_dim).config[config];
  FwdParams fp;
  FwdMaps maps;
  if (cudaError_t err =
          fwd_host::prepare_fwd_launch(p, tiles, q, k, v, out, lse, &fp, &maps, error))
    return err;
  fp.descale = p.dtype == DType::kE4M3 ? descale : nullptr;
  int64_t grid = fp.num_items;
  if (Arch::persistent_grid(p, tiles)) {
    int sms = 0;
    if (cudaError_t err = fwd_host::multiprocessor_count(&sms)) return err;
    grid = std::min<int64_t>(grid, sms);
  }
  return fwd_dispatch::launch_head_dim<Arch>(p.head_dim, p.rank, config, p.dtype, maps, fp,
                                             unsigned(grid), stream);
}

}  // namespace gna

// The forward half of launch_api.h for architecture ARCH (its traits), in the one TU that
// includes this with it.
#define GNA_FWD_DISPATCH_INSTANTIATE(ARCH)                                                    \
  template const char* gna::fwd_can_implement<ARCH>(const gna::Problem&);                     \
  template size_t gna::fwd_workspace_bytes<ARCH>(const gna::Problem&);                        \
  template cudaError_t gna::fwd_launch<ARCH>(const gna::Problem&, const void*, const void*,   \
                                             const void*, void*, float*, void*, cudaStream_t, \
                                             std::string*, const float*);
