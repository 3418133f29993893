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
#include "dispatch_common.h"
#include "fwd_config.h"
#include "fwd_kernel_set.h"
#include "fwd_launch.h"

namespace gna::sm90 {
namespace {

// Windows of at most this many KV tiles run on a persistent grid (persistent_grid).
constexpr int kPersistentMaxWindowTiles = 32;

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
  return gna::sm90::boxes_fit(tiles.q, ax) && gna::sm90::boxes_fit(tiles.kv, ax);
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
  if (const char* reason = shape_can_implement(p)) return reason;
  return pick_config(p, kernel_axes(p), config);
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
