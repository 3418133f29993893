// One sm90 forward kernel per translation unit, so that a build compiles the kernels in
// parallel. The build defines which one: GNA_FWD_DTYPE (kF16 | kBF16 | kE4M3: the FP8 kernel,
// bfloat16 output), GNA_FWD_HEAD_DIM,
// GNA_FWD_RANK and GNA_FWD_CONFIG (the tile configuration's index in fwd_config.h's table)
// (the kernel table, jax_gna/_kernel_table.py, lists them).
#include "../common/kernel_instance.cuh"
#include "arch.h"
#include "kernel/fwd_fp8_kernel_ws.cuh"
#include "kernel/fwd_kernel_ws.cuh"

namespace gna {

// The sm90 forward kernels, with and without views: float8_e4m3fn inputs run the FP8 kernel
// (bfloat16 output).
template <>
struct FwdKernelOf<sm90::Arch> {
  template <class Element, int kHeadDim, int kRank, int kConfig, bool kView>
  using Kernel =
      cute::conditional_t<cute::is_same_v<Element, cutlass::float_e4m3_t>,
                          sm90::FwdFp8Kernel<cutlass::bfloat16_t, kHeadDim, kRank, kConfig, kView>,
                          sm90::FwdKernel<Element, kHeadDim, kRank, kConfig, kView>>;
  template <class Kernel>
  static auto entry() {
    return &sm90::gna_fwd_sm90_kernel<Kernel>;
  }
};

#if defined(GNA_SM90_FWD_TRACE)
// The development knob's launcher (kernel/fwd_trace.cuh): the kernel without views (a call with
// a view is refused, not run on the wrong kernel), then the printer of its clock stamps.
template <>
cudaError_t launch_fwd_kernel<sm90::Arch, DType::GNA_FWD_DTYPE, GNA_FWD_HEAD_DIM, GNA_FWD_RANK,
                              GNA_FWD_CONFIG>(const FwdMaps& maps, const FwdParams& params,
                                              unsigned grid, cudaStream_t stream) {
  if (has_view(params)) return cudaErrorNotSupported;
  using Of = FwdKernelOf<sm90::Arch>;
  using Kernel =
      typename Of::template Kernel<typename ElementOf<DType::GNA_FWD_DTYPE>::type, GNA_FWD_HEAD_DIM,
                                   GNA_FWD_RANK, GNA_FWD_CONFIG, false>;
  const cudaError_t err =
      launch_kernel<Kernel>(Of::template entry<Kernel>(), maps, params, grid, stream);
  sm90::fwd_trace::print_kernel<<<1, 1, 0, stream>>>();
  return err;
}
#else
template cudaError_t launch_fwd_kernel<sm90::Arch, DType::GNA_FWD_DTYPE, GNA_FWD_HEAD_DIM,
                                       GNA_FWD_RANK, GNA_FWD_CONFIG>(const FwdMaps&,
                                                                     const FwdParams&, unsigned,
                                                                     cudaStream_t);
#endif

}  // namespace gna
