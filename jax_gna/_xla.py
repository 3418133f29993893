"""``implementation="xla"``: portable, memory-efficient GNA in pure JAX.

Runs on any backend (CPU, GPU, TPU). Work and memory are proportional to tokens x window, not
tokens^2:

1. Each axis is split into its dilation groups (``x = i' * d + g``), which makes every group an
   undilated problem; the groups move next to the batch dim.
2. Queries are cut into multi-dimensional tiles along the group coordinates. Windows are
   monotone in the query, so the keys a tile needs lie in one box per axis: from the window
   start of its first query to the window end of its last. All boxes get one static size.
3. ``lax.map`` walks the tiles (a few at a time), each a small masked softmax over its box.
   The backward pass is a ``lax.scan`` over the same tiles that accumulates dK/dV into its
   carry with in-place updates, so it never materialises anything of size tokens^2 either.

All index tables are static NumPy arrays computed from the shapes and `GnaParams` with
`jax_gna._window`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jax_gna import _nonfinite, _symbolic, _window
from jax_gna._params import GnaParams

_MIN_TILE_TOKENS = 64
_SCORES_PER_CHUNK = 1 << 22  # f32 score elements per lax.map chunk (16 MiB)


# eq=False: hashed by identity; `plan` caches one instance per problem.
@dataclasses.dataclass(frozen=True, eq=False)
class AxisPlan:
    """The tiling of one axis: its queries cut into tiles (in dilation-group coordinates) and,
    per group and tile, the box of keys the tile's windows reach."""

    length: int
    dilation: int
    group_max: int  # positions of the longest dilation group
    tile: int  # queries per tile (group coordinates)
    n_tiles: int
    box: int  # keys per tile box (group coordinates)
    box_start: np.ndarray  # [dilation, n_tiles]
    tile_mask: np.ndarray  # [dilation, n_tiles, tile, box] query/key visibility inside the box
    # Keys may span more positions than the queries (a shard's block with its halo,
    # `jax_gna._halo`); equal to `length` / `group_max` otherwise.
    key_length: int
    key_group_max: int

    @property
    def padded(self) -> int:
        return self.tile * self.n_tiles


