// Hopper GNA backward kernel: KV-stationary, warp-specialised, TMA loads from the user's
// heads-last layout, wgmma, dK and dV accumulated in registers, dQ added in fp32.
//
// A CTA owns one KV tile (128 tokens, a box of the token grid; 64 at d256) of one KV head, one
// batch entry and one dilation group, and visits every Q tile (64 tokens) whose forward KV box
// holds that KV tile (q_tile_box, gna/tile_box.h), for every query head of the KV head's GQA
// group, so that dK and dV sum over the group in registers with no K/V repeat. 384 threads:
//   warpgroup 0 (Producer): one thread loads K and V once, then Q, dO and the Q tile's row
//     statistics (lse * log2 e, delta = rowsum(dO * O) - dlse, from the pre-pass) per visit
//     into a ring of stages.
//   warpgroups 1, 2 (Consumer0/1), d <= 128: 64 KV rows each. Per visit: S^T = K Q^T and
//     dP^T = V dO^T (SS wgmma), P^T = exp2(S^T scale log2 e - lse2) (masked on partial pairs
//     only), dS^T = P^T (dP^T - delta), dV += P^T dO and dK += dS^T Q (RS wgmma, P^T and dS^T
//     from registers), dS^T through shared memory for dQ = dS K (SS wgmma), dQ added to an
//     fp32 accumulator in global memory (atomics; in deterministic mode in a fixed order).
//     d128 (kDqLag): a visit's dQ is issued in the next visit, before that visit's dV and dK,
//     so the dQ staging and add run under dV and dK and the tensor cores do not drain at the
//     end of each visit; the warpgroups no longer meet at one barrier per visit: each arrives
//     once it wrote its dS^T rows and waits for the other's only before the dQ that reads them.
//   d256 (kSplitD): dK and dV of 64 KV rows would take 2 x 128 accumulators per thread, so the
//     warpgroups split the head dim instead: each holds dK and dV of all 64 KV rows for its
//     128 of the 256 columns (64 + 64 accumulators). S^T and dP^T are split by Q columns (32
//     each), so P^T joins dS^T in shared memory and dV, dK read both from there (SS wgmma);
//     dQ = dS K is computed in two parts of 64 columns per warpgroup (bwd_config.h: the
//     shared-memory budget).
// The softmax scale multiplies dK here and dQ in the conversion pass (bwd_passes.cu).
// Coordinates are dilation-group coordinates, as in the forward (fwd_kernel_ws.cuh).
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
#include "../bwd_config.h"
#include "../dq_order.h"
#include "gna/tile_box.h"

#ifndef GNA_SM90_BWD_DQ_LAG
#define GNA_SM90_BWD_DQ_LAG 1
#endif

namespace gna::sm90 {

// kConfig_: which of bwd_tile_configs(kRank, kHeadDim) (bwd_config.h) the kernel runs; kView_:
// the kernel takes views (gna/problem.h); without, whole axes only (launch_group_axis).
template <class Element_, int kHeadDim_, int kRank_, int kConfig_, bool kView_>
struct BwdKernel {
  static constexpr bool kView = kView_;
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kRank = kRank_;
  static constexpr FwdTileConfig kTiles = bwd_tile_config(kRank, kHeadDim, kConfig_);
  static constexpr int kQ0 = kTiles.q[0], kQ1 = kTiles.q[1], kQ2 = kTiles.q[2];
  static constexpr int kK0 = kTiles.kv[0], kK1 = kTiles.kv[1], kK2 = kTiles.kv[2];
  static constexpr int kTileQ = kTiles.q_size();
  static constexpr int kTileKV = kTiles.kv_size();
  static constexpr int kStages = kTiles.stages;
  static constexpr int kThreads = 384;
  static_assert(kHeadDim == 32 || kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256,
                "head dim 32, 64, 128, 256");
  // How the two consumer warpgroups share a visit's work: by KV rows (d <= 128), or, at d256,
  // by head-dim columns of dK, dV, dQ and by Q columns of S^T, dP^T (the header says why).
  static constexpr bool kSplitD = kHeadDim == 256;
  static_assert(kTileQ == 64 && kTileKV == (kSplitD ? 64 : 128),
                "64-token Q tiles; KV tiles of 2 x 64 rows, or 64 rows at d256");
  static_assert(kQ2 % 8 == 0, "the n8 column blocks of S^T must not straddle a Q tile row");
  // Per warpgroup: the S^T / dP^T columns (Q tokens) and the dK / dV columns (head dim).
  static constexpr int kSdPCols = kSplitD ? kTileQ / 2 : kTileQ;
  static constexpr int kKVCols = kSplitD ? kHeadDim / 2 : kHeadDim;

