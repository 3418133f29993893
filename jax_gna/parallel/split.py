"""A spatial axis split over a mesh axis: the specs of the split arrays, the padding to equal
shards, and the `jax.shard_map` both strategies (halo and heads) run their device body in."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_gna._halo.plan import AxisName
from jax_gna._mesh import axis_names, layout_of, shardings


def mesh_of(mesh, query):
    """`mesh`, else the one set by `jax.set_mesh`, else the one `query` is sharded over (as a
    JAX user expects, sharded inputs need no mesh context)."""
    if mesh is not None:
        return mesh
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is not None and not mesh.empty:
        return mesh
    layout = layout_of(query)
    if layout is None:
        raise ValueError(
            "`gna_sharded` needs a mesh: pass `mesh=`, call it under `jax.set_mesh(mesh)` or "
            "pass a `query` sharded over the mesh."
        )
    return layout[0]


def specs(mesh, query, kv_heads: int, rank: int, spatial_axis: int, axis_name: AxisName):
    """(tensor spec, lse spec, extra-token spec): batch and heads keep the query's sharding
    when its type carries one (Explicit meshes), other spatial axes are replicated, the
    sharded spatial axis goes over `axis_name`."""
    tensor, _ = shardings(mesh, jax.typeof(query), rank, kv_heads)
    used = set(axis_names(axis_name))

    def free(entry):  # a mesh axis can shard one dim only
        return None if entry is None or used & set(axis_names(entry)) else entry

    spec = [free(e) for e in tensor.spec]
    n_batch = query.ndim - rank - 2
    spec[n_batch + spatial_axis] = axis_name
    heads = spec[n_batch + rank]
    return P(*spec), P(*spec[:-1]), P(*spec[:n_batch], None, heads, None)


def pad_axis(x: jax.Array, dim: int, total: int) -> jax.Array:
    """`x` padded with zeros at the end of `dim` to `total` positions."""
    if x.shape[dim] == total:
        return x
    widths = [(0, 0)] * x.ndim
    widths[dim] = (0, total - x.shape[dim])
    return jnp.pad(x, widths)


def _explicit(mesh) -> bool:
    return jax.sharding.AxisType.Explicit in tuple(getattr(mesh, "axis_types", ()))


def run_sharded(
    body,
    mesh,
    split_specs: tuple,
    dim: int,
    total: int,
    query,
    key,
    value,
    extra_keys,
    extra_values,
):
    """``(out, lse)`` of `body` run per shard (`jax.shard_map`) on q/k/v padded along `dim` to
    `total` positions (equal shards), and extra tokens if any; `split_specs` are (tensor spec,
    lse spec, extra-token spec). The padding is sliced off the results."""
    tensor, lse_spec, extra = split_specs
    length = query.shape[dim]
    args = [pad_axis(x, dim, total) for x in (query, key, value)]
    in_specs = [tensor] * 3
    if extra_keys is not None:
        args += [extra_keys, extra_values]
        in_specs += [extra] * 2
    if _explicit(mesh):
        # shard_map on an Explicit mesh asserts the specs instead of resharding.
        args = [jax.sharding.reshard(x, NamedSharding(mesh, s)) for x, s in zip(args, in_specs)]
    run = jax.shard_map(
        body, mesh=mesh, in_specs=tuple(in_specs), out_specs=(tensor, lse_spec), check_vma=False
    )
    out, lse = run(*args)
    if length != total and _explicit(mesh):
        # An Explicit mesh types every sharding, and an extent the devices do not divide cannot
        # stay split: the results gather along `dim` before the padding is cut off.
        out, lse = (
            jax.sharding.reshard(x, NamedSharding(mesh, _unsplit(spec, dim)))
            for x, spec in ((out, tensor), (lse, lse_spec))
        )
    return tuple(jax.lax.slice_in_dim(x, 0, length, axis=dim) for x in (out, lse))


def _unsplit(spec, dim: int):
    """`spec` with axis `dim` not split."""
    return P(*(None if i == dim else entry for i, entry in enumerate(spec)))
