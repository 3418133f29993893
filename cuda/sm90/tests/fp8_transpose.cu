// The sm90 FP8 forward's V transpose (FwdFp8Kernel::transpose_v), run on the host over whole
// tiles through the kernel's own shared-memory layouts and lane functions (vt_lane, vt_group,
// vt_permute), with ldmatrix.x4.trans and stmatrix.x4 emulated as the PTX ISA defines them:
// V^T must hold, at head dim d and position a, V's token fp8_p_token(a) (the order P's A
// operand reads), and each matrix instruction must read and write without bank conflicts (four
// matrices of 8 x 16 bytes: four wavefronts), reading only the raw stage and storing each byte of
// the V^T stage once and nothing else. One line per kernel: "<kernel> mismatches <n> stray <n>
// load_wavefronts <w> store_wavefronts <w> smem <bytes>"; exit status 1 on a mismatch or a stray
// access.
// tests/test_sm90_fp8_transpose.py builds it.
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

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lane 8m + r addresses row r of matrix m (8
// 16-bit elements); transposed, thread t receives in register m the elements j = t / 4 of rows
// 2 (t % 4) (low half) and 2 (t % 4) + 1 (high half).
void ldmatrix_x4_trans(const std::vector<uint8_t>& smem, const int (&addr)[32],
                       uint32_t (&reg)[32][4]) {
  auto element = [&](int row_addr, int j) {
    return uint32_t(smem[row_addr + 2 * j]) | uint32_t(smem[row_addr + 2 * j + 1]) << 8;
  };
  for (int t = 0; t < 32; ++t)
    for (int m = 0; m < 4; ++m) {
      const int c = t % 4, j = t / 4;
      reg[t][m] = element(addr[8 * m + 2 * c], j) | element(addr[8 * m + 2 * c + 1], j) << 16;
    }
}

// stmatrix.sync.aligned.m8n8.x4.shared.b16: row r of matrix m (at lane 8m + r's address) takes
// register m of threads 4r..4r + 3, in that order. `writes` counts the stores of each byte.
void stmatrix_x4(std::vector<uint8_t>& smem, std::vector<int>& writes, const int (&addr)[32],
                 const uint32_t (&reg)[32][4]) {
  for (int m = 0; m < 4; ++m)
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 4; ++c)
        for (int b = 0; b < 4; ++b) {
          const int at = addr[8 * m + r] + 4 * c + b;
          if (at < 0 || at >= int(smem.size())) continue;  // counted as stray by the caller
          smem[at] = uint8_t(reg[4 * r + c][m] >> (8 * b));
          ++writes[at];
        }
}

template <int kHeadDim, int kRank, int kConfig>
int check() {
  using K = gna::sm90::FwdFp8Kernel<cutlass::bfloat16_t, kHeadDim, kRank, kConfig, false>;
  using LayoutVRaw = typename K::SmemLayoutVRaw;
  using LayoutVt = typename K::SmemLayoutVt;
  constexpr int D = K::kHeadDim, KV = K::kTileKV;
  std::vector<uint8_t> raw(K::kRawStages * KV * D), vt(K::kStages * KV * D, 0);
  std::vector<int> writes(vt.size(), 0);
  const int rs = K::kRawStages - 1, st = K::kStages - 1;  // (not stage 0: stage offsets count)
  auto value = [](int t, int d) { return uint8_t((t * 7 + d * 13 + (t * d) % 5) & 0xff); };
  for (int t = 0; t < KV; ++t)
    for (int d = 0; d < D; ++d) raw[LayoutVRaw{}(t, d, rs)] = value(t, d);
  // As transpose_v does, warp by warp. Every 16-byte row an instruction reads must lie in raw
  // stage rs, and every byte of V^T stage st must be stored exactly once, no byte elsewhere
  // (stray: the count of violations).
  int load = 0, store = 0, stray = 0;
  for (int warp = 0; warp < K::kProducerWarps; ++warp) {
    for (int i = 0; i < K::kVtUnitsPerWarp; ++i) {
      const int g = K::vt_group(warp, i), k = K::vt_slot(i);
      int src[32], dst[32];
      uint32_t in[32][4], out[32][4];
      for (int lane = 0; lane < 32; ++lane) {
        const typename K::VtLane l = K::vt_lane(warp, lane);
        src[lane] = rs * KV * D + l.src + g * K::kVtSrcGroupStep + k * K::kVtSrcSlotStep;
        dst[lane] = (st * KV * D + l.dst + k * K::kVtDstSlotStep) ^ (16 * g);
      }
      for (int lane = 0; lane < 32; ++lane) {
        stray += src[lane] < rs * KV * D || src[lane] + 16 > (rs + 1) * KV * D;
        stray += dst[lane] < st * KV * D || dst[lane] + 16 > (st + 1) * KV * D;
        if (src[lane] < 0 || src[lane] + 16 > int(raw.size())) src[lane] = 0;  // (stray)
      }
      ldmatrix_x4_trans(raw, src, in);
      for (int lane = 0; lane < 32; ++lane)
        K::vt_permute(K::vt_lane(warp, lane), in[lane], out[lane]);
      stmatrix_x4(vt, writes, dst, out);
      load = std::max(load, wavefronts(src, 16));
      store = std::max(store, wavefronts(dst, 16));
    }
  }
  int mismatches = 0;
  for (int d = 0; d < D; ++d)
    for (int a = 0; a < KV; ++a)
      mismatches += vt[LayoutVt{}(d, a, st)] != value(gna::sm90::fp8_p_token(a), d);
  for (int i = 0; i < int(writes.size()); ++i) stray += writes[i] != (i / (KV * D) == st ? 1 : 0);
  std::printf(
      "fp8_d%d_r%d_c%d mismatches %d stray %d load_wavefronts %d store_wavefronts %d smem %zu\n", D,
      kRank, kConfig, mismatches, stray, load, store, K::kSmemBytes);
  return mismatches != 0 || stray != 0;
}

}  // namespace

// Every configuration of head dim D (the kernel table's FP8_FORWARD head dims).
template <int D>
int check_head_dim() {
  return check<D, 1, 0>() | check<D, 2, 0>() | check<D, 2, 1>() | check<D, 3, 0>() |
         check<D, 3, 1>();
}

// Head dim 256: one configuration per rank.
int check_d256() { return check<256, 1, 0>() | check<256, 2, 0>() | check<256, 3, 0>(); }

int main() { return check_head_dim<64>() | check_head_dim<128>() | check_d256(); }