  // D is loaded in chunks of 64 elements (128 B, SW128), or one 32-element chunk (SW64) for d32.
  static constexpr int kChunk = kHeadDim >= 64 ? 64 : 32;
  static constexpr int kChunks = kHeadDim / kChunk;
  using AtomK = cute::conditional_t<kChunk == 64, cute::GMMA::Layout_K_SW128_Atom<Element>,
                                    cute::GMMA::Layout_K_SW64_Atom<Element>>;
  using AtomMN = cute::conditional_t<kChunk == 64, cute::GMMA::Layout_MN_SW128_Atom<Element>,
                                     cute::GMMA::Layout_MN_SW64_Atom<Element>>;
  template <int kRows, int kBuffers>
  using TokenRows = decltype(cute::tile_to_shape(
      AtomK{}, cute::Shape<cute::Int<kRows>, cute::Int<kHeadDim>, cute::Int<kBuffers>>{}));
  // The same bytes as (D, tokens): the MN-major B operand of a GEMM that sums over tokens.
  template <int kRows, int kBuffers>
  using TokenCols = decltype(cute::tile_to_shape(
      AtomMN{}, cute::Shape<cute::Int<kHeadDim>, cute::Int<kRows>, cute::Int<kBuffers>>{},
      cute::Step<cute::_2, cute::_1, cute::_3>{}));
  // K, V: A operands of S^T = K Q^T, dP^T = V dO^T; K also the B operand of dQ = dS K.
  using SmemLayoutKV = TokenRows<kTileKV, 1>;
  using SmemLayoutKt = TokenCols<kTileKV, 1>;
  // Q, dO per stage: B operands of S^T, dP^T (K-major) and of dK, dV (MN-major).
  using SmemLayoutQ = TokenRows<kTileQ, kStages>;
  using SmemLayoutQt = TokenCols<kTileQ, kStages>;
  // dS (M = Q tokens, K = KV tokens) as the A operand of dQ = dS K, Q contiguous (64 elements,
  // one 128-byte swizzle row), two buffers; and the same bytes as (KV, Q, buffer) for the
  // consumers' writes of dS^T.
  using SmemLayoutDS =
      decltype(cute::tile_to_shape(cute::GMMA::Layout_MN_SW128_Atom<Element>{},
                                   cute::Shape<cute::Int<kTileQ>, cute::Int<kTileKV>, cute::_2>{}));
  using SmemLayoutDSt = decltype(cute::composition(
      SmemLayoutDS{},
      cute::make_layout(cute::Shape<cute::Int<kTileKV>, cute::Int<kTileQ>, cute::_2>{},
                        cute::Stride<cute::Int<kTileQ>, cute::_1, cute::Int<kTileQ * kTileKV>>{})));
  // Accumulator elements i, i + 1 of S^T are neighbouring queries (columns) of one KV row,
  // which dS keeps in one 32-bit word (queries contiguous, the swizzle moves 16-byte chunks).
  static_assert(column_pairs_adjacent<SmemLayoutDSt, kTileKV, kTileQ>(), "dS^T pair stores");
  // d256: P^T and dS^T as the K-major A operands of dV += P^T dO and dK += dS^T Q, the bytes
  // of SmemLayoutDSt (one swizzle row per KV row), two buffers.
  using SmemLayoutPt =
      decltype(cute::tile_to_shape(cute::GMMA::Layout_K_SW128_Atom<Element>{},
                                   cute::Shape<cute::Int<kTileKV>, cute::Int<kTileQ>, cute::_2>{}));
  static_assert(same_offsets<SmemLayoutPt, SmemLayoutDSt, kTileKV, kTileQ>(), "P^T, dS^T bytes");

