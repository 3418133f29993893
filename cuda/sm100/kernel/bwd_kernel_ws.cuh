// Blackwell (sm_100a) GNA backward kernel: KV-stationary, warp-specialised, TMA loads from the
// user's heads-last layout, tcgen05 UMMA with dK, dV, S^T, dP^T and dQ in tensor memory (TMEM),
// dQ added in fp32 to the workspace.
//
// NOT VALIDATED ON HARDWARE: no Blackwell GPU was available when this was written; it is
// compiled (sm_100a), its host-side geometry and its data flow (emulated on the host,
// cuda/sm100/tests/bwd_emulation.cc) are tested, its tcgen05/TMA/mbarrier plumbing is not
// (docs/blackwell.md).
//
// A CTA owns one KV tile (128 tokens, a box of the token grid) of one KV head, one batch entry
// and one dilation group (decode_bwd_work, cuda/common/bwd_params.h), and visits every Q tile
// (128 tokens) whose forward KV box holds it (q_tile_box), for every query head of the KV
// head's GQA group, so that dK and dV sum over the group in TMEM with no K/V repeat. 192
// threads, six warps:
//   warps 0-3 (Compute): thread t owns TMEM lane t. Per visit: S^T row t (KV row t) from TMEM,
//     P^T = exp2(S^T scale log2 e - lse2) (masked on partial pairs only) to shared memory,
//     then dS^T = P^T (dP^T - delta) to shared memory, then dQ row t (Q row t) from TMEM added
//     to the workspace with vector reductions (in deterministic mode after the Q tile's turn).
//     At the end dK (times the scale) and dV of the valid KV rows to global memory.
//   warp 4 (Mma): allocates TMEM; one elected thread issues per visit S^T = K Q^T,
//     dP^T = V dO^T, dV += P^T dO, dK += dS^T Q, dQ = dS K (SS UMMA; dS is dS^T's bytes read
//     MN-major, K and Q/dO MN-major views of their K-major tiles).
//   warp 5 (Load): one thread loads K and V once, then per visit Q with its row statistics
//     (lse2, delta from the pre-pass) and dO into a ring of `stages`.
// TMEM columns: dK [0, D), dV [D, 2D), S^T [2D, 2D + 128), dP^T [2D + 128, 2D + 256), and dQ
// over dP^T (dQ of a visit is issued once its dP^T was read, the next dP^T once dQ was read).
// The softmax scale multiplies dK here and dQ in the conversion pass; coordinates are
// dilation-group coordinates, as in the forward.
#pragma once

#include <cuda.h>

#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/tensor.hpp>

#include "../../common/bwd_params.h"
#include "../../common/fwd_device.cuh"
#include "../../common/grid_dependency.cuh"
#include "../../common/shared_storage.cuh"
#include "../bwd_config.h"
#include "debug_checks.cuh"
#include "tcgen05.cuh"

// The backward's mbarrier waits, named in debug builds' hang reports (debug_checks.cuh):
// GNA_SM100_WAIT with this kernel's name and template parameters.
#define GNA_BWD_WAIT(bar, parity, name, index, visit) \
  GNA_SM100_WAIT(bar, parity, "backward", kHeadDim, kRank, name, index, visit)

namespace gna::sm100 {

enum class BwdWarpRole : int { Compute = 0, Mma = 4, Load = 5 };

template <class Element_, int kHeadDim_, int kRank_>
struct BwdKernel {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kRank = kRank_;
  static constexpr FwdTileConfig kTiles = bwd_tile_config(kRank, kHeadDim);
  static constexpr int kQ0 = kTiles.q[0], kQ1 = kTiles.q[1], kQ2 = kTiles.q[2];
  static constexpr int kK0 = kTiles.kv[0], kK1 = kTiles.kv[1], kK2 = kTiles.kv[2];
  static constexpr int kTileQ = kTiles.q_size();
  static constexpr int kTileKV = kTiles.kv_size();
  static constexpr int kStages = kTiles.stages;
  static constexpr int kThreads = 192;
  static constexpr int kComputeThreads = 128;
  static_assert(kTileQ == 128 && kTileKV == 128, "M = 128 UMMAs: a row per TMEM lane");
  static_assert(kHeadDim == 32 || kHeadDim == 64 || kHeadDim == 128, "head dim 32, 64, 128");

