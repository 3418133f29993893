// Builds a gna::Problem from tensor shapes and the FFI attributes, checking everything a kernel
// relies on. Plain C++ (no XLA headers), so the FFI handlers and the Python host helpers
// (workspace sizes, "can the CUDA kernel run this?") decode a call the same way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "gna/problem.h"

namespace gna {

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

// q [B..., X..., H, D], k [B..., X..., Hkv, D], v [B..., X..., Hkv, Dv] with
// r = kernel_size.size spatial axes; all leading dims fold into `batch`. Without a view q, k, v
// share their spatial dims; with one, k and v share theirs (the key slices).
// Returns "" and fills `problem`, or returns what is wrong.
std::string problem_from_shapes(Int64List q, Int64List k, Int64List v, DType dtype,
                                const WindowAttrs& attrs, Problem* problem);

}  // namespace gna
