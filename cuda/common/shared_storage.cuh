// The kernels' shared storage in the dynamic shared memory, shared by the architectures.
#pragma once

#include <cstdint>

#include <cutlass/cutlass.h>
#include <cute/layout.hpp>

namespace gna {

// `Storage` at the dynamic shared memory base `smem` re-aligned to 1024 bytes (SW128 TMA and
// GMMA). The pointer is advanced, not rebuilt from an integer: derived from the __shared__
// array, it keeps its address space, so plain accesses to the storage compile to shared-memory
// loads and stores (LDS/STS). Through an integer they become generic ones, which wait on the
// long scoreboard like global loads (the sm90 backward's profile: docs/history.md).
template <class Storage>
CUTLASS_DEVICE Storage& shared_storage(char* smem) {
  const uint32_t misalignment = static_cast<uint32_t>(__cvta_generic_to_shared(smem)) & 1023u;
  return *reinterpret_cast<Storage*>(smem + ((1024u - misalignment) & 1023u));
}

// Stores the 16-bit elements `lo`, `hi` as one 32-bit word at `at` (`hi` at `at + 1`) in shared
// memory. For tiles whose swizzled addresses cute computes as integers (cute's swizzled smem
// pointers), a plain store through them would be a generic one.
template <class Element>
CUTLASS_DEVICE void store_shared_pair(const Element* at, Element lo, Element hi) {
  static_assert(sizeof(Element) == 2, "16-bit elements");
  const uint32_t bits = uint32_t(lo.raw()) | (uint32_t(hi.raw()) << 16);
  asm volatile("st.shared.b32 [%0], %1;" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(at))),
               "r"(bits)
               : "memory");
}

// Whether the smem layout `Layout` (rows x columns, and buffers: buffer 0 is checked) keeps each
// run of kRun columns kRun c .. kRun c + kRun - 1 of a row contiguous and aligned to kRun elements
// in memory, as the vector stores and loads below need. The first 16 rows and 128 columns are
// checked (the compiler's constexpr budget; a d256 tile checked whole exceeds it): two periods of
// the GMMA/UMMA swizzle atoms, which repeat every 8 rows and every 64 (or 32) columns.
template <class Layout, int kRows, int kCols, int kRun>
constexpr bool column_runs_contiguous() {
  for (int r = 0; r < (kRows < 16 ? kRows : 16); ++r) {
    for (int c = 0; c < (kCols < 128 ? kCols : 128); c += kRun) {
      for (int i = 0; i < kRun; ++i) {
        int at = 0, first = 0;
        if constexpr (decltype(cute::rank(Layout{}))::value == 3) {
          at = Layout{}(r, c + i, 0);
          first = Layout{}(r, c, 0);
        } else {
          at = Layout{}(r, c + i);
          first = Layout{}(r, c);
        }
        if (at != first + i || first % kRun != 0) return false;
      }
    }
  }
  return true;
}

// Whether neighbouring columns 2c and 2c + 1 of each row are neighbours in memory, as
// store_shared_pair needs.
template <class Layout, int kRows, int kCols>
constexpr bool column_pairs_adjacent() {
  return column_runs_contiguous<Layout, kRows, kCols, 2>();
}

// Whether the smem layouts A and B (rows x columns, and buffers: buffer 0 is checked) put each
// element at the same offset, over the first 16 rows and 128 columns (as column_runs_contiguous):
// two views of the same bytes.
template <class A, class B, int kRows, int kCols>
constexpr bool same_offsets() {
  for (int r = 0; r < (kRows < 16 ? kRows : 16); ++r) {
    for (int c = 0; c < (kCols < 128 ? kCols : 128); ++c) {
      if (A{}(r, c, 0) != B{}(r, c, 0)) return false;
    }
  }
  return true;
}

// Stores the 16 bytes `v` at `at` in shared memory (see store_shared_pair).
CUTLASS_DEVICE void store_shared_16b(void* at, uint4 v) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(
                   static_cast<uint32_t>(__cvta_generic_to_shared(at))),
               "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

}  // namespace gna
