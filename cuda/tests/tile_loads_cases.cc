// Checks cuda/common/tile_loads.h by emulating the TMA unit on the host: for random problems
// (every tile shape the kernels compile, dilations up to 128, odd extents, several batch
// entries, views' short arrays) it plans the loads of a tile, lays out the tensor maps, runs
// every box the kernels would issue through a model of cp.async.bulk.tensor (bounds per
// dimension, element strides, zero fill, dense box order) and compares the shared-memory tile
// with the tokens it must hold, computed from the definition: tile row (o0, o1, o2) of
// dilation group g at group positions x holds the token at array positions g_a + d_a * (x_a +
// o_a) of its own batch entry, or zeros past the array. It also checks the TMA limits (box <=
// 256, element stride <= 8, strides multiples of 16 B, no read past the allocation), that every
// box starts on a swizzle atom, and that the boxes deliver exactly the tile's bytes.
//
// Usage: tile_loads_cases <seed> <cases>   prints "cases N boxes B failures F" and one line
//        tile_loads_cases plan T0 T1 T2 d0 d1 d2 E0 E1 E2 batch   prints "boxes N split S fold F"
// tests/test_tile_loads.py compiles and runs it.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../common/tile_loads.h"

namespace {

using gna::MapDim;
using gna::TileLoads;

constexpr int kElem = 2;  // bf16 / fp16

struct Case {
  int tile[3], dilation[3], extent[3], batch, heads, head_dim;
};

int failures = 0;

void fail(const Case& c, const std::string& what) {
  if (++failures <= 20)
    std::printf("FAIL tile %d %d %d dil %d %d %d ext %d %d %d batch %d heads %d d %d: %s\n",
                c.tile[0], c.tile[1], c.tile[2], c.dilation[0], c.dilation[1], c.dilation[2],
                c.extent[0], c.extent[1], c.extent[2], c.batch, c.heads, c.head_dim, what.c_str());
}

// The TMA limits of one map (cuTensorMapEncodeTiled's documented requirements).
bool map_legal(const MapDim* dims, int chunk, std::string* why) {
  for (int i = 0; i < gna::kTmaMaxDims; ++i) {
    const MapDim& m = dims[i];
    if (m.extent < 1 || m.extent > (uint64_t(1) << 32)) return *why = "dim extent", false;
    if (m.box < 1 || m.box > uint32_t(gna::kTmaMaxBox)) return *why = "box > 256", false;
    if (m.elem_step < 1 || m.elem_step > uint32_t(gna::kTmaMaxElementStride))
      return *why = "element stride > 8", false;
    if (m.box % m.elem_step != 0) return *why = "box not a multiple of its element stride", false;
    if (i > 0 && (m.stride % 16 != 0 || m.stride >= (uint64_t(1) << 40)))
      return *why = "stride", false;
  }
  if (dims[0].box != uint32_t(chunk) || dims[0].elem_step != 1) return *why = "inner box", false;
  return true;
}

template <int T0, int T1, int T2>
void run_case(const Case& c, long* boxes_total) {
  constexpr int tile[3] = {T0, T1, T2};
  TileLoads l;
  if (const char* why = gna::plan_tile_loads(tile, c.dilation, c.extent, c.batch, &l)) {
    fail(c, std::string("no plan: ") + why);
    return;
  }
  for (int a = 0; a < 3; ++a)
    if (l.boxes[a] * l.rows[a] != tile[a]) return fail(c, "boxes x rows is not the tile");
  const int chunk = c.head_dim >= 64 ? 64 : c.head_dim;
  const int chunks = c.head_dim / chunk;
  MapDim maps[2][gna::kTmaMaxDims];
  for (int m = 0; m < 2; ++m) {
    gna::tile_map_dims(l, m, c.dilation, c.extent, c.batch, c.heads, c.head_dim, chunk, kElem,
                       maps[m]);
    std::string why;
    const bool used = m == 1 || l.split < 0 || l.split_rem > 0;
    if (used && !map_legal(maps[m], chunk, &why)) return fail(c, "map " + std::to_string(m) + why);
  }
  const int64_t per_pos = int64_t(c.heads) * c.head_dim;
  const int64_t numel =
      int64_t(c.batch) * c.extent[0] * c.extent[1] * c.extent[2] * per_pos;  // elements
  const int tokens = T0 * T1 * T2;
  std::vector<int64_t> smem(size_t(tokens) * chunk);

  // Every dilation group, every tile origin that covers its positions (and one past the end),
  // every batch entry; one head and every chunk per item.
  int g[3];
  for (g[0] = 0; g[0] < c.dilation[0]; ++g[0])
    for (g[1] = 0; g[1] < c.dilation[1]; ++g[1])
      for (g[2] = 0; g[2] < c.dilation[2]; ++g[2]) {
        int count[3];
        for (int a = 0; a < 3; ++a) {
          const int lg = (c.extent[a] - g[a] + c.dilation[a] - 1) / c.dilation[a];
          count[a] = (lg + tile[a] - 1) / tile[a] + 1;
        }
        for (int b = 0; b < c.batch; ++b)
          for (int t0 = 0; t0 < count[0]; ++t0)
            for (int t1 = 0; t1 < count[1]; ++t1)
              for (int t2 = 0; t2 < count[2]; ++t2) {
                const int origin[3] = {t0 * T0, t1 * T1, t2 * T2};
                const int head = (b + t0 + t1 + t2) % c.heads;
                for (int ch = 0; ch < chunks; ++ch) {
                  std::fill(smem.begin(), smem.end(), -1);  // poison: unwritten rows fail
                  int64_t bytes = 0;
                  bool ok = true;
                  std::string why;
                  gna::for_each_tile_box<T0, T1, T2>(
                      l, c.dilation, g, b, origin,
                      [&](int map, int token, int c1, int c2, int c3, int c4) {
                        ++*boxes_total;
                        const MapDim* d = maps[map];
                        if (map == 0 && l.split >= 0 && l.split_rem == 0)
                          ok = false, why = "map 0 used without groups";
                        if (token % gna::kTileBoxAlignTokens != 0)
                          ok = false, why = "box not on a swizzle atom";
                        int64_t coord[5] = {int64_t(head) * c.head_dim + ch * chunk, c1, c2, c3,
                                            c4};
                        int n[5];
                        for (int i = 0; i < 5; ++i) n[i] = int(d[i].box / d[i].elem_step);
                        int64_t lin = 0;
                        for (int k4 = 0; k4 < n[4]; ++k4)
                          for (int k3 = 0; k3 < n[3]; ++k3)
                            for (int k2 = 0; k2 < n[2]; ++k2)
                              for (int k1 = 0; k1 < n[1]; ++k1)
                                for (int k0 = 0; k0 < n[0]; ++k0, ++lin) {
                                  const int k[5] = {k0, k1, k2, k3, k4};
                                  bool in = true;
                                  int64_t off = 0;  // bytes
                                  for (int i = 0; i < 5; ++i) {
                                    const int64_t x = coord[i] + int64_t(k[i]) * d[i].elem_step;
                                    in = in && x >= 0 && uint64_t(x) < d[i].extent;
                                    off += x * int64_t(i == 0 ? kElem : d[i].stride);
                                  }
                                  int64_t value = 0;
                                  if (in) {
                                    const int64_t e = off / kElem;
                                    if (e < 0 || e >= numel) {
                                      ok = false, why = "read past the allocation";
                                    } else {
                                      value = e + 1;
                                    }
                                  }
                                  const int64_t row = token + lin / n[0];
                                  if (row >= tokens) {
                                    ok = false, why = "box past the tile";
                                    continue;
                                  }
                                  smem[size_t(row) * chunk + k0] = value;
                                  bytes += kElem;
                                }
                      });
                  if (bytes != int64_t(tokens) * chunk * kElem)
                    ok = false, why = "transaction bytes " + std::to_string(bytes);
                  // The definition.
                  for (int r = 0; ok && r < tokens; ++r) {
                    const int o[3] = {r / (T1 * T2), (r / T2) % T1, r % T2};
                    int64_t pos[3];
                    bool inside = true;
                    for (int a = 0; a < 3; ++a) {
                      pos[a] = g[a] + int64_t(c.dilation[a]) * (origin[a] + o[a]);
                      inside = inside && pos[a] < c.extent[a];
                    }
                    for (int e = 0; e < chunk; ++e) {
                      int64_t want = 0;
                      if (inside)
                        want = (((int64_t(b) * c.extent[0] + pos[0]) * c.extent[1] + pos[1]) *
                                    c.extent[2] +
                                pos[2]) *
                                   per_pos +
                               int64_t(head) * c.head_dim + ch * chunk + e + 1;
                      if (smem[size_t(r) * chunk + e] != want) {
                        ok = false;
                        why = "row " + std::to_string(r) + " elem " + std::to_string(e) +
                              " holds " + std::to_string(smem[size_t(r) * chunk + e]) + ", want " +
                              std::to_string(want);
                        break;
                      }
                    }
                  }
                  if (!ok) {
                    fail(c, why + " (group " + std::to_string(g[0]) + std::to_string(g[1]) +
                                std::to_string(g[2]) + ", batch " + std::to_string(b) +
                                ", origin " + std::to_string(origin[0]) + "," +
                                std::to_string(origin[1]) + "," + std::to_string(origin[2]) + ")");
                    return;
                  }
                }
              }
      }
}

// The tile shapes the kernels compile (sm90 forward, backward and d256; sm100 the same set).
struct Shape {
  int t[3];
};
constexpr Shape kShapes[] = {{{1, 1, 128}}, {{1, 1, 64}}, {{1, 16, 8}}, {{1, 8, 16}},
                             {{1, 8, 8}},   {{2, 8, 8}},  {{4, 4, 8}}};

void dispatch(const Case& c, long* boxes) {
  const int* t = c.tile;
#define GNA_SHAPE(A, B, C) \
  if (t[0] == A && t[1] == B && t[2] == C) return run_case<A, B, C>(c, boxes);
  GNA_SHAPE(1, 1, 128)
  GNA_SHAPE(1, 1, 64)
  GNA_SHAPE(1, 16, 8)
  GNA_SHAPE(1, 8, 16)
  GNA_SHAPE(1, 8, 8)
  GNA_SHAPE(2, 8, 8)
  GNA_SHAPE(4, 4, 8)
#undef GNA_SHAPE
  fail(c, "unknown tile shape");
}

int pick(std::mt19937& rng, std::initializer_list<int> values) {
  std::uniform_int_distribution<size_t> u(0, values.size() - 1);
  return *(values.begin() + u(rng));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 12 && std::string(argv[1]) == "plan") {
    int v[10];
    for (int i = 0; i < 10; ++i) v[i] = std::atoi(argv[2 + i]);
    TileLoads l;
    if (const char* why = gna::plan_tile_loads(v, v + 3, v + 6, v[9], &l)) {
      std::printf("refused %s\n", why);
      return 0;
    }
    std::printf("boxes %d split %d fold %d\n", gna::tile_boxes(l), l.split, l.fold);
    return 0;
  }
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <seed> <cases> | plan T0 T1 T2 d0 d1 d2 E0 E1 E2 batch\n",
                 argv[0]);
    return 2;
  }
  std::mt19937 rng(std::atoi(argv[1]));
  const int cases = std::atoi(argv[2]);
  long boxes = 0;
  for (int i = 0; i < cases; ++i) {
    Case c{};
    const Shape& s = kShapes[rng() % std::size(kShapes)];
    const int rank = s.t[0] > 1 ? 3 : s.t[1] > 1 ? 2 : 1;
    for (int a = 0; a < 3; ++a) {
      c.tile[a] = s.t[a];
      const bool real = a >= 3 - rank;
      // Dilations: small, at the element-stride limit, past it, and large (1-D up to 128).
      c.dilation[a] = real ? pick(rng, {1, 1, 2, 3, 5, 8, 9, 13, 16, 32, rank == 1 ? 128 : 17}) : 1;
      // Extents: a few positions per group up to a few tiles, odd, and sometimes shorter than
      // the dilation when a view's array is short (a split then cannot serve that axis).
      const int per_group = int(rng() % (2 * c.tile[a] + 3)) + 1;
      c.extent[a] = real ? c.dilation[a] * per_group + int(rng() % c.dilation[a]) : 1;
      if (real && rng() % 16 == 0) c.extent[a] = 1 + int(rng() % c.dilation[a]);
    }
    c.batch = 1 + int(rng() % 3);
    c.heads = 1 + int(rng() % 3);
    c.head_dim = pick(rng, {32, 64, 128, 256});
    // Keep each case small enough to emulate (groups x tiles x boxes).
    const int64_t groups = int64_t(c.dilation[0]) * c.dilation[1] * c.dilation[2];
    if (groups > 256) continue;
    dispatch(c, &boxes);
  }
  std::printf("cases %d boxes %ld failures %d\n", cases, boxes, failures);
  return failures == 0 ? 0 : 1;
}
