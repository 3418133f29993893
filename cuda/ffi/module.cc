// The nanobind module jax_gna._ext: FFI handler capsules per platform, what this build
// contains, and small host helpers (window geometry for tests, workspace sizes, "can the CUDA
// kernel run this problem?").
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gna/window.h"
#include "handlers.h"
#include "problem_from_shapes.h"
#include "xla/ffi/api/c_api.h"

namespace nb = nanobind;

namespace {

using Ints = std::vector<int64_t>;

template <typename Fn>
nb::capsule handler_capsule(Fn* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, Fn, XLA_FFI_CallFrame*>,
                "not an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

gna::Int64List list(const Ints& v) { return gna::Int64List{v.data(), v.size()}; }

gna::DType dtype_from_name(const std::string& name) {
  if (name == "float32") return gna::DType::kF32;
  if (name == "float16") return gna::DType::kF16;
  if (name == "bfloat16") return gna::DType::kBF16;
  if (name == "float8_e4m3fn") return gna::DType::kE4M3;
  throw nb::value_error(
      ("unsupported dtype " + name + "; expected float32, float16, bfloat16 or float8_e4m3fn")
          .c_str());
}

// Decodes a call exactly as the FFI handlers do; raises ValueError with the reason otherwise.
gna::Problem problem(const Ints& q, const Ints& k, const Ints& v, const std::string& dtype,
                     const Ints& kernel_size, const Ints& stride, const Ints& dilation,
                     const Ints& is_causal, const Ints& q_tile, const Ints& kv_tile,
                     const Ints& view) {
  // `view`: empty, or per axis (extent, q_offset, kv_offset) flattened.
  Ints extent, q_offset, kv_offset;
  for (size_t i = 0; i + 2 < view.size(); i += 3) {
    extent.push_back(view[i]);
    q_offset.push_back(view[i + 1]);
    kv_offset.push_back(view[i + 2]);
  }
  if (view.size() % 3 != 0)
    throw nb::value_error("view must hold (extent, q_offset, kv_offset) per spatial axis");
  gna::Problem p;
  const std::string error = gna::problem_from_shapes(
      list(q), list(k), list(v), dtype_from_name(dtype),
      gna::WindowAttrs{list(kernel_size), list(stride), list(dilation), list(is_causal), 1.0f,
                       list(q_tile), list(kv_tile), list(extent), list(q_offset), list(kv_offset)},
      &p);
  if (!error.empty()) throw nb::value_error(error.c_str());
  return p;
}

// One axis for the geometry helpers, checked as the handlers check a call's axes.
gna::Axis axis(int64_t length, int64_t kernel_size, int64_t stride, int64_t dilation,
               bool is_causal) {
  const std::string error =
      gna::axis_error(0, length, kernel_size, stride, dilation, is_causal ? 1 : 0, "length");
  if (!error.empty()) throw nb::value_error(error.c_str());
  return gna::Axis{static_cast<int>(length), static_cast<int>(kernel_size),
                   static_cast<int>(stride), static_cast<int>(dilation), is_causal};
}

// The entries of a comma-separated list.
std::vector<std::string> split_csv(const std::string& all) {
  std::vector<std::string> items;
  size_t start = 0;
  while (start <= all.size()) {
    const size_t end = std::min(all.find(',', start), all.size());
    if (end > start) items.push_back(all.substr(start, end - start));
    start = end + 1;
  }
  return items;
}

std::vector<std::string> built_cuda_archs() {
#ifdef JAX_GNA_CUDA_ARCHS
  return split_csv(JAX_GNA_CUDA_ARCHS);
#else
  return {};
#endif
}

std::vector<std::string> built_cuda_kernels() {
#ifdef JAX_GNA_CUDA_KERNELS
  return split_csv(JAX_GNA_CUDA_KERNELS);
#else
  return {};
#endif
}

}  // namespace

NB_MODULE(_ext, m) {
  m.doc() = "jax_gna's compiled extension: XLA FFI handlers and host helpers.";

  m.def(
      "cpu_targets",
      [] {
        nb::dict targets;
        targets["jax_gna_fwd"] = handler_capsule(JaxGnaFwdCpu);
        targets["jax_gna_bwd"] = handler_capsule(JaxGnaBwdCpu);
        return targets;
      },
      "FFI target name -> handler capsule for platform 'cpu'.");
  m.def(
      "cuda_targets",
      [] {
        nb::dict targets;
#ifdef JAX_GNA_WITH_CUDA
        targets["jax_gna_fwd"] = handler_capsule(JaxGnaFwdCuda);
        targets["jax_gna_bwd"] = handler_capsule(JaxGnaBwdCuda);
        targets["jax_gna_fwd_fp8"] = handler_capsule(JaxGnaFwdFp8Cuda);
#endif
        return targets;
      },
      "FFI target name -> handler capsule for platform 'CUDA' (empty without CUDA).");
  m.def("built_cuda_archs", &built_cuda_archs,
        "CUDA architectures with kernels in this build, e.g. ['90a'] (empty without CUDA).");
  m.def(
      "cuda_has_backward",
      [] {
#ifdef JAX_GNA_WITH_CUDA
        return gna::cuda_ffi::has_backward();
#else
        return false;
#endif
      },
      "Whether the CUDA handler of jax_gna_bwd has kernels (else it returns UNIMPLEMENTED).");
  m.def("built_cuda_kernels", &built_cuda_kernels,
        "The CUDA kernels compiled into this build, one '<family>:<unit>' each (e.g. "
        "'sm90:fwd_kBF16_d128_r2_c0', 'sm90:bwd_kBF16_d128_r2'; cmake/CudaKernels.cmake).");
  m.attr("kernel_set") = JAX_GNA_KERNEL_SET_NAME;
#ifdef JAX_GNA_DEBUG_KERNELS_BUILD
  m.attr("debug_kernels") = true;
#else
  m.attr("debug_kernels") = false;
#endif
  m.attr("xla_ffi_api_version") = nb::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);

