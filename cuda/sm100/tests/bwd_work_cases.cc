// Host-side probe of what the sm100 backward launches, for tests/test_sm100_host.py: the tile
// table (cuda/sm100/bwd_config.h) and, per problem, the launch geometry, the workspace layout
// and every work item a CTA decodes with its visits (cuda/common/bwd_params.h: bwd_geometry,
// bwd_set_deterministic, bwd_workspace_layout, decode_bwd_work, bwd_stat_slot; the kernel's
// visit order and deterministic turns as in kernel/bwd_kernel_ws.cuh). Plain C++, built by the
// test with the host compiler; the test checks the output against brute force from
// tests/oracle.py.
//
// stdin: one problem per line,
//   rank batch heads kv_heads deterministic extent[rank] kernel[rank] stride[rank]
//   dilation[rank] causal[rank]
// stdout: "table rank head_dim q0 q1 q2 kv0 kv1 kv2 stages" for every (rank, head dim), then
// per problem "case <n> items <items> slots <num_slots> workspace <lse2> <delta> <dq> <sem>
// <total> order <o0> <o1> <o2>" (the CTA order over KV tiles, fastest axis first) and one line
// per item (block index order):
//   "item batch kv_head g0 g1 g2 kt0 kt1 kt2 box b0 e0 b1 e1 b2 e2 full f0 f0e f1 f1e f2 f2e"
// followed by one line per visit, in the CTA's order:
//   "visit head t0 t1 t2 slot turn"
// (kernel axes: a rank-r problem's axis i is kernel axis 3 - r + i; head dim 128).
#include <cstdio>
#include <iostream>

#include "cuda/sm100/bwd_config.h"
#include "cuda/sm100/tests/problem_input.h"

int main() {
  using namespace gna;
  for (int rank = 1; rank <= 3; ++rank) {
    for (int d : sm100::kBwdHeadDims) {
      const FwdTileConfig x = sm100::bwd_tile_config(rank, d);
      std::printf("table %d %d %d %d %d %d %d %d %d\n", rank, d, x.q[0], x.q[1], x.q[2], x.kv[0],
                  x.kv[1], x.kv[2], x.stages);
    }
  }
  Problem p;
  int deterministic = 0;
  for (int n = 0; read_problem(std::cin, &p, &deterministic); ++n) {
    const FwdTileConfig tiles = sm100::bwd_tile_config(p.rank, p.head_dim);
    BwdParams bp = bwd_geometry(p, kernel_axes(p), tiles);
    bwd_set_deterministic(&bp, deterministic != 0);
    const BwdWorkspace ws = bwd_workspace_layout(bp);
    const int64_t items = bwd_num_items(bp);
    std::printf("case %d items %lld slots %lld workspace %zu %zu %zu %zu %zu order %d %d %d\n", n,
                static_cast<long long>(items), static_cast<long long>(bp.num_slots), ws.lse2,
                ws.delta, ws.dq_accum, ws.semaphore, ws.total, bp.tile_order[0], bp.tile_order[1],
                bp.tile_order[2]);
    for (int item = 0; item < items; ++item) {
      const BwdWork w = decode_bwd_work(bp, item, tiles.q, tiles.kv);
      std::printf("item %d %d %d %d %d %d %d %d box", w.batch, w.kv_head, w.group[0], w.group[1],
                  w.group[2], w.kv_tile[0], w.kv_tile[1], w.kv_tile[2]);
      for (int a = 0; a < 3; ++a) std::printf(" %d %d", w.box.begin[a], w.box.end[a]);
      std::printf(" full");
      for (int a = 0; a < 3; ++a) std::printf(" %d %d", w.full[a].start, w.full[a].end);
      std::printf("\n");
      const int boxes = w.box.size();
      for (int g = 0; g < bp.kv_group; ++g) {
        const int head = w.kv_head * bp.kv_group + g;
        for (int j = 0; j < boxes; ++j) {
          int t[3];
          w.box.tile(bp.deterministic ? boxes - 1 - j : j, t);  // the kernel's visit_tile
          const int turn = kv_tile_box(w.axes, 3, t, tiles.q, tiles.kv).index(w.kv_tile);
          std::printf("visit %d %d %d %d %lld %d\n", head, t[0], t[1], t[2],
                      static_cast<long long>(bwd_stat_slot(bp, w, head, t)), turn);
        }
      }
    }
  }
  return 0;
}
