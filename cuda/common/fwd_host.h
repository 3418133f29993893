// Host side of the fused forward that every architecture's dispatcher (cuda/sm90, cuda/sm100)
// shares: TMA tensor maps straight over the user's heads-last layout and the choice of a
// compiled tile configuration (the problem in kernel axes and the launch parameters are in
// fwd_params.h, plain C++). Host code
// (CUDA runtime and driver types, no CUTLASS); every function is inline, so each dispatcher
// TU gets its own copy.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda.h>
#include <cuda_runtime.h>

#include "fwd_params.h"
#include "gna/problem.h"
#include "tensor_maps.h"

namespace gna::fwd_host {

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

inline int elem_bytes(DType t) { return t == DType::kF32 ? 4 : t == DType::kE4M3 ? 1 : 2; }

// Head-dim elements per TMA box of a tile load: 128 bytes (the 128-byte swizzle), or the whole
// head dim when it is shorter (64 bytes: the 64-byte swizzle). The kernels' kChunk agrees.
inline int load_chunk(DType t, int head_dim) {
  const int chunk = 128 / elem_bytes(t);
  return head_dim < chunk ? head_dim : chunk;
}

inline CUtensorMapDataType map_data_type(DType t) {
  switch (t) {
    case DType::kBF16:
      return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    case DType::kE4M3:
      return CU_TENSOR_MAP_DATA_TYPE_UINT8;  // the TMA unit only moves the bytes
    default:
      return CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  }
}

// "dims {..} strides {..} box {..} element strides {..}" of a map, innermost first, for errors.
inline std::string map_dims_text(const MapDim* d) {
  std::string dims, strides, box, steps;
  for (int i = 0; i < kTmaMaxDims; ++i) {
    const char* sep = i ? "," : "";
    dims += sep + std::to_string(d[i].extent);
    if (i) strides += (i > 1 ? "," : "") + std::to_string(d[i].stride);
    box += sep + std::to_string(d[i].box);
    steps += sep + std::to_string(d[i].elem_step);
  }
  return "dims {" + dims + "} byte strides {" + strides + "} box {" + box + "} element strides {" +
         steps + "}";
}

// Whether `ptr` (tensor `name`) is `bytes`-aligned; *error says why not.
inline bool aligned(const void* ptr, size_t bytes, const char* name, std::string* error) {
  if (reinterpret_cast<uintptr_t>(ptr) % bytes == 0) return true;
  *error = std::string(name) + " must be " + std::to_string(bytes) + "-byte aligned for the " +
           "CUDA kernels";
  return false;
}

// The two tensor maps (tensor_maps.h) of tensor `name` [batch, E0, E1, E2, heads, head_dim] at
// `ptr`, `extent` its positions per kernel axis, loaded by `loads` (tile_loads.h) in chunks of
// 128 bytes of head dim (128-byte swizzle), or the whole head dim below (64-byte swizzle).
// On failure *error names the tensor and what the TMA unit was asked for.
inline cudaError_t encode_tensor_maps(TensorMapPair* pair, const char* name, const void* ptr,
                                      DType dtype, int heads, int head_dim, const TileLoads& loads,
                                      const int dilation[3], const int extent[3], int64_t batch,
                                      std::string* error) {
  EncodeTiledFn encode = encode_tiled();
  if (encode == nullptr) {
    *error = "the CUDA driver has no cuTensorMapEncodeTiled (a CUDA 12+ driver is needed)";
    return cudaErrorNotSupported;
  }
  if (!aligned(ptr, 16, name, error)) return cudaErrorInvalidValue;
  const int es = elem_bytes(dtype);
  const int chunk = load_chunk(dtype, head_dim);
  for (int m = 0; m < 2; ++m) {
    MapDim d[kTmaMaxDims];
    tile_map_dims(loads, m, dilation, extent, batch, heads, head_dim, chunk, es, d);
    cuuint64_t dims[kTmaMaxDims], strides[kTmaMaxDims - 1];
    cuuint32_t box[kTmaMaxDims], steps[kTmaMaxDims];
    for (int i = 0; i < kTmaMaxDims; ++i) {
      dims[i] = d[i].extent;
      if (i) strides[i - 1] = d[i].stride;
      box[i] = d[i].box;
      steps[i] = d[i].elem_step;
    }
    const CUresult r =
        encode(&pair->map[m], map_data_type(dtype), kTmaMaxDims, const_cast<void*>(ptr), dims,
               strides, box, steps, CU_TENSOR_MAP_INTERLEAVE_NONE,
               chunk * es == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
      *error = std::string("cuTensorMapEncodeTiled refused map ") + std::to_string(m) + " of " +
               name + " (CUresult " + std::to_string(int(r)) + "): " + map_dims_text(d);
      return cudaErrorInvalidValue;
    }
  }
  return cudaSuccess;
}

// The launch parameters and tensor maps of a forward of `p` with `tiles` (a configuration the
// architecture's can_implement picked), after the host-side checks every launcher makes: the
// items fit one launch, out and lse are aligned, the driver takes the maps. On failure the
// reason is in *error and nothing was enqueued.
inline cudaError_t prepare_fwd_launch(const Problem& p, const FwdTileConfig& tiles, const void* q,
                                      const void* k, const void* v, void* out, float* lse,
                                      FwdParams* fp, FwdMaps* maps, std::string* error) {
  const KernelAxes ax = kernel_axes(p);
  *fp = fwd_params(p, ax, tiles, out, lse);
  fp->q = q;
  fp->k = k;
  fp->v = v;
  if (fp->num_items == 0) {
    *error = "too many work items for one launch (2^31)";
    return cudaErrorInvalidValue;
  }
  if (!aligned(out, 16, "out", error) || !aligned(lse, 4, "lse", error))
    return cudaErrorInvalidValue;
  cudaError_t err;
  if ((err = encode_tensor_maps(&maps->q, "q", q, p.dtype, p.heads, p.head_dim, fp->q_loads,
                                ax.dilation, ax.q_extent, p.batch, error)) ||
      (err = encode_tensor_maps(&maps->k, "k", k, p.dtype, p.kv_heads, p.head_dim, fp->kv_loads,
                                ax.dilation, ax.kv_extent, p.batch, error)))
    return err;
  return encode_tensor_maps(&maps->v, "v", v, p.dtype, p.kv_heads, p.head_dim, fp->kv_loads,
                            ax.dilation, ax.kv_extent, p.batch, error);
}

// SMs of the current device, read once per device ordinal. Handlers may run on several host
// threads at once: the cache is atomic (two first reads of a device store the same count).
inline cudaError_t multiprocessor_count(int* sms) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices];  // 0: not read yet (static: zero-initialised)
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  int count = cached[device].load(std::memory_order_relaxed);
  if (count == 0) {
    err = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;
    cached[device].store(count, std::memory_order_relaxed);
  }
  *sms = count;
  return cudaSuccess;
}