  m.def(
      "window",
      [](int64_t length, int64_t kernel_size, int64_t stride, int64_t dilation, bool is_causal) {
        const gna::Axis a = axis(length, kernel_size, stride, dilation, is_causal);
        std::pair<Ints, Ints> result;
        for (int i = 0; i < a.length; ++i) {
          const gna::Range w = gna::window(a, i);
          result.first.push_back(w.start);
          result.second.push_back(w.end);
        }
        return result;
      },
      nb::arg("length"), nb::arg("kernel_size"), nb::arg("stride") = 1, nb::arg("dilation") = 1,
      nb::arg("is_causal") = false,
      "(start, end) of every query's window along one axis, by cuda/include/gna/window.h.");
  m.def(
      "inverse_window",
      [](int64_t length, int64_t kernel_size, int64_t stride, int64_t dilation, bool is_causal) {
        const gna::Axis a = axis(length, kernel_size, stride, dilation, is_causal);
        std::pair<Ints, Ints> result;
        for (int j = 0; j < a.length; ++j) {
          const gna::Range w = gna::inverse_window(a, j);
          result.first.push_back(w.start);
          result.second.push_back(w.end);
        }
        return result;
      },
      nb::arg("length"), nb::arg("kernel_size"), nb::arg("stride") = 1, nb::arg("dilation") = 1,
      nb::arg("is_causal") = false,
      "(q_start, q_end) of the queries attending to every key along one axis (window.h).");

