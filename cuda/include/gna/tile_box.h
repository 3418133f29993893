// Tile geometry for the fused kernels (docs/design.md, "Tiles: the box rule"):
// which KV tiles a Q tile must visit (forward), which Q tiles visit a KV tile
// (backward), and whether a (Q tile, KV tile) pair is empty, fully visible or
// partial (only partial pairs need the per-element mask).
//
// Host and device, no CUDA or CUTLASS headers. Everything here works in
// dilation-group coordinates: along an axis of extent L and dilation d, group
// g holds Lg = ceil((L - g) / d) positions, and tiles are ranges of (local,
// see GroupAxis) group coordinates. A kernel runs one dilation group per CTA, so a Q tile and its
// KV tiles always belong to the same group.
//
// Why per-axis reasoning is exact: visibility is a product over axes
// (window.h), so a (Q tile, KV tile) pair has a visible pair of tokens iff it
// has one along every axis, and every pair is visible iff that holds along
// every axis. Along one axis, window starts and ends are non-decreasing in the
// query and consecutive windows leave no gap (start(q + 1) <= end(q): a stride
// jump is at most stride <= kernel_size; a causal window holds its query), so
// the windows of queries [qf, ql] cover exactly [start(qf), end(ql)).
#pragma once

#include "gna/window.h"

