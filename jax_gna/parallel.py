"""Context parallelism: GNA with one spatial axis sharded over a mesh axis, by halo exchange.

Each device holds a contiguous block (a shard) of one spatial axis of ``query``, ``key`` and
``value``. A query's window reaches only a bounded distance along that axis, so instead of
gathering the whole axis (what XLA does for an op whose spatial dims must be replicated) every
device receives from its two neighbours the keys and values its queries' windows reach
(`jax.lax.ppermute` inside `jax.shard_map`) and attends locally with the *global* windows:
windows shifting at the global borders, stride groups and dilation groups that cross shard
boundaries and causal axes all come out exactly as on one device. The halo sizes are computed
from the window math of `jax_gna._window` (the same rule the kernels use), per side, as the
largest reach over all shards; a causal axis needs no right halo.

With a stride, a shard boundary just inside a stride group moves to the group's end (`halo`):
the device on the left computes those queries too (their rows arrive with the halo, their
outputs go back), so every device computes whole stride groups, whose queries share a window.
That keeps the halos at the window's reach past a group and the kernels' tiles aligned.

The local attention is a *view* of the whole problem (`cuda/include/gna/window.h` AxisView):
the device's queries against the keys their windows reach, with the windows of the whole axis,
so no query is computed twice. It runs the FFI kernels with that view (``"cpu"`` on CPUs;
``"cuda"`` on GPUs where `jax_gna._ops.why_not` says the kernels take it), or the
memory-efficient ``xla`` tiles with the device's window table. FFI attributes and the slices'
shapes are static and every device has its own, so the FFI call is a `jax.lax.switch` over the
device index with one branch per device. Gradients are exact: the transposes of the exchanges
send the halo's key/value gradients (and the query rows' gradients) back to their owners.

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

from jax_gna import _additional_kv, _head_exchange, _window, _xla, reference
from jax_gna._mesh import shardings
from jax_gna._params import GnaParams

IntOrTuple = int | tuple[int, ...]
BoolOrTuple = bool | tuple[bool, ...]
AxisName = str | tuple[str, ...]
IMPLEMENTATIONS = ("cuda", "cpu", "xla", "reference")
STRATEGIES = ("halo", "heads")


@dataclasses.dataclass(frozen=True)
class Halo:
    """How one spatial axis is split: positions per shard, the queries each shard computes and
    the halo it receives.

    Every device holds a shard (a contiguous block) of the axis. It computes the queries from
    ``shifts[p]`` into its shard up to ``shifts[p + 1]`` into the next one: an inner boundary
    moves right to the start of a stride group when that is close and fewer rows travel
    (`halo`), so that it does not split the group (whose queries share one window); the first
    ``queries`` rows of the right neighbour travel with the keys, and their outputs travel
    back.

    Attributes:
      length: the axis' global extent.
      devices: number of shards.
      shard: positions per shard (the last ones may hold padding when ``devices`` does not
        divide ``length``).
      left: key/value positions every shard receives from its left neighbour (the largest reach
        to the left of any device's queries, from the start of its shard).
      right: key/value positions received from the right neighbour (the largest reach past the
        end of a shard).
      shifts: per device, how far its first computed query lies inside its shard (device 0:
        0); empty: no shifts.
    """

    length: int
    devices: int
    shard: int
    left: int
    right: int
    shifts: tuple[int, ...] = ()

    @property
    def queries(self) -> int:
        """Query rows every shard receives from its right neighbour (the largest shift)."""
        return max(self.shifts, default=0)

    @property
    def min_shard(self) -> int:
        """The smallest shard that can provide this halo (a halo comes from one neighbour)."""
        return max(self.left, self.right)

    def computed(self, device: int) -> tuple[int, int]:
        """Global range ``[lo, hi)`` of the queries `device` computes (empty: padding only)."""
        shift = self.shifts[device] if self.shifts else 0
        following = self.shifts[device + 1] if self.shifts and device + 1 < self.devices else 0
        lo = min(device * self.shard + shift, self.length)
        return lo, max(lo, min((device + 1) * self.shard + following, self.length))


def _boundary_shifts(length: int, devices: int, shard: int, stride: int) -> tuple[int, ...]:
    """Per device, how far its first query moves right to the next stride-group start: only
    where that is at most an eighth of a shard (at least 1), so the devices stay balanced."""
    shifts = [0] * devices
    for p in range(1, devices):
        shift = -(p * shard) % stride
        if shift <= max(1, shard // 8) and shift < shard and p * shard + shift < length:
            shifts[p] = shift
    return tuple(shifts)


def shard_length(length: int, devices: int) -> int:
    """Positions per shard when `devices` split an axis of `length` (shards are equal; the last
    ones are padded at the end)."""
    return -(-length // devices)


def halo(
    length: int,
    devices: int,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    is_causal: bool = False,
) -> Halo:
    """The split of one axis of extent `length` into `devices` contiguous shards.

    With a stride and no dilation, inner boundaries that fall just inside a stride group move to
    its end (`Halo.shifts`) where that exchanges fewer rows. The keys a device needs are the
    union of its queries' windows (`jax_gna._window`); the halo on each side is how far that
    union reaches past its shard, maximised over devices (every shard exchanges the same
    amount)."""
    shard = shard_length(length, devices)
    start, end = _window.neighborhood(length, kernel_size, stride, dilation, is_causal)
    group = np.arange(length) % dilation
    first_key = start * dilation + group  # positions, not group coordinates
    last_key = (end - 1) * dilation + group

    def measure(shifts: tuple[int, ...]) -> Halo:
        split = Halo(length, devices, shard, 0, 0, shifts)
        left = right = 0
        for p in range(devices):
            lo, hi = split.computed(p)
            if lo < hi:
                left = max(left, p * shard - int(first_key[lo:hi].min()))
                right = max(right, int(last_key[lo:hi].max()) + 1 - (p + 1) * shard)
        return dataclasses.replace(split, left=left, right=right)

    unshifted = measure(())
    if stride == 1 or dilation != 1:  # (dilation: shifted queries would change their phase)
        return unshifted
    shifted = measure(_boundary_shifts(length, devices, shard, stride))
    # Only where it exchanges fewer rows (halos and query rows) and the halo fits a shard.
    moved = shifted.left + shifted.right + shifted.queries
    fewer = shifted.queries and moved <= unshifted.left + unshifted.right
    return shifted if fewer and shifted.min_shard <= shard else unshifted


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
    """What every device computes: the rows of its query block that are its queries
    (`Halo.computed`) against its key block, halo included.

    A device's query block is its shard followed by the first ``halo.queries`` rows of its
    right neighbour's (``rows`` rows in all). Its key block is ``[pad | left halo | shard |
    right halo]``: ``pad`` zero positions go in front of the left halo so that the key block
    starts at the same dilation phase as the queries (the xla tiling pairs query and key groups
    by position modulo the dilation)."""

    halo: Halo
    axis: int  # the sharded spatial axis
    pad: int
    plans: tuple  # `_xla._AxisPlan` per axis (the sharded axis: device 0's; shapes are shared)
    tables: tuple  # `_xla._tile_table` arrays, stacked over devices
    masks: tuple  # per axis [devices, query block, key block] visibility ("reference")
    # Per device, the FFI kernels' call: (query rows [lo, hi) of the query block, key rows
    # [lo, hi) of the key block, view `GnaParams.view`), or None for a device without queries.
    calls: tuple

    @property
    def rows(self) -> int:
        return self.halo.shard + self.halo.queries

    @property
    def key_block(self) -> int:
        return self.pad + self.halo.left + self.halo.shard + self.halo.right

    def key_origin(self, device: int) -> int:
        """Global position of the first row of `device`'s key block."""
        return device * self.halo.shard - self.halo.left - self.pad


