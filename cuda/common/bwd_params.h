// What the backward kernels of every architecture (sm90, sm100) share on the host and the
// device: the runtime parameters of one launch, the row-statistics slots and workspace layout
// (built on the host from a Problem), and the decoding of a work item. Plain C++ (no CUDA or
// CUTLASS headers), so host dispatchers and host tests (cuda/sm100/tests/bwd_work_cases.cc)
// include it. Kernel axes as in fwd_params.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fwd_params.h"

namespace gna {

// Runtime parameters of one launch, in kernel axes (trivial axes: extent 1, window 1, stride
// 1, dilation 1, not causal).
//
// Row statistics (`row_lse2`, `row_delta`) are laid out per Q tile so that the main kernel
// reads a tile's values as one contiguous block: slot
//   (((batch * heads + head) * num_groups + group) * num_q_tiles + q_tile) * q_tile_size + row,
// with Q tiles counted row-major on group 0 (the longest); slots of rows outside their group
// hold lse2 = +inf (P = 0) and delta = 0. dQ is accumulated in fp32 per slot (D floats each),
// in an order inside a Q tile's block that each architecture picks (sm90/dq_order.h; sm100:
// row-major) and the conversion pass reads back.
//
// Deterministic mode may split the accumulator into `dq_buffers` copies: the KV tiles adding
// into one Q tile take turns in a fixed order (their order in the Q tile's KV box), turn `t`
// adds into copy `t % dq_buffers` after turn `t - dq_buffers`, and the conversion pass sums the
// copies in order. With one copy a CTA waits for the turn just before its own, whose CTA reaches
// the Q tile only one visit earlier; with two it waits for the one two turns back, so the
// latency of an add (its completion, the semaphore's round trip) hides behind two visits.
struct BwdParams {
  int extent[3];  // the whole axes (windows); the arrays hold the view's slices below
  // The view (gna/problem.h): q/dout/out/lse/dq hold q_extent positions from q_offset on,
  // k/v/dk/dv hold kv_extent from kv_offset on. Whole axes: offsets 0, extents = extent.
  int q_offset[3];
  int q_extent[3];
  int kv_offset[3];
  int kv_extent[3];
  int kernel_size[3];
  int stride[3];
  int dilation[3];
  int causal[3];
  int q_tile[3];   // Q tile shape, for the passes
  int q_tiles[3];  // Q tiles per axis, local group 0
  int num_q_tiles;
  int kv_tiles[3];  // KV tiles per axis, local group 0
  int num_kv_tiles;
  int tile_order[3];  // axes from fastest to slowest in the CTA order (bwd_set_deterministic)
  int num_groups;     // product of dilations
  int heads;
  int kv_heads;
  int kv_group;  // heads / kv_heads
  int batch;
  int head_dim;
  float scale;         // softmax scale
  float scale_log2;    // scale * log2(e)
  int deterministic;   // set with bwd_set_deterministic (it fixes tile_order too)
  TileLoads q_loads;   // how a Q (and dO) tile is loaded (tile_loads.h)
  TileLoads kv_loads;  // how a KV tile is loaded
  // Inputs of the pre-pass.
  const void* out;
  const void* dout;
  const float* lse;
  const float* dlse;
  // Workspace.
  float* row_lse2;    // lse * log2(e) per row-statistics slot
  float* row_delta;   // rowsum(dO * O) - dlse per slot
  float* dq_accum;    // fp32 [dq_buffers, num_slots, D] in blocks per Q tile, zeroed first
  int* dq_semaphore;  // [dq_buffers, batch, head, group, Q tile]: deterministic turn counters
  int64_t num_slots;
  int dq_buffers;  // copies of the dQ accumulator (1, or more in deterministic mode)
  // Results.
  void* dq;
  void* dk;
  void* dv;
};

// Group axes and has_view: launch_group_axis / has_view (fwd_params.h) take BwdParams too; the
// main kernels are compiled with and without views, the passes take the view at run time.

// One work item of a KV-stationary backward: a KV tile of one KV head, one batch entry and one
// dilation group, the box of Q tiles that visit it and the Q tiles whose pair with it needs no
// mask (tile_box.h).
struct BwdWork {
  int kv_tile[3];
  int group[3];
  int kv_head;
  int batch;
  GroupAxis axes[3];
  TileBox box;
  Range full[3];
};

// Item order: KV tiles fastest (in p.tile_order), then dilation groups, KV heads, batch, so that
// the CTAs resident together share Q and dO tiles in L2. The default mode orders the KV tiles
// by the forward's rule (the widest window first: there neighbouring KV tiles share most of
// their Q box). Deterministic mode counts them row-major (bwd_set_deterministic): a CTA waits
// for the KV tiles before it in its Q tiles' KV boxes (row-major, same batch entry, head and
// group), which then have lower block indices, so they started first, and walking the Q boxes
// backwards they reach a shared Q tile earlier. (An order with heads fastest, tried for fewer
// waits, cost far more in L2 misses: every resident CTA streamed a different head.)
template <bool kView = false>
GNA_HOST_DEVICE BwdWork decode_bwd_work(const BwdParams& p, int item, const int q_tile[3],
                                        const int kv_tile[3]) {
  BwdWork w;
  int i = item;
  const int kt = i % p.num_kv_tiles;
  i /= p.num_kv_tiles;
  int gi = i % p.num_groups;
  i /= p.num_groups;
  w.kv_head = i % p.kv_heads;
  w.batch = i / p.kv_heads;
  decode_tile(kt, p.kv_tiles, p.tile_order, w.kv_tile);
  GNA_UNROLL
  for (int a = 2; a >= 0; --a) {
    w.group[a] = gi % p.dilation[a];
    gi /= p.dilation[a];
  }
  for (int a = 0; a < 3; ++a) w.axes[a] = launch_group_axis<kView>(p, a, w.group[a]);
  w.box = q_tile_box(w.axes, 3, w.kv_tile, q_tile, kv_tile);
  for (int a = 0; a < 3; ++a)
    w.full[a] = full_q_tile_range(w.axes[a], w.kv_tile[a] * kv_tile[a], kv_tile[a], q_tile[a]);
  return w;
}

// First row-statistics slot of Q tile `t` of query head `head` of work item `w`.
GNA_HOST_DEVICE int64_t bwd_stat_slot(const BwdParams& p, const BwdWork& w, int head,
                                      const int t[3]) {
  int gi = 0;
  for (int a = 0; a < 3; ++a) gi = gi * p.dilation[a] + w.group[a];
  const int qt = (t[0] * p.q_tiles[1] + t[1]) * p.q_tiles[2] + t[2];
  const int q_size = p.q_tile[0] * p.q_tile[1] * p.q_tile[2];
  return ((int64_t(w.batch * p.heads + head) * p.num_groups + gi) * p.num_q_tiles + qt) * q_size;
}

// Floats from one copy of the dQ accumulator to the next: whole 256-byte blocks.
GNA_HOST_DEVICE int64_t bwd_dq_stride(const BwdParams& bp) {
  return (bp.num_slots * bp.head_dim + 63) & ~int64_t(63);
}

// The deterministic turn counter of copy `copy` for the Q tile holding `slot` (Q tiles of
// `q_size` slots: a kernel passes its compile-time tile size).
GNA_HOST_DEVICE int* bwd_dq_semaphore(const BwdParams& p, int copy, int64_t slot, int q_size) {
  return p.dq_semaphore + copy * (p.num_slots / q_size) + slot / q_size;
}

// KV row `o` (per-axis offsets inside the KV tile of `kv_tile` positions) of work item `w`:
// per axis, the queries (local group positions [lo, lo + len)) that see it, cut to the valid
// queries, empty for a key outside the valid keys (the group, or a view's key slice and
// axis); returns its token in the k/v arrays, -1 past their end (a view's keys outside the
// axis have a token: their dK, dV are 0).
GNA_HOST_DEVICE int64_t bwd_kv_row(const BwdParams& p, const BwdWork& w, const int kv_tile[3],
                                   const int o[3], int lo[3], int len[3]) {
  int64_t token = w.batch;
  GNA_UNROLL
  for (int a = 0; a < 3; ++a) {
    const int x = w.kv_tile[a] * kv_tile[a] + o[a];
    const GroupAxis& ax = w.axes[a];
    const Range inv = kv_begin(ax) <= x && x < kv_end(ax)
                          ? inverse_window_in_group(ax.kv_offset + x, ax.length, ax.kernel_size,
                                                    ax.stride, ax.causal)
                          : Range{ax.q_offset, ax.q_offset};
    lo[a] = max_int(inv.start - ax.q_offset, 0);
    len[a] = max_int(min_int(inv.end - ax.q_offset, q_end(ax)) - lo[a], 0);
    token = (token < 0 || x >= ax.kv_length)
                ? -1
                : token * p.kv_extent[a] + w.group[a] + int64_t(p.dilation[a]) * x;
  }
  return token;
}

// The query row of row-statistics slot `slot` (the passes' view of a slot): its head, its row
// inside the Q tile, and its token (-1 for a row outside its group).
struct BwdSlotRow {
  int head;
  int row;
  int64_t token;
};

GNA_HOST_DEVICE BwdSlotRow bwd_slot_row(const BwdParams& p, int64_t slot) {
  const int q1 = p.q_tile[1], q2 = p.q_tile[2];
  int64_t s = slot;
  BwdSlotRow r;
  r.row = int(s % (p.q_tile[0] * q1 * q2));
  s /= p.q_tile[0] * q1 * q2;
  int qt = int(s % p.num_q_tiles);
  s /= p.num_q_tiles;
  int gi = int(s % p.num_groups);
  s /= p.num_groups;
  r.head = int(s % p.heads);
  r.token = s / p.heads;  // the batch entry, then the token
  const int offset[3] = {r.row / (q1 * q2), (r.row / q2) % q1, r.row % q2};
  int tile[3], group[3];
  for (int a = 2; a >= 0; --a) {
    tile[a] = qt % p.q_tiles[a];
    qt /= p.q_tiles[a];
    group[a] = gi % p.dilation[a];
    gi /= p.dilation[a];
  }
  for (int a = 0; a < 3; ++a) {
    const int x = tile[a] * p.q_tile[a] + offset[a];
    if (x >= q_end(launch_group_axis<true>(p, a, group[a]))) {
      r.token = -1;
      return r;
    }
    r.token = r.token * p.q_extent[a] + group[a] + int64_t(p.dilation[a]) * x;
  }
  return r;
}

// Host only from here: what a dispatcher derives from a Problem.

// The mode of `bp` and the CTA order over KV tiles it needs (decode_bwd_work): deterministic
// mode row-major, whatever GNA_BWD_TILE_ORDER says (its turns need it); the default mode the
// forward's rule (cta_tile_order) for the same L2 reuse, unless the knob sets it.
inline void bwd_set_deterministic(BwdParams* bp, bool deterministic) {
  const int* knob = dev_knobs::bwd_tile_order();
  const CtaOrder order = deterministic ? kRowMajorOrder
                         : knob        ? CtaOrder{{knob[0], knob[1], knob[2]}}
                                       : cta_tile_order(*bp);
  bp->deterministic = deterministic ? 1 : 0;
  for (int k = 0; k < 3; ++k) bp->tile_order[k] = order.axes[k];
}

// The launch geometry of `p` with `tiles` and `dq_buffers` copies of the dQ accumulator (no
// pointers, the default mode).
inline BwdParams bwd_geometry(const Problem& p, const KernelAxes& ax, const FwdTileConfig& tiles,
                              int dq_buffers = 1) {
  BwdParams bp = {};
  bp.dq_buffers = dq_buffers;
  bp.num_q_tiles = 1;
  bp.num_kv_tiles = 1;
  bp.num_groups = 1;
  for (int a = 0; a < 3; ++a) {
    bp.extent[a] = ax.extent[a];
    bp.kernel_size[a] = ax.kernel_size[a];
    bp.stride[a] = ax.stride[a];
    bp.dilation[a] = ax.dilation[a];
    bp.causal[a] = ax.causal[a];
    bp.q_offset[a] = ax.q_offset[a];
    bp.q_extent[a] = ax.q_extent[a];
    bp.kv_offset[a] = ax.kv_offset[a];
    bp.kv_extent[a] = ax.kv_extent[a];
    bp.q_tile[a] = tiles.q[a];
    // Tiles cover the local slices; local group 0 is the longest.
    const int q_lg0 = (ax.q_extent[a] + ax.dilation[a] - 1) / ax.dilation[a];
    const int kv_lg0 = (ax.kv_extent[a] + ax.dilation[a] - 1) / ax.dilation[a];
    bp.q_tiles[a] = (q_lg0 + tiles.q[a] - 1) / tiles.q[a];
    bp.kv_tiles[a] = (kv_lg0 + tiles.kv[a] - 1) / tiles.kv[a];
    bp.num_q_tiles *= bp.q_tiles[a];
    bp.num_kv_tiles *= bp.kv_tiles[a];
    bp.num_groups *= ax.dilation[a];
  }
  bp.heads = p.heads;
  bp.kv_heads = p.kv_heads;
  bp.kv_group = p.heads / p.kv_heads;
  bp.batch = int(p.batch);
  bp.head_dim = p.head_dim;
  bp.scale = p.scale;
  bp.scale_log2 = p.scale * 1.4426950408889634f;
  bp.num_slots = int64_t(p.batch) * p.heads * bp.num_groups * bp.num_q_tiles * tiles.q_size();
  plan_loads(p, ax, tiles, &bp.q_loads, &bp.kv_loads);  // the dispatchers check it first
  bwd_set_deterministic(&bp, false);
  return bp;
}

// CTAs of one launch: one per (KV tile, group, KV head, batch entry).
inline int64_t bwd_num_items(const BwdParams& bp) {
  return int64_t(bp.num_kv_tiles) * bp.num_groups * bp.kv_heads * bp.batch;
}

// Byte offsets of the workspace's parts, each 256-byte aligned: row statistics, the fp32 dQ
// accumulator's copies (`dq_stride` floats apart), the deterministic mode's semaphores (one per
// Q tile slot block and copy).
struct BwdWorkspace {
  size_t lse2, delta, dq_accum, semaphore, total;
};

inline BwdWorkspace bwd_workspace_layout(const BwdParams& bp) {
  const auto align256 = [](size_t n) { return (n + 255) & ~size_t(255); };
  const size_t slots = size_t(bp.num_slots);
  const size_t q_size = size_t(bp.q_tile[0]) * bp.q_tile[1] * bp.q_tile[2];
  BwdWorkspace w;
  w.lse2 = 0;
  w.delta = align256(slots * sizeof(float));
  w.dq_accum = w.delta + align256(slots * sizeof(float));
  w.semaphore = w.dq_accum + size_t(bwd_dq_stride(bp)) * bp.dq_buffers * sizeof(float);
  w.total = w.semaphore + align256(slots / q_size * bp.dq_buffers * sizeof(int));
  return w;
}

// Points the workspace parts of `bp` into `workspace` (bwd_workspace_layout(bp).total bytes)
// and sets the tensors and the mode (bwd_set_deterministic) of one call.
inline void bwd_bind(BwdParams* bp, void* workspace, const void* dout, const void* out,
                     const float* lse, const float* dlse, void* dq, void* dk, void* dv,
                     bool deterministic) {
  const BwdWorkspace ws = bwd_workspace_layout(*bp);
  char* base = static_cast<char*>(workspace);
  bwd_set_deterministic(bp, deterministic);
  bp->out = out;
  bp->dout = dout;
  bp->lse = lse;
  bp->dlse = dlse;
  bp->row_lse2 = reinterpret_cast<float*>(base + ws.lse2);
  bp->row_delta = reinterpret_cast<float*>(base + ws.delta);
  bp->dq_accum = reinterpret_cast<float*>(base + ws.dq_accum);
  bp->dq_semaphore = reinterpret_cast<int*>(base + ws.semaphore);
  bp->dq = dq;
  bp->dk = dk;
  bp->dv = dv;
}

}  // namespace gna
