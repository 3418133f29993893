// The sm100 kernels' waits and tensor-memory bookkeeping, with the checks of a debug build.
//
// Release builds: GNA_SM100_WAIT is cutlass's mbarrier wait, `spin_until_equal` an acquire loop
// with a backoff and the TMEM checks nothing: exactly the code the kernels had without these
// wrappers (the names and indices passed for the reports compile away; the PTX of a kernel is the
// same before and after, docs/blackwell.md).
//
// Debug builds (CMake -DJAX_GNA_DEBUG_KERNELS=ON defines JAX_GNA_DEBUG_KERNELS=1): a wait that
// has not completed after kDebugWaitBudgetNs of the GPU's global timer prints one line per warp
// naming the kernel, the barrier, its index (ring stage or buffer), the parity (or value) waited
// for, the loop iteration, the block (work item) and the thread, then executes `trap`, which
// aborts the launch with an error instead of hanging. tcgen05.alloc's wait, its result and the
// dealloc are checked too.
//
// Hardware barriers (__syncthreads, bar.sync on a named barrier) cannot be given a time-out;
// every thread they wait for runs straight-line code or waits in one of the bounded waits
// here, so a hang behind one still ends in a report from the thread it waits for.
#pragma once

#include <cstdint>
#include <cstdio>

#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>

#if defined(JAX_GNA_DEBUG_KERNELS) && JAX_GNA_DEBUG_KERNELS
#define GNA_SM100_DEBUG 1
#else
#define GNA_SM100_DEBUG 0
#endif

namespace gna::sm100 {

// How long a debug build waits before it calls a wait a hang: far beyond any legitimate wait
// of these kernels (a tile's load or UMMA takes microseconds; a deterministic-mode turn waits
// for the few CTAs adding before it into one Q tile).
constexpr uint64_t kDebugWaitBudgetNs = 10ull * 1000 * 1000 * 1000;

// Where a wait is, for a debug build's report.
struct WaitSite {
  const char* kernel;   // "forward" or "backward"
  int head_dim, rank;   // the kernel's template parameters
  const char* barrier;  // the SharedStorage member (or global semaphore) waited on
  int index;            // ring stage, buffer or semaphore (-1: a single barrier)
  int iteration;        // KV tile (forward) or visit (backward) of the role's loop (-1: none)
};

#if GNA_SM100_DEBUG
CUTLASS_DEVICE uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// One line per warp (its first active lane), then trap. `now`: the value seen (semaphores),
// -1 where there is none (mbarriers: their phase is opaque).
CUTLASS_DEVICE void report_hang(const WaitSite& s, const char* what, uint32_t expected, int now) {
  if (int(threadIdx.x % 32) == __ffs(__activemask()) - 1) {
    printf(
        "jax_gna debug: sm100 %s kernel (head dim %d, rank %d) hung: %s wait on %s[%d] for %s %u "
        "(seen: %d) not done after %llu s; iteration %d, block %d (work item), thread %d\n",
        s.kernel, s.head_dim, s.rank, what, s.barrier, s.index, now < 0 ? "parity" : "value",
        expected, now, static_cast<unsigned long long>(kDebugWaitBudgetNs / 1000000000ull),
        s.iteration, int(blockIdx.x), int(threadIdx.x));
  }
  __trap();
}
#endif

// GNA_SM100_WAIT(bar, parity, kernel, head_dim, rank, barrier, index, iteration) (the fields
// of WaitSite after the first two): waits until the phase of parity `parity` of the mbarrier at
// `bar` has completed. A macro so that release builds do not even evaluate the site: dead
// arguments of an inlined function still change nvcc's instruction order, and release builds
// are to be exactly cutlass's wait.
#if GNA_SM100_DEBUG
#define GNA_SM100_WAIT(bar, parity, ...) \
  ::gna::sm100::wait_barrier((bar), (parity), ::gna::sm100::WaitSite{__VA_ARGS__})

CUTLASS_DEVICE void wait_barrier(const uint64_t* bar, uint32_t parity, const WaitSite& site) {
  if (cutlass::arch::ClusterBarrier::try_wait(bar, parity)) return;
  const uint64_t start = global_timer_ns();
  while (!cutlass::arch::ClusterBarrier::try_wait(bar, parity)) {
    if (global_timer_ns() - start > kDebugWaitBudgetNs) report_hang(site, "mbarrier", parity, -1);
  }
}
#else
#define GNA_SM100_WAIT(bar, parity, ...) ::cutlass::arch::ClusterBarrier::wait((bar), (parity))
#endif

// Spins until the global int at `at` equals `value` (acquire, GPU scope), backing off with
// __nanosleep so that the spin stays off the memory system.
CUTLASS_DEVICE void spin_until_equal(const int* at, int value, const WaitSite& site) {
#if GNA_SM100_DEBUG
  const uint64_t start = global_timer_ns();
#endif
  int now;
  for (unsigned sleep_ns = 32;; sleep_ns = min(2 * sleep_ns, 512u)) {
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(now) : "l"(at));
    if (now == value) break;
#if GNA_SM100_DEBUG
    if (global_timer_ns() - start > kDebugWaitBudgetNs)
      report_hang(site, "semaphore", uint32_t(value), now);
#endif
    __nanosleep(sleep_ns);
  }
  (void)site;
}

