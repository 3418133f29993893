// Host helpers the sm90 dispatchers (forward and backward) share: the problem in kernel axes
// and the TMA tensor maps over the user's heads-last tensors. Host code only (no CUTLASS).
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda.h>
#include <cuda_runtime.h>

#include "gna/problem.h"

namespace gna::sm90 {

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled through the runtime's driver entry point (no -lcuda).
inline EncodeTiledFn encode_tiled() {
  static EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult status;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &status) != cudaSuccess ||
        status != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

// The problem in kernel axes: a rank-r problem is left-padded with trivial
// axes, so problem axis i is kernel axis 3 - r + i (fwd_config.h).
struct KernelAxes {
  int extent[3], kernel_size[3], stride[3], dilation[3], causal[3];
};

inline KernelAxes kernel_axes(const Problem& p) {
  KernelAxes k;
  for (int a = 0; a < 3; ++a) {
    const int i = a - (3 - p.rank);
    const bool real = i >= 0;
    k.extent[a] = real ? p.extent[i] : 1;
    k.kernel_size[a] = real ? p.kernel_size[i] : 1;
    k.stride[a] = real ? p.stride[i] : 1;
    k.dilation[a] = real ? p.dilation[i] : 1;
    k.causal[a] = real && p.causal[i] ? 1 : 0;
  }
  return k;
}

inline int elem_bytes(DType t) { return t == DType::kF32 ? 4 : 2; }

// A 5-D tensor map over q/k/v/out [batch, E0, E1, E2, heads, D] as
// {D, heads, E2, E1, batch * E0} (innermost first; the batch folds into the
// first kernel axis). One box = one tile of one head, `chunk` elements of D,
// each spatial axis traversed with element stride = dilation.
inline cudaError_t make_token_tensor_map(CUtensorMap* map, const void* ptr, DType dtype,
                                         int head_dim, int heads, const KernelAxes& ax,
                                         int64_t batch, const int tile[3]) {
  EncodeTiledFn encode = encode_tiled();
  if (encode == nullptr) return cudaErrorNotSupported;
  const uint64_t es = elem_bytes(dtype);
  const int chunk = head_dim >= 64 ? 64 : head_dim;
  const cuuint64_t dims[5] = {cuuint64_t(head_dim), cuuint64_t(heads), cuuint64_t(ax.extent[2]),
                              cuuint64_t(ax.extent[1]), cuuint64_t(batch * ax.extent[0])};
  const cuuint64_t strides[4] = {es * head_dim, es * head_dim * heads,
                                 es * head_dim * heads * ax.extent[2],
                                 es * head_dim * heads * ax.extent[2] * ax.extent[1]};
  const cuuint32_t box[5] = {cuuint32_t(chunk), 1, cuuint32_t(tile[2] * ax.dilation[2]),
                             cuuint32_t(tile[1] * ax.dilation[1]),
                             cuuint32_t(tile[0] * ax.dilation[0])};
  const cuuint32_t elem_strides[5] = {1, 1, cuuint32_t(ax.dilation[2]), cuuint32_t(ax.dilation[1]),
                                      cuuint32_t(ax.dilation[0])};
  const CUresult r = encode(
      map,
      dtype == DType::kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 5,
      const_cast<void*>(ptr), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      chunk * es == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

// A TMA box spans tile * dilation positions per axis and may not exceed 256.
inline bool boxes_fit(const int tile[3], const KernelAxes& ax) {
  for (int a = 0; a < 3; ++a)
    if (tile[a] * ax.dilation[a] > 256) return false;
  return true;
}

// The checks of a problem's shape every sm90 kernel makes: nullptr, or why not.
inline const char* shape_can_implement(const Problem& p) {
  if (p.rank < 1 || p.rank > 3) return "the sm90 kernels take ranks 1, 2 and 3 only";
  if (p.heads < 1 || p.kv_heads < 1 || p.heads % p.kv_heads != 0)
    return "heads must be a positive multiple of kv_heads";
  if (!std::isfinite(p.scale)) return "the softmax scale must be finite";
  if (p.batch < 1) return "batch must be >= 1";
  const KernelAxes ax = kernel_axes(p);
  int64_t tokens = p.batch;
  for (int a = 0; a < 3; ++a) tokens *= ax.extent[a];
  if (tokens * p.heads >= (int64_t(1) << 31) || p.batch * ax.extent[0] >= (int64_t(1) << 31))
    return "the sm90 kernels need batch * tokens * heads < 2^31";
  return nullptr;
}

// SMs of the current device, read once per device ordinal.
inline cudaError_t multiprocessor_count(int* sms) {
  constexpr int kMaxDevices = 64;
  static int cached[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  if (cached[device] == 0) {
    err = cudaDeviceGetAttribute(&cached[device], cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;
  }
  *sms = cached[device];
  return cudaSuccess;
}

}  // namespace gna::sm90
