// Definition of the kernel launchers launch_fwd_kernel and launch_bwd_kernel
// (kernel_launchers.h) over an architecture's kernel templates, included by the instantiation
// units only: cuda/<arch>/fwd_instance.cu and bwd_instance.cu bind FwdKernelOf<Arch> /
// BwdKernelOf<Arch> to the architecture's kernels and instantiate one launcher each.
#pragma once

#include <cuda_runtime.h>

#include "kernel_launch.h"
#include "kernel_launchers.h"

namespace gna {

// An architecture's forward kernels, as its fwd_instance.cu specialises this:
//   template <class Element, int kHeadDim, int kRank, int kConfig, bool kView> using Kernel:
//     the kernel type (kView: for problems with a view; asked for only where Arch::kTakesViews),
//     with kThreads and kSmemBytes;
//   template <class Kernel> static auto entry(): its __global__ function.
template <class Arch>
struct FwdKernelOf;

// An architecture's backward kernels (bwd_instance.cu), as FwdKernelOf (kConfig: an index into
// Arch::bwd_tile_configs).
template <class Arch>
struct BwdKernelOf;

// `Kernel` (with its entry point `entry`) on `grid` CTAs of Kernel::kThreads threads.
template <class Kernel, class Entry, class Maps, class Params>
cudaError_t launch_kernel(Entry entry, const Maps& maps, const Params& params, unsigned grid,
                          cudaStream_t stream) {
  return launch_with_smem<Kernel>(entry, Kernel::kSmemBytes, Kernel::kThreads, grid, stream, maps,
                                  params);
}

template <class Arch, DType kDType, int kHeadDim, int kRank, int kConfig>
cudaError_t launch_fwd_kernel(const FwdMaps& maps, const FwdParams& params, unsigned grid,
                              cudaStream_t stream) {
  static_assert(kConfig >= 0 && kConfig < Arch::fwd_tile_configs(kRank, kHeadDim).count,
                "no such tile configuration: the build's kernel list disagrees with fwd_config.h");
  using Element = typename ElementOf<kDType>::type;
  using Of = FwdKernelOf<Arch>;
  if constexpr (Arch::kTakesViews) {
    if (has_view(params)) {
      using Kernel = typename Of::template Kernel<Element, kHeadDim, kRank, kConfig, true>;
      return launch_kernel<Kernel>(Of::template entry<Kernel>(), maps, params, grid, stream);
    }
  }
  using Kernel = typename Of::template Kernel<Element, kHeadDim, kRank, kConfig, false>;
  return launch_kernel<Kernel>(Of::template entry<Kernel>(), maps, params, grid, stream);
}

template <class Arch, DType kDType, int kHeadDim, int kRank, int kConfig>
cudaError_t launch_bwd_kernel(const BwdMaps& maps, const BwdParams& params, unsigned grid,
                              cudaStream_t stream) {
  static_assert(kConfig >= 0 && kConfig < Arch::bwd_tile_configs(kRank, kHeadDim).count,
                "no such tile configuration: the build's kernel list disagrees with bwd_config.h");
  using Element = typename ElementOf<kDType>::type;
  using Of = BwdKernelOf<Arch>;
  if constexpr (Arch::kTakesViews) {
    if (has_view(params)) {
      using Kernel = typename Of::template Kernel<Element, kHeadDim, kRank, kConfig, true>;
      return launch_kernel<Kernel>(Of::template entry<Kernel>(), maps, params, grid, stream);
    }
  }
  using Kernel = typename Of::template Kernel<Element, kHeadDim, kRank, kConfig, false>;
  return launch_kernel<Kernel>(Of::template entry<Kernel>(), maps, params, grid, stream);
}

}  // namespace gna
