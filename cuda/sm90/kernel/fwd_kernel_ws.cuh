// Hopper GNA forward kernel: warp-specialised, TMA loads straight from the
// user's heads-last layout, wgmma, online softmax in fp32 registers, P·V with
// P from registers, LSE output.
//
// A work item = one Q tile (128 tokens, a multi-dimensional box of the token
// grid) of one head, one batch entry and one dilation group. A CTA runs items
// blockIdx.x, blockIdx.x + gridDim.x, ... (one item per CTA, or a persistent
// grid of one CTA per SM for short KV boxes: then the next item's Q loads while
// the current item finishes). 384 threads:
//   warpgroup 0 (Producer): one thread issues TMA loads of Q once, then K and V
//     of every KV tile of the Q tile's KV box (gna/tile_box.h) into a ring.
//   warpgroups 1, 2 (Consumer0/1): 64 query rows each; S = Q K^T (SS wgmma),
//     mask (partial tiles only), online softmax, O += P V (RS wgmma). A visit
//     issues the QK GEMM of tile j with the PV GEMM of tile j-1, then runs the
//     softmax of tile j; the two warpgroups take turns at the tensor cores, so
//     one's softmax runs while the other's GEMMs do. The softmax computes its
//     exponentials against the running max without waiting for the tile's max
//     (softmax_step).
// A view (gna/problem.h: a shard's queries against its key block, windows of
// the whole axis) changes only the numbers: tiles cover the local query slice,
// group axes (tile_box.h) carry the offsets, rows mask keys outside the key
// slice, and the Q and K/V maps have their own extents.
// Coordinates are dilation-group coordinates (tile_box.h); the TMA boxes of a
// tile (cuda/common/tile_loads.h) land only the tokens of the CTA's group and
// batch entry. Tokens outside the grid load zeros, are masked by coordinates,
// and query rows outside the grid are never stored. Rows that come out non-finite are computed
// again after the last item, key by key over their own windows (nonfinite_rows.cuh), so a
// non-finite input reaches only the queries whose window holds it.
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
#include "../../common/grid_dependency.cuh"
#include "../../common/shared_storage.cuh"
#include "../fwd_config.h"
#include "consumer_turns.cuh"
#include "fwd_gemms.cuh"
#include "fwd_out_rows.cuh"
#include "fwd_trace.cuh"
#include "gna/tile_box.h"
#include "nonfinite_rows.cuh"

namespace gna::sm90 {

enum class WarpGroupRole : int { Producer = 0, Consumer0 = 1, Consumer1 = 2 };

// kConfig_: which of fwd_tile_configs(kRank, kHeadDim) (fwd_config.h) the kernel runs.
// kView_: the kernel takes views (gna/problem.h); without, whole axes only (launch_group_axis).
template <class Element_, int kHeadDim_, int kRank_, int kConfig_, bool kView_>
struct FwdKernel {
  static constexpr bool kView = kView_;
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kRank = kRank_;
  static constexpr FwdTileConfig kTiles = fwd_tile_config(kRank, kHeadDim, kConfig_);
  static constexpr int kQ0 = kTiles.q[0], kQ1 = kTiles.q[1], kQ2 = kTiles.q[2];
  static constexpr int kK0 = kTiles.kv[0], kK1 = kTiles.kv[1], kK2 = kTiles.kv[2];
  static constexpr int kTileQ = kTiles.q_size();
  static constexpr int kTileKV = kTiles.kv_size();
  static constexpr int kStages = kTiles.stages;
  static constexpr int kThreads = 384;
  // The largest P = exp2(S * scale log2 e - running max) the softmax lets pass without taking
  // the tile's max (consumer(), softmax_step): far inside the range of fp32 sums and 16-bit P.
  static constexpr int kMaxSlackLog2 = 8;
  static constexpr float kMaxP = float(1 << kMaxSlackLog2);
  // An item's last P V in the next item's first GEMM turn (fwd_config.h, consumer()).
  static constexpr bool kOverlapItems = fwd_overlap_items(kHeadDim);
  static_assert(kTileQ == 128, "two consumer warpgroups of 64 rows");
  static_assert(kTileKV % 16 == 0 && kTileKV <= 256, "wgmma N / K granularity");
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "head dim 32..256");

