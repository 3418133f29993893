// Hopper GNA forward kernel for FP8 (float8_e4m3fn) query, key and value: the 16-bit kernel's
// schedule (fwd_kernel_ws.cuh: warp-specialised producer, two consumer warpgroups in ping-pong,
// TMA loads from the heads-last layout, online softmax against a running max) with an FP8
// mainloop. What differs, and why:
//
// - V^T in shared memory. FP8 wgmma reads both smem operands K-major, so the B operand of
//   O += P V must hold V transposed (head dim rows, tokens contiguous). The producer warpgroup
//   transposes every V tile: TMA lands V as it lands K (a ring of raw stages), its four warps
//   turn it around with ldmatrix.trans, byte permutes and stmatrix (transpose_v) into a second
//   ring (V^T), which the consumers read. The loads run kLoadAhead tiles ahead of the
//   transposes, and the producer warps take turns issuing them (producer()).
// - P's register layout. The fp32 accumulator of S = Q K^T and the 8-bit A operand of P V
//   spread a row's columns differently over the four threads of a quad (the accumulator: pairs
//   2c, 2c + 1 of each 8-column block; the A operand: runs 4c..4c + 3 of each 16-column half of
//   a 32-column block). Rather than exchanging values between threads, each thread packs its
//   own values into its A registers and the kernel permutes the tokens of V^T to match
//   (p_token(): column a of the A operand holds S column p_token(a)). P V sums over tokens, so
//   reading both in the same permuted order gives the same O.
// - Two P fragments (16 registers each, by tile parity): the softmax of tile j writes one while
//   the P V GEMM of tile j - 1 reads the other, so a warpgroup waits for its S GEMM only before
//   the softmax (the 16-bit kernel waits for both).
// - Scales. S is in units of q_descale * k_descale (per query head, from FwdParams::descale):
//   the softmax multiplies by softmax_scale * q_descale * k_descale; O is multiplied by
//   v_descale in the epilogue. P is stored in e4m3 as exp2(.) * 2^kPOffsetLog2: that moves the
//   small probabilities up into e4m3's normal range (3 mantissa bits down to 2^-6, before its
//   subnormals), while the running max's slack (kMaxSlackLog2) keeps P within 2^8 < 448, the
//   largest e4m3. The offset cancels in O / sum and is taken out of the LSE.
// - The output is 16-bit (OutElement), the LSE fp32, as in the 16-bit kernel.
#pragma once

#include <cuda.h>

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/tensor.hpp>
#include <cutlass/pipeline/pipeline.hpp>

#include "../../common/fwd_device.cuh"
#include "../../common/shared_storage.cuh"
#include "../fwd_config.h"
#include "consumer_turns.cuh"
#include "fp8_exp2.cuh"
#include "fwd_gemms.cuh"
#include "fwd_out_rows.cuh"
#include "fwd_trace.cuh"
#include "gna/tile_box.h"
#include "nonfinite_rows.cuh"

namespace gna::sm90 {

// Column a of a 32-token block of P's A operand (and token a of that block of V^T) holds S
// column (token) p_token(a) of the block: A column 16 h + 4 c + B (h: half, c: thread of the
// quad, B: byte of the register) takes the accumulator column 16 h + 8 (B / 2) + 2 c + B % 2,
// which thread c holds for the same row (see the top of fwd_fp8_kernel_ws.cuh).
constexpr int fp8_p_token(int a) {
  const int h = (a >> 4) & 1, c = (a >> 2) & 3, b = a & 3;
  return (a & ~31) + 16 * h + 8 * (b >> 1) + 2 * c + (b & 1);
}

// Which of a thread's S accumulator elements (16 per k32 block) gives byte v of its P registers
// (byte v % 4 of register v / 4; 4 registers per block). Register R = 2 h + rb of a block holds
// row + 8 rb at A columns 16 h + 4 c + B, i.e. S columns 16 h + 2 c + (0, 1) in bytes 0, 1
// (elements 8 h + 2 rb + (0, 1)) and 16 h + 8 + 2 c + (0, 1) in bytes 2, 3 (those + 4).
constexpr int fp8_p_element(int v) {
  const int h = (v >> 3) & 1, rb = (v >> 2) & 1, b = v & 3;
  return (v & ~15) + 8 * h + 2 * rb + 4 * (b >> 1) + (b & 1);
}
// The A operand's layout (row + 8 for odd R; A column 16 h + 4 c + B reads S column
// fp8_p_token of it) against the accumulator's (element i: row + 8 ((i >> 1) & 1), column
// 8 (i >> 2) + 2 c + (i & 1)), for each thread c of a quad.
static_assert(
    [] {
      for (int v = 0; v < 64; ++v) {
        const int i = fp8_p_element(v), reg = v >> 2;
        for (int c = 0; c < 4; ++c) {
          const int a = 32 * (reg >> 2) + 16 * ((reg >> 1) & 1) + 4 * c + (v & 3);
          if (((i >> 1) & 1) != (reg & 1) || 8 * (i >> 2) + 2 * c + (i & 1) != fp8_p_token(a))
            return false;
        }
      }
      return true;
    }(),
    "fp8_p_element: P's bytes where the A operand reads them");

// Four values as e4m3 (rn, satfinite) in bytes 0..3 of a register. ptxas folds the mov into
// the second conversion (F2FP ... MERGE_C writes its pair into the first one's register): two
// instructions and no byte permutes, which converting into pairs of a P array takes.
CUTLASS_DEVICE uint32_t fp8_pack4(float b0, float b1, float b2, float b3) {
  uint32_t r;
  asm("{\n"
      ".reg .b16 lo, hi;\n"
      "cvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n"  // (a, b): a to the upper byte
      "cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n"
      "mov.b32 %0, {lo, hi};\n"
      "}"
      : "=r"(r)
      : "f"(b0), "f"(b1), "f"(b2), "f"(b3));
  return r;
}

// __byte_perm, also on the host (cuda/sm90/tests/fp8_transpose.cu runs the V transpose there).
CUTE_HOST_DEVICE uint32_t fp8_byte_perm(uint32_t x, uint32_t y, uint32_t selector) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, selector);
#else
  const uint64_t bytes = (uint64_t(y) << 32) | x;
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n)
    r |= uint32_t((bytes >> (8 * ((selector >> (4 * n)) & 7))) & 0xff) << (8 * n);
  return r;
