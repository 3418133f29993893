// sm90 forward: validation, TMA tensor maps and dispatch to the kernel instantiations. Host
// code only (no CUTLASS), so it compiles fast; the parts every architecture shares live in
// cuda/common/fwd_host.h.
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

#include "../common/dev_knobs.h"
#include "../common/fwd_host.h"
#include "device/fwd_kernel_launch.h"
#include "fwd_config.h"
#include "fwd_launch.h"

namespace gna::sm90 {
namespace {

// Windows of at most this many KV tiles run on a persistent grid (persistent_grid).
constexpr int kPersistentMaxWindowTiles = 32;

template <int kHeadDim, int kRank, int kConfig>
cudaError_t launch_typed(DType dtype, const FwdMaps& maps, const FwdParams& fp, unsigned grid,
                         cudaStream_t stream) {
  if constexpr (fwd_kernel_built(DType::kBF16, kHeadDim, kRank, kConfig)) {
    if (dtype == DType::kBF16)
      return launch_fwd_kernel<DType::kBF16, kHeadDim, kRank, kConfig>(maps, fp, grid, stream);
  }
  if constexpr (fwd_kernel_built(DType::kF16, kHeadDim, kRank, kConfig)) {
    if (dtype == DType::kF16)
      return launch_fwd_kernel<DType::kF16, kHeadDim, kRank, kConfig>(maps, fp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

// Configuration `config` of (kHeadDim, kRank), tried from index kConfig up.
template <int kHeadDim, int kRank, int kConfig = 0>
cudaError_t launch_config(int config, DType dtype, const FwdMaps& maps, const FwdParams& fp,
                          unsigned grid, cudaStream_t stream) {
  if constexpr (kConfig < fwd_tile_configs(kRank, kHeadDim).count) {
    if (config == kConfig)
      return launch_typed<kHeadDim, kRank, kConfig>(dtype, maps, fp, grid, stream);
    return launch_config<kHeadDim, kRank, kConfig + 1>(config, dtype, maps, fp, grid, stream);
  }
  return cudaErrorInvalidValue;
}

template <int kHeadDim>
cudaError_t launch_rank(int rank, int config, DType dtype, const FwdMaps& maps, const FwdParams& fp,
                        unsigned grid, cudaStream_t stream) {
  switch (rank) {
    case 1:
      return launch_config<kHeadDim, 1>(config, dtype, maps, fp, grid, stream);
    case 2:
      return launch_config<kHeadDim, 2>(config, dtype, maps, fp, grid, stream);
    case 3:
      return launch_config<kHeadDim, 3>(config, dtype, maps, fp, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// One CTA per SM looping over the work items, rather than one CTA per item,
// when items visit few KV tiles: an item's fixed cost (Q load, pipeline fill
// and drain, epilogue) is then a large share of it, and a persistent CTA loads
// the next item's Q while the current one finishes. A development knob
// (common/dev_knobs.h) may force either.
bool persistent_grid(const Problem& p, const FwdTileConfig& tiles) {
  if (const int forced = dev_knobs::sm90_persistent(); forced >= 0) return forced == 1;
  int64_t window = 1;
  for (int a = 0; a < p.rank; ++a) window *= p.kernel_size[a];
  return window <= int64_t(kPersistentMaxWindowTiles) * tiles.kv_size();
}

// Why a tile request of (rank, head dim) is refused, naming the compiled configurations.
const char* not_compiled(int rank, int head_dim) {
  static const auto reasons = [] {
    std::vector<std::string> r;
    for (int rk = 1; rk <= 3; ++rk)
      for (int d : kFwdHeadDims)
        r.push_back(fwd_host::not_compiled_text("sm90", rk, d, fwd_tile_configs(rk, d)));
    return r;
  }();
  int d = 0;
  while (kFwdHeadDims[d] != head_dim) ++d;  // the caller checked the head dim
  return reasons[(rank - 1) * std::size(kFwdHeadDims) + d].c_str();
}

// fwd_can_implement, and the index of the configuration that runs `p`.
const char* can_implement(const Problem& p, int* config) {
  if (p.dtype != DType::kF16 && p.dtype != DType::kBF16)
    return "the sm90 kernels take float16 or bfloat16 only";
  if (std::find(std::begin(kFwdHeadDims), std::end(kFwdHeadDims), p.head_dim) ==
      std::end(kFwdHeadDims))
    return "the sm90 kernels take head_dim 32, 64, 128 or 256 only";
  if (p.head_dim_v != p.head_dim) return "the sm90 kernels need head_dim_v == head_dim";
  // A build holds every configuration of the (dtype, head dim)s it holds (kernel_table.h).
  if (!fwd_kernel_built(p.dtype, p.head_dim, p.rank, 0))
    return "this build's sm90 kernel set (JAX_GNA_KERNEL_SET=smoke) lacks this dtype/head_dim";
  const KernelAxes ax = kernel_axes(p);
  if (const char* reason = fwd_host::check_common(p, ax)) return reason;
  if (const char* reason = fwd_host::check_view(p)) return reason;
  return fwd_host::pick_config(p, ax, fwd_tile_configs(p.rank, p.head_dim),
                               not_compiled(p.rank, p.head_dim), config);
}

}  // namespace

const char* fwd_can_implement(const Problem& p) {
  int config;
  return can_implement(p, &config);
}

size_t fwd_workspace_bytes(const Problem&) { return 0; }

cudaError_t fwd_launch(const Problem& p, const void* q, const void* k, const void* v, void* out,
                       float* lse, void* /*workspace*/, cudaStream_t stream, std::string* error) {
  int config;
  if (const char* reason = can_implement(p, &config)) {
    *error = reason;
    return cudaErrorInvalidValue;
  }
  const FwdTileConfig tiles = fwd_tile_config(p.rank, p.head_dim, config);
  FwdParams fp;
  FwdMaps maps;
  if (cudaError_t err =
          fwd_host::prepare_fwd_launch(p, tiles, q, k, v, out, lse, &fp, &maps, error))
    return err;
  int64_t grid = fp.num_items;
  if (persistent_grid(p, tiles)) {
    int sms = 0;
    if (cudaError_t err = fwd_host::multiprocessor_count(&sms)) return err;
    grid = std::min<int64_t>(grid, sms);
  }

  const unsigned g = unsigned(grid);
  switch (p.head_dim) {
    case 32:
      return launch_rank<32>(p.rank, config, p.dtype, maps, fp, g, stream);
    case 64:
      return launch_rank<64>(p.rank, config, p.dtype, maps, fp, g, stream);
    case 128:
      return launch_rank<128>(p.rank, config, p.dtype, maps, fp, g, stream);
    case 256:
      return launch_rank<256>(p.rank, config, p.dtype, maps, fp, g, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace gna::sm90
