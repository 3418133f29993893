// The launcher API of an architecture's kernels, as the FFI handler (cuda/ffi/cuda_handlers.cc)
// calls it: one template over the architecture's traits `Arch` (cuda/<arch>/arch.h), defined by
// the shared dispatchers (fwd_dispatch.h, bwd_dispatch.h) and instantiated once per
// architecture by cuda/<arch>/fwd_dispatch.cu and bwd_dispatch.cu (built for that architecture
// only).
//
// Host-includable: no CUTLASS, no device code.
#pragma once

#include <cstddef>
#include <string>

#include <cuda_runtime.h>

#include "gna/problem.h"

namespace gna {

// nullptr when this build's `Arch` forward kernels can run `p`, else a static human-readable
// reason (dtype, head dim, head_dim_v != head_dim, unsupported feature, kernel not built in this
// kernel set, ...).
template <class Arch>
const char* fwd_can_implement(const Problem& p);

// Bytes of device workspace `fwd_launch` needs (0: none).
template <class Arch>
size_t fwd_workspace_bytes(const Problem& p);

// Launches the forward on `stream` only: no sync, no allocation, no host reads of device data
// (CUDA-graph safe). q [batch, X.., heads, D], k/v [batch, X.., kv_heads, D], out [batch, X..,
// heads, D] in p.dtype (bfloat16 for float8_e4m3fn inputs); lse fp32 [batch, X.., heads].
// `descale`: float8_e4m3fn inputs only, fp32 [3][heads]: the q, k and v descales of each query
// head (k, v: of its key/value head). Pointers must be 16-byte aligned (lse, descale: 4).
// Returns cudaSuccess or the launch error; a host-side refusal (fwd_can_implement(p), a
// misaligned pointer, a tensor map the driver refuses) returns an error with the reason in
// *error.
template <class Arch>
cudaError_t fwd_launch(const Problem& p, const void* q, const void* k, const void* v, void* out,
                       float* lse, void* workspace, cudaStream_t stream, std::string* error,
                       const float* descale = nullptr);

// nullptr when this build's `Arch` backward kernels can run `p`, else a static human-readable
// reason (dtype, head dim, head_dim_v != head_dim, kernel not built in this kernel set, ...).
template <class Arch>
const char* bwd_can_implement(const Problem& p);

// Bytes of device workspace `bwd_launch` needs in the mode `deterministic`: the row statistics,
// the fp32 dQ accumulator (in deterministic mode possibly several copies) and the deterministic
// mode's semaphores (bwd_params.h).
template <class Arch>
size_t bwd_workspace_bytes(const Problem& p, bool deterministic);

// Launches the backward on `stream` only: no sync, no allocation, no host reads of device data
// (CUDA-graph safe): a memset of the dQ accumulator, the pre-pass, the main kernel and the dQ
// conversion. Tensors as in the forward; dout/out like q, lse/dlse fp32 [batch, X.., heads];
// dq/dk/dv like q/k/v. `deterministic`: dQ partials are added in a fixed order (bit-identical
// results run to run). Returns cudaSuccess or the launch error; a host-side refusal
// (bwd_can_implement(p), a misaligned pointer, a tensor map the driver refuses) enqueues
// nothing and returns an error with the reason in *error.
template <class Arch>
cudaError_t bwd_launch(const Problem& p, const void* dout, const void* q, const void* k,
                       const void* v, const void* out, const float* lse, const float* dlse,
                       void* dq, void* dk, void* dv, void* workspace, bool deterministic,
                       cudaStream_t stream, std::string* error);

}  // namespace gna
