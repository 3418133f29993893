// Blackwell (sm_100a) GNA forward kernel: warp-specialised, TMA loads straight from the user's
// heads-last layout, tcgen05 UMMA with S and O accumulated in tensor memory (TMEM), online
// softmax in fp32 registers with one query row per thread, LSE output.
//
// NOT VALIDATED ON HARDWARE: no Blackwell GPU was available when this was written; it is
// compiled (sm_100a) and its host-side geometry is tested, nothing more (docs/blackwell.md).
//
// A CTA runs one work item (cuda/common/fwd_params.h): one Q tile (128 tokens, a
// multi-dimensional box of the token grid) of one head, one batch entry and one dilation group,
// and visits the KV tiles of the Q tile's KV box (gna/tile_box.h). 192 threads, six warps:
//   warps 0-3 (Softmax): thread t owns query row t, which is TMEM lane t (an M = 128 UMMA
//     accumulator holds row m in lane m). Per KV tile j: S_j from TMEM into registers, mask
//     (partial tiles only), running max, rescale O in TMEM when a row's max grew, P_j = exp2
//     into shared memory (bf16/f16, or e4m3 for FP8 inputs); at the end O / rowsum to global
//     memory and the LSE.
//   warp 4 (Mma): allocates TMEM; one elected thread issues S_{j+1} = Q K_{j+1}^T (SS UMMA into
//     the S buffer (j+1) % 2) before O += P_j V_j (SS UMMA, P from shared memory), so the
//     tensor core computes the next S while the softmax works on the current one.
//   warp 5 (Load): one thread issues TMA loads of Q once, then K_j and V_j into two rings.
// TMEM columns: S0 [0, 128), S1 [128, 256), O [256, 256 + D). All hand-offs are mbarriers with
// explicit phases (SharedStorage); tcgen05.commit arrives on them when UMMAs complete.
//
// Coordinates are dilation-group coordinates (tile_box.h); TMA tensor maps traverse each
// spatial axis with element stride = dilation, so a box lands only the tokens of the CTA's
// group. Tokens outside the grid (TMA zero-fill, or the next batch entry where the batch is
// folded into the first axis) are masked by coordinates and query rows outside the grid are
// never stored. A row that sees no key gets O = 0 and LSE = -inf. FP8 inputs (float8_e4m3fn)
// run the same kernel: kind::f8f6f4 UMMAs, the descales of FwdParams, P in e4m3 offset by
// 2^kPOffsetLog2, O in bfloat16. A row that comes out
// non-finite is computed again key by key over its own window (cuda/common/exact_row.h), so a
// non-finite input reaches only the queries whose window holds it.
#pragma once

#include <cuda.h>

#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>
#include <cute/atom/mma_atom.hpp>
#include <cute/tensor.hpp>

#include "../../common/exact_row.h"
#include "../../common/fwd_device.cuh"
#include "../../common/grid_dependency.cuh"
#include "../../common/shared_storage.cuh"
#include "../fwd_config.h"
#include "debug_checks.cuh"
#include "tcgen05.cuh"

// The forward's mbarrier waits, named in debug builds' hang reports (debug_checks.cuh):
// GNA_SM100_WAIT with this kernel's name and template parameters.
#define GNA_FWD_WAIT(bar, parity, name, index, iteration) \
  GNA_SM100_WAIT(bar, parity, "forward", kHeadDim, kRank, name, index, iteration)

