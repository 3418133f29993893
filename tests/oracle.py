"""Independent brute-force oracle of GNA (docs/design.md, "GNA semantics"), in plain Python and
float64 NumPy.

Written straight from the rule, one query at a time, without importing anything from
`jax_gna`: every test compares the package against this file (and this file against the worked
examples of NATTEN's reference mask in `test_oracle.py`).

Per axis of extent ``L``, window ``K``, stride ``s``, dilation ``d``, for query ``i``::

    g = i % d;  i' = i // d;  Lg = ceil((L - g) / d)
    non-causal: leader = min((i'//s)*s + s//2, Lg-1); start = clamp(leader - K//2, 0, Lg-K)
                end = start + K
    causal:     leader = min((i'//s)*s + s-1, Lg-1);  start = max(leader-K+1, 0); end = i'+1
    key j visible iff j % d == g and start <= j // d < end

A key is visible in N-d iff it is visible along every axis. Extra (additional) key/value
tokens are visible to every query, in the same softmax.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def legal(length: int, kernel_size: int, stride: int, dilation: int) -> bool:
    """Whether one axis is a legal GNA configuration (K = 1: the window is the query alone)."""
    return (
        kernel_size >= 1
        and 1 <= stride <= kernel_size
        and dilation >= 1
        and kernel_size * dilation <= length
    )


def group_length(length: int, dilation: int, group: int) -> int:
    """Number of positions ``i`` in ``[0, length)`` with ``i % dilation == group``, by counting."""
    return sum(1 for i in range(length) if i % dilation == group)


def window(
    i: int, length: int, kernel_size: int, stride: int, dilation: int, is_causal: bool
) -> tuple[int, int, int]:
    """``(group, start, end)`` of query ``i`` along one axis; start/end in group coordinates."""
    g = i % dilation
    ig = i // dilation
    lg = math.ceil((length - g) / dilation)
    k, s = kernel_size, stride
    if is_causal:
        leader = min((ig // s) * s + s - 1, lg - 1)
        start = max(leader - k + 1, 0)
        end = ig + 1
    else:
        leader = min((ig // s) * s + s // 2, lg - 1)
        start = min(max(leader - k // 2, 0), lg - k)
        end = start + k
    return g, start, end


def axis_keys(
    i: int, length: int, kernel_size: int, stride: int, dilation: int, is_causal: bool
) -> list[int]:
    """Keys visible to query ``i`` along one axis, in increasing order."""
    g, start, end = window(i, length, kernel_size, stride, dilation, is_causal)
    return [j for j in range(length) if j % dilation == g and start <= j // dilation < end]


def _per_axis(value, rank: int) -> tuple:
    if isinstance(value, tuple | list):
        assert len(value) == rank
        return tuple(value)
    return (value,) * rank


def visible(shape, kernel_size, stride=1, dilation=1, is_causal=False) -> np.ndarray:
    """Boolean ``[N, N]`` (query, key) visibility over row-major flattened tokens."""
    shape = tuple(shape)
    rank = len(shape)
    ks = _per_axis(kernel_size, rank)
    st = _per_axis(stride, rank)
    dl = _per_axis(dilation, rank)
    ca = _per_axis(is_causal, rank)
    n = math.prod(shape)
    out = np.zeros((n, n), dtype=bool)
    for qi, q in enumerate(itertools.product(*(range(x) for x in shape))):
        per_axis = [axis_keys(q[a], shape[a], ks[a], st[a], dl[a], ca[a]) for a in range(rank)]
        for key in itertools.product(*per_axis):
            kj = 0
            for a in range(rank):
                kj = kj * shape[a] + key[a]
            out[qi, kj] = True
    return out


def view_visible(extent, views, kernel_size, stride=1, dilation=1, is_causal=False) -> np.ndarray:
    """Boolean ``[N_query, N_key]`` visibility of a view of the problem on the grid `extent`:
    per axis ``(q_offset, q_length, kv_offset, kv_length)``, local query ``i`` is position
    ``q_offset + i`` and local key ``j`` position ``kv_offset + j``; positions outside
    ``[0, extent)`` see nothing and are never seen. Built from `axis_keys` on the whole axis."""
    extent = tuple(extent)
    rank = len(extent)
    ks, st, dl, ca = (_per_axis(x, rank) for x in (kernel_size, stride, dilation, is_causal))
    full = np.ones((1, 1), dtype=bool)
    for a in range(rank):
        qo, nq, ko, nk = views[a]
        m = np.zeros((nq, nk), dtype=bool)
        for i in range(nq):
            if not 0 <= qo + i < extent[a]:
                continue
            for j in axis_keys(qo + i, extent[a], ks[a], st[a], dl[a], ca[a]):
                if 0 <= j - ko < nk:
                    m[i, j - ko] = True
        full = (full[:, None, :, None] & m[None, :, None, :]).reshape(
            full.shape[0] * nq, full.shape[1] * nk
        )
    return full


def tile_pair_counts(visible: np.ndarray, q_id: np.ndarray, k_id: np.ndarray):
    """Visible token pairs per (Q tile, KV tile), from token -> tile ids (`tile_ids`) and
    visibility (`visible`): ``(q_tiles, k_tiles, pairs, n_valid_q)`` with the distinct Q and KV
    tile ids (rows), ``pairs[i, j]`` for Q tile ``q_tiles[i]`` and KV tile ``k_tiles[j]``, and the
    number of tokens of each Q tile."""
    q_tiles, q_inv = np.unique(q_id, axis=0, return_inverse=True)
    k_tiles, k_inv = np.unique(k_id, axis=0, return_inverse=True)
    q_member = np.zeros((len(q_tiles), len(q_id)), dtype=np.int64)
    q_member[q_inv.ravel(), np.arange(len(q_id))] = 1
    k_member = np.zeros((len(k_tiles), len(k_id)), dtype=np.int64)
    k_member[k_inv.ravel(), np.arange(len(k_id))] = 1
    pairs = q_member @ visible.astype(np.int64) @ k_member.T
    return q_tiles, k_tiles, pairs, q_member.sum(axis=1)


def tile_pairs(visible: np.ndarray, q_id: np.ndarray, k_id: np.ndarray, kv_slots: int):
    """Per Q tile: visited KV tiles and full KV tiles, from token -> tile ids (`tile_ids`) and
    visibility (`visible`). A (Q tile, KV tile) pair is visited when it holds a visible pair,
    full when every pair of a query of the Q tile and a slot of the KV tile (``kv_slots`` slots;
    a slot past the end of the layout is padding, never visible) is visible."""
    _, _, pairs, n_valid_q = tile_pair_counts(visible, q_id, k_id)
    visited = (pairs > 0).sum(axis=1)
    full = (pairs == n_valid_q[:, None] * kv_slots).sum(axis=1)
    return visited, full


def tile_ids(shape, dilation, tile) -> np.ndarray:
    """Per token (row-major): (group per axis, tile index per axis) in group coordinates."""
    coords = np.array(list(itertools.product(*(range(x) for x in shape))))
    d = np.array(dilation)
    return np.concatenate([coords % d, (coords // d) // np.array(tile)], axis=1)


def _flat(x: np.ndarray, n_batch: int, n_tokens: int) -> np.ndarray:
    """[B..., T..., H, D] -> [prod B, prod T, H, D] in float64."""
    b = math.prod(x.shape[:n_batch])
    return np.asarray(x, dtype=np.float64).reshape(b, n_tokens, *x.shape[-2:])


def attention(
    query,
    key,
    value,
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    *,
    rank: int,
    extra_k=None,
    extra_v=None,
    scale=None,
    mask: np.ndarray | None = None,
    dout=None,
    dlse=None,
):
    """GNA forward (and optionally backward) in float64, one query at a time.

    Args:
      query ``[B..., X..., H, D]``, key ``[B..., X..., Hkv, D]``, value ``[B..., X..., Hkv, Dv]``,
      extra_k/extra_v ``[B..., E, Hkv, D/Dv]``; any float dtype (converted to float64).
      rank: number of spatial axes. mask: a precomputed `visible` (else built here), or
      ``[N_query, N_key]`` for keys with other spatial dims than the queries (`view_visible`);
      a query without any visible key gets out 0 and lse -inf (and no gradient).
      dout ``[B..., X..., H, Dv]`` and dlse ``[B..., X..., H]``: cotangents; if given, the
      gradients are returned too.

    Returns:
      ``(out, lse)`` float64 ``[B..., X..., H, Dv]`` and ``[B..., X..., H]``; with cotangents
      ``(out, lse, (dq, dk, dv, dek, dev))`` (dek/dev None without extra tokens).
    """
    query, key, value = (np.asarray(x) for x in (query, key, value))
    n_batch = query.ndim - rank - 2
    batch_shape = query.shape[:n_batch]
    spatial = query.shape[n_batch : n_batch + rank]
    n = math.prod(spatial)
    heads, kv_heads = query.shape[-2], key.shape[-2]
    group = heads // kv_heads
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if mask is None:
        mask = visible(spatial, kernel_size, stride, dilation, is_causal)
    n_k = math.prod(key.shape[n_batch : n_batch + rank])
    q = _flat(query, n_batch, n)
    k, v = (_flat(x, n_batch, n_k) for x in (key, value))
    has_extra = extra_k is not None
    if has_extra:
        n_extra = np.asarray(extra_k).shape[-3]
        ek = _flat(np.asarray(extra_k), n_batch, n_extra)
        ev = _flat(np.asarray(extra_v), n_batch, n_extra)
    b = q.shape[0]
    dv_dim = v.shape[-1]
    out = np.zeros((b, n, heads, dv_dim))
    lse = np.zeros((b, n, heads))
    grads = dout is not None
    if grads:
        do = _flat(np.asarray(dout), n_batch, n)
        dl = np.asarray(dlse, dtype=np.float64).reshape(b, n, heads)
        dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
        if has_extra:
            dek, dev = np.zeros_like(ek), np.zeros_like(ev)
    kv_of_head = np.array([h // group for h in range(heads)], dtype=np.int64)
    for bi in range(b):
        for i in range(n):
            keys = [j for j in range(n_k) if mask[i, j]]
            if not keys and not has_extra:
                lse[bi, i] = -np.inf  # an empty softmax: out stays 0
                continue
            ks = k[bi, keys][:, kv_of_head]  # [m, H, D]
            vs = v[bi, keys][:, kv_of_head]  # [m, H, Dv]
            if has_extra:
                ks = np.concatenate([ks, ek[bi][:, kv_of_head]], 0)
                vs = np.concatenate([vs, ev[bi][:, kv_of_head]], 0)
            s = np.einsum("hd,mhd->hm", q[bi, i], ks) * scale
            m = s.max(axis=1, keepdims=True)
            total = np.exp(s - m).sum(axis=1, keepdims=True)
            lse[bi, i] = (np.log(total) + m)[:, 0]
            p = np.exp(s - lse[bi, i][:, None])  # [H, m]
            out[bi, i] = np.einsum("hm,mhd->hd", p, vs)
            if not grads:
                continue
            dp = np.einsum("hd,mhd->hm", do[bi, i], vs)
            ds = p * (dp - np.sum(p * dp, 1, keepdims=True) + dl[bi, i][:, None])
            dq[bi, i] = scale * np.einsum("hm,mhd->hd", ds, ks)
            dks = scale * np.einsum("hm,hd->mhd", ds, q[bi, i])  # per query head
            dvs = np.einsum("hm,hd->mhd", p, do[bi, i])
            nk = len(keys)
            for h in range(heads):
                dk[bi, keys, kv_of_head[h]] += dks[:nk, h]
                dv[bi, keys, kv_of_head[h]] += dvs[:nk, h]
                if has_extra:
                    dek[bi, :, kv_of_head[h]] += dks[nk:, h]
                    dev[bi, :, kv_of_head[h]] += dvs[nk:, h]
    out = out.reshape(*batch_shape, *spatial, heads, dv_dim)
    lse = lse.reshape(*batch_shape, *spatial, heads)
    if not grads:
        return out, lse
    unflat = lambda x, like: x.reshape(np.asarray(like).shape)  # noqa: E731
    grad_tuple = (
        unflat(dq, query),
        unflat(dk, key),
        unflat(dv, value),
        unflat(dek, extra_k) if has_extra else None,
        unflat(dev, extra_v) if has_extra else None,
    )
    return out, lse, grad_tuple


def random_window(rng: np.random.Generator, shape) -> tuple[tuple, tuple, tuple, tuple]:
    """A uniformly drawn legal ``(kernel_size, stride, dilation, is_causal)`` for `shape`
    (NATTEN's sweep: K ~ U[2, L], d ~ U[1, L // K], s ~ U[1, K], causal per axis)."""
    ks, ss, ds, cs = [], [], [], []
    for n in shape:
        k = int(rng.integers(2, n + 1))
        ds.append(int(rng.integers(1, n // k + 1)))
        ss.append(int(rng.integers(1, k + 1)))
        ks.append(k)
        cs.append(bool(rng.integers(0, 2)))
    return tuple(ks), tuple(ss), tuple(ds), tuple(cs)
