// Blackwell (sm_100a) GNA backward: the launcher API the FFI handler calls. The same API as
// cuda/sm90/bwd_launch.h.
//
// Host-includable: no CUTLASS, no device code. The kernels live in cuda/sm100/bwd_instance.cu
// and cuda/sm100/bwd_passes.cu (compiled for sm_100a only). Built, never run: no Blackwell GPU
// was available (docs/blackwell.md).
#pragma once

#include <cstddef>
#include <string>

#include <cuda_runtime.h>

#include "gna/problem.h"

namespace gna::sm100 {

// nullptr when this build's sm100 backward kernels can run `p`, else a static human-readable
// reason (dtype, head dim, head_dim_v != head_dim, kernel not built in this kernel set, ...).
const char* bwd_can_implement(const gna::Problem& p);

// Bytes of device workspace `bwd_launch` needs: the row statistics, the fp32 dQ accumulator
// and the deterministic mode's semaphores (cuda/common/bwd_params.h).
size_t bwd_workspace_bytes(const gna::Problem& p);

// Launches the backward on `stream` only: no sync, no allocation, no host reads of device data
// (CUDA-graph safe): a memset of the dQ accumulator, the pre-pass, the main kernel and the dQ
// conversion. Tensors as in the forward (fwd_launch.h); dout/out like q, lse/dlse fp32
// [batch, X.., heads]; dq/dk/dv like q/k/v. `deterministic`: dQ partials are added in a fixed
// order (bit-identical results run to run). Returns cudaSuccess or the launch error; a
// host-side refusal (bwd_can_implement(p), a misaligned pointer, a tensor map the driver
// refuses) enqueues nothing and returns an error with the reason in *error.
cudaError_t bwd_launch(const gna::Problem& p, const void* dout, const void* q, const void* k,
                       const void* v, const void* out, const float* lse, const float* dlse,
                       void* dq, void* dk, void* dv, void* workspace, bool deterministic,
                       cudaStream_t stream, std::string* error);

}  // namespace gna::sm100
