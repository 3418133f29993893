// sm90 forward: validation, TMA tensor maps and dispatch to the kernel
// instantiations. Host code only (no CUTLASS), so it compiles fast.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>
#include <string>
#include <vector>

#include <cuda.h>

#include "device/fwd_kernel_launch.h"
#include "fwd_config.h"
#include "fwd_kernel_set.h"
#include "fwd_launch.h"

namespace gna::sm90 {
namespace {

// Windows of at most this many KV tiles run on a persistent grid (persistent_grid).
constexpr int kPersistentMaxWindowTiles = 32;

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled through the runtime's driver entry point (no -lcuda).
EncodeTiledFn encode_tiled() {
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

KernelAxes kernel_axes(const Problem& p) {
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

int elem_bytes(DType t) { return t == DType::kF32 ? 4 : 2; }

// A 5-D tensor map over q/k/v/out [batch, E0, E1, E2, heads, D] as
// {D, heads, E2, E1, batch * E0} (innermost first; the batch folds into the
// first kernel axis). One box = one tile of one head, `chunk` elements of D,
// each spatial axis traversed with element stride = dilation.
cudaError_t make_token_tensor_map(CUtensorMap* map, const void* ptr, DType dtype, int head_dim,
                                  int heads, const KernelAxes& ax, int64_t batch,
                                  const int tile[3]) {
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

template <int kHeadDim, int kRank, int kConfig>
cudaError_t launch_typed(DType dtype, const CUtensorMap& mq, const CUtensorMap& mk,
                         const CUtensorMap& mv, const FwdParams& fp, unsigned grid,
                         cudaStream_t stream) {
  if constexpr (fwd_kernel_built(DType::kBF16, kHeadDim)) {
    if (dtype == DType::kBF16)
      return launch_fwd_kernel<DType::kBF16, kHeadDim, kRank, kConfig>(mq, mk, mv, fp, grid,
                                                                       stream);
  }
  if constexpr (fwd_kernel_built(DType::kF16, kHeadDim)) {
    if (dtype == DType::kF16)
      return launch_fwd_kernel<DType::kF16, kHeadDim, kRank, kConfig>(mq, mk, mv, fp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

// Configuration `config` of (kHeadDim, kRank), tried from index kConfig up.
template <int kHeadDim, int kRank, int kConfig = 0>
cudaError_t launch_config(int config, DType dtype, const CUtensorMap& mq, const CUtensorMap& mk,
                          const CUtensorMap& mv, const FwdParams& fp, unsigned grid,
                          cudaStream_t stream) {
  if constexpr (kConfig < fwd_tile_configs(kRank, kHeadDim).count) {
    if (config == kConfig)
      return launch_typed<kHeadDim, kRank, kConfig>(dtype, mq, mk, mv, fp, grid, stream);
    return launch_config<kHeadDim, kRank, kConfig + 1>(config, dtype, mq, mk, mv, fp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

template <int kHeadDim>
cudaError_t launch_rank(int rank, int config, DType dtype, const CUtensorMap& mq,
                        const CUtensorMap& mk, const CUtensorMap& mv, const FwdParams& fp,
                        unsigned grid, cudaStream_t stream) {
  switch (rank) {
    case 1:
      return launch_config<kHeadDim, 1>(config, dtype, mq, mk, mv, fp, grid, stream);
    case 2:
      return launch_config<kHeadDim, 2>(config, dtype, mq, mk, mv, fp, grid, stream);
    case 3:
      return launch_config<kHeadDim, 3>(config, dtype, mq, mk, mv, fp, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// A TMA box spans tile * dilation positions per axis and may not exceed 256.
bool boxes_fit(const FwdTileConfig& tiles, const KernelAxes& ax) {
  for (int a = 0; a < 3; ++a) {
    const int tile = tiles.q[a] > tiles.kv[a] ? tiles.q[a] : tiles.kv[a];
    if (tile * ax.dilation[a] > 256) return false;
  }
  return true;
}

// SMs of the current device, read once per device ordinal.
cudaError_t multiprocessor_count(int* sms) {
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

// One CTA per SM looping over the work items, rather than one CTA per item,
// when items visit few KV tiles: an item's fixed cost (Q load, pipeline fill
// and drain, epilogue) is then a large share of it, and a persistent CTA loads
// the next item's Q while the current one finishes. GNA_SM90_PERSISTENT=0/1
// forces either (development knob).
bool persistent_grid(const Problem& p, const FwdTileConfig& tiles) {
  static const char* env = std::getenv("GNA_SM90_PERSISTENT");
  if (env && (env[0] == '0' || env[0] == '1')) return env[0] == '1';
  int64_t window = 1;
  for (int a = 0; a < p.rank; ++a) window *= p.kernel_size[a];
  return window <= int64_t(kPersistentMaxWindowTiles) * tiles.kv_size();
}

// Index of the configuration of (p.rank, p.head_dim) with p's requested tiles
// (problem axes, padded to kernel axes like the problem), or -1.
int requested_config(const Problem& p) {
  const FwdTileConfigs table = fwd_tile_configs(p.rank, p.head_dim);
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

std::string shape_text(const int* tile, int rank) {
  std::string s = "(";
  for (int i = 0; i < rank; ++i) s += (i ? "," : "") + std::to_string(tile[3 - rank + i]);
  return s + ")";
}

// Why a tile request of (rank, head dim) is refused, naming the compiled
// configurations; one static string per (rank, head dim), so callers get a
// `const char*` that lives as long as the process.
const char* not_compiled(int rank, int head_dim) {
  static const auto reasons = [] {
    std::vector<std::string> r;
    for (int rk = 1; rk <= 3; ++rk) {
      for (int d : kFwdHeadDims) {
        const FwdTileConfigs table = fwd_tile_configs(rk, d);
        std::string s = "these tile shapes are not a compiled sm90 configuration; rank " +
                        std::to_string(rk) + ", head dim " + std::to_string(d) + " has ";
        for (int c = 0; c < table.count; ++c)
          s += (c ? ", " : "") + std::string("Q") + shape_text(table.config[c].q, rk) + "/KV" +
               shape_text(table.config[c].kv, rk) + (c ? "" : " (the default)");
        r.push_back(s);
      }
    }
    return r;
  }();
  int d = 0;
  while (kFwdHeadDims[d] != head_dim) ++d;  // the caller checked the head dim
  return reasons[(rank - 1) * std::size(kFwdHeadDims) + d].c_str();
}

// The configuration `p` runs: the requested one, or with none requested the
// first (the default first) whose TMA boxes fit. nullptr and *config, or why not.
const char* pick_config(const Problem& p, const KernelAxes& ax, int* config) {
  static constexpr const char* kBoxTooLarge =
      "the sm90 kernels need tile * dilation <= 256 along every axis (a TMA box limit; tiles "
      "span up to 128 tokens in 1-D and 16 per axis in 2-D/3-D, so 1-D allows dilation <= 2)";
  const FwdTileConfigs table = fwd_tile_configs(p.rank, p.head_dim);
  if (p.tiles_requested()) {
    *config = requested_config(p);
    if (*config < 0) return not_compiled(p.rank, p.head_dim);
    return boxes_fit(table.config[*config], ax) ? nullptr : kBoxTooLarge;
  }
  for (*config = 0; *config < table.count; ++*config)
    if (boxes_fit(table.config[*config], ax)) return nullptr;
  return kBoxTooLarge;
}

// fwd_can_implement, and the index of the configuration that runs `p`.
const char* can_implement(const Problem& p, int* config) {
  if (p.dtype != DType::kF16 && p.dtype != DType::kBF16)
    return "the sm90 kernels take float16 or bfloat16 only";
  if (std::find(std::begin(kFwdHeadDims), std::end(kFwdHeadDims), p.head_dim) ==
      std::end(kFwdHeadDims))
    return "the sm90 kernels take head_dim 32, 64, 128 or 256 only";
  if (p.head_dim_v != p.head_dim) return "the sm90 kernels need head_dim_v == head_dim";
  if (!fwd_kernel_built(p.dtype, p.head_dim))
    return "this build's sm90 kernel set (JAX_GNA_KERNEL_SET=smoke) lacks this dtype/head_dim";
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
  return pick_config(p, ax, config);
}

}  // namespace

const char* fwd_can_implement(const Problem& p) {
  int config;
  return can_implement(p, &config);
}

size_t fwd_workspace_bytes(const Problem&) { return 0; }

cudaError_t fwd_launch(const Problem& p, const void* q, const void* k, const void* v, void* out,
                       float* lse, void* /*workspace*/, cudaStream_t stream) {
  int config;
  if (can_implement(p, &config) != nullptr) return cudaErrorInvalidValue;
  const FwdTileConfig tiles = fwd_tile_config(p.rank, p.head_dim, config);
  const KernelAxes ax = kernel_axes(p);
  cudaError_t err;

  FwdParams fp = {};
  fp.num_q_tiles = 1;
  fp.num_groups = 1;
  for (int a = 0; a < 3; ++a) {
    fp.extent[a] = ax.extent[a];
    fp.kernel_size[a] = ax.kernel_size[a];
    fp.stride[a] = ax.stride[a];
    fp.dilation[a] = ax.dilation[a];
    fp.causal[a] = ax.causal[a];
    const int lg0 = (ax.extent[a] + ax.dilation[a] - 1) / ax.dilation[a];  // group 0 is longest
    fp.q_tiles[a] = (lg0 + tiles.q[a] - 1) / tiles.q[a];
    fp.num_q_tiles *= fp.q_tiles[a];
    fp.num_groups *= ax.dilation[a];
  }
  // CTA order over Q tiles: last axis fastest by default. GNA_SM90_TILE_ORDER
  // (e.g. "012": first axis fastest) is a development knob for L2 experiments.
  static const char* order_env = std::getenv("GNA_SM90_TILE_ORDER");
  const bool env_ok = order_env && std::strlen(order_env) == 3;
  for (int k = 0; k < 3; ++k) fp.tile_order[k] = env_ok ? (order_env[k] - '0') % 3 : 2 - k;
  fp.heads = p.heads;
  fp.kv_group = p.heads / p.kv_heads;
  fp.batch = int(p.batch);
  fp.scale_log2 = p.scale * 1.4426950408889634f;
  fp.prescale = p.scale > 0.f ? 0 : 1;
  fp.out = out;
  fp.lse = lse;

  const int64_t items = int64_t(fp.num_q_tiles) * fp.num_groups * p.heads * p.batch;
  if (items >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  fp.num_items = int(items);
  int64_t grid = items;
  if (persistent_grid(p, tiles)) {
    int sms = 0;
    if ((err = multiprocessor_count(&sms))) return err;
    grid = std::min<int64_t>(items, sms);
  }

  CUtensorMap mq, mk, mv;
  if ((err = make_token_tensor_map(&mq, q, p.dtype, p.head_dim, p.heads, ax, p.batch, tiles.q)))
    return err;
  if ((err = make_token_tensor_map(&mk, k, p.dtype, p.head_dim, p.kv_heads, ax, p.batch, tiles.kv)))
    return err;
  if ((err = make_token_tensor_map(&mv, v, p.dtype, p.head_dim, p.kv_heads, ax, p.batch, tiles.kv)))
    return err;

  const unsigned g = unsigned(grid);
  switch (p.head_dim) {
    case 32:
      return launch_rank<32>(p.rank, config, p.dtype, mq, mk, mv, fp, g, stream);
    case 64:
      return launch_rank<64>(p.rank, config, p.dtype, mq, mk, mv, fp, g, stream);
    case 128:
      return launch_rank<128>(p.rank, config, p.dtype, mq, mk, mv, fp, g, stream);
    case 256:
      return launch_rank<256>(p.rank, config, p.dtype, mq, mk, mv, fp, g, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace gna::sm90
