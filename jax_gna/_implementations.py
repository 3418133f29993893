"""Which implementation runs a call: probes that return the reason they refuse, and the fixed
order ``implementation=None`` walks.

Order for ``None``: ``"cuda"`` (our kernels, on a GPU they support), ``"cpu"`` (our C++ FFI
handler, on the CPU), then ``"xla"`` (portable pure JAX, any backend). ``"reference"`` (dense
masked softmax, O(N^2) memory) is never picked automatically.

Tile shapes (``q_tile_shape``/``kv_tile_shape``) belong to the ``"cuda"`` kernels: an explicit
other implementation refuses them; ``None`` honours them when it picks ``"cuda"`` (and raises if
the kernels could run the call but not with those tiles) and drops them otherwise, so that one
model runs everywhere.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax

from jax_gna import _extension
from jax_gna._mesh import explicit_mesh, per_shard
from jax_gna._params import GnaParams
from jax_gna._xla import gna_xla

Implementation = Literal["cuda", "cpu", "xla", "reference"]
IMPLEMENTATIONS: tuple[str, ...] = ("cuda", "cpu", "xla", "reference")
AUTO_ORDER: tuple[str, ...] = ("cuda", "cpu", "xla")


def _ops():
    """The FFI op layer, or the reason it cannot be used (the compiled extension is optional)."""
    try:
        from jax_gna import _ops
    except ImportError as e:  # pragma: no cover - depends on the build
        return None, f"the compiled extension is not available ({e})"
    return _ops, None


@functools.cache
def extension_takes_window_one() -> bool:
    """Whether the built extension accepts ``kernel_size`` 1 on an axis (a cheap probe of its
    window validator; builds from before window 1 was legal refuse it)."""
    if _extension.ext is None:
        return False
    try:
        _extension.ext.window(1, 1)
    except ValueError:
        return False
    return True


def platform_of(query: jax.Array) -> str:
    """The platform the call will run on: the query's device for a concrete array; under
    tracing, jax's default device (``jax.default_device``) if one is set, else the default
    backend."""
    try:
        devices = query.devices()
    except (AttributeError, jax.errors.ConcretizationTypeError, RuntimeError):
        device = jax.config.jax_default_device
        if device is None:
            return jax.default_backend()
        return getattr(device, "platform", device)
    return next(iter(devices)).platform


def why_not(
    implementation: str, query: jax.Array, key: jax.Array, value: jax.Array, params: GnaParams
) -> str | None:
    """None if `implementation` can run this call, else the reason it cannot."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown `implementation` {implementation!r}; expected None or one of "
            f"{IMPLEMENTATIONS}."
        )
    if params.has_tiles and implementation != "cuda":
        return (
            "`q_tile_shape`/`kv_tile_shape` choose the tiles of the 'cuda' kernels and "
            f"{implementation!r} has none (leave them unset, or use implementation='cuda' or None)"
        )
    if implementation in ("xla", "reference"):
        return None
    platform = platform_of(query)
    wanted = "gpu" if implementation == "cuda" else "cpu"
    if platform != wanted:
        return (
            f"it runs on {wanted.upper()} and this call runs on {platform.upper()} (a traced "
            "call runs on jax's default device: trace it inside "
            f"`with jax.default_device(jax.devices({wanted!r})[0])` to run there)"
        )
    ops, reason = _ops()
    if ops is None:
        return reason
    if 1 in params.kernel_size and not extension_takes_window_one():
        return "this build of the extension needs kernel_size >= 2 on every axis (rebuild it)"
    return ops.why_not(implementation, query, key, value, params)


def supported(
    query: jax.Array, key: jax.Array, value: jax.Array, params: GnaParams
) -> dict[str, str | None]:
    """Every implementation mapped to None (usable) or the reason it is not."""
    return {impl: why_not(impl, query, key, value, params) for impl in IMPLEMENTATIONS}


def select(
    implementation: str | None,
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    params: GnaParams,
) -> str:
    """The implementation to run: the first usable one in `AUTO_ORDER` for None; the requested
    one otherwise, or NotImplementedError saying why it cannot run and what would. With tile
    shapes, None picks as without them and raises if it picks ``"cuda"`` and the kernels lack
    those tiles (see the module docstring)."""
    if implementation is None:
        for impl in AUTO_ORDER:
            if why_not(impl, query, key, value, params.without_tiles()) is None:
                if impl == "cuda" and params.has_tiles:
                    reason = why_not(impl, query, key, value, params)
                    if reason is not None:
                        raise NotImplementedError(
                            "implementation=None picked 'cuda' for this call, and it refuses the "
                            f"tile shapes: {reason}."
                        )
                return impl
        raise AssertionError("unreachable: the xla implementation always runs")
    if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown `implementation` {implementation!r}; expected None or one of "
            f"{IMPLEMENTATIONS}."
        )
    reason = why_not(implementation, query, key, value, params)
    if reason is not None:
        untiled = params.without_tiles()
        usable = [i for i in IMPLEMENTATIONS if why_not(i, query, key, value, untiled) is None]
        tiles = " without `q_tile_shape`/`kv_tile_shape`" if params.has_tiles else ""
        raise NotImplementedError(
            f"implementation={implementation!r} cannot run this call: {reason}. "
            f"Usable here{tiles}: {usable} (or implementation=None to pick the best)."
        )
    return implementation


def run(
    implementation: str, query: jax.Array, key: jax.Array, value: jax.Array, params: GnaParams
) -> tuple[jax.Array, jax.Array]:
    """``(out, lse)`` of the neighborhood part by a non-reference implementation."""
    if implementation == "xla":
        mesh = explicit_mesh(query)
        if mesh is None:
            return gna_xla(query, key, value, params)
        # Its reshapes cannot re-type sharded dims: run it per batch/head shard.
        attend = lambda q, k, v: gna_xla(q, k, v, params)  # noqa: E731
        kv_heads = key.shape[-2]
        run = per_shard(attend, mesh, jax.typeof(query), params.rank, kv_heads, "ttt", "tr")
        return run(query, key, value)
    ops, reason = _ops()
    if ops is None:  # pragma: no cover - `select` refused it already
        raise NotImplementedError(reason)
    if implementation == "cuda":
        params = ops.cuda_tiles(query, key, value, params)
    return ops.gna_ffi(query, key, value, params)
