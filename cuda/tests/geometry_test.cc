// Host-side test of the geometry headers (gna/window.h, gna/tile_box.h), run
// by `bazel test //:geometry_test`; no framework, exit status 1 on failure.
//
// - window(): hand-derived windows of a few axes (docs/design.md), then the
//   invariants of every legal axis up to length 12 (a window never shrinks,
//   holds its query unless it is causal, and windows never move backwards).
// - inverse_window(): against brute force over window().
// - kv_tile_box / classify_tile / full_tile_range: against brute-force
//   per-token visibility for every legal 1-D axis up to length 10 and
//   pseudo-random 2-D and 3-D problems, with several tile sizes.
// - q_tile_box / full_q_tile_range (the backward's inverse boxes): for every
//   KV tile, the Q tiles in its box are exactly those whose kv_tile_box holds
//   it, and its full Q tiles exactly those full in the forward and by
//   per-element visibility (window.h's visible()); TileBox::index inverts
//   TileBox::tile on those pairs. Every legal 1-D axis up to length 12 with
//   small tiles, and pseudo-random 1-D, 2-D and 3-D problems with the
//   compiled sm90 tile shapes (cuda/sm90/fwd_config.h, in the kernels'
//   three-axis form) and small random tiles.
// - views (window.h AxisView, tile_box.h group_axis of a view): view_keys,
//   kv_tile_box, classify_tile, full_tile_range, q_tile_box and
//   full_q_tile_range in local coordinates against per-element visibility on
//   the whole axis (window.h's visible()), for every legal 1-D axis up to
//   length 10 with views drawn around it (slices hanging over either border,
//   missing the windows, padding queries) and pseudo-random 2-D and 3-D ones;
//   whole-axis views against the square functions.
// Legal axes include K = 1 (the window is the query alone; stride 1), with any
// dilation up to the extent, and extent-1 axes.
// tests/test_window_cpp.py and tests/test_tile_box.py check the same headers
// against the NumPy implementation and oracle.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cuda/sm90/fwd_config.h"
#include "gna/tile_box.h"
#include "gna/window.h"

