// Host-side check of the sm100 backward kernel's shared-memory views (kernel/bwd_kernel_ws.cuh),
// for tests/test_sm100_layouts.py: every operand the kernel reads through a second layout is
// the same bytes as the tile written through the first. dS (Q, KV), the MN-major A of dQ, is
// dS^T (KV, Q) as the compute threads write it; Q^T / dO^T and K^T (MN-major B of dK, dV, dQ)
// are the K-major tiles TMA fills; and 8 consecutive columns of a P^T / dS^T row are 16
// contiguous bytes (the compute threads' vector stores). Prints one line per kernel and exits
// non-zero on a mismatch. Host code only (CuTe layouts evaluated on the CPU); built by nvcc.
#include <cstdio>

#include "cuda/sm100/kernel/bwd_kernel_ws.cuh"

template <class K>
int mismatches() {
  int bad = 0;
  const auto pt = typename K::SmemLayoutPt{};
  const auto ds = typename K::SmemLayoutDS{};
  for (int q = 0; q < K::kTileQ; ++q)
    for (int kv = 0; kv < K::kTileKV; ++kv) bad += pt(kv, q) != ds(q, kv);
  for (int r = 0; r < K::kTileKV; ++r)
    for (int c = 0; c < K::kTileQ; c += 8)
      for (int i = 1; i < 8; ++i) bad += pt(r, c + i) != pt(r, c) + i;
  const auto q_rows = typename K::SmemLayoutQ{};
  const auto q_cols = typename K::SmemLayoutQt{};
  for (int s = 0; s < K::kStages; ++s)
    for (int r = 0; r < K::kTileQ; ++r)
      for (int d = 0; d < K::kHeadDim; ++d) bad += q_rows(r, d, s) != q_cols(d, r, s);
  const auto kv_rows = typename K::SmemLayoutKV{};
  const auto kv_cols = typename K::SmemLayoutKt{};
  for (int r = 0; r < K::kTileKV; ++r)
    for (int d = 0; d < K::kHeadDim; ++d) bad += kv_rows(r, d, 0) != kv_cols(d, r, 0);
  std::printf("bwd d%d rank %d stages %d smem %zu mismatches %d\n", K::kHeadDim, K::kRank,
              K::kStages, K::kSmemBytes, bad);
  return bad;
}

int main() {
  using gna::sm100::BwdKernel;
  int bad = 0;
  bad += mismatches<BwdKernel<cutlass::bfloat16_t, 32, 3>>();
  bad += mismatches<BwdKernel<cutlass::bfloat16_t, 64, 3>>();
  bad += mismatches<BwdKernel<cutlass::bfloat16_t, 128, 3>>();
  bad += mismatches<BwdKernel<cutlass::half_t, 128, 1>>();
  return bad != 0;
}