namespace gna::sm100 {

enum class WarpRole : int { Softmax = 0, Mma = 4, Load = 5 };

// kConfig_: which of fwd_tile_configs(kRank, kHeadDim) (fwd_config.h) the kernel runs.
// Element_: float16, bfloat16, or float8_e4m3fn (FP8: descales from FwdParams::descale, P in
// float8_e4m3fn, O in bfloat16).
template <class Element_, int kHeadDim_, int kRank_, int kConfig_>
struct FwdKernel {
  using Element = Element_;
  static constexpr bool kFp8 = sizeof(Element) == 1;
  using OutElement = cute::conditional_t<kFp8, cutlass::bfloat16_t, Element>;
  // FP8: P = exp2(S - max + kPOffsetLog2) <= 2^kPOffsetLog2 (the tile's max is always taken),
  // inside float8_e4m3fn's range (448) and far above its smallest normal (2^-6); the offset
  // cancels in O / row sum and is taken out of the LSE.
  static constexpr int kPOffsetLog2 = kFp8 ? 8 : 0;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kRank = kRank_;
  static constexpr FwdTileConfig kTiles = fwd_tile_config(kRank, kHeadDim, kConfig_);
  static constexpr int kQ0 = kTiles.q[0], kQ1 = kTiles.q[1], kQ2 = kTiles.q[2];
  static constexpr int kK0 = kTiles.kv[0], kK1 = kTiles.kv[1], kK2 = kTiles.kv[2];
  static constexpr int kTileQ = kTiles.q_size();
  static constexpr int kTileKV = kTiles.kv_size();
  static constexpr int kStages = kTiles.stages;
  static constexpr int kThreads = 192;
  static constexpr int kSoftmaxThreads = 128;
  static_assert(kTileQ == 128, "one M = 128 UMMA, one query row per TMEM lane");
  static_assert(kTileKV % 32 == 0 && kTileKV <= 128, "S in 32-column TMEM loads, two S buffers");
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 128, "head dim 32..128 (O in TMEM)");

  // TMEM plan (columns; the allocation is a power of two >= 32).
  static CUTLASS_HOST_DEVICE constexpr uint32_t tmem_s(int buffer) { return buffer ? kTileKV : 0; }
  static constexpr uint32_t kTmemO = 2 * kTileKV;
  static constexpr int kTmemColumns = 512;
  static_assert(kTmemO + kHeadDim <= kTmemColumns, "S0, S1 and O must fit in TMEM");

