// The CPU kernels behind the `cpu` handlers of jax_gna_fwd / jax_gna_bwd.
//
// Window-sparse: every query visits only the keys of its window (per axis with
// gna::window), so the cost is tokens x window, never tokens^2. Inputs of any
// supported dtype are widened to fp32 once; all arithmetic is fp32. Both entry points may throw
// (std::bad_alloc for the fp32 copies); the FFI handlers turn that into an error.
#pragma once

#include "gna/problem.h"

namespace gna::cpu {

// out [batch, X..., heads, head_dim_v] (problem dtype), lse fp32 [batch, X..., heads].
void forward(const Problem& problem, const void* q, const void* k, const void* v, void* out,
             float* lse);

// Gradients for cotangents `dout` (problem dtype, like out) and `dlse` (fp32, like lse):
// dq, dk, dv in the problem dtype. `out` and `lse` are the forward results. As in
// `jax_gna.reference`, a query whose cotangents are all zero contributes nothing, so a non-finite
// entry reaches only the gradients that depend on the queries whose window holds it.
void backward(const Problem& problem, const void* dout, const void* q, const void* k, const void* v,
              const void* out, const float* lse, const float* dlse, void* dq, void* dk, void* dv);

}  // namespace gna::cpu