  // Smem tiles are loaded in chunks of 64 elements (128 B, SW128) along D, or
  // one 32-element chunk (64 B, SW64) for d32.
  static constexpr int kChunk = kHeadDim >= 64 ? 64 : 32;
  static constexpr int kChunks = kHeadDim / kChunk;
  using AtomK = cute::conditional_t<kChunk == 64, cute::GMMA::Layout_K_SW128_Atom<Element>,
                                    cute::GMMA::Layout_K_SW64_Atom<Element>>;
  using AtomMN = cute::conditional_t<kChunk == 64, cute::GMMA::Layout_MN_SW128_Atom<Element>,
                                     cute::GMMA::Layout_MN_SW64_Atom<Element>>;
  // Q, K: K-major (token rows, D contiguous), D chunks after all rows of a chunk:
  // exactly where consecutive TMA boxes of kChunk x tile tokens land.
  using SmemLayoutQ =
      decltype(cute::tile_to_shape(AtomK{}, cute::Shape<cute::Int<kTileQ>, cute::Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(cute::tile_to_shape(
      AtomK{}, cute::Shape<cute::Int<kTileKV>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  // V as the B operand of P·V: (N = D, K = tokens), MN-major; same bytes as K.
  using SmemLayoutV = decltype(cute::tile_to_shape(
      AtomMN{}, cute::Shape<cute::Int<kHeadDim>, cute::Int<kTileKV>, cute::Int<kStages>>{},
      cute::Step<cute::_2, cute::_1, cute::_3>{}));

  using TiledMmaQK = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kTileKV>, cute::Int<kHeadDim>>>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));
  using TiledMmaPV = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kHeadDim>, cute::Int<kTileKV>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));

  using PipelineKV = cutlass::PipelineTmaAsync<kStages>;

  // O goes from registers straight to global memory (no shared-memory staging), so Q is free
  // for the next item as soon as the last S GEMM has read it.
  struct SharedStorage {
    alignas(1024) Element q[kTileQ * kHeadDim];
    alignas(1024) Element k[kStages * kTileKV * kHeadDim];
    alignas(1024) Element v[kStages * kTileKV * kHeadDim];
    typename PipelineKV::SharedStorage pipe_k;
    typename PipelineKV::SharedStorage pipe_v;
    alignas(8) uint64_t q_full;   // Q landed (TMA transaction barrier)
    alignas(8) uint64_t q_empty;  // every consumer thread is done with Q
  };
  // + 1024: the dynamic smem base is re-aligned to 1024 B (SW128 TMA/GMMA).
  static constexpr size_t kSmemBytes = sizeof(SharedStorage) + 1024;

  static constexpr uint32_t kTileBytesQ = kTileQ * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTileBytesKV = kTileKV * kHeadDim * sizeof(Element);
  static constexpr uint32_t kChunkBytesQ = kTileQ * kChunk * sizeof(Element);
  static constexpr uint32_t kChunkBytesKV = kTileKV * kChunk * sizeof(Element);

  // Which CTA does what (cuda/common/fwd_params.h, shared with sm100); every role decodes it
  // identically from the item index.
  using Work = FwdWork;

  static CUTLASS_DEVICE Work decode_work(const FwdParams& p, int item) {
    constexpr int q_tile[3] = {kQ0, kQ1, kQ2};
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    return decode_fwd_work<kView>(p, item, q_tile, kv_tile);
  }

  // One tile of `maps` at group positions `origin` (Q or KV tile shape, its loads).
  template <int T0, int T1, int T2>
  static CUTLASS_DEVICE void load_tile(const TensorMapPair& maps, const TileLoads& loads,
                                       const FwdParams& p, const Work& w, int head,
                                       const int origin[3], uint64_t* barrier, Element* smem,
                                       uint32_t chunk_bytes, uint64_t hint) {
    fwd_device::load_tile<T0, T1, T2, kHeadDim, kChunks, kChunk>(
        maps, loads, p.dilation, w.group, w.batch, head, origin, barrier, smem, chunk_bytes, hint);
  }

