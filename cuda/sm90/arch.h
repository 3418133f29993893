// The sm90 (Hopper, sm_90a) traits: what the dispatchers every architecture shares
// (cuda/common/fwd_dispatch.h, bwd_dispatch.h: what each member means) take from sm90. The
// kernel templates are bound in fwd_instance.cu and bwd_instance.cu. Host code only (plain
// C++): the FFI handler calls the launcher API (cuda/common/launch_api.h) with gna::sm90::Arch.
#pragma once

#include <cstdint>

#include "../common/dev_knobs.h"
#include "bwd_config.h"
#include "fwd_config.h"
#include "gna/problem.h"

namespace gna::sm90 {

// kName, the head dims and which kernels this build holds: its kernel_table.h.
struct Arch : KernelTable {
  // The devices the kernels run on: compute capability 9.0 (sm_90a code runs there only).
  static constexpr int kMajor = 9, kMinor = 0;
  static constexpr auto fwd_tile_configs = &sm90::fwd_tile_configs;
  static constexpr auto bwd_tile_configs = &sm90::bwd_tile_configs;

  static constexpr bool kTakesViews = true;
  // The smoke set holds every tile configuration of its (dtype, head dim)s.
  static constexpr const char* kFwdSetRefusal =
      "this build's sm90 kernel set (JAX_GNA_KERNEL_SET=smoke) lacks this dtype/head_dim";
  static constexpr const char* kBwdSetRefusal = kFwdSetRefusal;

  // Deterministic backward: copies of the dQ accumulator (bwd_params.h). One unless a
  // development knob asks for more: two let an add wait for the turn two before it instead of
  // the one just before, at the cost of a second fp32 dQ of workspace. Measured on an H100, two
  // and three were no faster than one (docs/history.md), so one stays the default.
  static int deterministic_dq_buffers() {
    const int forced = dev_knobs::sm90_dq_buffers();
    return forced > 0 ? forced : 1;
  }

  // Windows of at most this many KV tiles run on a persistent grid (persistent_grid).
  static constexpr int kPersistentMaxWindowTiles = 32;

  // One CTA per SM looping over the work items, rather than one CTA per item, when items visit
  // few KV tiles: an item's fixed cost (Q load, pipeline fill and drain, epilogue) is then a
  // large share of it, and a persistent CTA loads the next item's Q while the current one
  // finishes. A development knob (common/dev_knobs.h) may force either.
  static bool persistent_grid(const Problem& p, const FwdTileConfig& tiles) {
    if (const int forced = dev_knobs::sm90_persistent(); forced >= 0) return forced == 1;
    int64_t window = 1;
    for (int a = 0; a < p.rank; ++a) window *= p.kernel_size[a];
    return window <= int64_t(kPersistentMaxWindowTiles) * tiles.kv_size();
  }
};

}  // namespace gna::sm90
