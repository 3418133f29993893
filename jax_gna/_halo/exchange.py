"""The row exchanges of the halo algorithm between neighbouring devices, with their transposes.

Inside a manual-axes context (`jax.shard_map`, or a `custom_partitioning` lowering), a device
builds its key block ``[pad | left halo | shard | right halo]`` and its query block ``[shard |
the right neighbour's first rows]`` from its neighbours' rows (`jax.lax.ppermute`), and takes
back the rows of its shard that its left neighbour computed. Each exchange has a custom VJP
whose transpose sends the gradients of received rows back to their owners, added in place.
Rows are positions along the split axis (`dim`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax_gna._halo.plan import AxisName, ShardPlan


def slice_rows(x: jax.Array, dim: int, bounds: tuple[int, int]) -> jax.Array:
    """Rows ``bounds`` (``[lo, hi)``) of `x` along `dim`."""
    return jax.lax.slice_in_dim(x, *bounds, axis=dim)


def pad_rows(x: jax.Array, dim: int, bounds: tuple[int, int], total: int, fill=0) -> jax.Array:
    """`x` (rows ``bounds`` of a block of `total` rows along `dim`) back in that block."""
    widths = [(0, 0)] * x.ndim
    widths[dim] = (bounds[0], total - bounds[1])
    return jnp.pad(x, widths, constant_values=fill)


def _concat(parts: list, dim: int) -> jax.Array:
    """``jnp.concatenate(parts, dim)``, where an int part stands for that many zero rows, as a
    pad of the largest part with the others written in place: XLA's GPU concatenate kernel of
    these blocks runs at a third of a pad's speed (docs/history.md, "Context parallelism")."""
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
class HaloExchange:
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
        # tensor on the HunyuanVideo shards: docs/history.md, "Context parallelism"). Hence an index
        # XLA cannot fold: `start` plus min(device index, 0), which is 0.
        index = jnp.minimum(jax.lax.axis_index(self.axis_name), 0) + start
        size = rows.shape[self.dim]
        update = jax.lax.dynamic_slice_in_dim(x, index, size, self.dim) + rows
        return jax.lax.dynamic_update_slice_in_dim(x, update, index, self.dim)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _block(x: jax.Array, ex: HaloExchange) -> jax.Array:
    """``x`` with the rows `ex` receives from the neighbours around it."""
    n = x.shape[ex.dim]
    tail = ex.slice(x, n - ex.left, n) if ex.left else None
    from_left, from_right = ex.exchange(tail, ex.slice(x, 0, ex.right) if ex.right else None)
    parts = ([ex.pad] if ex.pad else []) + [p for p in (from_left, x, from_right) if p is not None]
    return _concat(parts, ex.dim) if len(parts) > 1 else x


def block_parts(ex: HaloExchange, g: jax.Array) -> tuple:
    """A block gradient `g` as ``(own rows, left halo rows, right halo rows)`` (None for a
    halo the block does not have)."""
    n = g.shape[ex.dim]
    return call_parts(ex, g, (0, n), n)


def call_parts(ex: HaloExchange, g: jax.Array, bounds: tuple[int, int], total: int) -> tuple:
    """`block_parts` of a block of `total` rows of which `g` holds rows ``bounds`` (zeros
    elsewhere), without building the block."""

    def part(lo: int, hi: int) -> jax.Array:
        a, b = max(lo, bounds[0]), min(hi, bounds[1])
        if a >= b:
            shape = list(g.shape)
            shape[ex.dim] = hi - lo
            return jnp.zeros(shape, g.dtype)
        inner = slice_rows(g, ex.dim, (a - bounds[0], b - bounds[0]))
        return pad_rows(inner, ex.dim, (a - lo, b - lo), hi - lo)

    start, stop = ex.pad + ex.left, total - ex.right
    return (
        part(start, stop),
        part(ex.pad, start) if ex.left else None,
        part(stop, total) if ex.right else None,
    )


def return_parts(ex: HaloExchange, own: jax.Array, of_left, of_right) -> jax.Array:
    """The gradient of `_block` from the block gradient's parts (`block_parts`): the halo
    rows go back to their owners, which add them in place (no pad of the received rows to a
    whole shard)."""
    head, tail = ex.exchange(of_right, of_left)  # back to the owners
    if ex.left:
        own = ex.add_at(own, own.shape[ex.dim] - ex.left, tail)
    if ex.right:
        own = ex.add_at(own, 0, head)
    return own


