"""The simulator against brute-force tile counting and against the published numbers.

The brute force never touches `jax_gna._window` or the simulator's box code: visibility comes
from `tests/oracle.py` (written from the window rule one query at a time), tiles are formed by
grouping tokens by (dilation group, tile index), and a (Q tile, KV tile) pair is counted as
visited when it holds a visible pair, full when every pair of a valid query and a KV tile slot
is visible (a slot past the end of the layout is padding, never visible).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from jax_gna import sim
from tests import oracle


def _random_problem(rng: np.random.Generator, rank: int):
    max_extent = {1: 40, 2: 13, 3: 7}[rank]
    while True:
        shape, ks, st, dl, ca = [], [], [], [], []
        for _ in range(rank):
            length = int(rng.integers(2, max_extent + 1))
            d = int(rng.choice([1, 1, 2, 3]))
            if 2 * d > length:
                d = 1
            k = int(rng.integers(2, length // d + 1))
            shape.append(length)
            ks.append(k)
            st.append(int(rng.integers(1, k + 1)))
            dl.append(d)
            ca.append(bool(rng.random() < 0.3))
        if math.prod(shape) <= 700:
            return tuple(shape), tuple(ks), tuple(st), tuple(dl), tuple(ca)


def _flattened_ids(shape, dilation, tile):
    """Per token: (group per axis, 1-D tile of the group's row-major flattened sub-grid)."""
    coords = np.array(list(itertools.product(*(range(x) for x in shape))))
    d = np.array(dilation)
    groups, inner = coords % d, coords // d
    ids = np.empty((len(coords), len(shape) + 1), dtype=np.int64)
    for g in {tuple(x) for x in groups}:
        rows = np.all(groups == g, axis=1)
        lengths = [len(range(g[a], shape[a], dilation[a])) for a in range(len(shape))]
        flat = np.ravel_multi_index(tuple(inner[rows].T), lengths)
        ids[rows] = np.concatenate([groups[rows], (flat // tile)[:, None]], axis=1)
    return ids


CASES = [(rank, seed) for rank in (1, 2, 3) for seed in range(12)]


@pytest.mark.parametrize(("rank", "seed"), CASES, ids=[f"{r}d-seed{s}" for r, s in CASES])
def test_multi_dimensional_tiling_matches_brute_force(rank, seed):
    rng = np.random.default_rng(1000 * rank + seed)
    shape, ks, st, dl, ca = _random_problem(rng, rank)
    q_tile = tuple(int(x) for x in rng.integers(1, 6, size=rank))
    kv_tile = tuple(int(x) for x in rng.integers(1, 6, size=rank))
    case = f"shape={shape} K={ks} s={st} d={dl} causal={ca} q={q_tile} kv={kv_tile}"
    visible = oracle.visible(shape, ks, st, dl, ca)
    visited, full = oracle.tile_pairs(
        visible,
        oracle.tile_ids(shape, dl, q_tile),
        oracle.tile_ids(shape, dl, kv_tile),
        math.prod(kv_tile),
    )

    r = sim.simulate(sim.Problem(shape, ks, st, dl, ca), q_tile, kv_tile)
    assert r.q_tiles == len(visited), case
    assert r.max_kv_tiles == visited.max(), case
    assert r.visited == visited.sum(), case
    assert r.full == full.sum(), case
    assert sorted(r.kv_tiles_per_q_tile().ravel()) == sorted(visited), case
    assert r.problem.attended_pairs == visible.sum(), case
    assert r.dense_kv_tiles == math.prod(-(-x // t) for x, t in zip(shape, kv_tile)), case
    assert r.block_sparse == (full.sum() == visited.sum()), case


@pytest.mark.parametrize(("rank", "seed"), CASES[::2], ids=[f"{r}d-seed{s}" for r, s in CASES[::2]])
def test_flattened_tiling_matches_brute_force(rank, seed):
    rng = np.random.default_rng(7000 + 1000 * rank + seed)
    shape, ks, st, dl, ca = _random_problem(rng, rank)
    tq, tk = (int(x) for x in rng.integers(1, 20, size=2))
    case = f"shape={shape} K={ks} s={st} d={dl} causal={ca} q={tq} kv={tk}"
    visible = oracle.visible(shape, ks, st, dl, ca)
    visited, full = oracle.tile_pairs(
        visible, _flattened_ids(shape, dl, tq), _flattened_ids(shape, dl, tk), tk
    )

    r = sim.simulate_flattened(sim.Problem(shape, ks, st, dl, ca), tq, tk)
    assert r.q_tiles == len(visited), case
    assert r.max_kv_tiles == visited.max(), case
    assert r.visited == visited.sum(), case
    assert r.full == full.sum(), case


def test_flattened_equals_multi_dimensional_in_1d():
    p = sim.Problem((100,), (17,), stride=(5,), dilation=(2,))
    a, b = sim.simulate(p, 8, 16), sim.simulate_flattened(p, 8, 16)
    assert (a.q_tiles, a.max_kv_tiles, a.visited, a.full) == (
        b.q_tiles,
        b.max_kv_tiles,
        b.visited,
        b.full,
    )


# Published NATTEN Sim numbers (the GNA paper, Hassani et al., arXiv:2504.16922: the "NATTEN
# Sim" entries of its end-to-end tables and its stride sweep) and the
# Hopper tile shapes' bounds: (shape, window, stride, q tile, kv tile, bound, worst Q tile).
ANCHORS = [
    ("flux-na", (256, 256), (80, 80), (1, 1), (16, 16), (16, 8), 6.10, 84),
    ("flux-s16x1", (256, 256), (80, 80), (16, 1), (16, 16), (16, 8), 8.53, None),
    ("flux-gna", (256, 256), (80, 80), (16, 16), (16, 16), (16, 8), 10.24, None),
    ("flux-na-hopper", (256, 256), (80, 80), (1, 1), (16, 8), (16, 8), 6.65, 77),
    ("hunyuan-na", (30, 48, 80), (18, 24, 24), (1, 1, 1), (4, 8, 8), (2, 8, 8), 3.27, 275),
    ("hunyuan-s1x8x8", (30, 48, 80), (18, 24, 24), (1, 8, 8), (4, 8, 8), (2, 8, 8), 9.09, None),
    ("hunyuan-gna", (30, 48, 80), (18, 24, 24), (16, 8, 8), (4, 8, 8), (2, 8, 8), 11.11, None),
    ("hunyuan-na-hopper", (30, 48, 80), (18, 24, 24), (1, 1, 1), (2, 8, 8), (2, 8, 8), 3.60, 250),
    ("cosmos-na", (16, 44, 80), (16, 24, 16), (1, 1, 1), (8, 4, 8), (4, 4, 8), 5.24, None),
    ("cosmos-s1x8x1", (16, 44, 80), (16, 24, 16), (1, 8, 1), (8, 4, 8), (4, 4, 8), 6.11, None),
    ("cosmos-s1x1x16", (16, 44, 80), (16, 24, 16), (1, 1, 16), (8, 4, 8), (4, 4, 8), 7.86, None),
    ("cosmos-gna", (16, 44, 80), (16, 24, 16), (1, 8, 16), (8, 4, 8), (4, 4, 8), 9.17, None),
    ("1d-na-hopper", (32768,), (2048,), (1,), (128,), (128,), 15.06, 17),
    ("1d-na-blackwell", (32768,), (2048,), (1,), (256,), (128,), 14.22, 18),
    ("1d-s256", (32768,), (2048,), (256,), (128,), (128,), 16.0, 16),
]


@pytest.mark.parametrize("anchor", ANCHORS, ids=[a[0] for a in ANCHORS])
def test_reproduces_published_simulator_numbers(anchor):
    _, shape, window, stride, q, kv, bound, worst = anchor
    r = sim.simulate(sim.Problem(shape, window, stride), q, kv)
    assert r.bound == pytest.approx(bound, abs=0.006)
    if worst is not None:
        assert r.max_kv_tiles == worst


def test_mean_based_figure_overestimates_as_published():
    # The mean over Q tiles instead of the slowest one: FLUX 7.51x with (16,8)/(16,8),
    # HunyuanVideo 5.44x with (2,8,8), above the critical-path bounds.
    flux = sim.simulate(sim.Problem((256, 256), (80, 80)), (16, 8), (16, 8))
    hv = sim.simulate(sim.Problem((30, 48, 80), (18, 24, 24)), (2, 8, 8), (2, 8, 8))
    assert flux.mean_speedup == pytest.approx(7.51, abs=0.006)
    assert hv.mean_speedup == pytest.approx(5.44, abs=0.006)
    assert flux.mean_speedup > flux.bound and hv.mean_speedup > hv.bound


def test_stride_256_makes_1d_32k_perfectly_block_sparse():
    p = sim.Problem((32768,), (2048,))
    assert not sim.simulate(p, 128, 128).block_sparse
    r = sim.simulate(p.with_stride(256), 128, 128)
    assert r.block_sparse and r.bound == r.flop_speedup == 16.0


def test_gna_strides_are_perfectly_block_sparse_and_reach_flop_bound():
    for shape, window, stride, tile in [
        ((256, 256), (80, 80), (16, 16), (16, 8)),
        ((30, 48, 80), (18, 24, 24), (16, 8, 8), (2, 8, 8)),
    ]:
        r = sim.simulate(sim.Problem(shape, window, stride), tile, tile)
        assert r.block_sparse and r.partial == 0
        assert r.bound == pytest.approx(r.flop_speedup)
        assert r.token_bound == pytest.approx(r.bound)  # tiles divide the layout


def test_curse_of_multi_dimensionality():
    p = sim.Problem((30, 48, 80), (18, 24, 24), stride=(16, 8, 8))
    multi = sim.simulate(p, (2, 8, 8), (2, 8, 8))
    flat = sim.simulate_flattened(p, 128, 128)
    assert flat.bound < multi.bound / 3
    assert flat.full == 0


def test_token_bound_charges_padding():
    # T=30 with Q tiles of 4 pads 2 rows: the paper's bound ignores them, token_bound does not.
    r = sim.simulate(sim.Problem((30, 48, 80), (18, 24, 24), (16, 8, 8)), (4, 8, 8), (2, 8, 8))
    assert r.bound == pytest.approx(11.11, abs=0.006)
    assert r.token_bound == pytest.approx(11.11 * 30 / 32, abs=0.01)


def test_flattened_refuses_huge_jobs():
    with pytest.raises(ValueError, match="max_work"):
        sim.simulate_flattened(sim.Problem((256, 256), (80, 80)), 128, 128, max_work=10**6)


def _bound_brute(problem, stride, q, kv):
    return sim.simulate(problem.with_stride(stride), q, kv).bound


@pytest.mark.parametrize(
    ("shape", "window", "dilation", "causal", "q", "kv"),
    [
        ((40,), (12,), (1,), (False,), (8,), (8,)),
        ((37,), (9,), (2,), (True,), (4,), (8,)),
        ((24, 30), (10, 12), (1, 1), (False, False), (4, 8), (8, 4)),
        ((20, 19), (7, 9), (2, 1), (False, True), (4, 4), (4, 4)),
        ((9, 12, 14), (4, 6, 7), (1, 2, 1), (False, False, False), (2, 2, 4), (2, 4, 2)),
    ],
)
def test_suggest_strides_returns_exactly_the_improving_strides(
    shape, window, dilation, causal, q, kv
):
    problem = sim.Problem(shape, window, dilation=dilation, is_causal=causal)
    suggested = sim.suggest_strides(problem, q, kv)
    kept = {s.problem.stride for s in suggested}
    every = list(itertools.product(*(range(1, k + 1) for k in window)))
    bound = {s: _bound_brute(problem, s, q, kv) for s in every}
    for s in every:
        smaller = [t for t in every if t != s and all(a <= b for a, b in zip(t, s))]
        improving = all(bound[t] < bound[s] for t in smaller)
        assert (s in kept) == improving, f"stride {s}"
    bounds = [s.bound for s in suggested]
    assert bounds == sorted(bounds, reverse=True)
    assert (1,) * len(shape) in kept  # the smallest stride is always a candidate


def test_suggest_strides_for_1d_32k_finds_the_block_sparse_stride():
    best = sim.suggest_strides(sim.Problem((32768,), (2048,)), 128, 128)
    assert [s.problem.stride for s in best] == [(256,), (1,)]
    assert best[0].bound == 16.0
    top = sim.suggest_strides(sim.Problem((32768,), (2048,)), 128, 128, max_results=1)
    assert len(top) == 1


def test_choose_tiles_picks_best_bound_then_fewest_partial():
    for shape, window, stride in [
        ((30, 48, 80), (18, 24, 24), (1, 1, 1)),
        ((30, 48, 80), (18, 24, 24), (16, 8, 8)),
        ((256, 256), (80, 80), (1, 1)),
        ((16, 44, 80), (16, 24, 16), (1, 8, 16)),
    ]:
        p = sim.Problem(shape, window, stride)
        cands = sim.tile_candidates(p, 128, "bfloat16")
        best = sim.choose_tiles(p, 128, "bfloat16")
        assert best.tiles == cands[0].tiles
        assert {c.tiles for c in cands} == set(sim.supported_tiles(p.rank, 128, "bf16"))
        top = max(c.token_bound for c in cands)
        assert best.token_bound == pytest.approx(top)
        ties = [c for c in cands if c.token_bound == pytest.approx(top)]
        assert best.partial == min(c.partial for c in ties)
    hv_gna = sim.choose_tiles(sim.Problem((30, 48, 80), (18, 24, 24), (16, 8, 8)), 128, "bf16")
    assert hv_gna.tiles == sim.TileConfig((2, 8, 8), (2, 8, 8)) and hv_gna.block_sparse


def test_choose_tiles_breaks_ties_by_partial_tiles(monkeypatch):
    # The real table has no tie, so swap in one: same bound, the second masks fewer tiles.
    p = sim.Problem((64,), (16,), stride=(8,))
    a, b = sim.TileConfig((4,), (8,)), sim.TileConfig((8,), (8,))
    ra, rb = sim.simulate(p, a), sim.simulate(p, b)
    assert ra.token_bound == pytest.approx(rb.token_bound) and ra.partial > rb.partial
    monkeypatch.setattr(sim, "supported_tiles", lambda *args, **kw: (a, b))
    assert sim.choose_tiles(p, 128, "bf16").tiles == b
    assert [s.tiles for s in sim.tile_candidates(p, 128, "bf16")] == [b, a]


def test_unsupported_kernel_calls_raise():
    p = sim.Problem((64,), (16,))
    with pytest.raises(NotImplementedError, match="dtype"):
        sim.choose_tiles(p, 128, "float32")
    with pytest.raises(NotImplementedError, match="head dim"):
        sim.choose_tiles(p, 96, "bfloat16")


def test_problem_validation_reuses_gna_rules():
    with pytest.raises(ValueError, match="`stride` cannot be larger"):
        sim.Problem((16,), (4,), stride=(5,))
    with pytest.raises(ValueError, match="kernel_size"):
        sim.Problem((16, 16), (20, 3))
    with pytest.raises(ValueError, match="one entry per axis"):
        sim.Problem((16, 16), (3, 3, 3))
    with pytest.raises(ValueError, match="one entry per spatial axis"):
        sim.simulate(sim.Problem((16, 16), 3), (8,), (8,))


def test_str_is_readable():
    p = sim.Problem((30, 48, 80), (18, 24, 24), (16, 8, 8))
    text = str(sim.simulate(p, (2, 8, 8), (2, 8, 8)))
    assert "11.11x" in text and "perfectly block-sparse" in text and "Q(2,8,8)/KV(2,8,8)" in text
    text = str(sim.simulate(p, (2, 8, 8), 8))
    assert "Q(2,8,8)/KV(8,8,8)" in text and "needs masking" in text
    table = sim.table(sim.suggest_strides(sim.Problem((64,), (16,)), 8, 8))
    assert table.splitlines()[0].split()[:3] == ["stride", "tiles", "tiling"]


def test_plot_stride_sweep_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = sim.plot_stride_sweep(
        sim.Problem((64, 64), (20, 24)), (16, 8), (16, 8), path=tmp_path / "sweep.png"
    )
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_stride_sweep_without_matplotlib_says_what_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        sim.plot_stride_sweep(sim.Problem((64,), (16,)), 8, 8, path=tmp_path / "x.png")
