// Host-side test of the geometry headers (gna/window.h, gna/tile_box.h), run
// by `bazel test //:geometry_test`; no framework, exit status 1 on failure.
//
// - window(): hand-derived windows of a few axes (DESIGN.md §3), then the
//   invariants of every legal axis up to length 12 (a window never shrinks,
//   holds its query unless it is causal, and windows never move backwards).
// - inverse_window(): against brute force over window().
// - kv_tile_box / classify_tile / full_tile_range: against brute-force
//   per-token visibility for every legal 1-D axis up to length 10 and
//   pseudo-random 2-D and 3-D problems, with several tile sizes.
// tests/test_window_cpp.py and tests/test_tile_box.py check the same headers
// against the NumPy implementation and oracle.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "gna/tile_box.h"
#include "gna/window.h"

namespace {

int failures = 0;
int checks = 0;

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

std::vector<gna::Axis> legal_axes(int max_length) {
  std::vector<gna::Axis> axes;
  for (int length = 2; length <= max_length; ++length)
    for (int dilation = 1; 2 * dilation <= length; ++dilation)
      for (int kernel_size = 2; kernel_size * dilation <= length; ++kernel_size)
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
  // Windows in group coordinates, worked out by hand from DESIGN.md §3.
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
  // Pseudo-random 2-D and 3-D problems (a fixed linear congruential sequence).
  uint32_t state = 12345;
  auto next = [&state](int n) {
    state = state * 1664525u + 1013904223u;
    return static_cast<int>((state >> 8) % static_cast<uint32_t>(n));
  };
  for (int n = 0; n < 300; ++n) {
    const int rank = 2 + n % 2;
    gna::Axis axes[3];
    int q_tile[3], kv_tile[3];
    for (int a = 0; a < rank; ++a) {
      const int length = 2 + next(8);
      const int dilation = next(4) == 0 ? 1 + next(length / 2) : 1;
      const int kernel_size = 2 + next(length / dilation - 1);
      axes[a] = gna::Axis{length, kernel_size, 1 + next(kernel_size), dilation, next(3) == 0};
      q_tile[a] = 1 + next(4);
      kv_tile[a] = 1 + next(4);
    }
    check_tiles(axes, rank, q_tile, kv_tile);
  }
}

}  // namespace

int main() {
  test_known_windows();
  test_window_invariants_and_inverse();
  test_tiles();
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
