// Host-side check of the sm100 forward kernel's shared-memory views (kernel/fwd_kernel_ws.cuh),
// for tests/test_sm100_layouts.py, for 16-bit and FP8 inputs: V, the MN-major B of P V, is the
// K-major tile TMA fills (the K layout over the same bytes), the tile's chunks of 128 or 64 bytes
// of each token lie where their TMA boxes put them (fwd_host.h's load_chunk), and kPVector
// consecutive columns of a P row are 16 contiguous bytes (the softmax threads' vector stores).
// Prints one line per kernel and exits non-zero on a mismatch. Host code only (CuTe layouts
// evaluated on the CPU); built by nvcc.
#include <cstdio>

#include "cuda/common/fwd_host.h"
#include "cuda/sm100/kernel/fwd_kernel_ws.cuh"

template <class K>
int mismatches() {
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
  using gna::sm100::FwdKernel;
  int bad = 0;
  bad += mismatches<FwdKernel<cutlass::bfloat16_t, 32, 3, 0>>();
  bad += mismatches<FwdKernel<cutlass::bfloat16_t, 128, 3, 0>>();
  bad += mismatches<FwdKernel<cutlass::float_e4m3_t, 64, 2, 0>>();
  bad += mismatches<FwdKernel<cutlass::float_e4m3_t, 128, 3, 0>>();
  bad += mismatches<FwdKernel<cutlass::float_e4m3_t, 128, 1, 0>>();
  return bad != 0;
}
