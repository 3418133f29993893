#include "problem_from_shapes.h"

#include <limits>
#include <sstream>

namespace gna {
namespace {

std::string shape_str(Int64List s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size; ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

bool fits_int(int64_t x) { return x >= 0 && x <= std::numeric_limits<int>::max(); }

}  // namespace

std::string problem_from_shapes(Int64List q, Int64List k, Int64List v, DType dtype,
                                const WindowAttrs& attrs, Problem* problem) {
  const size_t rank = attrs.kernel_size.size;
  if (rank < 1 || rank > static_cast<size_t>(kMaxRank))
    return "kernel_size must have 1 to 3 entries, got " + std::to_string(rank);
  if (attrs.stride.size != rank || attrs.dilation.size != rank || attrs.is_causal.size != rank)
    return "kernel_size, stride, dilation and is_causal must have one entry per spatial axis";
  if (q.size < rank + 2)
    return "q must be [batch..., X..., heads, head_dim] with " + std::to_string(rank) +
           " spatial axes, got shape " + shape_str(q);
  if (k.size != q.size || v.size != q.size)
    return "q, k, v must have the same rank, got " + shape_str(q) + ", " + shape_str(k) + ", " +
           shape_str(v);
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
  p.batch = 1;
  for (size_t i = 0; i + rank + 2 < n; ++i) p.batch *= q[i];
  const int64_t heads = q[n - 2], kv_heads = k[n - 2], head_dim = q[n - 1], head_dim_v = v[n - 1];
  if (!fits_int(heads) || !fits_int(kv_heads) || !fits_int(head_dim) || !fits_int(head_dim_v))
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
    const int64_t length = view ? attrs.view_extent[a] : q_length;
    if (!fits_int(q_length) || !fits_int(kv_length)) return "spatial extents must fit in int";
    if (view) {
      const int64_t qo = attrs.view_q_offset[a], ko = attrs.view_kv_offset[a];
      if (!fits_int(length) || !fits_int(qo < 0 ? -qo : qo) || !fits_int(ko < 0 ? -ko : ko))
        return "view extents and offsets must fit in int";
      p.q_offset[a] = static_cast<int>(qo);
      p.kv_offset[a] = static_cast<int>(ko);
    }
    p.q_extent[a] = static_cast<int>(q_length);
    p.kv_extent[a] = static_cast<int>(kv_length);
    const int64_t ks = attrs.kernel_size[a], st = attrs.stride[a], dl = attrs.dilation[a];
    if (!fits_int(length)) return "spatial extents must fit in int";
    if (ks < 2 || st < 1 || st > ks || dl < 1 || ks * dl > length)
      return "illegal window on axis " + std::to_string(a) + ": extent " + std::to_string(length) +
             ", kernel_size " + std::to_string(ks) + ", stride " + std::to_string(st) +
             ", dilation " + std::to_string(dl) +
             " (need kernel_size >= 2, 1 <= stride <= kernel_size, kernel_size * dilation <= "
             "extent)";
    p.extent[a] = static_cast<int>(length);
    p.kernel_size[a] = static_cast<int>(ks);
    p.stride[a] = static_cast<int>(st);
    p.dilation[a] = static_cast<int>(dl);
    p.causal[a] = attrs.is_causal[a] != 0;
    if (const char* reason = axis_view_error(p.axis(a), p.view(a)))
      return "view on axis " + std::to_string(a) + ": " + reason + ", got q_offset " +
             std::to_string(p.q_offset[a]) + ", kv_offset " + std::to_string(p.kv_offset[a]) +
             ", dilation " + std::to_string(p.dilation[a]);
  }
  if (attrs.q_tile.size != attrs.kv_tile.size ||
      (attrs.q_tile.size != 0 && attrs.q_tile.size != rank))
    return "q_tile and kv_tile must both be empty (unset) or have one entry per spatial axis (" +
           std::to_string(rank) + "), got " + shape_str(attrs.q_tile) + " and " +
           shape_str(attrs.kv_tile);
  for (size_t a = 0; a < attrs.q_tile.size; ++a) {
    if (attrs.q_tile[a] < 1 || attrs.kv_tile[a] < 1 || !fits_int(attrs.q_tile[a]) ||
        !fits_int(attrs.kv_tile[a]))
      return "tile shapes must be positive, got q_tile " + shape_str(attrs.q_tile) +
             " and kv_tile " + shape_str(attrs.kv_tile);
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
