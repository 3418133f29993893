"""The static plan of a spatial axis split over devices for the halo exchange: NumPy only.

Each device holds a contiguous block (a shard) of one spatial axis. A query's window reaches
only a bounded distance along that axis, so every device needs from its two neighbours only
the keys and values its queries' windows reach (a halo). `halo` measures those halos with the
window rule of `jax_gna._window` (per side, the largest reach over all shards; a causal axis
needs no right halo) and moves shard boundaries that fall just inside a stride group to the
group's end, so every device computes whole stride groups. `shard_plan` then fixes what every
device computes (`ShardPlan`): its query block and key block, the ``xla`` tile tables of its
windows, the masks of the dense fallback, and its FFI call on a view of the whole problem.

The word "rows" means positions along the split axis throughout `jax_gna._halo`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np

from jax_gna import _window, _xla
from jax_gna._mesh import axis_size
from jax_gna._params import GnaParams

AxisName = str | tuple[str, ...]


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


def check_halo(h: Halo, spatial_axis: int, axis_name: AxisName) -> None:
    """ValueError, naming the minimum shard size, if the shards are smaller than the halo."""
    if h.min_shard > h.shard:
        raise ValueError(
            f"Spatial axis {spatial_axis} (extent {h.length}) split over {h.devices} devices of "
            f"mesh axis {axis_name!r} gives shards of {h.shard} positions, but the windows need "
            f"a halo of {h.left} position(s) from the left and {h.right} from the right neighbour;"
            f" the minimum shard size is {h.min_shard}. Use at most "
            f"{max(1, h.length // h.min_shard)} devices along this axis, or shard another axis."
        )


# ---------------------------------------------------------------------------------------------
# What every device computes (static NumPy tables, one entry per device)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: static jit arguments
class ShardPlan:
    """What every device computes: the rows of its query block that are its queries
    (`Halo.computed`) against its key block, halo included.

    A device's query block is its shard followed by the first ``halo.queries`` rows of its
    right neighbour's (`query_block_length` rows in all). Its key block is ``[pad | left halo |
    shard | right halo]``: ``pad`` zero positions go in front of the left halo so that the key
    block starts at the same dilation phase as the queries (the xla tiling pairs query and key
    groups by position modulo the dilation)."""

    halo: Halo
    axis: int  # the sharded spatial axis
    pad: int
    # `_xla.AxisPlan` per axis (the sharded axis: device 0's; shapes are shared)
    axis_plans: tuple
    tables: tuple  # `_xla.tile_table` arrays, stacked over devices
    masks: tuple  # per axis [devices, query block, key block] visibility ("reference")
    # Per device, its FFI call: (query bounds [lo, hi) in the query block, key bounds [lo, hi)
    # in the key block, view `GnaParams.view`), or None for a device without queries.
    calls: tuple

    @property
    def query_block_length(self) -> int:
        return self.halo.shard + self.halo.queries

    @property
    def key_block_length(self) -> int:
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


def _shard_mask(h: Halo, origin: int, p: int, axis_args, queries: int, keys: int):
    """Visibility ``[queries, keys]`` of device `p`'s query block against its key block."""
    full = _window.axis_mask(h.length, *axis_args)
    lo, hi = h.computed(p)
    q = np.arange(queries) + p * h.shard
    x = np.arange(keys) + origin
    inside = (0 <= x) & (x < h.length)
    real = (lo <= q) & (q < hi)
    mask = np.zeros((queries, keys), bool)
    mask[np.ix_(real, inside)] = full[np.ix_(q[real], x[inside])]
    mask[~real] = True  # rows it does not compute: any finite softmax (discarded)
    return mask


