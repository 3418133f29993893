// What the fused forward kernels of every architecture (sm90, sm100) share on the host and the
// device: a tile configuration, the runtime parameters of one launch (built on the host from a
// Problem) and the decoding of a work item (on the device). Plain C++ (no CUDA or CUTLASS
// headers), so host dispatchers and host tests (cuda/sm100/tests/fwd_work_cases.cc) include it.
//
// The kernels work on three "kernel axes": a rank-r problem is left-padded with trivial axes
// (extent 1), so problem axis i is kernel axis 3 - r + i. Tokens of a tile are row-major over
// the kernel axes (last axis fastest), which is the order a TMA box over the user's
// [.., X1, X2, X3, heads, D] layout delivers.
#pragma once

#include <cstdint>

#include "dev_knobs.h"
#include "gna/problem.h"
#include "gna/tile_box.h"
#include "kernel_table.h"
#include "tile_loads.h"

// Unrolled on the device; plain loops for a host compiler (which does not know the pragma).
#if defined(__CUDACC__)
#define GNA_UNROLL _Pragma("unroll")
#else
#define GNA_UNROLL
#endif

namespace gna {

struct FwdTileConfig {
  int q[3];    // Q tile per kernel axis (128 tokens in every configuration so far)
  int kv[3];   // KV tile per kernel axis
  int stages;  // K and V pipeline stages

