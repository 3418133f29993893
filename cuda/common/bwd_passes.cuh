// The backward's two element-wise passes around the main kernel, shared by the architectures
// (cuda/sm90/bwd_passes.cu, cuda/sm100/bwd_passes.cu each include this once and define
// launch_bwd_row_stats and launch_bwd_dq_convert of kernel_launchers.h with these):
//   row statistics: per slot (bwd_params.h) lse2 = lse * log2(e) and delta = rowsum(dO * O) -
//     dlse (dS = P (dP - delta) then also carries the lse cotangent: d lse / d s = P), or
//     lse2 = +inf, delta = 0 for rows outside their group; zeroes the dQ semaphores;
//   dQ conversion: dq = scale * the fp32 partial sums (the accumulator's copies summed in
//     order), in the problem's dtype, read from a Q tile's block in the order of
//     `DqOrder::offset(row, col, head_dim)` (the main kernel's).
// The kernels have internal linkage: each family's TU, compiled for its own arch, keeps its
// own copy (a shared template would register one host stub for two fatbins).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "bwd_params.h"
#include "gna/problem.h"
#include "grid_dependency.cuh"
#include "kernel_launch.h"

namespace gna {
namespace {

constexpr int kBwdPassBlock = 256;

template <class T>
__device__ float bwd_to_float(T x);
template <>
__device__ float bwd_to_float(__half x) {
  return __half2float(x);
}
template <>
__device__ float bwd_to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <class T>
__global__ void __launch_bounds__(kBwdPassBlock) bwd_row_stats_kernel(BwdParams p) {
  enter_after_prior_grids();  // PDL (grid_dependency.cuh)
  const int64_t slot = int64_t(blockIdx.x) * kBwdPassBlock + threadIdx.x;
  if (slot >= p.num_slots) return;
  const BwdSlotRow r = bwd_slot_row(p, slot);
  if (r.row == 0) {
    const int q_size = p.q_tile[0] * p.q_tile[1] * p.q_tile[2];
    for (int c = 0; c < p.dq_buffers; ++c) *bwd_dq_semaphore(p, c, slot, q_size) = 0;
  }
  float lse2 = INFINITY, delta = 0.f;
  if (r.token >= 0) {
    const int64_t i = r.token * p.heads + r.head;
    const T* o = static_cast<const T*>(p.out) + i * p.head_dim;
    const T* d = static_cast<const T*>(p.dout) + i * p.head_dim;
    float sum = 0.f;
    for (int c = 0; c < p.head_dim; c += 8) {
      const uint4 ov = *reinterpret_cast<const uint4*>(o + c);
      const uint4 dv = *reinterpret_cast<const uint4*>(d + c);
      const T* oe = reinterpret_cast<const T*>(&ov);
      const T* de = reinterpret_cast<const T*>(&dv);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum += bwd_to_float(oe[e]) * bwd_to_float(de[e]);
    }
    delta = sum - p.dlse[i];
    // A row with no visible key (lse = -inf) has P = 0 everywhere: lse2 = +inf says so.
    lse2 = p.lse[i] == -INFINITY ? INFINITY : p.lse[i] * 1.4426950408889634f;
  }
  p.row_lse2[slot] = lse2;
  p.row_delta[slot] = delta;
}

// One thread per (slot, 8 columns); DqOrder keeps 8 consecutive columns (from a multiple of 8)
// in 8 consecutive floats.
template <class T, class DqOrder>
__global__ void __launch_bounds__(kBwdPassBlock) bwd_dq_convert_kernel(BwdParams p) {
  enter_after_prior_grids();  // PDL (grid_dependency.cuh)
  const int groups = p.head_dim / 8;
  const int64_t index = int64_t(blockIdx.x) * kBwdPassBlock + threadIdx.x;
  if (index >= p.num_slots * groups) return;
  const int64_t slot = index / groups;
  const int col = int(index % groups) * 8;
  const BwdSlotRow r = bwd_slot_row(p, slot);
  if (r.token < 0) return;
  const float* block = p.dq_accum + (slot - r.row) * p.head_dim;
  const float4* src =
      reinterpret_cast<const float4*>(block + DqOrder::offset(r.row, col, p.head_dim));
  float4 a = src[0], b = src[1];
  for (int c = 1; c < p.dq_buffers; ++c) {  // in copy order: the same sum every run
    const float4* more = src + c * bwd_dq_stride(p) / 4;
    const float4 a2 = more[0], b2 = more[1];
    a = make_float4(a.x + a2.x, a.y + a2.y, a.z + a2.z, a.w + a2.w);
    b = make_float4(b.x + b2.x, b.y + b2.y, b.z + b2.z, b.w + b2.w);
  }
  const float s = p.scale;
  T out[8] = {T(a.x * s), T(a.y * s), T(a.z * s), T(a.w * s),
              T(b.x * s), T(b.y * s), T(b.z * s), T(b.w * s)};
  *reinterpret_cast<uint4*>(static_cast<T*>(p.dq) + (r.token * p.heads + r.head) * p.head_dim +
                            col) = *reinterpret_cast<const uint4*>(out);
}

inline unsigned bwd_pass_blocks(int64_t n) {
  return unsigned((n + kBwdPassBlock - 1) / kBwdPassBlock);
}

// Launches `kernel` on `blocks` blocks and returns that launch's own status (a <<<>>> launch
// checked with cudaGetLastError would also report an earlier, unrelated error as its own).
template <class... Params>
cudaError_t launch_bwd_pass(void (*kernel)(Params...), unsigned blocks, const BwdParams& p,
                            cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(kBwdPassBlock);
  config.stream = stream;
  cudaLaunchAttribute attrs[1];
  set_launch_attributes(config, attrs);
  return cudaLaunchKernelEx(&config, kernel, p);
}

// The pre-pass: row statistics of every slot and zeroed dQ semaphores.
inline cudaError_t launch_bwd_row_stats_pass(DType dtype, const BwdParams& p, cudaStream_t stream) {
  if (p.num_slots == 0) return cudaSuccess;
  const unsigned blocks = bwd_pass_blocks(p.num_slots);
  if (dtype == DType::kBF16)
    return launch_bwd_pass(bwd_row_stats_kernel<__nv_bfloat16>, blocks, p, stream);
  return launch_bwd_pass(bwd_row_stats_kernel<__half>, blocks, p, stream);
}

// dq = scale * the fp32 partial sums of every slot, in the problem's dtype.
template <class DqOrder>
cudaError_t launch_bwd_dq_convert_pass(DType dtype, const BwdParams& p, cudaStream_t stream) {
  const int64_t threads = p.num_slots * (p.head_dim / 8);
  if (threads == 0) return cudaSuccess;
  const unsigned blocks = bwd_pass_blocks(threads);
  if (dtype == DType::kBF16)
    return launch_bwd_pass(bwd_dq_convert_kernel<__nv_bfloat16, DqOrder>, blocks, p, stream);
  return launch_bwd_pass(bwd_dq_convert_kernel<__half, DqOrder>, blocks, p, stream);
}

}  // namespace
}  // namespace gna
