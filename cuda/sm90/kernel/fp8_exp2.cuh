// 2^x without the MUFU unit, for the FP8 forward's softmax (fwd_fp8_kernel_ws.cuh). With FP8
// wgmma at twice the 16-bit rate, the 16 MUFU.EX2 per clock and SM take as long as the tensor
// cores for a 128 x 128 tile; exp2_fma computes some of the exponentials on the FMA and integer
// pipes instead, so the two share the load (the development knob GNA_SM90_FP8_FMA_EXP2 says how
// many of every 8; common/dev_knobs.h).
//
// exp2_fma(x): x = n + f with n = floor(x) (one add rounding down onto the integer grid of
// kExp2Round, whose low mantissa bits then hold n + 127), 2^f by a degree-3 polynomial in
// Horner form (p(0) = 1 exactly), times 2^n built from those bits by a shift.
//   - relative error <= 8.6e-5 for -126 <= x < 128 (the coefficients: minimax relative error
//     on [0, 1] with p(0) = 1, fitted by linear programming; the float32 evaluation adds a few
//     ulp); tests/test_fp8_exp2.py checks it, and the values below, on an emulation;
//   - x < -126 (-inf included: masked scores, rows with no key) gives exactly 0, as
//     ex2.approx.ftz, so rows with no key keep a zero sum;
//   - x >= 128 gives +inf, which the speculative softmax needs: it detects a stale max by the
//     row sums of the exponentials of scores far above it (unclamped, the exponent would wrap);
//   - NaN gives NaN (NaN-propagating clamps; the GPU's NaN, 0x7fffffff, turns the shift into
//     -inf, and NaN times -inf is NaN).
// Adding n to p's exponent bits instead of multiplying would save one instruction but give
// subnormals for -127 < x < -126 and a finite value for NaN.
// 10 instructions: 2 FMNMX.NAN, 3 FADD, 3 FFMA, 1 shift, 1 FMUL.
#pragma once

#include <cutlass/cutlass.h>

namespace gna::sm90 {

// 1.5 * 2^23 + 127: x + kExp2Round rounded down is kExp2Round + floor(x) for |x| < 2^22.
constexpr float kExp2Round = 12583039.0f;
// p(f) = 1 + f (C1 + f (C2 + f C3)) ~ 2^f on [0, 1].
constexpr float kExp2C1 = 0.695117295f;
constexpr float kExp2C2 = 0.227643535f;
constexpr float kExp2C3 = 0.0770680308f;

#if defined(GNA_SM90_FP8_FMA_EXP2)  // a development knob (common/dev_knobs.h)
constexpr int kFp8FmaExp2 = GNA_SM90_FP8_FMA_EXP2;
#else
constexpr int kFp8FmaExp2 = 0;
#endif
static_assert(0 <= kFp8FmaExp2 && kFp8FmaExp2 <= 8, "GNA_SM90_FP8_FMA_EXP2: 0 to 8");

// Whether the softmax computes exponential i (of a thread's 64 per tile) with exp2_fma:
// kFp8FmaExp2 of every 8 consecutive ones, spread out (i % 8 times k, mod 8, below k).
constexpr bool fp8_exp2_on_fma(int i) { return (i % 8) * kFp8FmaExp2 % 8 < kFp8FmaExp2; }
static_assert(
    [] {
      int n = 0;
      for (int i = 0; i < 8; ++i) n += fp8_exp2_on_fma(i);
      return n;
    }() == kFp8FmaExp2,
    "k of every 8");

CUTLASS_DEVICE float exp2_fma(float x) {
  // max.NaN / min.NaN: fmaxf / fminf would turn NaN into the bound.
  asm("max.NaN.f32 %0, %0, 0fC2FE0000;" : "+f"(x));  // -127
  asm("min.NaN.f32 %0, %0, 0f43000000;" : "+f"(x));  // 128
  const float t = __fadd_rd(x, kExp2Round);
  const float f = __fsub_rn(x, __fsub_rn(t, kExp2Round));  // x - floor(x), exact: [0, 1)
  float p = __fmaf_rn(kExp2C3, f, kExp2C2);
  p = __fmaf_rn(p, f, kExp2C1);
  p = __fmaf_rn(p, f, 1.f);
  // The low 9 bits of t hold n + 127 (kExp2Round's upper bits shift out): 2^n as float bits,
  // 0 for n = -127 (x < -126), +inf for n = 128 (x >= 128).
  return __fmul_rn(p, __uint_as_float(__float_as_uint(t) << 23));
}

}  // namespace gna::sm90