#endif
}

// kConfig_: which of fwd_tile_configs(kRank, kHeadDim) (fwd_config.h) the kernel runs (the
// 16-bit kernels' tile shapes); kView_ as FwdKernel.
template <class OutElement_, int kHeadDim_, int kRank_, int kConfig_, bool kView_>
struct FwdFp8Kernel {
  static constexpr bool kView = kView_;
  using Element = cutlass::float_e4m3_t;
  using OutElement = OutElement_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kRank = kRank_;
  static constexpr FwdTileConfig kTiles = fwd_tile_config(kRank, kHeadDim, kConfig_);
  static constexpr int kQ0 = kTiles.q[0], kQ1 = kTiles.q[1], kQ2 = kTiles.q[2];
  static constexpr int kK0 = kTiles.kv[0], kK1 = kTiles.kv[1], kK2 = kTiles.kv[2];
  static constexpr int kTileQ = kTiles.q_size();
  static constexpr int kTileKV = kTiles.kv_size();
  static constexpr int kStages = kTiles.stages;  // K and V^T stages
  static constexpr int kRawStages = 3;           // V as loaded, before the transpose
  // Tiles whose K and V are loaded before the transpose of a tile starts: all but one raw
  // stage, so that a load never waits for the transpose that runs while it is issued.
  static constexpr int kLoadAhead = kRawStages - 1;
  static constexpr int kProducerWarps = 4;
  static constexpr int kThreads = 384;
  static constexpr int kProducerThreads = 128;
  // An item's last P V in the next item's first GEMM turn (fwd_config.h, consumer()).
  static constexpr bool kOverlapItems = fwd_overlap_items(kHeadDim);
  // Registers per thread after the split (128 x producer + 256 x consumer <= 64K): at d256 O
  // alone takes 128 of a consumer's, so the producer gives up 8 more.
  static constexpr int kProducerRegs = kHeadDim == 256 ? 56 : 64;
  static constexpr int kConsumerRegs = kHeadDim == 256 ? 224 : 216;
  static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= 65536, "the register file");
  // P = exp2(S * scale log2 e - running max + kPOffsetLog2): at most 2^kPOffsetLog2 against
  // the tile's max, at most kMaxP against a running max the softmax did not raise (consumer(),
  // softmax_step). kMaxP must stay below 448, the largest e4m3.
  static constexpr int kPOffsetLog2 = 4;
  static constexpr int kMaxSlackLog2 = 4;
  static constexpr float kMaxP = float(1 << (kPOffsetLog2 + kMaxSlackLog2));
  static_assert(kMaxP <= 256.f, "P must fit e4m3 (largest finite: 448)");
  static_assert(kTileQ == 128, "two consumer warpgroups of 64 rows");
  static_assert(kTileKV % 32 == 0 && kTileKV <= 128, "k32 blocks of P; V^T rows of <= 128 B");
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256, "head dim 64, 128 or 256");

  // Q, K and raw V: K-major (token rows, D contiguous) in chunks of 128 elements (128 B, SW128)
  // along D, or one 64-element chunk (64 B, SW64) for d64; chunks after all rows of a chunk,
  // where consecutive TMA boxes land (as the 16-bit kernel).
  static constexpr int kChunk = kHeadDim >= 128 ? 128 : 64;
  static constexpr int kChunks = kHeadDim / kChunk;
  using AtomK = cute::conditional_t<kChunk == 128, cute::GMMA::Layout_K_SW128_Atom<Element>,
                                    cute::GMMA::Layout_K_SW64_Atom<Element>>;
  using SmemLayoutQ =
      decltype(cute::tile_to_shape(AtomK{}, cute::Shape<cute::Int<kTileQ>, cute::Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(cute::tile_to_shape(
      AtomK{}, cute::Shape<cute::Int<kTileKV>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  using SmemLayoutVRaw = decltype(cute::tile_to_shape(
      AtomK{}, cute::Shape<cute::Int<kTileKV>, cute::Int<kHeadDim>, cute::Int<kRawStages>>{}));
  // V^T as the B operand of P V: (N = D, K = tokens), K-major: a row of kTileKV tokens.
  using AtomVt = cute::conditional_t<kTileKV == 128, cute::GMMA::Layout_K_SW128_Atom<Element>,
                                     cute::GMMA::Layout_K_SW64_Atom<Element>>;
  using SmemLayoutVt = decltype(cute::tile_to_shape(
      AtomVt{}, cute::Shape<cute::Int<kHeadDim>, cute::Int<kTileKV>, cute::Int<kStages>>{}));

  using TiledMmaQK = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kTileKV>, cute::Int<kHeadDim>>>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));
  using TiledMmaPV = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kHeadDim>, cute::Int<kTileKV>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::K>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));

  using PipelineK = cutlass::PipelineTmaAsync<kStages>;
  using PipelineVRaw = cutlass::PipelineTmaAsync<kRawStages>;
  using PipelineVt = cutlass::PipelineAsync<kStages>;

  struct SharedStorage {
    alignas(1024) Element q[kTileQ * kHeadDim];
    alignas(1024) Element k[kStages * kTileKV * kHeadDim];
    alignas(1024) Element v_raw[kRawStages * kTileKV * kHeadDim];
    alignas(1024) Element vt[kStages * kTileKV * kHeadDim];
    typename PipelineK::SharedStorage pipe_k;
    typename PipelineVRaw::SharedStorage pipe_v_raw;
    typename PipelineVt::SharedStorage pipe_vt;
    alignas(8) uint64_t q_full;   // Q landed (TMA transaction barrier)
    alignas(8) uint64_t q_empty;  // every consumer thread is done with Q
  };
  // + 1024: the dynamic smem base is re-aligned to 1024 B (SW128 TMA/GMMA).
  static constexpr size_t kSmemBytes = sizeof(SharedStorage) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");

  static constexpr uint32_t kTileBytesQ = kTileQ * kHeadDim;
  static constexpr uint32_t kTileBytesKV = kTileKV * kHeadDim;
  static constexpr uint32_t kChunkBytesQ = kTileQ * kChunk;
  static constexpr uint32_t kChunkBytesKV = kTileKV * kChunk;

  using Work = FwdWork;

  static CUTLASS_DEVICE Work decode_work(const FwdParams& p, int item) {
    constexpr int q_tile[3] = {kQ0, kQ1, kQ2};
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    return decode_fwd_work<kView>(p, item, q_tile, kv_tile);
  }

  template <int T0, int T1, int T2>
  static CUTLASS_DEVICE void load_tile(const TensorMapPair& maps, const TileLoads& loads,
                                       const FwdParams& p, const Work& w, int head,
                                       const int origin[3], uint64_t* barrier, Element* smem,
                                       uint32_t chunk_bytes, uint64_t hint) {
    fwd_device::load_tile<T0, T1, T2, kHeadDim, kChunks, kChunk>(
        maps, loads, p.dilation, w.group, w.batch, head, origin, barrier, smem, chunk_bytes, hint);
  }

  // V^T by warp matrix instructions. A unit of the transpose is 16 tokens x 32 head dims of a
  // tile, turned around by one warp: one ldmatrix.x4.trans, four byte permutes and one
  // stmatrix.x4 (per thread: 16 bytes, ~8 instructions; byte-wise in registers, a tile took
  // ~300 instructions per producer thread, which issued on the schedulers the consumers'
  // softmax needs). ldmatrix.trans turns 16-bit pairs around: matrix m (rows: lanes 8m..8m+7's
  // addresses) holds tokens 8 (m & 1) + 0..7 of the unit at head dims 16 (m >> 1) + 0..15, and
  // thread t (quad c = t % 4, j = t / 4) receives, for each m, head dims 2j, 2j + 1 of the
  // tokens 2c, 2c + 1. The byte permutes join matrices 0/1 (and 2/3): one register per head
  // dim, the tokens 2c, 2c + 1, 8 + 2c, 9 + 2c, which is V^T's positions 4c..4c + 3 of the
  // unit in P's order (fp8_p_token), so stmatrix stores them as they are: row j of matrix n is
  // a 16-byte run of one V^T row. Threads j >= 4 swap their even and odd head dims (the
  // permute selectors, vt_lane), so that each stmatrix matrix writes 8 V^T rows of 8 distinct
  // swizzle phases (head dims 2j, 2j + 1 of one parity would meet in pairs: 2-way conflicts).
  // With at most as many 32-dim ranges of head dims as producer warps (d <= 128), each warp
  // takes one range and every kVtWarpsPerRange-th 16-token group of its tokens; with more
  // (d256), each warp takes kVtRangesPerWarp ranges, kProducerWarps apart, and all their groups.
  static constexpr int kVtRanges = kHeadDim / 32;
  static constexpr int kVtGroups = kTileKV / 16;
  static constexpr bool kVtRangeShared = kVtRanges <= kProducerWarps;
  static constexpr int kVtWarpsPerRange = kVtRangeShared ? kProducerWarps / kVtRanges : 1;
  static constexpr int kVtRangesPerWarp = kVtRangeShared ? 1 : kVtRanges / kProducerWarps;
  static_assert(kVtWarpsPerRange * kVtRanges == kProducerWarps * kVtRangesPerWarp,
                "the producer warps share the 32-dim ranges evenly");
  static_assert(kVtGroups % kVtWarpsPerRange == 0, "whole token groups per warp");
  static constexpr int kVtUnitsPerRange = kVtGroups / kVtWarpsPerRange;
  static constexpr int kVtUnitsPerWarp = kVtRangesPerWarp * kVtUnitsPerRange;

  // A lane's part of every unit of its warp: its ldmatrix row (raw V offset, token group 0)
  // and stmatrix row (V^T offset, token group 0), and its two byte-permute selectors.
  struct VtLane {
    int src;
    int dst;
    uint32_t sel[2];
  };
  static CUTE_HOST_DEVICE VtLane vt_lane(int warp, int lane) {
    // Unsigned: the layouts' divisions by their (power-of-two) atom extents become shifts.
    const uint32_t d0 = 32u * (uint32_t(warp) % kVtRanges);
    const uint32_t m = uint32_t(lane) >> 3, r = uint32_t(lane) & 7;  // the lane's matrix, row
    const uint32_t swap = r >= 4 ? 1 : 0;  // stmatrix row r is thread r's (j = r)
    const int j = lane >> 2;               // the stmatrix row this lane's registers fill
    VtLane l;
    l.src = SmemLayoutVRaw{}(8 * (m & 1) + r, d0 + 16 * (m >> 1), 0u);
    l.dst = SmemLayoutVt{}(d0 + 16 * (m >> 1) + 2 * r + ((m & 1) ^ swap), 0u, 0u);
    // Even head dims: bytes 0, 2 of each pair's registers; odd: bytes 1, 3.
    l.sel[0] = j < 4 ? 0x6420u : 0x7531u;
    l.sel[1] = j < 4 ? 0x7531u : 0x6420u;
    return l;
  }
  // Token group g of a unit: raw V rows 16 g on (an offset added: the layout is linear in
  // whole 16-token groups), V^T positions 16 g on (an XOR: the swizzle phase's bits).
  static constexpr int kVtSrcGroupStep = SmemLayoutVRaw{}(16, 0, 0);
  static CUTE_HOST_DEVICE int vt_group(int warp, int i) {
    return warp / kVtRanges + (i % kVtUnitsPerRange) * kVtWarpsPerRange;
  }
  // Unit i's range is the lane's (vt_lane) plus vt_slot(i) * kProducerWarps ranges: offsets
  // added on both sides (whole swizzle atoms: chunks of 128 head dims in raw V, 128 rows of V^T).
  static CUTE_HOST_DEVICE int vt_slot(int i) { return i / kVtUnitsPerRange; }
  static constexpr int kVtSlotDims = 32 * kProducerWarps;
  static constexpr int kVtSrcSlotStep = kVtRangeShared ? 0 : SmemLayoutVRaw{}(0, kVtSlotDims, 0);
  static constexpr int kVtDstSlotStep = kVtRangeShared ? 0 : SmemLayoutVt{}(kVtSlotDims, 0, 0);
  // The registers of matrices 0..3 (ldmatrix) to the registers stmatrix takes.
  static CUTE_HOST_DEVICE void vt_permute(const VtLane& l, const uint32_t (&in)[4],
                                          uint32_t (&out)[4]) {
    out[0] = fp8_byte_perm(in[0], in[1], l.sel[0]);
    out[1] = fp8_byte_perm(in[0], in[1], l.sel[1]);
    out[2] = fp8_byte_perm(in[2], in[3], l.sel[0]);
    out[3] = fp8_byte_perm(in[2], in[3], l.sel[1]);
  }
  // The offsets of vt_lane, vt_group and vt_slot compose as stated, for every row, head dim,
  // group and slot (tests/test_sm90_fp8_transpose.py runs the whole transpose on the host).
  // Four checks, each within the compiler's constexpr budget; per 16-byte run where the
  // swizzles move whole runs (raw V's along d, V^T's along tokens).
  static constexpr bool vt_groups_compose_src() {
    for (int g = 0; g < kVtGroups; ++g)
      for (int t = 0; t < 16; ++t)
        for (int d = 0; d < kHeadDim; d += 16)
          if (int(SmemLayoutVRaw{}(16 * g + t, d, 0)) !=
              int(SmemLayoutVRaw{}(t, d, 0)) + g * kVtSrcGroupStep)
            return false;
    return true;
  }
  static constexpr bool vt_groups_compose_dst() {
    for (int g = 0; g < kVtGroups; ++g)
      for (int d = 0; d < kHeadDim; ++d)
        if (int(SmemLayoutVt{}(d, 16 * g, 0)) != (int(SmemLayoutVt{}(d, 0, 0)) ^ (16 * g)))
          return false;
    return true;
  }
  static constexpr bool vt_slots_compose_src() {
    for (int k = 1; k < kVtRangesPerWarp; ++k)
      for (int d = 0; d < kVtSlotDims; d += 16)
        for (int t = 0; t < kTileKV; ++t)
          if (int(SmemLayoutVRaw{}(t, d + k * kVtSlotDims, 0)) !=
              int(SmemLayoutVRaw{}(t, d, 0)) + k * kVtSrcSlotStep)
            return false;
    return true;
  }
  static constexpr bool vt_slots_compose_dst() {
    for (int k = 1; k < kVtRangesPerWarp; ++k)
      for (int d = 0; d < kVtSlotDims; ++d)
        for (int t = 0; t < kTileKV; t += 16)
          if (int(SmemLayoutVt{}(d + k * kVtSlotDims, t, 0)) !=
              int(SmemLayoutVt{}(d, t, 0)) + k * kVtDstSlotStep)
            return false;
    return true;
  }
  static_assert(vt_groups_compose_src() && vt_groups_compose_dst(), "V^T transpose offsets");
  static_assert(vt_slots_compose_src() && vt_slots_compose_dst(), "V^T transpose offsets");
  // (A slot's V^T offset keeps the swizzle phase bits clear, as a stage's does.)
  static_assert(kVtDstSlotStep % 128 == 0, "the XOR of a group's positions stays inside");
  static_assert(kTileKV * kHeadDim % 128 == 0, "stages keep the swizzle phase bits clear");

  // V^T of raw stage `raw` into V^T stage `stage`, by the 128 producer threads.
  static CUTLASS_DEVICE void transpose_v(SharedStorage& ss, int raw, int stage, int thread) {
    // The lane's offsets are recomputed for every tile (~20 integer operations): hoisted out of
    // the item loop, they and their parts spilled or were rematerialised in every unit (the
    // producer keeps 64 registers).
    int tid;
    asm volatile("mov.b32 %0, %1;" : "=r"(tid) : "r"(thread));
    const int warp = int(uint32_t(tid) / 32);
    const VtLane l = vt_lane(warp, tid & 31);
    const uint32_t src =
        uint32_t(__cvta_generic_to_shared(ss.v_raw + raw * kTileKV * kHeadDim)) + uint32_t(l.src);
    // Stage bases are multiples of 128 bytes: the XOR of a group's positions stays inside.
    const uint32_t dst =
        uint32_t(__cvta_generic_to_shared(ss.vt + stage * kTileKV * kHeadDim)) + uint32_t(l.dst);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kVtUnitsPerWarp; ++i) {
      const int g = vt_group(warp, i), k = vt_slot(i);
      uint32_t in[4], out[4];
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(in[0]), "=r"(in[1]), "=r"(in[2]), "=r"(in[3])
                   : "r"(src + uint32_t(g * kVtSrcGroupStep + k * kVtSrcSlotStep))
                   : "memory");
      vt_permute(l, in, out);
      const uint32_t to = (dst + uint32_t(k * kVtDstSlotStep)) ^ uint32_t(16 * g);
      asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n"
                   :
                   : "r"(to), "r"(out[0]), "r"(out[1]), "r"(out[2]), "r"(out[3])
                   : "memory");
    }
  }

  // The pipeline states of the producer warpgroup (every thread follows the loads, which lane 0
  // of one warp issues, and transposes).
  struct ProducerStates {
    typename PipelineK::PipelineState k = cutlass::make_producer_start_state<PipelineK>();
    typename PipelineVRaw::PipelineState v_load =
        cutlass::make_producer_start_state<PipelineVRaw>();
    typename PipelineVRaw::PipelineState v_read;  // consumer side: the transposes
    typename PipelineVt::PipelineState vt = cutlass::make_producer_start_state<PipelineVt>();
  };

  struct Pipelines {
    PipelineK& k;
    PipelineVRaw& v_raw;
    PipelineVt& vt;
  };

  static CUTLASS_DEVICE void transpose_next(SharedStorage& ss, Pipelines& pipes, ProducerStates& st,
                                            int tid) {
    pipes.v_raw.consumer_wait(st.v_read);
    pipes.vt.producer_acquire(st.vt);
    transpose_v(ss, st.v_read.index(), st.vt.index(), tid);
    cutlass::arch::fence_view_async_shared();  // the generic-proxy stores, for wgmma
    pipes.vt.producer_commit(st.vt);
    pipes.v_raw.consumer_release(st.v_read);
    ++st.v_read;
    ++st.vt;
  }

  // One work item: thread 0 loads Q once (after the previous item released it); K and V of
  // tile i are loaded by lane 0 of producer warp i % 4 right after that warp's transpose of
  // tile i - kLoadAhead (the first kLoadAhead tiles up front), and every producer thread
  // transposes V of every tile. So a tile's raw V is requested a whole transpose (kLoadAhead
  // - 1 of them) before the transposes need it, and the issue work (~140 SASS instructions per
  // tile) is spread over the four warps, one per SM sub-partition, like the transposes; with one
  // issuing warp, its issue work delayed its transpose and thereby every V^T stage (which all 128
  // threads commit), and the other warps waited for raw V that it issued late.
  static CUTLASS_DEVICE void producer(const FwdMaps& maps, const FwdParams& p, const Work& w,
                                      int count, SharedStorage& ss, Pipelines& pipes,
                                      ProducerStates& st) {
    const int tid = threadIdx.x;
    const int kv_head = w.head / p.kv_group;
    if (tid == 0) {
      if (count > 0) cutlass::arch::ClusterBarrier::wait(&ss.q_empty, (count - 1) & 1);
      cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.q_full, kTileBytesQ);
      const int q_origin[3] = {w.q_tile[0] * kQ0, w.q_tile[1] * kQ1, w.q_tile[2] * kQ2};
      load_tile<kQ0, kQ1, kQ2>(maps.q, p.q_loads, p, w, w.head, q_origin, &ss.q_full, ss.q,
                               kChunkBytesQ, fwd_device::kEvictNormal);
    }
    const int n = w.box.size();
    const int warp = cutlass::canonical_warp_idx_sync();
    const bool lane0 = (tid & 31) == 0;
    int t[3] = {w.box.begin[0], w.box.begin[1], w.box.begin[2]};  // the next tile to load
    int loaded = 0;
    auto load_next = [&] {
      if (loaded == n) return;
      if (lane0 && loaded % kProducerWarps == warp) {
        // K and V of the tile from one coordinate computation per box (both slots first).
        const int origin[3] = {t[0] * kK0, t[1] * kK1, t[2] * kK2};
        pipes.k.producer_acquire(st.k);
        pipes.v_raw.producer_acquire(st.v_load);
        fwd_device::load_tiles<kK0, kK1, kK2, kHeadDim, kChunks, kChunk, int(sizeof(Element))>(
            p.kv_loads, p.dilation, w.group, w.batch, kv_head, origin, kChunkBytesKV,
            fwd_device::kEvictLast,
            fwd_device::TileTarget{maps.k, pipes.k.producer_get_barrier(st.k),
                                   ss.k + st.k.index() * kTileKV * kHeadDim},
            fwd_device::TileTarget{maps.v, pipes.v_raw.producer_get_barrier(st.v_load),
                                   ss.v_raw + st.v_load.index() * kTileKV * kHeadDim});
      }
      ++st.k;
      ++st.v_load;
      ++loaded;
      w.box.next(t);
    };
    // The first tiles: a loop, so that the load code has one copy less (instruction cache).
    CUTLASS_PRAGMA_NO_UNROLL
    for (int i = 0; i < kLoadAhead; ++i) load_next();
    for (int j = 0; j < n; ++j) {
      transpose_next(ss, pipes, st, tid);
      load_next();
    }
  }

  // Every work item of the CTA, the pipeline states carried from one to the next; where
  // kOverlapItems, an item's last P V shares a GEMM turn with the next item's first S GEMM (as
  // in the 16-bit kernel). Returns whether a row of this thread's came out non-finite
  // (nonfinite_rows.cuh).
  static CUTLASS_DEVICE bool consumer(const FwdParams& p, SharedStorage& ss, PipelineK& pipe_k,
                                      PipelineVt& pipe_vt) {
    using namespace cute;
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    const int ctid = threadIdx.x - 128;  // 0..255 over both consumer warpgroups
    const int wg = ctid / 128;
    typename PipelineK::PipelineState state_k;
    typename PipelineVt::PipelineState state_vt;

    TiledMmaQK mma_qk;
    TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(ctid);
    auto thr_pv = mma_pv.get_thread_slice(ctid);

    Tensor sQ = make_tensor(make_smem_ptr(ss.q), SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k), SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(ss.vt), SmemLayoutVt{});
    Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // (MMA, 1, K/32) descriptors
    Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, 1, K/32, stages)
    Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, 1, KV/32, stages)

    Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kTileQ>, Int<kTileKV>>{});
    Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<kTileQ>, Int<kHeadDim>>{});
    // P as the 8-bit A operand of P V: per k32 block 16 values, value 4 R + B in byte B of
    // register R (row + 8 for odd R, columns + 16 for R >= 2: cute's ALayout_64x32). Two of
    // them (16 registers each): the softmax of tile j writes one while the P V GEMM of tile
    // j - 1 still reads the other, so a warpgroup waits for its S GEMM only before the softmax.
    Tensor tOrP0 =
        make_tensor<Element>(partition_shape_A(mma_pv, Shape<Int<kTileQ>, Int<kTileKV>>{}));
    Tensor tOrP1 = make_tensor_like(tOrP0);
    static_assert(decltype(size(tOrP0))::value == decltype(size(tSrS))::value);

    // Accumulator element i of an m64nN wgmma (S, O) sits at row
    // 16 * warp + lane / 4 + 8 * ((i >> 1) & 1) of the warpgroup's 64 rows and at
    // column 8 * (i >> 2) + 2 * (lane % 4) + (i & 1).
    const int lane = threadIdx.x & 31;
    const int col_base = 2 * (lane & 3);
    static_assert(kK2 % 8 == 0, "the n8 column blocks of S must not straddle a KV tile row");

    // The two rows this thread owns: their windows per axis (set at each item's start).
    int row_win_lo[2][3], row_win_len[2][3];

    // The current item's descales (of its query head; k and v: of its key/value head, per query
    // head), set at its start (the previous item's epilogue has its own in OutRows), and its
    // softmax state, reset by start_item once the previous item's epilogue is done.
    float v_descale = 1.f, scale_log2 = 1.f, mult = 1.f;
    bool prescale = false;
    auto set_descales = [&](const Work& w) {
      const HeadScales scales = head_scales(p, w.head);
      scale_log2 = scales.scale_log2;
      v_descale = scales.v_scale;
      // Scores enter exp2 as S * mult - max * mult (one FFMA). A non-positive
      // scale would flip the max, so such scores are scaled before the mask.
      prescale = !(scale_log2 > 0.f);
      mult = prescale ? 1.f : scale_log2;
    };
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};
    auto start_item = [&] {
      row_max[0] = row_max[1] = -INFINITY;
      row_sum[0] = row_sum[1] = 0.f;
      clear(tOrO);
    };

    // The softmax of the 16-bit kernel (see there), with P offset by 2^kPOffsetLog2 and
    // written in the A operand's register order.
    constexpr int kAcc = 4;
    auto acc = [](int i) { return (i & 1) | ((i >> 1) & 2); };
    // Into P (`p`: tOrP0 or tOrP1), a register of 4 values (fp8_p_element) at a time, packed
    // by fp8_pack4. Exponential i is exp2_fma's where fp8_exp2_on_fma(i) (fp8_exp2.cuh: the
    // development knob GNA_SM90_FP8_FMA_EXP2), else MUFU.EX2's. Each sum sp[r][a] (the i of
    // one i % 8) adds them in increasing i, as the registers come in order, and starts from its
    // first (i < 8), not from 0 + e (one FADD less each).
    auto exponentials = [&](auto& p, const float* m_scaled, float (&sp)[2][kAcc]) {
      Tensor p_regs = recast<uint32_t>(p);
      const float m_p[2] = {m_scaled[0] - float(kPOffsetLog2), m_scaled[1] - float(kPOffsetLog2)};
      CUTLASS_PRAGMA_UNROLL
      for (int reg = 0; reg < size(p_regs); ++reg) {
        float e[4];
        CUTLASS_PRAGMA_UNROLL
        for (int b = 0; b < 4; ++b) {
          const int i = fp8_p_element(4 * reg + b), r = (i >> 1) & 1;
          const float x = __fmaf_rn(tSrS(i), mult, -m_p[r]);
          e[b] = fp8_exp2_on_fma(i) ? exp2_fma(x) : fwd_device::exp2_approx(x);
          float& s = sp[r][acc(i)];
          s = i < 8 ? e[b] : s + e[b];
        }
        p_regs(reg) = fp8_pack4(e[0], e[1], e[2], e[3]);
      }
    };
    auto scaled = [&](float m) { return m == -INFINITY ? 0.f : m * mult; };
    auto softmax_step = [&](auto& p, bool partial, const int* kv_origin, float* corr,
                            bool speculate) {
      if (prescale) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(tSrS); ++i) tSrS(i) *= scale_log2;
      }
      if (partial) {
        int x2[2];
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < 2; ++r) x2[r] = kv_origin[2] + col_base - row_win_lo[r][2];
        CUTLASS_PRAGMA_UNROLL
        for (int n8 = 0; n8 < kTileKV / 8; ++n8) {
          int o[3];
          fwd_device::tile_offsets<kK0, kK1, kK2>(8 * n8, o);
          CUTLASS_PRAGMA_UNROLL
          for (int r = 0; r < 2; ++r) {
            const bool row_ok =
                unsigned(kv_origin[0] + o[0] - row_win_lo[r][0]) < unsigned(row_win_len[r][0]) &&
                unsigned(kv_origin[1] + o[1] - row_win_lo[r][1]) < unsigned(row_win_len[r][1]);
            CUTLASS_PRAGMA_UNROLL
            for (int i0 = 0; i0 < 2; ++i0) {
              const int i = i0 + 2 * r + 4 * n8;
              const bool vis = row_ok && unsigned(x2[r] + o[2] + i0) < unsigned(row_win_len[r][2]);
              if (!vis) tSrS(i) = -INFINITY;
            }
          }
        }
      }
      float sp[2][kAcc] = {};
      auto partial_sum = [&](int r) { return (sp[r][0] + sp[r][1]) + (sp[r][2] + sp[r][3]); };
      bool exact = !speculate;
      if (speculate) {
        const float m_scaled[2] = {scaled(row_max[0]), scaled(row_max[1])};
        exponentials(p, m_scaled, sp);
        bool beyond = false;
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < 2; ++r) {
          const float limit = row_max[r] == -INFINITY ? 0.f : kMaxP;
          beyond |= !(partial_sum(r) <= limit) && partial_sum(r) == partial_sum(r);  // NaN: no
        }
        exact = __any_sync(0xffffffff, beyond);
      }
      bool raised = false;
      if (exact) {
        float mp[2][kAcc];
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < 2; ++r) {
          CUTLASS_PRAGMA_UNROLL
          for (int a = 0; a < kAcc; ++a) mp[r][a] = row_max[r];
        }
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(tSrS); ++i) {
          float& m = mp[(i >> 1) & 1][acc(i)];
          m = fmaxf(m, tSrS(i));
        }
        float m_scaled[2];
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < 2; ++r) {
          float m = fmaxf(fmaxf(mp[r][0], mp[r][1]), fmaxf(mp[r][2], mp[r][3]));
          m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 1));
          m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 2));
          const bool raise = m > row_max[r];
          const float m_old = row_max[r];  // -inf * mult (mult > 0) gives corr = 0
          if (raise) row_max[r] = m;
          m_scaled[r] = scaled(row_max[r]);
          corr[r] = raise ? fwd_device::exp2_approx(m_old * mult - m_scaled[r]) : 1.f;
          raised |= raise;
        }
        exponentials(p, m_scaled, sp);
      } else {
        corr[0] = corr[1] = 1.f;
      }
      CUTLASS_PRAGMA_UNROLL
      for (int r = 0; r < 2; ++r) row_sum[r] = row_sum[r] * corr[r] + partial_sum(r);
      return __any_sync(0xffffffff, raised);
    };
    auto rescale_o = [&](bool needed, const float* corr) {
      if (!needed) return;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(tOrO); ++i) tOrO(i) *= corr[(i >> 1) & 1];
    };
    auto release_q = [&] { cutlass::arch::ClusterBarrier::arrive(&ss.q_empty); };
    auto take_turn = [&] { ConsumerTurns::take_gemm(wg); };
    auto pass_turn = [&] { ConsumerTurns::pass_gemm(wg); };
    int count = 0;  // the CTA's items run so far (barrier phases, trace)
    auto stamp = [&](int visit, int k) { fwd_trace::stamp(ctid, count, visit, k); };

    // The item whose last P V and epilogue are still to come (its P in tOrP0, its V^T at
    // state_vt): its rows (fwd_out_rows.cuh; set at its end, as the next item's descales replace
    // its own), its count and visits (for the trace).
    bool pending = false;
    OutRows out;
    int out_count = 0, out_visits = 0;
    auto set_out = [&](const Work& w, int n) {
      out.set<kQ0, kQ1, kQ2>(p, w);
      out.scale(row_sum, row_max, mult, v_descale, kPOffsetLog2);
      out_count = count;
      out_visits = n;
    };
    bool seen = false;  // a row of this thread's came out non-finite
    // The pending item's epilogue, once its last P V landed (`empty`, std::true_type: an item
    // without keys). A row that a non-finite input reached is recomputed after the last item.
    auto epilogue = [&](auto empty) {
      seen |= out.store<decltype(empty)::value, kHeadDim, OutElement>(p, tOrO);
      fwd_trace::stamp_item(ctid, out_count, fwd_trace::kItemDone);
      pending = false;
    };
    // The pending item's last P V, issued in the current GEMM turn once its V^T landed.
    auto pending_pv = [&] { gemm_pv(mma_pv, tOrP0, tOrV(_, _, _, state_vt.index()), tOrO); };
    // The pending item's last P V in a turn of its own (no next item to pair it with).
    auto finish_pending = [&] {
      fwd_trace::stamp(ctid, out_count, out_visits, 0);
      pipe_vt.consumer_wait(state_vt);
      take_turn();
      fwd_trace::stamp(ctid, out_count, out_visits, 1);
      pending_pv();
      pass_turn();
      fwd_trace::stamp(ctid, out_count, out_visits, 2);
      warpgroup_wait<0>();
      fwd_trace::stamp(ctid, out_count, out_visits, 3);
      fwd_trace::stamp(ctid, out_count, out_visits, 4);
      pipe_vt.consumer_release(state_vt);
      ++state_vt;
      fwd_trace::stamp(ctid, out_count, out_visits, 5);
      epilogue(std::false_type{});
    };

    for (int item = blockIdx.x; item < p.num_items; item += gridDim.x) {
      const Work w = decode_work(p, item);
      // Items without a query of their dilation group are skipped by every role alike.
      if (!w.valid) continue;
      fragment_row_windows<kQ0, kQ1, kQ2>(w, row_win_lo, row_win_len);
      KvTileWalk kv_tiles(w);
      const int n = w.box.size();
      set_descales(w);

      fwd_trace::stamp_item(ctid, count, fwd_trace::kItemEntry);
      cutlass::arch::ClusterTransactionBarrier::wait(&ss.q_full, count & 1);
      fwd_trace::stamp_item(ctid, count, fwd_trace::kItemQLanded);

      if (kView && n == 0) {
        if (kOverlapItems && pending) finish_pending();
        release_q();
        set_out(w, n);
        epilogue(std::true_type{});
        ++count;
        continue;
      }
      // Tile 0: S = Q K0^T, with the pending item's last P V in the same turn; that item's
      // epilogue; this item's descales and the softmax.
      {
        stamp(0, 0);
        pipe_k.consumer_wait(state_k);
        take_turn();
        stamp(0, 1);
        gemm_qk(mma_qk, tSrQ, tSrK(_, _, _, state_k.index()), tSrS);
        // The pending item's V^T (transposed by the producer warps) can come after K_0.
        if (kOverlapItems && pending) {
          pipe_vt.consumer_wait(state_vt);
          pending_pv();
        }
        pass_turn();
        stamp(0, 2);
        int origin[3];
        const bool partial = kv_tiles.next(w, kv_tile, origin);
        warpgroup_wait<0>();
        stamp(0, 3);
        pipe_k.consumer_release(state_k);
        ++state_k;
        if (n == 1) release_q();
        if (kOverlapItems && pending) {
          pipe_vt.consumer_release(state_vt);
          ++state_vt;
          epilogue(std::false_type{});
        }
        start_item();
        float corr[2];
        ConsumerTurns::take_softmax(wg);
        softmax_step(tOrP0, partial, origin, corr, /*speculate=*/false);
        ConsumerTurns::pass_softmax(wg);
        stamp(0, 4);
        stamp(0, 5);
      }
      // Tile j: S of j and O += P V of tile j - 1 (P of tile j - 1: `p_old`), the softmax of j
      // into `p_new` once S landed, then O's rescale once the P V GEMM retired.
      auto visit = [&](int j, auto& p_new, auto& p_old) {
        stamp(j, 0);
        pipe_k.consumer_wait(state_k);
        take_turn();
        stamp(j, 1);
        gemm_qk(mma_qk, tSrQ, tSrK(_, _, _, state_k.index()), tSrS);
        // V^T of tile j - 1 (transposed by the producer warps) can come after K_j: S runs
        // meanwhile.
        pipe_vt.consumer_wait(state_vt);
        gemm_pv(mma_pv, p_old, tOrV(_, _, _, state_vt.index()), tOrO);
        pass_turn();
        stamp(j, 2);
        int origin[3];
        const bool partial = kv_tiles.next(w, kv_tile, origin);
        warpgroup_wait<1>();  // S (the older batch)
        stamp(j, 3);
        pipe_k.consumer_release(state_k);
        ++state_k;
        if (j == n - 1) release_q();
        float corr[2];
        ConsumerTurns::take_softmax(wg);
        const bool rescale = softmax_step(p_new, partial, origin, corr, /*speculate=*/true);
        ConsumerTurns::pass_softmax(wg);
        stamp(j, 4);
        warpgroup_wait<0>();
        // The GEMM read p_old's registers until here: none of them may hold anything else.
        warpgroup_fence_operand(p_old);
        warpgroup_fence_operand(tOrO);
        pipe_vt.consumer_release(state_vt);
        ++state_vt;
        rescale_o(rescale, corr);
        stamp(j, 5);
      };
      for (int j = 1; j < n; j += 2) {
        visit(j, tOrP1, tOrP0);
        if (j + 1 < n) visit(j + 1, tOrP0, tOrP1);
      }
      // Where this item's rows go and their scales, set only now: the registers are live from
      // here to its epilogue only. Its last P into tOrP0 (the pending P V reads it there).
      set_out(w, n);
      if ((n - 1) % 2 != 0) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(tOrP0); ++i) tOrP0(i) = tOrP1(i);
      }
      pending = true;
      if constexpr (!kOverlapItems) finish_pending();
      ++count;
    }
    if (pending) finish_pending();
    return seen;
  }

  static CUTLASS_DEVICE void run(const FwdMaps& maps, const FwdParams& p, char* smem_raw) {
    SharedStorage& ss = shared_storage<SharedStorage>(smem_raw);
    const bool producer_wg = threadIdx.x < kProducerThreads;

    typename PipelineK::Params k_params;
    k_params.transaction_bytes = kTileBytesKV;
    k_params.role =
        producer_wg ? PipelineK::ThreadCategory::Producer : PipelineK::ThreadCategory::Consumer;
    k_params.is_leader = producer_wg && threadIdx.x % 32 == 0;  // the issuing lanes (producer())
    k_params.num_consumers = 256;
    k_params.initializing_warp = 0;
    PipelineK pipe_k(ss.pipe_k, k_params, cute::Shape<cute::_1, cute::_1, cute::_1>{});
    // Raw V: loaded and read (the transposes) by the producer warpgroup.
    typename PipelineVRaw::Params v_params;
    v_params.transaction_bytes = kTileBytesKV;
    v_params.role = producer_wg ? PipelineVRaw::ThreadCategory::ProducerConsumer
                                : PipelineVRaw::ThreadCategory::NonParticipant;
    v_params.is_leader = producer_wg && threadIdx.x % 32 == 0;
    v_params.num_consumers = kProducerThreads;
    v_params.initializing_warp = 1;
    PipelineVRaw pipe_v_raw(ss.pipe_v_raw, v_params, cute::Shape<cute::_1, cute::_1, cute::_1>{});
    // V^T: written by the producer warpgroup, read by the consumers.
    typename PipelineVt::Params vt_params;
    vt_params.role =
        producer_wg ? PipelineVt::ThreadCategory::Producer : PipelineVt::ThreadCategory::Consumer;
    vt_params.producer_arv_count = kProducerThreads;
    vt_params.consumer_arv_count = 256;
    vt_params.initializing_warp = 2;
    PipelineVt pipe_vt(ss.pipe_vt, vt_params);
    if (threadIdx.x == 96) {
      cutlass::arch::ClusterTransactionBarrier::init(&ss.q_full, 1);
      cutlass::arch::ClusterBarrier::init(&ss.q_empty, 256);
      cutlass::arch::fence_barrier_init();
    }
    __syncthreads();

    if (producer_wg) {
      cutlass::arch::warpgroup_reg_dealloc<kProducerRegs>();
      Pipelines pipes{pipe_k, pipe_v_raw, pipe_vt};
      ProducerStates states;
      int count = 0;
      for (int item = blockIdx.x; item < p.num_items; item += gridDim.x) {
        const Work w = decode_work(p, item);
        if (!w.valid) continue;
        producer(maps, p, w, count++, ss, pipes, states);
      }
    } else {
      cutlass::arch::warpgroup_reg_alloc<kConsumerRegs>();
      ConsumerTurns::start(threadIdx.x - 128);
      const bool seen = consumer(p, ss, pipe_k, pipe_vt);
      // This thread's rows of every item: those that came out non-finite, recomputed each over
      // its own window (rare: only after a non-finite input).
      rewrite_nonfinite_rows<FwdFp8Kernel, OutElement>(p, seen);
    }
  }
};

}  // namespace gna::sm90
