// Host probe of the key-by-key recomputation of a forward row (cuda/common/exact_row.h), for
// tests/test_exact_row.py: every query row of every work item of the sm90 forward's launch
// (fwd_params, decode_fwd_work, q_row_token, exact_row: what the kernels run), recomputed as the
// kernels do for a row that came out non-finite, from fp32 inputs. The dot products run over all
// columns; the values go through the column sets of the four threads of a row in the sm90
// accumulator layout, so the four sets must cover each column exactly once.
//
// argv[1]: input file, int32 header
//   rank batch heads kv_heads extent[3] kernel[3] stride[3] dilation[3] causal[3]
//   q_offset[3] q_length[3] kv_offset[3] kv_length[3]
// (problem axes, padded with 1 / 0 past `rank`; the view of gna/problem.h, whole axes: 0,
// extent, 0, extent), one float32 scale, one int32 count (0 or 3 * heads) and that many float32
// descales (FwdParams::descale, as FP8 inputs carry them: [3][heads]), then float32 q ([batch,
// q_length..., heads, kD]), k and v ([batch, kv_length..., kv_heads, kD]). argv[2]: output file,
// float32 out ([batch, q_length..., heads, kD]), lse ([batch, q_length..., heads]) and how often
// each row was written (as lse), the rows nobody writes left nan.
#include <cstdio>
#include <vector>

#include "cuda/common/exact_row.h"
#include "cuda/sm90/fwd_config.h"

namespace {

constexpr int kD = 16;  // head dim of the probe: two 8-column blocks per thread's pairs

template <class T>
bool read(std::FILE* f, T* x, size_t n) {
  return std::fread(x, sizeof(T), n, f) == n;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace gna;
  if (argc != 3) return 2;
  std::FILE* in = std::fopen(argv[1], "rb");
  if (!in) return 2;
  int h[4 + 9 * 3], n_descale;
  float scale;
  if (!read(in, h, 4 + 9 * 3) || !read(in, &scale, 1) || !read(in, &n_descale, 1)) return 2;
  std::vector<float> descale(size_t(n_descale < 0 ? 0 : n_descale));
  if (n_descale != 0 && (n_descale != 3 * h[2] || !read(in, descale.data(), descale.size())))
    return 2;
  Problem p;
  p.rank = h[0];
  p.batch = h[1];
  p.heads = h[2];
  p.kv_heads = h[3];
  p.head_dim = p.head_dim_v = kD;
  p.scale = scale;
  int64_t q_tokens = 1, kv_tokens = 1;
  for (int i = 0; i < 3; ++i) {
    p.extent[i] = h[4 + i];
    p.kernel_size[i] = h[7 + i];
    p.stride[i] = h[10 + i];
    p.dilation[i] = h[13 + i];
    p.causal[i] = h[16 + i] != 0;
    p.q_offset[i] = h[19 + i];
    p.q_extent[i] = h[22 + i];
    p.kv_offset[i] = h[25 + i];
    p.kv_extent[i] = h[28 + i];
    if (i < p.rank) q_tokens *= p.q_extent[i], kv_tokens *= p.kv_extent[i];
  }
  const size_t nq = size_t(p.batch * q_tokens * p.heads * kD);
  const size_t nkv = size_t(p.batch * kv_tokens * p.kv_heads * kD);
  std::vector<float> q(nq), k(nkv), v(nkv);
  if (!read(in, q.data(), nq) || !read(in, k.data(), nkv) || !read(in, v.data(), nkv)) return 2;
  std::fclose(in);

  // The sm90 default tiles of this rank (head dim 128's: only the item decode reads them).
  const FwdTileConfig tiles = sm90::fwd_tile_config(p.rank, 128, 0);
  const KernelAxes ax = kernel_axes(p);
  FwdParams fp = fwd_params(p, ax, tiles, nullptr, nullptr);
  fp.descale = descale.empty() ? nullptr : descale.data();
  std::vector<float> out(nq, NAN), lse(size_t(p.batch * q_tokens * p.heads), NAN);
  std::vector<float> written(lse.size(), 0.f);
  auto identity = [](float x) { return x; };
  const RowColumns<kD, kD, kD> all{0};
  for (int item = 0; item < fp.num_items; ++item) {
    const FwdWork w = decode_fwd_work</*kView=*/true>(fp, item, tiles.q, tiles.kv);
    if (!w.valid) continue;
    for (int row = 0; row < tiles.q_size(); ++row) {
      const int64_t token = q_row_token(fp, w, tiles.q, row);
      if (token < 0) continue;  // padding: never stored
      const ExactRow r = exact_row(fp, w, tiles.q, row, token, kD);
      const ExactRowStats s = exact_row_stats(r, q.data(), k.data(), all, identity);
      const int64_t slot = token * p.heads + w.head;
      for (int thread = 0; thread < 4; ++thread) {
        const RowColumns<kD / 4, 2, 8> cols{2 * thread};
        exact_row_values(r, s, q.data(), k.data(), v.data(), all, identity, cols,
                         [&](int j) -> float& { return out[slot * kD + cols(j)]; });
      }
      lse[slot] = exact_row_lse(s);
      written[slot] += 1.f;
    }
  }
  std::FILE* f = std::fopen(argv[2], "wb");
  if (!f) return 2;
  std::fwrite(out.data(), sizeof(float), out.size(), f);
  std::fwrite(lse.data(), sizeof(float), lse.size(), f);
  std::fwrite(written.data(), sizeof(float), written.size(), f);
  std::fclose(f);
  return 0;
}
