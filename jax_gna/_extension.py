"""The compiled extension `jax_gna._ext`, loaded once, with its FFI targets registered.

Importing this module never fails: without a built extension `ext` is None and `missing`
says why, so the pure-JAX implementations keep working. With it, the handlers of
``jax_gna_fwd`` / ``jax_gna_bwd`` are registered for the ``cpu`` platform and, in builds with
CUDA kernels, for ``CUDA`` (XLA picks the handler of the platform a computation runs on).
"""

from __future__ import annotations

import re
import types

import jax

from jax_gna import _kernel_table

FWD_TARGET = "jax_gna_fwd"
BWD_TARGET = "jax_gna_bwd"
FWD_FP8_TARGET = "jax_gna_fwd_fp8"  # CUDA only: float8_e4m3fn inputs with descales

ext: types.ModuleType | None
missing: str | None
try:
    from jax_gna import _ext as ext
except ImportError as e:  # a source checkout without a build, or a broken build
    ext = None
    missing = (
        f"the compiled extension jax_gna._ext is not built ({e}); reinstall with "
        "`pip install -e .` (a C++ compiler, CMake and nanobind are needed)"
    )
else:
    missing = None


def _register() -> None:
    if ext is None:
        return
    for name, capsule in ext.cpu_targets().items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    # Registering for CUDA on a machine without a GPU is fine: XLA queues it until (unless)
    # the CUDA backend loads.
    for name, capsule in ext.cuda_targets().items():
        jax.ffi.register_ffi_target(name, capsule, platform="CUDA")


_register()


def built_cuda_archs() -> tuple[str, ...]:
    """CUDA architectures this build has kernels for, e.g. ``('90a',)``; empty without CUDA."""
    return tuple(ext.built_cuda_archs()) if ext is not None else ()


# A compiled kernel unit as `build_info()` names it (`Kernel.unit` in _kernel_table.py): forward
# kernels carry their tile configuration index, backward kernels have none.
_KERNEL_UNIT = re.compile(
    r"^sm(?P<arch>\d+):(?P<direction>fwd|bwd)_k(?P<dtype>[A-Z0-9]+)_d(?P<head_dim>\d+)"
    r"_r(?P<rank>\d+)(?:_c(?P<config>\d+))?$"
)
_KERNEL_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "E4M3": "float8_e4m3fn"}


def built_cuda_kernels() -> list[dict[str, object]]:
    """The CUDA kernels compiled into this build, one dict each.

    Keys: ``arch`` (``"90a"``, ``"100a"``), ``direction`` (``"forward"``/``"backward"``),
    ``dtype``, ``head_dim``, ``rank``, ``config`` (the kernel's index in its direction's tile
    table) and its ``q_tile``/``kv_tile`` shapes (the forward's as the extension reports them,
    the backward's from the kernel table). Empty without CUDA kernels.
    """
    if ext is None:
        return []
    tiles = ext.cuda_fwd_tile_configs()
    bwd_tiles = {
        (f"{k.arch[2:]}a", k.dtype, k.head_dim, k.rank, k.config): (k.q, k.kv)
        for k in _kernel_table.kernels()
        if k.direction == "bwd"
    }
    kernels = []
    for unit in ext.built_cuda_kernels():
        m = _KERNEL_UNIT.match(unit)
        if m is None:
            raise RuntimeError(f"jax_gna._ext reports an unknown kernel unit {unit!r}")
        rank, head_dim = int(m["rank"]), int(m["head_dim"])
        kernel = {
            "arch": m["arch"] + "a",
            "direction": "forward" if m["direction"] == "fwd" else "backward",
            "dtype": _KERNEL_DTYPES[m["dtype"]],
            "head_dim": head_dim,
            "rank": rank,
        }
        if m["config"] is not None:
            config = int(m["config"])
            if m["direction"] == "fwd":
                q_tile, kv_tile = tiles[rank][head_dim][config]
            else:
                key = (kernel["arch"], kernel["dtype"], head_dim, rank, config)
                q_tile, kv_tile = bwd_tiles[key]
            kernel.update(config=config, q_tile=tuple(q_tile), kv_tile=tuple(kv_tile))
        kernels.append(kernel)
    return kernels


def build_info() -> dict[str, object]:
    """What this build contains: for bug reports and for checking a build's kernels."""
    if ext is None:
        return {"extension": missing}
    return {
        "extension": ext.__file__,
        "cpu_targets": sorted(ext.cpu_targets()),
        "cuda_targets": sorted(ext.cuda_targets()),
        "cuda_archs": built_cuda_archs(),
        "cuda_backward": ext.cuda_has_backward(),
        "kernel_set": ext.kernel_set,
        "cuda_kernels": built_cuda_kernels(),
        # The kernels' debug build (JAX_GNA_DEBUG_KERNELS=ON at build time).
        "debug_kernels": bool(getattr(ext, "debug_kernels", False)),
        # {rank: {head_dim: [(q_tile, kv_tile), ...]}}, the default first (jax_gna/_tiles.py).
        "cuda_forward_tiles": ext.cuda_fwd_tile_configs(),
        "xla_ffi_api_version": tuple(ext.xla_ffi_api_version),
    }
