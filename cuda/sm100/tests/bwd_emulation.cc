// Host emulation of the sm100 backward's data flow, for tests/test_sm100_host.py: the pre-pass,
// every CTA (decode_bwd_work) with its visits in the kernel's order, the mask on partial pairs
// only, dQ added to row-major blocks at the row-statistics slots (bwd_config.h dq_offset), dK/dV
// per KV row, zeros for unvisited KV tiles, and the dQ conversion (bwd_slot_row), in fp32 and
// with the kernel's tile geometry, so that everything but the tensor-core plumbing is checked
// against jax.grad of the reference. Rows a tile holds outside its group (which the kernel
// loads as zeros or as neighbouring tokens) are filled with large finite garbage: they must
// add nothing.
//
// stdin: a problem line (cuda/sm100/tests/problem_input.h; the option is the head dim), then
// the scale; argv[1]: a folder with q.bin, k.bin, v.bin, out.bin, dout.bin (float32,
// [batch, X.., heads or kv_heads, D]) and lse.bin, dlse.bin (float32 [batch, X.., heads]);
// writes dq.bin, dk.bin, dv.bin there. stdout: "order <o0> <o1> <o2>", the CTA order over KV
// tiles (fastest axis first; the default mode's).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cuda/sm100/bwd_config.h"
#include "cuda/sm100/tests/problem_input.h"

namespace {

std::vector<float> read(const std::string& path, size_t n) {
  std::vector<float> x(n);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(x.data()), std::streamsize(n * sizeof(float)));
  if (!in) std::fprintf(stderr, "cannot read %zu floats from %s\n", n, path.c_str());
  return x;
}

void write(const std::string& path, const std::vector<float>& x) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(x.data()), std::streamsize(x.size() * sizeof(float)));
}

