// The one definition of the jax_gna_fwd / jax_gna_bwd FFI signatures, shared by the handlers of
// every platform (which only prepend their own context, e.g. the CUDA stream), and the decoding
// of buffers + attributes into a gna::Problem.
//
// Attribute names and types must match jax_gna/_params.py GnaParams.attrs(): int64 arrays and
// an fp32 scale (any other type fails to decode at run time).
#pragma once

#include <cstdint>
#include <exception>
#include <new>
#include <string>
#include <utility>

#include "problem_from_shapes.h"
#include "xla/ffi/api/ffi.h"

namespace gna::ffi_bindings {

namespace ffi = xla::ffi;
using I64Span = ffi::Span<const int64_t>;

// The results and attributes of jax_gna_fwd and jax_gna_fwd_fp8, after their arguments.
template <typename Binding>
auto bind_fwd_results(Binding binding) {
  return std::move(binding)
      .template Ret<ffi::AnyBuffer>()         // out  [B..., X..., H, Dv], q's dtype (fp8: bf16)
      .template Ret<ffi::Buffer<ffi::F32>>()  // lse  [B..., X..., H]
      .template Ret<ffi::Buffer<ffi::U8>>()   // workspace [bytes]
      .template Attr<I64Span>("kernel_size")
      .template Attr<I64Span>("stride")
      .template Attr<I64Span>("dilation")
      .template Attr<I64Span>("is_causal")
      .template Attr<float>("scale")
      .template Attr<I64Span>("q_tile")           // requested tiles, one per axis, or empty: unset
      .template Attr<I64Span>("kv_tile")          // (read by backends with tile configurations)
      .template Attr<I64Span>("view_extent")      // a view (WindowAttrs), one per axis, or
      .template Attr<I64Span>("view_q_offset")    // all three empty: the arrays hold the
      .template Attr<I64Span>("view_kv_offset");  // whole axes
}

// jax_gna_fwd: (q, k, v) -> (out, lse, workspace).
template <typename Binding>
auto bind_fwd(Binding binding) {
  return bind_fwd_results(std::move(binding)
                              .template Arg<ffi::AnyBuffer>()    // q    [B..., X..., H, D]
                              .template Arg<ffi::AnyBuffer>()    // k    [B..., X..., Hkv, D]
                              .template Arg<ffi::AnyBuffer>());  // v    [B..., X..., Hkv, Dv]
}

// jax_gna_fwd_fp8 (CUDA only): (q, k, v in float8_e4m3fn, descale) -> (out in bfloat16, lse,
// workspace). descale: fp32 [3, H], the q, k and v descales of each query head.
template <typename Binding>
auto bind_fwd_fp8(Binding binding) {
  return bind_fwd_results(std::move(binding)
                              .template Arg<ffi::AnyBuffer>()
                              .template Arg<ffi::AnyBuffer>()
                              .template Arg<ffi::AnyBuffer>()
                              .template Arg<ffi::Buffer<ffi::F32>>());  // descale [3, H]
}

// jax_gna_bwd: (dout, q, k, v, out, lse, dlse) -> (dq, dk, dv, workspace).
template <typename Binding>
auto bind_bwd(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()         // dout [B..., X..., H, Dv]
      .template Arg<ffi::AnyBuffer>()         // q
      .template Arg<ffi::AnyBuffer>()         // k
      .template Arg<ffi::AnyBuffer>()         // v
      .template Arg<ffi::AnyBuffer>()         // out
      .template Arg<ffi::Buffer<ffi::F32>>()  // lse  [B..., X..., H]
      .template Arg<ffi::Buffer<ffi::F32>>()  // dlse [B..., X..., H]
      .template Ret<ffi::AnyBuffer>()         // dq
      .template Ret<ffi::AnyBuffer>()         // dk
      .template Ret<ffi::AnyBuffer>()         // dv
      .template Ret<ffi::Buffer<ffi::U8>>()   // workspace [bytes]
      .template Attr<I64Span>("kernel_size")
      .template Attr<I64Span>("stride")
      .template Attr<I64Span>("dilation")
      .template Attr<I64Span>("is_causal")
      .template Attr<float>("scale")
      .template Attr<int64_t>("deterministic")  // 1: bit-identical results run to run
      .template Attr<I64Span>("q_tile")         // the backward's own tiles, as in jax_gna_fwd
      .template Attr<I64Span>("kv_tile")
      .template Attr<I64Span>("view_extent")  // as in jax_gna_fwd
      .template Attr<I64Span>("view_q_offset")
      .template Attr<I64Span>("view_kv_offset");
}

// The error of the exception in flight, for a handler's result. Never throws: when even the
// message cannot be built, the error carries a short fixed one (no allocation).
inline ffi::Error error_of_current_exception(const char* what) noexcept {
  try {
    try {
      throw;
    } catch (const std::bad_alloc&) {
      return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                        std::string(what) + ": out of host memory (std::bad_alloc)");
    } catch (const std::exception& e) {
      return ffi::Error::Internal(std::string(what) + ": " + e.what());
    } catch (...) {
      return ffi::Error::Internal(std::string(what) + ": unknown C++ exception");
    }
  } catch (...) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "out of memory");
  }
}

// Runs `body` (a callable returning ffi::Error) so that no C++ exception leaves it: XLA would
// end the process in std::terminate. std::bad_alloc (e.g. a host copy) becomes
// RESOURCE_EXHAUSTED, any other exception INTERNAL, each naming the target `what`.
template <typename Body>
ffi::Error without_exceptions(const char* what, Body&& body) noexcept {
  try {
    return body();
  } catch (...) {
    return error_of_current_exception(what);
  }
}

