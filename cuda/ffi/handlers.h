// The FFI handler symbols the nanobind module hands to jax.ffi.register_ffi_target, and the host
// queries of the CUDA handlers (declared here without CUDA headers).
#pragma once

#include <cstddef>
#include <vector>

#include "gna/problem.h"
#include "xla/ffi/api/api.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxGnaFwdCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxGnaBwdCpu);

#ifdef JAX_GNA_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxGnaFwdCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxGnaBwdCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxGnaFwdFp8Cuda);

namespace gna::cuda_ffi {
// Why the CUDA forward kernels cannot run `problem` on a device of compute capability
// `major`.`minor` (major < 0: on the build's own arch list only), or nullptr if they can.
const char* fwd_can_implement(const Problem& problem, int major, int minor);
// The same for the backward kernels.
const char* bwd_can_implement(const Problem& problem, int major, int minor);
bool has_backward();
size_t fwd_workspace_bytes(const Problem& problem);
size_t bwd_workspace_bytes(const Problem& problem, bool deterministic);

// One tile configuration of the forward kernels, per problem axis (`rank` entries each).
struct FwdTileShapes {
  int rank, head_dim;
  std::vector<int> q, kv;
};
// The forward kernels' tile configurations for every rank and head dim they take, each
// (rank, head dim)'s default first; empty without forward kernels. (Which dtypes and head dims
// this build holds is fwd_can_implement's business.)
std::vector<FwdTileShapes> fwd_tile_configs();
}  // namespace gna::cuda_ffi
#endif
