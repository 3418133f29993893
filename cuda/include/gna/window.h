// GNA window math (docs/design.md, "GNA semantics"): the C++ twin of jax_gna/_window.py.
//
// Host and device, no CUDA headers needed. Everything is per axis; a key is
// visible to a query iff it is visible along every axis.
//
// Coordinates: a position i on an axis of extent L with dilation d belongs to
// dilation group g = i % d and sits at i' = i / d inside it. The group holds
// Lg = ceil((L - g) / d) positions. Windows are ranges [start, end) of group
// coordinates; a key j is visible to query i iff j % d == i % d and
// start(i') <= j / d < end(i').
#pragma once

#if defined(__CUDACC__)
#define GNA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GNA_HOST_DEVICE inline
#endif

namespace gna {

// One spatial axis of a problem. Legal: kernel_size >= 1 (1: the query alone,
// in its dilation group), 1 <= stride <= kernel_size, dilation >= 1,
// kernel_size * dilation <= length. Lengths and view offsets stay below 2^30
// (the FFI decoder refuses others), so the sum or difference of two positions
// fits in an int: all arithmetic here and in tile_box.h is int.
struct Axis {
  int length;
  int kernel_size;
  int stride;
  int dilation;
  bool causal;
};

// Half-open range [start, end).
struct Range {
  int start;
  int end;
};

// A view of one axis: the sub-problem of one shard (jax_gna/_halo/). Windows stay those of
// the whole axis (`Axis::length`); the local query n is the axis position q_offset + n
// (n < q_length) and the local key m is kv_offset + m (m < kv_length). Keys outside the key
// slice or the axis are absent (masked); local queries past the axis' end are padding. The
// whole axis is {0, length, 0, length}. Kernels require (axis_view_error):
//   0 <= q_offset < length, q_length >= 1, kv_length >= 1, and
//   (q_offset - kv_offset) % dilation == 0, so that local dilation group g of the queries and
//   of the keys is the same whole-axis group (a kernel pairs groups by local position).
struct AxisView {
  int q_offset;
  int q_length;
  int kv_offset;
  int kv_length;
};

GNA_HOST_DEVICE AxisView whole_axis(int length) { return AxisView{0, length, 0, length}; }

GNA_HOST_DEVICE int min_int(int a, int b) { return a < b ? a : b; }
GNA_HOST_DEVICE int max_int(int a, int b) { return a > b ? a : b; }

// The broken rule, or nullptr when `view` is a legal view of `axis`.
inline const char* axis_view_error(const Axis& axis, const AxisView& view) {
  if (view.q_length < 1 || view.kv_length < 1) return "view lengths must be >= 1";
  if (view.q_offset < 0 || view.q_offset >= axis.length)
    return "the query slice must start inside the axis (0 <= q_offset < extent)";
  const int phase = (view.q_offset - view.kv_offset) % axis.dilation;
  if (phase != 0)
    return "the key slice must start at the query slice's dilation phase "
           "((q_offset - kv_offset) % dilation == 0)";
  return nullptr;
}

// Number of positions in dilation group `group` (0 <= group < dilation).
GNA_HOST_DEVICE int group_length(int length, int dilation, int group) {
  return (length - group + dilation - 1) / dilation;
}

// Window of the query at group coordinate `iq` inside a group of `lg`
// positions, in group coordinates.
GNA_HOST_DEVICE Range window_in_group(int iq, int lg, int kernel_size, int stride, bool causal) {
  if (causal) {
    // The group leader is the last query of its stride group; the end is the
    // query's own (no future keys).
    const int leader = min_int((iq / stride) * stride + stride - 1, lg - 1);
    return Range{max_int(leader - kernel_size + 1, 0), iq + 1};
  }
  // The leader is the centre (right-centre for even strides) of the stride
  // group; windows shift inward at the borders and never shrink.
  const int leader = min_int((iq / stride) * stride + stride / 2, lg - 1);
  const int start = min_int(max_int(leader - kernel_size / 2, 0), lg - kernel_size);
  return Range{start, start + kernel_size};
}

// Window of query `i` (a full-axis coordinate), in group coordinates.
GNA_HOST_DEVICE Range window(const Axis& axis, int i) {
  const int g = i % axis.dilation;
  const int lg = group_length(axis.length, axis.dilation, g);
  return window_in_group(i / axis.dilation, lg, axis.kernel_size, axis.stride, axis.causal);
}

// Whether key `j` is visible to query `i` along this axis.
GNA_HOST_DEVICE bool visible(const Axis& axis, int i, int j) {
  if (i % axis.dilation != j % axis.dilation) return false;
  const Range w = window(axis, i);
  const int jg = j / axis.dilation;
  return w.start <= jg && jg < w.end;
}

// The keys of local query `i` of `view` (local positions key_first + n * dilation, n < count):
// its window, cut to the key slice and the axis. count 0 for padding queries and for windows
// that miss the slice.
struct ViewKeys {
  int key_first;
  int count;
};

GNA_HOST_DEVICE ViewKeys view_keys(const Axis& axis, const AxisView& view, int i) {
  const int qi = view.q_offset + i;
  if (qi >= axis.length) return ViewKeys{0, 0};
  const int d = axis.dilation, g = qi % d;
  const Range w = window(axis, qi);
  // Group coordinates of the key slice's first and past-the-end positions of group g.
  const int lo = max_int(view.kv_offset, 0),
            hi = min_int(view.kv_offset + view.kv_length, axis.length);
  const int first = max_int(w.start, (lo - g + d - 1) / d);
  const int end = min_int(w.end, hi > g ? (hi - g + d - 1) / d : 0);
  if (end <= first) return ViewKeys{0, 0};
  return ViewKeys{first * d + g - view.kv_offset, end - first};
}

// Inverse neighbourhood: the queries (group coordinates, same group) whose
// windows contain the key at group coordinate `jk` of a group of `lg`
// positions. Window starts and ends are non-decreasing in the query, so the
// set is the contiguous range [first query with end > jk, first query with
// start > jk); both bounds are found by binary search.
GNA_HOST_DEVICE Range inverse_window_in_group(int jk, int lg, int kernel_size, int stride,
                                              bool causal) {
  int lo = 0, hi = lg;  // first iq with end(iq) > jk
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (window_in_group(mid, lg, kernel_size, stride, causal).end > jk)
      hi = mid;
    else
      lo = mid + 1;
  }
  const int first = lo;
  hi = lg;  // first iq with start(iq) > jk
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (window_in_group(mid, lg, kernel_size, stride, causal).start > jk)
      hi = mid;
    else
      lo = mid + 1;
  }
  return Range{first, lo};
}

// Inverse neighbourhood of key `j` (a full-axis coordinate), in group
// coordinates.
GNA_HOST_DEVICE Range inverse_window(const Axis& axis, int j) {
  const int g = j % axis.dilation;
  const int lg = group_length(axis.length, axis.dilation, g);
  return inverse_window_in_group(j / axis.dilation, lg, axis.kernel_size, axis.stride, axis.causal);
}

}  // namespace gna
