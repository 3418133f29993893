// The backward's two element-wise passes around the main kernel (bwd_kernel_ws.cuh):
//   row statistics: per slot (bwd_config.h) lse2 = lse * log2(e) and delta = rowsum(dO * O) -
//     dlse (dS = P (dP - delta) then also carries the lse cotangent: d lse / d s = P), or
//     lse2 = +inf, delta = 0 for rows outside their group; zeroes the dQ semaphores;
//   dQ conversion: dq = dq_accum * scale in the problem's dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "device/bwd_kernel_launch.h"
#include "gna/window.h"

namespace gna::sm90 {
namespace {

constexpr int kBlock = 256;

template <class T>
__device__ float to_float(T x);
template <>
__device__ float to_float(__half x) {
  return __half2float(x);
}
template <>
__device__ float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <class T>
__global__ void __launch_bounds__(kBlock) row_stats_kernel(BwdParams p) {
  const int q0 = p.q_tile[0], q1 = p.q_tile[1], q2 = p.q_tile[2];
  const int64_t slot = int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (slot >= p.num_slots) return;
  const int q_size = q0 * q1 * q2;
  int64_t s = slot;
  const int row = int(s % q_size);
  s /= q_size;
  int qt = int(s % p.num_q_tiles);
  s /= p.num_q_tiles;
  int gi = int(s % p.num_groups);
  s /= p.num_groups;
  const int head = int(s % p.heads);
  const int64_t batch = s / p.heads;
  if (row == 0) p.dq_semaphore[slot / q_size] = 0;

  const int offset[3] = {row / (q1 * q2), (row / q2) % q1, row % q2};
  const int q_tile[3] = {q0, q1, q2};
  int tile[3], group[3];
  for (int a = 2; a >= 0; --a) {
    tile[a] = qt % p.q_tiles[a];
    qt /= p.q_tiles[a];
    group[a] = gi % p.dilation[a];
    gi /= p.dilation[a];
  }
  int64_t token = batch;
  bool valid = true;
  for (int a = 0; a < 3; ++a) {
    const int x = tile[a] * q_tile[a] + offset[a];
    valid &= x < group_length(p.extent[a], p.dilation[a], group[a]);
    token = token * p.extent[a] + group[a] + int64_t(p.dilation[a]) * x;
  }
  float lse2 = INFINITY, delta = 0.f;
  if (valid) {
    const int64_t at = (token * p.heads + head) * p.head_dim;
    const T* o = static_cast<const T*>(p.out) + at;
    const T* d = static_cast<const T*>(p.dout) + at;
    float sum = 0.f;
    for (int c = 0; c < p.head_dim; c += 8) {
      const uint4 ov = *reinterpret_cast<const uint4*>(o + c);
      const uint4 dv = *reinterpret_cast<const uint4*>(d + c);
      const T* oe = reinterpret_cast<const T*>(&ov);
      const T* de = reinterpret_cast<const T*>(&dv);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum += to_float(oe[e]) * to_float(de[e]);
    }
    const int64_t r = token * p.heads + head;
    delta = sum - p.dlse[r];
    // A row with no visible key (lse = -inf) has P = 0 everywhere: lse2 = +inf says so.
    lse2 = p.lse[r] == -INFINITY ? INFINITY : p.lse[r] * 1.4426950408889634f;
  }
  p.row_lse2[slot] = lse2;
  p.row_delta[slot] = delta;
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    dq_convert_kernel(const float* acc, T* dq, int64_t count, float scale) {
  for (int64_t i = (int64_t(blockIdx.x) * kBlock + threadIdx.x) * 4; i < count;
       i += int64_t(gridDim.x) * kBlock * 4) {
    const float4 v = *reinterpret_cast<const float4*>(acc + i);
    T out[4] = {T(v.x * scale), T(v.y * scale), T(v.z * scale), T(v.w * scale)};
    *reinterpret_cast<uint2*>(dq + i) = *reinterpret_cast<const uint2*>(out);
  }
}

unsigned blocks_for(int64_t n) { return unsigned((n + kBlock - 1) / kBlock); }

}  // namespace

cudaError_t launch_bwd_row_stats(DType dtype, const BwdParams& p, cudaStream_t stream) {
  if (p.num_slots == 0) return cudaSuccess;
  const unsigned grid = blocks_for(p.num_slots);
  if (dtype == DType::kBF16)
    row_stats_kernel<__nv_bfloat16><<<grid, kBlock, 0, stream>>>(p);
  else
    row_stats_kernel<__half><<<grid, kBlock, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_bwd_dq_convert(DType dtype, const BwdParams& p, int64_t count,
                                  cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const unsigned grid = unsigned(std::min<int64_t>((count / 4 + kBlock - 1) / kBlock, 1 << 16));
  if (dtype == DType::kBF16)
    dq_convert_kernel<__nv_bfloat16><<<grid, kBlock, 0, stream>>>(
        p.dq_accum, static_cast<__nv_bfloat16*>(p.dq), count, p.scale);
  else
    dq_convert_kernel<__half>
        <<<grid, kBlock, 0, stream>>>(p.dq_accum, static_cast<__half*>(p.dq), count, p.scale);
  return cudaGetLastError();
}

}  // namespace gna::sm90