def tile_sizes(spatial, params: GnaParams) -> list[int]:
    """Tile along each axis: a multiple of the stride (stride groups share a window, so the box
    stays close to the window) near half the window, grown to a minimum token count."""
    group_max = [-(-n // d) for n, d in zip(spatial, params.dilation)]
    tiles = [
        min(s * max(1, (k // 2) // s), g)
        for k, s, g in zip(params.kernel_size, params.stride, group_max)
    ]
    for a in reversed(range(len(tiles))):
        while math.prod(tiles) < _MIN_TILE_TOKENS and tiles[a] < group_max[a]:
            tiles[a] = min(group_max[a], tiles[a] + params.stride[a])
    return tiles


def _group_windows(
    length: int, k: int, s: int, d: int, causal: bool, padded: int
) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[d, padded]`` (group coordinates) of every dilation group's queries."""
    lengths = _window.group_lengths(length, d)
    starts = np.empty((d, padded), np.int64)
    ends = np.empty((d, padded), np.int64)
    for g, lg in enumerate(lengths):
        # Padded queries take the window of the group's last query: finite, and discarded.
        iq = np.minimum(np.arange(padded), lg - 1)
        starts[g], ends[g] = _window.window_in_group(iq, np.int64(lg), k, s, causal)
    return starts, ends


def plan_from_windows(
    length: int,
    key_length: int,
    d: int,
    tile: int,
    starts: np.ndarray,
    ends: np.ndarray,
    box: int | None = None,
) -> AxisPlan:
    """The tiling of one axis from its query windows.

    Args:
      length, key_length: query and key positions along the axis.
      d: dilation; query and key position ``x`` belong to group ``x % d``, coordinate ``x // d``.
      tile: queries per tile (group coordinates).
      starts, ends: ``[d, n_tiles * tile]`` window of every (padded) query, in key group
        coordinates; padded queries must hold a valid window too.
      box: keys per tile box, at least the largest window span of a tile; default that span.
    """
    group_max = -(-length // d)
    key_group_max = -(-key_length // d)
    n_tiles = starts.shape[1] // tile
    first = starts[:, ::tile]
    last_end = ends[:, tile - 1 :: tile]
    box = max(int((last_end - first).max()), box or 0)
    box_start = np.minimum(first, key_group_max - box)
    keys = box_start[:, :, None] + np.arange(box)  # [d, n_tiles, box]
    st = starts.reshape(d, n_tiles, tile)[..., None]
    en = ends.reshape(d, n_tiles, tile)[..., None]
    tile_mask = (st <= keys[:, :, None, :]) & (keys[:, :, None, :] < en)
    return AxisPlan(
        length, d, group_max, tile, n_tiles, box, box_start, tile_mask, key_length, key_group_max
    )


def axis_plan(length: int, k: int, s: int, d: int, causal: bool, tile: int) -> AxisPlan:
    """The tiling of a whole axis of `length` positions with window (k, s, d, causal)."""
    group_max = -(-length // d)
    padded = -(-group_max // tile) * tile
    starts, ends = _group_windows(length, k, s, d, causal, padded)
    return plan_from_windows(length, length, d, tile, starts, ends)


@functools.lru_cache(maxsize=64)
def plan(spatial: tuple[int, ...], params: GnaParams) -> tuple[AxisPlan, ...]:
    """The tiling of every axis of a problem of spatial shape `spatial`."""
    tiles = tile_sizes(spatial, params)
    return tuple(
        axis_plan(n, k, s, d, c, t)
        for n, k, s, d, c, t in zip(
            spatial, params.kernel_size, params.stride, params.dilation, params.is_causal, tiles
        )
    )


@functools.lru_cache(maxsize=64)
def tile_table(plans: tuple[AxisPlan, ...]) -> tuple[np.ndarray, ...]:
    """Per tile (all dilation groups x tiles, C order): group, query offset and box offset per
    axis, and the per-axis masks."""
    groups, q_off, k_off = [], [], []
    masks = [[] for _ in plans]
    for gs in itertools.product(*(range(p.dilation) for p in plans)):
        for ts in itertools.product(*(range(p.n_tiles) for p in plans)):
            groups.append(gs)
            q_off.append([t * p.tile for t, p in zip(ts, plans)])
            k_off.append([p.box_start[g, t] for g, t, p in zip(gs, ts, plans)])
            for a, (g, t, p) in enumerate(zip(gs, ts, plans)):
                masks[a].append(p.tile_mask[g, t])
    return (
        np.asarray(groups, np.int32),
        np.asarray(q_off, np.int32),
        np.asarray(k_off, np.int32),
        *(np.asarray(m) for m in masks),
    )


def _to_groups(x: jax.Array, plans, pad_to_tiles: bool, fill: float = 0.0) -> jax.Array:
    """[B, X..., H, D] -> [B, d..., G..., H, D] with G the group positions, padded with
    `fill` (and, with `pad_to_tiles`, up to whole tiles)."""
    r = len(plans)
    # Queries (padded to tiles) and keys may have different extents.
    shape = [
        (p.group_max, p.length) if pad_to_tiles else (p.key_group_max, p.key_length) for p in plans
    ]
    pad = [(0, 0)] + [(0, g * p.dilation - n) for (g, n), p in zip(shape, plans)] + [(0, 0)] * 2
    x = jnp.pad(x, pad, constant_values=fill)
    split = [x.shape[0]]
    for (g, _), p in zip(shape, plans):
        split += [g, p.dilation]
    x = x.reshape(*split, *x.shape[-2:])
    order = [0] + [2 + 2 * a for a in range(r)] + [1 + 2 * a for a in range(r)]
    x = x.transpose(*order, 2 * r + 1, 2 * r + 2)
    if pad_to_tiles:
        tail = [(0, p.padded - p.group_max) for p in plans]
        x = jnp.pad(x, [(0, 0)] * (1 + r) + tail + [(0, 0)] * 2, constant_values=fill)
    return x


def _from_tiles(y: jax.Array, plans) -> jax.Array:
    """Per-tile results [n, B, T..., *rest] back to the user layout [B, X..., *rest]."""
    r = len(plans)
    rest = y.shape[2 + r :]
    y = y.reshape(
        *(p.dilation for p in plans),
        *(p.n_tiles for p in plans),
        y.shape[1],
        *(p.tile for p in plans),
        *rest,
    )
    # -> [B, (G_1, d_1), (G_2, d_2), ..., rest] with G = n_tiles * tile
    order = [2 * r]
    for a in range(r):
        order += [r + a, 2 * r + 1 + a, a]
    y = y.transpose(*order, *range(3 * r + 1, y.ndim))
    y = y.reshape(y.shape[0], *(p.padded * p.dilation for p in plans), *rest)
    # Group coordinate i' and group g sit at i' * d + g: crop the padding.
    return y[(slice(None),) + tuple(slice(0, p.length) for p in plans)]


def _from_groups(y: jax.Array, plans) -> jax.Array:
    """Inverse of `_to_groups` (without tile padding, i.e. keys) for [B, d..., G..., H, D]."""
    r = len(plans)
    order = [0]
    for a in range(r):
        order += [1 + r + a, 1 + a]
    y = y.transpose(*order, 1 + 2 * r, 2 + 2 * r)
    y = y.reshape(y.shape[0], *(p.key_group_max * p.dilation for p in plans), *y.shape[-2:])
    return y[(slice(None),) + tuple(slice(0, p.key_length) for p in plans)]


def _slice(x: jax.Array, groups, offsets, sizes) -> jax.Array:
    """A [B, 1..., sizes..., H, D] block of a group-layout tensor."""
    r = len(sizes)
    zero = jnp.zeros((), jnp.int32)
    start = (zero, *groups, *offsets, zero, zero)
    return jax.lax.dynamic_slice(x, start, (x.shape[0], *([1] * r), *sizes, *x.shape[-2:]))


def tile_mask(masks) -> jax.Array:
    """Per-axis masks [T_a, box_a] -> [prod T, prod box]."""
    full = jnp.ones((1, 1), bool)
    for m in masks:
        full = (full[:, None, :, None] & m[None, :, None, :]).reshape(
            full.shape[0] * m.shape[0], full.shape[1] * m.shape[1]
        )
    return full


def _tile_scores(q_t, k_t, mask, scale):
    """q_t [B, Tq, Hkv, G, D], k_t [B, Tk, Hkv, D] -> fp32 scores [B, Hkv, G, Tq, Tk], -inf
    where `mask` is False (None: no mask)."""
    s = jnp.einsum("bqkgd,bmkd->bkgqm", q_t, k_t, preferred_element_type=jnp.float32) * scale
    return s if mask is None else jnp.where(mask, s, -jnp.inf)


def _prepare(query, key, value, params, plans):
    rank = params.rank
    n_batch = query.ndim - rank - 2
    if plans is None:
        plans = plan(tuple(query.shape[n_batch : n_batch + rank]), params)
    b = math.prod(query.shape[:n_batch])

    def flat(x):
        return x.reshape(b, *x.shape[n_batch:]).astype(jnp.float32)

    qg = _to_groups(flat(query), plans, pad_to_tiles=True)
    kg = _to_groups(flat(key), plans, pad_to_tiles=False)
    vg = _to_groups(flat(value), plans, pad_to_tiles=False)
    return plans, n_batch, qg, kg, vg


def forward(query, key, value, params: GnaParams, plans=None, table=None, out_dtype=None):
    """``(out, lse)``, ``out`` in `out_dtype` (default the query's). `plans` and `table`
    (`tile_table` arrays, possibly traced) override the ones derived from the shapes and
    `params` (`jax_gna._halo` passes a shard's)."""
    plans, n_batch, qg, kg, vg = _prepare(query, key, value, params, plans)
    vg = _nonfinite.flag_rows(vg)  # finite values; nan comes back in the rows that see one
    heads, kv_heads = query.shape[-2], key.shape[-2]
    dim, dim_v = query.shape[-1], value.shape[-1]
    tiles = tuple(p.tile for p in plans)
    boxes = tuple(p.box for p in plans)
    groups, q_off, k_off, *masks = tile_table(plans) if table is None else table
    b = qg.shape[0]
    tq, tk = math.prod(tiles), math.prod(boxes)

    def one_tile(xs):
        g, qo, ko, *ms = xs
        q_t = _slice(qg, g, qo, tiles).reshape(b, tq, kv_heads, heads // kv_heads, dim)
        k_t = _slice(kg, g, ko, boxes).reshape(b, tk, kv_heads, dim)
        v_t = _slice(vg, g, ko, boxes).reshape(b, tk, kv_heads, dim_v + 1)
        s = _tile_scores(q_t, k_t, tile_mask(ms), params.scale)
        lse = jax.nn.logsumexp(s, axis=-1)
        o = jnp.einsum("bkgqm,bmkd->bqkgd", jnp.exp(s - lse[..., None]), v_t)
        o = _nonfinite.poison_rows(o)
        return o.reshape(b, tq, heads, dim_v), lse.reshape(b, heads, tq)

    # Symbolic batch dims and heads (jax.export) count as 1: the budget then holds per entry.
    scores_per_tile = _symbolic.static_product((*query.shape[:n_batch], heads)) * tq * tk
    chunk = max(1, min(len(groups), _SCORES_PER_CHUNK // max(1, scores_per_tile)))
    if _symbolic.static_product((b, heads, dim_v)) == 0:
        chunk = None  # lax.map's chunked path cannot reshape empty results; all tiles are cheap
    o, lse = jax.lax.map(one_tile, (groups, q_off, k_off, *masks), batch_size=chunk)
    lse = jnp.swapaxes(lse, -1, -2)  # [n, B, Tq, H]
    out = _from_tiles(o.reshape(*o.shape[:2], *tiles, *o.shape[-2:]), plans)
    lse = _from_tiles(lse.reshape(*lse.shape[:2], *tiles, 1, heads), plans)[..., 0, :]
    lead = query.shape[:n_batch]
    out = out.reshape(*lead, *out.shape[1:]).astype(out_dtype or query.dtype)
    return out, lse.reshape(*lead, *lse.shape[1:])


def backward(query, key, value, out, lse, dout, dlse, params: GnaParams, plans=None, table=None):
    """``(dq, dk, dv)`` given the forward's ``out``/``lse`` and the cotangents of both; `plans`
    and `table` as in `forward`."""
    plans, n_batch, qg, kg, vg = _prepare(query, key, value, params, plans)
    heads, kv_heads = query.shape[-2], key.shape[-2]
    group = heads // kv_heads
    tiles = tuple(p.tile for p in plans)
    boxes = tuple(p.box for p in plans)
    groups, q_off, k_off, *masks = tile_table(plans) if table is None else table
    b = qg.shape[0]
    tq, tk = math.prod(tiles), math.prod(boxes)
    spatial = tuple(p.length for p in plans)

    f32 = jnp.float32
    dim, dim_v = query.shape[-1], value.shape[-1]
    dout = dout.astype(f32).reshape(b, *spatial, heads, dim_v)
    dlse = dlse.astype(f32).reshape(b, *spatial, heads)
    delta = jnp.sum(dout * out.astype(f32).reshape(dout.shape), -1) - dlse
    dog = _to_groups(dout, plans, pad_to_tiles=True)
    # lse and delta ride along as [.., H, 1] so the group layout helpers apply unchanged. Padded
    # rows, and rows whose cotangents are all zero, get lse = +inf, hence zero probabilities:
    # they contribute nothing, not even 0 * nan from a non-finite value they see.
    active = jnp.any(dout != 0, axis=-1) | (dlse != 0)
    lse = jnp.where(active, lse.astype(f32).reshape(active.shape), jnp.inf)[..., None]
    lseg = _to_groups(lse, plans, pad_to_tiles=True, fill=jnp.inf)
    deltag = _to_groups(delta[..., None], plans, pad_to_tiles=True)
    # Zero probabilities must not meet non-finite operands (0 * nan): the products take the
    # finite parts. A non-finite value still reaches dS where it belongs, through delta (the
    # output of a query whose window holds it is nan).
    qg, kg, vg = (_nonfinite.finite(x) for x in (qg, kg, vg))

    def one_tile(carry, xs):
        dk, dv = carry
        g, qo, ko, *ms = xs
        q_t = _slice(qg, g, qo, tiles).reshape(b, tq, kv_heads, group, dim)
        do_t = _slice(dog, g, qo, tiles).reshape(b, tq, kv_heads, group, dim_v)
        lse_t = _slice(lseg, g, qo, tiles).reshape(b, tq, kv_heads, group)
        delta_t = _slice(deltag, g, qo, tiles).reshape(b, tq, kv_heads, group)
        k_t = _slice(kg, g, ko, boxes).reshape(b, tk, kv_heads, dim)
        v_t = _slice(vg, g, ko, boxes).reshape(b, tk, kv_heads, dim_v)
        s = _tile_scores(q_t, k_t, None, params.scale)
        # [B, Hkv, G, Tq, Tk]; masked pairs exactly 0 even in rows whose lse is nan.
        p = jnp.where(tile_mask(ms), s - jnp.moveaxis(lse_t, 1, 3)[..., None], -jnp.inf)
        p = jnp.exp(p)
        dv_t = jnp.einsum("bkgqm,bqkgd->bmkd", p, do_t)
        dp = jnp.einsum("bqkgd,bmkd->bkgqm", do_t, v_t)
        ds = jnp.where(p == 0, 0.0, p * (dp - jnp.moveaxis(delta_t, 1, 3)[..., None]))
        ds = ds * params.scale
        dq_t = jnp.einsum("bkgqm,bmkd->bqkgd", ds, k_t)
        dk_t = jnp.einsum("bkgqm,bqkgd->bmkd", ds, q_t)
        box_shape = (b, *([1] * len(tiles)), *boxes, kv_heads)
        dk = _add_block(dk, dk_t.reshape(*box_shape, dim), g, ko)
        dv = _add_block(dv, dv_t.reshape(*box_shape, dim_v), g, ko)
        return (dk, dv), dq_t.reshape(b, tq, heads, dim)

    init = (jnp.zeros_like(kg, f32), jnp.zeros_like(vg, f32))  # (inside shard_map: kg's type)
    (dk, dv), dq = jax.lax.scan(one_tile, init, (groups, q_off, k_off, *masks))
    dq = _from_tiles(dq.reshape(*dq.shape[:2], *tiles, *dq.shape[-2:]), plans)
    lead = query.shape[:n_batch]
    dq = dq.reshape(*lead, *dq.shape[1:]).astype(query.dtype)
    dk = _from_groups(dk, plans)
    dv = _from_groups(dv, plans)
    return dq, dk.reshape(key.shape).astype(key.dtype), dv.reshape(value.shape).astype(value.dtype)


def _add_block(acc: jax.Array, block: jax.Array, groups, offsets) -> jax.Array:
    zero = jnp.zeros((), jnp.int32)
    start = (zero, *groups, *offsets, zero, zero)
    current = jax.lax.dynamic_slice(acc, start, block.shape)
    return jax.lax.dynamic_update_slice(acc, current + block, start)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gna_xla(query, key, value, params: GnaParams):
    """``(out, lse)``; differentiable in q, k, v with cotangents for both results."""
    return forward(query, key, value, params)


def _gna_xla_fwd(query, key, value, params):
    out, lse = forward(query, key, value, params)
    return (out, lse), (query, key, value, out, lse)


def _gna_xla_bwd(params, residuals, cotangents):
    query, key, value, out, lse = residuals
    dout, dlse = cotangents
    return backward(query, key, value, out, lse, dout, dlse, params)


gna_xla.defvjp(_gna_xla_fwd, _gna_xla_bwd)