  // TMEM plan (columns).
  static constexpr uint32_t kTmemDK = 0;
  static constexpr uint32_t kTmemDV = kHeadDim;
  static constexpr uint32_t kTmemS = 2 * kHeadDim;
  static constexpr uint32_t kTmemDP = kTmemS + kTileQ;
  static constexpr uint32_t kTmemDQ = kTmemDP;
  static constexpr int kTmemColumns = 512;
  static_assert(kTmemDP + kTileQ <= kTmemColumns && kHeadDim <= kTileQ, "TMEM plan");

  // Token tiles are loaded in chunks of 64 elements (128 B, SW128) along D, or one 32-element
  // chunk (64 B, SW64) for d32, as in the forward.
  static constexpr int kChunk = kHeadDim >= 64 ? 64 : 32;
  static constexpr int kChunks = kHeadDim / kChunk;
  using AtomK = cute::conditional_t<kChunk == 64, cute::UMMA::Layout_K_SW128_Atom<Element>,
                                    cute::UMMA::Layout_K_SW64_Atom<Element>>;
  using AtomMN = cute::conditional_t<kChunk == 64, cute::UMMA::Layout_MN_SW128_Atom<Element>,
                                     cute::UMMA::Layout_MN_SW64_Atom<Element>>;
  // (tokens, D, buffers), K-major: where consecutive TMA boxes land.
  template <int kRows, int kBuffers>
  using TokenRows = decltype(cute::tile_to_shape(
      AtomK{}, cute::Shape<cute::Int<kRows>, cute::Int<kHeadDim>, cute::Int<kBuffers>>{}));
  // The same bytes as (D, tokens, buffers): the MN-major B operand of a GEMM over tokens.
  template <int kRows, int kBuffers>
  using TokenCols = decltype(cute::tile_to_shape(
      AtomMN{}, cute::Shape<cute::Int<kHeadDim>, cute::Int<kRows>, cute::Int<kBuffers>>{},
      cute::Step<cute::_2, cute::_1, cute::_3>{}));
  using SmemLayoutKV = TokenRows<kTileKV, 1>;       // K, V: A of S^T, dP^T
  using SmemLayoutKt = TokenCols<kTileKV, 1>;       // K: B of dQ
  using SmemLayoutQ = TokenRows<kTileQ, kStages>;   // Q, dO: B of S^T, dP^T
  using SmemLayoutQt = TokenCols<kTileQ, kStages>;  // Q, dO: B of dK, dV
  // P^T, dS^T (KV rows, Q tokens contiguous): A of dV, dK, written a row per compute thread.
  using SmemLayoutPt =
      decltype(cute::tile_to_shape(cute::UMMA::Layout_K_SW128_Atom<Element>{},
                                   cute::Shape<cute::Int<kTileKV>, cute::Int<kTileQ>>{}));
  // dS (Q rows, KV tokens): the bytes of dS^T read MN-major, the A of dQ.
  using SmemLayoutDS = decltype(cute::tile_to_shape(
      cute::UMMA::Layout_MN_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kTileQ>, cute::Int<kTileKV>>{}, cute::Step<cute::_2, cute::_1>{}));
  static_assert(column_runs_contiguous<SmemLayoutPt, kTileKV, kTileQ, 8>(), "16-byte row accesses");

  // S^T = K Q^T, dP^T = V dO^T: M = KV, N = Q, K = D.
  using TiledMmaS = decltype(cute::make_tiled_mma(
      cute::SM100_MMA_F16BF16_SS<Element, Element, float, kTileKV, kTileQ, cute::UMMA::Major::K,
                                 cute::UMMA::Major::K>{}));
  // dV += P^T dO, dK += dS^T Q: M = KV, N = D, K = Q.
  using TiledMmaKV = decltype(cute::make_tiled_mma(
      cute::SM100_MMA_F16BF16_SS<Element, Element, float, kTileKV, kHeadDim, cute::UMMA::Major::K,
                                 cute::UMMA::Major::MN>{}));
  // dQ = dS K: M = Q, N = D, K = KV.
  using TiledMmaDQ = decltype(cute::make_tiled_mma(
      cute::SM100_MMA_F16BF16_SS<Element, Element, float, kTileQ, kHeadDim, cute::UMMA::Major::MN,
                                 cute::UMMA::Major::MN>{}));

