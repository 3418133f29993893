// Development knobs: the one place that reads them. They exist for performance experiments; no
// production setting needs one. Runtime knobs are environment variables read once per process
// and validated strictly: a value that is not exactly one of those listed is ignored (with one
// line on stderr), so a typo can neither change results nor index out of range.
//
//   GNA_SM90_PERSISTENT = 0 | 1
//       The sm90 forward's grid: 1 forces one persistent CTA per SM looping over the work
//       items, 0 one CTA per item. Unset: chosen per problem (sm90/arch.h).
//   GNA_FWD_TILE_ORDER = a permutation of "012" (older name: GNA_SM90_TILE_ORDER)
//       The forward's CTA order over Q tiles: kernel axes from fastest to slowest, e.g. "012"
//       for the first axis fastest. Unset: the widest window (over its extent) first (fwd_params.h,
//       cta_tile_order).
//   GNA_BWD_TILE_ORDER = a permutation of "012"
//       The backward's CTA order over KV tiles in the default mode, as GNA_FWD_TILE_ORDER.
//       Deterministic mode ignores it: its turns need row-major (bwd_params.h,
//       bwd_set_deterministic). Unset: the forward's rule.
//   GNA_PDL = 0 | 1
//       1: every kernel (forward, backward and its passes; sm90 and sm100) launches with
//       programmatic stream serialization (PDL, common/kernel_launch.h): its CTAs may start
//       while the kernel before it on the stream ends, and wait at their entry for it to
//       complete (common/grid_dependency.cuh), so the launch and scheduling overlap its tail.
//       Unset: 0. Compiled, not yet timed or tested on a GPU.
//   GNA_SM90_DQ_BUFFERS = 1 | 2 | 3 | 4
//       Copies of the sm90 backward's dQ accumulator in deterministic mode (bwd_params.h).
//       Unset: 1 (sm90/arch.h).
//   GNA_SM90_STAGES_EXPERIMENT (compile time: -DGNA_SM90_STAGES_EXPERIMENT=<n>, n >= 2)
//       K/V pipeline stages of the sm90 forward for head dims <= 128 (sm90/fwd_config.h, where
//       it is checked; a stage count whose tiles overflow shared memory fails at launch).
//   GNA_SM90_FP8_FMA_EXP2 (compile time: -DGNA_SM90_FP8_FMA_EXP2=<k>, k = 0..8)
//       Of every 8 exponentials of the sm90 FP8 forward's softmax, k are computed by a
//       polynomial on the FMA pipe instead of MUFU.EX2 (sm90/kernel/fp8_exp2.cuh, where it is
//       checked). Unset: 0. On an H100, k = 2 ran 10-11% slower than 0 (docs/history.md).
//   GNA_SM90_FWD_TURNS (compile time: -DGNA_SM90_FWD_TURNS=<t>, t = 0, 1, 2)
//       The sm90 forward's turns between its two consumer warpgroups (16-bit and FP8 kernels;
//       sm90/kernel/consumer_turns.cuh): 0 none, 1 the GEMMs are issued in alternation, 2 the
//       softmaxes alternate too. Unset: 1. On an H100, 2 ran 5-6% (FP8) and 2-3% (16-bit) slower
//       than 1 (docs/history.md).
//   GNA_SM90_FWD_OVERLAP_ITEMS (compile time: -DGNA_SM90_FWD_OVERLAP_ITEMS=<o>, o = 0, 1)
//       1: a CTA of the sm90 forward (16-bit and FP8, head dims <= 128) issues a work item's
//       last P V in the same GEMM turn as its next item's first S GEMM and runs the item's
//       epilogue after that turn, so that the tensor cores have work across an item boundary
//       (persistent grids; sm90/fwd_config.h, fwd_overlap_items). Unset: 0 (each item ends with
//       a turn and an epilogue of its own). Compiled and checked for spills, not yet timed or
//       tested on a GPU.
//   GNA_SM90_FWD_TRACE (compile time: -DGNA_SM90_FWD_TRACE)
//       Clock stamps of the sm90 forward's consumer warpgroups per visit (16-bit and FP8
//       kernels), printed after each launch (sm90/kernel/fwd_trace.cuh; benchmarks/fwd_trace.py
//       summarises them).
//
// Host code only.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace gna::dev_knobs {

inline void report_ignored(const char* name, const char* value, const char* expected) {
  std::fprintf(stderr, "jax_gna: ignoring %s=\"%s\" (expected %s)\n", name, value, expected);
}

// Environment variable `name` as one digit from `lo` to `hi`, or -1 when unset (or ignored).
inline int digit_knob(const char* name, char lo, char hi, const char* expected) {
  const char* env = std::getenv(name);
  if (env == nullptr) return -1;
  if (std::strlen(env) == 1 && env[0] >= lo && env[0] <= hi) return env[0] - '0';
  report_ignored(name, env, expected);
  return -1;
}

// GNA_SM90_PERSISTENT: 0 or 1, or -1 when unset (or ignored).
inline int sm90_persistent() {
  static const int value = digit_knob("GNA_SM90_PERSISTENT", '0', '1', "0 or 1");
  return value;
}

// GNA_PDL: whether set to 1.
inline bool pdl() {
  static const bool value = digit_knob("GNA_PDL", '0', '1', "0 or 1") == 1;
  return value;
}

// GNA_SM90_DQ_BUFFERS: 1 to 4, or -1 when unset (or ignored).
inline int sm90_dq_buffers() {
  static const int value = digit_knob("GNA_SM90_DQ_BUFFERS", '1', '4', "1, 2, 3 or 4");
  return value;
}

// Kernel axes from fastest to slowest: `set` when the environment variable `name` (or, unset,
// `old_name`) holds a permutation of "012".
struct AxisOrder {
  bool set;
  int axes[3];
};

inline AxisOrder axis_order_knob(const char* name, const char* old_name = nullptr) {
  const char* env = std::getenv(name);
  if (env == nullptr && old_name != nullptr) env = std::getenv(name = old_name);
  AxisOrder o{false, {2, 1, 0}};
  if (env == nullptr) return o;
  bool seen[3] = {false, false, false};
  bool ok = std::strlen(env) == 3;
  for (int k = 0; ok && k < 3; ++k) {
    const int a = env[k] - '0';
    ok = a >= 0 && a < 3 && !seen[a];
    if (ok) seen[a] = true, o.axes[k] = a;
  }
  if (!ok) {
    report_ignored(name, env, "a permutation of \"012\"");
    return AxisOrder{false, {2, 1, 0}};
  }
  o.set = true;
  return o;
}

// GNA_FWD_TILE_ORDER (or GNA_SM90_TILE_ORDER): kernel axes from fastest to slowest, or nullptr
// when unset (or ignored).
inline const int* fwd_tile_order() {
  static const AxisOrder order = axis_order_knob("GNA_FWD_TILE_ORDER", "GNA_SM90_TILE_ORDER");
  return order.set ? order.axes : nullptr;
}

// GNA_BWD_TILE_ORDER: kernel axes from fastest to slowest, or nullptr when unset (or ignored).
inline const int* bwd_tile_order() {
  static const AxisOrder order = axis_order_knob("GNA_BWD_TILE_ORDER");
  return order.set ? order.axes : nullptr;
}

}  // namespace gna::dev_knobs