  // S^T, dP^T: M = KV rows, N = Q tokens, K = D; d <= 128: the warpgroups take 64 KV rows
  // each, d256: 32 Q columns each.
  using TiledMmaSdP = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<
          Element, Element, float,
          cute::Shape<cute::_64, cute::Int<kSdPCols>, cute::Int<kHeadDim>>>(),
      cute::Layout<
          cute::Shape<cute::Int<kSplitD ? 1 : 2>, cute::Int<kSplitD ? 2 : 1>, cute::_1>>{}));
  // dV += P^T dO, dK += dS^T Q: M = KV rows, N = D, K = Q tokens. d <= 128: 64 KV rows per
  // warpgroup, A from registers; d256: 128 columns of D per warpgroup, A from shared memory.
  using KVAtom = cute::Shape<cute::_64, cute::Int<kKVCols>, cute::Int<kTileQ>>;
  using TiledMmaKV = decltype(cute::make_tiled_mma(
      cute::conditional_t<
          kSplitD,
          decltype(cute::GMMA::ss_op_selector<Element, Element, float, KVAtom, cute::GMMA::Major::K,
                                              cute::GMMA::Major::MN>()),
          decltype(cute::GMMA::rs_op_selector<Element, Element, float, KVAtom, cute::GMMA::Major::K,
                                              cute::GMMA::Major::MN>())>{},
      cute::Layout<
          cute::Shape<cute::Int<kSplitD ? 1 : 2>, cute::Int<kSplitD ? 2 : 1>, cute::_1>>{}));
  // dQ = dS K: M = 64 Q rows, N = D, K = KV tokens. d128 and d256 split N over the
  // warpgroups (64 accumulators each, one swizzle atom of K^T each; d256 in two parts, the
  // warpgroups' columns 64 (2 part + wg) on); smaller head dims split K instead: each
  // warpgroup sums over its own 64 KV rows (its own dS^T rows, so only it must have written
  // them) and both add into dQ.
  static constexpr bool kSplitN = kHeadDim >= 128;
  static constexpr int kDqN = dq_fragment_cols(kHeadDim);
  static_assert(kDqN == (kSplitN ? 64 : kHeadDim));
  static constexpr int kDqParts = kSplitN ? kHeadDim / (2 * kDqN) : 1;
  // One warpgroup's dQ partial (of one part): 64 rows x kDqN columns.
  static constexpr int kDqChunk = kTileQ * kDqN;
  using TiledMmaDQ = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kDqN>, cute::Int<kTileKV>>,
                                 cute::GMMA::Major::MN, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::_1, cute::Int<kSplitN ? 2 : 1>, cute::_1>>{}));

  // d128: a visit's dQ = dS K is issued in the next visit, after its dS^T and before its dV
  // and dK (see consumer()).
  // GNA_SM90_BWD_DQ_LAG=0 builds the former schedule (dQ at the end of its own visit, both
  // warpgroups meeting at one barrier), for comparison.
  static constexpr bool kDqLag = kSplitN && !kSplitD && GNA_SM90_BWD_DQ_LAG;
  static_assert(!kDqLag || kStages >= 2, "a stage is released in the next visit");

  using PipelineQ = cutlass::PipelineTmaAsync<kStages>;
  // Named barriers (ids after CUTLASS's reserved ones, at most 7).
  static constexpr int kDqBarrier = 0;  // 0 + wg: the warpgroup's dQ staging buffer
  // dS^T written: d256 and d128 without kDqLag, both warpgroups (one id); d < 128, 2 + wg per
  // warpgroup; kDqLag, 2 + 2 * buffer + wg: warpgroup wg wrote its rows of the buffer (it
  // arrives, the other syncs), ds_ready().
  static constexpr int kDsBarrier = 2;
  static CUTLASS_DEVICE int ds_ready(int buf, int wg) { return kDsBarrier + 2 * buf + wg; }

  // Where a staged dQ partial goes, and its turn (deterministic mode).
  struct DqHandoff {
    float* block;
    int* semaphore;
    int turn;
  };

  struct SharedStorage {
    alignas(1024) Element k[kTileKV * kHeadDim];
    alignas(1024) Element v[kTileKV * kHeadDim];
    alignas(1024) Element q[kStages * kTileQ * kHeadDim];
    alignas(1024) Element dout[kStages * kTileQ * kHeadDim];
    // dS^T, two buffers; at d256 followed by P^T, two buffers (SmemLayoutPt).
    alignas(1024) Element ds[(kSplitD ? 4 : 2) * kTileQ * kTileKV];
    alignas(128) float dq[2 * kDqChunk];  // per warpgroup, its dQ partial in fragment order
    // Per consumer thread and KV row r: the inverse window (row_lo[3], row_len[3]), which only
    // the masked (partial) visits read; in registers it cost the view kernels spills.
    int row_window[2][6][256];
    alignas(16) float lse2[kStages][kTileQ];
    alignas(16) float delta[kStages][kTileQ];
    typename PipelineQ::SharedStorage pipe_q;
    alignas(8) uint64_t kv_full;  // K and V landed (TMA transaction barrier)
    // Deterministic mode: a warpgroup hands its staged dQ partial to the writer thread.
    DqHandoff dq_handoff[2];
    alignas(8) uint64_t dq_full[2];   // per warpgroup: partial and handoff written
    alignas(8) uint64_t dq_empty[2];  // per warpgroup: the writer's add is complete
  };
  // + 1024: the dynamic smem base is re-aligned to 1024 B (SW128 TMA/GMMA).
  static constexpr size_t kSmemBytes = sizeof(SharedStorage) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");

  static constexpr uint32_t kTileBytesQ = kTileQ * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTileBytesKV = kTileKV * kHeadDim * sizeof(Element);
  static constexpr uint32_t kChunkBytesQ = kTileQ * kChunk * sizeof(Element);
  static constexpr uint32_t kChunkBytesKV = kTileKV * kChunk * sizeof(Element);
  static constexpr uint32_t kStatBytes = kTileQ * sizeof(float);
  static constexpr uint32_t kStageBytes = 2 * kTileBytesQ + 2 * kStatBytes;

  // Which CTA does what (decode_bwd_work, cuda/common/bwd_params.h: the item order and why);
  // every role decodes it identically from blockIdx.x.
  using Work = BwdWork;
  static CUTLASS_DEVICE Work decode_work(const BwdParams& p, int item) {
    constexpr int q_tile[3] = {kQ0, kQ1, kQ2};
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    return decode_bwd_work<kView>(p, item, q_tile, kv_tile);
  }

  // A head's visits walk the Q tiles of the box in box order, reversed in deterministic mode.
  // There the lower KV tiles of a Q tile add first; a higher KV tile's box starts later in box
  // order, so walking it backwards reaches a shared Q tile after the lower KV tile did, not
  // before (forwards, every CTA of a chain would wait for the one before it). A step, not
  // tile(j) per visit: that divides by the box's extents, and in the view kernels the values
  // it keeps live spilled in the consumers' loop.
  static CUTLASS_DEVICE void first_visit(const BwdParams& p, const Work& w, int n, int t[3]) {
    if (n > 0) w.box.tile(p.deterministic ? n - 1 : 0, t);  // n visits; none: t is not read
  }
  static CUTLASS_DEVICE void next_visit(const BwdParams& p, const Work& w, int t[3]) {
    if (p.deterministic) {
      w.box.prev(t);
    } else {
      w.box.next(t);
    }
  }

  // One tile (T0 x T1 x T2: the Q or the KV tile shape, `loads` its loads) at group positions
  // `origin` of two tensors (K and V, Q and dO), from one coordinate computation per box.
  template <int T0, int T1, int T2, uint32_t kChunkBytes>
  static CUTLASS_DEVICE void load_pair(const TileLoads& loads, const BwdParams& p, const Work& w,
                                       int head, const int origin[3], uint64_t hint,
                                       const fwd_device::TileTarget& a,
                                       const fwd_device::TileTarget& b) {
    fwd_device::load_tiles<T0, T1, T2, kHeadDim, kChunks, kChunk, int(sizeof(Element))>(
        loads, p.dilation, w.group, w.batch, head, origin, kChunkBytes, hint, a, b);
  }

  static CUTLASS_DEVICE void producer(const BwdMaps& maps, const BwdParams& p, const Work& w,
                                      SharedStorage& ss, PipelineQ& pipe) {
    using fwd_device::kEvictLast;
    using fwd_device::kEvictNormal;
    const int kv_origin[3] = {w.kv_tile[0] * kK0, w.kv_tile[1] * kK1, w.kv_tile[2] * kK2};
    cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.kv_full, 2 * kTileBytesKV);
    load_pair<kK0, kK1, kK2, kChunkBytesKV>(p.kv_loads, p, w, w.kv_head, kv_origin, kEvictNormal,
                                            {maps.k, &ss.kv_full, ss.k},
                                            {maps.v, &ss.kv_full, ss.v});

    auto state = cutlass::make_producer_start_state<PipelineQ>();
    const int n = w.box.size();
    for (int g = 0; g < p.kv_group; ++g) {
      const int head = w.kv_head * p.kv_group + g;
      int t[3];
      first_visit(p, w, n, t);
      for (int j = 0; j < n; ++j, next_visit(p, w, t)) {
        const int origin[3] = {t[0] * kQ0, t[1] * kQ1, t[2] * kQ2};
        pipe.producer_acquire(state);
        uint64_t* bar = pipe.producer_get_barrier(state);
        const int s = state.index();
        load_pair<kQ0, kQ1, kQ2, kChunkBytesQ>(p.q_loads, p, w, head, origin, kEvictLast,
                                               {maps.q, bar, ss.q + s * kTileQ * kHeadDim},
                                               {maps.dout, bar, ss.dout + s * kTileQ * kHeadDim});
        const int64_t slot = bwd_stat_slot(p, w, head, t);
        cute::SM90_BULK_COPY_G2S::copy(p.row_lse2 + slot, bar, ss.lse2[s], kStatBytes);
        cute::SM90_BULK_COPY_G2S::copy(p.row_delta + slot, bar, ss.delta[s], kStatBytes);
        ++state;
      }
    }
    pipe.producer_tail(state);  // the CTA must not exit with loads in flight
  }

  // tC (+)= tA tB over the K blocks [kBegin, kBegin + kCount) of the fragments.
  template <int kCount, class Mma, class TA, class TB, class TC>
  static CUTLASS_DEVICE void gemm(Mma& mma, const TA& tA, const TB& tB, TC& tC, bool accumulate,
                                  int k_begin = 0) {
    cute::warpgroup_fence_operand(tC);
    cute::warpgroup_arrive();
    mma.accumulate_ = accumulate ? cute::GMMA::ScaleOut::One : cute::GMMA::ScaleOut::Zero;
    CUTLASS_PRAGMA_UNROLL
    for (int kb = 0; kb < kCount; ++kb) {
      cute::gemm(mma, tA(cute::_, cute::_, k_begin + kb), tB(cute::_, cute::_, k_begin + kb), tC);
      mma.accumulate_ = cute::GMMA::ScaleOut::One;
    }
    cute::warpgroup_commit_batch();
    cute::warpgroup_fence_operand(tC);
  }

  // block += staging (kDqChunk floats), one bulk reduce-add; completion is awaited with
  // cp.async.bulk.wait_group.
  static CUTLASS_DEVICE void bulk_add(float* block, const float* staging) {
    asm volatile(
        "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
        "cp.async.bulk.commit_group;" ::"l"(block),
        "r"(uint32_t(__cvta_generic_to_shared(staging))), "n"(kDqChunk * 4)
        : "memory");
  }

  // Deterministic mode: one thread adds the consumers' staged dQ partials in turn (waiting on
  // the Q tile's semaphore and for each add to complete), so that the consumers only wait
  // when it falls a whole visit behind. With the head dim split over the warpgroups (d128,
  // d256) their partials are disjoint parts of the Q tile's block: one turn per visit adds
  // both (at d256 both of each of the kDqParts handoffs, the turn held across them), and only
  // one wait for completion is on the Q tile's chain of KV tiles. Otherwise both add into the
  // whole block, warpgroup 0 first.
  static CUTLASS_DEVICE void dq_writer(const BwdParams& p, const Work& w, SharedStorage& ss) {
    constexpr int kTurns = kSplitN ? 1 : 2;  // turns per visit
    constexpr int kAddsPerTurn = 2 / kTurns;
    const int visits = p.kv_group * w.box.size();
    for (int v = 0; v < visits; ++v) {
      for (int first = 0; first < kTurns; ++first) {  // the first warpgroup of the turn
        DqHandoff h;
        for (int part = 0; part < kDqParts; ++part) {
          const int handoff = v * kDqParts + part;  // the warpgroups' handoffs so far
          for (int i = 0; i < kAddsPerTurn; ++i) {
            cutlass::arch::ClusterBarrier::wait(&ss.dq_full[first + i], handoff & 1);
          }
          if (part == 0) {
            h = ss.dq_handoff[first];
            // Cannot deadlock: the CTAs holding the earlier turns have lower block indices
            // (decode_bwd_work's item order, row-major in this mode) and CTAs start in block
            // index order, so each of them is running or done. The backoff keeps the spin off
            // the memory system.
            int now;
            for (unsigned sleep_ns = 32;; sleep_ns = min(2 * sleep_ns, 512u)) {
              asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(now) : "l"(h.semaphore));
              if (now == h.turn) break;
              __nanosleep(sleep_ns);
            }
          }
          for (int i = 0; i < kAddsPerTurn; ++i) {
            bulk_add(ss.dq_handoff[first + i].block, ss.dq + (first + i) * kDqChunk);
          }
          asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
          if (part == kDqParts - 1) {
            asm volatile("fence.proxy.async.global;" ::: "memory");
            __threadfence();
            atomicAdd(h.semaphore, 1);
          }
          for (int i = 0; i < kAddsPerTurn; ++i) {
            cutlass::arch::ClusterBarrier::arrive(&ss.dq_empty[first + i]);
          }
        }
      }
    }
  }

  static CUTLASS_DEVICE void consumer(const BwdParams& p, const Work& w, SharedStorage& ss,
                                      PipelineQ& pipe) {
    using namespace cute;
    constexpr int q_tile[3] = {kQ0, kQ1, kQ2};
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    const int ctid = threadIdx.x - 128;  // 0..255 over both consumer warpgroups
    const int wg = ctid / 128;
    const int lane = threadIdx.x & 31;
    const int warp = (ctid / 32) & 3;
    // This warpgroup's first KV row (of S^T, dP^T, dK, dV), S^T column and dK / dV column.
    const int kv_row0 = kSplitD ? 0 : 64 * wg;
    const int q_col0 = kSplitD ? kSdPCols * wg : 0;
    const int d_col0 = kSplitD ? kKVCols * wg : 0;

    TiledMmaSdP mma_sdp;
    TiledMmaKV mma_kv;
    TiledMmaDQ mma_dq;
    auto thr_sdp = mma_sdp.get_thread_slice(ctid);
    auto thr_kv = mma_kv.get_thread_slice(ctid);
    auto thr_dq = mma_dq.get_thread_slice(kSplitN ? ctid : ctid % 128);

    Tensor sK = make_tensor(make_smem_ptr(ss.k), SmemLayoutKV{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v), SmemLayoutKV{});
    Tensor sKt = make_tensor(make_smem_ptr(ss.k), SmemLayoutKt{});
    Tensor sQ = make_tensor(make_smem_ptr(ss.q), SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(ss.q), SmemLayoutQt{});
    Tensor sDO = make_tensor(make_smem_ptr(ss.dout), SmemLayoutQ{});
    Tensor sDOt = make_tensor(make_smem_ptr(ss.dout), SmemLayoutQt{});
    Tensor sDS = make_tensor(make_smem_ptr(ss.ds), SmemLayoutDS{});
    Tensor sDSt = make_tensor(make_smem_ptr(ss.ds), SmemLayoutDSt{});
    Tensor sPt = make_tensor(make_smem_ptr(ss.ds + 2 * kTileQ * kTileKV), SmemLayoutPt{});  // d256
    Tensor sDStA = make_tensor(make_smem_ptr(ss.ds), SmemLayoutPt{});                       // d256

    Tensor tSrK = thr_sdp.partition_fragment_A(sK(_, _, 0));  // (MMA, 1, D/16)
    Tensor tSrV = thr_sdp.partition_fragment_A(sV(_, _, 0));  // (MMA, 1, D/16)
    Tensor tSrQ = thr_sdp.partition_fragment_B(sQ);           // (MMA, 1, D/16, stages)
    Tensor tSrDO = thr_sdp.partition_fragment_B(sDO);         // (MMA, 1, D/16, stages)
    Tensor tKVrQt = thr_kv.partition_fragment_B(sQt);         // (MMA, 1, Q/16, stages)
    Tensor tKVrDOt = thr_kv.partition_fragment_B(sDOt);       // (MMA, 1, Q/16, stages)
    Tensor tDQrDS = thr_dq.partition_fragment_A(sDS);         // (MMA, 1, KV/16, 2)
    // K^T for dQ part `part`: columns [2 kDqN part, 2 kDqN (part + 1)) over both warpgroups
    // (all of them without the split).
    auto dq_b = [&](int part) {
      return thr_dq.partition_fragment_B(
          local_tile(sKt(_, _, 0), Shape<Int<kDqN*(kSplitN ? 2 : 1)>, Int<kTileKV>>{},
                     make_coord(part, 0)));  // (MMA, 1, KV/16)
    };
    Tensor tDQrKt = dq_b(0);
    Tensor tSsDSt = thr_sdp.partition_C(sDSt);  // (MMA, 1, 1, 2)

    Tensor tSrS = partition_fragment_C(mma_sdp, Shape<Int<kTileKV>, Int<kTileQ>>{});
    Tensor tSrDP = partition_fragment_C(mma_sdp, Shape<Int<kTileKV>, Int<kTileQ>>{});
    Tensor tKVrDK = partition_fragment_C(mma_kv, Shape<Int<kTileKV>, Int<kHeadDim>>{});
    Tensor tKVrDV = partition_fragment_C(mma_kv, Shape<Int<kTileKV>, Int<kHeadDim>>{});
    Tensor tDQrDQ = partition_fragment_C(mma_dq, Shape<Int<kTileQ>, Int<kDqN*(kSplitN ? 2 : 1)>>{});
    // P^T and dS^T rounded to 16 bits. d <= 128: in the A-operand register layout of the KV
    // GEMMs (the accumulator of two n8 blocks holds exactly the values of one k16 A fragment, in
    // the same register order); d256: in the accumulator's order, on their way to shared memory.
    auto operand_regs = [&] {
      if constexpr (kSplitD) {
        return make_fragment_like<Element>(tSrS);
      } else {
        return make_tensor<Element>(partition_shape_A(mma_kv, Shape<Int<kTileKV>, Int<kTileQ>>{}));
      }
    };
    Tensor tP = operand_regs();
    Tensor tDS = operand_regs();
    static_assert(decltype(size(tP))::value == decltype(size(tSrS))::value);
    static_assert(decltype(size(tSsDSt))::value == 2 * decltype(size(tSrS))::value);
    clear(tKVrDK);
    clear(tKVrDV);

    // Accumulator element i of an m64nN wgmma sits at row 16 * warp + lane / 4 +
    // 8 * ((i >> 1) & 1) of the warpgroup's 64 rows and at column 8 * (i >> 2) +
    // 2 * (lane % 4) + (i & 1) of its N columns.
    const int row_base = 16 * warp + lane / 4;
    const int col_base = 2 * (lane & 3);

    // The two KV rows this thread owns: per axis, the queries (local group positions) that see
    // them (the inverse window, cut to the valid queries; empty for a key outside the valid
    // keys: the group, or a view's key slice and axis).
    // Kept in shared memory (row_window) until the masked visits read them; the epilogue
    // computes the rows' tokens again.
    auto kv_row = [&](int r, int lo[3], int len[3]) {
      int o[3];
      fwd_device::tile_offsets<kK0, kK1, kK2>(kv_row0 + row_base + 8 * r, o);
      return bwd_kv_row(p, w, kv_tile, o, lo, len);
    };
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < 2; ++r) {
      int lo[3], len[3];
      kv_row(r, lo, len);
      CUTLASS_PRAGMA_UNROLL
      for (int a = 0; a < 3; ++a) {
        ss.row_window[r][a][ctid] = lo[a];
        ss.row_window[r][3 + a][ctid] = len[a];
      }
    }

    const int n = w.box.size();
    if (n > 0) cutlass::arch::ClusterTransactionBarrier::wait(&ss.kv_full, 0);
    typename PipelineQ::PipelineState state;
    // kDqLag: the previous visit's stage, head and Q tile (its dQ is still to come).
    typename PipelineQ::PipelineState prev_state;
    int prev_head = 0, prev_t[3] = {0, 0, 0};
    // kDqLag: the previous visit's dQ accumulates in the registers of S^T: it is issued when
    // S^T is dead but P^T and dS^T (bf16) live on for dV and dK, and in registers of its own
    // ptxas found no 32 in a row free beside them (it spilled dK around each dQ).
    Tensor tDQrLag = make_tensor(tSrS.data(), tDQrDQ.layout());
    static_assert(!kDqLag || decltype(size(tDQrDQ))::value == decltype(size(tSrS))::value);
    int visit = 0;
    for (int g = 0; g < p.kv_group; ++g) {
      const int head = w.kv_head * p.kv_group + g;
      int t[3];
      first_visit(p, w, n, t);
      for (int j = 0; j < n; ++j, ++visit, next_visit(p, w, t)) {
        bool full = true;
        CUTLASS_PRAGMA_UNROLL
        for (int a = 0; a < 3; ++a) full &= w.full[a].start <= t[a] && t[a] < w.full[a].end;
        const int s = state.index();
        const int buf = visit & 1;

        pipe.consumer_wait(state);
        gemm<kHeadDim / 16>(mma_sdp, tSrK, tSrQ(_, _, _, s), tSrS, false);
        if constexpr (kDqLag) {
          // S^T runs behind the previous visit's dV and dK; once they are done, its stage is
          // free and P^T, dS^T in registers may be overwritten. dP^T is issued only then, so
          // that its accumulators and the previous P^T, dS^T are not live together.
          warpgroup_wait<1>();
          warpgroup_fence_operand(tP);
          warpgroup_fence_operand(tDS);
          if (visit > 0) pipe.consumer_release(prev_state);
        }
        gemm<kHeadDim / 16>(mma_sdp, tSrV, tSrDO(_, _, _, s), tSrDP, false);

        // P^T = exp2(S^T scale log2 e - lse2) (0 where masked), while dP^T is computed.
        warpgroup_wait<1>();
        const float* lse2 = ss.lse2[s] + q_col0;
        CUTLASS_PRAGMA_UNROLL
        for (int n8 = 0; n8 < kSdPCols / 8; ++n8) {
          const float2 l = *reinterpret_cast<const float2*>(lse2 + 8 * n8 + col_base);
          CUTLASS_PRAGMA_UNROLL
          for (int k = 0; k < 4; ++k) {
            const int i = 4 * n8 + k;
            tSrS(i) = fwd_device::exp2_approx(tSrS(i) * p.scale_log2 - ((k & 1) ? l.y : l.x));
          }
        }
        if (!full) {
          // Column q_col0 + 8 * n8 + col_base + i0: n8 (and the warpgroup, at d256) fix the Q
          // offsets along axes 0 and 1, axis 2 adds col_base + i0.
          int row_lo[2][3], row_len[2][3];
          CUTLASS_PRAGMA_UNROLL
          for (int r = 0; r < 2; ++r) {
            CUTLASS_PRAGMA_UNROLL
            for (int a = 0; a < 3; ++a) {
              row_lo[r][a] = ss.row_window[r][a][ctid];
              row_len[r][a] = ss.row_window[r][3 + a][ctid];
            }
          }
          CUTLASS_PRAGMA_UNROLL
          for (int n8 = 0; n8 < kSdPCols / 8; ++n8) {
            int o[3];
            fwd_device::tile_offsets<kQ0, kQ1, kQ2>(q_col0 + 8 * n8, o);
            CUTLASS_PRAGMA_UNROLL
            for (int r = 0; r < 2; ++r) {
              const bool row_ok =
                  unsigned(t[0] * q_tile[0] + o[0] - row_lo[r][0]) < unsigned(row_len[r][0]) &&
                  unsigned(t[1] * q_tile[1] + o[1] - row_lo[r][1]) < unsigned(row_len[r][1]);
              const int x2 = t[2] * q_tile[2] + o[2] + col_base - row_lo[r][2];
              CUTLASS_PRAGMA_UNROLL
              for (int i0 = 0; i0 < 2; ++i0) {
                const int i = i0 + 2 * r + 4 * n8;
                if (!(row_ok && unsigned(x2 + i0) < unsigned(row_len[r][2]))) tSrS(i) = 0.f;
              }
            }
          }
        }
        // dS^T = P^T (dP^T - delta).
        warpgroup_wait<0>();
        const float* delta = ss.delta[s] + q_col0;
        CUTLASS_PRAGMA_UNROLL
        for (int n8 = 0; n8 < kSdPCols / 8; ++n8) {
          const float2 d = *reinterpret_cast<const float2*>(delta + 8 * n8 + col_base);
          CUTLASS_PRAGMA_UNROLL
          for (int k = 0; k < 4; ++k) {
            const int i = 4 * n8 + k;
            tSrDP(i) = tSrS(i) * (tSrDP(i) - ((k & 1) ? d.y : d.x));
          }
        }
        {
          cutlass::NumericArrayConverter<Element, float, 2> cvt;
          CUTLASS_PRAGMA_UNROLL
          for (int i = 0; i < size(tSrS); i += 2) {
            const cutlass::Array<Element, 2> pp =
                cvt(cutlass::Array<float, 2>{tSrS(i), tSrS(i + 1)});
            tP(i) = pp[0];
            tP(i + 1) = pp[1];
            const cutlass::Array<Element, 2> ds =
                cvt(cutlass::Array<float, 2>{tSrDP(i), tSrDP(i + 1)});
            tDS(i) = ds[0];
            tDS(i + 1) = ds[1];
          }
        }
        // kDqLag: the previous visit's dQ first (its accumulators are free: S^T and dP^T are
        // dead), then dV and dK, so that its staging and add run under them.
        // On the first visit it computes a product of the unwritten buffer 1 that nobody adds:
        // a wgmma issued on a condition makes ptxas copy its accumulators at the join, and for
        // that it serialises every wgmma of the kernel.
        if constexpr (kDqLag) {
          if (visit > 0) cutlass::arch::NamedBarrier::sync(256, ds_ready(buf ^ 1, 1 - wg));
          gemm<kTileKV / 16>(mma_dq, tDQrDS(_, _, _, buf ^ 1), tDQrKt, tDQrLag, false);
        }
        // dV += P^T dO, dK += dS^T Q, here from registers (d <= 128); at d256 after the barrier.
        warpgroup_fence_operand(tP);
        warpgroup_fence_operand(tDS);
        if constexpr (!kSplitD) {
          gemm<kTileQ / 16>(mma_kv, tP, tKVrDOt(_, _, _, s), tKVrDV, true);
          gemm<kTileQ / 16>(mma_kv, tDS, tKVrQt(_, _, _, s), tKVrDK, true);
        }

        // dS^T (and at d256 P^T) to shared memory (buffer `buf`; its readers two visits ago are
        // done, see below), one 32-bit store per pair of neighbouring queries.
        {
          Tensor out = tSsDSt(_, _, _, buf);
          CUTLASS_PRAGMA_UNROLL
          for (int i = 0; i < size(tDS); i += 2) store_shared_pair(&out(i), tDS(i), tDS(i + 1));
          if constexpr (kSplitD) {
            Tensor out_p = thr_sdp.partition_C(sPt)(_, _, _, buf);
            CUTLASS_PRAGMA_UNROLL
            for (int i = 0; i < size(tP); i += 2) store_shared_pair(&out_p(i), tP(i), tP(i + 1));
          }
        }
        cutlass::arch::fence_view_async_shared();
        if constexpr (kDqLag) {
          // The previous visit's dQ is done (dV, dK may run): it no longer reads buffer buf ^ 1,
          // which the other warpgroup writes next visit after its sync on this arrive. (Waited
          // for on every visit: ptxas does not see that the issue and the reads share a
          // condition, and would serialise the wgmmas.)
          warpgroup_wait<2>();
          warpgroup_fence_operand(tDQrLag);
          cutlass::arch::NamedBarrier::arrive(256, ds_ready(buf, wg));
          if (visit > 0) add_dq(p, w, ss, tDQrLag, prev_head, prev_t, visit - 1, wg, ctid);
          prev_state = state;
          ++state;
          prev_head = head;
          CUTLASS_PRAGMA_UNROLL
          for (int a = 0; a < 3; ++a) prev_t[a] = t[a];
        } else {
          if constexpr (kSplitN)
            cutlass::arch::NamedBarrier::sync(256, kDsBarrier);
          else
            cutlass::arch::NamedBarrier::sync(128, kDsBarrier + wg);
          if constexpr (kSplitD) {
            // Both warpgroups' halves of P^T and dS^T, for this warpgroup's columns of dV, dK.
            Tensor tKVsP = thr_kv.partition_fragment_A(sPt);     // (MMA, 1, Q/16, 2)
            Tensor tKVsDS = thr_kv.partition_fragment_A(sDStA);  // (MMA, 1, Q/16, 2)
            gemm<kTileQ / 16>(mma_kv, tKVsP(_, _, _, buf), tKVrDOt(_, _, _, s), tKVrDV, true);
            gemm<kTileQ / 16>(mma_kv, tKVsDS(_, _, _, buf), tKVrQt(_, _, _, s), tKVrDK, true);
          }
          // dQ = dS K (this warpgroup's columns of D, or its KV rows), in kDqParts parts. A
          // warpgroup passes the next visit's barrier only after finishing this visit's GEMMs, so
          // with two buffers no write of dS^T (P^T) can overtake a read of the other warpgroup.
          constexpr int kDqK = kSplitN ? kTileKV / 16 : kTileKV / 32;
          CUTLASS_PRAGMA_UNROLL
          for (int part = 0; part < kDqParts; ++part) {
            gemm<kDqK>(mma_dq, tDQrDS(_, _, _, buf), part == 0 ? tDQrKt : dq_b(part), tDQrDQ, false,
                       kSplitN ? 0 : wg * kDqK);
            warpgroup_wait<0>();
            if (part == 0) {  // every GEMM reading Q and dO is done
              warpgroup_fence_operand(tP);
              warpgroup_fence_operand(tDS);
              pipe.consumer_release(state);
              ++state;
            }
            add_dq(p, w, ss, tDQrDQ, head, t, visit * kDqParts + part, kSplitN ? 2 * part + wg : 0,
                   ctid);
          }
        }
      }
    }
    if constexpr (kDqLag) {
      warpgroup_wait<0>();  // the last dV, dK (unconditional, as above)
      if (visit > 0) {      // the last visit's dQ
        const int prev_buf = (visit - 1) & 1;
        cutlass::arch::NamedBarrier::sync(256, ds_ready(prev_buf, 1 - wg));
        gemm<kTileKV / 16>(mma_dq, tDQrDS(_, _, _, prev_buf), tDQrKt, tDQrLag, false);
        warpgroup_wait<0>();
        warpgroup_fence_operand(tDQrLag);
        pipe.consumer_release(prev_state);
        add_dq(p, w, ss, tDQrLag, prev_head, prev_t, visit - 1, wg, ctid);
      }
    }
    if ((ctid & 127) == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");

    // Epilogue: dK (times the softmax scale) and dV of the valid KV rows, this warpgroup's
    // columns.
    Element* dk = static_cast<Element*>(p.dk);
    Element* dv = static_cast<Element*>(p.dv);
    cutlass::NumericArrayConverter<Element, float, 2> cvt;
    int64_t kv_token[2];
    CUTLASS_PRAGMA_UNROLL
    for (int r = 0; r < 2; ++r) {
      int lo[3], len[3];
      kv_token[r] = kv_row(r, lo, len);
    }
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(tKVrDK); i += 2) {
      const int64_t token = kv_token[(i >> 1) & 1];
      if (token < 0) continue;
      const int64_t at =
          (token * p.kv_heads + w.kv_head) * kHeadDim + d_col0 + 8 * (i >> 2) + col_base;
      *reinterpret_cast<cutlass::Array<Element, 2>*>(dk + at) =
          cvt(cutlass::Array<float, 2>{tKVrDK(i) * p.scale, tKVrDK(i + 1) * p.scale});
      *reinterpret_cast<cutlass::Array<Element, 2>*>(dv + at) =
          cvt(cutlass::Array<float, 2>{tKVrDV(i), tKVrDV(i + 1)});
    }
  }

  // A warpgroup's dQ partial `acc` (of part `part` of the Q tile's block: 64 rows x kDqN
  // columns) -> its staging buffer (element pairs in fragment order, dq_order.h) -> one bulk
  // reduce-add into the Q tile's fp32 block; `handoff` counts the warpgroup's partials so far.
  template <class Acc>
  static CUTLASS_DEVICE void add_dq(const BwdParams& p, const Work& w, SharedStorage& ss,
                                    const Acc& acc, int head, const int t[3], int handoff, int part,
                                    int ctid) {
    constexpr int q_tile[3] = {kQ0, kQ1, kQ2};
    constexpr int kv_tile[3] = {kK0, kK1, kK2};
    const int wg = ctid / 128;
    const bool leader = (ctid & 127) == 0;
    if (p.deterministic) {
      if (handoff > 0) cutlass::arch::ClusterBarrier::wait(&ss.dq_empty[wg], (handoff - 1) & 1);
    } else {
      if (leader) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      cutlass::arch::NamedBarrier::sync(128, kDqBarrier + wg);  // the buffer is free
    }
    float* staging = ss.dq + wg * kDqChunk;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < cute::size(acc); i += 2) {
      *reinterpret_cast<float2*>(staging + dq_pair_offset(i / 2, ctid & 127)) =
          make_float2(acc(i), acc(i + 1));
    }
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(128, kDqBarrier + wg);
    if (!leader) return;
    const int64_t slot = bwd_stat_slot(p, w, head, t);
    float* block = p.dq_accum + slot * kHeadDim + part * kDqChunk;
    if (p.deterministic) {
      // The writer thread adds it in turn: after the KV tiles before this one in the Q
      // tile's KV box (box order) that add into the same copy of the accumulator (every
      // dq_buffers-th, bwd_params.h) and, with split K, after warpgroup 0 of this CTA.
      // The group axes again from p, not from w: keeping w.axes live through the loop
      // costs registers (spills) for this rare branch.
      GroupAxis axes[3];
      for (int a = 0; a < 3; ++a) axes[a] = launch_group_axis<kView>(p, a, w.group[a]);
      const int index = kv_tile_box(axes, 3, t, q_tile, kv_tile).index(w.kv_tile);
      const int copy = index % p.dq_buffers, order = index / p.dq_buffers;
      const int turn = kSplitN ? order : 2 * order + wg;  // as dq_writer takes them
      ss.dq_handoff[wg] =
          DqHandoff{block + copy * bwd_dq_stride(p), bwd_dq_semaphore(p, copy, slot, kTileQ), turn};
      cutlass::arch::ClusterBarrier::arrive(&ss.dq_full[wg]);
    } else {
      bulk_add(block, staging);
    }
  }

  static CUTLASS_DEVICE void run(const BwdMaps& maps, const BwdParams& p, char* smem_raw) {
    SharedStorage& ss = shared_storage<SharedStorage>(smem_raw);
    const bool producer_role = threadIdx.x < 128;

    typename PipelineQ::Params pipe_params;
    pipe_params.transaction_bytes = kStageBytes;
    pipe_params.role =
        producer_role ? PipelineQ::ThreadCategory::Producer : PipelineQ::ThreadCategory::Consumer;
    pipe_params.is_leader = threadIdx.x == 0;
    pipe_params.num_consumers = 256;
    pipe_params.initializing_warp = 0;
    PipelineQ pipe(ss.pipe_q, pipe_params, cute::Shape<cute::_1, cute::_1, cute::_1>{});
    if (threadIdx.x == 64) {
      cutlass::arch::ClusterTransactionBarrier::init(&ss.kv_full, 1);
      for (int i = 0; i < 2; ++i) {
        cutlass::arch::ClusterBarrier::init(&ss.dq_full[i], 1);
        cutlass::arch::ClusterBarrier::init(&ss.dq_empty[i], 1);
      }
      cutlass::arch::fence_barrier_init();
    }
    __syncthreads();

    // Registers: 168 per thread at launch; the producer frees 144 x 128, the consumers take
    // 72 x 256 of them (setmaxnreg blocks forever if the pool cannot cover the increase). The
    // consumers decode their work again after taking theirs (`w` is then the producer's only):
    // one live across setmaxnreg spilled with a view's runtime offsets.
    const Work w = decode_work(p, blockIdx.x);
    if (producer_role) {
      cutlass::arch::warpgroup_reg_dealloc<24>();
      if (threadIdx.x == 0 && w.box.size() > 0) producer(maps, p, w, ss, pipe);
      if (threadIdx.x == 32 && p.deterministic) dq_writer(p, w, ss);
    } else {
      cutlass::arch::warpgroup_reg_alloc<240>();
      consumer(p, decode_work(p, blockIdx.x), ss, pipe);
    }
  }
};

template <class Kernel>
__global__ void __launch_bounds__(Kernel::kThreads, 1)
    gna_bwd_sm90_kernel(const __grid_constant__ BwdMaps maps,
                        const __grid_constant__ BwdParams params) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  enter_after_prior_grids();  // PDL (grid_dependency.cuh)
  extern __shared__ char smem[];
  Kernel::run(maps, params, smem);
#else
  // Built for another architecture: never launched (the launcher checks the device).
#endif
}

}  // namespace gna::sm90
