// The FFI handler symbols the nanobind module hands to jax.ffi.register_ffi_target, and the host
// queries of the CUDA handlers (declared here without CUDA headers).
#pragma once

#include <cstddef>

#include "gna/problem.h"
#include "xla/ffi/api/api.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxGnaFwdCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxGnaBwdCpu);

#ifdef JAX_GNA_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxGnaFwdCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxGnaBwdCuda);

namespace gna::cuda_ffi {
// Why the CUDA forward kernels cannot run `problem` on a device of compute capability
// `major`.`minor` (major < 0: on the build's own arch list only), or nullptr if they can.
const char* fwd_can_implement(const Problem& problem, int major, int minor);
bool has_backward();
size_t fwd_workspace_bytes(const Problem& problem);
size_t bwd_workspace_bytes(const Problem& problem);
}  // namespace gna::cuda_ffi
#endif
