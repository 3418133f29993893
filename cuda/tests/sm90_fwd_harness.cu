// Standalone GPU harness for the sm90 GNA forward (gna::fwd_launch<gna::sm90::Arch>).
//
//   sm90_fwd_harness check [n_random]   correctness sweep against a brute-force
//                                        CPU reference (double, window.h per element)
//   sm90_fwd_harness bench [filter]      timings of the standard problems (+ spot checks)
//
// Inputs are random (never zeros), outputs are poisoned with NaN before every
// launch, and every element of out/LSE must be written and finite.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../common/launch_api.h"
#include "../sm90/arch.h"
#include "gna/problem.h"
#include "gna/window.h"

#define CHECK_CUDA(x)                                                                      \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, \
                   __LINE__, cudaGetErrorString(e_));                                      \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)

namespace {

using gna::DType;

// The reason fwd_launch gives for a host-side refusal.
std::string launch_error;

cudaError_t launch(const gna::Problem& p, const void* q, const void* k, const void* v, void* out,
                   float* lse) {
  const cudaError_t e =
      gna::fwd_launch<gna::sm90::Arch>(p, q, k, v, out, lse, nullptr, 0, &launch_error);
  if (e != cudaSuccess && !launch_error.empty())
    std::fprintf(stderr, "fwd_launch: %s\n", launch_error.c_str());
  return e;
}
using gna::Problem;

__device__ float hash_uniform(uint64_t i, uint64_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull + 0x2545F4914F6CDD1Dull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 32;
  return float(uint32_t(x)) * (2.0f / 4294967296.0f) - 1.0f;  // [-1, 1)
}

__global__ void fill_random(void* p, size_t n, DType t, uint64_t seed, float amp) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    float v = amp * hash_uniform(i, seed);
    if (t == DType::kBF16)
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(v);
    else
      static_cast<__half*>(p)[i] = __float2half(v);
  }
}

void device_fill(void* p, size_t n, DType t, uint64_t seed, float amp) {
  fill_random<<<1024, 256>>>(p, n, t, seed, amp);
  CHECK_CUDA(cudaGetLastError());
}

double to_double(const uint16_t* p, size_t i, DType t) {
  if (t == DType::kBF16) {
    __nv_bfloat16 b;
    std::memcpy(&b, p + i, 2);
    return double(__bfloat162float(b));
  }
  __half h;
  std::memcpy(&h, p + i, 2);
  return double(__half2float(h));
}

const char* dtype_name(DType t) { return t == DType::kBF16 ? "bf16" : "f16"; }

std::string describe(const Problem& p) {
  char buf[512];
  int n = std::snprintf(buf, sizeof buf, "%s d%d r%d b%lld h%d/%d X=", dtype_name(p.dtype),
                        p.head_dim, p.rank, (long long)p.batch, p.heads, p.kv_heads);
  for (int a = 0; a < p.rank; ++a)
    n += std::snprintf(buf + n, sizeof buf - n, "%s%d", a ? "x" : "", p.extent[a]);
  n += std::snprintf(buf + n, sizeof buf - n, " K=");
  for (int a = 0; a < p.rank; ++a)
    n += std::snprintf(buf + n, sizeof buf - n, "%s%d", a ? "x" : "", p.kernel_size[a]);
  n += std::snprintf(buf + n, sizeof buf - n, " s=");
  for (int a = 0; a < p.rank; ++a)
    n += std::snprintf(buf + n, sizeof buf - n, "%s%d", a ? "x" : "", p.stride[a]);
  n += std::snprintf(buf + n, sizeof buf - n, " d=");
  for (int a = 0; a < p.rank; ++a)
    n += std::snprintf(buf + n, sizeof buf - n, "%s%d", a ? "x" : "", p.dilation[a]);
  n += std::snprintf(buf + n, sizeof buf - n, " c=");
  for (int a = 0; a < p.rank; ++a)
    n += std::snprintf(buf + n, sizeof buf - n, "%d", int(p.causal[a]));
  n += std::snprintf(buf + n, sizeof buf - n, " scale=%.3g", p.scale);
  if (p.tiles_requested()) {
    for (const int* tile : {p.q_tile, p.kv_tile}) {
      n += std::snprintf(buf + n, sizeof buf - n, "%s", tile == p.q_tile ? " tiles Q" : "/KV");
      for (int a = 0; a < p.rank; ++a)
        n += std::snprintf(buf + n, sizeof buf - n, "%s%d", a ? "x" : "", tile[a]);
    }
  }
  return buf;
}