namespace gna {

enum class TileKind : int {
  kEmpty = 0,    // no visible (valid query, valid key) pair: skip the tile
  kFull = 1,     // every valid query sees every key and no key is padding: no mask
  kPartial = 2,  // anything else: mask per element
};

// One axis of a problem, in the coordinates of one dilation group, seen through a view
// (window.h AxisView): tiles are ranges of *local* group coordinates. The local query n is
// group position q_offset + n, the local key m is group position kv_offset + m. Valid queries
// are [0, q_end), valid keys [kv_begin, kv_end) (see the helpers below); the rest of a tile is
// padding. For the whole axis the offsets are 0 and both lengths are `length`, and every
// function below reduces to the square problem's.
struct GroupAxis {
  int length;  // Lg, positions in the group of the whole axis (windows are computed on it)
  int kernel_size;
  int stride;
  bool causal;
  int q_offset;   // group position of local query 0 (>= 0)
  int q_length;   // local query positions of the group
  int kv_offset;  // group position of local key 0 (may be negative: a halo past the border)
  int kv_length;  // local key positions of the group
};

// The whole-axis group axis of `length` group positions (no view).
GNA_HOST_DEVICE GroupAxis whole_group_axis(int length, int kernel_size, int stride, bool causal) {
  return GroupAxis{length, kernel_size, stride, causal, 0, length, 0, length};
}

GNA_HOST_DEVICE GroupAxis group_axis(const Axis& axis, int group) {
  return whole_group_axis(group_length(axis.length, axis.dilation, group), axis.kernel_size,
                          axis.stride, axis.causal);
}

// Local dilation group `local_group` of `view` (legal: axis_view_error). The local positions
// local_group + n * dilation of the queries and of the keys belong to one whole-axis group g,
// since the two slices start at the same dilation phase.
GNA_HOST_DEVICE GroupAxis group_axis(const Axis& axis, const AxisView& view, int local_group) {
  const int d = axis.dilation;
  const int g = (view.q_offset + local_group) % d;
  // Exact divisions: both offsets + local_group are congruent to g modulo d.
  return GroupAxis{group_length(axis.length, d, g),
                   axis.kernel_size,
                   axis.stride,
                   axis.causal,
                   (view.q_offset + local_group - g) / d,
                   group_length(view.q_length, d, local_group),
                   (view.kv_offset + local_group - g) / d,
                   group_length(view.kv_length, d, local_group)};
}

// Past the last valid local query (local queries past the axis' end are padding).
GNA_HOST_DEVICE int q_end(const GroupAxis& a) { return min_int(a.q_length, a.length - a.q_offset); }
// The valid local keys: inside the key slice and inside the axis.
GNA_HOST_DEVICE int kv_begin(const GroupAxis& a) { return max_int(0, -a.kv_offset); }
GNA_HOST_DEVICE int kv_end(const GroupAxis& a) {
  return min_int(a.kv_length, a.length - a.kv_offset);
}

// Window of local query `iq`, in local key coordinates (not cut to the valid keys).
GNA_HOST_DEVICE Range group_window(const GroupAxis& a, int iq) {
  const Range w = window_in_group(a.q_offset + iq, a.length, a.kernel_size, a.stride, a.causal);
  return Range{w.start - a.kv_offset, w.end - a.kv_offset};
}

GNA_HOST_DEVICE int ceil_div_int(int a, int b) { return (a + b - 1) / b; }

// Number of tiles of `tile` positions that cover an axis of `length`.
GNA_HOST_DEVICE int tile_count(int length, int tile) { return ceil_div_int(length, tile); }

// The KV tiles (indices, tiles of `kv_tile` positions) that the Q tile starting
// at `q_origin` with `q_tile` positions visits along one axis: floor of the
// window start of its first query, ceil of the window end of its last valid
// query, cut to the valid keys (padding queries ask for nothing). Empty
// ({0, 0}) when the Q tile holds no valid query or its windows miss the keys.
GNA_HOST_DEVICE Range kv_tile_range(const GroupAxis& a, int q_origin, int q_tile, int kv_tile) {
  const int q_last = min_int(q_origin + q_tile, q_end(a)) - 1;
  if (q_origin < 0 || q_last < q_origin) return Range{0, 0};
  const int start = max_int(group_window(a, q_origin).start, kv_begin(a));
  const int end = min_int(group_window(a, q_last).end, kv_end(a));
  if (end <= start) return Range{0, 0};
  return Range{start / kv_tile, ceil_div_int(end, kv_tile)};
}

// Classification of one (Q tile, KV tile) pair along one axis. `q_origin`,
// `k_origin` are the first local positions of the tiles (a KV tile may reach
// past the valid keys: those positions are padding).
GNA_HOST_DEVICE TileKind classify_axis(const GroupAxis& a, int q_origin, int q_tile, int k_origin,
                                       int kv_tile) {
  const int q_first = max_int(q_origin, 0);
  const int q_last = min_int(q_origin + q_tile, q_end(a)) - 1;
  const int k_begin = kv_begin(a), k_end = kv_end(a);
  const int k_lo = max_int(k_origin, k_begin);
  const int k_hi = min_int(k_origin + kv_tile, k_end);
  if (q_last < q_first || k_hi <= k_lo) return TileKind::kEmpty;
  const Range first = group_window(a, q_first);
  const Range last = group_window(a, q_last);
  if (last.end <= k_lo || first.start >= k_hi) return TileKind::kEmpty;
  const bool no_padding = k_origin >= k_begin && k_origin + kv_tile <= k_end;
  if (no_padding && last.start <= k_origin && first.end >= k_origin + kv_tile)
    return TileKind::kFull;
  return TileKind::kPartial;
}

// The KV tiles (indices) along one axis that classify_axis calls full for the
// Q tile at `q_origin`: every valid query's window holds the whole tile and the
// tile holds valid keys only. Empty range when there are none.
GNA_HOST_DEVICE Range full_tile_range(const GroupAxis& a, int q_origin, int q_tile, int kv_tile) {
  const int q_first = max_int(q_origin, 0);
  const int q_last = min_int(q_origin + q_tile, q_end(a)) - 1;
  if (q_last < q_first) return Range{0, 0};
  const int lo = ceil_div_int(max_int(group_window(a, q_last).start, kv_begin(a)), kv_tile);
  const int hi = max_int(min_int(group_window(a, q_first).end, kv_end(a)), 0) / kv_tile;
  return lo < hi ? Range{lo, hi} : Range{0, 0};
}

// Backward (KV-stationary): a CTA owns one KV tile of one dilation group and
// visits every Q tile whose forward KV range holds that KV tile, so that dK and
// dV of the tile accumulate on chip and each (Q tile, KV tile) pair is computed
// exactly once, as in the forward. The two functions below are the inverse of
// kv_tile_range and full_tile_range along one axis:
//   Q tile t in q_tile_range(u)      iff  KV tile u in kv_tile_range(t)
//   Q tile t in full_q_tile_range(u) iff  KV tile u in full_tile_range(t)
// (cuda/tests/geometry_test.cc checks both exhaustively against the forward and
// against per-element visibility, for whole axes and views).
//
// Why they are exact: the queries whose windows meet the keys [k_lo, k_hi) are
// {q : end(q) > k_lo and start(q) < k_hi}. Starts and ends are non-decreasing
// in q, so this is a suffix intersected with a prefix, the contiguous range
// [inverse_window(k_lo).start, inverse_window(k_hi - 1).end) (whole-axis group
// positions; a view shifts it to local ones and cuts it to its valid queries).
// A Q tile visits the KV tile iff it holds one of those queries (the forward
// range of a Q tile is exactly the KV tiles met by its valid queries' windows,
// see the top of this file). Cost: two inverse_window binary searches
// (O(log Lg) window evaluations each), once per CTA and axis.

// The Q tiles (indices, tiles of `q_tile` positions) that visit the KV tile
// starting at `kv_origin` with `kv_tile` positions along one axis. Empty
// ({0, 0}) when the KV tile holds no valid key or no valid query sees it.
GNA_HOST_DEVICE Range q_tile_range(const GroupAxis& a, int kv_origin, int kv_tile, int q_tile) {
  const int k_lo = max_int(kv_origin, kv_begin(a));
  const int k_hi = min_int(kv_origin + kv_tile, kv_end(a));
  if (k_hi <= k_lo) return Range{0, 0};
  const int first = max_int(
      inverse_window_in_group(a.kv_offset + k_lo, a.length, a.kernel_size, a.stride, a.causal)
              .start -
          a.q_offset,
      0);
  const int end = min_int(
      inverse_window_in_group(a.kv_offset + k_hi - 1, a.length, a.kernel_size, a.stride, a.causal)
              .end -
          a.q_offset,
      q_end(a));
  if (end <= first) return Range{0, 0};
  return Range{first / q_tile, ceil_div_int(end, q_tile)};
}

// The Q tiles along one axis for which the pair (Q tile, KV tile at
// `kv_origin`) is full (classify_axis): the KV tile holds valid keys only and
// every valid query of the Q tile sees all of it. Those queries are
// {q : end(q) >= kv_origin + kv_tile and start(q) <= kv_origin}, the range
// [inverse_window(last key).start, inverse_window(first key).end), cut to the
// valid queries. A Q tile qualifies when its valid queries lie inside it:
// padding rows of the last Q tile do not count (as in the forward), so when
// the range reaches the end of the valid queries the last Q tile qualifies too.
// Empty range when there are none.
GNA_HOST_DEVICE Range full_q_tile_range(const GroupAxis& a, int kv_origin, int kv_tile,
                                        int q_tile) {
  if (kv_origin < kv_begin(a) || kv_origin + kv_tile > kv_end(a)) return Range{0, 0};
  const int first = inverse_window_in_group(a.kv_offset + kv_origin + kv_tile - 1, a.length,
                                            a.kernel_size, a.stride, a.causal)
                        .start -
                    a.q_offset;
  const int end =
      inverse_window_in_group(a.kv_offset + kv_origin, a.length, a.kernel_size, a.stride, a.causal)
          .end -
      a.q_offset;
  const int last = q_end(a);
  const int lo = ceil_div_int(max_int(first, 0), q_tile);
  const int hi = end >= last ? tile_count(last, q_tile) : max_int(end, 0) / q_tile;
  return lo < hi ? Range{lo, hi} : Range{0, 0};
}

// Combine per-axis kinds: empty if any axis is empty, full if all are full.
GNA_HOST_DEVICE TileKind combine_kinds(TileKind a, TileKind b) {
  if (a == TileKind::kEmpty || b == TileKind::kEmpty) return TileKind::kEmpty;
  if (a == TileKind::kFull && b == TileKind::kFull) return TileKind::kFull;
  return TileKind::kPartial;
}

// A box of tiles over up to three axes: tile indices [begin[a], end[a]).
struct TileBox {
  int begin[3];
  int end[3];

