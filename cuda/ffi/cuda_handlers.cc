// `CUDA` handlers of jax_gna_fwd / jax_gna_bwd. Host code only (compiled by the C++ compiler):
// decode, pick the kernel family for the device's compute capability, launch on XLA's stream.
// They never synchronise, allocate or read device memory on the host, so they are marked
// command-buffer (CUDA graph) compatible.
#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <unordered_map>

#include "bindings.h"
#include "handlers.h"

#include "../common/launch_api.h"
#ifdef JAX_GNA_HAS_SM90
#include "../sm90/arch.h"
#endif
#ifdef JAX_GNA_HAS_SM100
#include "../sm100/arch.h"
#endif

namespace {

namespace ffi = xla::ffi;
using gna::ffi_bindings::I64Span;

struct ComputeCapability {
  int major = -1;
  int minor = 0;
};

// Per device, cached: attribute queries are cheap but not free, and the answer never changes.
ComputeCapability compute_capability(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, ComputeCapability> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  ComputeCapability cc;
  if (cudaDeviceGetAttribute(&cc.major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&cc.minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so it is not reported by a later call
    return ComputeCapability{};
  }
  cache.emplace(device, cc);
  return cc;
}

// Whether the kernels of `Arch` (its traits, e.g. gna::sm90::Arch) run on a device of compute
// capability (major, minor).
template <class Arch>
bool runs_on(int major, int minor) {
  return major == Arch::kMajor && minor == Arch::kMinor;
}

std::string cc_name(ComputeCapability cc) {
  return std::to_string(cc.major) + "." + std::to_string(cc.minor);
}

// The compute capability of `device` once the handler `what` may run `p` there: the kernels
// take it (`can_implement`) and the workspace has the `needed` bytes. Else the error.
ffi::ErrorOr<ComputeCapability> runnable(const char* what, int32_t device, const gna::Problem& p,
                                         const char* (*can_implement)(const gna::Problem&, int,
                                                                      int),
                                         size_t workspace, size_t needed) {
  const ComputeCapability cc = compute_capability(device);
  if (cc.major < 0)
    return ffi::Unexpected(ffi::Error::Internal(std::string(what) +
                                                ": cannot query the compute capability of device " +
                                                std::to_string(device)));
  if (const char* reason = can_implement(p, cc.major, cc.minor))
    return ffi::Unexpected(ffi::Error(
        ffi::ErrorCode::kUnimplemented,
        std::string(what) + " on a GPU of compute capability " + cc_name(cc) + ": " + reason));
  if (workspace < needed)
    return ffi::Unexpected(
        ffi::Error::InvalidArgument(std::string(what) + ": workspace too small"));
  return cc;
}

// A handler's result from its launch status: a host-side refusal with its reason (`error`,
// from the launcher: a tensor map the driver refused, a misaligned buffer) is an invalid
// argument; anything else is the launch's own failure.
ffi::Error launched(const char* what, cudaError_t status, const std::string& error) {
  if (status == cudaSuccess) return ffi::Error::Success();
  if (!error.empty()) return ffi::Error::InvalidArgument(std::string(what) + ": " + error);
  return ffi::Error::Internal(std::string(what) +
                              ": kernel launch failed: " + cudaGetErrorString(status));
}

// A forward call (jax_gna_fwd, or with `descale` jax_gna_fwd_fp8: float8_e4m3fn inputs, out in
// bfloat16): decode, check out/lse, launch the family of the device's compute capability.
ffi::Error run_fwd(const char* what, cudaStream_t stream, int32_t device, const ffi::AnyBuffer& q,
                   const ffi::AnyBuffer& k, const ffi::AnyBuffer& v, const float* descale,
                   int64_t descale_count, ffi::AnyBuffer& out, ffi::Buffer<ffi::F32>& lse,
                   ffi::Buffer<ffi::U8>& workspace, I64Span kernel_size, I64Span stride,
                   I64Span dilation, I64Span is_causal, float scale, I64Span q_tile,
                   I64Span kv_tile, const gna::ffi_bindings::ViewAttrs& view) {
  const bool fp8 = descale != nullptr;
  auto problem = gna::ffi_bindings::decode_problem(
      what, q, k, v, kernel_size, stride, dilation, is_causal, scale, view,
      gna::ffi_bindings::as_list(q_tile), gna::ffi_bindings::as_list(kv_tile), fp8);
  if (problem.has_error()) return problem.error();
  const gna::Problem& p = *problem;
  const int64_t rows = gna::ffi_bindings::rows(p);
  const auto out_type = fp8 ? ffi::DataType::BF16 : q.element_type();
  if (out.element_type() != out_type ||
      static_cast<int64_t>(out.element_count()) != rows * p.head_dim_v ||
      static_cast<int64_t>(lse.element_count()) != rows)
    return ffi::Error::InvalidArgument(std::string(what) +
                                       ": out/lse have the wrong shape or dtype");
  if (fp8 && descale_count != 3 * int64_t(p.heads))
    return ffi::Error::InvalidArgument(std::string(what) +
                                       ": descale must hold 3 x heads float32 values");
  const auto cc = runnable(what, device, p, gna::cuda_ffi::fwd_can_implement,
                           workspace.size_bytes(), gna::cuda_ffi::fwd_workspace_bytes(p));
  if (cc.has_error()) return cc.error();
  cudaError_t status = cudaErrorNotSupported;
  std::string error;
#ifdef JAX_GNA_HAS_SM90
  if (runs_on<gna::sm90::Arch>(cc->major, cc->minor))
    status = gna::fwd_launch<gna::sm90::Arch>(
        p, q.untyped_data(), k.untyped_data(), v.untyped_data(), out.untyped_data(),
        lse.typed_data(), workspace.untyped_data(), stream, &error, descale);
#endif
#ifdef JAX_GNA_HAS_SM100
  if (runs_on<gna::sm100::Arch>(cc->major, cc->minor))
    status = gna::fwd_launch<gna::sm100::Arch>(
        p, q.untyped_data(), k.untyped_data(), v.untyped_data(), out.untyped_data(),
        lse.typed_data(), workspace.untyped_data(), stream, &error, descale);
#endif
  return launched(what, status, error);
}

ffi::Error cuda_fwd(cudaStream_t stream, int32_t device, ffi::AnyBuffer q, ffi::AnyBuffer k,
                    ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> out,
                    ffi::Result<ffi::Buffer<ffi::F32>> lse,
                    ffi::Result<ffi::Buffer<ffi::U8>> workspace, I64Span kernel_size,
                    I64Span stride, I64Span dilation, I64Span is_causal, float scale,
                    I64Span q_tile, I64Span kv_tile, I64Span view_extent, I64Span view_q_offset,
                    I64Span view_kv_offset) {
  return run_fwd("jax_gna_fwd", stream, device, q, k, v, nullptr, 0, *out, *lse, *workspace,
                 kernel_size, stride, dilation, is_causal, scale, q_tile, kv_tile,
                 {view_extent, view_q_offset, view_kv_offset});
}

ffi::Error cuda_fwd_fp8(cudaStream_t stream, int32_t device, ffi::AnyBuffer q, ffi::AnyBuffer k,
                        ffi::AnyBuffer v, ffi::Buffer<ffi::F32> descale,
                        ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                        ffi::Result<ffi::Buffer<ffi::U8>> workspace, I64Span kernel_size,
                        I64Span stride, I64Span dilation, I64Span is_causal, float scale,
                        I64Span q_tile, I64Span kv_tile, I64Span view_extent, I64Span view_q_offset,
                        I64Span view_kv_offset) {
  return run_fwd("jax_gna_fwd_fp8", stream, device, q, k, v, descale.typed_data(),
                 static_cast<int64_t>(descale.element_count()), *out, *lse, *workspace, kernel_size,
                 stride, dilation, is_causal, scale, q_tile, kv_tile,
                 {view_extent, view_q_offset, view_kv_offset});
}

ffi::Error cuda_bwd(cudaStream_t stream, int32_t device, ffi::AnyBuffer dout, ffi::AnyBuffer q,
                    ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                    ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dlse,
                    ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                    ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::Buffer<ffi::U8>> workspace,
                    I64Span kernel_size, I64Span stride, I64Span dilation, I64Span is_causal,
                    float scale, int64_t deterministic, I64Span q_tile, I64Span kv_tile,
                    I64Span view_extent, I64Span view_q_offset, I64Span view_kv_offset) {
  auto problem = gna::ffi_bindings::decode_bwd_problem(
      dout, q, k, v, out, lse, dlse, *dq, *dk, *dv, kernel_size, stride, dilation, is_causal, scale,
      deterministic, q_tile, kv_tile, {view_extent, view_q_offset, view_kv_offset});
  if (problem.has_error()) return problem.error();
  const gna::Problem& p = *problem;
  const auto cc =
      runnable("jax_gna_bwd", device, p, gna::cuda_ffi::bwd_can_implement, workspace->size_bytes(),
               gna::cuda_ffi::bwd_workspace_bytes(p, deterministic != 0));
  if (cc.has_error()) return cc.error();
  cudaError_t status = cudaErrorNotSupported;
  std::string error;
#ifdef JAX_GNA_HAS_SM90
  if (runs_on<gna::sm90::Arch>(cc->major, cc->minor))
    status = gna::bwd_launch<gna::sm90::Arch>(
        p, dout.untyped_data(), q.untyped_data(), k.untyped_data(), v.untyped_data(),
        out.untyped_data(), lse.typed_data(), dlse.typed_data(), dq->untyped_data(),
        dk->untyped_data(), dv->untyped_data(), workspace->untyped_data(), deterministic != 0,
        stream, &error);
#endif
#ifdef JAX_GNA_HAS_SM100
  if (runs_on<gna::sm100::Arch>(cc->major, cc->minor))
    status = gna::bwd_launch<gna::sm100::Arch>(
        p, dout.untyped_data(), q.untyped_data(), k.untyped_data(), v.untyped_data(),
        out.untyped_data(), lse.typed_data(), dlse.typed_data(), dq->untyped_data(),
        dk->untyped_data(), dv->untyped_data(), workspace->untyped_data(), deterministic != 0,
        stream, &error);
#endif
  (void)deterministic;
  return launched("jax_gna_bwd", status, error);
}

}  // namespace

namespace gna::cuda_ffi {

const char* fwd_can_implement(const Problem& problem, int major, int minor) {
#ifdef JAX_GNA_HAS_SM90
  if (runs_on<gna::sm90::Arch>(major, minor))
    return gna::fwd_can_implement<gna::sm90::Arch>(problem);
#endif
#ifdef JAX_GNA_HAS_SM100
  if (runs_on<gna::sm100::Arch>(major, minor))
    return gna::fwd_can_implement<gna::sm100::Arch>(problem);
#endif
#if defined(JAX_GNA_HAS_SM90)
  if (major < 0) return gna::fwd_can_implement<gna::sm90::Arch>(problem);
#elif defined(JAX_GNA_HAS_SM100)
  if (major < 0) return gna::fwd_can_implement<gna::sm100::Arch>(problem);
#endif
  (void)problem, (void)minor;
  if (major < 0) return "this build of jax_gna has no CUDA forward kernels";
  return "this build of jax_gna has no kernels for this GPU (built archs: " JAX_GNA_CUDA_ARCHS
         "; sm_90a kernels run on compute capability 9.0 only, sm_100a kernels on 10.0 only)";
}

const char* bwd_can_implement(const Problem& problem, int major, int minor) {
#ifdef JAX_GNA_HAS_SM90
  if (major < 0 || runs_on<gna::sm90::Arch>(major, minor))
    return gna::bwd_can_implement<gna::sm90::Arch>(problem);
#endif
#ifdef JAX_GNA_HAS_SM100
  if (major < 0 || runs_on<gna::sm100::Arch>(major, minor))
    return gna::bwd_can_implement<gna::sm100::Arch>(problem);
#endif
  (void)problem, (void)minor;
  if (major < 0) return "this build of jax_gna has no CUDA backward kernels";
  return "this build of jax_gna has no backward kernels for this GPU (built "
         "archs: " JAX_GNA_CUDA_ARCHS
         "; sm_90a kernels run on compute capability 9.0 only, "
         "sm_100a kernels on 10.0 only)";
}

bool has_backward() {
#if defined(JAX_GNA_HAS_SM90) || defined(JAX_GNA_HAS_SM100)
  return true;
#else
  return false;
#endif
}

// The larger of the built families' needs, as for the backward (below).
size_t fwd_workspace_bytes(const Problem& problem) {
  size_t bytes = 0;
#ifdef JAX_GNA_HAS_SM90
  bytes = gna::fwd_workspace_bytes<gna::sm90::Arch>(problem);
#endif
#ifdef JAX_GNA_HAS_SM100
  const size_t sm100 = gna::fwd_workspace_bytes<gna::sm100::Arch>(problem);
  bytes = sm100 > bytes ? sm100 : bytes;
#endif
  (void)problem;
  return bytes;
}

// The larger of the built families' needs: the workspace is sized before the device is known.
size_t bwd_workspace_bytes(const Problem& problem, bool deterministic) {
  size_t bytes = 0;
#ifdef JAX_GNA_HAS_SM90
  bytes = gna::bwd_workspace_bytes<gna::sm90::Arch>(problem, deterministic);
#endif
#ifdef JAX_GNA_HAS_SM100
  const size_t sm100 = gna::bwd_workspace_bytes<gna::sm100::Arch>(problem, deterministic);
  bytes = sm100 > bytes ? sm100 : bytes;
#endif
  (void)problem;
  (void)deterministic;
  return bytes;
}

// Every (rank, head dim, configuration) of a family's table, in problem axes.
template <class HeadDims, class Table>
void append_tile_configs(const HeadDims& head_dims, Table table, std::vector<FwdTileShapes>* all) {
  for (int rank = 1; rank <= 3; ++rank) {
    for (int head_dim : head_dims) {
      const auto configs = table(rank, head_dim);
      for (int c = 0; c < configs.count; ++c) {
        const auto& t = configs.config[c];  // kernel axes: the last `rank`
        all->push_back({rank, head_dim, std::vector<int>(t.q + 3 - rank, t.q + 3),
                        std::vector<int>(t.kv + 3 - rank, t.kv + 3)});
      }
    }
  }
}

std::vector<FwdTileShapes> fwd_tile_configs() {
  std::vector<FwdTileShapes> all;
  // The sm90 table where sm90 is built (sm100's shapes equal it for the head dims both take).
#if defined(JAX_GNA_HAS_SM90)
  append_tile_configs(gna::sm90::kFwdHeadDims, gna::sm90::fwd_tile_configs, &all);
#elif defined(JAX_GNA_HAS_SM100)
  append_tile_configs(gna::sm100::kFwdHeadDims, gna::sm100::fwd_tile_configs, &all);
#endif
  return all;
}

}  // namespace gna::cuda_ffi

using gna::ffi_bindings::kBwdTarget;
using gna::ffi_bindings::kFwdFp8Target;
using gna::ffi_bindings::kFwdTarget;
using gna::ffi_bindings::no_exceptions;

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxGnaFwdCuda, (no_exceptions<kFwdTarget, cuda_fwd>),
    gna::ffi_bindings::bind_fwd(
        ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Ctx<ffi::DeviceOrdinal>()),
    {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxGnaFwdFp8Cuda, (no_exceptions<kFwdFp8Target, cuda_fwd_fp8>),
    gna::ffi_bindings::bind_fwd_fp8(
        ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Ctx<ffi::DeviceOrdinal>()),
    {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxGnaBwdCuda, (no_exceptions<kBwdTarget, cuda_bwd>),
    gna::ffi_bindings::bind_bwd(
        ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Ctx<ffi::DeviceOrdinal>()),
    {ffi::Traits::kCmdBufferCompatible});
