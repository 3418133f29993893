// How one token tile of one tensor travels from the user's heads-last array to shared memory:
// the TMA boxes a kernel issues for it, and the 5-D tensor maps they read. Every architecture's
// kernels (cuda/sm90, cuda/sm100) and host dispatchers share it. Plain C++ (no CUDA or CUTLASS
// headers): the host test cuda/tests/tile_loads_cases.cc emulates the TMA unit on it.
//
// A tile holds T0 x T1 x T2 positions of one dilation group (kernel axes, tile_box.h), i.e.
// the array positions g_a + d_a * x_a. Shared memory holds the tile's tokens row-major (last
// axis fastest) in chunks of the head dim, and a box lands a run of consecutive tokens. Each
// kernel axis a is described to the TMA unit in one of three ways:
//   - strided: one map dimension over the axis, element stride d_a, boxes of `rows[a]`
//     positions spanning rows[a] * d_a <= 256 array positions (d_a <= 8, TMA limits);
//   - split: two map dimensions, the dilation group (stride: one position) and the position in
//     the group (stride: d_a positions), so a box of the whole tile spans no more than the tile
//     whatever the dilation. Groups have ceil or floor(E_a / d_a) positions, so the tensor has
//     two maps that differ only there (map 0 for the groups below E_a % d_a); out-of-range
//     positions then load zeros, never another group's tokens;
//   - rows (d_a > 8, or a box that would span too much): one position per box along the axis.
// The batch is its own map dimension, so a box never crosses into the next batch entry (its
// tokens would enter masked products, and 0 x Inf is NaN). A map has at most 5 dimensions:
// head x head dim, one or two per kernel axis, and the batch; with a split axis the batch is
// folded into kernel axis 0's dimension instead (rank 3: boxes of one position along axis 0,
// and positions past the axis load from a coordinate past the whole folded dimension: zeros).
#pragma once

#include <cstdint>

#include "gna/window.h"  // GNA_HOST_DEVICE

