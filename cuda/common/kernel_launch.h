// Launch of a fused kernel with a large dynamic shared memory tile on a given stream, and the
// element type of a DType (host code with CUTLASS's numeric types, shared by the architectures'
// launchers).
#pragma once

#include <atomic>
#include <mutex>

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include "dev_knobs.h"
#include "gna/problem.h"

namespace gna {

// The CUTLASS element type of a kernel's input DType.
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
template <>
struct ElementOf<DType::kE4M3> {
  using type = cutlass::float_e4m3_t;
};

// The attributes of every kernel launch, into `config` (`attrs` holds them): programmatic stream
// serialization (PDL: the kernel may start while the previous one on the stream ends; its entry
// point waits for it, grid_dependency.cuh) where the development knob GNA_PDL asks for it.
inline void set_launch_attributes(cudaLaunchConfig_t& config, cudaLaunchAttribute (&attrs)[1]) {
  config.attrs = attrs;
  config.numAttrs = 0;
  if (dev_knobs::pdl()) {
    attrs[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[0].val.programmaticStreamSerializationAllowed = 1;
    config.numAttrs = 1;
  }
}

// Launches `kernel` with `threads` threads per CTA, `grid` CTAs and `smem_bytes` of dynamic
// shared memory on `stream`. The dynamic smem limit is a per-device function attribute: it is
// raised once per device ordinal (a process may drive several GPUs), separately for each
// `Tag` (one per kernel). Only success is remembered: after a failure (reported by that
// launch) the next launch tries again.
template <class Tag, class... Params, class... Args>
cudaError_t launch_with_smem(void (*kernel)(Params...), size_t smem_bytes, int threads,
                             unsigned grid, cudaStream_t stream, const Args&... args) {
  constexpr int kMaxDevices = 64;
  static std::atomic<bool> raised[kMaxDevices];  // static: zero-initialised (false)
  static std::mutex mutex;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  if (!raised[device].load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!raised[device].load(std::memory_order_relaxed)) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(smem_bytes));
      if (err != cudaSuccess) {
        cudaGetLastError();  // reported here; not again by a later, unrelated check
        return err;
      }
      raised[device].store(true, std::memory_order_release);
    }
  }

  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid, 1, 1);
  config.blockDim = dim3(threads, 1, 1);
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute attrs[1];
  set_launch_attributes(config, attrs);
  return cudaLaunchKernelEx(&config, kernel, args...);
}

}  // namespace gna