  constexpr int q_size() const { return q[0] * q[1] * q[2]; }
  constexpr int kv_size() const { return kv[0] * kv[1] * kv[2]; }
};

// The compiled configurations of one (rank, head dim) of one architecture: at most
// kMaxFwdTileConfigs, the default (what an unset tile request runs) first.
// kMaxFwdTileConfigs: kernel_table.h (generated from the kernel table).

struct FwdTileConfigs {
  int count;
  FwdTileConfig config[kMaxFwdTileConfigs];
};

// Runtime parameters of one launch, in kernel axes (trivial axes: extent 1,
// window 1, stride 1, dilation 1, not causal).
struct FwdParams {
  int extent[3];  // the whole axes (windows); the arrays hold the view's slices below
  // The view (gna/problem.h): q/out/lse hold q_extent positions from q_offset on, k/v hold
  // kv_extent from kv_offset on. Whole axes: offsets 0, both extents = extent.
  int q_offset[3];
  int q_extent[3];
  int kv_offset[3];
  int kv_extent[3];
  int kernel_size[3];
  int stride[3];
  int dilation[3];
  int causal[3];
  int q_tiles[3];     // Q tiles per axis, for dilation group 0 (the longest)
  int num_q_tiles;    // product of q_tiles
  int tile_order[3];  // axes from fastest to slowest in the CTA order (L2 reuse)
  int num_groups;     // product of dilations
  int num_items;      // work items: num_q_tiles * num_groups * heads * batch
  int heads;
  int kv_group;  // heads / kv_heads
  int batch;
  float scale_log2;    // softmax scale * log2(e)
  int prescale;        // 1: multiply S by scale_log2 before the max (scale <= 0)
  TileLoads q_loads;   // how a Q tile is loaded (tile_loads.h)
  TileLoads kv_loads;  // how a KV tile is loaded
  // The inputs as arrays (heads-last, batch-major over the view's slices), read only where a
  // row is recomputed key by key (exact_row.h); the tiles come through the tensor maps.
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  // FP8 inputs (DType::kE4M3): [3][heads] fp32, the q, k and v descales of each query head
  // (k and v: of its key/value head). nullptr for 16-bit inputs.
  const float* descale;
};

// One work item: a Q tile of one head, one batch entry and one dilation group, with the box of
// KV tiles it visits (every role of a CTA decodes it identically from the item index).
struct FwdWork {
  int q_tile[3];
  int group[3];
  int head;
  int batch;
  GroupAxis axes[3];
  TileBox box;
  Range full[3];  // per axis, the KV tiles that need no mask (tile_box.h)
  bool valid;     // false: the Q tile holds no query of its dilation group
};

// Axis `a` of local dilation group `group` of a launch (FwdParams or BwdParams: the same
// per-axis fields), in group coordinates (tile_box.h): of the launch's view with kView, else of
// the whole axis (the view fields are then ignored). Kernels are compiled both ways: without a
// view the view arithmetic folds away at compile time (kept at run time, it made the sm90
// forward ~4% slower on whole axes).
template <bool kView, class Params>
GNA_HOST_DEVICE GroupAxis launch_group_axis(const Params& p, int a, int group) {
  const Axis axis{p.extent[a], p.kernel_size[a], p.stride[a], p.dilation[a], p.causal[a] != 0};
  if constexpr (kView)
    return group_axis(axis, AxisView{p.q_offset[a], p.q_extent[a], p.kv_offset[a], p.kv_extent[a]},
                      group);
  else
    return group_axis(axis, group);
}

// Whether the launch (FwdParams or BwdParams) is a view (needs the kernels compiled with kView).
template <class Params>
bool has_view(const Params& p) {
  bool view = false;
  for (int a = 0; a < 3; ++a)
    view |= p.q_offset[a] != 0 || p.kv_offset[a] != 0 || p.q_extent[a] != p.extent[a] ||
            p.kv_extent[a] != p.extent[a];
  return view;
}

// Tile `index` of a grid of `tiles` tiles per kernel axis, counted with axis order[0] fastest,
// then order[1], order[2]; written with selects so that `tile` stays in registers.
GNA_HOST_DEVICE void decode_tile(int index, const int tiles[3], const int order[3], int tile[3]) {
  GNA_UNROLL
  for (int k = 0; k < 3; ++k) {
    const int a = order[k];
    const int n = a == 0 ? tiles[0] : a == 1 ? tiles[1] : tiles[2];
    const int v = index % n;
    index /= n;
    if (a == 0) tile[0] = v;
    if (a == 1) tile[1] = v;
    if (a == 2) tile[2] = v;
  }
}

// Item order: Q tiles fastest (in p.tile_order), then dilation groups, heads, batch.
// `q_tile` / `kv_tile` are the kernel's tile shapes (kernel axes); kView as launch_group_axis.
template <bool kView = false>
GNA_HOST_DEVICE FwdWork decode_fwd_work(const FwdParams& p, int item, const int q_tile[3],
                                        const int kv_tile[3]) {
  FwdWork w;
  int i = item;
  const int qt = i % p.num_q_tiles;
  i /= p.num_q_tiles;
  int gi = i % p.num_groups;
  i /= p.num_groups;
  w.head = i % p.heads;
  w.batch = i / p.heads;
  decode_tile(qt, p.q_tiles, p.tile_order, w.q_tile);
  GNA_UNROLL
  for (int a = 2; a >= 0; --a) {
    w.group[a] = gi % p.dilation[a];
    gi /= p.dilation[a];
  }
  w.valid = true;
  for (int a = 0; a < 3; ++a) {
    w.axes[a] = launch_group_axis<kView>(p, a, w.group[a]);
    w.valid &= w.q_tile[a] * q_tile[a] < q_end(w.axes[a]);
  }
  w.box = kv_tile_box(w.axes, 3, w.q_tile, q_tile, kv_tile);
  for (int a = 0; a < 3; ++a)
    w.full[a] = full_tile_range(w.axes[a], w.q_tile[a] * q_tile[a], q_tile[a], kv_tile[a]);
  return w;
}

// The keys of the query at offsets `o` inside the Q tile (`q_tile` positions per axis) of `w`:
// per axis its window, cut to the valid keys (a view's key slice; whole axes: no cut), as local
// group key positions [lo, lo + len). A row past the valid queries (padding, never stored) takes
// the last valid query's window.
GNA_HOST_DEVICE void row_window(const FwdWork& w, const int q_tile[3], const int o[3], int lo[3],
                                int len[3]) {
  GNA_UNROLL
  for (int a = 0; a < 3; ++a) {
    const int q = min_int(w.q_tile[a] * q_tile[a] + o[a], q_end(w.axes[a]) - 1);
    const Range win = group_window(w.axes[a], q);
    lo[a] = max_int(win.start, kv_begin(w.axes[a]));
    len[a] = max_int(min_int(win.end, kv_end(w.axes[a])) - lo[a], 0);
  }
}

// The KV tiles of work item `w`'s box, one after another in box order (last axis fastest, as
// the producers load them): next() gives a tile's origin (group positions of a `kv_tile`-shaped
// tile) and whether it is partial (outside w.full along an axis: masked per element).
struct KvTileWalk {
  int tile[3];