def _device_call(h: Halo, origin: int, p: int, axis_args, spatial, axis):
    """Device `p`'s FFI call (see `ShardPlan.calls`): its computed queries against the keys their
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
def shard_plan(spatial: tuple[int, ...], params: GnaParams, axis: int, devices: int) -> ShardPlan:
    """The plan of a problem of spatial shape `spatial` with spatial axis `axis` split over
    `devices` devices (equal shards, the last ones padded)."""
    per_axis = list(zip(params.kernel_size, params.stride, params.dilation, params.is_causal))
    axis_args = per_axis[axis]
    h = halo(spatial[axis], devices, *axis_args)
    d = axis_args[2]
    pad = -h.left % d
    queries = h.shard + h.queries
    keys = pad + h.left + h.shard + h.right
    origins = [p * h.shard - h.left - pad for p in range(devices)]
    block_spatial = spatial[:axis] + (queries,) + spatial[axis + 1 :]
    tiles = _xla.tile_sizes(block_spatial, params)
    group_max = -(-queries // d)
    padded = -(-group_max // tiles[axis]) * tiles[axis]
    windows = [_shard_windows(h, origins[p], p, axis_args, padded) for p in range(devices)]

    def sharded_plan(p, box=None):
        return _xla.plan_from_windows(queries, keys, d, tiles[axis], *windows[p], box=box)

    box = max(sharded_plan(p).box for p in range(devices))
    plans = [
        tuple(
            sharded_plan(p, box) if a == axis else _xla.axis_plan(n, *per_axis[a], tiles[a])
            for a, n in enumerate(spatial)
        )
        for p in range(devices)
    ]
    tables = tuple(np.stack(t) for t in zip(*(_xla.tile_table(pl) for pl in plans)))
    masks = tuple(
        np.stack([_shard_mask(h, origins[p], p, axis_args, queries, keys) for p in range(devices)])
        if a == axis
        else _window.axis_mask(n, *per_axis[a])[None]
        for a, n in enumerate(spatial)
    )
    calls = tuple(_device_call(h, origins[p], p, axis_args, spatial, axis) for p in range(devices))
    return ShardPlan(h, axis, pad, plans[0], tables, masks, calls)


def resized(x, dim: int, n: int) -> jax.ShapeDtypeStruct:
    """The shape and dtype of `x` with `n` positions along `dim`."""
    shape = list(x.shape)
    shape[dim] = n
    return jax.ShapeDtypeStruct(tuple(shape), x.dtype)


def call_shapes(query, key, value, params: GnaParams, plan: ShardPlan):
    """Per device with queries, ``(params with its view, q, k, v shapes)`` of its FFI call
    (`query`/`key`/`value`: any arrays of the problem's batch, heads and head dims)."""
    dim = query.ndim - params.rank - 2 + plan.axis
    for (q_lo, q_hi), (k_lo, k_hi), view in filter(None, plan.calls):
        yield (
            dataclasses.replace(params, view=view),
            resized(query, dim, q_hi - q_lo),
            resized(key, dim, k_hi - k_lo),
            resized(value, dim, k_hi - k_lo),
        )


def views_refusal(
    why_not: Callable, query, key, value, params: GnaParams, plan: ShardPlan
) -> str | None:
    """The first reason ``why_not(q, k, v, params)`` gives against a device's FFI call on its
    view (None: it takes every call)."""
    for view_params, *shapes in call_shapes(query, key, value, params, plan):
        reason = why_not(*shapes, view_params)
        if reason is not None:
            return reason
    return None


def plan_split(mesh, spec, shape: tuple[int, ...], params: GnaParams):
    """``(mesh axes, spatial axis, ShardPlan)`` for a query of `shape` laid out by the
    PartitionSpec `spec` on `mesh`, if its first spatial dim split over several devices can
    run by halo exchange (the halo fits in a shard, the shards are equal); else None (the
    axis must be gathered). Later sharded spatial dims are left to be gathered."""
    n_batch = len(shape) - params.rank - 2
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    for a in range(params.rank):
        entry = spec[n_batch + a]
        if entry is None or axis_size(mesh, entry) < 2:
            continue
        spatial = tuple(shape[n_batch : n_batch + params.rank])
        devices = axis_size(mesh, entry)
        if spatial[a] % devices:
            return None  # uneven shards: only `gna_sharded` pads them
        plan = shard_plan(spatial, params, a, devices)
        if plan.halo.min_shard > plan.halo.shard:
            return None
        return entry, a, plan
    return None


def shard_shapes(plan: ShardPlan, dim: int, *arrays) -> tuple:
    """`arrays` (global shapes) as one shard holds them along the sharded `dim`."""
    return tuple(resized(x, dim, plan.halo.shard) for x in arrays)