  m.def(
      "view_keys",
      [](int64_t length, int64_t kernel_size, int64_t stride, int64_t dilation, bool is_causal,
         const Ints& view) {
        const gna::Axis a = axis(length, kernel_size, stride, dilation, is_causal);
        if (view.size() != 4)
          throw nb::value_error("view must be (q_offset, q_length, kv_offset, kv_length)");
        const std::string error =
            gna::view_error(0, a.length, a.dilation, view[0], view[1], view[2], view[3]);
        if (!error.empty()) throw nb::value_error(error.c_str());
        const gna::AxisView v{static_cast<int>(view[0]), static_cast<int>(view[1]),
                              static_cast<int>(view[2]), static_cast<int>(view[3])};
        std::pair<Ints, Ints> result;
        for (int i = 0; i < v.q_length; ++i) {
          const gna::ViewKeys keys = gna::view_keys(a, v, i);
          result.first.push_back(keys.key_first);
          result.second.push_back(keys.count);
        }
        return result;
      },
      nb::arg("length"), nb::arg("kernel_size"), nb::arg("stride"), nb::arg("dilation"),
      nb::arg("is_causal"), nb::arg("view"),
      "(first key, key count) of every local query of a view (q_offset, q_length, kv_offset, "
      "kv_length) of one axis: its keys are the local keys first + n * dilation, n < count "
      "(window.h view_keys).");
  m.def(
      "fwd_workspace_bytes",
      [](const Ints& q, const Ints& k, const Ints& v, const std::string& dtype,
         const Ints& kernel_size, const Ints& stride, const Ints& dilation, const Ints& is_causal,
         const Ints& view) -> size_t {
        const gna::Problem p =
            problem(q, k, v, dtype, kernel_size, stride, dilation, is_causal, {}, {}, view);
        size_t bytes = 0;  // the CPU kernels need none
#ifdef JAX_GNA_WITH_CUDA
        bytes = std::max(bytes, gna::cuda_ffi::fwd_workspace_bytes(p));
#endif
        (void)p;
        return bytes;
      },
      nb::arg("q_shape"), nb::arg("k_shape"), nb::arg("v_shape"), nb::arg("dtype"),
      nb::arg("kernel_size"), nb::arg("stride"), nb::arg("dilation"), nb::arg("is_causal"),
      nb::arg("view") = Ints{},
      "Bytes of the uint8 workspace output of jax_gna_fwd (the largest any handler needs).");
  m.def(
      "bwd_workspace_bytes",
      [](const Ints& q, const Ints& k, const Ints& v, const std::string& dtype,
         const Ints& kernel_size, const Ints& stride, const Ints& dilation, const Ints& is_causal,
         const Ints& view, bool deterministic, const Ints& q_tile, const Ints& kv_tile) -> size_t {
        const gna::Problem p = problem(q, k, v, dtype, kernel_size, stride, dilation, is_causal,
                                       q_tile, kv_tile, view);
        size_t bytes = 0;
#ifdef JAX_GNA_WITH_CUDA
        bytes = std::max(bytes, gna::cuda_ffi::bwd_workspace_bytes(p, deterministic));
#endif
        (void)p;
        (void)deterministic;
        return bytes;
      },
      nb::arg("q_shape"), nb::arg("k_shape"), nb::arg("v_shape"), nb::arg("dtype"),
      nb::arg("kernel_size"), nb::arg("stride"), nb::arg("dilation"), nb::arg("is_causal"),
      nb::arg("view") = Ints{}, nb::arg("deterministic") = false, nb::arg("q_tile") = Ints{},
      nb::arg("kv_tile") = Ints{},
      "Bytes of the uint8 workspace output of jax_gna_bwd (the largest any handler needs) in "
      "the backward mode `deterministic` with the backward's tile shapes q_tile/kv_tile (empty: "
      "the launcher's choice).");
  m.def(
      "cuda_fwd_can_implement",
      [](const Ints& q, const Ints& k, const Ints& v, const std::string& dtype,
         const Ints& kernel_size, const Ints& stride, const Ints& dilation, const Ints& is_causal,
         int cc_major, int cc_minor, const Ints& q_tile, const Ints& kv_tile,
         const Ints& view) -> std::optional<std::string> {
        const gna::Problem p = problem(q, k, v, dtype, kernel_size, stride, dilation, is_causal,
                                       q_tile, kv_tile, view);
#ifdef JAX_GNA_WITH_CUDA
        if (const char* reason = gna::cuda_ffi::fwd_can_implement(p, cc_major, cc_minor))
          return std::string(reason);
        return std::nullopt;
#else
        (void)p, (void)cc_major, (void)cc_minor;
        return std::string("this build of jax_gna has no CUDA kernels");
#endif
      },
      nb::arg("q_shape"), nb::arg("k_shape"), nb::arg("v_shape"), nb::arg("dtype"),
      nb::arg("kernel_size"), nb::arg("stride"), nb::arg("dilation"), nb::arg("is_causal"),
      nb::arg("cc_major") = -1, nb::arg("cc_minor") = 0, nb::arg("q_tile") = Ints{},
      nb::arg("kv_tile") = Ints{}, nb::arg("view") = Ints{},
      "None if the CUDA forward kernels can run this problem on a device of compute capability "
      "cc_major.cc_minor (cc_major < 0: any built arch) with the tile shapes q_tile/kv_tile "
      "(empty: whichever compiled configuration fits), else the reason.");
  m.def(
      "cuda_bwd_can_implement",
      [](const Ints& q, const Ints& k, const Ints& v, const std::string& dtype,
         const Ints& kernel_size, const Ints& stride, const Ints& dilation, const Ints& is_causal,
         int cc_major, int cc_minor, const Ints& q_tile, const Ints& kv_tile,
         const Ints& view) -> std::optional<std::string> {
        const gna::Problem p = problem(q, k, v, dtype, kernel_size, stride, dilation, is_causal,
                                       q_tile, kv_tile, view);
#ifdef JAX_GNA_WITH_CUDA
        if (const char* reason = gna::cuda_ffi::bwd_can_implement(p, cc_major, cc_minor))
          return std::string(reason);
        return std::nullopt;
#else
        (void)p, (void)cc_major, (void)cc_minor;
        return std::string("this build of jax_gna has no CUDA kernels");
#endif
      },
      nb::arg("q_shape"), nb::arg("k_shape"), nb::arg("v_shape"), nb::arg("dtype"),
      nb::arg("kernel_size"), nb::arg("stride"), nb::arg("dilation"), nb::arg("is_causal"),
      nb::arg("cc_major") = -1, nb::arg("cc_minor") = 0, nb::arg("q_tile") = Ints{},
      nb::arg("kv_tile") = Ints{}, nb::arg("view") = Ints{},
      "None if the CUDA backward kernels can run this problem on a device of compute capability "
      "cc_major.cc_minor (cc_major < 0: any built arch) with the backward's tile shapes "
      "q_tile/kv_tile (empty: whichever compiled configuration fits), else the reason.");
  m.def(
      "cuda_fwd_tile_configs",
      [] {
        nb::dict table;  // rank -> head dim -> list of (q tile, kv tile), the default first
#ifdef JAX_GNA_WITH_CUDA
        for (const auto& c : gna::cuda_ffi::fwd_tile_configs()) {
          nb::object rank = nb::int_(c.rank), head_dim = nb::int_(c.head_dim);
          if (!table.contains(rank)) table[rank] = nb::dict();
          nb::dict by_dim = nb::borrow<nb::dict>(table[rank]);
          if (!by_dim.contains(head_dim)) by_dim[head_dim] = nb::list();
          nb::borrow<nb::list>(by_dim[head_dim])
              .append(nb::make_tuple(nb::tuple(nb::cast(c.q)), nb::tuple(nb::cast(c.kv))));
        }
#endif
        return table;
      },
      "The CUDA forward kernels' tile configurations: {rank: {head_dim: [(q_tile, kv_tile), "
      "...]}}, each default first (empty without CUDA kernels); jax_gna/_tiles.py lists the "
      "same.");
}