  struct SharedStorage {
    alignas(1024) Element k[kTileKV * kHeadDim];
    alignas(1024) Element v[kTileKV * kHeadDim];
    alignas(1024) Element q[kStages * kTileQ * kHeadDim];
    alignas(1024) Element dout[kStages * kTileQ * kHeadDim];
    alignas(1024) Element pt[kTileKV * kTileQ];
    alignas(1024) Element dst[kTileKV * kTileQ];
    alignas(16) float lse2[kStages][kTileQ];
    alignas(16) float delta[kStages][kTileQ];
    alignas(8) uint64_t kv_full;  // K and V landed (TMA)
    uint64_t q_full[kStages];     // Q and its row statistics landed (TMA)
    uint64_t q_empty[kStages];    // dK read the Q stage (tcgen05.commit)
    uint64_t do_full[kStages];    // dO landed (TMA)
    uint64_t do_empty[kStages];   // dV read the dO stage (commit)
    uint64_t s_full;              // S^T written (commit)
    uint64_t dp_full;             // dP^T written (commit)
    uint64_t dq_full;             // dQ written: every UMMA of the visit is done (commit)
    uint64_t p_full;              // P^T in shared memory, S^T read (every compute thread)
    uint64_t ds_full;             // dS^T in shared memory, dP^T read (every compute thread)
    uint64_t dq_empty;            // dQ read (every compute thread)
    uint32_t tmem_base;           // written by tcgen05.alloc
  };
  // + 1024: the dynamic smem base is re-aligned to 1024 B (SW128 TMA/UMMA).
  static constexpr size_t kSmemBytes = sizeof(SharedStorage) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one CTA");

  static constexpr uint32_t kTileBytesQ = kTileQ * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTileBytesKV = kTileKV * kHeadDim * sizeof(Element);
  static constexpr uint32_t kChunkBytesQ = kTileQ * kChunk * sizeof(Element);
  static constexpr uint32_t kChunkBytesKV = kTileKV * kChunk * sizeof(Element);
  static constexpr uint32_t kStatBytes = kTileQ * sizeof(float);
  static constexpr int kDqBarrier = 1;  // named barrier of the compute threads (turns)

  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;

  // The kernel in the reports of with_tmem's checks.
  static CUTLASS_DEVICE WaitSite tmem_site() {
    return {"backward", kHeadDim, kRank, "tmem_base", -1, -1};
  }

  static CUTLASS_DEVICE BwdWork decode(const BwdParams& p, int item) {
    constexpr int q_tile[3] = {kQ0, kQ1, kQ2};
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    return decode_bwd_work(p, item, q_tile, kv_tile);
  }

  // The Q tile of visit `j` of a head (n visits): box order, reversed in deterministic mode
  // (there the lower KV tiles of a Q tile add first; a higher KV tile's box starts later in
  // box order, so walking it backwards reaches a shared Q tile after the lower one did).
  static CUTLASS_DEVICE void visit_tile(const BwdParams& p, const BwdWork& w, int j, int n,
                                        int t[3]) {
    w.box.tile(p.deterministic ? n - 1 - j : j, t);
  }

  // One tile of `maps` (T0 x T1 x T2: the Q or the KV tile shape, `loads` its loads) at group
  // positions `origin`.
  template <int T0, int T1, int T2, uint32_t kChunkBytes>
  static CUTLASS_DEVICE void load_tile(const TensorMapPair& maps, const TileLoads& loads,
                                       const BwdParams& p, const BwdWork& w, int head,
                                       const int origin[3], uint64_t* barrier, Element* smem,
                                       uint64_t hint) {
    fwd_device::load_tile<T0, T1, T2, kHeadDim, kChunks, kChunk>(
        maps, loads, p.dilation, w.group, w.batch, head, origin, barrier, smem, kChunkBytes, hint);
  }

