// The CUTLASS element type of a DType, and the per-device dynamic shared memory limit of a
// kernel: what every sm90 kernel launcher needs.
#pragma once

#include <mutex>

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include "gna/problem.h"

namespace gna::sm90 {

template <DType kDType>
struct ElementOf;
template <>
struct ElementOf<DType::kF16> {
  using type = cutlass::half_t;
};
template <>
struct ElementOf<DType::kBF16> {
  using type = cutlass::bfloat16_t;
};

// The dynamic smem limit is a per-device function attribute: raise it once per device ordinal
// and kernel (a process may drive several GPUs). `Kernel` names the kernel (its function type
// alone would not: many kernels share one signature).
template <class Kernel, class KernelFn>
cudaError_t raise_smem_limit(KernelFn* kernel, size_t bytes) {
  constexpr int kMaxDevices = 64;
  static std::once_flag once[kMaxDevices];
  static cudaError_t attr_error[kMaxDevices];
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  std::call_once(once[device], [&] {
    attr_error[device] =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  });
  return attr_error[device];
}

}  // namespace gna::sm90