namespace gna {

inline constexpr int kTmaMaxBox = 256;          // positions a box may span per dimension
inline constexpr int kTmaMaxElementStride = 8;  // largest traversal stride of a dimension
inline constexpr int kTmaMaxDims = 5;           // dimensions of a tiled tensor map
inline constexpr int kTileBoxAlignTokens = 8;   // a box starts on a swizzle atom (8 rows)

struct TileLoads {
  int rows[3];    // positions per box along each kernel axis (each divides the tile)
  int boxes[3];   // boxes per tile along each kernel axis (tile / rows: no division on the GPU)
  int split;      // the kernel axis (1 or 2) described by (group, position) dimensions, or -1
  int split_rem;  // that axis's array extent % dilation: groups below it read map 0, others map 1
  int fold;       // 1: the batch is folded into kernel axis 0's dimension (rows[0] is then 1)
  int extent0;    // the array's extent along kernel axis 0
  int fold_oob;   // with fold: a coordinate past the folded dimension (batch * extent0)
};

// Boxes per tile.
GNA_HOST_DEVICE int tile_boxes(const TileLoads& l) { return l.boxes[0] * l.boxes[1] * l.boxes[2]; }

// Calls issue(map, token, c1, c2, c3, c4) for every box of the T0 x T1 x T2 tile (the tile `l`
// was planned for) at group positions
// `origin` (the tile's first position per kernel axis) of dilation group `group`, batch entry
// `batch`: `map` is 0 or 1 (the tensor's two maps, see above), `token` the tile row where the
// box lands, c1..c4 the box's coordinates in map dimensions 1..4 (dimension 0, head x head
// dim, is the caller's: head * head_dim + chunk offset). Selects rather than an indexed array,
// so that a kernel's producer thread keeps them in registers. The box counts come from the plan
// (runtime integer divisions cost a producer thread ~20 instructions each), and a caller that
// loads several tensors of the same tile issues them all from one call (one coordinate
// computation per box).
template <int T0, int T1, int T2, class Issue>
GNA_HOST_DEVICE void for_each_tile_box(const TileLoads& l, const int dilation[3],
                                       const int group[3], int batch, const int origin[3],
                                       Issue&& issue) {
  const int split_group = l.split == 2 ? group[2] : group[1];  // (no indexing: registers)
  const int map = l.split >= 0 && split_group >= l.split_rem ? 1 : 0;
  for (int i0 = 0; i0 < l.boxes[0]; ++i0) {
    for (int i1 = 0; i1 < l.boxes[1]; ++i1) {
      for (int i2 = 0; i2 < l.boxes[2]; ++i2) {
        const int o0 = i0 * l.rows[0], o1 = i1 * l.rows[1], o2 = i2 * l.rows[2];
        const int x0 = origin[0] + o0, x1 = origin[1] + o1, x2 = origin[2] + o2;
        const int p0 = group[0] + dilation[0] * x0;  // array positions
        const int p1 = group[1] + dilation[1] * x1;
        const int p2 = group[2] + dilation[2] * x2;
        const int f0 = p0 < l.extent0 ? batch * l.extent0 + p0 : l.fold_oob;
        // Dimensions 1..4, innermost first (tile_map_dims): axis 2, axis 1, axis 0, batch;
        // a split axis takes two (group, position), the folded batch none.
        const int c1 = l.split == 2 ? group[2] : p2;
        const int c2 = l.split == 2 ? x2 : l.split == 1 ? group[1] : p1;
        const int c3 = l.split == 2 ? p1 : l.split == 1 ? x1 : l.fold ? f0 : p0;
        const int c4 = l.split >= 1 ? f0 : l.fold ? 0 : batch;
        issue(map, (o0 * T1 + o1) * T2 + o2, c1, c2, c3, c4);
      }
    }
  }
}

// Host only from here: the plan and the maps' dimensions.

// Positions per box along an axis described by one strided dimension: the whole tile, or the
// largest power-of-two part of it whose box spans at most kTmaMaxBox positions (tile sizes are
// powers of two); 1 (a box per position) when the dilation exceeds the element-stride limit.
inline int strided_rows(int tile, int dilation) {
  if (dilation > kTmaMaxElementStride) return 1;
  int rows = tile;
  while (rows > 1 && rows * dilation > kTmaMaxBox) rows /= 2;
  return rows;
}

// Shrinks `rows` so that every box is a run of consecutive tile rows: an axis may hold more
// than one position per box only when every inner axis is whole.
inline void make_boxes_contiguous(int rows[3], const int tile[3]) {
  bool inner_whole = true;
  for (int a = 2; a >= 0; --a) {
    if (!inner_whole) rows[a] = 1;
    inner_whole = inner_whole && rows[a] == tile[a];
  }
}

// The loads of a tile of `tile` positions (kernel axes) over an array of `extent` positions
// (kernel axes; the trivial axes of a rank < 3 problem have extent 1) and `batch` entries:
// the plan with the fewest boxes. nullptr and *out, or why no plan exists.
inline const char* plan_tile_loads(const int tile[3], const int dilation[3], const int extent[3],
                                   int64_t batch, TileLoads* out) {
  TileLoads best{};
  int best_boxes = 0;
  // split -1: no axis split; fold 0: the batch has its own dimension (a split axis takes it,
  // so the batch folds into axis 0, which therefore is never split).
  for (int split = -1; split < 3; ++split) {
    if (split == 0) continue;
    for (int fold = split >= 0 ? 1 : 0; fold < 2; ++fold) {
      TileLoads l{};
      l.split = split;
      l.fold = fold;
      for (int a = 0; a < 3; ++a) l.rows[a] = strided_rows(tile[a], dilation[a]);
      if (split >= 0) {
        if (l.rows[split] == tile[split]) continue;  // splitting buys nothing here
        l.rows[split] = tile[split];
        l.split_rem = extent[split] % dilation[split];
      }
      if (fold) l.rows[0] = 1;
      make_boxes_contiguous(l.rows, tile);
      if ((l.rows[0] * l.rows[1] * l.rows[2]) % kTileBoxAlignTokens != 0) continue;
      for (int a = 0; a < 3; ++a) l.boxes[a] = tile[a] / l.rows[a];
      l.extent0 = extent[0];
      l.fold_oob = int(batch * extent[0]);
      const int boxes = tile_boxes(l);
      if (best_boxes == 0 || boxes < best_boxes) best = l, best_boxes = boxes;
    }
  }
  if (best_boxes == 0)
    return "no TMA box layout loads these tiles with this dilation (a box must hold a multiple "
           "of 8 consecutive tile rows)";
  *out = best;
  return nullptr;
}

// One dimension of a tiled tensor map (as cuTensorMapEncodeTiled takes it).
struct MapDim {
  uint64_t extent;     // positions
  uint64_t stride;     // bytes from one position to the next (unused for dimension 0)
  uint32_t box;        // positions a box spans
  uint32_t elem_step;  // traversal stride: a box loads box / elem_step positions
};

// The 5 dimensions of map `map` (0 or 1, see the top) of a tensor [batch, E0, E1, E2, heads,
// head_dim] of `elem_bytes`-byte elements loaded by `l` in chunks of `chunk` head-dim elements.
inline void tile_map_dims(const TileLoads& l, int map, const int dilation[3], const int extent[3],
                          int64_t batch, int heads, int head_dim, int chunk, int elem_bytes,
                          MapDim dims[kTmaMaxDims]) {
  uint64_t row[3];  // bytes between consecutive positions along each kernel axis
  row[2] = uint64_t(elem_bytes) * heads * head_dim;
  row[1] = row[2] * extent[2];
  row[0] = row[1] * extent[1];
  const uint64_t entry = row[0] * extent[0];  // bytes of one batch entry
  int k = 0;
  dims[k++] = {uint64_t(heads) * head_dim, uint64_t(elem_bytes), uint32_t(chunk), 1};
  for (int a = 2; a >= 0; --a) {
    const uint64_t d = uint64_t(dilation[a]);
    if (a == l.split) {
      // Map 0 serves the groups with one more position than the others; an array shorter
      // than the dilation has only those (the rest are empty: past map 0's groups, zeros).
      const uint64_t whole = uint64_t(extent[a]) / d;
      const bool longer = l.split_rem > 0 && (map == 0 || whole == 0);
      dims[k++] = {longer ? uint64_t(l.split_rem) : d, row[a], 1, 1};
      dims[k++] = {longer ? whole + 1 : whole, row[a] * d, uint32_t(l.rows[a]), 1};
    } else if (a == 0 && l.fold) {
      dims[k++] = {uint64_t(batch) * extent[0], row[0], 1, 1};
    } else {
      const uint32_t step = l.rows[a] > 1 ? uint32_t(d) : 1;
      dims[k++] = {uint64_t(extent[a]), row[a], uint32_t(l.rows[a]) * step, step};
    }
  }
  if (!l.fold) dims[k++] = {uint64_t(batch), entry, 1, 1};
  while (k < kTmaMaxDims) dims[k++] = {1, entry * uint64_t(batch), 1, 1};
}

}  // namespace gna
