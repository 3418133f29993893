// The problem lines the host probes (fwd_work_cases.cc, bwd_work_cases.cc) read from stdin:
//   rank batch heads kv_heads option extent[rank] kernel[rank] stride[rank] dilation[rank]
//   causal[rank]
// with head dim 128; `option` is the probe's own (a tile configuration, deterministic mode).
#pragma once

#include <istream>

#include "gna/problem.h"

namespace gna {

inline bool read_problem(std::istream& in, Problem* p, int* option) {
  if (!(in >> p->rank >> p->batch >> p->heads >> p->kv_heads >> *option)) return false;
  for (int i = 0; i < p->rank; ++i) in >> p->extent[i];
  for (int i = 0; i < p->rank; ++i) in >> p->kernel_size[i];
  for (int i = 0; i < p->rank; ++i) in >> p->stride[i];
  for (int i = 0; i < p->rank; ++i) in >> p->dilation[i];
  for (int i = 0; i < p->rank; ++i) {
    int c;
    in >> c;
    p->causal[i] = c != 0;
  }
  p->head_dim = p->head_dim_v = 128;
  return bool(in);
}

}  // namespace gna
