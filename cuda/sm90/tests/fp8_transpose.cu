// The sm90 FP8 forward's V transpose (FwdFp8Kernel::transpose_block), run on the host over
// whole tiles through the kernel's own shared-memory layouts: V^T must hold, at head dim d and
// position a, V's token fp8_p_token(a) (the order P's A operand reads), and each warp step of
// the producer threads must read and write without bank conflicts (32 threads x 8 bytes: two
// wavefronts). One line per kernel: "<kernel> mismatches <n> load_wavefronts <w> store_wavefronts
// <w> smem <bytes>"; exit status 1 on a mismatch. tests/test_sm90_fp8_transpose.py builds it.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda/sm90/arch.h"
#include "cuda/sm90/kernel/fwd_fp8_kernel_ws.cuh"

namespace {

// Shared-memory wavefronts of one warp access of `bytes` per thread. The hardware serves a
// warp's 8-byte accesses as two half-warps and 16-byte ones as four quarter-warps (128 bytes
// each); each part takes as many wavefronts as the most distinct 4-byte words one bank serves
// for its threads. (Counting over the whole warp instead misses conflicts inside a half-warp.)
int wavefronts(const int (&offsets)[32], int bytes) {
  const int threads = bytes <= 4 ? 32 : 128 / bytes;  // threads per part
  int total = 0;
  for (int first = 0; first < 32; first += threads) {
    int words[32][32], count[32] = {};
    int most = 0;
    for (int t = first; t < first + threads; ++t) {
      for (int w = 0; w < bytes / 4; ++w) {
        const int word = offsets[t] / 4 + w, bank = word % 32;
        bool seen = false;
        for (int i = 0; i < count[bank]; ++i) seen |= words[bank][i] == word;
        if (!seen) words[bank][count[bank]++] = word;
        most = count[bank] > most ? count[bank] : most;
      }
    }
    total += most;
  }
  return total;
}

template <int kHeadDim, int kRank, int kConfig>
int check() {
  using K = gna::sm90::FwdFp8Kernel<cutlass::bfloat16_t, kHeadDim, kRank, kConfig, false>;
  using LayoutVRaw = typename K::SmemLayoutVRaw;
  using LayoutVt = typename K::SmemLayoutVt;
  constexpr int D = K::kHeadDim, KV = K::kTileKV;
  std::vector<uint8_t> raw(K::kRawStages * KV * D), vt(K::kStages * KV * D, 0);
  const int rs = K::kRawStages - 1, st = K::kStages - 1;  // (not stage 0: stage offsets count)
  auto value = [](int t, int d) { return uint8_t((t * 7 + d * 13 + (t * d) % 5) & 0xff); };
  for (int t = 0; t < KV; ++t)
    for (int d = 0; d < D; ++d) raw[LayoutVRaw{}(t, d, rs)] = value(t, d);
  // As the producer slots do: a block that no slot takes leaves zeros (mismatches).
  for (int i = 0; i < K::kTransposeBlocks; ++i)
    K::transpose_block(raw.data(), vt.data(), K::transpose_block_index(i), rs, st);
  int mismatches = 0;
  for (int d = 0; d < D; ++d)
    for (int a = 0; a < KV; ++a)
      mismatches += vt[LayoutVt{}(d, a, st)] != value(gna::sm90::fp8_p_token(a), d);
  // Every warp's every step: the loads of row k and the stores of row j of the 32 threads
  // (slots first + lane).
  int load = 0, store = 0;
  for (int first = 0; first < K::kTransposeBlocks; first += 32) {
    for (int step = 0; step < 8; ++step) {
      int lo[32], st_off[32];
      for (int lane = 0; lane < 32; ++lane) {
        const int b = K::transpose_block_index(first + lane), db = b % K::kTransposeDBlocks,
                  tb = b / K::kTransposeDBlocks;
        lo[lane] = LayoutVRaw{}(gna::sm90::fp8_p_token(8 * tb + step), 8 * db, 0);
        st_off[lane] = LayoutVt{}(8 * db + ((step + (db & 7)) & 7), 8 * tb, 0);
      }
      load = std::max(load, wavefronts(lo, 8));
      store = std::max(store, wavefronts(st_off, 8));
    }
  }
  std::printf("fp8_d%d_r%d_c%d mismatches %d load_wavefronts %d store_wavefronts %d smem %zu\n", D,
              kRank, kConfig, mismatches, load, store, K::kSmemBytes);
  return mismatches != 0;
}

}  // namespace

// Every configuration of head dim D (the kernel table's FP8_FORWARD head dims).
template <int D>
int check_head_dim() {
  return check<D, 1, 0>() | check<D, 2, 0>() | check<D, 2, 1>() | check<D, 3, 0>() |
         check<D, 3, 1>();
}

int main() { return check_head_dim<64>() | check_head_dim<128>(); }
