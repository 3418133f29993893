// Host-side check of the sm100 kernels' shared-memory views, for tests/test_sm100_layouts.py:
// every operand a kernel reads through a second layout is the same bytes as the tile written
// through the first. Backward (kernel/bwd_kernel_ws.cuh): dS (Q, KV), the MN-major A of dQ, is
// dS^T (KV, Q) as the compute threads write it; Q^T / dO^T and K^T (MN-major B of dK, dV, dQ) are
// the K-major tiles TMA fills; 8 consecutive columns of a P^T / dS^T row are 16 contiguous bytes
// (the compute threads' vector stores). Forward (kernel/fwd_kernel_ws.cuh), 16-bit and FP8: V,
// the MN-major B of P V, is the K-major tile TMA fills, the tile's chunks of 128 or 64 bytes of
// each token lie where their TMA boxes put them (fwd_host.h's load_chunk), and kPVector
// consecutive columns of a P row are 16 contiguous bytes (the softmax threads' vector stores).
// Prints one line per kernel ("fwd ..." or "bwd ...") and exits non-zero on a mismatch. Host
// code only (CuTe layouts evaluated on the CPU); built by nvcc.
#include <cstdio>

#include "cuda/common/fwd_host.h"
#include "cuda/sm100/kernel/bwd_kernel_ws.cuh"
#include "cuda/sm100/kernel/fwd_kernel_ws.cuh"

template <class K>
int bwd_mismatches() {
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

template <class K>
int fwd_mismatches() {
  using Element = typename K::Element;
  int bad = 0;
  const auto k_rows = typename K::SmemLayoutK{};
  const auto v_cols = typename K::SmemLayoutV{};
  for (int s = 0; s < K::kStages; ++s)
    for (int r = 0; r < K::kTileKV; ++r)
      for (int d = 0; d < K::kHeadDim; ++d) bad += k_rows(r, d, s) != v_cols(d, r, s);
  // The host's TMA boxes are the kernel's chunks.
  const gna::DType dtype = sizeof(Element) == 1 ? gna::DType::kE4M3 : gna::DType::kBF16;
  bad += K::kChunk != gna::fwd_host::load_chunk(dtype, K::kHeadDim);
  // Chunk c of token r lands where TMA box c puts it: kTileKV rows of kChunk elements, chunks
  // one after the other, up to the swizzle within each 8-row atom.
  const int atom = 8 * K::kChunk;
  for (int r = 0; r < K::kTileKV; ++r)
    for (int d = 0; d < K::kHeadDim; ++d) {
      const int box = (d / K::kChunk) * K::kTileKV * K::kChunk + r * K::kChunk + d % K::kChunk;
      bad += int(k_rows(r, d, 0)) / atom != box / atom;
    }
  const auto p = typename K::SmemLayoutP{};
  for (int r = 0; r < K::kTileQ; ++r)
    for (int c = 0; c < K::kTileKV; c += K::kPVector)
      for (int i = 1; i < K::kPVector; ++i) bad += p(r, c + i) != p(r, c) + i;
  std::printf("fwd %s d%d rank %d stages %d chunk %d smem %zu mismatches %d\n",
              sizeof(Element) == 1 ? "e4m3" : "16-bit", K::kHeadDim, K::kRank, K::kStages,
              K::kChunk, K::kSmemBytes, bad);
  return bad;
}

int main() {
  using gna::sm100::BwdKernel;
  using gna::sm100::FwdKernel;
  int bad = 0;
  bad += bwd_mismatches<BwdKernel<cutlass::bfloat16_t, 32, 3>>();
  bad += bwd_mismatches<BwdKernel<cutlass::bfloat16_t, 64, 3>>();
  bad += bwd_mismatches<BwdKernel<cutlass::bfloat16_t, 128, 3>>();
  bad += bwd_mismatches<BwdKernel<cutlass::half_t, 128, 1>>();
  bad += fwd_mismatches<FwdKernel<cutlass::bfloat16_t, 32, 3, 0>>();
  bad += fwd_mismatches<FwdKernel<cutlass::bfloat16_t, 128, 3, 0>>();
  bad += fwd_mismatches<FwdKernel<cutlass::float_e4m3_t, 64, 2, 0>>();
  bad += fwd_mismatches<FwdKernel<cutlass::float_e4m3_t, 128, 3, 0>>();
  bad += fwd_mismatches<FwdKernel<cutlass::float_e4m3_t, 128, 1, 0>>();
  return bad != 0;
}
