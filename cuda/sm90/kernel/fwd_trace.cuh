// Development knob GNA_SM90_FWD_TRACE (compile time; common/dev_knobs.h): clock stamps of the
// sm90 forward's two consumer warpgroups (16-bit and FP8 kernels) at each step of their first
// visits, printed by a kernel launched after the forward, to see how the warpgroups' GEMMs and
// softmaxes interleave (benchmarks/fwd_trace.py). One thread per warpgroup stamps (the first of
// its first warp), in the first kCtas CTAs, for their first kItems work items and kVisits
// visits; per item also its entry, its Q landing and the end of its epilogue (what an item
// boundary costs). Without the knob nothing here is compiled in.
#pragma once

#include <cstdio>

#include <cutlass/cutlass.h>

namespace gna::sm90::fwd_trace {

constexpr int kCtas = 2, kItems = 3, kVisits = 96, kStamps = 6;
enum ItemStamp : int { kItemEntry = 0, kItemQLanded = 1, kItemDone = 2, kItemStamps = 3 };

#if defined(GNA_SM90_FWD_TRACE)
// One copy per translation unit (static): each kernel stamps and prints its own.
static __device__ long long g_stamps[kCtas][2][kItems][kVisits][kStamps];
static __device__ long long g_items[kCtas][2][kItems][kItemStamps];
#endif

// Stamp k of visit `visit` of the CTA's work item `item` (its count-th); ctid: the thread's
// index among the 256 consumer threads.
CUTLASS_DEVICE void stamp(int ctid, int item, int visit, int k) {
#if defined(GNA_SM90_FWD_TRACE)
  if (blockIdx.x < kCtas && (ctid & 127) == 0 && item < kItems && visit < kVisits)
    g_stamps[blockIdx.x][ctid / 128][item][visit][k] = clock64();
#endif
}

// Stamp k (ItemStamp) of the CTA's work item `item`.
CUTLASS_DEVICE void stamp_item(int ctid, int item, int k) {
#if defined(GNA_SM90_FWD_TRACE)
  if (blockIdx.x < kCtas && (ctid & 127) == 0 && item < kItems)
    g_items[blockIdx.x][ctid / 128][item][k] = clock64();
#endif
}

// One line per stamped visit: "gna_trace cta wg item visit s0 .. s5" (SM clock cycles), one per
// stamped item: "gna_item cta wg item entry q_landed done"; the stamps are cleared for the next
// launch. A kernel of its own, launched after the forward on
// its stream (fwd_instance.cu): a printf in the forward kernel would make ptxas serialise its
// wgmma instructions.
#if defined(GNA_SM90_FWD_TRACE)
static __global__ void print_kernel() {
  for (int c = 0; c < kCtas; ++c)
    for (int wg = 0; wg < 2; ++wg)
      for (int it = 0; it < kItems; ++it) {
        long long* e = g_items[c][wg][it];
        if (e[kItemEntry] != 0)
          printf("gna_item %d %d %d %lld %lld %lld\n", c, wg, it, e[kItemEntry], e[kItemQLanded],
                 e[kItemDone]);
        for (int k = 0; k < kItemStamps; ++k) e[k] = 0;
        for (int v = 0; v < kVisits; ++v) {
          long long* s = g_stamps[c][wg][it][v];
          if (s[0] == 0) continue;
          printf("gna_trace %d %d %d %d %lld %lld %lld %lld %lld %lld\n", c, wg, it, v, s[0], s[1],
                 s[2], s[3], s[4], s[5]);
          for (int k = 0; k < kStamps; ++k) s[k] = 0;
        }
      }
}
#endif

}  // namespace gna::sm90::fwd_trace