namespace {

int failures = 0;
int64_t checks = 0;

#define EXPECT(cond, ...)                                             \
  do {                                                                \
    ++checks;                                                         \
    if (!(cond)) {                                                    \
      if (++failures <= 20) {                                         \
        std::printf("FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                     \
        std::printf("\n");                                            \
      }                                                               \
    }                                                                 \
  } while (0)

// A fixed pseudo-random sequence (linear congruential): next(n) in [0, n).
struct Lcg {
  uint32_t state;
  int next(int n) {
    state = state * 1664525u + 1013904223u;
    return static_cast<int>((state >> 8) % static_cast<uint32_t>(n));
  }
};

std::vector<gna::Axis> legal_axes(int max_length) {
  std::vector<gna::Axis> axes;
  for (int length = 1; length <= max_length; ++length)
    for (int dilation = 1; dilation <= length; ++dilation)
      for (int kernel_size = 1; kernel_size * dilation <= length; ++kernel_size)
        for (int stride = 1; stride <= kernel_size; ++stride)
          for (int causal = 0; causal < 2; ++causal)
            axes.push_back(gna::Axis{length, kernel_size, stride, dilation, causal != 0});
  return axes;
}

void test_known_windows() {
  struct Known {
    gna::Axis axis;
    int start[9];
    int end[9];
  };
  // Windows in group coordinates, worked out by hand from the window rule (docs/design.md).
  const Known known[] = {
      // Centred windows that shift inward at both borders.
      {{7, 3, 1, 1, false}, {0, 0, 1, 2, 3, 4, 4}, {3, 3, 4, 5, 6, 7, 7}},
      // Stride 2: pairs of queries share the window of their leader (right centre).
      {{8, 4, 2, 1, false}, {0, 0, 1, 1, 3, 3, 4, 4}, {4, 4, 5, 5, 7, 7, 8, 8}},
      // Causal: the window ends at the query and holds up to kernel_size keys.
      {{5, 3, 1, 1, true}, {0, 0, 0, 1, 2}, {1, 2, 3, 4, 5}},
      // Causal, stride 2: the start follows the last query of the stride group.
      {{6, 3, 2, 1, true}, {0, 0, 1, 1, 3, 3}, {1, 2, 3, 4, 5, 6}},
      // Dilation 2: groups {0, 2, 4, 6, 8} (5 positions) and {1, 3, 5, 7} (4).
      {{9, 2, 1, 2, false}, {0, 0, 0, 0, 1, 1, 2, 2, 3}, {2, 2, 2, 2, 3, 3, 4, 4, 5}},
  };
  for (const Known& k : known) {
    for (int i = 0; i < k.axis.length; ++i) {
      const gna::Range w = gna::window(k.axis, i);
      EXPECT(w.start == k.start[i] && w.end == k.end[i],
             "L=%d K=%d s=%d d=%d causal=%d query %d: got [%d, %d), want [%d, %d)", k.axis.length,
             k.axis.kernel_size, k.axis.stride, k.axis.dilation, k.axis.causal, i, w.start, w.end,
             k.start[i], k.end[i]);
    }
  }
}

void test_window_invariants_and_inverse() {
  for (const gna::Axis& a : legal_axes(12)) {
    for (int i = 0; i < a.length; ++i) {
      const int lg = gna::group_length(a.length, a.dilation, i % a.dilation);
      const int iq = i / a.dilation;
      const gna::Range w = gna::window(a, i);
      EXPECT(0 <= w.start && w.end <= lg, "axis L=%d K=%d s=%d d=%d: query %d outside its group",
             a.length, a.kernel_size, a.stride, a.dilation, i);
      if (a.causal) {
        EXPECT(w.end == iq + 1 && w.end - w.start <= a.kernel_size, "causal query %d", i);
      } else {
        EXPECT(w.end - w.start == a.kernel_size && w.start <= iq && iq < w.end, "query %d", i);
      }
      if (a.kernel_size == 1)  // the query alone, causal or not
        EXPECT(w.start == iq && w.end == iq + 1, "K = 1: query %d of L=%d d=%d", i, a.length,
               a.dilation);
      if (i + a.dilation < a.length) {
        const gna::Range next = gna::window(a, i + a.dilation);
        EXPECT(w.start <= next.start && w.end <= next.end, "window of %d moves backwards", i);
      }
    }
    // inverse_window(j) is exactly the set of queries whose window holds key j.
    for (int j = 0; j < a.length; ++j) {
      const gna::Range inv = gna::inverse_window(a, j);
      for (int i = j % a.dilation; i < a.length; i += a.dilation) {
        const int iq = i / a.dilation;
        EXPECT(gna::visible(a, i, j) == (inv.start <= iq && iq < inv.end),
               "L=%d K=%d s=%d d=%d causal=%d: key %d, query %d", a.length, a.kernel_size, a.stride,
               a.dilation, a.causal, j, i);
      }
    }
  }
}

// Brute-force kind of one (Q tile, KV tile) pair of one dilation group, from
// per-token visibility (window_in_group) over every axis.
gna::TileKind brute_kind(const gna::GroupAxis* axes, int rank, const int* q_index,
                         const int* q_tile, const int* k_index, const int* kv_tile) {
  // Per axis: number of valid queries, and how many (valid q, valid k) pairs are
  // visible; the N-d count is the product (visibility is a product over axes).
  int64_t visible = 1, valid_queries = 1, keys = 1;
  bool keys_valid = true;
  for (int a = 0; a < rank; ++a) {
    const gna::GroupAxis& g = axes[a];
    int64_t axis_visible = 0, axis_queries = 0;
    for (int q = q_index[a] * q_tile[a]; q < (q_index[a] + 1) * q_tile[a]; ++q) {
      if (q < 0 || q >= g.length) continue;
      ++axis_queries;
      const gna::Range w = gna::window_in_group(q, g.length, g.kernel_size, g.stride, g.causal);
      for (int k = k_index[a] * kv_tile[a]; k < (k_index[a] + 1) * kv_tile[a]; ++k)
        axis_visible += (0 <= k && k < g.length && w.start <= k && k < w.end);
    }
    keys_valid &= k_index[a] >= 0 && (k_index[a] + 1) * kv_tile[a] <= g.length;
    visible *= axis_visible;
    valid_queries *= axis_queries;
    keys *= kv_tile[a];
  }
  if (visible == 0) return gna::TileKind::kEmpty;
  return keys_valid && visible == valid_queries * keys ? gna::TileKind::kFull
                                                       : gna::TileKind::kPartial;
}

void check_tiles(const gna::Axis* axes, int rank, const int* q_tile, const int* kv_tile) {
  int groups = 1;
  for (int a = 0; a < rank; ++a) groups *= axes[a].dilation;
  for (int gi = 0; gi < groups; ++gi) {
    gna::GroupAxis ga[3];
    int nq[3] = {1, 1, 1}, nk[3] = {1, 1, 1};
    for (int a = 0, r = gi; a < rank; ++a) {
      ga[a] = gna::group_axis(axes[a], r % axes[a].dilation);
      r /= axes[a].dilation;
      nq[a] = gna::tile_count(ga[a].length, q_tile[a]);
      nk[a] = gna::tile_count(ga[a].length, kv_tile[a]);
    }
    for (int qi = 0; qi < nq[0] * nq[1] * nq[2]; ++qi) {
      const int q[3] = {qi / (nq[1] * nq[2]), qi / nq[2] % nq[1], qi % nq[2]};
      const gna::TileBox box = gna::kv_tile_box(ga, rank, q, q_tile, kv_tile);
      int lo[3] = {1 << 20, 1 << 20, 1 << 20}, hi[3] = {-1, -1, -1};
      // KV tiles -1..count per axis: tiles past both ends are empty too.
      for (int k0 = -1; k0 <= nk[0]; ++k0)
        for (int k1 = rank > 1 ? -1 : 0; k1 <= (rank > 1 ? nk[1] : 0); ++k1)
          for (int k2 = rank > 2 ? -1 : 0; k2 <= (rank > 2 ? nk[2] : 0); ++k2) {
            const int k[3] = {k0, k1, k2};
            const gna::TileKind want = brute_kind(ga, rank, q, q_tile, k, kv_tile);
            const gna::TileKind got = gna::classify_tile(ga, rank, q, q_tile, k, kv_tile);
            EXPECT(got == want, "rank %d L0=%d group %d q tile (%d %d %d) kv tile (%d %d %d)", rank,
                   axes[0].length, gi, q[0], q[1], q[2], k0, k1, k2);
            bool in_full = true;
            for (int a = 0; a < rank; ++a) {
              const gna::Range full =
                  gna::full_tile_range(ga[a], q[a] * q_tile[a], q_tile[a], kv_tile[a]);
              in_full &= full.start <= k[a] && k[a] < full.end;
            }
            EXPECT(in_full == (want == gna::TileKind::kFull), "full_tile_range, rank %d", rank);
            if (want == gna::TileKind::kEmpty) continue;
            for (int a = 0; a < rank; ++a) {
              lo[a] = gna::min_int(lo[a], k[a]);
              hi[a] = gna::max_int(hi[a], k[a] + 1);
            }
          }
      for (int a = 0; a < rank; ++a)
        EXPECT(box.begin[a] == lo[a] && box.end[a] == hi[a],
               "box axis %d: got [%d, %d), want [%d, %d)", a, box.begin[a], box.end[a], lo[a],
               hi[a]);
    }
  }
}

void test_tiles() {
  const int tiles[][2] = {{1, 1}, {2, 3}, {4, 4}, {3, 8}};
  for (const gna::Axis& a : legal_axes(10))
    for (const auto& t : tiles) check_tiles(&a, 1, &t[0], &t[1]);
  // Pseudo-random 2-D and 3-D problems.
  Lcg rng{12345};
  for (int n = 0; n < 300; ++n) {
    const int rank = 2 + n % 2;
    gna::Axis axes[3];
    int q_tile[3], kv_tile[3];
    for (int a = 0; a < rank; ++a) {
      const int length = 2 + rng.next(8);
      const int dilation = rng.next(4) == 0 ? 1 + rng.next(length) : 1;
      const int kernel_size = 1 + rng.next(length / dilation);
      axes[a] =
          gna::Axis{length, kernel_size, 1 + rng.next(kernel_size), dilation, rng.next(3) == 0};
      q_tile[a] = 1 + rng.next(4);
      kv_tile[a] = 1 + rng.next(4);
    }
    check_tiles(axes, rank, q_tile, kv_tile);
  }
}

// Element-level facts about the tile pairs of one axis and one dilation group,
// from window.h's visible() on full-axis coordinates (token p of the group is
// position group + dilation * p). Tile indices run from -1 to the tile count,
// stored shifted by one, so tiles past both ends of the group are covered.
struct AxisPairs {
  int nq = 0, nk = 0;            // tiles covering the group
  std::vector<int64_t> visible;  // [(nq + 2) * (nk + 2)]: visible (valid q, valid k) pairs
  std::vector<int> valid_q;      // [nq + 2]: valid queries of the Q tile
  std::vector<char> keys_valid;  // [nk + 2]: every position of the KV tile is in the group

  int64_t pairs(int t, int u) const { return visible[(t + 1) * (nk + 2) + (u + 1)]; }
};

// Element-level facts of one axis of a view, for one local dilation group:
// local query position qp of the group is whole-axis position
// view.q_offset + group + d * qp (valid below the axis' end), local key kp is
// view.kv_offset + group + d * kp (valid inside the axis). Counted from
// window.h's visible(), not from the group arithmetic under test.
AxisPairs view_axis_pairs(const gna::Axis& axis, const gna::AxisView& view, int group, int q_tile,
                          int kv_tile) {
  const int d = axis.dilation;
  int nq_pos = 0, nk_pos = 0;
  for (int i = group; i < view.q_length; i += d) ++nq_pos;
  for (int j = group; j < view.kv_length; j += d) ++nk_pos;
  AxisPairs p;
  p.nq = (nq_pos + q_tile - 1) / q_tile;
  p.nk = (nk_pos + kv_tile - 1) / kv_tile;
  p.visible.assign((p.nq + 2) * (p.nk + 2), 0);
  p.valid_q.assign(p.nq + 2, 0);
  p.keys_valid.assign(p.nk + 2, 0);
  auto key_valid = [&](int kp) {
    const int x = view.kv_offset + group + d * kp;
    return 0 <= kp && kp < nk_pos && 0 <= x && x < axis.length;
  };
  for (int u = -1; u <= p.nk; ++u) {
    bool all = u >= 0;
    for (int kp = u * kv_tile; kp < (u + 1) * kv_tile && all; ++kp) all = key_valid(kp);
    p.keys_valid[u + 1] = all;
  }
  for (int qp = 0; qp < nq_pos; ++qp) {
    const int xq = view.q_offset + group + d * qp;
    if (xq >= axis.length) continue;  // padding query
    const int t = qp / q_tile;
    ++p.valid_q[t + 1];
    for (int kp = 0; kp < nk_pos; ++kp)
      if (key_valid(kp))
        p.visible[(t + 1) * (p.nk + 2) + kp / kv_tile + 1] +=
            gna::visible(axis, xq, view.kv_offset + group + d * kp);
  }
  return p;
}

AxisPairs axis_pairs(const gna::Axis& axis, int group, int q_tile, int kv_tile) {
  return view_axis_pairs(axis, gna::whole_axis(axis.length), group, q_tile, kv_tile);
}

// Visits every tile index vector of a box of tile counts `n` (per axis, -1..n[a]
// on the first `rank` axes, 0 elsewhere), last axis fastest.
template <typename F>
void for_each_tile(int rank, const int* n, F f) {
  int lo[3], hi[3];
  for (int a = 0; a < 3; ++a) {
    lo[a] = a < rank ? -1 : 0;
    hi[a] = a < rank ? n[a] : 0;
  }
  for (int i0 = lo[0]; i0 <= hi[0]; ++i0)
    for (int i1 = lo[1]; i1 <= hi[1]; ++i1)
      for (int i2 = lo[2]; i2 <= hi[2]; ++i2) {
        const int t[3] = {i0, i1, i2};
        f(t);
      }
}

bool in_box(const gna::TileBox& box, int rank, const int* t) {
  for (int a = 0; a < rank; ++a)
    if (t[a] < box.begin[a] || t[a] >= box.end[a]) return false;
  return true;
}

int64_t inverse_problems = 0, inverse_pairs = 0, visited_pairs = 0, full_pairs = 0;

// The backward's Q-tile boxes of every KV tile against the forward's KV-tile
// boxes and against per-element visibility, over every dilation group.
void check_inverse(const gna::Axis* axes, int rank, const int* q_tile, const int* kv_tile) {
  ++inverse_problems;
  int groups = 1;
  for (int a = 0; a < rank; ++a) groups *= axes[a].dilation;
  for (int gi = 0; gi < groups; ++gi) {
    gna::GroupAxis ga[3];
    AxisPairs el[3];
    int nq[3] = {1, 1, 1}, nk[3] = {1, 1, 1};
    for (int a = 0, r = gi; a < rank; ++a) {
      const int g = r % axes[a].dilation;
      r /= axes[a].dilation;
      ga[a] = gna::group_axis(axes[a], g);
      el[a] = axis_pairs(axes[a], g, q_tile[a], kv_tile[a]);
      nq[a] = el[a].nq;
      nk[a] = el[a].nk;
      EXPECT(gna::tile_count(ga[a].length, q_tile[a]) == nq[a], "Q tile count, axis %d", a);
    }
    // The forward's view of every Q tile: its KV box and per-axis full ranges.
    std::vector<gna::TileBox> fwd_box;
    std::vector<gna::Range> fwd_full;
    for_each_tile(rank, nq, [&](const int* t) {
      fwd_box.push_back(gna::kv_tile_box(ga, rank, t, q_tile, kv_tile));
      for (int a = 0; a < 3; ++a)
        fwd_full.push_back(
            a < rank ? gna::full_tile_range(ga[a], t[a] * q_tile[a], q_tile[a], kv_tile[a])
                     : gna::Range{0, 1});
    });
    for_each_tile(rank, nk, [&](const int* u) {
      const gna::TileBox box = gna::q_tile_box(ga, rank, u, q_tile, kv_tile);
      gna::Range full[3];
      for (int a = 0; a < rank; ++a)
        full[a] = gna::full_q_tile_range(ga[a], u[a] * kv_tile[a], kv_tile[a], q_tile[a]);
      int64_t in_box_count = 0;
      int i = 0;
      for_each_tile(rank, nq, [&](const int* t) {
        const gna::TileBox& fwd = fwd_box[i];
        const gna::Range* ffull = &fwd_full[3 * i];
        ++i;
        // Element level: the pair has a visible pair of tokens iff it has one
        // along every axis; it is full iff every valid query sees every key
        // along every axis and no key is padding.
        bool any = true, all = true;
        for (int a = 0; a < rank; ++a) {
          const int64_t v = el[a].pairs(t[a], u[a]);
          any &= v > 0;
          all &= el[a].keys_valid[u[a] + 1] && v == int64_t(el[a].valid_q[t[a] + 1]) * kv_tile[a];
        }
        all &= any;
        bool inv_full = true, fwd_full_pair = true;
        for (int a = 0; a < rank; ++a) {
          inv_full &= full[a].start <= t[a] && t[a] < full[a].end;
          fwd_full_pair &= ffull[a].start <= u[a] && u[a] < ffull[a].end;
        }
        const bool inv = in_box(box, rank, t);
        in_box_count += inv;
        ++inverse_pairs;
        visited_pairs += inv;
        full_pairs += inv_full;
        EXPECT(inv == in_box(fwd, rank, u),
               "q_tile_box vs kv_tile_box: rank %d L=(%d %d %d) group %d kv tile (%d %d %d) q tile "
               "(%d %d %d): inverse %d",
               rank, axes[0].length, rank > 1 ? axes[1].length : 0, rank > 2 ? axes[2].length : 0,
               gi, u[0], u[1], u[2], t[0], t[1], t[2], int(inv));
        EXPECT(inv == any,
               "q_tile_box vs element visibility: rank %d group %d kv (%d %d %d) q (%d %d %d)",
               rank, gi, u[0], u[1], u[2], t[0], t[1], t[2]);
        EXPECT(inv_full == all,
               "full_q_tile_range vs element visibility: rank %d group %d kv (%d %d %d) q (%d %d "
               "%d): got %d",
               rank, gi, u[0], u[1], u[2], t[0], t[1], t[2], int(inv_full));
        EXPECT(inv_full == fwd_full_pair, "full_q_tile_range vs full_tile_range: rank %d", rank);
        if (inv) {  // the position of the KV tile in the Q tile's box order
          const int pos = fwd.index(u);
          int back[3];
          fwd.tile(pos, back);
          EXPECT(
              0 <= pos && pos < fwd.size() && back[0] == u[0] && back[1] == u[1] && back[2] == u[2],
              "TileBox::index: position %d of %d", pos, fwd.size());
        }
        const gna::TileKind kind = gna::classify_tile(ga, rank, t, q_tile, u, kv_tile);
        EXPECT(kind == (all   ? gna::TileKind::kFull
                        : any ? gna::TileKind::kPartial
                              : gna::TileKind::kEmpty),
               "classify_tile vs element visibility: rank %d", rank);
      });
      // The box is exact, so walking it visits exactly the Q tiles above.
      EXPECT(box.size() == in_box_count, "q_tile_box size %d, %lld tiles inside", box.size(),
             static_cast<long long>(in_box_count));
      // The backward walks the box with next() (prev() in deterministic mode) instead of tile(i).
      if (box.size() > 0) {
        int up[3], down[3];
        box.tile(0, up);
        box.tile(box.size() - 1, down);
        for (int i = 0; i < box.size(); ++i, box.next(up), box.prev(down)) {
          int want[3], want_back[3];
          box.tile(i, want);
          box.tile(box.size() - 1 - i, want_back);
          EXPECT(up[0] == want[0] && up[1] == want[1] && up[2] == want[2],
                 "TileBox::next: step %d of %d", i, box.size());
          EXPECT(down[0] == want_back[0] && down[1] == want_back[1] && down[2] == want_back[2],
                 "TileBox::prev: step %d of %d", i, box.size());
        }
      }
    });
  }
}

// A random legal axis of `length` positions, leaning towards the boundary
// cases: s == K (blocked) and s == 1 a third of the time each, a window as
// long as the group one time in eight (K = 1, the query alone, is legal).
gna::Axis random_axis(Lcg& rng, int length) {
  const int dilation = rng.next(3) == 0 ? 1 + rng.next(length) : 1;
  const int max_k = length / dilation;  // >= 1
  int kernel_size = 1 + rng.next(max_k);
  if (rng.next(8) == 0) kernel_size = max_k;
  const int pick = rng.next(3);
  const int stride = pick == 0 ? kernel_size : pick == 1 ? 1 : 1 + rng.next(kernel_size);
  return gna::Axis{length, kernel_size, stride, dilation, rng.next(3) == 0};
}

void test_inverse_tiles() {
  // Every legal 1-D axis up to length 12, small and uneven tiles.
  const int tiles[][2] = {{1, 1}, {2, 3}, {3, 2}, {4, 4}, {3, 8}, {8, 3}, {5, 5}};
  for (const gna::Axis& a : legal_axes(12))
    for (const auto& t : tiles) check_inverse(&a, 1, &t[0], &t[1]);

  // The compiled sm90 configurations, in the kernels' form: three kernel axes,
  // a rank-r problem left-padded with trivial axes (extent 1, window 1), plus
  // the same shapes with Q and KV swapped and a few backward candidates (Q
  // tiles of 64 tokens, KV tiles of 128).
  struct Shapes {
    int rank;
    int q[3];
    int kv[3];
  };
  std::vector<Shapes> shapes;
  for (int rank = 1; rank <= 3; ++rank)
    for (int d : gna::sm90::kFwdHeadDims) {
      const gna::sm90::FwdTileConfigs t = gna::sm90::fwd_tile_configs(rank, d);
      for (int c = 0; c < t.count; ++c) {
        const gna::sm90::FwdTileConfig& f = t.config[c];
        shapes.push_back({rank, {f.q[0], f.q[1], f.q[2]}, {f.kv[0], f.kv[1], f.kv[2]}});
        shapes.push_back({rank, {f.kv[0], f.kv[1], f.kv[2]}, {f.q[0], f.q[1], f.q[2]}});
      }
    }
  shapes.push_back({1, {1, 1, 64}, {1, 1, 128}});
  shapes.push_back({2, {1, 8, 8}, {1, 16, 8}});
  shapes.push_back({3, {1, 8, 8}, {2, 8, 8}});
  Lcg rng{2024};
  for (int n = 0; n < 1500; ++n) {
    const Shapes& s = shapes[n % shapes.size()];
    gna::Axis axes[3];
    for (int a = 0; a < 3; ++a) {
      if (a < 3 - s.rank) {
        axes[a] = gna::Axis{1, 1, 1, 1, false};
        continue;
      }
      // Extents from a few tiles to a few windows of tiles, odd ones included.
      const int tile = gna::max_int(s.q[a], s.kv[a]);
      const int max_length = s.rank == 1 ? 900 : s.rank == 2 ? 90 : a == 0 ? 14 : 40;
      axes[a] = random_axis(rng, 2 + rng.next(gna::min_int(max_length, 6 * tile)));
    }
    check_inverse(axes, 3, s.q, s.kv);
  }

  // Pseudo-random 1-D, 2-D and 3-D problems with small random tiles.
  for (int n = 0; n < 3000; ++n) {
    const int rank = 1 + n % 3;
    const int max_length = rank == 1 ? 60 : rank == 2 ? 24 : 12;
    gna::Axis axes[3];
    int q_tile[3], kv_tile[3];
    for (int a = 0; a < rank; ++a) {
      axes[a] = random_axis(rng, 1 + rng.next(max_length));
      q_tile[a] = 1 + rng.next(rank == 1 ? 12 : 6);
      kv_tile[a] = 1 + rng.next(rank == 1 ? 12 : 6);
    }
    check_inverse(axes, rank, q_tile, kv_tile);
  }
}

int64_t view_problems = 0, view_pairs = 0;

// Every tile function of tile_box.h on the views of `axes` against per-element
// visibility, over every local dilation group.
void check_view(const gna::Axis* axes, const gna::AxisView* views, int rank, const int* q_tile,
                const int* kv_tile) {
  ++view_problems;
  int groups = 1;
  for (int a = 0; a < rank; ++a) groups *= axes[a].dilation;
  for (int gi = 0; gi < groups; ++gi) {
    gna::GroupAxis ga[3];
    AxisPairs el[3];
    int nq[3] = {1, 1, 1}, nk[3] = {1, 1, 1};
    for (int a = 0, r = gi; a < rank; ++a) {
      const int g = r % axes[a].dilation;
      r /= axes[a].dilation;
      ga[a] = gna::group_axis(axes[a], views[a], g);
      el[a] = view_axis_pairs(axes[a], views[a], g, q_tile[a], kv_tile[a]);
      nq[a] = el[a].nq;
      nk[a] = el[a].nk;
      EXPECT(gna::tile_count(ga[a].q_length, q_tile[a]) == nq[a] &&
                 gna::tile_count(ga[a].kv_length, kv_tile[a]) == nk[a],
             "view tile counts, axis %d", a);
    }
    for_each_tile(rank, nq, [&](const int* t) {
      const gna::TileBox fwd = gna::kv_tile_box(ga, rank, t, q_tile, kv_tile);
      for_each_tile(rank, nk, [&](const int* u) {
        bool any = true, all = true;
        for (int a = 0; a < rank; ++a) {
          const int64_t v = el[a].pairs(t[a], u[a]);
          any &= v > 0;
          all &= el[a].keys_valid[u[a] + 1] && v == int64_t(el[a].valid_q[t[a] + 1]) * kv_tile[a];
        }
        all &= any;
        ++view_pairs;
        const gna::TileBox inv = gna::q_tile_box(ga, rank, u, q_tile, kv_tile);
        bool full_fwd = true, full_inv = true;
        for (int a = 0; a < rank; ++a) {
          const gna::Range f = gna::full_tile_range(ga[a], t[a] * q_tile[a], q_tile[a], kv_tile[a]);
          const gna::Range fi =
              gna::full_q_tile_range(ga[a], u[a] * kv_tile[a], kv_tile[a], q_tile[a]);
          full_fwd &= f.start <= u[a] && u[a] < f.end;
          full_inv &= fi.start <= t[a] && t[a] < fi.end;
        }
        const gna::TileKind kind = gna::classify_tile(ga, rank, t, q_tile, u, kv_tile);
        const char* what = nullptr;
        if (in_box(fwd, rank, u) != any) what = "kv_tile_box";
        if (in_box(inv, rank, t) != any) what = "q_tile_box";
        if (full_fwd != all) what = "full_tile_range";
        if (full_inv != all) what = "full_q_tile_range";
        if (kind != (all   ? gna::TileKind::kFull
                     : any ? gna::TileKind::kPartial
                           : gna::TileKind::kEmpty))
          what = "classify_tile";
        EXPECT(what == nullptr,
               "%s on a view: rank %d, axis 0 L=%d K=%d s=%d d=%d causal=%d view (%d %d %d %d), "
               "group %d, tiles %d/%d, q tile (%d %d %d) kv tile (%d %d %d): any %d all %d",
               what, rank, axes[0].length, axes[0].kernel_size, axes[0].stride, axes[0].dilation,
               int(axes[0].causal), views[0].q_offset, views[0].q_length, views[0].kv_offset,
               views[0].kv_length, gi, q_tile[0], kv_tile[0], t[0], t[1], t[2], u[0], u[1], u[2],
               int(any), int(all));
      });
    });
  }
  // view_keys: exactly the visible, valid local keys of every local query.
  for (int a = 0; a < rank; ++a) {
    const gna::Axis& ax = axes[a];
    const gna::AxisView& v = views[a];
    for (int i = 0; i < v.q_length; ++i) {
      const gna::ViewKeys keys = gna::view_keys(ax, v, i);
      for (int j = 0; j < v.kv_length; ++j) {
        const int xq = v.q_offset + i, xk = v.kv_offset + j;
        const bool want = xq < ax.length && 0 <= xk && xk < ax.length && gna::visible(ax, xq, xk);
        const int n = j - keys.key_first;
        const bool got =
            keys.count > 0 && n >= 0 && n % ax.dilation == 0 && n / ax.dilation < keys.count;
        EXPECT(got == want, "view_keys: L=%d view (%d %d %d %d) query %d key %d", ax.length,
               v.q_offset, v.q_length, v.kv_offset, v.kv_length, i, j);
      }
    }
  }
}

// A random legal view of `axis`: the query slice starts inside the axis and
// may run past its end; the key slice starts at the queries' dilation phase
// anywhere from before the axis to past its end.
gna::AxisView random_view(Lcg& rng, const gna::Axis& axis) {
  const int L = axis.length, d = axis.dilation;
  const int qo = rng.next(L);
  const int nq = 1 + rng.next(L - qo + 2);
  const int shift = rng.next(2 * (L / d) + 3) - (L / d) - 1;
  return gna::AxisView{qo, nq, qo - d * shift, 1 + rng.next(L + 2)};
}

void test_views() {
  Lcg rng{777};
  const int tiles[][2] = {{1, 1}, {2, 3}, {3, 2}, {4, 4}};
  for (const gna::Axis& a : legal_axes(10)) {
    const gna::AxisView whole = gna::whole_axis(a.length);
    for (const auto& t : tiles) {
      check_view(&a, &whole, 1, &t[0], &t[1]);
      for (int n = 0; n < 6; ++n) {
        const gna::AxisView v = random_view(rng, a);
        EXPECT(gna::axis_view_error(a, v) == nullptr, "random_view made an illegal view");
        check_view(&a, &v, 1, &t[0], &t[1]);
      }
    }
    // The whole-axis view is the square problem, function by function.
    for (int g = 0; g < a.dilation; ++g) {
      const gna::GroupAxis sq = gna::group_axis(a, g), vw = gna::group_axis(a, whole, g);
      EXPECT(sq.length == vw.length && sq.q_offset == vw.q_offset && sq.q_length == vw.q_length &&
                 sq.kv_offset == vw.kv_offset && sq.kv_length == vw.kv_length,
             "whole-axis view of L=%d d=%d group %d", a.length, a.dilation, g);
    }
  }
  for (int n = 0; n < 1500; ++n) {
    const int rank = 2 + n % 2;
    const int max_length = rank == 2 ? 14 : 8;
    gna::Axis axes[3];
    gna::AxisView views[3];
    int q_tile[3], kv_tile[3];
    for (int a = 0; a < rank; ++a) {
      axes[a] = random_axis(rng, 1 + rng.next(max_length));
      views[a] = random_view(rng, axes[a]);
      q_tile[a] = 1 + rng.next(4);
      kv_tile[a] = 1 + rng.next(4);
    }
    check_view(axes, views, rank, q_tile, kv_tile);
  }
  // Illegal views name their rule.
  const gna::Axis a{10, 3, 1, 2, false};
  EXPECT(gna::axis_view_error(a, gna::AxisView{0, 4, 1, 4}) != nullptr, "dilation phase");
  EXPECT(gna::axis_view_error(a, gna::AxisView{10, 4, 0, 4}) != nullptr, "q_offset past the end");
  EXPECT(gna::axis_view_error(a, gna::AxisView{0, 0, 0, 4}) != nullptr, "empty query slice");
}

}  // namespace

int main() {
  test_known_windows();
  test_window_invariants_and_inverse();
  test_tiles();
  test_inverse_tiles();
  test_views();
  std::printf("views: %lld problems, %lld (Q tile, KV tile) pairs\n",
              static_cast<long long>(view_problems), static_cast<long long>(view_pairs));
  std::printf(
      "inverse boxes: %lld problems, %lld (Q tile, KV tile) pairs, %lld visited, %lld full\n",
      static_cast<long long>(inverse_problems), static_cast<long long>(inverse_pairs),
      static_cast<long long>(visited_pairs), static_cast<long long>(full_pairs));
  std::printf("%lld checks, %d failed\n", static_cast<long long>(checks), failures);
  return failures == 0 ? 0 : 1;
}
