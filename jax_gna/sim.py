"""Analytical simulator: which KV tiles the kernels visit, and the speedup that allows.

Pure Python and NumPy; no GPU. For a GNA problem (`Problem`) and a tile configuration (a Q tile
shape and a KV tile shape), `simulate` counts, for every Q tile, the KV tiles a fused kernel with
**static KV tiling** visits, and derives the figures of the GNA paper's simulator (Hassani et
al., App. B.1):

- ``bound``: the analytical upper-bound speedup over dense attention with the same tiles, dense
  work / critical path, where the critical path is the Q tile that visits the most KV tiles
  (every Q tile is one CTA and they run in parallel waves). Without dilation this is
  ``dense KV tiles / max over Q tiles of visited KV tiles``. This reproduces the paper's and
  NATTEN's published simulator numbers.
- ``token_bound``: the same critical path held against dense attention over the real tokens
  (``N^2`` pairs, no padding). Equal to ``bound`` when the tiles divide the layout, lower when
  they pad. Tile configurations are compared by it (`choose_tiles`), since each one's own
  padded dense baseline would otherwise flatter the configurations that pad most.
- ``flop_speedup``: dense (query, key) pairs / attended pairs; what perfect tiles would reach.
- ``mean_speedup``: dense work / visited (Q tile, KV tile) pairs; ignores the critical path, so
  it overestimates.
- ``full`` and ``partial`` visited pairs: a full pair needs no per-element mask; a problem
  whose visited pairs are all full is **perfectly block-sparse** and its bound equals its
  FLOP-wise speedup when the tiles divide the problem.

The model, stated once:

- **Box rule** (what `cuda/include/gna/tile_box.h` and the kernels do). Along each axis a Q tile
  visits the KV tiles from ``floor(start(first query) / kv_tile)`` to ``ceil(end(last valid
  query) / kv_tile)``; a multi-dimensional Q tile visits the product (box) of those ranges.
  Windows are monotone in the query and consecutive windows leave no gap, so every tile of the
  box holds at least one visible pair: the box is exactly the set of KV tiles with work.
- **Dilation** is modelled the way the kernels run it: each dilation group (``i % d`` per axis)
  is an undilated problem of ``ceil((L - g) / d)`` positions, tiled on its own in group
  coordinates (one group per CTA, as if folded into the batch). Q tiles and their KV tiles
  always belong to one group. Dense attention is tiled over the undilated layout, so with
  dilation the bound is ``(dense Q tiles x dense KV tiles) / (Q tiles x max visited)``; the
  extra Q tiles are the padding that splitting into groups costs.
- **Padding**: tiles that reach past the end of an axis (or group) are padded; a KV tile with
  padding keys is never full (the padded keys must be masked).
- **Flattened tiling** (`simulate_flattened`): the layout (each dilation group's) flattened
  row-major and cut into contiguous 1-D tiles, the visited KV tiles being those that hold any
  key any query of the Q tile sees. It shows the "curse of multi-dimensionality": windows that
  are contiguous boxes in N-d are scattered rows in 1-D. Computed by brute force; guarded.

Window math comes from `jax_gna._window`, nowhere else.

Example::

  >>> from jax_gna import sim
  >>> p = sim.Problem((30, 48, 80), (18, 24, 24), stride=(16, 8, 8))
  >>> r = sim.simulate(p, q_tile=(2, 8, 8), kv_tile=(2, 8, 8))
  >>> round(r.bound, 2), r.block_sparse
  (11.11, True)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from jax_gna import _window
from jax_gna._params import GnaParams, check_axes, per_axis, static_int
from jax_gna._tiles import TileConfig, supported_tiles

__all__ = [
    "Problem",
    "Simulation",
    "AxisTiles",
    "TileConfig",
    "simulate",
    "simulate_flattened",
    "suggest_strides",
    "plot_stride_sweep",
    "tile_candidates",
    "choose_tiles",
    "supported_tiles",
    "table",
]

# Largest brute-force job `simulate_flattened` takes by default: visible (query, key-row)
# intervals plus Q tiles x tokens. About a second per 1e8 on one core.
FLATTENED_MAX_WORK = 3 * 10**8


def _ceil_div(a, b):
    return -(-a // b)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A GNA problem: token layout and per-axis window, stride, dilation and causality.

    Args:
      shape: spatial extents ``X...`` (1 to 3 ints).
      kernel_size: window per axis (an int for every axis, or one per axis).
      stride: stride per axis, ``1 <= stride <= kernel_size``.
      dilation: dilation per axis.
      is_causal: causality per axis.

    The rules and messages are those of `jax_gna.gna`.
    """

    shape: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...] = 1  # type: ignore[assignment]
    dilation: tuple[int, ...] = 1  # type: ignore[assignment]
    is_causal: tuple[bool, ...] = False  # type: ignore[assignment]

    def __post_init__(self):
        if isinstance(self.shape, int | np.integer):
            shape = (static_int("shape", self.shape),)
        else:
            shape = tuple(static_int("shape", x) for x in self.shape)
        rank = len(shape)
        if not 1 <= rank <= 3:
            raise ValueError(f"GNA supports 1, 2 or 3 spatial axes, got shape={shape}.")
        ks = tuple(
            static_int("kernel_size", x) for x in per_axis("kernel_size", self.kernel_size, rank, 1)
        )
        st = tuple(static_int("stride", x) for x in per_axis("stride", self.stride, rank, 1))
        dl = tuple(static_int("dilation", x) for x in per_axis("dilation", self.dilation, rank, 1))
        ca = tuple(per_axis("is_causal", self.is_causal, rank, False))
        check_axes(GnaParams(ks, st, dl, ca, 1.0), shape)
        for name, value in (
            ("shape", shape),
            ("kernel_size", ks),
            ("stride", st),
            ("dilation", dl),
            ("is_causal", tuple(bool(c) for c in ca)),
        ):
            object.__setattr__(self, name, value)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def tokens(self) -> int:
        """Spatial tokens ``N = prod(shape)``."""
        return math.prod(self.shape)

    def with_stride(self, stride: int | Sequence[int]) -> Problem:
        return dataclasses.replace(self, stride=stride)

    @functools.cached_property
    def attended_pairs(self) -> int:
        """Visible (query, key) pairs: the FLOP count of the sparse attention, in pairs."""
        return _window.attended_keys(
            self.shape, self.kernel_size, self.stride, self.dilation, self.is_causal
        )

    @property
    def dense_pairs(self) -> int:
        return self.tokens**2

    @property
    def flop_speedup(self) -> float:
        """Dense pairs / attended pairs."""
        return self.dense_pairs / self.attended_pairs

    def __str__(self) -> str:
        parts = [f"shape {_fmt(self.shape)}", f"window {_fmt(self.kernel_size)}"]
        parts.append(f"stride {_fmt(self.stride)}")
        if any(d > 1 for d in self.dilation):
            parts.append(f"dilation {_fmt(self.dilation)}")
        if any(self.is_causal):
            parts.append("causal " + _fmt(tuple(int(c) for c in self.is_causal)))
        return ", ".join(parts)


