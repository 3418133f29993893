// One sm100 backward kernel per translation unit, so that a build compiles the kernels in
// parallel. The build defines which one: GNA_BWD_DTYPE (kF16 | kBF16), GNA_BWD_HEAD_DIM and
// GNA_BWD_RANK (the kernel table, jax_gna/_kernel_table.py, lists them).
#include "device/bwd_kernel_launch.cuh"

GNA_SM100_BWD_INSTANTIATE(GNA_BWD_DTYPE, GNA_BWD_HEAD_DIM, GNA_BWD_RANK)