// Index of the configuration in `table` with p's requested tiles (problem axes, padded to
// kernel axes like the problem), or -1.
inline int requested_config(const Problem& p, const FwdTileConfigs& table) {
  for (int c = 0; c < table.count; ++c) {
    bool same = true;
    for (int a = 0; a < 3; ++a) {
      const int i = a - (3 - p.rank);
      same = same && table.config[c].q[a] == (i >= 0 ? p.q_tile[i] : 1) &&
             table.config[c].kv[a] == (i >= 0 ? p.kv_tile[i] : 1);
    }
    if (same) return c;
  }
  return -1;
}

inline std::string shape_text(const int* tile, int rank) {
  std::string s = "(";
  for (int i = 0; i < rank; ++i) s += (i ? "," : "") + std::to_string(tile[3 - rank + i]);
  return s + ")";
}

// Why a tile request is refused, naming the compiled configurations of (rank, head dim) in
// `table` of architecture `arch` ("sm90"; `direction`: "" or "backward "). The caller keeps the
// string (one per rank and head dim, built once) so that it can hand out a `const char*` that lives
// as long as the process.
inline std::string not_compiled_text(const char* arch, int rank, int head_dim,
                                     const FwdTileConfigs& table, const char* direction = "") {
  std::string s = std::string("these tile shapes are not a compiled ") + arch + " " + direction +
                  "configuration; rank " + std::to_string(rank) + ", head dim " +
                  std::to_string(head_dim) + " has ";
  for (int c = 0; c < table.count; ++c)
    s += (c ? ", " : "") + std::string("Q") + shape_text(table.config[c].q, rank) + "/KV" +
         shape_text(table.config[c].kv, rank) + (c ? "" : " (the default)");
  return s;
}

