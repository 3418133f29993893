// One sm90 forward kernel per translation unit, so that a build compiles the kernels in
// parallel. The build defines which one: GNA_FWD_DTYPE (kF16 | kBF16), GNA_FWD_HEAD_DIM,
// GNA_FWD_RANK and GNA_FWD_CONFIG (the tile configuration's index in fwd_config.h's table)
// (the kernel table, jax_gna/_kernel_table.py, lists them).
#include "device/fwd_kernel_launch.cuh"

GNA_SM90_FWD_INSTANTIATE(GNA_FWD_DTYPE, GNA_FWD_HEAD_DIM, GNA_FWD_RANK, GNA_FWD_CONFIG)