def _shard_windows(h: Halo, origin: int, p: int, axis_args, padded: int):
    """Windows ``[d, padded]`` of device `p`'s query block in the key group coordinates of its
    key block (which starts at global position `origin`); rows it does not compute take the
    window of a computed query of their group (finite, and discarded)."""
    k, s, d, causal = axis_args
    start, end = _window.neighborhood(h.length, k, s, d, causal)
    lo, hi = h.computed(p)
    starts = np.zeros((d, padded), np.int64)
    ends = np.ones((d, padded), np.int64)  # groups without queries: any valid window
    for g in range(d):
        positions = p * h.shard + g + d * np.arange(padded)
        real = positions[(lo <= positions) & (positions < hi)]
        if real.size == 0:
            continue
        positions = np.clip(positions, real[0], real[-1])
        # Key x of the block is global origin + x: group coordinate of the block's group-g
        # key number u is (origin + g) // d + u.
        base = (origin + g) // d
        starts[g], ends[g] = start[positions] - base, end[positions] - base
    return starts, ends


def _shard_mask(h: Halo, origin: int, p: int, axis_args, rows: int, keys: int):
    """Visibility ``[rows, keys]`` of device `p`'s query block against its key block."""
    full = _window.axis_mask(h.length, *axis_args)
    lo, hi = h.computed(p)
    q = np.arange(rows) + p * h.shard
    x = np.arange(keys) + origin
    inside = (0 <= x) & (x < h.length)
    real = (lo <= q) & (q < hi)
    mask = np.zeros((rows, keys), bool)
    mask[np.ix_(real, inside)] = full[np.ix_(q[real], x[inside])]
    mask[~real] = True  # rows it does not compute: any finite softmax (discarded)
    return mask


def _ffi_call(h: Halo, origin: int, p: int, axis_args, spatial, axis):
    """Device `p`'s FFI call (see `_Local.calls`): its computed queries against the keys their
    windows reach, so that the key slice starts where the first window does (KV tiles line up
    with the windows)."""
    lo, hi = h.computed(p)
    if lo >= hi:
        return None
    k, s, d, causal = axis_args
    start, end = _window.neighborhood(h.length, k, s, d, causal)
    group = np.arange(lo, hi) % d
    first = int((start[lo:hi] * d + group).min())
    last = int(((end[lo:hi] - 1) * d + group).max()) + 1
    first -= (first - lo) % d  # the key slice starts at the queries' dilation phase
    view = tuple((h.length, lo, first) if a == axis else (n, 0, 0) for a, n in enumerate(spatial))
    shard_start = p * h.shard
    return (lo - shard_start, hi - shard_start), (first - origin, last - origin), view


