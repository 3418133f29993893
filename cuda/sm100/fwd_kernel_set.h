// Which sm100 forward and backward kernels this build holds. CMake defines GNA_KERNEL_SET_SMOKE for
// JAX_GNA_KERNEL_SET=smoke: then one kernel (bf16, head dim 128, rank 3, the default tiles),
// which compiles every part of the kernel (the rank only changes compile-time tile shapes) at
// the least CI time. Otherwise every dtype x head dim x rank x tile configuration of
// fwd_config.h. The dispatcher and the instantiation TUs both read this, so they never
// disagree; the build files (sources.cmake, bazel/cuda.bzl) list the same.
#pragma once

#include "gna/problem.h"

namespace gna::sm100 {

constexpr bool fwd_kernel_built(DType dtype, int head_dim, int rank, int config) {
#if defined(GNA_KERNEL_SET_SMOKE)
  return dtype == DType::kBF16 && head_dim == 128 && rank == 3 && config == 0;
#else
  (void)rank, (void)config;
  return (dtype == DType::kF16 || dtype == DType::kBF16) &&
         (head_dim == 32 || head_dim == 64 || head_dim == 128);
#endif
}

// The backward kernels (one per dtype x head dim x rank, bwd_config.h); smoke: bf16, head dim
// 128, rank 3.
constexpr bool bwd_kernel_built(DType dtype, int head_dim, int rank) {
#if defined(GNA_KERNEL_SET_SMOKE)
  return dtype == DType::kBF16 && head_dim == 128 && rank == 3;
#else
  (void)rank;
  return (dtype == DType::kF16 || dtype == DType::kBF16) &&
         (head_dim == 32 || head_dim == 64 || head_dim == 128);
#endif
}

}  // namespace gna::sm100
