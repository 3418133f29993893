// `cpu` handlers of jax_gna_fwd / jax_gna_bwd: decode, check, run the CPU kernels.
#include "../cpu/attention.h"
#include "bindings.h"
#include "handlers.h"

namespace {

namespace ffi = xla::ffi;
using gna::ffi_bindings::I64Span;

ffi::Error cpu_fwd(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                   ffi::Result<ffi::Buffer<ffi::U8>> /*workspace*/, I64Span kernel_size,
                   I64Span stride, I64Span dilation, I64Span is_causal, float scale, I64Span q_tile,
                   I64Span kv_tile, I64Span view_extent, I64Span view_q_offset,
                   I64Span view_kv_offset) {
  // The tile request is checked like every attribute, and otherwise unused: the CPU kernel has
  // no tile configurations.
  auto problem = gna::ffi_bindings::decode_problem(
      "jax_gna_fwd", q, k, v, kernel_size, stride, dilation, is_causal, scale,
      {view_extent, view_q_offset, view_kv_offset}, gna::ffi_bindings::as_list(q_tile),
      gna::ffi_bindings::as_list(kv_tile));
  if (problem.has_error()) return problem.error();
  const gna::Problem& p = *problem;
  const int64_t rows = gna::ffi_bindings::rows(p);
  if (out->element_type() != q.element_type() ||
      static_cast<int64_t>(out->element_count()) != rows * p.head_dim_v ||
      static_cast<int64_t>(lse->element_count()) != rows)
    return ffi::Error::InvalidArgument("jax_gna_fwd: out/lse have the wrong shape or dtype");
  gna::cpu::forward(p, q.untyped_data(), k.untyped_data(), v.untyped_data(), out->untyped_data(),
                    lse->typed_data());
  return ffi::Error::Success();
}

ffi::Error cpu_bwd(ffi::AnyBuffer dout, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dlse,
                   ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                   ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::Buffer<ffi::U8>> /*workspace*/,
                   I64Span kernel_size, I64Span stride, I64Span dilation, I64Span is_causal,
                   float scale, int64_t deterministic /*checked only: the CPU kernel always is*/,
                   I64Span q_tile, I64Span kv_tile /*checked only: no tiles on the CPU*/,
                   I64Span view_extent, I64Span view_q_offset, I64Span view_kv_offset) {
  auto problem = gna::ffi_bindings::decode_bwd_problem(
      dout, q, k, v, out, lse, dlse, *dq, *dk, *dv, kernel_size, stride, dilation, is_causal, scale,
      deterministic, q_tile, kv_tile, {view_extent, view_q_offset, view_kv_offset});
  if (problem.has_error()) return problem.error();
  const gna::Problem& p = *problem;
  gna::cpu::backward(p, dout.untyped_data(), q.untyped_data(), k.untyped_data(), v.untyped_data(),
                     out.untyped_data(), lse.typed_data(), dlse.typed_data(), dq->untyped_data(),
                     dk->untyped_data(), dv->untyped_data());
  return ffi::Error::Success();
}

}  // namespace

using gna::ffi_bindings::kBwdTarget;
using gna::ffi_bindings::kFwdTarget;
using gna::ffi_bindings::no_exceptions;

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxGnaFwdCpu, (no_exceptions<kFwdTarget, cpu_fwd>),
                              gna::ffi_bindings::bind_fwd(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxGnaBwdCpu, (no_exceptions<kBwdTarget, cpu_bwd>),
                              gna::ffi_bindings::bind_bwd(ffi::Ffi::Bind()));
