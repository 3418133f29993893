// Blackwell (sm_100a) GNA forward: the launcher API the FFI handler calls. The same API as
// cuda/sm90/fwd_launch.h.
//
// Host-includable: no CUTLASS, no device code. The kernels live in
// cuda/sm100/fwd_instance.cu (compiled for sm_100a only). Built, never run: no Blackwell GPU
// was available (docs/blackwell.md).
#pragma once

#include <cstddef>
#include <string>

#include <cuda_runtime.h>

#include "gna/problem.h"

namespace gna::sm100 {

// nullptr when this build's sm100 kernels can run `p`, else a static
// human-readable reason (dtype, head dim, head_dim_v != head_dim, unsupported
// feature, kernel not built in this kernel set, ...).
const char* fwd_can_implement(const gna::Problem& p);

// Bytes of device workspace `fwd_launch` needs (0: none).
size_t fwd_workspace_bytes(const gna::Problem& p);

// Launches the forward on `stream` only: no sync, no allocation, no host reads
// of device data (CUDA-graph safe). q [batch, X.., heads, D], k/v [batch, X..,
// kv_heads, D], out [batch, X.., heads, D] in p.dtype; lse fp32 [batch, X..,
// heads]. Pointers must be 16-byte aligned (lse: 4). Returns cudaSuccess or the
// launch error; a host-side refusal (fwd_can_implement(p), a misaligned pointer, a
// tensor map the driver refuses) returns an error with the reason in *error.
cudaError_t fwd_launch(const gna::Problem& p, const void* q, const void* k, const void* v,
                       void* out, float* lse, void* workspace, cudaStream_t stream,
                       std::string* error);

}  // namespace gna::sm100