// A value tcgen05.alloc never writes (its addresses are lane 0, column < 512).
constexpr uint32_t kTmemSlotEmpty = 0xffffffffu;

// Before tcgen05.alloc (every thread): debug builds mark the address slot empty, so that the
// threads that do not allocate can watch it (wait_for_tmem_allocation).
CUTLASS_DEVICE void before_tmem_allocation(uint32_t* slot) {
#if GNA_SM100_DEBUG
  if (threadIdx.x == 0) *reinterpret_cast<volatile uint32_t*>(slot) = kTmemSlotEmpty;
  __syncthreads();
#else
  (void)slot;
#endif
}

// The threads that do not allocate, before the barrier that publishes the address: a blocked
// tcgen05.alloc (tensor memory held by another kernel on the SM) cannot time out itself, so in
// debug builds these threads report it once the slot has stayed empty for the wait budget.
CUTLASS_DEVICE void wait_for_tmem_allocation(const uint32_t* slot, const WaitSite& site) {
#if GNA_SM100_DEBUG
  const uint64_t start = global_timer_ns();
  while (*reinterpret_cast<const volatile uint32_t*>(slot) == kTmemSlotEmpty) {
    if (global_timer_ns() - start > kDebugWaitBudgetNs) {
      report_hang(site, "tcgen05.alloc", kTmemSlotEmpty, -1);
    }
  }
#else
  (void)slot, (void)site;
#endif
}

// tcgen05.alloc of kColumns columns wrote `tmem` (the allocating warp): lane 0 and columns
// inside the 512 of tensor memory, aligned to the allocation.
template <int kColumns>
CUTLASS_DEVICE void check_tmem_allocation(uint32_t tmem, const WaitSite& site) {
#if GNA_SM100_DEBUG
  const uint32_t lane = tmem >> 16, column = tmem & 0xffffu;
  if (lane != 0 || column % kColumns != 0 || column + kColumns > 512) {
    printf(
        "jax_gna debug: sm100 %s kernel (head dim %d, rank %d): tcgen05.alloc of %d columns "
        "gave 0x%08x (lane %u, column %u); block %d, thread %d\n",
        site.kernel, site.head_dim, site.rank, kColumns, tmem, lane, column, int(blockIdx.x),
        int(threadIdx.x));
    __trap();
  }
#else
  (void)tmem, (void)site;
#endif
}

// Before tcgen05.dealloc (the allocating warp): the address it frees, `allocated`, is still the
// one in shared memory, `slot_now` (nothing overwrote it while the roles ran).
CUTLASS_DEVICE void check_tmem_free(uint32_t allocated, uint32_t slot_now, const WaitSite& site) {
#if GNA_SM100_DEBUG
  if (allocated != slot_now) {
    printf(
        "jax_gna debug: sm100 %s kernel (head dim %d, rank %d): the TMEM address in shared "
        "memory changed from 0x%08x to 0x%08x before the dealloc; block %d, thread %d\n",
        site.kernel, site.head_dim, site.rank, allocated, slot_now, int(blockIdx.x),
        int(threadIdx.x));
    __trap();
  }
#else
  (void)allocated, (void)slot_now, (void)site;
#endif
}

}  // namespace gna::sm100