inline constexpr char kFwdTarget[] = "jax_gna_fwd";
inline constexpr char kFwdFp8Target[] = "jax_gna_fwd_fp8";
inline constexpr char kBwdTarget[] = "jax_gna_bwd";

// `handler` run through without_exceptions: what every platform registers, so that a
// handler's body needs no try/catch of its own.
template <const char* kWhat, auto kHandler>
struct NoExceptions;
template <const char* kWhat, typename... Args, ffi::Error (*kHandler)(Args...)>
struct NoExceptions<kWhat, kHandler> {
  static ffi::Error call(Args... args) noexcept {
    return without_exceptions(kWhat, [&] { return kHandler(std::move(args)...); });
  }
};
template <const char* kWhat, auto kHandler>
inline constexpr auto no_exceptions = &NoExceptions<kWhat, kHandler>::call;

inline Int64List as_list(I64Span s) { return Int64List{s.begin(), s.size()}; }

// The DType of a buffer's element type; float8_e4m3fn only where `fp8` (jax_gna_fwd_fp8).
inline bool dtype_of(ffi::DataType t, DType* out, bool fp8 = false) {
  switch (t) {
    case ffi::DataType::F8E4M3FN:
      *out = DType::kE4M3;
      return fp8;
    case ffi::DataType::F32:
      *out = DType::kF32;
      return true;
    case ffi::DataType::F16:
      *out = DType::kF16;
      return true;
    case ffi::DataType::BF16:
      *out = DType::kBF16;
      return true;
    default:
      return false;
  }
}

// The view attributes of a call (WindowAttrs).
struct ViewAttrs {
  I64Span extent, q_offset, kv_offset;
};

// The problem of a call, after checking dtypes and shapes; `what` names the target in errors.
// `q_tile`/`kv_tile`: the requested tile shapes of the call's direction (empty: unset).
inline ffi::ErrorOr<Problem> decode_problem(const char* what, const ffi::AnyBuffer& q,
                                            const ffi::AnyBuffer& k, const ffi::AnyBuffer& v,
                                            I64Span kernel_size, I64Span stride, I64Span dilation,
                                            I64Span is_causal, float scale, const ViewAttrs& view,
                                            Int64List q_tile = {nullptr, 0},
                                            Int64List kv_tile = {nullptr, 0}, bool fp8 = false) {
  DType dtype;
  if (!dtype_of(q.element_type(), &dtype, fp8) || (fp8 && dtype != DType::kE4M3))
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        std::string(what) +
        (fp8 ? ": q must be float8_e4m3fn" : ": q must be float32, float16 or bfloat16")));
  if (k.element_type() != q.element_type() || v.element_type() != q.element_type())
    return ffi::Unexpected(
        ffi::Error::InvalidArgument(std::string(what) + ": q, k and v must share one dtype"));
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  Problem problem;
  const std::string error = problem_from_shapes(
      as_list(qd), as_list(kd), as_list(vd), dtype,
      WindowAttrs{as_list(kernel_size), as_list(stride), as_list(dilation), as_list(is_causal),
                  scale, q_tile, kv_tile, as_list(view.extent), as_list(view.q_offset),
                  as_list(view.kv_offset)},
      &problem);
  if (!error.empty())
    return ffi::Unexpected(ffi::Error::InvalidArgument(std::string(what) + ": " + error));
  return problem;
}

// Element counts of the results, as the Python side declares them.
inline int64_t rows(const Problem& p) { return p.batch * p.tokens() * p.heads; }

// The problem of a jax_gna_bwd call, after checking every buffer and the deterministic flag.
inline ffi::ErrorOr<Problem> decode_bwd_problem(
    const ffi::AnyBuffer& dout, const ffi::AnyBuffer& q, const ffi::AnyBuffer& k,
    const ffi::AnyBuffer& v, const ffi::AnyBuffer& out, const ffi::Buffer<ffi::F32>& lse,
    const ffi::Buffer<ffi::F32>& dlse, const ffi::AnyBuffer& dq, const ffi::AnyBuffer& dk,
    const ffi::AnyBuffer& dv, I64Span kernel_size, I64Span stride, I64Span dilation,
    I64Span is_causal, float scale, int64_t deterministic, I64Span q_tile, I64Span kv_tile,
    const ViewAttrs& view) {
  auto problem = decode_problem("jax_gna_bwd", q, k, v, kernel_size, stride, dilation, is_causal,
                                scale, view, as_list(q_tile), as_list(kv_tile));
  if (problem.has_error()) return problem;
  if (deterministic != 0 && deterministic != 1)
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "jax_gna_bwd: deterministic = " + std::to_string(deterministic) + "; need 0 or 1"));
  const Problem& p = *problem;
  const int64_t n = rows(p);
  const auto dtype = q.element_type();
  if (dout.element_type() != dtype || out.element_type() != dtype ||
      static_cast<int64_t>(dout.element_count()) != n * p.head_dim_v ||
      static_cast<int64_t>(out.element_count()) != n * p.head_dim_v ||
      static_cast<int64_t>(lse.element_count()) != n ||
      static_cast<int64_t>(dlse.element_count()) != n)
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("jax_gna_bwd: dout/out/lse/dlse have the wrong shape"));
  if (dq.element_type() != dtype || dk.element_type() != dtype || dv.element_type() != dtype ||
      dq.element_count() != q.element_count() || dk.element_count() != k.element_count() ||
      dv.element_count() != v.element_count())
    return ffi::Unexpected(ffi::Error::InvalidArgument("jax_gna_bwd: dq/dk/dv must match q/k/v"));
  return problem;
}

}  // namespace gna::ffi_bindings