// One direction's tile tables, as an architecture's traits hold them: (rank, head dim) -> its
// configurations (Arch::fwd_tile_configs, bwd_tile_configs); whether the build holds the
// kernel (dtype, head dim, rank, config) (Arch::fwd_kernel_built, bwd_kernel_built).
using TileConfigsOf = FwdTileConfigs (*)(int rank, int head_dim);
using KernelBuilt = bool (*)(DType dtype, int head_dim, int rank, int config);

// The refusals of tile requests (not_compiled_text) of every rank and head dim of `head_dims`
// in `configs`, built once: a dispatcher keeps one per direction (a static), so that the
// reasons live as long as the process.
class NotCompiled {
 public:
  template <size_t N>
  NotCompiled(const char* arch, const int (&head_dims)[N], TileConfigsOf configs,
              const char* direction = "")
      : head_dims_(head_dims, head_dims + N) {
    for (int rank = 1; rank <= 3; ++rank)
      for (int d : head_dims)
        reasons_.push_back(not_compiled_text(arch, rank, d, configs(rank, d), direction));
  }
  // The reason for (rank, head dim); the head dim is one of `head_dims` (the caller checked).
  const char* operator()(int rank, int head_dim) const {
    const size_t d = std::find(head_dims_.begin(), head_dims_.end(), head_dim) - head_dims_.begin();
    return reasons_[(rank - 1) * head_dims_.size() + d].c_str();
  }

 private:
  std::vector<int> head_dims_;
  std::vector<std::string> reasons_;
};

// f(std::integral_constant<int, config>{}) for a runtime `config` in [0, kCount): how a
// dispatcher turns a configuration index into a kernel's template argument; an index out of
// range is cudaErrorInvalidValue.
template <int kCount, int kIndex = 0, class F>
cudaError_t with_config(int config, F&& f) {
  if constexpr (kIndex < kCount) {
    if (config == kIndex) return f(std::integral_constant<int, kIndex>{});
    return with_config<kCount, kIndex + 1>(config, f);
  }
  return cudaErrorInvalidValue;
}

// Whether the build holds a kernel of (dtype, head dim, rank) in any tile configuration.
inline bool any_config_built(TileConfigsOf configs, KernelBuilt built, DType dtype, int head_dim,
                             int rank) {
  const int count = configs(rank, head_dim).count;
  for (int c = 0; c < count; ++c)
    if (built(dtype, head_dim, rank, c)) return true;
  return false;
}

// The configuration `p` runs from `table`: the requested one, or with none requested the
// first (the default first) whose tiles the TMA unit can load (plan_loads). nullptr and
// *config, or why not (`not_compiled` for an unknown request).
inline const char* pick_config(const Problem& p, const KernelAxes& ax, const FwdTileConfigs& table,
                               const char* not_compiled, int* config) {
  TileLoads q, kv;
  if (p.tiles_requested()) {
    *config = requested_config(p, table);
    if (*config < 0) return not_compiled;
    return plan_loads(p, ax, table.config[*config], &q, &kv);
  }
  const char* reason = nullptr;
  for (*config = 0; *config < table.count; ++*config)
    if ((reason = plan_loads(p, ax, table.config[*config], &q, &kv)) == nullptr) return nullptr;
  return reason;
}

