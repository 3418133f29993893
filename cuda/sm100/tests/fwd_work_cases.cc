// Host-side probe of what the sm100 forward launches, for tests/test_sm100_host.py: the tile
// table (cuda/sm100/fwd_config.h) and, per problem, the launch parameters and every work item a
// CTA decodes (cuda/common/fwd_params.h: kernel_axes, fwd_params, decode_fwd_work; the kernel
// runs one CTA per item). Plain C++, built by the test with the host compiler; the test checks
// the output against brute force from tests/oracle.py.
//
// stdin: one problem per line,
//   rank batch heads kv_heads config extent[rank] kernel[rank] stride[rank] dilation[rank]
//   causal[rank]
// stdout: "table rank head_dim q0 q1 q2 kv0 kv1 kv2 stages" for every configuration, then per
// problem "case <n> num_items <items> q_tiles t0 t1 t2 order o0 o1 o2" and one line per item:
//   "item valid batch head g0 g1 g2 qt0 qt1 qt2 box b0 e0 b1 e1 b2 e2 full f0 f0e f1 f1e f2 f2e"
// (kernel axes: a rank-r problem's axis i is kernel axis 3 - r + i).
#include <cstdio>
#include <iostream>

#include "cuda/sm100/fwd_config.h"
#include "cuda/sm100/tests/problem_input.h"

int main() {
  using namespace gna;
  for (int rank = 1; rank <= 3; ++rank) {
    for (int d : sm100::kFwdHeadDims) {
      const FwdTileConfigs t = sm100::fwd_tile_configs(rank, d);
      for (int c = 0; c < t.count; ++c) {
        const FwdTileConfig& x = t.config[c];
        std::printf("table %d %d %d %d %d %d %d %d %d\n", rank, d, x.q[0], x.q[1], x.q[2], x.kv[0],
                    x.kv[1], x.kv[2], x.stages);
      }
    }
  }
  Problem p;
  int config = 0;
  for (int n = 0; read_problem(std::cin, &p, &config); ++n) {
    const FwdTileConfig tiles = sm100::fwd_tile_config(p.rank, p.head_dim, config);
    const KernelAxes ax = kernel_axes(p);
    const FwdParams fp = fwd_params(p, ax, tiles, nullptr, nullptr);
    std::printf("case %d num_items %d q_tiles %d %d %d order %d %d %d\n", n, fp.num_items,
                fp.q_tiles[0], fp.q_tiles[1], fp.q_tiles[2], fp.tile_order[0], fp.tile_order[1],
                fp.tile_order[2]);
    for (int item = 0; item < fp.num_items; ++item) {
      const FwdWork w = decode_fwd_work(fp, item, tiles.q, tiles.kv);
      std::printf("item %d %d %d %d %d %d %d %d %d box", w.valid ? 1 : 0, w.batch, w.head,
                  w.group[0], w.group[1], w.group[2], w.q_tile[0], w.q_tile[1], w.q_tile[2]);
      for (int a = 0; a < 3; ++a) std::printf(" %d %d", w.box.begin[a], w.box.end[a]);
      std::printf(" full");
      for (int a = 0; a < 3; ++a) std::printf(" %d %d", w.full[a].start, w.full[a].end);
      std::printf("\n");
    }
  }
  return 0;
}