@functools.lru_cache(maxsize=64)
def _local(spatial: tuple[int, ...], params: GnaParams, axis: int, devices: int) -> _Local:
    per_axis = list(zip(params.kernel_size, params.stride, params.dilation, params.is_causal))
    axis_args = per_axis[axis]
    h = halo(spatial[axis], devices, *axis_args)
    d = axis_args[2]
    pad = -h.left % d
    rows = h.shard + h.queries
    key_block = pad + h.left + h.shard + h.right
    origins = [p * h.shard - h.left - pad for p in range(devices)]
    local_spatial = spatial[:axis] + (rows,) + spatial[axis + 1 :]
    tiles = _xla._tile_sizes(local_spatial, params)
    group_max = -(-rows // d)
    padded = -(-group_max // tiles[axis]) * tiles[axis]
    windows = [_shard_windows(h, origins[p], p, axis_args, padded) for p in range(devices)]

    def sharded_plan(p, box=None):
        return _xla.plan_from_windows(rows, key_block, d, tiles[axis], *windows[p], box=box)

    box = max(sharded_plan(p).box for p in range(devices))
    plans = [
        tuple(
            sharded_plan(p, box) if a == axis else _xla._axis_plan(n, *per_axis[a], tiles[a])
            for a, n in enumerate(spatial)
        )
        for p in range(devices)
    ]
    tables = tuple(np.stack(t) for t in zip(*(_xla._tile_table(pl) for pl in plans)))
    masks = tuple(
        np.stack(
            [_shard_mask(h, origins[p], p, axis_args, rows, key_block) for p in range(devices)]
        )
        if a == axis
        else _window.axis_mask(n, *per_axis[a])[None]
        for a, n in enumerate(spatial)
    )
    calls = tuple(_ffi_call(h, origins[p], p, axis_args, spatial, axis) for p in range(devices))
    return _Local(h, axis, pad, plans[0], tables, masks, calls)


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
    """Dense masked softmax over the key block (O(query block x key block) memory)."""
    masks = []
    for a, m in enumerate(local.masks):
        m = jnp.asarray(m)
        masks.append(m[device] if a == local.axis else m[0])
    visible = _xla._tile_mask(masks)
    n_batch = query.ndim - params.rank - 2
    return reference.softmax_attention(query, [key], [value], params.scale, n_batch, visible)


def _switch_calls(device, local: _Local, branch, empty):
    """``branch(call)`` of this device's FFI call (`_Local.calls`): one `jax.lax.switch` branch
    per device (FFI attributes and slices are static), ``empty()`` for a device without
    queries."""
    branches = [
        (lambda c: lambda: branch(c))(call) if call is not None else empty for call in local.calls
    ]
    return jax.lax.switch(device, branches)


def _rows(x: jax.Array, dim: int, bounds: tuple[int, int]) -> jax.Array:
    return jax.lax.slice_in_dim(x, *bounds, axis=dim)


def _pad_rows(x: jax.Array, dim: int, bounds: tuple[int, int], total: int, fill=0) -> jax.Array:
    """`x` (rows ``bounds`` of a block of `total` rows along `dim`) back in that block."""
    widths = [(0, 0)] * x.ndim
    widths[dim] = (bounds[0], total - bounds[1])
    return jnp.pad(x, widths, constant_values=fill)


def _local_ffi(query, key, value, device, params: GnaParams, local: _Local):
    """``(out, lse)`` of the query block by the FFI kernel of the platform: the device's
    queries against its key slice, with its view. Rows it does not compute are 0, lse -inf."""
    from jax_gna import _ops  # late: `jax_gna._ops` imports this module

    dim = query.ndim - params.rank - 2 + local.axis

    def empty():
        out = jnp.zeros(query.shape[:-1] + value.shape[-1:], query.dtype)
        return out, jnp.full(query.shape[:-1], -jnp.inf, jnp.float32)

    def branch(call):
        rows, keys, view = call
        out, lse = _ops._ffi_forward(
            dataclasses.replace(params, view=view),
            _rows(query, dim, rows),
            _rows(key, dim, keys),
            _rows(value, dim, keys),
        )
        n = local.rows
        return _pad_rows(out, dim, rows, n), _pad_rows(lse, dim, rows, n, -jnp.inf)

    return _switch_calls(device, local, branch, empty)


def _local_backward(dout, query, key, value, out, lse, dlse, device, params, local, backward):
    """The gradients of a query block over its key block, as `_block_parts` of the query block
    (`_query_rows`) and of the key and value blocks (`_key_rows`): the FFI backward of the
    device's call (`backward` ``"ffi"``), or the ``xla`` backward with the device's window
    table. Rows the device does not compute must have zero cotangents.

    The FFI branches cut the parts straight from the call's results: a `jax.lax.switch`
    branch's results are materialized, so whole blocks would cost a pass each to build and
    another to cut (cuda/sm90/NOTES.md, "Two GPUs")."""
    dim = query.ndim - params.rank - 2 + local.axis
    query_rows = _query_rows(local, dim, None)
    key_rows = _key_rows(local, dim, None)
    if backward == "ffi":
        from jax_gna import _ops  # late: `jax_gna._ops` imports this module

        def empty():
            return (
                _block_parts(query_rows, jnp.zeros_like(query)),
                _block_parts(key_rows, jnp.zeros_like(key)),
                _block_parts(key_rows, jnp.zeros_like(value)),
            )

        def branch(call):
            rows, keys, view = call
            dq, dk, dv = _ops._ffi_backward(
                dataclasses.replace(params, view=view),
                _rows(dout, dim, rows).astype(query.dtype),
                _rows(query, dim, rows),
                _rows(key, dim, keys),
                _rows(value, dim, keys),
                _rows(out, dim, rows),
                _rows(lse, dim, rows),
                _rows(dlse, dim, rows),
            )
            return (
                _call_parts(query_rows, dq, rows, local.rows),
                _call_parts(key_rows, dk, keys, local.key_block),
                _call_parts(key_rows, dv, keys, local.key_block),
            )

        return _switch_calls(device, local, branch, empty)
    # Rows the device does not compute get lse +inf: probability 0, so their (zero)
    # cotangents stay finite whatever their out/lse hold.
    h = local.halo
    bounds = np.asarray([h.computed(p) for p in range(h.devices)]) - h.shard * np.arange(
        h.devices
    ).reshape(-1, 1)
    lo, hi = jnp.asarray(bounds)[device]
    rows = jnp.arange(local.rows).reshape((-1,) + (1,) * (lse.ndim - dim - 1))
    lse = jnp.where((lo <= rows) & (rows < hi), lse, jnp.inf)
    table = tuple(jnp.asarray(t)[device] for t in local.tables)
    dq, dk, dv = _xla._backward(query, key, value, out, lse, dout, dlse, params, local.plans, table)
    return (
        _block_parts(query_rows, dq),
        _block_parts(key_rows, dk),
        _block_parts(key_rows, dv),
    )


def _concat(parts: list, dim: int) -> jax.Array:
    """``jnp.concatenate(parts, dim)``, where an int part stands for that many zero rows, as a
    pad of the largest part with the others written in place: XLA's GPU concatenate kernel of
    these blocks runs at a third of a pad's speed (cuda/sm90/NOTES.md, "Two GPUs")."""
    arrays = [x for x in parts if not isinstance(x, int)]
    sizes = [x if isinstance(x, int) else x.shape[dim] for x in parts]
    offsets = np.cumsum([0, *sizes[:-1]]).tolist()
    big = max((i for i, x in enumerate(parts) if not isinstance(x, int)), key=sizes.__getitem__)
    widths = [(0, 0)] * arrays[0].ndim
    widths[dim] = (offsets[big], sum(sizes) - offsets[big] - sizes[big])
    # The barrier keeps XLA from rewriting the pad and the updates into a concatenate.
    out = jax.lax.optimization_barrier(jnp.pad(parts[big], widths))
    for i, x in enumerate(parts):
        if i != big and not isinstance(x, int):
            out = jax.lax.dynamic_update_slice_in_dim(out, x, offsets[i], dim)
    return out


@dataclasses.dataclass(frozen=True)
class _Rows:
    """An exchange of rows along `dim` between neighbours on mesh axis `axis_name`: a block is
    ``[pad zeros | left rows from the left neighbour | own | right rows from the right one]``
    (the left neighbour's last rows, the right neighbour's first; zeros past the ends)."""

    dim: int
    axis_name: AxisName
    devices: int
    pad: int = 0
    left: int = 0
    right: int = 0

    def to_right(self, x: jax.Array) -> jax.Array:
        return jax.lax.ppermute(x, self.axis_name, [(p, p + 1) for p in range(self.devices - 1)])

    def to_left(self, x: jax.Array) -> jax.Array:
        return jax.lax.ppermute(x, self.axis_name, [(p + 1, p) for p in range(self.devices - 1)])

    def exchange(self, rightward, leftward) -> tuple:
        """``(to_right(rightward), to_left(leftward))``, None for a None message. On two
        devices with both messages of one shape this is one collective-permute: device 0
        sends right while device 1 sends left, so both directions of the link carry data at
        once (two permutes run one after the other)."""
        one = rightward is not None and leftward is not None and self.devices == 2
        if not (one and rightward.shape == leftward.shape):
            return (
                None if rightward is None else self.to_right(rightward),
                None if leftward is None else self.to_left(leftward),
            )
        first = jax.lax.axis_index(self.axis_name) == 0
        received = jax.lax.ppermute(
            jnp.where(first, rightward, leftward), self.axis_name, [(0, 1), (1, 0)]
        )
        return jnp.where(first, 0, received), jnp.where(first, received, 0)

    def slice(self, x: jax.Array, start: int, stop: int) -> jax.Array:
        return jax.lax.slice_in_dim(x, start, stop, axis=self.dim)

    def add_at(self, x: jax.Array, start: int, rows: jax.Array) -> jax.Array:
        """``x`` with `rows` added to its rows from `start` on (in place)."""
        # XLA's GPU fusions update `x` in place only if they read it at the update's own start
        # indices (a dynamic slice sharing them); a static slice of `x`, or a constant index
        # (which XLA turns into one), makes each add a pass over all of `x` (~0.2 ms per
        # tensor on the HunyuanVideo shards: cuda/sm90/NOTES.md, "Two GPUs"). Hence an index
        # XLA cannot fold: `start` plus min(device index, 0), which is 0.
        index = jnp.minimum(jax.lax.axis_index(self.axis_name), 0) + start
        size = rows.shape[self.dim]
        update = jax.lax.dynamic_slice_in_dim(x, index, size, self.dim) + rows
        return jax.lax.dynamic_update_slice_in_dim(x, update, index, self.dim)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _block(x: jax.Array, ex: _Rows) -> jax.Array:
    """``x`` with the rows `ex` receives from the neighbours around it."""
    n = x.shape[ex.dim]
    tail = ex.slice(x, n - ex.left, n) if ex.left else None
    from_left, from_right = ex.exchange(tail, ex.slice(x, 0, ex.right) if ex.right else None)
    parts = ([ex.pad] if ex.pad else []) + [p for p in (from_left, x, from_right) if p is not None]
    return _concat(parts, ex.dim) if len(parts) > 1 else x


def _block_parts(ex: _Rows, g: jax.Array) -> tuple:
    """A block gradient `g` as ``(own rows, left halo rows, right halo rows)`` (None for a
    halo the block does not have)."""
    n = g.shape[ex.dim]
    return _call_parts(ex, g, (0, n), n)


def _call_parts(ex: _Rows, g: jax.Array, bounds: tuple[int, int], total: int) -> tuple:
    """`_block_parts` of a block of `total` rows of which `g` holds rows ``bounds`` (zeros
    elsewhere), without building the block."""

    def part(lo: int, hi: int) -> jax.Array:
        a, b = max(lo, bounds[0]), min(hi, bounds[1])
        if a >= b:
            shape = list(g.shape)
            shape[ex.dim] = hi - lo
            return jnp.zeros(shape, g.dtype)
        inner = _rows(g, ex.dim, (a - bounds[0], b - bounds[0]))
        return _pad_rows(inner, ex.dim, (a - lo, b - lo), hi - lo)

    start, stop = ex.pad + ex.left, total - ex.right
    return (
        part(start, stop),
        part(ex.pad, start) if ex.left else None,
        part(stop, total) if ex.right else None,
    )


def _return_parts(ex: _Rows, own: jax.Array, of_left, of_right) -> jax.Array:
    """The gradient of `_block` from the block gradient's parts (`_block_parts`): the halo
    rows go back to their owners, which add them in place (no pad of the received rows to a
    whole shard)."""
    head, tail = ex.exchange(of_right, of_left)  # back to the owners
    if ex.left:
        own = ex.add_at(own, own.shape[ex.dim] - ex.left, tail)
    if ex.right:
        own = ex.add_at(own, 0, head)
    return own


def _block_transpose(ex: _Rows, g: jax.Array) -> jax.Array:
    return _return_parts(ex, *_block_parts(ex, g))


_block.defvjp(lambda x, ex: (_block(x, ex), None), lambda ex, _, g: (_block_transpose(ex, g),))


def _key_rows(local: _Local, dim: int, axis_name: AxisName) -> _Rows:
    """The exchange that builds a shard's key block ``[pad | left halo | shard | right
    halo]``."""
    h = local.halo
    return _Rows(dim, axis_name, h.devices, local.pad, h.left, h.right)


def _query_rows(local: _Local, dim: int, axis_name: AxisName) -> _Rows:
    """The exchange that builds a shard's query block: the shard, then the first
    ``halo.queries`` rows of the right neighbour's."""
    h = local.halo
    return _Rows(dim, axis_name, h.devices, right=h.queries)


def _with_halo(x: jax.Array, local: _Local, dim: int, axis_name: AxisName) -> jax.Array:
    """A shard's key block ``[pad | left halo | shard | right halo]`` along `dim`; the halos
    come from the neighbours (zeros past the global borders, where no window reaches)."""
    return _block(x, _key_rows(local, dim, axis_name))


def _with_queries(x: jax.Array, local: _Local, dim: int, axis_name: AxisName) -> jax.Array:
    """A shard's query block along `dim`: the shard, then the first ``halo.queries`` rows of
    the right neighbour's (zeros on the last device)."""
    return _block(x, _query_rows(local, dim, axis_name)) if local.halo.queries else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _own(x: jax.Array, ex: _Rows, shifts: tuple[int, ...]) -> jax.Array:
    """The shard's rows of a query-block result `x`: its first ``shifts[device]`` rows are the
    ones the left neighbour computed (the tail of that device's `x`)."""
    n = x.shape[ex.dim] - ex.right
    own = ex.slice(x, 0, n)
    returned = ex.to_right(ex.slice(x, n, n + ex.right))
    taken = _taken(ex, shifts, x.ndim)
    head = jnp.where(taken, returned, ex.slice(own, 0, ex.right))
    return jax.lax.dynamic_update_slice_in_dim(own, head, 0, ex.dim)


def _taken(ex: _Rows, shifts: tuple[int, ...], ndim: int) -> jax.Array:
    """Whether each of the first ``ex.right`` rows of this device was computed by its left
    neighbour (the first ``shifts[device]``)."""
    shift = jnp.asarray(shifts)[jax.lax.axis_index(ex.axis_name)]
    return (jnp.arange(ex.right) < shift).reshape((-1,) + (1,) * (ndim - ex.dim - 1))


def _own_transpose(ex: _Rows, shifts: tuple[int, ...], c: jax.Array) -> jax.Array:
    """The gradient of `_own`: the cotangents of the rows the left neighbour computed go back
    to it (the tail of its query block); zeros where a query block's row is not computed."""
    head = ex.slice(c, 0, ex.right)
    taken = _taken(ex, shifts, c.ndim)
    mine = jax.lax.dynamic_update_slice_in_dim(c, jnp.where(taken, 0, head), 0, ex.dim)
    return _concat([mine, ex.to_left(jnp.where(taken, head, 0))], ex.dim)


_own.defvjp(
    lambda x, ex, shifts: (_own(x, ex, shifts), None),
    lambda ex, shifts, _, c: (_own_transpose(ex, shifts, c),),
)


def _own_rows(x: jax.Array, local: _Local, dim: int, axis_name: AxisName) -> jax.Array:
    """A shard's rows of a result over query blocks (`_with_queries`): its own rows, of which
    the first ``shifts[p]`` come back from the left neighbour, which computed them."""
    h = local.halo
    if not h.queries:
        return x
    return _own(x, _query_rows(local, dim, axis_name), h.shifts)


def _own_rows_transpose(c: jax.Array, local: _Local, dim: int, axis_name: AxisName):
    """`_own_rows`' gradient: cotangents over the query block (0 on rows not computed here)."""
    h = local.halo
    if not h.queries:
        return c
    return _own_transpose(_query_rows(local, dim, axis_name), h.shifts, c)


def _exchange(query, key, value, local: _Local, dim: int, axis_name: AxisName) -> tuple:
    """A shard's query block and key and value blocks (`_with_queries`, `_with_halo`)."""
    return (
        _with_queries(query, local, dim, axis_name),
        _with_halo(key, local, dim, axis_name),
        _with_halo(value, local, dim, axis_name),
    )


def _blocks_backward(dout, dlse, blocks, out, lse, params, local, dim, axis_name, backward):
    """``(dq, dk, dv)`` of the shard from the cotangents of its query block's ``out``/``lse``:
    the backward over the key block (`_local_backward`), then the halo rows of ``dk``/``dv``
    and the neighbour's rows of ``dq`` go back to their owners."""
    device = jax.lax.axis_index(axis_name)
    parts = _local_backward(dout, *blocks, out, lse, dlse, device, params, local, backward)
    rows = (_query_rows, _key_rows, _key_rows)
    return tuple(
        _return_parts(r(local, dim, axis_name), *p) for r, p in zip(rows, parts, strict=True)
    )


def _attend_ffi_fwd(query, key, value, params, local, dim, axis_name, backward):
    blocks = _exchange(query, key, value, local, dim, axis_name)
    out, lse = _local_ffi(*blocks, jax.lax.axis_index(axis_name), params, local)
    return (out, lse), (blocks, out, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _attend_ffi(query, key, value, params, local, dim, axis_name, backward):
    """``(out, lse)`` of the shard's query block by the FFI kernels: the exchanges, then the
    device's call (`_local_ffi`). One custom VJP over both, so that the backward returns the
    halo gradients straight from the call's results (`_local_backward`)."""
    return _attend_ffi_fwd(query, key, value, params, local, dim, axis_name, backward)[0]


def _attend_ffi_bwd(params, local, dim, axis_name, backward, residuals, cotangents):
    blocks, out, lse = residuals
    dout, dlse = cotangents
    dlse = dlse.astype(jnp.float32)
    return _blocks_backward(dout, dlse, blocks, out, lse, params, local, dim, axis_name, backward)


_attend_ffi.defvjp(_attend_ffi_fwd, _attend_ffi_bwd)


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
    """``(out, lse)`` of one shard: receive the K/V halos (and the query rows it computes for
    its right neighbour) along mesh axis `axis_name`, attend its queries with the global
    windows, and return the neighbour's rows.

    Runs inside a manual-axes context (the body of `jax.shard_map`, or the lowering returned
    by a `custom_partitioning` rule, `jax_gna._ops`); `dim` is the sharded dim of the arrays.
    `implementation` is a resolved one (`shard_implementation`): ``"cpu"``/``"cuda"`` run the
    FFI kernels on the device's call (`_Local.calls`). Differentiable (the transposes of the
    exchanges return halo gradients to their owners).
    """
    if implementation in ("cpu", "cuda"):
        ffi = _ffi_backward_runs(implementation, query, key, value, params, local)
        backward = "ffi" if ffi else "xla"
        out, lse = _attend_ffi(query, key, value, params, local, dim, axis_name, backward)
    else:
        device = jax.lax.axis_index(axis_name)
        attend = _local_xla if implementation == "xla" else _local_reference
        blocks = _exchange(query, key, value, local, dim, axis_name)
        out, lse = attend(*blocks, device, params, local)
    return _own_rows(out, local, dim, axis_name), _own_rows(lse, local, dim, axis_name)


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
    the exchanges of `attend_shard` again (the query block's ``out``/``lse`` too), the backward
    over the key block (the FFI kernel on the device's call where `implementation` is
    ``"cpu"``/``"cuda"`` and it runs, else ``xla``), then the halo rows of ``dk``/``dv`` and
    the neighbour's rows of ``dq`` go back to their owners."""
    blocks = _exchange(query, key, value, local, dim, axis_name)
    out, lse = (_with_queries(x, local, dim, axis_name) for x in (out, lse))
    # Cotangents of the rows this device computes (0 elsewhere).
    dout, dlse = (_own_rows_transpose(c, local, dim, axis_name) for c in (dout, dlse))
    ffi = implementation in ("cpu", "cuda") and _ffi_backward_runs(
        implementation, *blocks, params, local
    )
    backward = "ffi" if ffi else "xla"
    return _blocks_backward(dout, dlse, blocks, out, lse, params, local, dim, axis_name, backward)


def _resized(x, dim: int, n: int) -> jax.ShapeDtypeStruct:
    shape = list(x.shape)
    shape[dim] = n
    return jax.ShapeDtypeStruct(tuple(shape), x.dtype)


def _call_shapes(query, key, value, params: GnaParams, local: _Local):
    """Per device with queries, ``(params with its view, q, k, v shapes)`` of its FFI call
    (`query`/`key`/`value`: any arrays of the problem's batch, heads and head dims)."""
    dim = query.ndim - params.rank - 2 + local.axis
    for rows, keys, view in filter(None, local.calls):
        yield (
            dataclasses.replace(params, view=view),
            _resized(query, dim, rows[1] - rows[0]),
            _resized(key, dim, keys[1] - keys[0]),
            _resized(value, dim, keys[1] - keys[0]),
        )


def _refusal(check, query, key, value, params: GnaParams, local: _Local) -> str | None:
    """The first reason ``check(q, k, v, params)`` gives against a device's FFI call (None:
    it takes every call)."""
    for p, *shapes in _call_shapes(query, key, value, params, local):
        reason = check(*shapes, p)
        if reason is not None:
            return reason
    return None


def _forward_refusal(implementation: str, query, key, value, params, local) -> str | None:
    """Why the FFI forward of `implementation` refuses a device's call (None: it takes all)."""
    from jax_gna import _ops  # late: `jax_gna._ops` imports this module

    check = functools.partial(_ops.why_not, implementation)
    return _refusal(check, query, key, value, params, local)


def _ffi_backward_runs(implementation, query, key, value, params: GnaParams, local) -> bool:
    """Whether the FFI backward takes every device's call (the CPU one always does)."""
    if implementation == "cpu":
        return True
    from jax_gna import _ops  # late: `jax_gna._ops` imports this module

    return _refusal(_ops.cuda_backward_reason, query, key, value, params, local) is None


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
    NotImplementedError when the kernels refuse a device's call), else the FFI kernel of
    `platform` (``"cpu"``/``"gpu"``) when it takes the calls, else ``"xla"``."""
    if requested in ("xla", "reference"):
        return requested
    impl = requested or ("cuda" if platform == "gpu" else "cpu")
    home = "gpu" if impl == "cuda" else "cpu"
    reason = (
        f"it runs on {home.upper()} and this call runs on {platform.upper()}"
        if platform != home
        else _forward_refusal(impl, query, key, value, params, local)
    )
    if reason is None:
        return impl
    if requested:
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


def _mesh_of(mesh, query):
    """`mesh`, else the one set by `jax.set_mesh`, else the one `query` is sharded over (as a
    JAX user expects, sharded inputs need no mesh context)."""
    if mesh is not None:
        return mesh
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is not None and not mesh.empty:
        return mesh
    layout = _layout_of(query)
    if layout is None:
        raise ValueError(
            "`gna_sharded` needs a mesh: pass `mesh=`, call it under `jax.set_mesh(mesh)` or "
            "pass a `query` sharded over the mesh."
        )
    return layout[0]


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
    jax.jit,
    static_argnames=("params", "mesh", "axis_name", "spatial_axis", "implementation", "strategy"),
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
    strategy: str = "halo",
):
    """``(out, lse)`` of validated inputs with `spatial_axis` split over `axis_name`;
    `implementation` and `strategy` as in `gna_sharded`."""
    if strategy == "heads":
        return _head_exchange.sharded_by_heads(
            query, key, value, params, extra_k, extra_v, mesh, axis_name, spatial_axis,
            implementation,
        )  # fmt: skip
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
    return run_sharded(
        body, mesh, (tensor, rows, extra), dim, total, query, key, value, extra_k, extra_v
    )


def pad_axis(x: jax.Array, dim: int, total: int) -> jax.Array:
    """`x` padded with zeros at the end of `dim` to `total` positions."""
    if x.shape[dim] == total:
        return x
    widths = [(0, 0)] * x.ndim
    widths[dim] = (0, total - x.shape[dim])
    return jnp.pad(x, widths)


def run_sharded(
    body, mesh, specs: tuple, dim: int, total: int, query, key, value, extra_k, extra_v
):
    """``(out, lse)`` of `body` run per shard (`jax.shard_map`) on q/k/v padded along `dim` to
    `total` positions (equal shards), and extra tokens if any; `specs` are (tensor spec, rows
    spec, extra-token spec). The padding is sliced off the results."""
    tensor, rows, extra = specs
    length = query.shape[dim]
    args = [pad_axis(x, dim, total) for x in (query, key, value)]
    in_specs = [tensor] * 3
    if extra_k is not None:
        args += [extra_k, extra_v]
        in_specs += [extra] * 2
    if _explicit(mesh):
        # shard_map on an Explicit mesh asserts the specs instead of resharding.
        args = [jax.sharding.reshard(x, NamedSharding(mesh, s)) for x, s in zip(args, in_specs)]
    run = jax.shard_map(
        body, mesh=mesh, in_specs=tuple(in_specs), out_specs=(tensor, rows), check_vma=False
    )
    out, lse = run(*args)
    return tuple(jax.lax.slice_in_dim(x, 0, length, axis=dim) for x in (out, lse))


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
    return tuple(_resized(x, dim, local.halo.shard) for x in arrays)


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
    strategy: str = "halo",
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
      mesh: the device mesh; default the one set by `jax.set_mesh`, else the one `query` is
        sharded over.
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
      strategy: ``"halo"`` (the halo exchange above) or ``"heads"`` (an all-to-all of heads,
        DeepSpeed-Ulysses': every device attends the whole axis for its share of the heads,
        whose query and kv heads must divide by the devices of `axis_name`). The heads
        strategy moves far more data; on GPUs of one host, XLA moves it with the copy engines
        under ``XLA_FLAGS=--xla_gpu_use_memcpy_local_p2p=true`` (README, "Multi-device").

    Returns:
      ``out`` ``[B..., X..., H, Dv]`` sharded like ``query`` along `spatial_axis`, and with
      ``return_lse=True`` also ``lse`` ``[B..., X..., H]``.

    Raises:
      ValueError: for invalid arguments (as `jax_gna.gna`), an `axis_name` not in the mesh, an
        unknown `strategy`, shards smaller than the halo they must provide (the message names
        the minimum shard size), or, with ``strategy="heads"``, heads that do not divide.
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
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown `strategy` {strategy!r}; expected one of {STRATEGIES}.")
    out, lse = sharded(
        query,
        key,
        value,
        params,
        extra_k,
        extra_v,
        mesh=_mesh_of(mesh, query),
        axis_name=axis_name,
        spatial_axis=spatial_axis,
        implementation=implementation,
        strategy=strategy,
    )
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------
# Routing of `jax_gna.gna` for spatially sharded inputs


def spatial_split(query: jax.Array, params: GnaParams):
    """``(mesh, axis_name, spatial_axis)`` if `query` arrives with a spatial axis sharded (an
    Explicit mesh's type under tracing, or a concrete array's NamedSharding), the halo fits in
    a shard and several devices share the axis; else None. The first sharded spatial axis
    wins (the others are gathered)."""
    layout = _layout_of(query)
    if layout is None:
        return None
    mesh, spec = layout
    split = plan_split(mesh, spec, tuple(query.shape), params)
    return None if split is None else (mesh, split[0], split[1])


def _layout_of(query: jax.Array):
    """``(mesh, spec)`` of a sharded `query`: its type's in an Explicit mesh under tracing, or
    a concrete array's NamedSharding; None if it has neither."""
    sharding = getattr(jax.typeof(query), "sharding", None)
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and not mesh.empty and any(spec or ()):
        return mesh, spec
    # Auto meshes type values without a spec; a concrete array still knows its sharding.
    concrete = getattr(query, "sharding", None) if not isinstance(query, jax.core.Tracer) else None
    if isinstance(concrete, NamedSharding):
        return concrete.mesh, concrete.spec
    return None


__all__ = ["Halo", "gna_sharded", "halo"]