def _fmt(t: Sequence[int]) -> str:
    return "x".join(str(x) for x in t)


@dataclasses.dataclass(frozen=True, eq=False)
class AxisTiles:
    """Per-axis box of every Q tile along one axis: one entry per (dilation group, Q tile).

    Attributes (int64 arrays of one length):
      group: the dilation group of the Q tile.
      q_tile: the Q tile's index inside its group.
      kv_begin, kv_end: the KV tiles ``[kv_begin, kv_end)`` (group coordinates) it visits.
      full: how many of those are full along this axis (every valid query of the Q tile sees
        every key of the KV tile, and the KV tile has no padding).
    """

    group: np.ndarray
    q_tile: np.ndarray
    kv_begin: np.ndarray
    kv_end: np.ndarray
    full: np.ndarray
    dense_q_tiles: int
    dense_kv_tiles: int

    @property
    def visited(self) -> np.ndarray:
        return self.kv_end - self.kv_begin


@functools.lru_cache(maxsize=4096)
def _axis_tiles(
    length: int, kernel_size: int, stride: int, dilation: int, causal: bool, tq: int, tk: int
) -> AxisTiles:
    start, end = _window.neighborhood(length, kernel_size, stride, dilation, causal)
    cols: list[list[np.ndarray]] = [[], [], [], [], []]
    for g, lg in enumerate(_window.group_lengths(length, dilation)):
        lg = int(lg)
        s, e = start[g::dilation], end[g::dilation]  # group coordinates, one per position
        first = np.arange(_ceil_div(lg, tq), dtype=np.int64) * tq
        last = np.minimum(first + tq, lg) - 1
        kv_begin = s[first] // tk
        kv_end = _ceil_div(e[last], tk)
        # Full along this axis: inside every query's window, [start(last), end(first)); that
        # range ends by Lg, so a full tile holds no padding key.
        full = np.maximum(e[first] // tk - _ceil_div(s[last], tk), 0)
        for col, value in zip(cols, (np.full_like(first, g), first // tq, kv_begin, kv_end, full)):
            col.append(value)
    arrays = [np.concatenate(c) for c in cols]
    for a in arrays:
        a.flags.writeable = False
    return AxisTiles(*arrays, _ceil_div(length, tq), _ceil_div(length, tk))


@dataclasses.dataclass(frozen=True)
class Simulation:
    """What `simulate` predicts for one problem and one tile configuration.

    Attributes:
      problem: the `Problem`.
      tiles: the `TileConfig` (for flattened tiling, 1-D tiles of the flattened layout).
      tiling: ``"multi-dimensional"`` or ``"flattened"``.
      dense_q_tiles, dense_kv_tiles: tiles of dense attention over the (undilated) layout.
      q_tiles: Q tiles of the sparse run (over every dilation group).
      max_kv_tiles: KV tiles visited by the worst Q tile (the critical path).
      visited: visited (Q tile, KV tile) pairs in all.
      full: visited pairs that need no mask.
      axes: per-axis boxes (multi-dimensional tiling only; `AxisTiles`).
    """

    problem: Problem
    tiles: TileConfig
    tiling: str
    dense_q_tiles: int
    dense_kv_tiles: int
    q_tiles: int
    max_kv_tiles: int
    visited: int
    full: int
    axes: tuple[AxisTiles, ...] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def partial(self) -> int:
        """Visited pairs that need the per-element mask."""
        return self.visited - self.full

    @property
    def block_sparse(self) -> bool:
        """Perfectly block-sparse: every visited pair is full (no masking at all)."""
        return self.partial == 0

    @property
    def dense_work(self) -> int:
        return self.dense_q_tiles * self.dense_kv_tiles

    @property
    def bound(self) -> float:
        """Upper-bound speedup over dense: dense tile pairs / (Q tiles x worst Q tile)."""
        return self.dense_work / (self.q_tiles * self.max_kv_tiles)

    @property
    def token_bound(self) -> float:
        """Upper-bound speedup against dense attention over the ``N`` real tokens: ``N^2`` /
        token pairs on the critical path (Q tiles x worst Q tile x Q tile x KV tile tokens).

        Equals `bound` when the tiles divide the layout; lower when they pad, since padded
        rows and columns are work the kernel does and dense attention (cuDNN) does not. This is
        the figure to compare tile configurations (and measured speedups) by: every
        configuration is held against the same dense baseline.
        """
        work = self.q_tiles * self.max_kv_tiles * math.prod(self.tiles.q) * math.prod(self.tiles.kv)
        return self.problem.dense_pairs / work

    @property
    def mean_speedup(self) -> float:
        """Dense tile pairs / visited tile pairs (ignores the critical path)."""
        return self.dense_work / self.visited

    @property
    def flop_speedup(self) -> float:
        return self.problem.flop_speedup

    @property
    def mean_kv_tiles(self) -> float:
        return self.visited / self.q_tiles

    @property
    def tile_density(self) -> float:
        """Attended pairs / token pairs of the visited tiles: how much of the work is useful."""
        return self.problem.attended_pairs / (
            self.visited * math.prod(self.tiles.q) * math.prod(self.tiles.kv)
        )

    def kv_tiles_per_q_tile(self) -> np.ndarray:
        """Visited KV tiles of every Q tile, shape ``[n_1, ..., n_r]`` where ``n_i`` indexes the
        (dilation group, Q tile) entries of `axes` ``[i]``. Multi-dimensional tiling only."""
        if self.axes is None:
            raise ValueError("kv_tiles_per_q_tile needs multi-dimensional tiling.")
        out = np.ones((), dtype=np.int64)
        for a in self.axes:
            out = np.multiply.outer(out, a.visited)
        return out

    def __str__(self) -> str:
        p = self.problem
        verdict = "perfectly block-sparse" if self.block_sparse else "needs masking"
        lines = [
            f"GNA simulation: {p}",
            f"  tiles {self.tiles} ({self.tiling}, static KV tiling)",
            f"  bound (critical path)  {self.bound:8.2f}x   worst Q tile visits "
            f"{self.max_kv_tiles} of {self.dense_kv_tiles} KV tiles",
            f"  bound vs N^2 tokens    {self.token_bound:8.2f}x   "
            + (
                "(tiles pad the layout: padding is work)"
                if self.token_bound < self.bound * (1 - 1e-9)
                else "(the tiles divide the layout)"
            ),
            f"  FLOP-wise speedup      {self.flop_speedup:8.2f}x",
            f"  mean-based speedup     {self.mean_speedup:8.2f}x   "
            f"{self.mean_kv_tiles:.1f} KV tiles per Q tile on average",
            f"  visited tile pairs     {self.visited:8d}    full {self.full}, partial "
            f"{self.partial} -> {verdict}",
        ]
        return "\n".join(lines)


def _tile_config(problem: Problem, q_tile, kv_tile) -> TileConfig:
    if isinstance(q_tile, TileConfig):
        if kv_tile is not None:
            raise TypeError("Pass either a TileConfig as `q_tile` or two tile shapes.")
        cfg = q_tile
    else:
        q = (q_tile,) * problem.rank if isinstance(q_tile, int) else tuple(q_tile)
        kv = (kv_tile,) * problem.rank if isinstance(kv_tile, int) else tuple(kv_tile)
        cfg = TileConfig(q, kv)
    if cfg.rank != problem.rank:
        raise ValueError(
            f"Tile shapes need one entry per spatial axis ({problem.rank}), got {cfg}."
        )
    return cfg


def simulate(
    problem: Problem,
    q_tile: Sequence[int] | int | TileConfig,
    kv_tile: Sequence[int] | int | None = None,
) -> Simulation:
    """Simulate multi-dimensional tiling with static KV tiling (see the module docstring).

    Args:
      problem: the `Problem`.
      q_tile: Q tile shape, one int per axis (an int means the same on every axis), or a
        `TileConfig` (then no ``kv_tile``).
      kv_tile: KV tile shape.

    Returns:
      A `Simulation`. Cost: O(tiles along each axis), any problem size.
    """
    cfg = _tile_config(problem, q_tile, kv_tile)
    axes = tuple(
        _axis_tiles(L, k, s, d, c, tq, tk)
        for L, k, s, d, c, tq, tk in zip(
            problem.shape,
            problem.kernel_size,
            problem.stride,
            problem.dilation,
            problem.is_causal,
            cfg.q,
            cfg.kv,
        )
    )
    # The mask is a product over axes and a Q tile is a product of per-axis entries, so every
    # total factorises: sums of products are products of sums, the max of a product of
    # non-negative factors is the product of the maxima.
    return Simulation(
        problem=problem,
        tiles=cfg,
        tiling="multi-dimensional",
        dense_q_tiles=math.prod(a.dense_q_tiles for a in axes),
        dense_kv_tiles=math.prod(a.dense_kv_tiles for a in axes),
        q_tiles=math.prod(len(a.group) for a in axes),
        max_kv_tiles=math.prod(int(a.visited.max()) for a in axes),
        visited=math.prod(int(a.visited.sum()) for a in axes),
        full=math.prod(int(a.full.sum()) for a in axes),
        axes=axes,
    )


def simulate_flattened(
    problem: Problem, q_tile: int, kv_tile: int, *, max_work: int = FLATTENED_MAX_WORK
) -> Simulation:
    """Simulate 1-D tiling of the row-major flattened layout (each dilation group's).

    A Q tile is ``q_tile`` consecutive tokens; it visits every KV tile of ``kv_tile``
    consecutive tokens holding a key that one of its queries sees. Brute force.

    Raises:
      ValueError: when the job is larger than ``max_work`` (about a second per 1e8).
    """
    tq, tk = static_int("q_tile", q_tile), static_int("kv_tile", kv_tile)
    if tq < 1 or tk < 1:
        raise ValueError(f"Tile sizes must be positive, got q_tile={tq}, kv_tile={tk}.")
    windows = [
        _window.neighborhood(L, k, s, d, c)
        for L, k, s, d, c in zip(
            problem.shape, problem.kernel_size, problem.stride, problem.dilation, problem.is_causal
        )
    ]
    group_lengths = [_window.group_lengths(L, d) for L, d in zip(problem.shape, problem.dilation)]
    groups = list(itertools.product(*(range(d) for d in problem.dilation)))
    work = 0
    for g in groups:
        ng = math.prod(int(group_lengths[a][g[a]]) for a in range(problem.rank))
        work += ng * math.prod(problem.kernel_size[:-1]) + _ceil_div(ng, tq) * ng
    if work > max_work:
        raise ValueError(
            f"simulate_flattened would do ~{work:.2g} steps of brute force for {problem}; "
            f"above max_work={max_work:.2g}. Raise max_work or simulate a smaller problem."
        )
    q_tiles = max_kv = visited = full = 0
    for g in groups:
        per_axis = []
        for a in range(problem.rank):
            d = problem.dilation[a]
            start, end = windows[a]
            per_axis.append((start[g[a] :: d], end[g[a] :: d], problem.kernel_size[a]))
        counts, n_queries, n_keys_valid = _flattened_group(per_axis, tq, tk)
        q_tiles += len(counts)
        max_kv = max(max_kv, max(int((c > 0).sum()) for c in counts))
        for c, nq in zip(counts, n_queries):
            visited += int((c > 0).sum())
            full += int(np.sum((c == nq * tk) & n_keys_valid))
    n = problem.tokens
    return Simulation(
        problem=problem,
        tiles=TileConfig((tq,), (tk,)),
        tiling="flattened",
        dense_q_tiles=_ceil_div(n, tq),
        dense_kv_tiles=_ceil_div(n, tk),
        q_tiles=q_tiles,
        max_kv_tiles=max_kv,
        visited=visited,
        full=full,
    )


def _flattened_group(per_axis, tq: int, tk: int):
    """Visible pairs per (Q tile, KV tile) for one dilation group, flattened row-major.

    ``per_axis``: ``(start, end, kernel_size)`` per axis in group coordinates.
    Returns per Q tile an array of visible pairs per KV tile, the valid queries per Q tile, and
    which KV tiles hold no padding.
    """
    lengths = [len(s) for s, _, _ in per_axis]
    rank = len(lengths)
    n = math.prod(lengths)
    strides = [math.prod(lengths[a + 1 :]) for a in range(rank)]
    n_kv = _ceil_div(n, tk)
    keys_valid = (np.arange(n_kv) + 1) * tk <= n
    tile_starts = np.arange(n_kv) * tk
    counts, n_queries = [], []
    for q0 in range(0, n, tq):
        flat = np.arange(q0, min(q0 + tq, n))
        coords = np.unravel_index(flat, lengths)
        # One key interval per query and per combination of keys on the outer axes; the inner
        # (last) axis window is contiguous in the flattened layout.
        base = np.zeros((len(flat),), dtype=np.int64)
        valid = np.ones((len(flat),), dtype=bool)
        for a in range(rank - 1):
            start, end, k = per_axis[a]
            ks = start[coords[a]][..., None] + np.arange(k)  # [..., k]
            ok = ks < end[coords[a]][..., None]
            base = base[..., None] + ks.reshape((len(flat),) + (1,) * a + (k,)) * strides[a]
            valid = valid[..., None] & ok.reshape((len(flat),) + (1,) * a + (k,))
        start, end, _ = per_axis[-1]
        lo = (base + start[coords[-1]].reshape((-1,) + (1,) * (rank - 1)))[valid]
        hi = (base + end[coords[-1]].reshape((-1,) + (1,) * (rank - 1)))[valid]
        cover = np.cumsum(np.bincount(lo, minlength=n + 1) - np.bincount(hi, minlength=n + 1))[:n]
        counts.append(np.add.reduceat(cover, tile_starts))
        n_queries.append(len(flat))
    return counts, n_queries, keys_valid


def _rank_key(sim: Simulation):
    return (-round(sim.token_bound, 9), sim.partial, math.prod(sim.problem.stride))


def suggest_strides(
    problem: Problem,
    q_tile: Sequence[int] | int | TileConfig,
    kv_tile: Sequence[int] | int | None = None,
    *,
    max_results: int | None = None,
) -> list[Simulation]:
    """Strides worth using for a window and tile configuration, best bound first.

    Sweeps every stride ``1..kernel_size`` on every axis (the problem's own stride is ignored)
    and keeps only Pareto-improving ones: a stride is kept iff every smaller stride (no larger
    on any axis, smaller on one) has a strictly lower bound. A larger stride coarsens the
    model (more queries share one window) and is worth it only if it buys speed.

    Args:
      problem: the `Problem` (window, dilation, causality).
      q_tile, kv_tile: the tile configuration, as in `simulate`.
      max_results: keep the best this many.

    Returns:
      `Simulation` per kept stride, ranked by bound (ties: fewer partial tiles, then smaller
      stride groups).
    """
    cfg = _tile_config(problem, q_tile, kv_tile)
    # The bound is a product of per-axis factors (the tile counts that do not depend on the
    # stride aside), so a stride is Pareto-improving iff each axis's stride is.
    per_axis = []
    for a in range(problem.rank):
        kept, best = [], math.inf
        for s in range(1, problem.kernel_size[a] + 1):
            t = _axis_tiles(
                problem.shape[a],
                problem.kernel_size[a],
                s,
                problem.dilation[a],
                problem.is_causal[a],
                cfg.q[a],
                cfg.kv[a],
            )
            worst = int(t.visited.max())
            if worst < best:
                kept.append(s)
                best = worst
        per_axis.append(kept)
    sims = [simulate(problem.with_stride(s), cfg) for s in itertools.product(*per_axis)]
    sims.sort(key=_rank_key)
    return sims[:max_results] if max_results is not None else sims


def stride_sweep(
    problem: Problem,
    q_tile: Sequence[int] | int | TileConfig,
    kv_tile: Sequence[int] | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every stride combination and its bound: ``(strides [M, rank], bounds [M])``."""
    cfg = _tile_config(problem, q_tile, kv_tile)
    worst, dense, q_tiles = [], 1, 1
    for a in range(problem.rank):
        col = []
        for s in range(1, problem.kernel_size[a] + 1):
            t = _axis_tiles(
                problem.shape[a],
                problem.kernel_size[a],
                s,
                problem.dilation[a],
                problem.is_causal[a],
                cfg.q[a],
                cfg.kv[a],
            )
            col.append(int(t.visited.max()))
        worst.append(np.asarray(col, dtype=np.float64))
        dense *= t.dense_q_tiles * t.dense_kv_tiles
        q_tiles *= len(t.group)
    grids = np.meshgrid(*(np.arange(1, k + 1) for k in problem.kernel_size), indexing="ij")
    strides = np.stack([g.ravel() for g in grids], axis=-1)
    crit = functools.reduce(np.multiply.outer, worst).ravel()
    return strides, dense / (q_tiles * crit)


def plot_stride_sweep(
    problem: Problem,
    q_tile: Sequence[int] | int | TileConfig,
    kv_tile: Sequence[int] | int | None = None,
    *,
    path: str | os.PathLike,
    title: str | None = None,
) -> str:
    """Plot the bound against the stride (queries per stride group) as a PNG.

    Every stride combination is a grey dot; the Pareto-improving strides of `suggest_strides`
    are joined and labelled; the dashed line is the FLOP-wise speedup of stride 1.

    Returns:
      The path written.

    Raises:
      ImportError: when matplotlib is not installed (``pip install 'jax_gna[plot]'``).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plot_stride_sweep needs matplotlib; install it with `pip install matplotlib` "
            "(or `pip install 'jax_gna[plot]'`)."
        ) from e
    cfg = _tile_config(problem, q_tile, kv_tile)
    strides, bounds = stride_sweep(problem, cfg)
    best = sorted(suggest_strides(problem, cfg), key=lambda s: math.prod(s.problem.stride))
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(np.prod(strides, axis=1), bounds, s=6, color="0.75", label="all strides")
    xs = [math.prod(s.problem.stride) for s in best]
    ax.plot(xs, [s.bound for s in best], "o-", color="C0", label="Pareto-improving strides")
    labels: dict[tuple[int, float], list[str]] = {}  # strides sharing a point share a label
    for x, s in zip(xs, best):
        labels.setdefault((x, s.bound), []).append(
            _fmt(s.problem.stride) + ("*" if s.block_sparse else "")
        )
    for (x, y), names in labels.items():
        ax.annotate(
            ", ".join(names), (x, y), textcoords="offset points", xytext=(5, -11), fontsize=7
        )
    flop = problem.with_stride(1).flop_speedup
    ax.axhline(flop, ls="--", color="C3", label=f"FLOP-wise ({flop:.2f}x)")
    ax.set_xscale("log")
    ax.set_xlabel("queries per stride group (product of strides)")
    ax.set_ylabel("analytical speedup bound (x)")
    ax.set_title(title or f"{_fmt(problem.shape)}, window {_fmt(problem.kernel_size)}, {cfg}")
    ax.legend(loc="upper left", fontsize=8, title="* perfectly block-sparse", title_fontsize=7)
    fig.savefig(os.fspath(path), dpi=120)
    return os.fspath(path)


def tile_candidates(
    problem: Problem, head_dim: int, dtype: object, *, arch: str = "sm90", direction: str = "fwd"
) -> list[Simulation]:
    """Every tile configuration the ``arch`` kernels of ``direction`` (``"fwd"``, ``"bwd"``)
    support for this problem, simulated and ranked: best `Simulation.token_bound` first (the
    bound against one common dense baseline, so that padding counts against a configuration),
    ties broken by fewer partial tiles, then the kernel's order. Both directions visit the same
    (Q tile, KV tile) pairs, so one ranking serves both.

    Raises:
      NotImplementedError: when the kernels do not support this dtype or head dim.
    """
    configs = supported_tiles(problem.rank, head_dim, dtype, arch, direction)
    sims = [simulate(problem, cfg) for cfg in configs]
    order = sorted(
        range(len(sims)), key=lambda i: (-round(sims[i].token_bound, 9), sims[i].partial, i)
    )
    return [sims[i] for i in order]


def choose_tiles(
    problem: Problem, head_dim: int, dtype: object, *, arch: str = "sm90"
) -> Simulation:
    """The supported tile configuration with the best bound (ties: fewer partial tiles).

    "Best bound" is the best `Simulation.token_bound`, which equals `Simulation.bound` unless
    a configuration pads the layout (then its own padded dense baseline would flatter it).

    The chosen tiles are ``result.tiles`` (a `TileConfig`); the rest of the `Simulation` says
    what they buy. See `tile_candidates` for the whole ranking. ``jax_gna.gna`` runs this pick
    on the CUDA kernels unless told otherwise (``q_tile_shape``/``kv_tile_shape``), or the
    next one in the ranking that the kernels can run.
    """
    return tile_candidates(problem, head_dim, dtype, arch=arch)[0]


def table(sims: Iterable[Simulation], *, marker: Simulation | None = None) -> str:
    """A plain-text table of simulations, one row each (``marker`` gets a ``*``).

    Columns: ``bound`` (critical path, the paper's rule), ``N^2-bound`` (`token_bound`),
    ``FLOP-wise``, ``mean`` (mean-based), ``worst Q tile`` (its KV tiles / dense KV tiles),
    ``partial/visited`` tile pairs and whether the configuration is perfectly block-sparse.
    """
    header = (
        "stride",
        "tiles",
        "tiling",
        "bound",
        "N^2-bound",
        "FLOP-wise",
        "mean",
        "worst Q tile",
        "partial/visited",
        "block-sparse",
    )
    rows = [header]
    for s in sims:
        rows.append(
            (
                _fmt(s.problem.stride),
                str(s.tiles) + (" *" if s is marker else ""),
                "flattened" if s.tiling == "flattened" else "multi-d",
                f"{s.bound:.2f}x",
                f"{s.token_bound:.2f}x",
                f"{s.flop_speedup:.2f}x",
                f"{s.mean_speedup:.2f}x",
                f"{s.max_kv_tiles}/{s.dense_kv_tiles}",
                f"{s.partial}/{s.visited}",
                "yes" if s.block_sparse else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
