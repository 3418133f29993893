"""Where values live: which mesh a value is typed or sharded with, the platform of an array or a
mesh, and the one rule deriving every operand's sharding from the query's spec."""

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


def axis_names(axes) -> tuple:
    """An ``axis_name`` argument or a PartitionSpec entry (one mesh axis or a tuple of them) as
    a tuple of mesh axis names."""
    return axes if isinstance(axes, tuple) else (axes,)


def axis_size(mesh, axes) -> int:
    """The devices along mesh axes `axes` (one axis name or a tuple of them); ValueError for a
    name that is not an axis of `mesh`."""
    size = 1
    for name in axis_names(axes):
        if name not in mesh.shape:
            raise ValueError(
                f"`axis_name` {name!r} is not an axis of the mesh (axes {tuple(mesh.shape)})."
            )
        size *= mesh.shape[name]
    return size


def mesh_platform(mesh) -> str:
    """The platform of `mesh`'s devices, ``"gpu"`` for CUDA and ROCm (JAX's default backend
    where an abstract mesh does not say)."""
    if isinstance(mesh, jax.sharding.Mesh):
        platform = mesh.devices.flat[0].platform
    else:
        device = getattr(mesh, "abstract_device", None)
        platform = getattr(device, "platform", None) or jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm") else platform


def array_platform(x: jax.Array) -> str:
    """The platform a call on `x` runs on: its device for a concrete array; under tracing,
    jax's default device (``jax.default_device``) if one is set, else the default backend."""
    try:
        devices = x.devices()
    except (AttributeError, jax.errors.ConcretizationTypeError, RuntimeError):
        device = jax.config.jax_default_device
        if device is None:
            return jax.default_backend()
        return getattr(device, "platform", device)
    return next(iter(devices)).platform


def layout_of(x: jax.Array):
    """``(mesh, spec)`` of a sharded `x`: its type's in an Explicit mesh under tracing, or a
    concrete array's NamedSharding; None if it has neither."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and not mesh.empty and any(spec or ()):
        return mesh, spec
    # Auto meshes type values without a spec; a concrete array still knows its sharding.
    concrete = getattr(x, "sharding", None) if not isinstance(x, jax.core.Tracer) else None
    if isinstance(concrete, NamedSharding):
        return concrete.mesh, concrete.spec
    return None


def spatially_sharded(query: jax.Array, rank: int) -> bool:
    """Whether `query` (``[B..., X..., H, D]`` with `rank` spatial dims) arrives with a spatial
    dim sharded (`layout_of`): the cheap test before asking context parallelism to split it."""
    layout = layout_of(query)
    if layout is None:
        return False
    n_batch = query.ndim - rank - 2
    return any(entry is not None for entry in tuple(layout[1])[n_batch : n_batch + rank])


def shardings(mesh, query_info, rank: int, kv_heads: int):
    """(sharding of [B..., X..., heads, dim] operands, sharding of [B..., X..., heads] ones:
    lse and its cotangent), both derived from q's spec: batch and head axes kept, spatial and
    head dims replicated. Heads stay sharded only if the mesh axes split the kv heads evenly
    too (then every shard holds whole GQA groups); otherwise they are replicated."""
    ndim = len(query_info.shape)
    spec = tuple(getattr(query_info.sharding, "spec", ()))
    spec = spec + (None,) * (ndim - len(spec))
    n_batch = ndim - rank - 2
    heads = spec[n_batch + rank]
    if heads is not None and kv_heads % axis_size(mesh, heads):
        heads = None
    lse_spec = (*spec[:n_batch], *([None] * rank), heads)
    return NamedSharding(mesh, P(*lse_spec, None)), NamedSharding(mesh, P(*lse_spec))


def per_shard(fn, mesh, query_info, rank: int, kv_heads: int, arg_kinds: str, out_kinds: str):
    """`fn` run independently on every batch/head shard of an Explicit mesh (`jax.shard_map`),
    for code whose reshapes cannot re-type sharded dims. Kinds per argument and result: ``t``
    for ``[B..., X..., heads, dim]`` tensors, ``l`` for ``[B..., X..., heads]`` ones (lse)."""
    tensor, lse = shardings(mesh, query_info, rank, kv_heads)
    kinds = {"t": tensor, "l": lse}
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
