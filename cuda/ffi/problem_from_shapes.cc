#include "problem_from_shapes.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>

namespace gna {
namespace {

constexpr int64_t kIntMax = std::numeric_limits<int>::max();

// Messages are built from std::string and std::to_string only, no iostreams: in a process with
// jaxlib 0.11 loaded (Python 3.12), a std::ostringstream in this extension crashed it.
std::string shape_str(Int64List s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size; ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool within(int64_t x, int64_t lo, int64_t hi) { return lo <= x && x <= hi; }

// "name[a] = value"
std::string entry(const char* name, size_t a, int64_t value) {
  return std::string(name) + "[" + std::to_string(a) + "] = " + std::to_string(value);
}

// Whether every dim is >= 0 and the product of the nonzero ones fits in int64 (then no count
// derived from the dims overflows, whatever zero dims the shape has).
bool countable(Int64List shape) {
  int64_t n = 1;
  for (size_t i = 0; i < shape.size; ++i) {
    if (shape[i] < 0) return false;
    if (shape[i] == 0) continue;
    if (n > std::numeric_limits<int64_t>::max() / shape[i]) return false;
    n *= shape[i];
  }
  return true;
}

}  // namespace

std::string axis_error(size_t a, int64_t extent, int64_t kernel_size, int64_t stride,
                       int64_t dilation, int64_t is_causal, const char* extent_name) {
  const std::string where = "illegal window on axis " + std::to_string(a) + ": ";
  if (!within(extent, 1, kMaxPosition - 1))
    return where + entry(extent_name, a, extent) + "; need 1 <= " + extent_name + " < 2^30";
  // Each factor is an int before the product (which then fits in int64).
  for (const auto& [name, value] :
       {std::pair<const char*, int64_t>{"kernel_size", kernel_size}, {"dilation", dilation}})
    if (!within(value, 1, kIntMax))
      return where + entry(name, a, value) + "; need 1 <= " + name + " <= 2^31 - 1";
  if (!within(stride, 1, kernel_size))
    return where + entry("stride", a, stride) + "; need 1 <= stride <= kernel_size (" +
           std::to_string(kernel_size) + ")";
  if (is_causal != 0 && is_causal != 1)
    return where + entry("is_causal", a, is_causal) + "; need 0 or 1";
  if (kernel_size * dilation > extent)
    return where + "kernel_size * dilation = " + std::to_string(kernel_size) + " * " +
           std::to_string(dilation) + "; need kernel_size * dilation <= " + extent_name + " (" +
           std::to_string(extent) + ")";
  return "";
}

std::string view_error(size_t a, int64_t extent, int64_t dilation, int64_t q_offset,
                       int64_t q_length, int64_t kv_offset, int64_t kv_length) {
  const std::string where = "view on axis " + std::to_string(a) + ": ";
  if (!within(q_length, 1, kMaxPosition - 1) || !within(kv_length, 1, kMaxPosition - 1))
    return where + "view lengths must be >= 1 and below 2^30, got " + std::to_string(q_length) +
           " queries and " + std::to_string(kv_length) + " keys";
  if (!within(q_offset, 0, extent - 1))
    return where +
           "the query slice must start inside the axis (0 <= view_q_offset < view_extent), got " +
           entry("view_q_offset", a, q_offset) + " and " + entry("view_extent", a, extent);
  if (!within(kv_offset, 1 - kMaxPosition, kMaxPosition - 1))
    return where + entry("view_kv_offset", a, kv_offset) + "; need -2^30 < view_kv_offset < 2^30";
  // In range now: the kernels' own statement of the rule decides.
  const Axis axis{static_cast<int>(extent), 1, 1, static_cast<int>(dilation), false};
  const AxisView v{static_cast<int>(q_offset), static_cast<int>(q_length),
                   static_cast<int>(kv_offset), static_cast<int>(kv_length)};
  if (const char* reason = axis_view_error(axis, v))
    return where + reason + ", got " + entry("view_q_offset", a, q_offset) + ", " +
           entry("view_kv_offset", a, kv_offset) + ", " + entry("dilation", a, dilation);
  return "";
}

std::string problem_from_shapes(Int64List q, Int64List k, Int64List v, DType dtype,
                                const WindowAttrs& attrs, Problem* problem) {
  const size_t rank = attrs.kernel_size.size;
  if (rank < 1 || rank > static_cast<size_t>(kMaxRank))
    return "kernel_size must have 1 to 3 entries, got " + std::to_string(rank);
  if (attrs.stride.size != rank || attrs.dilation.size != rank || attrs.is_causal.size != rank)
    return "kernel_size, stride, dilation and is_causal must have one entry per spatial axis";
  if (!std::isfinite(attrs.scale))
    return std::string("scale = ") +
           (std::isnan(attrs.scale) ? "nan"
            : attrs.scale > 0       ? "inf"
                                    : "-inf") +
           "; the softmax scale must be finite";
  if (q.size < rank + 2)
    return "q must be [batch..., X..., heads, head_dim] with " + std::to_string(rank) +
           " spatial axes, got shape " + shape_str(q);
  if (k.size != q.size || v.size != q.size)
    return "q, k, v must have the same rank, got " + shape_str(q) + ", " + shape_str(k) + ", " +
           shape_str(v);
  if (!countable(q) || !countable(k) || !countable(v))
    return "q, k, v dims must be >= 0 with a product that fits in int64, got " + shape_str(q) +
           ", " + shape_str(k) + ", " + shape_str(v);
  const size_t n = q.size;
  const bool view = attrs.view_extent.size != 0;
  if (attrs.view_q_offset.size != attrs.view_extent.size ||
      attrs.view_kv_offset.size != attrs.view_extent.size ||
      (view && attrs.view_extent.size != rank))
    return "view_extent, view_q_offset and view_kv_offset must all be empty (no view) or have one "
           "entry per spatial axis (" +
           std::to_string(rank) + "), got " + shape_str(attrs.view_extent) + ", " +
           shape_str(attrs.view_q_offset) + " and " + shape_str(attrs.view_kv_offset);
  for (size_t i = 0; i + 2 < n; ++i) {
    const bool spatial = i + rank + 2 >= n;
    if (v[i] != k[i] || (k[i] != q[i] && !(view && spatial)))
      return std::string(view ? "q, k, v must share batch dims and k, v spatial dims, got "
                              : "q, k, v must share batch and spatial dims, got ") +
             shape_str(q) + ", " + shape_str(k) + ", " + shape_str(v);
  }
  if (k[n - 2] != v[n - 2]) return "k and v must have the same number of heads";
  if (k[n - 1] != q[n - 1]) return "q and k must have the same head dim";

  Problem p;
  p.rank = static_cast<int>(rank);
  p.dtype = dtype;
  p.scale = attrs.scale;
  p.batch = 1;  // fits: the shape is countable
  for (size_t i = 0; i + rank + 2 < n; ++i) p.batch *= q[i];
  const int64_t heads = q[n - 2], kv_heads = k[n - 2], head_dim = q[n - 1], head_dim_v = v[n - 1];
  if (heads > kIntMax || kv_heads > kIntMax || head_dim > kIntMax || head_dim_v > kIntMax)
    return "head counts and head dims must fit in int";
  p.heads = static_cast<int>(heads);
  p.kv_heads = static_cast<int>(kv_heads);
  p.head_dim = static_cast<int>(head_dim);
  p.head_dim_v = static_cast<int>(head_dim_v);
  if (p.kv_heads < 1 || p.heads % p.kv_heads != 0)
    return "kv heads must divide query heads, got heads=" + std::to_string(p.heads) +
           ", kv_heads=" + std::to_string(p.kv_heads);

  for (size_t a = 0; a < rank; ++a) {
    const int64_t q_length = q[n - 2 - rank + a], kv_length = k[n - 2 - rank + a];
    if (!within(q_length, 1, kMaxPosition - 1) || !within(kv_length, 1, kMaxPosition - 1))
      return "spatial dims must be >= 1 and below 2^30, got q " + shape_str(q) + " and k " +
             shape_str(k) + " (spatial axis " + std::to_string(a) + ")";
    const int64_t extent = view ? attrs.view_extent[a] : q_length;
    const int64_t dilation = attrs.dilation[a];
    std::string error = axis_error(a, extent, attrs.kernel_size[a], attrs.stride[a], dilation,
                                   attrs.is_causal[a], view ? "view_extent" : "extent");
    if (error.empty() && view)
      error = view_error(a, extent, dilation, attrs.view_q_offset[a], q_length,
                         attrs.view_kv_offset[a], kv_length);
    if (!error.empty()) return error;
    // Every value is in range now: the narrowing below is exact.
    if (view) {
      p.q_offset[a] = static_cast<int>(attrs.view_q_offset[a]);
      p.kv_offset[a] = static_cast<int>(attrs.view_kv_offset[a]);
    }
    p.q_extent[a] = static_cast<int>(q_length);
    p.kv_extent[a] = static_cast<int>(kv_length);
    p.extent[a] = static_cast<int>(extent);
    p.kernel_size[a] = static_cast<int>(attrs.kernel_size[a]);
    p.stride[a] = static_cast<int>(attrs.stride[a]);
    p.dilation[a] = static_cast<int>(dilation);
    p.causal[a] = attrs.is_causal[a] == 1;
  }
  if (attrs.q_tile.size != attrs.kv_tile.size ||
      (attrs.q_tile.size != 0 && attrs.q_tile.size != rank))
    return "q_tile and kv_tile must both be empty (unset) or have one entry per spatial axis (" +
           std::to_string(rank) + "), got " + shape_str(attrs.q_tile) + " and " +
           shape_str(attrs.kv_tile);
  for (size_t a = 0; a < attrs.q_tile.size; ++a) {
    for (const auto& [name, tile] : {std::pair<const char*, int64_t>{"q_tile", attrs.q_tile[a]},
                                     {"kv_tile", attrs.kv_tile[a]}})
      if (!within(tile, 1, kMaxPosition - 1))
        return entry(name, a, tile) + ": tile shapes must be positive and below 2^30, got q_tile " +
               shape_str(attrs.q_tile) + " and kv_tile " + shape_str(attrs.kv_tile);
    p.q_tile[a] = static_cast<int>(attrs.q_tile[a]);
    p.kv_tile[a] = static_cast<int>(attrs.kv_tile[a]);
  }
  for (size_t a = rank; a < static_cast<size_t>(kMaxRank); ++a) {
    p.extent[a] = p.kernel_size[a] = p.stride[a] = p.dilation[a] = 1;
    p.q_extent[a] = p.kv_extent[a] = 1;
    p.q_offset[a] = p.kv_offset[a] = 0;
    p.causal[a] = false;
  }
  *problem = p;
  return "";
}

}  // namespace gna
