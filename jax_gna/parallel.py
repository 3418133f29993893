"""Context parallelism: GNA with one spatial axis sharded over a mesh axis, by halo exchange.

Each device holds a contiguous block (a shard) of one spatial axis of ``query``, ``key`` and
``value``. A query's window reaches only a bounded distance along that axis, so instead of
gathering the whole axis (what XLA does for an op whose spatial dims must be replicated) every
device receives from its two neighbours the keys and values its own queries' windows reach
(`jax.lax.ppermute` inside `jax.shard_map`) and attends locally with the *global* windows:
windows shifting at the global borders, stride groups and dilation groups that cross shard
boundaries and causal axes all come out exactly as on one device. The halo sizes are computed
from the window math of `jax_gna._window` (the same rule the kernels use), per side, as the
largest reach over all shards; a causal axis needs no right halo.

The local attention is a *view* of the whole problem (`cuda/include/gna/window.h` AxisView):
the shard's queries against its key block (its shard plus the halos) with the windows of the
whole axis, so no query is computed twice. It runs the FFI kernels with that view (``"cpu"``
on CPUs; ``"cuda"`` on GPUs where `jax_gna._ops.why_not` says the kernels take it), or the
memory-efficient ``xla`` tiles with the shard's window table. FFI attributes are static and
every device has its own offsets, so the FFI call is a `jax.lax.switch` over the device index
with one branch per device. Gradients are exact: the backward of `jax.lax.ppermute` sends the
halo's key/value gradients back to the devices that own them.

The shard-local functions (`attend_shard`, `attend_shard_backward`) serve two callers: the
`jax.shard_map` of `gna_sharded`, and the `custom_partitioning` rule of the FFI op
(`jax_gna._ops`), which lowers a spatially sharded call to them under jit on Auto meshes, where
traced values carry no sharding for `jax_gna.gna` to route by (`plan_split` decides for both).

Shape legend: ``B...`` batch dims, ``X...`` spatial dims, ``H`` query heads, ``Hkv`` key/value
heads, ``D`` query/key head dim, ``Dv`` value head dim, ``E`` additional key/value tokens.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jax_gna import _additional_kv, _window, _xla, reference
from jax_gna._mesh import shardings
from jax_gna._params import GnaParams

IntOrTuple = int | tuple[int, ...]
BoolOrTuple = bool | tuple[bool, ...]
AxisName = str | tuple[str, ...]
IMPLEMENTATIONS = ("cuda", "cpu", "xla", "reference")


@dataclasses.dataclass(frozen=True)
class Halo:
    """How one spatial axis is split: positions per shard and the halo each shard receives.

    Attributes:
      length: the axis' global extent.
      devices: number of shards.
      shard: positions per shard (the last ones may hold padding when ``devices`` does not
        divide ``length``).
      left: positions every shard receives from its left neighbour (the largest reach to the
        left of any shard's queries).
      right: positions received from the right neighbour.
    """

    length: int
    devices: int
    shard: int
    left: int
    right: int

    @property
    def min_shard(self) -> int:
        """The smallest shard that can provide this halo (a halo comes from one neighbour)."""
        return max(self.left, self.right)


def halo(
    length: int,
    devices: int,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    is_causal: bool = False,
) -> Halo:
    """The halo of one axis of extent `length` split into `devices` contiguous shards.

    The keys a shard needs are the union of its queries' windows (`jax_gna._window`); the halo
    on each side is how far that union reaches past the shard, maximised over shards (every
    shard exchanges the same amount).
    """
    shard = -(-length // devices)
    start, end = _window.neighborhood(length, kernel_size, stride, dilation, is_causal)
    group = np.arange(length) % dilation
    first_key = start * dilation + group  # positions, not group coordinates
    last_key = (end - 1) * dilation + group
    left = right = 0
    for p in range(devices):
        lo, hi = p * shard, min((p + 1) * shard, length)
        if lo >= hi:  # a shard of padding only
            continue
        left = max(left, lo - int(first_key[lo:hi].min()))
        right = max(right, int(last_key[lo:hi].max()) + 1 - (p + 1) * shard)
    return Halo(length, devices, shard, left, right)


def _check_halo(h: Halo, spatial_axis: int, axis_name: AxisName) -> None:
    if h.min_shard > h.shard:
        raise ValueError(
            f"Spatial axis {spatial_axis} (extent {h.length}) split over {h.devices} devices of "
            f"mesh axis {axis_name!r} gives shards of {h.shard} positions, but the windows need "
            f"a halo of {h.left} position(s) from the left and {h.right} from the right neighbour;"
            f" the minimum shard size is {h.min_shard}. Use at most "
            f"{max(1, h.length // h.min_shard)} devices along this axis, or shard another axis."
        )


# ---------------------------------------------------------------------------------------------
# The local problem of every shard (static NumPy tables, one row per device)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: static jit arguments
class _Local:
    """What every shard computes: its query block against its key block (halo included).

    ``pad`` zero positions go in front of the left halo so that a shard's key block starts at
    the same dilation phase as its queries (the xla tiling pairs query and key groups by
    position modulo the dilation)."""

    halo: Halo
    axis: int  # the sharded spatial axis
    pad: int
    plans: tuple  # `_xla._AxisPlan` per axis (the sharded axis: device 0's; shapes are shared)
    tables: tuple  # `_xla._tile_table` arrays, stacked over devices
    masks: tuple  # per axis [devices, queries, keys] visibility (implementation="reference")
    # Per device, the view of the FFI kernels (`GnaParams.view`), or None for a shard that
    # holds padding only (its results are dropped).
    views: tuple

    @property
    def key_block(self) -> int:
        return self.pad + self.halo.left + self.halo.shard + self.halo.right


def _shard_windows(h: Halo, pad: int, p: int, k: int, s: int, d: int, causal: bool, padded: int):
    """Windows ``[d, padded]`` of shard `p`'s queries in the key group coordinates of its key
    block (which starts at global position ``p * shard - left - pad``)."""
    start, end = _window.neighborhood(h.length, k, s, d, causal)
    offset = p * h.shard
    key_origin = offset - h.left - pad
    starts = np.zeros((d, padded), np.int64)
    ends = np.ones((d, padded), np.int64)  # groups without queries: any valid window
    for g in range(d):
        positions = offset + g + d * np.arange(padded)
        real = positions[positions < min(offset + h.shard, h.length)]
        if real.size == 0:
            continue
        # Padded queries take the window of the group's last query: finite, and discarded.
        positions = np.minimum(positions, real[-1])
        # Key x of the block is global key_origin + x: group coordinate of the block's
        # group-g key number u is (key_origin + g) // d + u.
        base = (key_origin + g) // d
        starts[g], ends[g] = start[positions] - base, end[positions] - base
    return starts, ends


def _shard_mask(h: Halo, pad: int, p: int, k: int, s: int, d: int, causal: bool) -> np.ndarray:
    """Visibility ``[shard, key block]`` of shard `p` along the sharded axis."""
    full = _window.axis_mask(h.length, k, s, d, causal)
    q = np.arange(h.shard) + p * h.shard
    x = np.arange(h.left + pad + h.shard + h.right) + p * h.shard - h.left - pad
    inside = (0 <= x) & (x < h.length)
    mask = np.zeros((h.shard, x.size), bool)
    real = q < h.length
    mask[np.ix_(real, inside)] = full[np.ix_(q[real], x[inside])]
    mask[~real] = True  # padding queries: any finite softmax (their results are dropped)
    return mask


@functools.lru_cache(maxsize=64)
def _local(spatial: tuple[int, ...], params: GnaParams, axis: int, devices: int) -> _Local:
    h = halo(
        spatial[axis],
        devices,
        params.kernel_size[axis],
        params.stride[axis],
        params.dilation[axis],
        params.is_causal[axis],
    )
    d = params.dilation[axis]
    pad = -h.left % d
    local_spatial = spatial[:axis] + (h.shard,) + spatial[axis + 1 :]
    tiles = _xla._tile_sizes(local_spatial, params)
    per_axis = list(
        zip(spatial, params.kernel_size, params.stride, params.dilation, params.is_causal, tiles)
    )
    k, s, _, causal, tile = per_axis[axis][1:]
    group_max = -(-h.shard // d)
    padded = -(-group_max // tile) * tile
    windows = [_shard_windows(h, pad, p, k, s, d, causal, padded) for p in range(devices)]
    key_block = pad + h.left + h.shard + h.right

    def sharded_plan(p, box=None):
        return _xla.plan_from_windows(h.shard, key_block, d, tile, *windows[p], box=box)

    box = max(sharded_plan(p).box for p in range(devices))
    plans = [
        tuple(
            sharded_plan(p, box) if a == axis else _xla._axis_plan(*per_axis[a])
            for a in range(len(spatial))
        )
        for p in range(devices)
    ]
    tables = tuple(np.stack(t) for t in zip(*(_xla._tile_table(pl) for pl in plans)))
    masks = tuple(
        np.stack([_shard_mask(h, pad, p, k, s, d, causal) for p in range(devices)])
        if a == axis
        else _window.axis_mask(*per_axis[a][:5])[None]
        for a in range(len(spatial))
    )
    views = tuple(
        None
        if p * h.shard >= h.length
        else tuple(
            (h.length, p * h.shard, p * h.shard - h.left - pad) if a == axis else (n, 0, 0)
            for a, n in enumerate(spatial)
        )
        for p in range(devices)
    )
    return _Local(h, axis, pad, plans[0], tables, masks, views)


# ---------------------------------------------------------------------------------------------
# Per-shard computation


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _local_xla(query, key, value, device, params: GnaParams, local: _Local):
    table = tuple(jnp.asarray(t)[device] for t in local.tables)
    return _xla._forward(query, key, value, params, local.plans, table)


def _local_xla_fwd(query, key, value, device, params, local):
    out, lse = _local_xla(query, key, value, device, params, local)
    return (out, lse), (query, key, value, device, out, lse)


def _local_xla_bwd(params, local, residuals, cotangents):
    query, key, value, device, out, lse = residuals
    dout, dlse = cotangents
    table = tuple(jnp.asarray(t)[device] for t in local.tables)
    grads = _xla._backward(query, key, value, out, lse, dout, dlse, params, local.plans, table)
    return (*grads, None)


_local_xla.defvjp(_local_xla_fwd, _local_xla_bwd)


def _local_reference(query, key, value, device, params: GnaParams, local: _Local):
    """Dense masked softmax over the shard's key block (O(shard x block) memory)."""
    masks = []
    for a, m in enumerate(local.masks):
        m = jnp.asarray(m)
        masks.append(m[device] if a == local.axis else m[0])
    visible = _xla._tile_mask(masks)
    n_batch = query.ndim - params.rank - 2
    return reference.softmax_attention(query, [key], [value], params.scale, n_batch, visible)


def _switch_views(device, local: _Local, branch, empty):
    """``branch(view)`` of this device's view: one `jax.lax.switch` branch per device (FFI
    attributes are static), ``empty()`` for a shard of padding only."""
    branches = [
        (lambda v: lambda: branch(v))(view) if view is not None else empty for view in local.views
    ]
    return jax.lax.switch(device, branches)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _local_ffi(query, key, value, device, params: GnaParams, local: _Local, backward: str):
    """The shard's ``(out, lse)`` by the FFI kernel of the platform, with its view. Rows without
    a visible key (padding queries) come out as 0 and lse -inf."""
    from jax_gna import _ops  # late: `jax_gna._ops` imports this module

    def empty():
        out = jnp.zeros(query.shape[:-1] + value.shape[-1:], query.dtype)
        return out, jnp.full(query.shape[:-1], -jnp.inf, jnp.float32)

    def branch(view):
        return _ops._ffi_forward(dataclasses.replace(params, view=view), query, key, value)

    return _switch_views(device, local, branch, empty)


def _local_ffi_fwd(query, key, value, device, params, local, backward):
    out, lse = _local_ffi(query, key, value, device, params, local, backward)
    return (out, lse), (query, key, value, device, out, lse)


def _local_ffi_bwd(params, local, backward, residuals, cotangents):
    query, key, value, device, out, lse = residuals
    dout, dlse = cotangents
    grads = _local_backward(
        dout,
        query,
        key,
        value,
        out,
        lse,
        dlse.astype(jnp.float32),
        device,
        params,
        local,
        backward,
    )
    return (*grads, None)


_local_ffi.defvjp(_local_ffi_fwd, _local_ffi_bwd)


def _local_backward(dout, query, key, value, out, lse, dlse, device, params, local, backward):
    """``(dq, dk_block, dv_block)`` of one shard over its key block: the FFI backward with the
    view (`backward` ``"ffi"``), or the ``xla`` backward with the shard's window table."""
    if backward == "ffi":
        from jax_gna import _ops  # late: `jax_gna._ops` imports this module

        def empty():
            return jnp.zeros_like(query), jnp.zeros_like(key), jnp.zeros_like(value)

        def branch(view):
            p = dataclasses.replace(params, view=view)
            return _ops._ffi_backward(
                p, dout.astype(query.dtype), query, key, value, out, lse, dlse
            )

        return _switch_views(device, local, branch, empty)
    # The FFI forward gives padding rows lse -inf; their cotangents are 0, any finite lse does.
    lse = jnp.where(jnp.isneginf(lse), 0.0, lse)
    table = tuple(jnp.asarray(t)[device] for t in local.tables)
    return _xla._backward(query, key, value, out, lse, dout, dlse, params, local.plans, table)


def _with_halo(x: jax.Array, local: _Local, dim: int, axis_name: AxisName) -> jax.Array:
    """A shard's block ``[pad | left halo | shard | right halo]`` along `dim`; the halos come
    from the neighbours (zeros past the global borders, where no window reaches)."""
    h = local.halo
    n = h.devices
    parts = []
    if local.pad:
        shape = list(x.shape)
        shape[dim] = local.pad
        parts.append(jnp.zeros(shape, x.dtype))
    if h.left:
        tail = jax.lax.slice_in_dim(x, h.shard - h.left, h.shard, axis=dim)
        parts.append(jax.lax.ppermute(tail, axis_name, [(p, p + 1) for p in range(n - 1)]))
    parts.append(x)
    if h.right:
        head = jax.lax.slice_in_dim(x, 0, h.right, axis=dim)
        parts.append(jax.lax.ppermute(head, axis_name, [(p + 1, p) for p in range(n - 1)]))
    return jnp.concatenate(parts, axis=dim) if len(parts) > 1 else x


def attend_shard(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    params: GnaParams,
    local: _Local,
    dim: int,
    axis_name: AxisName,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """``(out, lse)`` of one shard: receive the K/V halos from the neighbours along mesh axis
    `axis_name` and attend the shard's queries with the global windows.

    Runs inside a manual-axes context (the body of `jax.shard_map`, or the lowering returned
    by a `custom_partitioning` rule, `jax_gna._ops`); `dim` is the sharded dim of the arrays.
    `implementation` is a resolved one (`shard_implementation`): ``"cpu"``/``"cuda"`` run the
    FFI kernels with the shard's view. Differentiable (the transpose of the halo exchange
    returns halo gradients to their owners).
    """
    device = jax.lax.axis_index(axis_name)
    key = _with_halo(key, local, dim, axis_name)
    value = _with_halo(value, local, dim, axis_name)
    if implementation in ("cpu", "cuda"):
        backward = (
            "ffi" if _ffi_backward_runs(implementation, query, key, value, params, local) else "xla"
        )
        return _local_ffi(query, key, value, device, params, local, backward)
    attend = _local_xla if implementation == "xla" else _local_reference
    return attend(query, key, value, device, params, local)


def attend_shard_backward(
    dout: jax.Array,
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    dlse: jax.Array,
    params: GnaParams,
    local: _Local,
    dim: int,
    axis_name: AxisName,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(dq, dk, dv)`` of one shard given the forward's ``out``/``lse`` (no recomputation):
    the backward over the shard's key block (the FFI kernel with the shard's view where
    `implementation` is ``"cpu"``/``"cuda"`` and it runs, else ``xla``), then the halo rows of
    ``dk``/``dv`` go back to the neighbours that own them (the transpose of the halo
    exchange)."""
    device = jax.lax.axis_index(axis_name)
    with_halo = functools.partial(_with_halo, local=local, dim=dim, axis_name=axis_name)
    key_block, pull_key = jax.vjp(with_halo, key)
    value_block, pull_value = jax.vjp(with_halo, value)
    ffi = implementation in ("cpu", "cuda") and _ffi_backward_runs(
        implementation, query, key_block, value_block, params, local
    )
    dq, dk, dv = _local_backward(
        dout,
        query,
        key_block,
        value_block,
        out,
        lse,
        dlse,
        device,
        params,
        local,
        "ffi" if ffi else "xla",
    )
    return dq, *pull_key(dk), *pull_value(dv)


def _local_shapes(query, key, value):
    return tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (query, key, value))


def _ffi_runs(implementation: str, query, key, value, params: GnaParams, local: _Local) -> bool:
    """Whether the FFI forward of `implementation` takes every device's view (shapes of one
    shard: `key`/`value` are key blocks)."""
    from jax_gna import _ops  # late: `jax_gna._ops` imports this module

    shapes = _local_shapes(query, key, value)
    return all(
        _ops.why_not(implementation, *shapes, dataclasses.replace(params, view=view)) is None
        for view in local.views
        if view is not None
    )


def _ffi_backward_runs(implementation, query, key, value, params: GnaParams, local) -> bool:
    """Whether the FFI backward takes every device's view (the CPU one always does)."""
    if implementation == "cpu":
        return True
    from jax_gna import _ops  # late: `jax_gna._ops` imports this module

    shapes = _local_shapes(query, key, value)
    return all(
        _ops.cuda_backward_reason(*shapes, dataclasses.replace(params, view=view)) is None
        for view in local.views
        if view is not None
    )


def shard_params(implementation: str, query, key, value, params: GnaParams) -> GnaParams:
    """`params` for the shards' kernel calls: for ``"cuda"`` with the tile shapes one device
    would run the whole problem with (`jax_gna._ops.cuda_tiles`; shapes of the whole arrays),
    so that the shards and one device run the same kernel."""
    if implementation != "cuda" or params.has_tiles:
        return params
    from jax_gna import _ops  # late: `jax_gna._ops` imports this module

    return _ops.cuda_tiles(query, key, value, params)


def shard_implementation(
    requested: str | None, platform: str, query, key, value, params: GnaParams, local: _Local
) -> str:
    """The implementation each shard runs: `requested` if given (``"cpu"``/``"cuda"`` raise
    NotImplementedError when the kernels refuse a shard's view), else the FFI kernel of
    `platform` (``"cpu"``/``"gpu"``) when it takes the views, else ``"xla"``. Shapes are those
    of one shard (`key`/`value`: the shard's part, the key block is built from it)."""
    if requested in ("xla", "reference"):
        return requested
    block = list(key.shape)
    n_batch = query.ndim - params.rank - 2
    block[n_batch + local.axis] = local.key_block
    vblock = list(value.shape)
    vblock[n_batch + local.axis] = local.key_block
    key_block = jax.ShapeDtypeStruct(tuple(block), key.dtype)
    value_block = jax.ShapeDtypeStruct(tuple(vblock), value.dtype)
    candidates = [requested] if requested else (["cuda"] if platform == "gpu" else ["cpu"])
    for impl in candidates:
        wanted = "gpu" if impl == "cuda" else "cpu"
        if platform == wanted and _ffi_runs(impl, query, key_block, value_block, params, local):
            return impl
    if requested:
        from jax_gna import _ops  # late: `jax_gna._ops` imports this module

        view = next(v for v in local.views if v is not None)
        reason = (
            f"it runs on {'GPU' if requested == 'cuda' else 'CPU'} and this call runs on "
            f"{platform.upper()}"
            if platform != ("gpu" if requested == "cuda" else "cpu")
            else _ops.why_not(
                requested, query, key_block, value_block, dataclasses.replace(params, view=view)
            )
        )
        raise NotImplementedError(
            f"implementation={requested!r} cannot run the shards of this call: {reason}. "
            "Use implementation=None (the xla tiles where the kernels cannot)."
        )
    return "xla"


def plan_split(mesh, spec, shape: tuple[int, ...], params: GnaParams):
    """``(mesh axes, spatial axis, local problem)`` for a query of `shape` laid out by the
    PartitionSpec `spec` on `mesh`, if its first spatial dim split over several devices can
    run by halo exchange (the halo fits in a shard, the shards are equal); else None (the
    axis must be gathered). Later sharded spatial dims are left to be gathered."""
    n_batch = len(shape) - params.rank - 2
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    for a in range(params.rank):
        entry = spec[n_batch + a]
        if entry is None or _axis_size(mesh, entry) < 2:
            continue
        spatial = tuple(shape[n_batch : n_batch + params.rank])
        devices = _axis_size(mesh, entry)
        if spatial[a] % devices:
            return None  # uneven shards: only `gna_sharded` pads them
        local = _local(spatial, params, a, devices)
        if local.halo.min_shard > local.halo.shard:
            return None
        return entry, a, local
    return None


# ---------------------------------------------------------------------------------------------
# Specs and the shard_map


def _mesh_of(mesh):
    if mesh is not None:
        return mesh
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        raise ValueError(
            "`gna_sharded` needs a mesh: pass `mesh=` or call it under `jax.set_mesh(mesh)`."
        )
    return mesh


def _axis_names(axis_name: AxisName) -> tuple[str, ...]:
    return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _axis_size(mesh, axis_name: AxisName) -> int:
    size = 1
    for name in _axis_names(axis_name):
        if name not in mesh.shape:
            raise ValueError(
                f"`axis_name` {name!r} is not an axis of the mesh (axes {tuple(mesh.shape)})."
            )
        size *= mesh.shape[name]
    return size


def _specs(mesh, query, kv_heads: int, rank: int, spatial_axis: int, axis_name: AxisName):
    """(tensor spec, rows spec, extra-token spec): batch and heads keep the query's sharding
    when its type carries one (Explicit meshes), other spatial axes are replicated, the
    sharded spatial axis goes over `axis_name`."""
    tensor, _ = shardings(mesh, jax.typeof(query), rank, kv_heads)
    used = set(_axis_names(axis_name))

    def free(entry):  # a mesh axis can shard one dim only
        names = entry if isinstance(entry, tuple) else (entry,)
        return None if entry is None or used & set(names) else entry

    spec = [free(e) for e in tensor.spec]
    n_batch = query.ndim - rank - 2
    spec[n_batch + spatial_axis] = axis_name
    heads = spec[n_batch + rank]
    return P(*spec), P(*spec[:-1]), P(*spec[:n_batch], None, heads, None)


# Jitted so that eager calls run one program instead of op-by-op dispatch of the tiles.
@functools.partial(
    jax.jit, static_argnames=("params", "mesh", "axis_name", "spatial_axis", "implementation")
)
def sharded(
    query,
    key,
    value,
    params: GnaParams,
    extra_k,
    extra_v,
    *,
    mesh,
    axis_name: AxisName,
    spatial_axis: int,
    implementation: str | None = None,
):
    """``(out, lse)`` of validated inputs with `spatial_axis` split over `axis_name`;
    `implementation` as in `gna_sharded`."""
    rank = params.rank
    n_batch = query.ndim - rank - 2
    dim = n_batch + spatial_axis
    spatial = tuple(query.shape[n_batch : n_batch + rank])
    devices = _axis_size(mesh, axis_name)
    local = _local(spatial, params, spatial_axis, devices)
    _check_halo(local.halo, spatial_axis, axis_name)
    tensor, rows, extra = _specs(mesh, query, key.shape[-2], rank, spatial_axis, axis_name)
    implementation = shard_implementation(
        implementation,
        platform_of(mesh),
        *_shard_shapes(local, dim, query, key, value),
        params,
        local,
    )
    params = shard_params(implementation, query, key, value, params)

    def body(q, k, v, *extra_kv):
        out, lse = attend_shard(q, k, v, params, local, dim, axis_name, implementation)
        if extra_kv:
            out, lse = _additional_kv.attend_and_merge(
                q, out, lse, *extra_kv, params.scale, n_batch
            )
        return out, lse

    # Shards must be equal: pad the axis at the end (no window reaches past the extent).
    total = devices * local.halo.shard
    args = [query, key, value]
    if total != spatial[spatial_axis]:
        widths = [(0, 0)] * query.ndim
        widths[dim] = (0, total - spatial[spatial_axis])
        args = [jnp.pad(x, widths) for x in args]
    specs = [tensor] * 3
    if extra_k is not None:
        args += [extra_k, extra_v]
        specs += [extra] * 2
    if _explicit(mesh):
        # shard_map on an Explicit mesh asserts the specs instead of resharding.
        args = [jax.sharding.reshard(x, NamedSharding(mesh, s)) for x, s in zip(args, specs)]
    run = jax.shard_map(
        body, mesh=mesh, in_specs=tuple(specs), out_specs=(tensor, rows), check_vma=False
    )
    out, lse = run(*args)
    if total != spatial[spatial_axis]:
        out = jax.lax.slice_in_dim(out, 0, spatial[spatial_axis], axis=dim)
        lse = jax.lax.slice_in_dim(lse, 0, spatial[spatial_axis], axis=dim)
    return out, lse


def platform_of(mesh) -> str:
    """The platform of `mesh`'s devices (JAX's default backend where an abstract mesh does not
    say)."""
    if isinstance(mesh, jax.sharding.Mesh):
        platform = mesh.devices.flat[0].platform
    else:
        device = getattr(mesh, "abstract_device", None)
        platform = getattr(device, "platform", None) or jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm") else platform


def _shard_shapes(local: _Local, dim: int, *arrays) -> tuple:
    """`arrays` (global shapes) as one shard holds them along the sharded `dim`."""
    out = []
    for x in arrays:
        shape = list(x.shape)
        shape[dim] = local.halo.shard
        out.append(jax.ShapeDtypeStruct(tuple(shape), x.dtype))
    return tuple(out)


def _explicit(mesh) -> bool:
    return jax.sharding.AxisType.Explicit in tuple(getattr(mesh, "axis_types", ()))


# ---------------------------------------------------------------------------------------------
# Public API


def gna_sharded(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    kernel_size: IntOrTuple,
    *,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: AxisName,
    spatial_axis: int = 0,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    additional_keys: ArrayLike | None = None,
    additional_values: ArrayLike | None = None,
    return_lse: bool = False,
    implementation: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """`jax_gna.gna` with one spatial axis split over a mesh axis (context parallelism).

    Every device attends its block of `spatial_axis` after receiving from its neighbours only
    the keys and values its queries' windows reach (a halo, `jax.lax.ppermute`), never the
    whole axis. Results and gradients equal `jax_gna.gna` on one device: windows follow the
    global extent (they shift at the global borders, stride and dilation groups may span
    shards), and causal axes need no right halo. Works eagerly and under `jax.jit`, on Auto
    and Explicit meshes; in Explicit meshes the batch and head sharding of ``query`` are kept.

    Shape legend as in `jax_gna.gna`: ``B...`` batch dims, ``X...`` spatial dims, ``H``,
    ``Hkv`` heads, ``D``, ``Dv`` head dims, ``E`` additional tokens.

    Args:
      query: ``[B..., X..., H, D]``.
      key: ``[B..., X..., Hkv, D]``.
      value: ``[B..., X..., Hkv, Dv]``.
      kernel_size, stride, dilation, is_causal, scale: as in `jax_gna.gna`.
      mesh: the device mesh; default the one set by `jax.set_mesh`.
      axis_name: the mesh axis (or tuple of axes) to split `spatial_axis` over.
      spatial_axis: which spatial axis to split (0 is the outermost, e.g. time in
        ``[B, T, H, W, heads, D]``). Its extent need not divide evenly (the last shards are
        padded; that pads and slices the whole arrays once).
      additional_keys, additional_values: ``[B..., E, Hkv, D]`` / ``[B..., E, Hkv, Dv]`` extra
        tokens every query attends to; replicated on every device along `axis_name`.
      return_lse: also return the log-sum-exp ``[B..., X..., H]`` (float32).
      implementation: ``None`` (the FFI kernel of the platform, ``"cpu"`` or ``"cuda"``, run
        on each shard's view where it takes it, else ``"xla"``), ``"cpu"`` / ``"cuda"`` (those
        kernels; ``NotImplementedError`` where they cannot run the shards, e.g. the CUDA
        kernels for float32), ``"xla"`` (memory-efficient tiles over the shard's window
        table), or ``"reference"`` (dense masked softmax per shard, for small problems).

    Returns:
      ``out`` ``[B..., X..., H, Dv]`` sharded like ``query`` along `spatial_axis`, and with
      ``return_lse=True`` also ``lse`` ``[B..., X..., H]``.

    Raises:
      ValueError: for invalid arguments (as `jax_gna.gna`), an `axis_name` not in the mesh, or
        shards smaller than the halo they must provide (the message names the minimum shard
        size).
      NotImplementedError: for an implementation that cannot run the shards (the message says
        why).
    """
    # Late import: `jax_gna._api` routes spatially sharded inputs here.
    from jax_gna._api import _as_arrays, _params

    query, key, value, extra_k, extra_v = _as_arrays(
        query, key, value, additional_keys, additional_values
    )
    params = _params(
        query, key, value, kernel_size, stride, dilation, is_causal, scale, extra_k, extra_v, None
    )
    if isinstance(spatial_axis, bool) or not 0 <= spatial_axis < params.rank:
        raise ValueError(
            f"`spatial_axis` must be a spatial axis index in [0, {params.rank}), "
            f"got {spatial_axis!r}."
        )
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown `implementation` {implementation!r}; expected None or one of "
            f"{IMPLEMENTATIONS}."
        )
    out, lse = sharded(
        query,
        key,
        value,
        params,
        extra_k,
        extra_v,
        mesh=_mesh_of(mesh),
        axis_name=axis_name,
        spatial_axis=spatial_axis,
        implementation=implementation,
    )
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------
# Routing of `jax_gna.gna` for spatially sharded inputs


def spatial_split(query: jax.Array, params: GnaParams):
    """``(mesh, axis_name, spatial_axis)`` if `query` arrives with a spatial axis sharded (an
    Explicit mesh's type under tracing, or a concrete array's NamedSharding), the halo fits in
    a shard and several devices share the axis; else None. The first sharded spatial axis
    wins (the others are gathered)."""
    sharding = getattr(jax.typeof(query), "sharding", None)
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or not any(spec or ()):
        # Auto meshes type values without a spec; a concrete array still knows its sharding.
        concrete = (
            getattr(query, "sharding", None) if not isinstance(query, jax.core.Tracer) else None
        )
        if not isinstance(concrete, NamedSharding):
            return None
        mesh, spec = concrete.mesh, concrete.spec
    split = plan_split(mesh, spec, tuple(query.shape), params)
    return None if split is None else (mesh, split[0], split[1])


__all__ = ["Halo", "gna_sharded", "halo"]