  // Smem tiles are loaded in chunks of 128 B along D (SW128: 64 16-bit or 128 FP8 elements),
  // or one 64-byte chunk (SW64) where the head dim holds less (fwd_host.h, load_chunk).
  static constexpr int kChunk = cute::min(128 / int(sizeof(Element)), kHeadDim);
  static constexpr int kChunks = kHeadDim / kChunk;
  static constexpr bool kSw128 = kChunk * int(sizeof(Element)) == 128;
  static_assert(kSw128 || kChunk * int(sizeof(Element)) == 64, "128- or 64-byte chunks");
  using AtomK = cute::conditional_t<kSw128, cute::UMMA::Layout_K_SW128_Atom<Element>,
                                    cute::UMMA::Layout_K_SW64_Atom<Element>>;
  using AtomMN = cute::conditional_t<kSw128, cute::UMMA::Layout_MN_SW128_Atom<Element>,
                                     cute::UMMA::Layout_MN_SW64_Atom<Element>>;
  // Q, K: K-major (token rows, D contiguous), D chunks after all rows of a chunk:
  // exactly where consecutive TMA boxes of kChunk x tile tokens land.
  using SmemLayoutQ =
      decltype(cute::tile_to_shape(AtomK{}, cute::Shape<cute::Int<kTileQ>, cute::Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(cute::tile_to_shape(
      AtomK{}, cute::Shape<cute::Int<kTileKV>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  // V as the B operand of P V: (N = D, K = tokens), MN-major; same bytes as K.
  using SmemLayoutV = decltype(cute::tile_to_shape(
      AtomMN{}, cute::Shape<cute::Int<kHeadDim>, cute::Int<kTileKV>, cute::Int<kStages>>{},
      cute::Step<cute::_2, cute::_1, cute::_3>{}));
  // P as the A operand of P V: (M = 128 rows, K = KV tokens), K-major, written by the softmax
  // threads (one row each, 16-byte vectors: a 128-byte swizzle keeps 8 elements contiguous).
  using SmemLayoutP =
      decltype(cute::tile_to_shape(cute::UMMA::Layout_K_SW128_Atom<Element>{},
                                   cute::Shape<cute::Int<kTileQ>, cute::Int<kTileKV>>{}));
  static constexpr int kPVector = 16 / int(sizeof(Element));  // P elements per 16-byte store
  static_assert(column_runs_contiguous<SmemLayoutP, kTileQ, kTileKV, kPVector>(),
                "P 16-byte stores");

  // One UMMA atom of M x N (fp32 accumulators in TMEM) with A and B of the given majors:
  // kind::f16 for 16-bit inputs, kind::f8f6f4 for FP8.
  template <int M, int N, cute::UMMA::Major A, cute::UMMA::Major B>
  using Umma = cute::conditional_t<
      kFp8,
      cute::MMA_Atom<
          cute::MMA_Traits<cute::SM100_MMA_F8F6F4_SS, Element, Element, float, cute::C<M>,
                           cute::C<N>, cute::integral_constant<cute::UMMA::Major, A>,
                           cute::integral_constant<cute::UMMA::Major, B>,
                           cute::integral_constant<cute::UMMA::ScaleIn, cute::UMMA::ScaleIn::One>,
                           cute::integral_constant<cute::UMMA::ScaleIn, cute::UMMA::ScaleIn::One>>>,
      cute::SM100_MMA_F16BF16_SS<Element, Element, float, M, N, A, B>>;
  using TiledMmaQK = decltype(cute::make_tiled_mma(
      Umma<kTileQ, kTileKV, cute::UMMA::Major::K, cute::UMMA::Major::K>{}));
  using TiledMmaPV = decltype(cute::make_tiled_mma(
      Umma<kTileQ, kHeadDim, cute::UMMA::Major::K, cute::UMMA::Major::MN>{}));

  struct SharedStorage {
    alignas(1024) Element q[kTileQ * kHeadDim];
    alignas(1024) Element k[kStages * kTileKV * kHeadDim];
    alignas(1024) Element v[kStages * kTileKV * kHeadDim];
    alignas(1024) Element p[kTileQ * kTileKV];
    alignas(8) uint64_t q_full;  // Q landed (TMA transaction barrier)
    uint64_t k_full[kStages];    // K stage landed (TMA)
    uint64_t k_empty[kStages];   // the S UMMA reading the K stage is done (tcgen05.commit)
    uint64_t v_full[kStages];    // V stage landed (TMA)
    uint64_t v_empty[kStages];   // the P V UMMA reading the V stage is done (commit)
    uint64_t s_full[2];          // S buffer written (commit)
    uint64_t s_empty[2];         // every softmax thread has read the S buffer
    uint64_t p_full;             // P written to smem (and O rescaled) by every softmax thread
    uint64_t o_done;             // the P V UMMA is done: O is stable and P may be rewritten
    uint32_t tmem_base;          // written by tcgen05.alloc
  };
  // + 1024: the dynamic smem base is re-aligned to 1024 B (SW128 TMA/UMMA).
  static constexpr size_t kSmemBytes = sizeof(SharedStorage) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one CTA");

  static constexpr uint32_t kTileBytesQ = kTileQ * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTileBytesKV = kTileKV * kHeadDim * sizeof(Element);
  static constexpr uint32_t kChunkBytesQ = kTileQ * kChunk * sizeof(Element);
  static constexpr uint32_t kChunkBytesKV = kTileKV * kChunk * sizeof(Element);

  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;

  // The kernel in the reports of with_tmem's checks.
  static CUTLASS_DEVICE WaitSite tmem_site() {
    return {"forward", kHeadDim, kRank, "tmem_base", -1, -1};
  }

  static CUTLASS_DEVICE FwdWork decode(const FwdParams& p, int item) {
    constexpr int q_tile[3] = {kQ0, kQ1, kQ2};
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    return decode_fwd_work(p, item, q_tile, kv_tile);
  }

  // Warp 5, one thread: Q, then K_j and V_j of every KV tile of the box into the rings.
  static CUTLASS_DEVICE void load(const FwdMaps& maps, const FwdParams& p, const FwdWork& w,
                                  SharedStorage& ss) {
    using fwd_device::kEvictLast;
    using fwd_device::kEvictNormal;
    using fwd_device::load_tile;
    const int kv_head = w.head / p.kv_group;

    TxBarrier::arrive_and_expect_tx(&ss.q_full, kTileBytesQ);
    const int q_origin[3] = {w.q_tile[0] * kQ0, w.q_tile[1] * kQ1, w.q_tile[2] * kQ2};
    load_tile<kQ0, kQ1, kQ2, kHeadDim, kChunks, kChunk>(maps.q, p.q_loads, p.dilation, w.group,
                                                        w.batch, w.head, q_origin, &ss.q_full, ss.q,
                                                        kChunkBytesQ, kEvictNormal);

    const int n = w.box.size();
    int t[3] = {w.box.begin[0], w.box.begin[1], w.box.begin[2]};
    for (int j = 0; j < n; ++j, w.box.next(t)) {
      const int stage = j % kStages;
      const int round = j / kStages;
      const int origin[3] = {t[0] * kK0, t[1] * kK1, t[2] * kK2};
      if (round > 0) GNA_FWD_WAIT(&ss.k_empty[stage], (round - 1) & 1, "k_empty", stage, j);
      TxBarrier::arrive_and_expect_tx(&ss.k_full[stage], kTileBytesKV);
      load_tile<kK0, kK1, kK2, kHeadDim, kChunks, kChunk>(
          maps.k, p.kv_loads, p.dilation, w.group, w.batch, kv_head, origin, &ss.k_full[stage],
          ss.k + stage * kTileKV * kHeadDim, kChunkBytesKV, kEvictLast);
      if (round > 0) GNA_FWD_WAIT(&ss.v_empty[stage], (round - 1) & 1, "v_empty", stage, j);
      TxBarrier::arrive_and_expect_tx(&ss.v_full[stage], kTileBytesKV);
      load_tile<kK0, kK1, kK2, kHeadDim, kChunks, kChunk>(
          maps.v, p.kv_loads, p.dilation, w.group, w.batch, kv_head, origin, &ss.v_full[stage],
          ss.v + stage * kTileKV * kHeadDim, kChunkBytesKV, kEvictLast);
    }
  }

  // Warp 4 (all lanes; the UMMA atoms and tcgen05.commit elect one thread): S_0, then per KV
  // tile j: S_{j+1} (when there is one) and O += P_j V_j.
  static CUTLASS_DEVICE void mma(const FwdWork& w, SharedStorage& ss, uint32_t tmem) {
    using namespace cute;
    TiledMmaQK mma_qk;
    TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_slice(0);
    auto thr_pv = mma_pv.get_slice(0);

    Tensor sQ = make_tensor(make_smem_ptr(ss.q), SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k), SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v), SmemLayoutV{});
    Tensor sP = make_tensor(make_smem_ptr(ss.p), SmemLayoutP{});
    Tensor tCrQ = thr_qk.make_fragment_A(thr_qk.partition_A(sQ));  // (MMA, 1, D/16) descriptors
    Tensor tCrK = thr_qk.make_fragment_B(thr_qk.partition_B(sK));  // (MMA, 1, D/16, stages)
    Tensor tCrP = thr_pv.make_fragment_A(thr_pv.partition_A(sP));  // (MMA, 1, KV/16)
    Tensor tCrV = thr_pv.make_fragment_B(thr_pv.partition_B(sV));  // (MMA, 1, KV/16, stages)
    Tensor tS = partition_fragment_C(mma_qk, Shape<Int<kTileQ>, Int<kTileKV>>{});
    Tensor tO = partition_fragment_C(mma_pv, Shape<Int<kTileQ>, Int<kHeadDim>>{});
    tO.data() = tmem + kTmemO;

    const int n = w.box.size();
    GNA_FWD_WAIT(&ss.q_full, 0, "q_full", -1, 0);

    auto issue_s = [&](int j) {
      const int stage = j % kStages;
      GNA_FWD_WAIT(&ss.k_full[stage], (j / kStages) & 1, "k_full", stage, j);
      // S_{j-2}, in the same buffer, was read.
      if (j >= 2) GNA_FWD_WAIT(&ss.s_empty[j & 1], ((j >> 1) + 1) & 1, "s_empty", j & 1, j);
      __syncwarp();  // the UMMA atoms elect one lane of a converged warp
      tcgen05_after_thread_sync();
      tS.data() = tmem + tmem_s(j & 1);
      mma_qk.accumulate_ = UMMA::ScaleOut::Zero;
      CUTLASS_PRAGMA_UNROLL
      for (int kb = 0; kb < size<2>(tCrQ); ++kb) {
        gemm(mma_qk, tCrQ(_, _, kb), tCrK(_, _, kb, stage), tS);
        mma_qk.accumulate_ = UMMA::ScaleOut::One;
      }
      cutlass::arch::umma_arrive(&ss.s_full[j & 1]);
      cutlass::arch::umma_arrive(&ss.k_empty[stage]);
    };

    issue_s(0);
    for (int j = 0; j < n; ++j) {
      if (j + 1 < n) issue_s(j + 1);
      const int stage = j % kStages;
      GNA_FWD_WAIT(&ss.v_full[stage], (j / kStages) & 1, "v_full", stage, j);
      GNA_FWD_WAIT(&ss.p_full, j & 1, "p_full", -1, j);
      __syncwarp();
      tcgen05_after_thread_sync();
      mma_pv.accumulate_ = j == 0 ? UMMA::ScaleOut::Zero : UMMA::ScaleOut::One;
      CUTLASS_PRAGMA_UNROLL
      for (int kb = 0; kb < size<2>(tCrP); ++kb) {
        gemm(mma_pv, tCrP(_, _, kb), tCrV(_, _, kb, stage), tO);
        mma_pv.accumulate_ = UMMA::ScaleOut::One;
      }
      cutlass::arch::umma_arrive(&ss.o_done);
      cutlass::arch::umma_arrive(&ss.v_empty[stage]);
    }
  }

  // Warps 0-3: the online softmax of row threadIdx.x, then the epilogue.
  static CUTLASS_DEVICE void softmax(const FwdParams& p, const FwdWork& w, SharedStorage& ss,
                                     uint32_t tmem) {
    using namespace cute;
    using namespace fwd_device;
    constexpr int q_tile[3] = {kQ0, kQ1, kQ2};
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    constexpr auto kSeq32 = std::make_index_sequence<32>{};
    const int row = threadIdx.x;
    // This warp's 32 TMEM lanes (a warp may only touch lanes 32 * (warp % 4) ...).
    const uint32_t tmem_row = tmem_lane_base(tmem, row);

    // This row's window per axis (rows past the grid take the last valid query's: finite,
    // never stored).
    int win_lo[3], win_len[3];
    {
      int o[3];
      tile_offsets<kQ0, kQ1, kQ2>(row, o);
      CUTLASS_PRAGMA_UNROLL
      for (int a = 0; a < 3; ++a) {
        const int q = min_int(w.q_tile[a] * q_tile[a] + o[a], w.axes[a].length - 1);
        const Range win = group_window(w.axes[a], q);
        win_lo[a] = win.start;
        win_len[a] = win.end - win.start;
      }
    }

    float row_max = -INFINITY;
    float row_sum = 0.f;
    // The scores' scale (FP8: times the q and k descales of this item's query head) and the
    // values' (the v descale).
    HeadScales scales{p.scale_log2, 1.f};
    if constexpr (kFp8) scales = head_scales(p, w.head);
    const float scale_log2 = scales.scale_log2, v_scale = scales.v_scale;
    // Scores enter exp2 as S * mult - max * mult (one FFMA). A non-positive
    // scale would flip the max, so such scores are scaled before the mask.
    const bool prescale = kFp8 ? !(scale_log2 > 0.f) : p.prescale != 0;
    const float mult = prescale ? 1.f : scale_log2;
    Tensor sP = make_tensor(make_smem_ptr(ss.p), SmemLayoutP{});

    KvTileWalk kv_tiles(w);
    const int n = w.box.size();
    for (int j = 0; j < n; ++j) {
      int origin[3];
      const bool full = !kv_tiles.next(w, kv_tile, origin);

      // S_j into registers; the buffer is then free for S_{j+2}.
      uint32_t s_bits[kTileKV];
      GNA_FWD_WAIT(&ss.s_full[j & 1], (j >> 1) & 1, "s_full", j & 1, j);
      __syncwarp();  // tcgen05.ld is .sync.aligned: the whole warp, converged
      tcgen05_after_thread_sync();
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < kTileKV / 32; ++c) {
        tmem_load_32(tmem_row + tmem_s(j & 1) + 32 * c, s_bits + 32 * c, kSeq32);
      }
      cutlass::arch::fence_view_async_tmem_load();
      tcgen05_before_thread_sync();
      Barrier::arrive(&ss.s_empty[j & 1]);
      float* s = reinterpret_cast<float*>(s_bits);

      if (prescale) {
        CUTLASS_PRAGMA_UNROLL
        for (int c = 0; c < kTileKV; ++c) s[c] *= scale_log2;
      }
      if (!full) {
        // Column c is KV token c of the tile: its per-axis offsets are compile-time.
        CUTLASS_PRAGMA_UNROLL
        for (int c = 0; c < kTileKV; ++c) {
          int o[3];
          tile_offsets<kK0, kK1, kK2>(c, o);
          bool vis = true;
          CUTLASS_PRAGMA_UNROLL
          for (int a = 0; a < 3; ++a)
            vis &= unsigned(origin[a] + o[a] - win_lo[a]) < unsigned(win_len[a]);
          if (!vis) s[c] = -INFINITY;
        }
      }
      // Row max over 4 independent accumulators (shorter dependent chains).
      float mp[4] = {row_max, row_max, row_max, row_max};
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < kTileKV; ++c) mp[c & 3] = fmaxf(mp[c & 3], s[c]);
      const float m = fmaxf(fmaxf(mp[0], mp[1]), fmaxf(mp[2], mp[3]));
      const float m_scaled = m == -INFINITY ? 0.f : m * mult;
      const float corr = exp2_approx(row_max * mult - m_scaled);
      row_max = m;
      float sp[4] = {0.f, 0.f, 0.f, 0.f};
      const float m_p = m_scaled - float(kPOffsetLog2);  // FP8: P offset by 2^kPOffsetLog2
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < kTileKV; ++c) {
        s[c] = exp2_approx(s[c] * mult - m_p);
        sp[c & 3] += s[c];
      }
      row_sum = row_sum * corr + ((sp[0] + sp[1]) + (sp[2] + sp[3]));

      if (j > 0) {
        // P_{j-1} V_{j-1} is done: O is stable and the P buffer free.
        GNA_FWD_WAIT(&ss.o_done, (j - 1) & 1, "o_done", -1, j);
        __syncwarp();
        tcgen05_after_thread_sync();
        // Rescale O by corr; a warp whose rows all kept their max skips it.
        if (__any_sync(0xffffffffu, corr != 1.f)) {
          CUTLASS_PRAGMA_NO_UNROLL
          for (int c = 0; c < kHeadDim / 32; ++c) {
            uint32_t o_bits[32];
            tmem_load_32(tmem_row + kTmemO + 32 * c, o_bits, kSeq32);
            cutlass::arch::fence_view_async_tmem_load();
            CUTLASS_PRAGMA_UNROLL
            for (int i = 0; i < 32; ++i)
              o_bits[i] = __float_as_uint(__uint_as_float(o_bits[i]) * corr);
            tmem_store_32(tmem_row + kTmemO + 32 * c, o_bits, kSeq32);
          }
          cutlass::arch::fence_view_async_tmem_store();
        }
      }
      // P_j: 16 bytes (8 16-bit or 16 FP8 elements) at a time into this row of the swizzled P
      // tile.
      cutlass::NumericArrayConverter<Element, float, kPVector> cvt;
      CUTLASS_PRAGMA_UNROLL
      for (int c = 0; c < kTileKV; c += kPVector) {
        cutlass::Array<float, kPVector> f;
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < kPVector; ++i) f[i] = s[c + i];
        const cutlass::Array<Element, kPVector> h = cvt(f);
        // cute's swizzled address is an integer: a plain store would be a generic one.
        store_shared_16b(raw_pointer_cast(&sP(row, c)), *reinterpret_cast<const uint4*>(&h));
      }
      cutlass::arch::fence_view_async_shared();  // generic-proxy writes -> the UMMA's reads
      tcgen05_before_thread_sync();
      Barrier::arrive(&ss.p_full);
    }

    // Epilogue: O / rowsum straight from TMEM to global memory, the LSE next to it.
    GNA_FWD_WAIT(&ss.o_done, (n - 1) & 1, "o_done", -1, n);
    __syncwarp();
    tcgen05_after_thread_sync();
    const float inv = row_sum > 0.f ? v_scale / row_sum : 0.f;
    const float m_scaled = row_max == -INFINITY ? 0.f : row_max * mult;
    const float lse =
        row_sum > 0.f ? (m_scaled - float(kPOffsetLog2) + __log2f(row_sum)) * 0.69314718055994531f
                      : -INFINITY;
    const int64_t token = q_row_token<kQ0, kQ1, kQ2>(p, w, row);
    OutElement* out = static_cast<OutElement*>(p.out) + (token * p.heads + w.head) * kHeadDim;
    // x * 0 is 0 for a finite x, nan otherwise: whether the row came out non-finite.
    float probe = row_sum * 0.f;
    CUTLASS_PRAGMA_NO_UNROLL
    for (int c = 0; c < kHeadDim / 32; ++c) {
      uint32_t o_bits[32];
      tmem_load_32(tmem_row + kTmemO + 32 * c, o_bits, kSeq32);
      cutlass::arch::fence_view_async_tmem_load();
      if (token >= 0) {
        CUTLASS_PRAGMA_UNROLL
        for (int v = 0; v < 4; ++v) {
          float f[8];
          CUTLASS_PRAGMA_UNROLL
          for (int i = 0; i < 8; ++i) {
            f[i] = __uint_as_float(o_bits[8 * v + i]) * inv;
            probe = fmaf(f[i], 0.f, probe);
          }
          *reinterpret_cast<uint4*>(out + 32 * c + 8 * v) = pack8<OutElement>(f);
        }
      }
    }
    if (token >= 0) p.lse[token * p.heads + w.head] = lse;
    // A non-finite input of the row's tiles (masked probabilities times whole tiles: 0 * nan)
    // or of its window: the row again, key by key over its own window (exact_row.h).
    if (token >= 0 && probe != 0.f) rewrite_row(p, w, row, token, out);
  }

  // Row `row` (token `token`, output row `out`) of work item `w` recomputed over its own window
  // by its thread alone, 32 columns at a time, and stored again with its LSE.
  static CUTLASS_DEVICE void rewrite_row(const FwdParams& p, const FwdWork& w, int row,
                                         int64_t token, OutElement* out) {
    constexpr int q_tile[3] = {kQ0, kQ1, kQ2};
    const ExactRow r = exact_row(p, w, q_tile, row, token, kHeadDim);
    const Element* q = static_cast<const Element*>(p.q);
    const Element* k = static_cast<const Element*>(p.k);
    const Element* v = static_cast<const Element*>(p.v);
    const RowColumns<kHeadDim, kHeadDim, kHeadDim> all{0};
    auto alone = [](float x) { return x; };
    const ExactRowStats stats = exact_row_stats(r, q, k, all, alone);
    CUTLASS_PRAGMA_NO_UNROLL
    for (int c = 0; c < kHeadDim; c += 32) {
      const RowColumns<32, 32, 32> cols{c};
      float f[32];
      exact_row_values(r, stats, q, k, v, all, alone, cols, [&](int j) -> float& { return f[j]; });
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < 32; i += 8)
        *reinterpret_cast<uint4*>(out + c + i) = fwd_device::pack8<OutElement>(f + i);
    }
    p.lse[token * p.heads + w.head] = exact_row_lse(stats);
  }

  static CUTLASS_DEVICE void run(const FwdMaps& maps, const FwdParams& p, char* smem_raw) {
    const FwdWork w = decode(p, blockIdx.x);
    if (!w.valid) return;  // every thread alike: the Q tile holds no query of its group

    SharedStorage& ss = shared_storage<SharedStorage>(smem_raw);
    const int warp = threadIdx.x / 32;
    const WarpRole role = warp < 4 ? WarpRole::Softmax : WarpRole(warp);

    if (threadIdx.x == kThreads - 1) {
      TxBarrier::init(&ss.q_full, 1);
      for (int s = 0; s < kStages; ++s) {
        TxBarrier::init(&ss.k_full[s], 1);
        TxBarrier::init(&ss.v_full[s], 1);
        Barrier::init(&ss.k_empty[s], 1);
        Barrier::init(&ss.v_empty[s], 1);
      }
      for (int b = 0; b < 2; ++b) {
        Barrier::init(&ss.s_full[b], 1);
        Barrier::init(&ss.s_empty[b], kSoftmaxThreads);
      }
      Barrier::init(&ss.p_full, kSoftmaxThreads);
      Barrier::init(&ss.o_done, 1);
      cutlass::arch::fence_barrier_init();
    }
    // Every TMEM read and UMMA is complete (the softmax waited for the last P V and its own
    // loads) when the allocating warp frees the columns (with_tmem).
    with_tmem<kTmemColumns>(role == WarpRole::Mma, &ss.tmem_base, tmem_site(), [&](uint32_t tmem) {
      if (role == WarpRole::Load) {
        if (cute::elect_one_sync()) load(maps, p, w, ss);
      } else if (role == WarpRole::Mma) {
        mma(w, ss, tmem);
      } else {
        softmax(p, w, ss, tmem);
      }
    });
  }
};

template <class Kernel>
__global__ void __launch_bounds__(Kernel::kThreads, 1)
    gna_fwd_sm100_kernel(const __grid_constant__ FwdMaps maps,
                         const __grid_constant__ FwdParams params) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM100_ALL)
  enter_after_prior_grids();  // PDL (grid_dependency.cuh)
  extern __shared__ char smem[];
  Kernel::run(maps, params, smem);
#else
  // Built for another architecture: never launched (the launcher checks the device).
#endif
}

}  // namespace gna::sm100

#undef GNA_FWD_WAIT