  // Warp 5, one thread: K and V, then Q (+ lse2, delta) and dO of every visit into the ring.
  static CUTLASS_DEVICE void load(const BwdMaps& maps, const BwdParams& p, const BwdWork& w,
                                  SharedStorage& ss) {
    using fwd_device::kEvictLast;
    using fwd_device::kEvictNormal;
    const int kv_origin[3] = {w.kv_tile[0] * kK0, w.kv_tile[1] * kK1, w.kv_tile[2] * kK2};
    TxBarrier::arrive_and_expect_tx(&ss.kv_full, 2 * kTileBytesKV);
    fwd_device::load_tiles<kK0, kK1, kK2, kHeadDim, kChunks, kChunk, int(sizeof(Element))>(
        p.kv_loads, p.dilation, w.group, w.batch, w.kv_head, kv_origin, kChunkBytesKV, kEvictNormal,
        fwd_device::TileTarget{maps.k, &ss.kv_full, ss.k},
        fwd_device::TileTarget{maps.v, &ss.kv_full, ss.v});

    const int n = w.box.size();
    int v = 0;
    for (int g = 0; g < p.kv_group; ++g) {
      const int head = w.kv_head * p.kv_group + g;
      for (int j = 0; j < n; ++j, ++v) {
        int t[3];
        visit_tile(p, w, j, n, t);
        const int origin[3] = {t[0] * kQ0, t[1] * kQ1, t[2] * kQ2};
        const int stage = v % kStages;
        const int round = v / kStages;
        if (round > 0) GNA_BWD_WAIT(&ss.q_empty[stage], (round - 1) & 1, "q_empty", stage, v);
        TxBarrier::arrive_and_expect_tx(&ss.q_full[stage], kTileBytesQ + 2 * kStatBytes);
        load_tile<kQ0, kQ1, kQ2, kChunkBytesQ>(maps.q, p.q_loads, p, w, head, origin,
                                               &ss.q_full[stage], ss.q + stage * kTileQ * kHeadDim,
                                               kEvictLast);
        const int64_t slot = bwd_stat_slot(p, w, head, t);
        cute::SM90_BULK_COPY_G2S::copy(p.row_lse2 + slot, &ss.q_full[stage], ss.lse2[stage],
                                       kStatBytes);
        cute::SM90_BULK_COPY_G2S::copy(p.row_delta + slot, &ss.q_full[stage], ss.delta[stage],
                                       kStatBytes);
        if (round > 0) GNA_BWD_WAIT(&ss.do_empty[stage], (round - 1) & 1, "do_empty", stage, v);
        TxBarrier::arrive_and_expect_tx(&ss.do_full[stage], kTileBytesQ);
        load_tile<kQ0, kQ1, kQ2, kChunkBytesQ>(maps.dout, p.q_loads, p, w, head, origin,
                                               &ss.do_full[stage],
                                               ss.dout + stage * kTileQ * kHeadDim, kEvictLast);
      }
    }
  }

  // tC (+)= tA tB over every K block (one elected thread of the converged warp issues).
  template <class Mma, class TA, class TB, class TC>
  static CUTLASS_DEVICE void umma(Mma& mma, const TA& tA, const TB& tB, TC& tC, bool accumulate) {
    mma.accumulate_ = accumulate ? cute::UMMA::ScaleOut::One : cute::UMMA::ScaleOut::Zero;
    CUTLASS_PRAGMA_UNROLL
    for (int kb = 0; kb < cute::size<2>(tA); ++kb) {
      cute::gemm(mma, tA(cute::_, cute::_, kb), tB(cute::_, cute::_, kb), tC);
      mma.accumulate_ = cute::UMMA::ScaleOut::One;
    }
  }