// Device buffers of one problem.
struct Buffers {
  void *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr;
  float* lse = nullptr;
  size_t nq = 0, nkv = 0, nlse = 0;
  explicit Buffers(const Problem& p) {
    const size_t tokens = size_t(p.batch) * p.tokens();
    nq = tokens * p.heads * p.head_dim;
    nkv = tokens * p.kv_heads * p.head_dim;
    nlse = tokens * p.heads;
    CHECK_CUDA(cudaMalloc(&q, nq * 2));
    CHECK_CUDA(cudaMalloc(&k, nkv * 2));
    CHECK_CUDA(cudaMalloc(&v, nkv * 2));
    CHECK_CUDA(cudaMalloc(&out, nq * 2));
    CHECK_CUDA(cudaMalloc(&lse, nlse * 4));
  }
  ~Buffers() {
    cudaFree(q);
    cudaFree(k);
    cudaFree(v);
    cudaFree(out);
    cudaFree(lse);
  }
  void randomize(const Problem& p, uint64_t seed, float amp_qk) {
    device_fill(q, nq, p.dtype, seed * 3 + 1, amp_qk);
    device_fill(k, nkv, p.dtype, seed * 3 + 2, amp_qk);
    device_fill(v, nkv, p.dtype, seed * 3 + 3, 1.0f);
  }
  void poison() {
    CHECK_CUDA(cudaMemset(out, 0xFF, nq * 2));  // NaN in fp16 and bf16
    CHECK_CUDA(cudaMemset(lse, 0xFF, nlse * 4));
  }
};

// Reference out/LSE of one (batch, token, head) by brute force over every key,
// visibility from window.h per element.
void reference_row(const Problem& p, const std::vector<uint16_t>& q, const std::vector<uint16_t>& k,
                   const std::vector<uint16_t>& v, int64_t b, int64_t tok, int h, double* out,
                   double* lse) {
  const int D = p.head_dim;
  const int64_t T = p.tokens();
  const int kvh = h / (p.heads / p.kv_heads);
  int qc[3];
  for (int a = p.rank - 1, t = int(tok); a >= 0; --a) {
    qc[a] = t % p.extent[a];
    t /= p.extent[a];
  }
  std::vector<double> qv(D);
  const size_t qoff = ((size_t(b) * T + tok) * p.heads + h) * D;
  for (int d = 0; d < D; ++d) qv[d] = to_double(q.data(), qoff + d, p.dtype);
  std::vector<double> scores;
  std::vector<int64_t> keys;
  double mx = -INFINITY;
  for (int64_t j = 0; j < T; ++j) {
    int kc[3];
    for (int a = p.rank - 1, t = int(j); a >= 0; --a) {
      kc[a] = t % p.extent[a];
      t /= p.extent[a];
    }
    bool vis = true;
    for (int a = 0; a < p.rank && vis; ++a) vis = gna::visible(p.axis(a), qc[a], kc[a]);
    if (!vis) continue;
    const size_t koff = ((size_t(b) * T + j) * p.kv_heads + kvh) * D;
    double s = 0;
    for (int d = 0; d < D; ++d) s += qv[d] * to_double(k.data(), koff + d, p.dtype);
    s *= p.scale;
    scores.push_back(s);
    keys.push_back(j);
    mx = std::max(mx, s);
  }
  double sum = 0;
  for (double& s : scores) {
    s = std::exp(s - mx);
    sum += s;
  }
  for (int d = 0; d < D; ++d) out[d] = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const size_t voff = ((size_t(b) * T + keys[i]) * p.kv_heads + kvh) * D;
    for (int d = 0; d < D; ++d) out[d] += scores[i] / sum * to_double(v.data(), voff + d, p.dtype);
  }
  *lse = mx + std::log(sum);
}

struct CheckResult {
  double max_err = 0, max_lse_err = 0;
  long long bad = 0, nonfinite = 0, rows = 0;
};

