"""GNA window math (the rule of docs/design.md, "GNA semantics"), vectorised with NumPy.

This module and `cuda/include/gna/window.h` are the only two places the window rule lives;
`tests/test_window_cpp.py` checks them against each other.

Coordinates along one axis of extent ``L`` with dilation ``d``: position ``i`` belongs to the
dilation group ``g = i % d`` and sits at ``i // d`` inside it; the group holds
``ceil((L - g) / d)`` positions. Windows are half-open ranges ``[start, end)`` of group
coordinates: key ``j`` is visible to query ``i`` iff ``j % d == i % d`` and
``start[i] <= j // d < end[i]``. A key is visible in N-d iff it is visible along every axis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np


def group_lengths(length: int, dilation: int) -> np.ndarray:
    """Number of positions in each dilation group, shape ``[dilation]``."""
    g = np.arange(dilation)
    return (length - g + dilation - 1) // dilation


def window_in_group(
    iq: np.ndarray, lg: np.ndarray, kernel_size: int, stride: int, is_causal: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Window [start, end) of group coordinate ``iq`` in a group of ``lg`` positions."""
    if is_causal:
        # The leader is the last query of the stride group; the end is the query's own.
        leader = np.minimum((iq // stride) * stride + stride - 1, lg - 1)
        return np.maximum(leader - kernel_size + 1, 0), iq + 1
    # The leader is the (right-)centre of the stride group; windows shift at the borders.
    leader = np.minimum((iq // stride) * stride + stride // 2, lg - 1)
    start = np.clip(leader - kernel_size // 2, 0, lg - kernel_size)
    return start, start + kernel_size


@functools.lru_cache(maxsize=256)
def neighborhood(
    length: int, kernel_size: int, stride: int = 1, dilation: int = 1, is_causal: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Window of every query position along one axis.

    Returns:
      ``(start, end)``, int64 arrays of shape ``[length]`` in group coordinates (see the module
      docstring). The arrays are cached and read-only.
    """
    i = np.arange(length, dtype=np.int64)
    lg = group_lengths(length, dilation)[i % dilation]
    start, end = window_in_group(i // dilation, lg, kernel_size, stride, is_causal)
    start, end = start.astype(np.int64), end.astype(np.int64)
    start.flags.writeable = end.flags.writeable = False
    return start, end


@functools.lru_cache(maxsize=256)
def inverse_neighborhood(
    length: int, kernel_size: int, stride: int = 1, dilation: int = 1, is_causal: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Queries that attend to every key position along one axis (the backward's view).

    Window starts and ends are non-decreasing in the query, so the queries whose window holds
    key ``j'`` (group coordinates) form the range ``[first query with end > j', first query
    with start > j')``.

    Returns:
      ``(q_start, q_end)``, int64 arrays of shape ``[length]`` over key positions, in group
      coordinates: query ``i`` attends to key ``j`` iff ``i % d == j % d`` and
      ``q_start[j] <= i // d < q_end[j]``.
    """
    q_start = np.empty(length, dtype=np.int64)
    q_end = np.empty(length, dtype=np.int64)
    for g, lg in enumerate(group_lengths(length, dilation)):
        iq = np.arange(lg)
        start, end = window_in_group(iq, np.int64(lg), kernel_size, stride, is_causal)
        jk = iq  # keys of the group, in group coordinates
        q_start[g::dilation] = np.searchsorted(end, jk, side="right")
        q_end[g::dilation] = np.searchsorted(start, jk, side="right")
    q_start.flags.writeable = q_end.flags.writeable = False
    return q_start, q_end


def axis_mask(
    length: int, kernel_size: int, stride: int = 1, dilation: int = 1, is_causal: bool = False
) -> np.ndarray:
    """Boolean visibility ``[query, key]`` along one axis."""
    start, end = neighborhood(length, kernel_size, stride, dilation, is_causal)
    j = np.arange(length)
    same_group = (j[None, :] % dilation) == (np.arange(length)[:, None] % dilation)
    jg = (j // dilation)[None, :]
    return same_group & (start[:, None] <= jg) & (jg < end[:, None])


def mask(
    shape: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[bool],
) -> np.ndarray:
    """Boolean visibility ``[N, N]`` over row-major flattened tokens (``N = prod(shape)``)."""
    full = np.ones((1, 1), dtype=bool)
    for axis in zip(shape, kernel_size, stride, dilation, is_causal):
        m = axis_mask(*axis)
        full = (full[:, None, :, None] & m[None, :, None, :]).reshape(
            full.shape[0] * m.shape[0], full.shape[1] * m.shape[1]
        )
    return full


def attended_keys(
    shape: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[bool],
) -> int:
    """Total number of visible (query, key) pairs, for FLOP counts."""
    total = 1
    for axis in zip(shape, kernel_size, stride, dilation, is_causal):
        start, end = neighborhood(*axis)
        total *= int(np.sum(end - start))
    return total


def dense_fraction(shape: Sequence[int], kernel_size: Sequence[int]) -> float:
    """Fraction of dense attention a non-causal window covers (the FLOP-wise sparsity)."""
    return math.prod(kernel_size) / math.prod(shape)
