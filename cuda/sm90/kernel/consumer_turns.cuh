// The sm90 forward's two consumer warpgroups take turns (named barriers, 256 threads each):
// - GEMM turns (FA3's ping-pong): a warpgroup issues its GEMMs only in its turn and passes the
//   turn on right after issuing, so the GEMMs of the two alternate on the tensor cores.
// - Softmax turns (as cuDNN's forward does): a warpgroup runs its softmax only in its turn and
//   passes it on when done. Turns on GEMMs alone do not keep the softmaxes apart once the GEMMs
//   are short (FP8), and two softmaxes at once share the MUFU pipe while the tensor cores idle.
// Both kinds alternate strictly, warpgroup 0 first; each warpgroup must take as many turns of a
// kind as the other. Which kinds are on is the development knob GNA_SM90_FWD_TURNS
// (common/dev_knobs.h): 0 none, 1 GEMM turns (the default), 2 both.
#pragma once

#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>

namespace gna::sm90 {

struct ConsumerTurns {
#if defined(GNA_SM90_FWD_TURNS)
  static constexpr int kMode = GNA_SM90_FWD_TURNS;
#else
  static constexpr int kMode = 1;
#endif
  static_assert(0 <= kMode && kMode <= 2, "GNA_SM90_FWD_TURNS: 0, 1 or 2");
  static constexpr bool kGemm = kMode >= 1;
  static constexpr bool kSoftmax = kMode == 2;
  // Named barrier ids (after CUTLASS's reserved ones): one per warpgroup and kind.
  static constexpr int kGemmBarrier = 2;
  static constexpr int kSoftmaxBarrier = 4;

  // Once per kernel by every consumer thread (ctid: 0..255), before any turn: warpgroup 0
  // gets the first turn of each kind.
  static CUTLASS_DEVICE void start(int ctid) {
    if (ctid >= 128) return;
    if constexpr (kGemm) cutlass::arch::NamedBarrier::arrive(256, kGemmBarrier);
    if constexpr (kSoftmax) cutlass::arch::NamedBarrier::arrive(256, kSoftmaxBarrier);
  }
  static CUTLASS_DEVICE void take_gemm(int wg) {
    if constexpr (kGemm) cutlass::arch::NamedBarrier::sync(256, kGemmBarrier + wg);
  }
  static CUTLASS_DEVICE void pass_gemm(int wg) {
    if constexpr (kGemm) cutlass::arch::NamedBarrier::arrive(256, kGemmBarrier + 1 - wg);
  }
  static CUTLASS_DEVICE void take_softmax(int wg) {
    if constexpr (kSoftmax) cutlass::arch::NamedBarrier::sync(256, kSoftmaxBarrier + wg);
  }
  static CUTLASS_DEVICE void pass_softmax(int wg) {
    if constexpr (kSoftmax) cutlass::arch::NamedBarrier::arrive(256, kSoftmaxBarrier + 1 - wg);
  }
};

}  // namespace gna::sm90
