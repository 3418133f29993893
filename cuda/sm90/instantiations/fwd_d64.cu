// sm90 forward kernels for head dim 64 (one TU per head dim: 2 dtypes x 3 ranks).
#include "../device/fwd_kernel_launch.cuh"
#include "../fwd_kernel_set.h"

#if !defined(GNA_KERNEL_SET_SMOKE)
GNA_SM90_FWD_INSTANTIATE(kF16, 64, 1)
GNA_SM90_FWD_INSTANTIATE(kF16, 64, 2)
GNA_SM90_FWD_INSTANTIATE(kF16, 64, 3)
#endif
#if !defined(GNA_KERNEL_SET_SMOKE) || 64 == 128
GNA_SM90_FWD_INSTANTIATE(kBF16, 64, 1)
GNA_SM90_FWD_INSTANTIATE(kBF16, 64, 2)
GNA_SM90_FWD_INSTANTIATE(kBF16, 64, 3)
#endif