def _block_transpose(ex: HaloExchange, g: jax.Array) -> jax.Array:
    return return_parts(ex, *block_parts(ex, g))


_block.defvjp(lambda x, ex: (_block(x, ex), None), lambda ex, _, g: (_block_transpose(ex, g),))


def key_exchange(plan: ShardPlan, dim: int, axis_name: AxisName) -> HaloExchange:
    """The exchange that builds a shard's key block ``[pad | left halo | shard | right
    halo]``."""
    h = plan.halo
    return HaloExchange(dim, axis_name, h.devices, plan.pad, h.left, h.right)


def query_exchange(plan: ShardPlan, dim: int, axis_name: AxisName) -> HaloExchange:
    """The exchange that builds a shard's query block: the shard, then the first
    ``halo.queries`` rows of the right neighbour's."""
    h = plan.halo
    return HaloExchange(dim, axis_name, h.devices, right=h.queries)


def key_block(x: jax.Array, plan: ShardPlan, dim: int, axis_name: AxisName) -> jax.Array:
    """A shard's key block ``[pad | left halo | shard | right halo]`` along `dim`; the halos
    come from the neighbours (zeros past the global borders, where no window reaches)."""
    return _block(x, key_exchange(plan, dim, axis_name))


def query_block(x: jax.Array, plan: ShardPlan, dim: int, axis_name: AxisName) -> jax.Array:
    """A shard's query block along `dim`: the shard, then the first ``halo.queries`` rows of
    the right neighbour's (zeros on the last device)."""
    return _block(x, query_exchange(plan, dim, axis_name)) if plan.halo.queries else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _own(x: jax.Array, ex: HaloExchange, shifts: tuple[int, ...]) -> jax.Array:
    """The shard's rows of a query-block result `x`: its first ``shifts[device]`` rows are the
    ones the left neighbour computed (the tail of that device's `x`)."""
    n = x.shape[ex.dim] - ex.right
    own = ex.slice(x, 0, n)
    returned = ex.to_right(ex.slice(x, n, n + ex.right))
    taken = _taken(ex, shifts, x.ndim)
    head = jnp.where(taken, returned, ex.slice(own, 0, ex.right))
    return jax.lax.dynamic_update_slice_in_dim(own, head, 0, ex.dim)


def _taken(ex: HaloExchange, shifts: tuple[int, ...], ndim: int) -> jax.Array:
    """Whether each of the first ``ex.right`` rows of this device was computed by its left
    neighbour (the first ``shifts[device]``)."""
    shift = jnp.asarray(shifts)[jax.lax.axis_index(ex.axis_name)]
    return (jnp.arange(ex.right) < shift).reshape((-1,) + (1,) * (ndim - ex.dim - 1))


def _own_transpose(ex: HaloExchange, shifts: tuple[int, ...], c: jax.Array) -> jax.Array:
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


def own_rows(x: jax.Array, plan: ShardPlan, dim: int, axis_name: AxisName) -> jax.Array:
    """A shard's rows of a result over query blocks (`query_block`): its own rows, of which
    the first ``shifts[p]`` come back from the left neighbour, which computed them."""
    h = plan.halo
    if not h.queries:
        return x
    return _own(x, query_exchange(plan, dim, axis_name), h.shifts)


def own_rows_transpose(c: jax.Array, plan: ShardPlan, dim: int, axis_name: AxisName):
    """`own_rows`' gradient: cotangents over the query block (0 on rows not computed here)."""
    h = plan.halo
    if not h.queries:
        return c
    return _own_transpose(query_exchange(plan, dim, axis_name), h.shifts, c)


def exchange_blocks(query, key, value, plan: ShardPlan, dim: int, axis_name: AxisName) -> tuple:
    """A shard's query block and key and value blocks (`query_block`, `key_block`)."""
    return (
        query_block(query, plan, dim, axis_name),
        key_block(key, plan, dim, axis_name),
        key_block(value, plan, dim, axis_name),
    )
