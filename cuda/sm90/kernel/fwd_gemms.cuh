// The two GEMMs of a visit of the sm90 forwards (16-bit and FP8 kernels), each issued as one
// wgmma batch by the calling warpgroup (wait for it with warpgroup_wait): S = Q K^T from shared
// memory, and O += P V with P from registers.
#pragma once

#include <cute/atom/mma_atom.hpp>
#include <cute/tensor.hpp>

namespace gna::sm90 {

// tC = tA tB (SS: both operands in shared memory), over every K block of the fragments.
template <class Mma, class TA, class TB, class TC>
CUTLASS_DEVICE void gemm_qk(Mma& mma, const TA& tA, const TB& tB, TC& tC) {
  cute::warpgroup_fence_operand(tC);
  cute::warpgroup_arrive();
  mma.accumulate_ = cute::GMMA::ScaleOut::Zero;
  CUTLASS_PRAGMA_UNROLL
  for (int kb = 0; kb < cute::size<2>(tA); ++kb) {
    cute::gemm(mma, tA(cute::_, cute::_, kb), tB(cute::_, cute::_, kb), tC);
    mma.accumulate_ = cute::GMMA::ScaleOut::One;
  }
  cute::warpgroup_commit_batch();
  cute::warpgroup_fence_operand(tC);
}

// tC += tA tB (RS: tA in registers, which the batch reads until it retires).
template <class Mma, class TA, class TB, class TC>
CUTLASS_DEVICE void gemm_pv(Mma& mma, TA& tA, const TB& tB, TC& tC) {
  cute::warpgroup_fence_operand(tA);
  cute::warpgroup_fence_operand(tC);
  cute::warpgroup_arrive();
  mma.accumulate_ = cute::GMMA::ScaleOut::One;
  CUTLASS_PRAGMA_UNROLL
  for (int kb = 0; kb < cute::size<2>(tA); ++kb) {
    cute::gemm(mma, tA(cute::_, cute::_, kb), tB(cute::_, cute::_, kb), tC);
  }
  cute::warpgroup_commit_batch();
  cute::warpgroup_fence_operand(tC);
  cute::warpgroup_fence_operand(tA);
}

}  // namespace gna::sm90
