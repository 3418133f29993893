// Hopper (sm_90a) GNA backward: the launcher API the FFI handler calls.
//
// Host-includable: no CUTLASS, no device code. The kernels live in cuda/sm90/bwd_instance.cu
// and cuda/sm90/bwd_passes.cu (compiled for sm_90a only).
#pragma once

#include <cstddef>
#include <string>

#include <cuda_runtime.h>

#include "gna/problem.h"

namespace gna::sm90 {

// nullptr when this build's sm90 backward kernels can run `p`, else a static human-readable
// reason (dtype, head dim, head_dim_v != head_dim, kernel not built in this kernel set, ...).
const char* bwd_can_implement(const gna::Problem& p);

// Bytes of device workspace `bwd_launch` needs: the row statistics, the fp32 dQ accumulator
// and the deterministic mode's semaphores.
size_t bwd_workspace_bytes(const gna::Problem& p);

// Launches the backward on `stream` only: no sync, no allocation, no host reads of device data
// (CUDA-graph safe): the pre-pass, a memset of the dQ accumulator, the main kernel and the dQ
// conversion. Tensors as in the forward (fwd_launch.h); dout/out like q, lse/dlse fp32
// [batch, X.., heads]; dq/dk/dv like q/k/v. `deterministic`: dQ partials are added in a fixed
// order (bit-identical results run to run). Returns cudaSuccess or the launch error; a
// host-side refusal (bwd_can_implement(p), a misaligned pointer, a tensor map the driver
// refuses) enqueues nothing and returns an error with the reason in *error.
cudaError_t bwd_launch(const gna::Problem& p, const void* dout, const void* q, const void* k,
                       const void* v, const void* out, const float* lse, const float* dlse,
                       void* dq, void* dk, void* dv, void* workspace, bool deterministic,
                       cudaStream_t stream, std::string* error);

}  // namespace gna::sm90
