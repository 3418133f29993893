"""The compiled extension `jax_gna._ext`, loaded once, with its FFI targets registered.

Importing this module never fails: without a built extension `ext` is None and `missing`
says why, so the pure-JAX implementations keep working. With it, the handlers of
``jax_gna_fwd`` / ``jax_gna_bwd`` are registered for the ``cpu`` platform and, in builds with
CUDA kernels, for ``CUDA`` (XLA picks the handler of the platform a computation runs on).
"""

from __future__ import annotations

import types

import jax

FWD_TARGET = "jax_gna_fwd"
BWD_TARGET = "jax_gna_bwd"

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
        # {rank: {head_dim: [(q_tile, kv_tile), ...]}}, the default first (jax_gna/_tiles.py).
        "cuda_forward_tiles": ext.cuda_fwd_tile_configs(),
        "xla_ffi_api_version": tuple(ext.xla_ffi_api_version),
    }
