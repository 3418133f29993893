// Which sm90 forward kernels this build holds. CMake defines
// GNA_KERNEL_SET_SMOKE for JAX_GNA_KERNEL_SET=smoke (bf16, head dim 128, all
// ranks); otherwise every dtype x head dim x rank is built, each (head dim, rank)
// with every tile configuration of fwd_config.h. The dispatcher and the
// instantiation TUs both read this, so they never disagree; the build files
// (sources.cmake, cuda/tests/build_sm90_harness.sh, bazel/cuda.bzl) list the same.
#pragma once

#include "gna/problem.h"

namespace gna::sm90 {

constexpr bool fwd_kernel_built(DType dtype, int head_dim) {
#if defined(GNA_KERNEL_SET_SMOKE)
  return dtype == DType::kBF16 && head_dim == 128;
#else
  return (dtype == DType::kF16 || dtype == DType::kBF16) &&
         (head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256);
#endif
}

}  // namespace gna::sm90
