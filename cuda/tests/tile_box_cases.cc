// Prints, for GNA problems read from stdin, the KV-tile box of every Q tile,
// the classification of every (Q tile, KV tile) pair and the backward's Q-tile
// box of every KV tile, as computed by gna/tile_box.h. tests/test_tile_box.py
// compiles this with the host compiler and checks the output against
// brute-force NumPy oracles.
//
// Input, one problem per line:
//   rank, then per axis: length kernel_size stride dilation causal q_tile kv_tile
// or a view of a problem (gna/window.h AxisView; tiles over its local slices):
//   v rank, then per axis: the same seven numbers, then q_offset q_length kv_offset kv_length
// Output, per problem: "case <n>", then per (dilation group, Q tile):
//   "q <g...> <qt...> box <begin end>... full <begin end>... kinds <digits>"
// (full: per axis, the KV tiles full_tile_range calls full).
// where the digits are the TileKind of KV tiles with indices -1..count per axis
// (last axis fastest), so tiles past both ends of the group are covered too.
// Then per (dilation group, KV tile with indices -1..count per axis):
//   "k <g...> <kt...> qbox <begin end>... qfull <begin end>..."
// (qbox: q_tile_box; qfull: per axis, full_q_tile_range).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "gna/tile_box.h"

namespace {

// The `i`-th KV tile (last axis fastest) of indices -1..count per axis on the
// first `rank` axes (0 past them); `n` holds count + 2 per axis (1 past rank).
void kv_tile_of(int i, int rank, const int* n, int k[3]) {
  for (int a = 2; a >= 0; --a) {
    k[a] = i % n[a] - (a < rank ? 1 : 0);
    i /= n[a];
  }
}

// "<tag> <g...> <tile...> <box_name> <begin end>... <full_name> <begin end>...",
// without the line's end.
void print_row(const char* tag, int rank, const int* g, const int* tile, const char* box_name,
               const gna::TileBox& box, const char* full_name, const gna::Range* full) {
  std::printf("%s", tag);
  for (int a = 0; a < rank; ++a) std::printf(" %d", g[a]);
  for (int a = 0; a < rank; ++a) std::printf(" %d", tile[a]);
  std::printf(" %s", box_name);
  for (int a = 0; a < rank; ++a) std::printf(" %d %d", box.begin[a], box.end[a]);
  std::printf(" %s", full_name);
  for (int a = 0; a < rank; ++a) std::printf(" %d %d", full[a].start, full[a].end);
}

}  // namespace

int main() {
  int rank;
  int n = 0;
  char first[16];
  while (std::scanf("%15s", first) == 1) {
    const bool has_view = std::strcmp(first, "v") == 0;
    if (has_view && std::scanf("%d", &rank) != 1) return 1;
    if (!has_view) rank = std::atoi(first);
    gna::Axis axes[3];
    gna::AxisView views[3];
    int qt[3] = {1, 1, 1}, kt[3] = {1, 1, 1};
    for (int a = 0; a < rank; ++a) {
      int causal;
      if (std::scanf("%d %d %d %d %d %d %d", &axes[a].length, &axes[a].kernel_size, &axes[a].stride,
                     &axes[a].dilation, &causal, &qt[a], &kt[a]) != 7)
        return 1;
      axes[a].causal = causal != 0;
      views[a] = gna::whole_axis(axes[a].length);
      if (has_view && std::scanf("%d %d %d %d", &views[a].q_offset, &views[a].q_length,
                                 &views[a].kv_offset, &views[a].kv_length) != 4)
        return 1;
      if (gna::axis_view_error(axes[a], views[a]) != nullptr) return 2;
    }
    std::printf("case %d\n", n++);
    int groups = 1;
    for (int a = 0; a < rank; ++a) groups *= axes[a].dilation;
    for (int gi = 0; gi < groups; ++gi) {
      int g[3] = {0, 0, 0};
      gna::GroupAxis ga[3];
      for (int a = 0, r = gi; a < rank; ++a) {
        g[a] = r % axes[a].dilation;
        r /= axes[a].dilation;
        ga[a] =
            has_view ? gna::group_axis(axes[a], views[a], g[a]) : gna::group_axis(axes[a], g[a]);
      }
      int nq[3] = {1, 1, 1}, nk[3] = {1, 1, 1};
      for (int a = 0; a < rank; ++a) {
        nq[a] = gna::tile_count(ga[a].q_length, qt[a]);
        nk[a] = gna::tile_count(ga[a].kv_length, kt[a]) + 2;  // indices -1..count
      }
      const int total_q = nq[0] * nq[1] * nq[2];
      for (int qi = 0; qi < total_q; ++qi) {
        int q[3];
        for (int a = 2, r = qi; a >= 0; --a) {
          q[a] = r % nq[a];
          r /= nq[a];
        }
        const gna::TileBox box = gna::kv_tile_box(ga, rank, q, qt, kt);
        // Box order: next() walks the same tiles as tile(i).
        int walk[3];
        box.tile(0, walk);
        for (int i = 0; i < box.size(); ++i) {
          int t[3];
          box.tile(i, t);
          if (t[0] != walk[0] || t[1] != walk[1] || t[2] != walk[2]) return 3;
          box.next(walk);
        }
        std::string kinds;
        const int total_k = nk[0] * nk[1] * nk[2];
        for (int ki = 0; ki < total_k; ++ki) {
          int k[3];
          kv_tile_of(ki, rank, nk, k);
          kinds += char('0' + int(gna::classify_tile(ga, rank, q, qt, k, kt)));
        }
        gna::Range full[3];
        for (int a = 0; a < rank; ++a)
          full[a] = gna::full_tile_range(ga[a], q[a] * qt[a], qt[a], kt[a]);
        print_row("q", rank, g, q, "box", box, "full", full);
        std::printf(" kinds %s\n", kinds.c_str());
      }
      const int total_k = nk[0] * nk[1] * nk[2];
      for (int ki = 0; ki < total_k; ++ki) {
        int k[3];
        kv_tile_of(ki, rank, nk, k);
        gna::Range full[3];
        for (int a = 0; a < rank; ++a)
          full[a] = gna::full_q_tile_range(ga[a], k[a] * kt[a], kt[a], qt[a]);
        print_row("k", rank, g, k, "qbox", gna::q_tile_box(ga, rank, k, qt, kt), "qfull", full);
        std::printf("\n");
      }
    }
  }
  return 0;
}
