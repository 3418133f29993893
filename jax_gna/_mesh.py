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
    specs = {"t": tensor.spec, "r": rows.spec}
    in_specs = tuple(specs[k] for k in arg_kinds)
    out_specs = tuple(specs[k] for k in out_kinds)

    def run(*args):
        args = tuple(jax.sharding.reshard(x, s) for x, s in zip(args, in_specs))
        mapped = jax.shard_map(
            fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )
        return mapped(*args)

    return run
