// sm90 forward kernels for head dim 256 (one TU per head dim: 2 dtypes x 3 ranks).
// The smoke kernel set (GNA_KERNEL_SET_SMOKE) builds none of them: the TU is empty.
#if !defined(GNA_KERNEL_SET_SMOKE)
#include "../device/fwd_kernel_launch.cuh"

GNA_SM90_FWD_INSTANTIATE(kF16, 256, 1)
GNA_SM90_FWD_INSTANTIATE(kF16, 256, 2)
GNA_SM90_FWD_INSTANTIATE(kF16, 256, 3)
GNA_SM90_FWD_INSTANTIATE(kBF16, 256, 1)
GNA_SM90_FWD_INSTANTIATE(kBF16, 256, 2)
GNA_SM90_FWD_INSTANTIATE(kBF16, 256, 3)
#endif
