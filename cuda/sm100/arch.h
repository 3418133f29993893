// The sm100 (Blackwell, sm_100a) traits: what the dispatchers every architecture shares
// (cuda/common/fwd_dispatch.h, bwd_dispatch.h: what each member means) take from sm100. The
// kernel templates are bound in fwd_instance.cu and bwd_instance.cu. Host code only (plain
// C++): the FFI handler calls the launcher API (cuda/common/launch_api.h) with
// gna::sm100::Arch. Built, never run: no Blackwell GPU was available (docs/blackwell.md).
#pragma once

#include "bwd_config.h"
#include "fwd_config.h"
#include "gna/problem.h"

namespace gna::sm100 {

// kName, the head dims and which kernels this build holds: its kernel_table.h.
struct Arch : KernelTable {
  // The devices the kernels run on: compute capability 10.0 (sm_100a code runs there only).
  static constexpr int kMajor = 10, kMinor = 0;
  static constexpr auto fwd_tile_configs = &sm100::fwd_tile_configs;
  static constexpr auto bwd_tile_configs = &sm100::bwd_tile_configs;

  static constexpr bool kTakesViews = false;
  static constexpr const char* kViewRefusal =
      "the sm100 kernels take whole axes only, not a view (a shard's queries against its key "
      "block: jax_gna.parallel runs those shards with the xla implementation)";
  static constexpr const char* kFwdSetRefusal =
      "this build's sm100 kernel set (JAX_GNA_KERNEL_SET=smoke: bfloat16, head dim 128, rank 3, "
      "default tiles) lacks this kernel";
  static constexpr const char* kBwdSetRefusal =
      "this build's sm100 kernel set (JAX_GNA_KERNEL_SET=smoke: bfloat16, head dim 128, rank 3) "
      "lacks this backward kernel";

  // One dQ accumulator: each add waits for the turn just before it (bwd_params.h).
  static int deterministic_dq_buffers() { return 1; }

  // One CTA per work item (no persistent grid yet: docs/blackwell.md).
  static bool persistent_grid(const Problem&, const FwdTileConfig&) { return false; }
};

}  // namespace gna::sm100
