// The shape of one GNA call, as every backend (CPU, sm90, sm100) sees it.
//
// Tensors are row-major and heads-last: q [batch, X1..Xr, heads, head_dim],
// k [batch, X1..Xr, kv_heads, head_dim], v [batch, X1..Xr, kv_heads,
// head_dim_v], out like q with head_dim_v, lse fp32 [batch, X1..Xr, heads].
// `batch` is the product of all leading dimensions. Query head h uses kv head
// h / (heads / kv_heads).
//
// A view (window.h AxisView) makes the call the sub-problem of one shard: `extent` is then the
// whole axis the windows are computed on, while q/out/lse hold `q_extent` positions along the
// axis, starting at whole-axis position `q_offset`, and k/v hold `kv_extent` positions
// starting at `kv_offset`. Without a view the offsets are 0 and both extents equal `extent`.
#pragma once

#include <cstdint>

#include "gna/window.h"

namespace gna {

// kE4M3: float8_e4m3fn (the sm90 FP8 forward only; its output is bfloat16).
enum class DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kE4M3 = 3 };

inline constexpr int kMaxRank = 3;

struct Problem {
  int rank = 1;  // number of spatial axes, 1..3
  int64_t batch = 1;
  int extent[kMaxRank] = {1, 1, 1};
  int heads = 1;
  int kv_heads = 1;
  int head_dim = 0;
  int head_dim_v = 0;
  int kernel_size[kMaxRank] = {1, 1, 1};
  int stride[kMaxRank] = {1, 1, 1};
  int dilation[kMaxRank] = {1, 1, 1};
  bool causal[kMaxRank] = {false, false, false};
  float scale = 1.0f;
  DType dtype = DType::kF32;
  // Requested tile shapes per problem axis (Q tile, KV tile), or all 0: unset, the
  // backend runs its default. Only backends with tile configurations read them (the
  // sm90 forward refuses shapes it has no compiled kernel for).
  int q_tile[kMaxRank] = {0, 0, 0};
  int kv_tile[kMaxRank] = {0, 0, 0};
  // The view per axis (see the top of this file); an extent of 0 means `extent` (so that a
  // Problem filled in by hand is the whole problem).
  int q_offset[kMaxRank] = {0, 0, 0};
  int q_extent[kMaxRank] = {0, 0, 0};
  int kv_offset[kMaxRank] = {0, 0, 0};
  int kv_extent[kMaxRank] = {0, 0, 0};

  GNA_HOST_DEVICE Axis axis(int a) const {
    return Axis{extent[a], kernel_size[a], stride[a], dilation[a], causal[a]};
  }
  // Positions of the q (out, lse) and of the k (v) arrays along axis a.
  GNA_HOST_DEVICE int q_length(int a) const { return q_extent[a] > 0 ? q_extent[a] : extent[a]; }
  GNA_HOST_DEVICE int kv_length(int a) const { return kv_extent[a] > 0 ? kv_extent[a] : extent[a]; }
  GNA_HOST_DEVICE AxisView view(int a) const {
    return AxisView{q_offset[a], q_length(a), kv_offset[a], kv_length(a)};
  }
  GNA_HOST_DEVICE bool tiles_requested() const { return q_tile[0] != 0; }
  // Whether some axis is a view other than the whole axis.
  GNA_HOST_DEVICE bool has_view() const {
    bool v = false;
    for (int a = 0; a < rank; ++a)
      v |= q_offset[a] != 0 || kv_offset[a] != 0 || q_length(a) != extent[a] ||
           kv_length(a) != extent[a];
    return v;
  }
  // Query (q/out/lse) and key (k/v) tokens per batch entry.
  GNA_HOST_DEVICE int64_t tokens() const {
    int64_t n = 1;
    for (int a = 0; a < rank; ++a) n *= q_length(a);
    return n;
  }
  GNA_HOST_DEVICE int64_t kv_tokens() const {
    int64_t n = 1;
    for (int a = 0; a < rank; ++a) n *= kv_length(a);
    return n;
  }
};

}  // namespace gna