  GNA_HOST_DEVICE explicit KvTileWalk(const FwdWork& w)
      : tile{w.box.begin[0], w.box.begin[1], w.box.begin[2]} {}
  GNA_HOST_DEVICE bool next(const FwdWork& w, const int kv_tile[3], int origin[3]) {
    bool full = true;
    GNA_UNROLL
    for (int a = 0; a < 3; ++a) {
      origin[a] = tile[a] * kv_tile[a];
      full &= w.full[a].start <= tile[a] && tile[a] < w.full[a].end;
    }
    w.box.next(tile);
    return !full;
  }
};

// Token `r` of a tile of shape `tile` (row-major over the kernel axes, last axis fastest) as
// per-axis offsets. The kernels pass compile-time shapes (their divisions fold away).
GNA_HOST_DEVICE void tile_offsets(const int tile[3], int r, int o[3]) {
  o[0] = r / (tile[1] * tile[2]);
  o[1] = (r / tile[2]) % tile[1];
  o[2] = r % tile[2];
}

// Token index in the q/out/lse arrays (batch-major over the view's query slice) of row `row` of
// the Q tile (shape `q_tile`) of work item `w`, or -1 when the row holds no query of its group
// (padding: never stored).
GNA_HOST_DEVICE int64_t q_row_token(const FwdParams& p, const FwdWork& w, const int q_tile[3],
                                    int row) {
  int o[3];
  tile_offsets(q_tile, row, o);
  int64_t token = w.batch;
  GNA_UNROLL
  for (int a = 0; a < 3; ++a) {
    const int q = w.q_tile[a] * q_tile[a] + o[a];
    if (q >= q_end(w.axes[a])) return -1;
    token = token * p.q_extent[a] + (w.group[a] + p.dilation[a] * q);
  }
  return token;
}

// The scores' scale (log2 units) and the values' of query head `head`: an FP8 launch
// (FwdParams::descale set) multiplies the scores by the head's q and k descales and the values by
// its v descale; any other, scale_log2 and 1.
struct HeadScales {
  float scale_log2;
  float v_scale;
};
GNA_HOST_DEVICE HeadScales head_scales(const FwdParams& p, int head) {
  if (p.descale == nullptr) return {p.scale_log2, 1.f};
  return {p.scale_log2 * (p.descale[head] * p.descale[p.heads + head]),
          p.descale[2 * p.heads + head]};
}

// Host only from here: what a dispatcher derives from a Problem.

// The problem in kernel axes: a rank-r problem is left-padded with trivial
// axes, so problem axis i is kernel axis 3 - r + i (fwd_params.h).
struct KernelAxes {
  int extent[3], kernel_size[3], stride[3], dilation[3], causal[3];
  int q_offset[3], q_extent[3], kv_offset[3], kv_extent[3];  // the view (gna/problem.h)
};

inline KernelAxes kernel_axes(const Problem& p) {
  KernelAxes k;
  for (int a = 0; a < 3; ++a) {
    const int i = a - (3 - p.rank);
    const bool real = i >= 0;
    k.extent[a] = real ? p.extent[i] : 1;
    k.kernel_size[a] = real ? p.kernel_size[i] : 1;
    k.stride[a] = real ? p.stride[i] : 1;
    k.dilation[a] = real ? p.dilation[i] : 1;
    k.causal[a] = real && p.causal[i] ? 1 : 0;
    k.q_offset[a] = real ? p.q_offset[i] : 0;
    k.q_extent[a] = real ? p.q_length(i) : 1;
    k.kv_offset[a] = real ? p.kv_offset[i] : 0;
    k.kv_extent[a] = real ? p.kv_length(i) : 1;
  }
  return k;
}

// How the Q-side tiles (q, out; the backward's dO too) and the KV-side tiles (k, v) of `tiles`
// are loaded from the arrays of `p` (tile_loads.h): nullptr, or why no TMA box layout can.
inline const char* plan_loads(const Problem& p, const KernelAxes& ax, const FwdTileConfig& tiles,
                              TileLoads* q, TileLoads* kv) {
  if (const char* reason = plan_tile_loads(tiles.q, ax.dilation, ax.q_extent, p.batch, q))
    return reason;
  return plan_tile_loads(tiles.kv, ax.dilation, ax.kv_extent, p.batch, kv);
}

// The CTA order over Q tiles (axes from fastest to slowest), unless a development knob sets it:
// first the axis whose window spans the largest part of its extent, ties to the later axis. The
// backward's default mode orders its KV tiles by the same rule (bwd_set_deterministic).
// Consecutive CTAs run at once, and along such an axis neighbouring Q tiles share most of their
// KV box, so a wave's KV stays in L2: a video model's window often spans most or all of the
// frames (on an H100, T fastest ran HunyuanVideo GNA 2% and Cosmos GNA 3% faster than the last
// axis fastest; FLUX-4K's square window keeps the last axis fastest, and whole-axis windows tie).
struct CtaOrder {
  int axes[3];
};
inline constexpr CtaOrder kRowMajorOrder = {{2, 1, 0}};  // the last axis fastest
// `ax`: KernelAxes or BwdParams (the same per-axis fields).
template <class Axes>
CtaOrder cta_tile_order(const Axes& ax) {
  CtaOrder o = kRowMajorOrder;
  // Span of axis a's window over its extent, compared as cross products (exact integers); an
  // axis of one token (a lower rank's padding) has one tile and is never wider.
  auto wider = [&](int a, int b) {
    return ax.extent[a] > 1 && int64_t(ax.kernel_size[a]) * ax.dilation[a] * ax.extent[b] >
                                   int64_t(ax.kernel_size[b]) * ax.dilation[b] * ax.extent[a];
  };
  // Insertion sort from row-major (2, 1, 0): strictly wider axes move ahead, ties keep the
  // later axis first.
  for (int i = 1; i < 3; ++i)
    for (int j = i; j > 0 && wider(o.axes[j], o.axes[j - 1]); --j) {
      const int t = o.axes[j];
      o.axes[j] = o.axes[j - 1];
      o.axes[j - 1] = t;
    }
  return o;
}

// The launch parameters of `p` with tiles `tiles` (kernel axes); num_items is left 0 when the
// item count does not fit an int or no load plan exists (the caller refuses the launch).
inline FwdParams fwd_params(const Problem& p, const KernelAxes& ax, const FwdTileConfig& tiles,
                            void* out, float* lse) {
  const int* q_tile = tiles.q;
  FwdParams fp = {};
  fp.num_q_tiles = 1;
  fp.num_groups = 1;
  for (int a = 0; a < 3; ++a) {
    fp.extent[a] = ax.extent[a];
    fp.kernel_size[a] = ax.kernel_size[a];
    fp.stride[a] = ax.stride[a];
    fp.dilation[a] = ax.dilation[a];
    fp.causal[a] = ax.causal[a];
    fp.q_offset[a] = ax.q_offset[a];
    fp.q_extent[a] = ax.q_extent[a];
    fp.kv_offset[a] = ax.kv_offset[a];
    fp.kv_extent[a] = ax.kv_extent[a];
    // Q tiles cover the local query positions; local group 0 is the longest.
    const int lg0 = (ax.q_extent[a] + ax.dilation[a] - 1) / ax.dilation[a];
    fp.q_tiles[a] = (lg0 + q_tile[a] - 1) / q_tile[a];
    fp.num_q_tiles *= fp.q_tiles[a];
    fp.num_groups *= ax.dilation[a];
  }
  const int* knob = dev_knobs::fwd_tile_order();
  const CtaOrder order = cta_tile_order(ax);
  for (int k = 0; k < 3; ++k) fp.tile_order[k] = knob ? knob[k] : order.axes[k];
  fp.heads = p.heads;
  fp.kv_group = p.heads / p.kv_heads;
  fp.batch = int(p.batch);
  fp.scale_log2 = p.scale * 1.4426950408889634f;
  fp.prescale = p.scale > 0.f ? 0 : 1;
  fp.out = out;
  fp.lse = lse;
  const int64_t items = int64_t(fp.num_q_tiles) * fp.num_groups * p.heads * p.batch;
  const bool loads = plan_loads(p, ax, tiles, &fp.q_loads, &fp.kv_loads) == nullptr;
  fp.num_items = items < (int64_t(1) << 31) && loads ? int(items) : 0;
  return fp;
}

}  // namespace gna
