// sm90 forward kernels for head dim 128 (one TU per head dim: 2 dtypes x 3 ranks).
// The smoke kernel set (GNA_KERNEL_SET_SMOKE) builds the bf16 ones only.
#include "../device/fwd_kernel_launch.cuh"

#if !defined(GNA_KERNEL_SET_SMOKE)
GNA_SM90_FWD_INSTANTIATE(kF16, 128, 1)
GNA_SM90_FWD_INSTANTIATE(kF16, 128, 2)
GNA_SM90_FWD_INSTANTIATE(kF16, 128, 3)
#endif
GNA_SM90_FWD_INSTANTIATE(kBF16, 128, 1)
GNA_SM90_FWD_INSTANTIATE(kBF16, 128, 2)
GNA_SM90_FWD_INSTANTIATE(kBF16, 128, 3)
