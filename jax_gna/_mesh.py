"""Mesh helpers shared by the op layer and the xla path: which mesh a value is typed with, and
the one rule deriving every operand's sharding from the query's spec."""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def explicit_mesh(x: jax.Array):
    """The mesh of `x`'s type if it has Explicit axes (where types carry shardings), else None."""
    mesh = getattr(jax.typeof(x).sharding, "mesh", None)
    if mesh is None or mesh.empty:
        return None
    if jax.sharding.AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    return mesh


def result_sharding(like: jax.Array, keep_last: bool) -> NamedSharding:
    """The sharding of a result laid out like `like` (an output or gradient, `keep_last`) or
    like `like` without its last dim (lse); a result's last dim is never sharded. Call it on
    values typed with an Explicit mesh (`explicit_mesh`)."""
    sharding = jax.typeof(like).sharding
    spec = tuple(sharding.spec) + (None,) * (like.ndim - len(sharding.spec))
    spec = spec[:-1] + (None,) if keep_last else spec[:-1]
    return NamedSharding(sharding.mesh, P(*spec))


def on_auto_axes(fn, query: jax.Array, *args):
    """``(out, lse) = fn(query, *args)`` for a `query` typed with an Explicit mesh, run with the
    mesh's Explicit axes made Auto, for code whose reshapes cannot re-type sharded dims: XLA
    partitions it, and the results get the query's sharding. No mesh context is needed (the
    shardings name the mesh)."""
    mesh = explicit_mesh(query)
    out_sharding = (result_sharding(query, True), result_sharding(query, False))
    auto = jax.sharding.auto_axes(fn, axes=mesh.explicit_axes, out_sharding=out_sharding)
    return auto(query, *args)


def _mesh_axes_size(mesh, axes) -> int:
    if axes is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    size = 1
    for name in names:
        size *= mesh.shape[name]
    return size


def shardings(mesh, query_info, rank: int, kv_heads: int):
    """(sharding of [B..., X..., heads, dim] operands, sharding of [B..., X..., heads] ones),
    both derived from q's spec: batch and head axes kept, spatial and head dims replicated.
    Heads stay sharded only if the mesh axes split the kv heads evenly too (then every shard
    holds whole GQA groups); otherwise they are replicated."""
    ndim = len(query_info.shape)
    spec = tuple(getattr(query_info.sharding, "spec", ()))
    spec = spec + (None,) * (ndim - len(spec))
    n_batch = ndim - rank - 2
    heads = spec[n_batch + rank]
    if kv_heads % _mesh_axes_size(mesh, heads):
        heads = None
    rows = (*spec[:n_batch], *([None] * rank), heads)
    return NamedSharding(mesh, P(*rows, None)), NamedSharding(mesh, P(*rows))


def per_shard(fn, mesh, query_info, rank: int, kv_heads: int, arg_kinds: str, out_kinds: str):
    """`fn` run independently on every batch/head shard of an Explicit mesh (`jax.shard_map`),
    for code whose reshapes cannot re-type sharded dims. Kinds per argument and result: ``t``
    for ``[B..., X..., heads, dim]`` tensors, ``r`` for ``[B..., X..., heads]`` rows."""
    tensor, rows = shardings(mesh, query_info, rank, kv_heads)
    kinds = {"t": tensor, "r": rows}
    in_specs = tuple(kinds[k].spec for k in arg_kinds)
    out_specs = tuple(kinds[k].spec for k in out_kinds)

    def run(*args):
        # NamedShardings, not bare specs: those need a mesh context (`jax.set_mesh`).
        args = tuple(jax.sharding.reshard(x, kinds[k]) for x, k in zip(args, arg_kinds))
        mapped = jax.shard_map(
            fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )
        return mapped(*args)

    return run