  // Warp 4 (all lanes; the UMMA atoms and tcgen05.commit elect one thread).
  static CUTLASS_DEVICE void mma(const BwdParams& p, const BwdWork& w, SharedStorage& ss,
                                 uint32_t tmem) {
    using namespace cute;
    TiledMmaS mma_s;
    TiledMmaKV mma_kv;
    TiledMmaDQ mma_dq;
    auto thr_s = mma_s.get_slice(0);
    auto thr_kv = mma_kv.get_slice(0);
    auto thr_dq = mma_dq.get_slice(0);

    Tensor sK = make_tensor(make_smem_ptr(ss.k), SmemLayoutKV{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v), SmemLayoutKV{});
    Tensor sKt = make_tensor(make_smem_ptr(ss.k), SmemLayoutKt{});
    Tensor sQ = make_tensor(make_smem_ptr(ss.q), SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(ss.q), SmemLayoutQt{});
    Tensor sDO = make_tensor(make_smem_ptr(ss.dout), SmemLayoutQ{});
    Tensor sDOt = make_tensor(make_smem_ptr(ss.dout), SmemLayoutQt{});
    Tensor sPt = make_tensor(make_smem_ptr(ss.pt), SmemLayoutPt{});
    Tensor sDSt = make_tensor(make_smem_ptr(ss.dst), SmemLayoutPt{});
    Tensor sDS = make_tensor(make_smem_ptr(ss.dst), SmemLayoutDS{});

    // UMMA shared-memory descriptors: (MMA, 1, K blocks[, stages]).
    Tensor tSrK = thr_s.make_fragment_A(thr_s.partition_A(sK(_, _, 0)));
    Tensor tSrV = thr_s.make_fragment_A(thr_s.partition_A(sV(_, _, 0)));
    Tensor tSrQ = thr_s.make_fragment_B(thr_s.partition_B(sQ));
    Tensor tSrDO = thr_s.make_fragment_B(thr_s.partition_B(sDO));
    Tensor tKVrPt = thr_kv.make_fragment_A(thr_kv.partition_A(sPt));
    Tensor tKVrDSt = thr_kv.make_fragment_A(thr_kv.partition_A(sDSt));
    Tensor tKVrDOt = thr_kv.make_fragment_B(thr_kv.partition_B(sDOt));
    Tensor tKVrQt = thr_kv.make_fragment_B(thr_kv.partition_B(sQt));
    Tensor tDQrDS = thr_dq.make_fragment_A(thr_dq.partition_A(sDS));
    Tensor tDQrKt = thr_dq.make_fragment_B(thr_dq.partition_B(sKt(_, _, 0)));

    // TMEM accumulators.
    Tensor tS = partition_fragment_C(mma_s, Shape<Int<kTileKV>, Int<kTileQ>>{});
    Tensor tDP = partition_fragment_C(mma_s, Shape<Int<kTileKV>, Int<kTileQ>>{});
    Tensor tDK = partition_fragment_C(mma_kv, Shape<Int<kTileKV>, Int<kHeadDim>>{});
    Tensor tDV = partition_fragment_C(mma_kv, Shape<Int<kTileKV>, Int<kHeadDim>>{});
    Tensor tDQ = partition_fragment_C(mma_dq, Shape<Int<kTileQ>, Int<kHeadDim>>{});
    tS.data() = tmem + kTmemS;
    tDP.data() = tmem + kTmemDP;
    tDK.data() = tmem + kTmemDK;
    tDV.data() = tmem + kTmemDV;
    tDQ.data() = tmem + kTmemDQ;

    const int visits = p.kv_group * w.box.size();
    GNA_BWD_WAIT(&ss.kv_full, 0, "kv_full", -1, 0);

    // S^T of visit v: its Q stage landed; the S^T columns are free (the caller waited for the
    // compute threads' read of the previous one).
    auto issue_s = [&](int v) {
      const int stage = v % kStages;
      GNA_BWD_WAIT(&ss.q_full[stage], (v / kStages) & 1, "q_full", stage, v);
      __syncwarp();
      tcgen05_after_thread_sync();
      umma(mma_s, tSrK, tSrQ(_, _, _, stage), tS, false);
      cutlass::arch::umma_arrive(&ss.s_full);
    };
    // dP^T of visit v: its dO stage landed and the previous dQ (same columns) was read.
    auto issue_dp = [&](int v) {
      const int stage = v % kStages;
      GNA_BWD_WAIT(&ss.do_full[stage], (v / kStages) & 1, "do_full", stage, v);
      if (v > 0) GNA_BWD_WAIT(&ss.dq_empty, (v - 1) & 1, "dq_empty", -1, v);
      __syncwarp();
      tcgen05_after_thread_sync();
      umma(mma_s, tSrV, tSrDO(_, _, _, stage), tDP, false);
      cutlass::arch::umma_arrive(&ss.dp_full);
    };

    issue_s(0);
    issue_dp(0);
    for (int v = 0; v < visits; ++v) {
      const int stage = v % kStages;
      GNA_BWD_WAIT(&ss.p_full, v & 1, "p_full", -1, v);
      __syncwarp();
      tcgen05_after_thread_sync();
      umma(mma_kv, tKVrPt, tKVrDOt(_, _, _, stage), tDV, v > 0);
      cutlass::arch::umma_arrive(&ss.do_empty[stage]);
      // With two or more stages the next Q is already in: S^T runs while dS^T is computed.
      if constexpr (kStages > 1) {
        if (v + 1 < visits) issue_s(v + 1);
      }
      GNA_BWD_WAIT(&ss.ds_full, v & 1, "ds_full", -1, v);
      __syncwarp();
      tcgen05_after_thread_sync();
      umma(mma_kv, tKVrDSt, tKVrQt(_, _, _, stage), tDK, v > 0);
      cutlass::arch::umma_arrive(&ss.q_empty[stage]);
      umma(mma_dq, tDQrDS, tDQrKt, tDQ, false);
      cutlass::arch::umma_arrive(&ss.dq_full);
      // One stage: the next Q loads once dK has read this one.
      if constexpr (kStages == 1) {
        if (v + 1 < visits) issue_s(v + 1);
      }
      if (v + 1 < visits) issue_dp(v + 1);
    }
  }

  // KV row `row` of the tile (bwd_kv_row): the queries that see it per axis, and its token.
  static CUTLASS_DEVICE int64_t kv_row(const BwdParams& p, const BwdWork& w, int row, int lo[3],
                                       int len[3]) {
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    int o[3];
    fwd_device::tile_offsets<kK0, kK1, kK2>(row, o);
    return bwd_kv_row(p, w, kv_tile, o, lo, len);
  }

