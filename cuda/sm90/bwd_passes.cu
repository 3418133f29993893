// The backward's two element-wise passes around the main kernel (bwd_kernel_ws.cuh):
//   row statistics: per slot (bwd_config.h) lse2 = lse * log2(e) and delta = rowsum(dO * O) -
//     dlse (dS = P (dP - delta) then also carries the lse cotangent: d lse / d s = P), or
//     lse2 = +inf, delta = 0 for rows outside their group; zeroes the dQ semaphores;
//   dQ conversion: dq = scale * the fp32 partial sums (dq_order.h), in the problem's dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "device/bwd_kernel_launch.h"
#include "dq_order.h"
#include "gna/tile_box.h"

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

// The query row of row-statistics slot `slot` (bwd_config.h): its head, its row inside the Q
// tile, and its token (-1 for a row outside its group).
struct SlotRow {
  int head;
  int row;
  int64_t token;
};

__device__ SlotRow slot_row(const BwdParams& p, int64_t slot) {
  const int q1 = p.q_tile[1], q2 = p.q_tile[2];
  int64_t s = slot;
  SlotRow r;
  r.row = int(s % (p.q_tile[0] * q1 * q2));
  s /= p.q_tile[0] * q1 * q2;
  int qt = int(s % p.num_q_tiles);
  s /= p.num_q_tiles;
  int gi = int(s % p.num_groups);
  s /= p.num_groups;
  r.head = int(s % p.heads);
  r.token = s / p.heads;  // the batch entry, then the token
  const int offset[3] = {r.row / (q1 * q2), (r.row / q2) % q1, r.row % q2};
  int tile[3], group[3];
  for (int a = 2; a >= 0; --a) {
    tile[a] = qt % p.q_tiles[a];
    qt /= p.q_tiles[a];
    group[a] = gi % p.dilation[a];
    gi /= p.dilation[a];
  }
  for (int a = 0; a < 3; ++a) {
    const int x = tile[a] * p.q_tile[a] + offset[a];
    if (x >= q_end(bwd_group_axis(p, a, group[a]))) {
      r.token = -1;
      return r;
    }
    r.token = r.token * p.q_extent[a] + group[a] + int64_t(p.dilation[a]) * x;
  }
  return r;
}

template <class T>
__global__ void __launch_bounds__(kBlock) row_stats_kernel(BwdParams p) {
  const int64_t slot = int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (slot >= p.num_slots) return;
  const SlotRow r = slot_row(p, slot);
  if (r.row == 0) p.dq_semaphore[slot / (p.q_tile[0] * p.q_tile[1] * p.q_tile[2])] = 0;
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
      for (int e = 0; e < 8; ++e) sum += to_float(oe[e]) * to_float(de[e]);
    }
    delta = sum - p.dlse[i];
    // A row with no visible key (lse = -inf) has P = 0 everywhere: lse2 = +inf says so.
    lse2 = p.lse[i] == -INFINITY ? INFINITY : p.lse[i] * 1.4426950408889634f;
  }
  p.row_lse2[slot] = lse2;
  p.row_delta[slot] = delta;
}

// One thread per (slot, 8 columns): 8 consecutive columns are 8 consecutive floats of the
// block (dq_order.h: 4 lanes, one pair each).
template <class T>
__global__ void __launch_bounds__(kBlock) dq_convert_kernel(BwdParams p) {
  const int groups = p.head_dim / 8;
  const int64_t index = int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (index >= p.num_slots * groups) return;
  const int64_t slot = index / groups;
  const int col = int(index % groups) * 8;
  const SlotRow r = slot_row(p, slot);
  if (r.token < 0) return;
  const float* block = p.dq_accum + (slot - r.row) * p.head_dim;
  const float4* src = reinterpret_cast<const float4*>(block + dq_offset(r.row, col, p.head_dim));
  const float4 a = src[0], b = src[1];
  const float s = p.scale;
  T out[8] = {T(a.x * s), T(a.y * s), T(a.z * s), T(a.w * s),
              T(b.x * s), T(b.y * s), T(b.z * s), T(b.w * s)};
  *reinterpret_cast<uint4*>(static_cast<T*>(p.dq) + (r.token * p.heads + r.head) * p.head_dim +
                            col) = *reinterpret_cast<const uint4*>(out);
}

unsigned blocks_for(int64_t n) { return unsigned((n + kBlock - 1) / kBlock); }

}  // namespace

cudaError_t launch_bwd_row_stats(DType dtype, const BwdParams& p, cudaStream_t stream) {
  if (p.num_slots == 0) return cudaSuccess;
  if (dtype == DType::kBF16)
    row_stats_kernel<__nv_bfloat16><<<blocks_for(p.num_slots), kBlock, 0, stream>>>(p);
  else
    row_stats_kernel<__half><<<blocks_for(p.num_slots), kBlock, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_bwd_dq_convert(DType dtype, const BwdParams& p, cudaStream_t stream) {
  const int64_t threads = p.num_slots * (p.head_dim / 8);
  if (threads == 0) return cudaSuccess;
  if (dtype == DType::kBF16)
    dq_convert_kernel<__nv_bfloat16><<<blocks_for(threads), kBlock, 0, stream>>>(p);
  else
    dq_convert_kernel<__half><<<blocks_for(threads), kBlock, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace gna::sm90