  GNA_HOST_DEVICE int extent(int a) const { return end[a] - begin[a]; }
  GNA_HOST_DEVICE int size() const {
    int n = 1;
    for (int a = 0; a < 3; ++a) n *= max_int(extent(a), 0);
    return n;
  }
  // Box order is last axis fastest: the `i`-th tile as tile indices, and the
  // step from one tile to the next.
  GNA_HOST_DEVICE void tile(int i, int out[3]) const {
    for (int a = 2; a >= 0; --a) {
      const int n = extent(a);
      out[a] = begin[a] + i % n;
      i /= n;
    }
  }
  // The inverse of tile(): the position in box order of tile `t` (inside the
  // box). The backward's deterministic dQ order adds the partials of a Q tile
  // in this order of their KV tiles.
  GNA_HOST_DEVICE int index(const int t[3]) const {
    int i = 0;
    for (int a = 0; a < 3; ++a) i = i * extent(a) + (t[a] - begin[a]);
    return i;
  }
  GNA_HOST_DEVICE void next(int t[3]) const {
    for (int a = 2; a >= 0; --a) {
      if (++t[a] < end[a]) return;
      t[a] = begin[a];
    }
  }
  // The step back: prev(next(t)) == t inside the box.
  GNA_HOST_DEVICE void prev(int t[3]) const {
    for (int a = 2; a >= 0; --a) {
      if (--t[a] >= begin[a]) return;
      t[a] = end[a] - 1;
    }
  }
};

// The KV-tile box of a Q tile over `rank` axes (axes past `rank` get the
// trivial box {0, 1}). `q_tile_index` are Q tile indices per axis.
GNA_HOST_DEVICE TileBox kv_tile_box(const GroupAxis* axes, int rank, const int* q_tile_index,
                                    const int* q_tile, const int* kv_tile) {
  TileBox box{{0, 0, 0}, {1, 1, 1}};
  for (int a = 0; a < rank; ++a) {
    const Range r = kv_tile_range(axes[a], q_tile_index[a] * q_tile[a], q_tile[a], kv_tile[a]);
    box.begin[a] = r.start;
    box.end[a] = r.end;
  }
  return box;
}

// The Q-tile box that visits the KV tile `kv_tile_index` (KV tile indices per
// axis) over `rank` axes, the backward's counterpart of kv_tile_box: Q tile t
// is in it iff kv_tile_box(t) holds the KV tile. Axes past `rank` get {0, 1}.
GNA_HOST_DEVICE TileBox q_tile_box(const GroupAxis* axes, int rank, const int* kv_tile_index,
                                   const int* q_tile, const int* kv_tile) {
  TileBox box{{0, 0, 0}, {1, 1, 1}};
  for (int a = 0; a < rank; ++a) {
    const Range r = q_tile_range(axes[a], kv_tile_index[a] * kv_tile[a], kv_tile[a], q_tile[a]);
    box.begin[a] = r.start;
    box.end[a] = r.end;
  }
  return box;
}

// Classification of the pair (Q tile `q_tile_index`, KV tile `kv_tile_index`)
// over `rank` axes.
GNA_HOST_DEVICE TileKind classify_tile(const GroupAxis* axes, int rank, const int* q_tile_index,
                                       const int* q_tile, const int* kv_tile_index,
                                       const int* kv_tile) {
  TileKind kind = TileKind::kFull;
  for (int a = 0; a < rank; ++a) {
    kind = combine_kinds(kind, classify_axis(axes[a], q_tile_index[a] * q_tile[a], q_tile[a],
                                             kv_tile_index[a] * kv_tile[a], kv_tile[a]));
  }
  return kind;
}

}  // namespace gna