  // 8 fp32 values as 8 elements (16 bytes) at `dst`.
  static CUTLASS_DEVICE void store8(Element* dst, const float* f) {
    *reinterpret_cast<uint4*>(dst) = fwd_device::pack8<Element>(f);
  }
  // The same into a row of P^T or dS^T: cute's swizzled address is an integer, through which a
  // plain store would be a generic one (waiting on the long scoreboard), not st.shared.
  static CUTLASS_DEVICE void store8_shared(Element* at, const float* f) {
    store_shared_16b(at, fwd_device::pack8<Element>(f));
  }

  // block[0..3] += x[0..3] (one vector reduction in L2).
  static CUTLASS_DEVICE void red_add4(float* block, const uint32_t* x) {
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(block),
                 "f"(__uint_as_float(x[0])), "f"(__uint_as_float(x[1])), "f"(__uint_as_float(x[2])),
                 "f"(__uint_as_float(x[3]))
                 : "memory");
  }

  // Warps 0-3: per visit P^T, dS^T and the dQ add; then the dK/dV epilogue.
  static CUTLASS_DEVICE void compute(const BwdParams& p, const BwdWork& w, SharedStorage& ss,
                                     uint32_t tmem) {
    using namespace cute;
    using fwd_device::exp2_approx;
    constexpr int q_tile[3] = {kQ0, kQ1, kQ2};
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    constexpr auto kSeq32 = std::make_index_sequence<32>{};
    const int row = threadIdx.x;
    const uint32_t tmem_row = tmem_lane_base(tmem, row);
    Tensor sPt = make_tensor(make_smem_ptr(ss.pt), SmemLayoutPt{});
    Tensor sDSt = make_tensor(make_smem_ptr(ss.dst), SmemLayoutPt{});

    int row_lo[3], row_len[3];
    const int64_t kv_token = kv_row(p, w, row, row_lo, row_len);

    const int n = w.box.size();
    int v = 0;
    for (int g = 0; g < p.kv_group; ++g) {
      const int head = w.kv_head * p.kv_group + g;
      for (int j = 0; j < n; ++j, ++v) {
        int t[3];
        visit_tile(p, w, j, n, t);
        bool full = true;
        CUTLASS_PRAGMA_UNROLL
        for (int a = 0; a < 3; ++a) full &= w.full[a].start <= t[a] && t[a] < w.full[a].end;
        const int stage = v % kStages;

        // P^T row: column c is Q token c of the tile (per-axis offsets known at compile time).
        GNA_BWD_WAIT(&ss.q_full[stage], (v / kStages) & 1, "q_full", stage, v);  // lse2, delta
        GNA_BWD_WAIT(&ss.s_full, v & 1, "s_full", -1, v);
        __syncwarp();  // tcgen05.ld is .sync.aligned: the whole warp, converged
        tcgen05_after_thread_sync();
        uint32_t s_bits[kTileQ];
        float* pr = reinterpret_cast<float*>(s_bits);
        const float4* lse2 = reinterpret_cast<const float4*>(ss.lse2[stage]);
        CUTLASS_PRAGMA_UNROLL
        for (int c = 0; c < kTileQ / 32; ++c) {
          tmem_load_32(tmem_row + kTmemS + 32 * c, s_bits + 32 * c, kSeq32);
          cutlass::arch::fence_view_async_tmem_load();
          CUTLASS_PRAGMA_UNROLL
          for (int c4 = 8 * c; c4 < 8 * c + 8; ++c4) {
            const float4 l = lse2[c4];
            pr[4 * c4 + 0] = exp2_approx(pr[4 * c4 + 0] * p.scale_log2 - l.x);
            pr[4 * c4 + 1] = exp2_approx(pr[4 * c4 + 1] * p.scale_log2 - l.y);
            pr[4 * c4 + 2] = exp2_approx(pr[4 * c4 + 2] * p.scale_log2 - l.z);
            pr[4 * c4 + 3] = exp2_approx(pr[4 * c4 + 3] * p.scale_log2 - l.w);
          }
        }
        if (!full) {
          CUTLASS_PRAGMA_UNROLL
          for (int c = 0; c < kTileQ; ++c) {
            int o[3];
            fwd_device::tile_offsets<kQ0, kQ1, kQ2>(c, o);
            bool vis = true;
            CUTLASS_PRAGMA_UNROLL
            for (int a = 0; a < 3; ++a)
              vis &= unsigned(t[a] * q_tile[a] + o[a] - row_lo[a]) < unsigned(row_len[a]);
            if (!vis) pr[c] = 0.f;
          }
        }
        // The previous visit's UMMAs are done (dq_full waited below), so P^T may be rewritten.
        CUTLASS_PRAGMA_UNROLL
        for (int c = 0; c < kTileQ; c += 8) store8_shared(raw_pointer_cast(&sPt(row, c)), pr + c);
        cutlass::arch::fence_view_async_shared();  // generic-proxy writes -> the UMMA's reads
        tcgen05_before_thread_sync();
        Barrier::arrive(&ss.p_full);

        // dS^T = P^T (dP^T - delta), 32 columns at a time, from the fp32 P^T row still in
        // registers (as sm90: only dS^T itself is rounded to 16 bits, for its UMMAs; ptxas
        // keeps the row without spilling, docs/blackwell.md).
        GNA_BWD_WAIT(&ss.dp_full, v & 1, "dp_full", -1, v);
        __syncwarp();
        tcgen05_after_thread_sync();
        const float4* delta = reinterpret_cast<const float4*>(ss.delta[stage]);
        CUTLASS_PRAGMA_UNROLL
        for (int c = 0; c < kTileQ / 32; ++c) {
          uint32_t dp_bits[32];
          tmem_load_32(tmem_row + kTmemDP + 32 * c, dp_bits, kSeq32);
          cutlass::arch::fence_view_async_tmem_load();
          float* ds = reinterpret_cast<float*>(dp_bits);  // in place
          CUTLASS_PRAGMA_UNROLL
          for (int i = 0; i < 32; i += 8) {
            Element* at = raw_pointer_cast(&sDSt(row, 32 * c + i));
            const float4 d0 = delta[(32 * c + i) / 4];
            const float4 d1 = delta[(32 * c + i) / 4 + 1];
            const float dd[8] = {d0.x, d0.y, d0.z, d0.w, d1.x, d1.y, d1.z, d1.w};
            CUTLASS_PRAGMA_UNROLL
            for (int e = 0; e < 8; ++e) ds[i + e] = pr[32 * c + i + e] * (ds[i + e] - dd[e]);
            store8_shared(at, ds + i);
          }
        }
        cutlass::arch::fence_view_async_shared();
        tcgen05_before_thread_sync();
        Barrier::arrive(&ss.ds_full);

        // dQ row `row` of the Q tile: out of TMEM (the next dP^T may then overwrite it), then
        // added to the Q tile's fp32 block (row-major, bwd_config.h).
        GNA_BWD_WAIT(&ss.dq_full, v & 1, "dq_full", -1, v);
        __syncwarp();
        tcgen05_after_thread_sync();
        uint32_t dq_bits[kHeadDim];
        CUTLASS_PRAGMA_UNROLL
        for (int c = 0; c < kHeadDim / 32; ++c)
          tmem_load_32(tmem_row + kTmemDQ + 32 * c, dq_bits + 32 * c, kSeq32);
        cutlass::arch::fence_view_async_tmem_load();
        tcgen05_before_thread_sync();
        Barrier::arrive(&ss.dq_empty);

        const int64_t slot = bwd_stat_slot(p, w, head, t);
        float* block = p.dq_accum + (slot + row) * kHeadDim;
        int* semaphore = p.dq_semaphore + slot / kTileQ;
        if (p.deterministic) {
          // Wait for this KV tile's turn at the Q tile: its position in the Q tile's KV box.
          if (row == 0) {
            const int turn = kv_tile_box(w.axes, 3, t, q_tile, kv_tile).index(w.kv_tile);
            // Cannot deadlock: the CTAs holding the earlier turns have lower block indices
            // (decode_bwd_work's item order, row-major in this mode) and CTAs start in block
            // index order, so each of them is running or done.
            spin_until_equal(semaphore, turn,
                             {"backward", kHeadDim, kRank, "dq_semaphore", int(slot / kTileQ), v});
          }
          __syncwarp();  // bar.sync is aligned: warp 0 converged after thread 0's wait
          cutlass::arch::NamedBarrier::sync(kComputeThreads, kDqBarrier);
        }
        CUTLASS_PRAGMA_UNROLL
        for (int c = 0; c < kHeadDim; c += 4) red_add4(block + c, dq_bits + c);
        if (p.deterministic) {
          __threadfence();  // every add is performed before the turn passes on
          cutlass::arch::NamedBarrier::sync(kComputeThreads, kDqBarrier);
          if (row == 0) atomicAdd(semaphore, 1);
        }
      }
    }

    // Epilogue: dK (times the softmax scale) and dV of the valid KV rows (every UMMA is done:
    // the last dq_full was waited).
    Element* dk = static_cast<Element*>(p.dk) + (kv_token * p.kv_heads + w.kv_head) * kHeadDim;
    Element* dv = static_cast<Element*>(p.dv) + (kv_token * p.kv_heads + w.kv_head) * kHeadDim;
    CUTLASS_PRAGMA_NO_UNROLL
    for (int c = 0; c < kHeadDim / 32; ++c) {
      uint32_t k_bits[32], v_bits[32];
      tmem_load_32(tmem_row + kTmemDK + 32 * c, k_bits, kSeq32);
      tmem_load_32(tmem_row + kTmemDV + 32 * c, v_bits, kSeq32);
      cutlass::arch::fence_view_async_tmem_load();
      if (kv_token >= 0) {
        float f[32];
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < 32; ++i) f[i] = __uint_as_float(k_bits[i]) * p.scale;
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < 32; i += 8) store8(dk + 32 * c + i, f + i);
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < 32; ++i) f[i] = __uint_as_float(v_bits[i]);
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < 32; i += 8) store8(dv + 32 * c + i, f + i);
      }
    }
  }

  // A KV tile that no Q tile visits: zero dK and dV of its valid rows.
  static CUTLASS_DEVICE void zero_dkdv(const BwdParams& p, const BwdWork& w, int row) {
    int lo[3], len[3];
    const int64_t kv_token = kv_row(p, w, row, lo, len);
    if (kv_token < 0) return;
    const int64_t at = (kv_token * p.kv_heads + w.kv_head) * kHeadDim;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    CUTLASS_PRAGMA_UNROLL
    for (int c = 0; c < kHeadDim; c += 8) {
      *reinterpret_cast<uint4*>(static_cast<Element*>(p.dk) + at + c) = zero;
      *reinterpret_cast<uint4*>(static_cast<Element*>(p.dv) + at + c) = zero;
    }
  }

  static CUTLASS_DEVICE void run(const BwdMaps& maps, const BwdParams& p, char* smem_raw) {
    const BwdWork w = decode(p, blockIdx.x);
    if (w.box.size() == 0) {  // every thread alike
      if (threadIdx.x < kComputeThreads) zero_dkdv(p, w, threadIdx.x);
      return;
    }

    SharedStorage& ss = shared_storage<SharedStorage>(smem_raw);
    const int warp = threadIdx.x / 32;
    const BwdWarpRole role = warp < 4 ? BwdWarpRole::Compute : BwdWarpRole(warp);

    if (threadIdx.x == kThreads - 1) {
      TxBarrier::init(&ss.kv_full, 1);
      for (int s = 0; s < kStages; ++s) {
        TxBarrier::init(&ss.q_full[s], 1);
        TxBarrier::init(&ss.do_full[s], 1);
        Barrier::init(&ss.q_empty[s], 1);
        Barrier::init(&ss.do_empty[s], 1);
      }
      Barrier::init(&ss.s_full, 1);
      Barrier::init(&ss.dp_full, 1);
      Barrier::init(&ss.dq_full, 1);
      Barrier::init(&ss.p_full, kComputeThreads);
      Barrier::init(&ss.ds_full, kComputeThreads);
      Barrier::init(&ss.dq_empty, kComputeThreads);
      cutlass::arch::fence_barrier_init();
    }
    // Every TMEM read and UMMA is complete (the compute threads waited for the last UMMAs and
    // read dK/dV) when the allocating warp frees the columns (with_tmem).
    with_tmem<kTmemColumns>(role == BwdWarpRole::Mma, &ss.tmem_base, tmem_site(),
                            [&](uint32_t tmem) {
                              if (role == BwdWarpRole::Load) {
                                if (cute::elect_one_sync()) load(maps, p, w, ss);
                              } else if (role == BwdWarpRole::Mma) {
                                mma(p, w, ss, tmem);
                              } else {
                                compute(p, w, ss, tmem);
                              }
                            });
  }
};

template <class Kernel>
__global__ void __launch_bounds__(Kernel::kThreads, 1)
    gna_bwd_sm100_kernel(const __grid_constant__ BwdMaps maps,
                         const __grid_constant__ BwdParams params) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM100_ALL)
  enter_after_prior_grids();  // PDL (grid_dependency.cuh)
  extern __shared__ char smem[];
  Kernel::run(maps, params, smem);
#else
  // Built for another architecture: never launched (the launcher checks the device).
#endif
}

}  // namespace gna::sm100

#undef GNA_BWD_WAIT
