// tcgen05 helpers shared by the sm100 kernels (fwd_kernel_ws.cuh, bwd_kernel_ws.cuh): the
// ordering fences around thread synchronisation and 32-column tensor-memory loads and stores.
#pragma once

#include <utility>

#include <cutlass/cutlass.h>
#include <cute/arch/copy_sm100.hpp>
#include <cute/arch/tmem_allocator_sm100.hpp>

#include "debug_checks.cuh"

namespace gna::sm100 {

// tcgen05 ordering around thread synchronisation (mbarrier waits and arrives, bar.sync):
// TMEM reads and writes and UMMAs issued before `before_thread_sync` are ordered before the
// synchronisation, and those after `after_thread_sync` after it.
CUTLASS_DEVICE void tcgen05_before_thread_sync() {
  asm volatile("tcgen05.fence::before_thread_sync;" ::: "memory");
}
CUTLASS_DEVICE void tcgen05_after_thread_sync() {
  asm volatile("tcgen05.fence::after_thread_sync;" ::: "memory");
}

// 32 consecutive TMEM columns of this thread's lane (warp-collective; complete after
// cutlass::arch::fence_view_async_tmem_load()).
template <size_t... I>
CUTLASS_DEVICE void tmem_load_32(uint32_t addr, uint32_t* r, std::index_sequence<I...>) {
  cute::SM100_TMEM_LOAD_32dp32b32x::copy(addr, r[I]...);
}
template <size_t... I>
CUTLASS_DEVICE void tmem_store_32(uint32_t addr, const uint32_t* r, std::index_sequence<I...>) {
  cute::SM100_TMEM_STORE_32dp32b32x::copy(r[I]..., addr);
}

// The TMEM address of column 0 of this warp's 32 lanes (a warp may only touch lanes
// 32 * (warp % 4) .. + 31; `row` is the thread's lane, 0..127).
CUTLASS_DEVICE uint32_t tmem_lane_base(uint32_t tmem, int row) {
  return tmem + (uint32_t(row & ~31) << 16);
}

// The CTA's tensor memory around `body(tmem)`, which every thread runs: warp `alloc_warp`
// allocates kColumns columns (their address lands in `*slot`, in shared memory), and frees them
// once every thread has returned from `body` (the threads must have finished their TMEM reads
// and waited for their UMMAs there). Debug builds check the allocation and the free, and bound
// the other threads' wait for the allocation (debug_checks.cuh); `site` names the kernel in
// their reports.
template <int kColumns, class Body>
CUTLASS_DEVICE void with_tmem(bool alloc_warp, uint32_t* slot, const WaitSite& site, Body&& body) {
  cute::TMEM::Allocator1Sm allocator;
  before_tmem_allocation(slot);
  if (alloc_warp) {
    allocator.allocate(kColumns, slot);
    allocator.release_allocation_lock();
  } else {
    wait_for_tmem_allocation(slot, site);
  }
  tcgen05_before_thread_sync();
  __syncthreads();
  tcgen05_after_thread_sync();
  const uint32_t tmem = *slot;
  if (alloc_warp) check_tmem_allocation<kColumns>(tmem, site);
  body(tmem);
  tcgen05_before_thread_sync();
  __syncthreads();
  if (alloc_warp) {
    tcgen05_after_thread_sync();
    check_tmem_free(tmem, *slot, site);
    allocator.free(tmem, kColumns);
  }
}

}  // namespace gna::sm100
