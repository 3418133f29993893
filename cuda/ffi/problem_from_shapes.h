// Builds a gna::Problem from tensor shapes and the FFI attributes, checking everything a kernel
// relies on. Plain C++ (no XLA headers), so the FFI handlers and the Python host helpers
// (workspace sizes, "can the CUDA kernel run this?") decode a call the same way.
//
// A custom call can be crafted by hand or deserialized from an export, so no attribute is
// trusted: each is range-checked in int64 before any arithmetic or narrowing to int, and a bad
// one is refused with its name, the rule and the value (never a crash, never a silent wrap).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "gna/problem.h"

namespace gna {

// Spatial lengths (whole-axis extents and the query/key slices), view offsets and tile shapes
// are below 2^30, so that the sum or difference of any two positions fits in an int: the
// window and tile geometry (gna/window.h, gna/tile_box.h) and the kernels compute in int.
inline constexpr int64_t kMaxPosition = int64_t{1} << 30;

// A read-only list of int64 (a shape or an attribute array).
struct Int64List {
  const int64_t* data;
  size_t size;
  int64_t operator[](size_t i) const { return data[i]; }
};

struct WindowAttrs {
  Int64List kernel_size, stride, dilation, is_causal;
  float scale;
  // Requested tile shapes (Problem::q_tile, kv_tile): both empty (unset) or one entry per axis.
  Int64List q_tile{nullptr, 0}, kv_tile{nullptr, 0};
  // A view (Problem's q_offset, kv_offset; window.h AxisView): all three empty (the arrays hold
  // whole axes) or one entry per axis: the whole-axis extents and where the query and key
  // slices start. The slices' lengths are q's and k's spatial dims.
  Int64List view_extent{nullptr, 0}, view_q_offset{nullptr, 0}, view_kv_offset{nullptr, 0};
};

// Why axis `a` of a window is illegal, or "" when it is legal: 1 <= kernel_size,
// 1 <= stride <= kernel_size, 1 <= dilation, kernel_size * dilation <= extent < kMaxPosition,
// is_causal 0 or 1. `extent_name` names where the extent comes from in messages.
std::string axis_error(size_t a, int64_t extent, int64_t kernel_size, int64_t stride,
                       int64_t dilation, int64_t is_causal, const char* extent_name = "extent");

// Why a view of axis `a` (legal by axis_error) is illegal, or "": 1 <= q_length, kv_length
// < kMaxPosition, 0 <= q_offset < extent, |kv_offset| < kMaxPosition, and the phase rule of
// window.h axis_view_error.
std::string view_error(size_t a, int64_t extent, int64_t dilation, int64_t q_offset,
                       int64_t q_length, int64_t kv_offset, int64_t kv_length);

// q [B..., X..., H, D], k [B..., X..., Hkv, D], v [B..., X..., Hkv, Dv] with
// r = kernel_size.size spatial axes; all leading dims fold into `batch`. Without a view q, k, v
// share their spatial dims; with one, k and v share theirs (the key slices).
// Returns "" and fills `problem`, or returns what is wrong.
std::string problem_from_shapes(Int64List q, Int64List k, Int64List v, DType dtype,
                                const WindowAttrs& attrs, Problem* problem);

}  // namespace gna