// Compares `rows` (all when empty) of the device result with the reference.
CheckResult compare(const Problem& p, const Buffers& buf, const std::vector<int64_t>& rows_in) {
  std::vector<uint16_t> q(buf.nq), k(buf.nkv), v(buf.nkv), out(buf.nq);
  std::vector<float> lse(buf.nlse);
  CHECK_CUDA(cudaMemcpy(q.data(), buf.q, buf.nq * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(k.data(), buf.k, buf.nkv * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(v.data(), buf.v, buf.nkv * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(out.data(), buf.out, buf.nq * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(lse.data(), buf.lse, buf.nlse * 4, cudaMemcpyDeviceToHost));
  CheckResult res;
  // Every element must be written and finite (poisoned with NaN before launch).
  for (size_t i = 0; i < buf.nq; ++i)
    res.nonfinite += !std::isfinite(to_double(out.data(), i, p.dtype));
  for (size_t i = 0; i < buf.nlse; ++i) res.nonfinite += !std::isfinite(lse[i]);
  std::vector<int64_t> rows = rows_in;
  if (rows.empty()) {
    rows.resize(buf.nlse);
    for (size_t i = 0; i < buf.nlse; ++i) rows[i] = int64_t(i);
  }
  const double tol = p.dtype == DType::kBF16 ? 2e-2 : 4e-3;
  const int D = p.head_dim;
  double max_err = 0, max_lse = 0;
  long long bad = 0;
#pragma omp parallel for schedule(dynamic, 16) reduction(max : max_err, max_lse) reduction(+ : bad)
  for (size_t r = 0; r < rows.size(); ++r) {
    const int64_t row = rows[r];  // (batch * T + token) * heads + head
    const int h = int(row % p.heads);
    const int64_t bt = row / p.heads;
    const int64_t tok = bt % p.tokens(), b = bt / p.tokens();
    std::vector<double> ref(D);
    double ref_lse;
    reference_row(p, q, k, v, b, tok, h, ref.data(), &ref_lse);
    double e = 0;
    for (int d = 0; d < D; ++d) {
      const double got = to_double(out.data(), size_t(row) * D + d, p.dtype);
      const double diff = std::fabs(got - ref[d]);
      e = std::isfinite(got) ? std::max(e, diff) : INFINITY;
    }
    const double le = std::isfinite(lse[row]) ? std::fabs(lse[row] - ref_lse) : INFINITY;
    max_err = std::max(max_err, e);
    max_lse = std::max(max_lse, le);
    if (!(e <= tol) || !(le <= 2e-3 * std::max(1.0, std::fabs(ref_lse)))) ++bad;
  }
  res.max_err = max_err;
  res.max_lse_err = max_lse;
  res.bad = bad;
  res.rows = (long long)rows.size();
  return res;
}

Problem make_problem(int rank, const std::vector<int>& ext, const std::vector<int>& ks,
                     const std::vector<int>& st, const std::vector<int>& dil,
                     const std::vector<int>& causal, int batch, int heads, int kv_heads, int D,
                     DType t) {
  Problem p;
  p.rank = rank;
  p.batch = batch;
  p.heads = heads;
  p.kv_heads = kv_heads;
  p.head_dim = p.head_dim_v = D;
  p.dtype = t;
  for (int a = 0; a < rank; ++a) {
    p.extent[a] = ext[a];
    p.kernel_size[a] = ks[a];
    p.stride[a] = st[a];
    p.dilation[a] = dil[a];
    p.causal[a] = causal[a] != 0;
  }
  p.scale = 1.0f / std::sqrt(float(D));
  return p;
}

// A random legal problem of a given rank / head dim / dtype, small enough for
// the brute-force reference, run with a tile configuration drawn among the
// compiled ones (fwd_config.h).
Problem random_problem(std::mt19937& rng, int rank, int D, DType t) {
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int max_tokens = rank == 1 ? 3000 : 2500;
  const gna::sm90::FwdTileConfigs table = gna::sm90::fwd_tile_configs(rank, D);
  const gna::sm90::FwdTileConfig tiles = table.config[uni(0, table.count - 1)];
  std::vector<int> ext(rank), ks(rank), st(rank), dil(rank), causal(rank);
  for (;;) {
    long long tokens = 1;
    for (int a = 0; a < rank; ++a) {
      const int hi = rank == 1 ? 3000 : rank == 2 ? 60 : 16;
      ext[a] = uni(3, hi);
      tokens *= ext[a];
    }
    if (tokens <= max_tokens && tokens >= 16) break;
  }
  for (int a = 0; a < rank; ++a) {
    const int kaxis = 3 - rank + a;
    const int max_dil = std::min(256 / std::max(tiles.q[kaxis], tiles.kv[kaxis]), ext[a] / 2);
    dil[a] = (uni(0, 3) == 0 && max_dil >= 2) ? uni(2, std::min(max_dil, 4)) : 1;
    const int lmax = ext[a] / dil[a];
    ks[a] = uni(2, lmax);
    if (uni(0, 4) == 0) ks[a] = lmax;  // whole axis
    st[a] = uni(0, 2) == 0 ? uni(1, ks[a]) : 1;
    causal[a] = uni(0, 3) == 0;
  }
  const int kvh = uni(1, 2);
  const int heads = kvh * uni(1, 2);
  const int batch = uni(1, 2);
  Problem p = make_problem(rank, ext, ks, st, dil, causal, batch, heads, kvh, D, t);
  for (int a = 0; a < rank; ++a) {
    p.q_tile[a] = tiles.q[3 - rank + a];
    p.kv_tile[a] = tiles.kv[3 - rank + a];
  }
  const int sc = uni(0, 9);
  if (sc == 0) p.scale = -0.05f;  // non-positive scale: the prescaled path
  if (sc == 1) p.scale = 0.5f;
  return p;
}

int run_check(int n_random) {
  std::vector<Problem> cases;
  const DType bf = DType::kBF16, hf = DType::kF16;
  // Hand-picked: borders, dense, blocked (full tiles only), causal, GQA, batch 2.
  cases.push_back(make_problem(1, {1000}, {129}, {1}, {1}, {0}, 2, 4, 2, 128, bf));
  cases.push_back(make_problem(1, {300}, {300}, {1}, {1}, {0}, 1, 2, 1, 128, bf));
  cases.push_back(make_problem(1, {517}, {64}, {16}, {1}, {1}, 2, 2, 2, 128, hf));
  cases.push_back(make_problem(1, {4096}, {2048}, {256}, {1}, {0}, 1, 1, 1, 128, bf));
  cases.push_back(make_problem(1, {777}, {33}, {1}, {2}, {0}, 1, 2, 1, 64, bf));
  cases.push_back(make_problem(2, {37, 45}, {13, 9}, {1, 1}, {1, 1}, {0, 0}, 2, 2, 1, 128, bf));
  cases.push_back(make_problem(2, {64, 64}, {16, 16}, {16, 16}, {1, 1}, {0, 0}, 1, 2, 2, 128, bf));
  cases.push_back(make_problem(2, {30, 50}, {7, 21}, {3, 5}, {1, 1}, {1, 0}, 2, 3, 1, 128, hf));
  cases.push_back(make_problem(2, {33, 47}, {5, 7}, {2, 1}, {2, 3}, {0, 1}, 1, 2, 2, 128, bf));
  cases.push_back(
      make_problem(3, {9, 17, 20}, {5, 7, 9}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2, 2, 1, 128, bf));
  cases.push_back(
      make_problem(3, {10, 16, 16}, {4, 8, 8}, {2, 8, 8}, {1, 1, 1}, {0, 0, 0}, 1, 2, 1, 128, bf));
  cases.push_back(
      make_problem(3, {7, 13, 11}, {3, 5, 4}, {1, 2, 3}, {1, 1, 1}, {1, 0, 1}, 2, 2, 2, 128, hf));
  cases.push_back(
      make_problem(3, {8, 15, 14}, {3, 4, 3}, {1, 1, 2}, {1, 2, 2}, {0, 1, 0}, 1, 2, 1, 128, bf));
  for (int D : {32, 64, 256}) {
    cases.push_back(make_problem(2, {37, 45}, {13, 9}, {1, 1}, {1, 1}, {0, 0}, 2, 2, 1, D, bf));
    cases.push_back(
        make_problem(3, {9, 17, 20}, {5, 7, 9}, {2, 1, 3}, {1, 1, 1}, {0, 1, 0}, 1, 2, 2, D, hf));
  }
  std::mt19937 rng(20261122);
  const int dims[4] = {32, 64, 128, 256};
  for (int i = 0; i < n_random; ++i) {
    const int rank = i % 3 + 1;
    const int D = dims[(i / 3) % 4];
    const DType t = (i / 12) % 2 ? hf : bf;
    cases.push_back(random_problem(rng, rank, D, t));
  }

  int failures = 0, skipped = 0;
  double worst[2] = {0, 0};
  for (size_t c = 0; c < cases.size(); ++c) {
    const Problem& p = cases[c];
    const char* why = gna::fwd_can_implement<gna::sm90::Arch>(p);
    if (why) {
      std::printf("[%3zu] SKIP %s: %s\n", c, describe(p).c_str(), why);
      ++skipped;
      continue;
    }
    Buffers buf(p);
    buf.randomize(p, 1000 + c, 1.5f);
    buf.poison();
    CHECK_CUDA(launch(p, buf.q, buf.k, buf.v, buf.out, buf.lse));
    CHECK_CUDA(cudaDeviceSynchronize());
    const CheckResult r = compare(p, buf, {});
    const bool ok = r.bad == 0 && r.nonfinite == 0;
    failures += !ok;
    const int ti = p.dtype == DType::kBF16 ? 0 : 1;
    worst[ti] = std::max(worst[ti], r.max_err);
    std::printf(
        "[%3zu] %s %s: max|err| %.2e  max|lse err| %.2e  bad rows %lld/%lld  nonfinite %lld\n", c,
        ok ? "ok  " : "FAIL", describe(p).c_str(), r.max_err, r.max_lse_err, r.bad, r.rows,
        r.nonfinite);
    std::fflush(stdout);
  }
  std::printf(
      "CHECK SUMMARY: %zu cases, %d failed, %d skipped; worst max|err| bf16 %.2e f16 %.2e\n",
      cases.size(), failures, skipped, worst[0], worst[1]);
  return failures ? 1 : 0;
}

struct Bench {
  const char* name;
  Problem p;
};

int run_bench(const char* filter, int reps) {
  std::vector<Bench> benches;
  const DType bf = DType::kBF16, hf = DType::kF16;
  auto hv = [&](std::vector<int> k, std::vector<int> s, DType t) {
    return make_problem(3, {30, 48, 80}, k, s, {1, 1, 1}, {0, 0, 0}, 1, 24, 24, 128, t);
  };
  auto fl = [&](std::vector<int> k, std::vector<int> s, DType t) {
    return make_problem(2, {256, 256}, k, s, {1, 1}, {0, 0}, 1, 24, 24, 128, t);
  };
  auto d1 = [&](int k, int s, DType t) {
    return make_problem(1, {32768}, {k}, {s}, {1}, {0}, 1, 1, 1, 128, t);
  };
  // Overhead sweep: 1-D blocked attention (stride = window, multiples of the
  // 128-token tile), so every CTA visits exactly window / 128 full KV tiles;
  // 128 Q tiles x 33 heads = 4224 CTAs = 32 waves on 132 SMs. Time per wave vs
  // tiles per CTA gives the per-CTA overhead and the per-tile cost.
  for (int w : {128, 256, 512, 1024, 2048, 4096}) {
    static char names[6][32];
    static int ni = 0;
    char* name = names[ni++ % 6];
    std::snprintf(name, 32, "sweep_1d_blocked_w%d", w);
    benches.push_back({name, make_problem(1, {16384}, {w}, {w}, {1}, {0}, 1, 33, 33, 128, bf)});
  }
  benches.push_back({"hunyuan_gna_s16x8x8", hv({18, 24, 24}, {16, 8, 8}, bf)});
  benches.push_back({"hunyuan_na_s1", hv({18, 24, 24}, {1, 1, 1}, bf)});
  benches.push_back({"hunyuan_dense", hv({30, 48, 80}, {1, 1, 1}, bf)});
  benches.push_back({"flux_gna_s16x16", fl({80, 80}, {16, 16}, bf)});
  benches.push_back({"flux_na_s1", fl({80, 80}, {1, 1}, bf)});
  benches.push_back({"flux_dense", fl({256, 256}, {1, 1}, bf)});
  benches.push_back({"1d_gna_s256", d1(2048, 256, bf)});
  benches.push_back({"1d_na_s1", d1(2048, 1, bf)});
  benches.push_back({"1d_dense", d1(32768, 1, bf)});
  benches.push_back({"flux_gna_s16x16_f16", fl({80, 80}, {16, 16}, hf)});
  benches.push_back({"hunyuan_gna_s16x8x8_f16", hv({18, 24, 24}, {16, 8, 8}, hf)});

  std::printf("%-26s %10s %10s %9s %s\n", "problem", "ms", "TFLOP/s", "spot_err", "spot_check");
  for (const Bench& bench : benches) {
    if (filter && !std::strstr(bench.name, filter)) continue;
    const Problem& p = bench.p;
    const char* why = gna::fwd_can_implement<gna::sm90::Arch>(p);
    if (why) {
      std::printf("%-26s SKIP %s\n", bench.name, why);
      continue;
    }
    Buffers buf(p);
    buf.randomize(p, 7, 1.5f);
    buf.poison();
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    CHECK_CUDA(launch(p, buf.q, buf.k, buf.v, buf.out, buf.lse));
    CHECK_CUDA(cudaDeviceSynchronize());
    // Spot check: 48 random rows against the reference; every element written.
    std::mt19937_64 rng(99);
    std::vector<int64_t> rows(48);
    for (auto& r : rows) r = int64_t(rng() % buf.nlse);
    const CheckResult cr = compare(p, buf, rows);
    // Single launches (event to event, host-side launch cost included), then
    // back-to-back launches (host cost hidden, as in a queued XLA stream).
    std::vector<float> single;
    for (int i = 0; i < 5; ++i) {
      CHECK_CUDA(cudaEventRecord(e0));
      CHECK_CUDA(launch(p, buf.q, buf.k, buf.v, buf.out, buf.lse));
      CHECK_CUDA(cudaEventRecord(e1));
      CHECK_CUDA(cudaEventSynchronize(e1));
      float ms;
      CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
      single.push_back(ms);
    }
    std::sort(single.begin(), single.end());
    const int batch = std::max(3, std::min(reps * 10, int(300.0 / std::max(single[2], 1e-3f))));
    std::vector<float> times;
    for (int r = 0; r < 5; ++r) {
      CHECK_CUDA(cudaEventRecord(e0));
      for (int i = 0; i < batch; ++i) CHECK_CUDA(launch(p, buf.q, buf.k, buf.v, buf.out, buf.lse));
      CHECK_CUDA(cudaEventRecord(e1));
      CHECK_CUDA(cudaEventSynchronize(e1));
      float ms;
      CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
      times.push_back(ms / batch);
    }
    std::sort(times.begin(), times.end());
    const double ms = times[times.size() / 2];
    double keys = 1;
    for (int a = 0; a < p.rank; ++a) keys *= p.kernel_size[a];
    const double flops = 4.0 * p.heads * double(p.batch) * p.tokens() * keys * p.head_dim;
    std::printf(
        "%-26s %10.3f %10.1f %9.2e %s (bad %lld, nonfinite %lld; batches of %d: min %.3f max %.3f "
        "ms; single launch %.3f ms)\n",
        bench.name, ms, flops / (ms * 1e-3) / 1e12, cr.max_err,
        cr.bad == 0 && cr.nonfinite == 0 ? "ok" : "FAIL", cr.bad, cr.nonfinite, batch,
        times.front(), times.back(), single[2]);
    std::fflush(stdout);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (cc %d.%d, %d SMs)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
  if (mode == "check") return run_check(argc > 2 ? std::atoi(argv[2]) : 60);
  if (mode == "bench")
    return run_bench(argc > 2 ? argv[2] : nullptr, argc > 3 ? std::atoi(argv[3]) : 10);
  std::fprintf(stderr, "usage: %s check [n_random] | bench [filter] [reps]\n", argv[0]);
  return 2;
}
