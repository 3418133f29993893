// One sm100 forward kernel per translation unit, so that a build compiles the kernels in
// parallel. The build defines which one: GNA_FWD_DTYPE (kF16 | kBF16 | kE4M3: FP8 inputs,
// bfloat16 output), GNA_FWD_HEAD_DIM,
// GNA_FWD_RANK and GNA_FWD_CONFIG (the tile configuration's index in fwd_config.h's table)
// (the kernel table, jax_gna/_kernel_table.py, lists them).
#include "../common/kernel_instance.cuh"
#include "arch.h"
#include "kernel/fwd_kernel_ws.cuh"

namespace gna {

// The sm100 forward kernels (whole axes only: no view variant).
template <>
struct FwdKernelOf<sm100::Arch> {
  template <class Element, int kHeadDim, int kRank, int kConfig, bool kView>
  using Kernel = sm100::FwdKernel<Element, kHeadDim, kRank, kConfig>;
  template <class Kernel>
  static auto entry() {
    return &sm100::gna_fwd_sm100_kernel<Kernel>;
  }
};

template cudaError_t launch_fwd_kernel<sm100::Arch, DType::GNA_FWD_DTYPE, GNA_FWD_HEAD_DIM,
                                       GNA_FWD_RANK, GNA_FWD_CONFIG>(const FwdMaps&,
                                                                     const FwdParams&, unsigned,
                                                                     cudaStream_t);

}  // namespace gna
