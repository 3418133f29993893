// One sm100 backward kernel per translation unit, so that a build compiles the kernels in
// parallel. The build defines which one: GNA_BWD_DTYPE (kF16 | kBF16), GNA_BWD_HEAD_DIM,
// GNA_BWD_RANK and GNA_BWD_CONFIG (the kernel table, jax_gna/_kernel_table.py, lists them).
#include "../common/kernel_instance.cuh"
#include "arch.h"
#include "kernel/bwd_kernel_ws.cuh"

namespace gna {

// The sm100 backward kernels (whole axes only: no view variant; one tile configuration).
template <>
struct BwdKernelOf<sm100::Arch> {
  template <class Element, int kHeadDim, int kRank, int kConfig, bool kView>
  using Kernel = sm100::BwdKernel<Element, kHeadDim, kRank>;
  template <class Kernel>
  static auto entry() {
    return &sm100::gna_bwd_sm100_kernel<Kernel>;
  }
};

template cudaError_t launch_bwd_kernel<sm100::Arch, DType::GNA_BWD_DTYPE, GNA_BWD_HEAD_DIM,
                                       GNA_BWD_RANK, GNA_BWD_CONFIG>(const BwdMaps&,
                                                                     const BwdParams&, unsigned,
                                                                     cudaStream_t);

}  // namespace gna