// "32, 64 or 128": `values` as a list in words.
template <size_t N>
std::string list_text(const int (&values)[N]) {
  std::string s;
  for (size_t i = 0; i < N; ++i)
    s += (i == 0 ? "" : i + 1 == N ? " or " : ", ") + std::to_string(values[i]);
  return s;
}

// The refusals every architecture words alike, for its kernels `kernels` ("the sm90 kernels",
// "the sm90 backward kernels") that take the head dims `head_dims` (a kernel table's list).
// The dispatchers keep one per direction (a static), so the reasons live as long as the process.
template <size_t N>
class KernelRefusals {
 public:
  // `fp8`: the kernels take float8_e4m3fn too (a forward with FP8 kernels).
  KernelRefusals(const std::string& kernels, const int (&head_dims)[N], bool fp8 = false)
      : head_dims_(head_dims),
        fp8_(fp8),
        dtype_(kernels + (fp8 ? " take float16, bfloat16 or float8_e4m3fn only"
                              : " take float16 or bfloat16 only")),
        head_dim_(kernels + " take head_dim " + list_text(head_dims) + " only"),
        head_dim_v_(kernels + " need head_dim_v == head_dim") {}

  // nullptr when the kernels take p's dtype and head dims, else why not.
  const char* check(const Problem& p) const {
    const bool fp8 = fp8_ && p.dtype == DType::kE4M3;
    if (p.dtype != DType::kF16 && p.dtype != DType::kBF16 && !fp8) return dtype_.c_str();
    if (std::find(head_dims_, head_dims_ + N, p.head_dim) == head_dims_ + N)
      return head_dim_.c_str();
    if (p.head_dim_v != p.head_dim) return head_dim_v_.c_str();
    return nullptr;
  }

 private:
  const int* head_dims_;
  bool fp8_;
  std::string dtype_, head_dim_, head_dim_v_;
};

// The architecture-independent checks of a forward problem: positive heads that kv_heads
// divides, a finite scale, batch >= 1, rank 1..3, and indices that fit the kernels' int32
// arithmetic. nullptr or the reason (prefixed by nothing: the messages name `arch`).
inline const char* check_common(const Problem& p, const KernelAxes& ax) {
  if (p.rank < 1 || p.rank > 3) return "the CUDA kernels take ranks 1, 2 and 3 only";
  if (p.heads < 1 || p.kv_heads < 1 || p.heads % p.kv_heads != 0)
    return "heads must be a positive multiple of kv_heads";
  if (!std::isfinite(p.scale)) return "the softmax scale must be finite";
  if (p.batch < 1) return "batch must be >= 1";
  int64_t tokens = p.batch, kv_tokens = p.batch;
  for (int a = 0; a < 3; ++a) tokens *= ax.q_extent[a], kv_tokens *= ax.kv_extent[a];
  if (tokens * p.heads >= (int64_t(1) << 31) || kv_tokens * p.heads >= (int64_t(1) << 31) ||
      p.batch * (ax.q_extent[0] > ax.kv_extent[0] ? ax.q_extent[0] : ax.kv_extent[0]) >=
          (int64_t(1) << 31))
    return "the CUDA kernels need batch * tokens * heads < 2^31";
  return nullptr;
}

// Why the fused forward kernels cannot run `p`'s view (nullptr: whole axes, or a view they
// take). They need the query slice inside the axis (no padding rows: every row they hold is
// stored). Queries that see no key of the key slice are fine: O = 0, lse = -inf.
inline const char* check_view(const Problem& p) {
  if (!p.has_view()) return nullptr;
  for (int a = 0; a < p.rank; ++a)
    if (p.view(a).q_offset + p.view(a).q_length > p.axis(a).length)
      return "a view's query slice must lie inside the axis (q_offset + queries <= extent)";
  return nullptr;
}

}  // namespace gna::fwd_host