  // Loads of one work item: Q once (after the previous item released it), then K
  // and V of every KV tile of the box into the ring.
  template <class State>
  static CUTLASS_DEVICE void producer(const FwdMaps& maps, const FwdParams& p, const Work& w,
                                      int count, SharedStorage& ss, PipelineKV& pipe_k,
                                      PipelineKV& pipe_v, State& state_k, State& state_v) {
    const int kv_head = w.head / p.kv_group;

    if (count > 0) cutlass::arch::ClusterBarrier::wait(&ss.q_empty, (count - 1) & 1);
    cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.q_full, kTileBytesQ);
    const int q_origin[3] = {w.q_tile[0] * kQ0, w.q_tile[1] * kQ1, w.q_tile[2] * kQ2};
    load_tile<kQ0, kQ1, kQ2>(maps.q, p.q_loads, p, w, w.head, q_origin, &ss.q_full, ss.q,
                             kChunkBytesQ, fwd_device::kEvictNormal);

    const int n = w.box.size();
    int t[3] = {w.box.begin[0], w.box.begin[1], w.box.begin[2]};
    for (int j = 0; j < n; ++j, w.box.next(t)) {
      const int origin[3] = {t[0] * kK0, t[1] * kK1, t[2] * kK2};
      pipe_k.producer_acquire(state_k);
      load_tile<kK0, kK1, kK2>(
          maps.k, p.kv_loads, p, w, kv_head, origin, pipe_k.producer_get_barrier(state_k),
          ss.k + state_k.index() * kTileKV * kHeadDim, kChunkBytesKV, fwd_device::kEvictLast);
      ++state_k;
      pipe_v.producer_acquire(state_v);
      load_tile<kK0, kK1, kK2>(
          maps.v, p.kv_loads, p, w, kv_head, origin, pipe_v.producer_get_barrier(state_v),
          ss.v + state_v.index() * kTileKV * kHeadDim, kChunkBytesKV, fwd_device::kEvictLast);
      ++state_v;
    }
  }

  // Every work item of the CTA, the pipeline states carried from one to the next. Each item ends
  // with a GEMM turn for its last P V and its epilogue; or, where kOverlapItems, that last P V is
  // issued in the same turn as the next item's first S GEMM and the epilogue runs once both
  // landed, before the next item's first softmax, so that at an item boundary the tensor cores
  // get the next item's first GEMM while the epilogue runs (as within an item they get a visit's
  // GEMMs while a softmax runs). Returns whether a row of this thread's came out non-finite
  // (nonfinite_rows.cuh).
  static CUTLASS_DEVICE bool consumer(const FwdParams& p, SharedStorage& ss, PipelineKV& pipe_k,
                                      PipelineKV& pipe_v) {
    using namespace cute;
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    const int ctid = threadIdx.x - 128;  // 0..255 over both consumer warpgroups
    const int wg = ctid / 128;
    typename PipelineKV::PipelineState state_k, state_v;

    TiledMmaQK mma_qk;
    TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(ctid);
    auto thr_pv = mma_pv.get_thread_slice(ctid);

    Tensor sQ = make_tensor(make_smem_ptr(ss.q), SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k), SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v), SmemLayoutV{});
    Tensor tSrQ = thr_qk.partition_fragment_A(sQ);  // (MMA, 1, K/16) descriptors
    Tensor tSrK = thr_qk.partition_fragment_B(sK);  // (MMA, 1, K/16, stages)
    Tensor tOrV = thr_pv.partition_fragment_B(sV);  // (MMA, 1, KV/16, stages)

    Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kTileQ>, Int<kTileKV>>{});
    Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<kTileQ>, Int<kHeadDim>>{});
    // P in the A-operand register layout of P·V: the accumulator of two n8 blocks
    // holds exactly the values of one k16 A fragment, in the same register order,
    // so both compact fragments convert element by element.
    Tensor tOrP =
        make_tensor<Element>(partition_shape_A(mma_pv, Shape<Int<kTileQ>, Int<kTileKV>>{}));
    static_assert(decltype(size(tOrP))::value == decltype(size(tSrS))::value);

    // Accumulator element i of an m64nN wgmma (S, O) sits at row
    // 16 * warp + lane / 4 + 8 * ((i >> 1) & 1) of the warpgroup's 64 rows and at
    // column 8 * (i >> 2) + 2 * (lane % 4) + (i & 1).
    const int lane = threadIdx.x & 31;
    const int col_base = 2 * (lane & 3);
    static_assert(kK2 % 8 == 0, "the n8 column blocks of S must not straddle a KV tile row");

    // The two rows this thread owns: their windows per axis, cut to the valid keys (a view's key
    // slice; for whole axes windows lie inside the group and the cut changes nothing). Set at
    // each item's start.
    int row_win_lo[2][3], row_win_len[2][3];

    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};
    // Scores enter exp2 as S * mult - max * mult (one FFMA). A non-positive
    // scale would flip the max, so such scores are scaled before the mask.
    const bool prescale = p.prescale != 0;
    const float mult = prescale ? 1.f : p.scale_log2;

    // Softmax of the S tile in tSrS (masked first when partial): writes P (unnormalised) into
    // tOrP, the per-row rescale of O into corr, and returns whether this warp's O needs it.
    // tSrS stays intact, so P can be recomputed.
    //
    // The running max may be stale: P computed against it stays correct (O, the sum and the
    // LSE all use the same max) as long as it stays within kMaxP, far inside fp32/bf16/fp16
    // range. So, with `speculate`, the exponentials are computed against the running max
    // straight away, and the tile's max is not needed at all while every row's P stays within
    // kMaxP (which the partial sums prove); only when a thread of the warp finds a row beyond
    // it (rare after the first tiles) does the warp take the tile's max, move the running max
    // up to it and recompute its exponentials. The first tile of an item takes the max.
    constexpr int kAcc = 4;  // independent max/sum accumulators per row: shorter chains
    auto acc = [](int i) { return (i & 1) | ((i >> 1) & 2); };  // (i0, n8 % 2)
    // P = exp2(S * mult - m_scaled) into tOrP (pairs convert in one instruction,
    // cvt.rn.{bf16,f16}x2.f32, and are stored as one register), its per-row partial sums
    // into sp. The explicit FMA keeps the compiler from sharing S * mult between the two
    // calls of a visit (an FMUL and an FADD each instead of one FFMA).
    Tensor tOrP_pairs = recast<cutlass::Array<Element, 2>>(tOrP);
    auto exponentials = [&](const float* m_scaled, float (&sp)[2][kAcc]) {
      cutlass::NumericArrayConverter<Element, float, 2> cvt;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(tSrS); i += 2) {
        const int r = (i >> 1) & 1;
        const float e0 = fwd_device::exp2_approx(__fmaf_rn(tSrS(i), mult, -m_scaled[r]));
        const float e1 = fwd_device::exp2_approx(__fmaf_rn(tSrS(i + 1), mult, -m_scaled[r]));
        // Elements 0..7 hold each (row, chain) once: the sums start from them, not from 0 + e.
        sp[r][acc(i)] = i < 8 ? e0 : sp[r][acc(i)] + e0;
        sp[r][acc(i + 1)] = i < 8 ? e1 : sp[r][acc(i + 1)] + e1;
        tOrP_pairs(i / 2) = cvt(cutlass::Array<float, 2>{e0, e1});
      }
    };
    auto scaled = [&](float m) { return m == -INFINITY ? 0.f : m * mult; };
    auto softmax_step = [&](bool partial, const int* kv_origin, float* corr, bool speculate) {
      if (prescale) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(tSrS); ++i) tSrS(i) *= p.scale_log2;
      }
      if (partial) {
        // Column 8 * n8 + col_base + i0: n8 fixes the offsets along axes 0 and 1
        // (compile time), axis 2 adds col_base + i0.
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
      float sp[2][kAcc] = {};  // set by exponentials(); initialised for the compiler's sake
      auto partial_sum = [&](int r) { return (sp[r][0] + sp[r][1]) + (sp[r][2] + sp[r][3]); };
      bool exact = !speculate;
      if (speculate) {
        const float m_scaled[2] = {scaled(row_max[0]), scaled(row_max[1])};
        exponentials(m_scaled, sp);
        // Every P of this thread's row is at most its partial sum, so a partial sum within
        // kMaxP proves the row inside the slack without the tile's max (a row without a key
        // yet must take its first max: any P > 0 sends it on).
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
        // The tile's row maxima (from the running max), in kAcc chains per row.
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
          // Up to the tile's max whenever that is higher (from -inf always; a row without a
          // key keeps -inf). Raising only past a slack would leave a row whose partial sums
          // exceed kMaxP while its max stays within the slack (one that saw a single key in
          // its first tile) on this path for every tile of the item.
          const bool raise = m > row_max[r];
          const float m_old = row_max[r];  // -inf * mult (mult > 0) gives corr = 0
          if (raise) row_max[r] = m;
          m_scaled[r] = scaled(row_max[r]);
          corr[r] = raise ? fwd_device::exp2_approx(m_old * mult - m_scaled[r]) : 1.f;
          raised |= raise;
        }
        exponentials(m_scaled, sp);
      } else {
        corr[0] = corr[1] = 1.f;
      }
      CUTLASS_PRAGMA_UNROLL
      for (int r = 0; r < 2; ++r) row_sum[r] = row_sum[r] * corr[r] + partial_sum(r);
      // O needs a rescale when a row of this warp raised its max (warp-uniform branch).
      return __any_sync(0xffffffff, raised);
    };
    auto rescale_o = [&](bool needed, const float* corr) {
      if (!needed) return;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(tOrO); ++i) tOrO(i) *= corr[(i >> 1) & 1];
    };
    auto release_q = [&] { cutlass::arch::ClusterBarrier::arrive(&ss.q_empty); };

    // Ping-pong between the two consumer warpgroups (consumer_turns.cuh): a warpgroup issues
    // its GEMMs only in its turn and hands the turn over right after issuing, so one
    // warpgroup's softmax runs while the other's GEMMs hold the tensor cores. Both warpgroups
    // run the same items in the same order, so they take as many turns of each kind.
    auto take_turn = [&] { ConsumerTurns::take_gemm(wg); };
    auto pass_turn = [&] { ConsumerTurns::pass_gemm(wg); };
    int count = 0;  // the CTA's items run so far (barrier phases, trace)
    auto stamp = [&](int visit, int k) { fwd_trace::stamp(ctid, count, visit, k); };

    // The item whose last P V and epilogue are still to come (its P in tOrP, its V at state_v):
    // its rows (fwd_out_rows.cuh), its count and visits (for the trace).
    bool pending = false;
    OutRows out;
    int out_count = 0, out_visits = 0;
    auto set_out = [&](const Work& w, int n) {
      out.set<kQ0, kQ1, kQ2>(p, w);
      out_count = count;
      out_visits = n;
    };
    bool seen = false;  // a row of this thread's came out non-finite
    // The pending item's epilogue, once its last P V landed (`empty`, std::true_type: an item
    // without keys). A row that a non-finite input reached is recomputed after the last item.
    auto epilogue = [&](auto empty) {
      out.scale(row_sum, row_max, mult, 1.f, 0);  // the pending item's: the next one resets them
      seen |= out.store<decltype(empty)::value, kHeadDim, Element>(p, tOrO);
      fwd_trace::stamp_item(ctid, out_count, fwd_trace::kItemDone);
      pending = false;
    };
    // The pending item's last P V in a turn of its own (no next item to pair it with).
    auto finish_pending = [&] {
      fwd_trace::stamp(ctid, out_count, out_visits, 0);
      pipe_v.consumer_wait(state_v);
      take_turn();
      fwd_trace::stamp(ctid, out_count, out_visits, 1);
      gemm_pv(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), tOrO);
      pass_turn();
      fwd_trace::stamp(ctid, out_count, out_visits, 2);
      warpgroup_wait<0>();
      fwd_trace::stamp(ctid, out_count, out_visits, 3);
      fwd_trace::stamp(ctid, out_count, out_visits, 4);
      pipe_v.consumer_release(state_v);
      ++state_v;
      fwd_trace::stamp(ctid, out_count, out_visits, 5);
      epilogue(std::false_type{});
    };
    auto start_item = [&] {
      row_max[0] = row_max[1] = -INFINITY;
      row_sum[0] = row_sum[1] = 0.f;
      clear(tOrO);
    };

    for (int item = blockIdx.x; item < p.num_items; item += gridDim.x) {
      const Work w = decode_work(p, item);
      // Items without a query of their dilation group are skipped by every role alike.
      if (!w.valid) continue;
      fragment_row_windows<kQ0, kQ1, kQ2>(w, row_win_lo, row_win_len);
      // KV tiles in box order (last axis fastest, as the producer loads them).
      KvTileWalk kv_tiles(w);
      const int n = w.box.size();

      fwd_trace::stamp_item(ctid, count, fwd_trace::kItemEntry);
      cutlass::arch::ClusterTransactionBarrier::wait(&ss.q_full, count & 1);
      fwd_trace::stamp_item(ctid, count, fwd_trace::kItemQLanded);

      // A view's Q tile whose queries see no key of the key slice (n = 0) visits nothing and
      // writes O = 0, lse = -inf. Both warpgroups take the same branch, so turns still
      // alternate. (Whole axes always see keys: that kernel compiles without the branch.)
      if (kView && n == 0) {
        if (kOverlapItems && pending) finish_pending();
        release_q();
        set_out(w, n);
        epilogue(std::true_type{});
        ++count;
        continue;
      }
      // Tile 0: S = Q K0^T, with the pending item's last P V in the same turn; that item's
      // epilogue; the softmax.
      {
        stamp(0, 0);
        pipe_k.consumer_wait(state_k);
        if (kOverlapItems && pending) pipe_v.consumer_wait(state_v);
        take_turn();
        stamp(0, 1);
        gemm_qk(mma_qk, tSrQ, tSrK(_, _, _, state_k.index()), tSrS);
        if (kOverlapItems && pending) gemm_pv(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), tOrO);
        pass_turn();
        stamp(0, 2);
        int origin[3];
        const bool partial = kv_tiles.next(w, kv_tile, origin);
        warpgroup_wait<0>();
        stamp(0, 3);
        pipe_k.consumer_release(state_k);
        ++state_k;
        if (n == 1) release_q();  // the last read of Q is done
        if (kOverlapItems && pending) {
          pipe_v.consumer_release(state_v);
          ++state_v;
          epilogue(std::false_type{});
        }
        start_item();
        float corr[2];
        ConsumerTurns::take_softmax(wg);
        softmax_step(partial, origin, corr, /*speculate=*/false);
        ConsumerTurns::pass_softmax(wg);
        stamp(0, 4);
        stamp(0, 5);
      }
      for (int j = 1; j < n; ++j) {
        stamp(j, 0);
        pipe_k.consumer_wait(state_k);
        pipe_v.consumer_wait(state_v);
        take_turn();
        stamp(j, 1);
        gemm_qk(mma_qk, tSrQ, tSrK(_, _, _, state_k.index()), tSrS);
        gemm_pv(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), tOrO);
        pass_turn();
        stamp(j, 2);
        int origin[3];
        const bool partial = kv_tiles.next(w, kv_tile, origin);
        // S_j ready and P_{j-1} V_{j-1} done: P is rewritten by the softmax, O rescaled. (The
        // compiler would wait for P V here anyway, to interleave P's conversion with the
        // exponentials.)
        warpgroup_wait<0>();
        stamp(j, 3);
        pipe_k.consumer_release(state_k);
        ++state_k;
        pipe_v.consumer_release(state_v);
        ++state_v;
        if (j == n - 1) release_q();  // the last read of Q is done
        float corr[2];
        ConsumerTurns::take_softmax(wg);
        const bool rescale = softmax_step(partial, origin, corr, /*speculate=*/true);
        ConsumerTurns::pass_softmax(wg);
        stamp(j, 4);
        rescale_o(rescale, corr);
        stamp(j, 5);
      }
      // Where this item's rows go, set only now: the registers are live from here to its
      // epilogue only.
      set_out(w, n);
      pending = true;
      if constexpr (!kOverlapItems) finish_pending();
      ++count;
    }
    if (pending) finish_pending();
    return seen;
  }

  static CUTLASS_DEVICE void run(const FwdMaps& maps, const FwdParams& p, char* smem_raw) {
    SharedStorage& ss = shared_storage<SharedStorage>(smem_raw);
    const int warp_group = threadIdx.x / 128;
    const auto role = WarpGroupRole(warp_group);

    typename PipelineKV::Params pipe_params;
    pipe_params.transaction_bytes = kTileBytesKV;
    pipe_params.role = role == WarpGroupRole::Producer ? PipelineKV::ThreadCategory::Producer
                                                       : PipelineKV::ThreadCategory::Consumer;
    pipe_params.is_leader = threadIdx.x == 0;
    pipe_params.num_consumers = 256;
    pipe_params.initializing_warp = 0;
    PipelineKV pipe_k(ss.pipe_k, pipe_params, cute::Shape<cute::_1, cute::_1, cute::_1>{});
    pipe_params.initializing_warp = 1;
    PipelineKV pipe_v(ss.pipe_v, pipe_params, cute::Shape<cute::_1, cute::_1, cute::_1>{});
    if (threadIdx.x == 64) {
      cutlass::arch::ClusterTransactionBarrier::init(&ss.q_full, 1);
      cutlass::arch::ClusterBarrier::init(&ss.q_empty, 256);
      cutlass::arch::fence_barrier_init();
    }
    __syncthreads();

    // Items without a query of their dilation group are skipped by every role
    // alike; `count` numbers the others (barrier phases).
    if (role == WarpGroupRole::Producer) {
      cutlass::arch::warpgroup_reg_dealloc<40>();
      if (threadIdx.x != 0) return;
      auto state_k = cutlass::make_producer_start_state<PipelineKV>();
      auto state_v = cutlass::make_producer_start_state<PipelineKV>();
      int count = 0;
      for (int item = blockIdx.x; item < p.num_items; item += gridDim.x) {
        const Work w = decode_work(p, item);
        if (!w.valid) continue;
        producer(maps, p, w, count++, ss, pipe_k, pipe_v, state_k, state_v);
      }
    } else {
      cutlass::arch::warpgroup_reg_alloc<232>();
      // Warpgroup 0 takes the first turns; turns then alternate across items.
      ConsumerTurns::start(threadIdx.x - 128);
      const bool seen = consumer(p, ss, pipe_k, pipe_v);
      // This thread's rows of every item: those that came out non-finite, recomputed each over
      // its own window (rare: only after a non-finite input).
      rewrite_nonfinite_rows<FwdKernel, Element>(p, seen);
    }
  }
};

template <class Kernel>
__global__ void __launch_bounds__(Kernel::kThreads, 1)
    gna_fwd_sm90_kernel(const __grid_constant__ FwdMaps maps,
                        const __grid_constant__ FwdParams params) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  enter_after_prior_grids();  // PDL (grid_dependency.cuh)
  extern __shared__ char smem[];
  Kernel::run(maps, params, smem);
#else
  // Built for another architecture: never launched (the launcher checks the device).
#endif
}

}  // namespace gna::sm90