// Per-axis offsets of token `r` of a tile (row-major, last axis fastest).
void offsets(const int tile[3], int r, int o[3]) {
  o[0] = r / (tile[1] * tile[2]);
  o[1] = (r / tile[2]) % tile[1];
  o[2] = r % tile[2];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace gna;
  if (argc != 2) return 2;
  const std::string dir = argv[1];
  Problem p;
  int head_dim = 0;
  float scale = 0.f;
  if (!read_problem(std::cin, &p, &head_dim) || !(std::cin >> scale)) return 2;
  p.head_dim = p.head_dim_v = head_dim;
  p.scale = scale;
  const int D = head_dim;
  const FwdTileConfig tiles = sm100::bwd_tile_config(p.rank, D);
  BwdParams bp = bwd_geometry(p, kernel_axes(p), tiles);
  std::printf("order %d %d %d\n", bp.tile_order[0], bp.tile_order[1], bp.tile_order[2]);
  int64_t tokens = p.batch;
  for (int i = 0; i < p.rank; ++i) tokens *= p.extent[i];
  const auto q = read(dir + "/q.bin", tokens * p.heads * D);
  const auto k = read(dir + "/k.bin", tokens * p.kv_heads * D);
  const auto v = read(dir + "/v.bin", tokens * p.kv_heads * D);
  const auto out = read(dir + "/out.bin", tokens * p.heads * D);
  const auto dout = read(dir + "/dout.bin", tokens * p.heads * D);
  const auto lse = read(dir + "/lse.bin", tokens * p.heads);
  const auto dlse = read(dir + "/dlse.bin", tokens * p.heads);

  // Pre-pass (bwd_passes.cuh).
  std::vector<float> lse2(bp.num_slots), delta(bp.num_slots);
  for (int64_t slot = 0; slot < bp.num_slots; ++slot) {
    const BwdSlotRow r = bwd_slot_row(bp, slot);
    lse2[slot] = INFINITY;
    delta[slot] = 0.f;
    if (r.token < 0) continue;
    const int64_t i = r.token * p.heads + r.head;
    float sum = 0.f;
    for (int c = 0; c < D; ++c) sum += out[i * D + c] * dout[i * D + c];
    delta[slot] = sum - dlse[i];
    lse2[slot] = lse[i] == -INFINITY ? INFINITY : lse[i] * 1.4426950408889634f;
  }

  std::vector<float> dq_accum(bp.num_slots * D, 0.f);
  std::vector<float> dk(tokens * p.kv_heads * D, NAN), dv(tokens * p.kv_heads * D, NAN);
  const int kTile = 128;
  const float garbage = 1e3f;
  for (int64_t item = 0; item < bwd_num_items(bp); ++item) {
    const BwdWork w = decode_bwd_work(bp, int(item), tiles.q, tiles.kv);
    // K and V of the tile as the kernel holds them; per KV row its inverse window and token.
    std::vector<float> kt(kTile * D), vt(kTile * D), dkt(kTile * D, 0.f), dvt(kTile * D, 0.f);
    int lo[kTile][3], len[kTile][3];
    int64_t kv_token[kTile];
    for (int r = 0; r < kTile; ++r) {
      int o[3];
      offsets(tiles.kv, r, o);
      kv_token[r] = bwd_kv_row(bp, w, tiles.kv, o, lo[r], len[r]);
      for (int c = 0; c < D; ++c) {
        const int64_t at = (kv_token[r] * p.kv_heads + w.kv_head) * D + c;
        kt[r * D + c] = kv_token[r] >= 0 ? k[at] : garbage * ((r + c) % 3 - 1);
        vt[r * D + c] = kv_token[r] >= 0 ? v[at] : garbage * ((r * c) % 3 - 1);
      }
    }
    const int n = w.box.size();
    for (int g = 0; g < bp.kv_group; ++g) {
      const int head = w.kv_head * bp.kv_group + g;
      for (int j = 0; j < n; ++j) {
        int t[3];
        w.box.tile(bp.deterministic ? n - 1 - j : j, t);
        bool full = true;
        for (int a = 0; a < 3; ++a) full &= w.full[a].start <= t[a] && t[a] < w.full[a].end;
        const int64_t slot = bwd_stat_slot(bp, w, head, t);
        // Q and dO rows of the tile (garbage outside the group, as the kernel's TMA may load).
        std::vector<float> qt(kTile * D), dot(kTile * D);
        for (int c = 0; c < kTile; ++c) {
          const BwdSlotRow r = bwd_slot_row(bp, slot + c);
          for (int d = 0; d < D; ++d) {
            const int64_t at = (r.token * p.heads + head) * D + d;
            qt[c * D + d] = r.token >= 0 ? q[at] : garbage * ((c + d) % 5 - 2);
            dot[c * D + d] = r.token >= 0 ? dout[at] : garbage * ((c * d) % 5 - 2);
          }
        }
        for (int r = 0; r < kTile; ++r) {
          for (int c = 0; c < kTile; ++c) {
            float s = 0.f, dp = 0.f;
            for (int d = 0; d < D; ++d) {
              s += kt[r * D + d] * qt[c * D + d];
              dp += vt[r * D + d] * dot[c * D + d];
            }
            float pr = std::exp2(s * bp.scale_log2 - lse2[slot + c]);
            if (!full) {
              int o[3];
              offsets(tiles.q, c, o);
              bool vis = true;
              for (int a = 0; a < 3; ++a)
                vis &= unsigned(t[a] * tiles.q[a] + o[a] - lo[r][a]) < unsigned(len[r][a]);
              if (!vis) pr = 0.f;
            }
            const float ds = pr * (dp - delta[slot + c]);
            for (int d = 0; d < D; ++d) {
              dvt[r * D + d] += pr * dot[c * D + d];
              dkt[r * D + d] += ds * qt[c * D + d];
              dq_accum[slot * D + sm100::dq_offset(c, d, D)] += ds * kt[r * D + d];
            }
          }
        }
      }
    }
    for (int r = 0; r < kTile; ++r) {  // the epilogue (zeros for an unvisited tile)
      if (kv_token[r] < 0) continue;
      for (int d = 0; d < D; ++d) {
        const int64_t at = (kv_token[r] * p.kv_heads + w.kv_head) * D + d;
        dk[at] = dkt[r * D + d] * scale;
        dv[at] = dvt[r * D + d];
      }
    }
  }

  // dQ conversion.
  std::vector<float> dq(tokens * p.heads * D, NAN);
  for (int64_t slot = 0; slot < bp.num_slots; ++slot) {
    const BwdSlotRow r = bwd_slot_row(bp, slot);
    if (r.token < 0) continue;
    for (int d = 0; d < D; ++d)
      dq[(r.token * p.heads + r.head) * D + d] =
          scale * dq_accum[(slot - r.row) * D + sm100::dq_offset(r.row, d, D)];
  }
  write(dir + "/dq.bin", dq);
  write(dir + "/dk.bin", dk);
  write(dir + "/dv.bin", dv);
  return 0;
}
