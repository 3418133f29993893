"""`jax_gna._window` (the vectorised NumPy window math) against the brute-force oracle."""

import math

import numpy as np
import pytest

from jax_gna import _window
from tests import oracle


def _legal_1d(length):
    for k in range(2, length + 1):
        for d in range(1, length // k + 1):
            for s in range(1, k + 1):
                yield k, s, d


EXTENTS = list(range(2, 17))


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("length", EXTENTS, ids=[f"L{n}" for n in EXTENTS])
def test_axis_mask_and_neighborhood_exhaustive_1d(length, causal):
    for k, s, d in _legal_1d(length):
        case = f"L={length} K={k} s={s} d={d} causal={causal}"
        want = oracle.visible((length,), k, s, d, causal)
        got = _window.axis_mask(length, k, s, d, causal)
        assert got.dtype == bool and got.shape == (length, length), case
        np.testing.assert_array_equal(got, want, err_msg=case)
        start, end = _window.neighborhood(length, k, s, d, causal)
        for i in range(length):
            _, ws, we = oracle.window(i, length, k, s, d, causal)
            assert (start[i], end[i]) == (ws, we), f"{case} q{i}"
        np.testing.assert_array_equal(
            _window.mask((length,), (k,), (s,), (d,), (causal,)), want, err_msg=case
        )
        assert _window.attended_keys((length,), (k,), (s,), (d,), (causal,)) == want.sum(), case


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("length", EXTENTS, ids=[f"L{n}" for n in EXTENTS])
def test_inverse_neighborhood_is_transposed_visibility_exhaustive_1d(length, causal):
    for k, s, d in _legal_1d(length):
        case = f"L={length} K={k} s={s} d={d} causal={causal}"
        vis = oracle.visible((length,), k, s, d, causal)
        q_start, q_end = _window.inverse_neighborhood(length, k, s, d, causal)
        assert q_start.shape == q_end.shape == (length,), case
        for j in range(length):
            want = [i for i in range(length) if vis[i, j]]
            got = [i for i in range(length) if i % d == j % d and q_start[j] <= i // d < q_end[j]]
            assert got == want, f"{case} key {j}: got queries {got}, want {want}"


@pytest.mark.parametrize("length", EXTENTS, ids=[f"L{n}" for n in EXTENTS])
def test_group_lengths(length):
    for d in range(1, length + 1):
        want = [oracle.group_length(length, d, g) for g in range(d)]
        assert list(_window.group_lengths(length, d)) == want, (length, d)


def _random_case(rng, rank, max_extent):
    shape, ks, ss, ds, cs = [], [], [], [], []
    for _ in range(rank):
        n = int(rng.integers(2, max_extent + 1))
        k = int(rng.integers(2, n + 1))
        d = int(rng.integers(1, n // k + 1))
        s = int(rng.integers(1, k + 1))
        shape.append(n), ks.append(k), ss.append(s), ds.append(d)
        cs.append(bool(rng.integers(0, 2)))
    return tuple(shape), tuple(ks), tuple(ss), tuple(ds), tuple(cs)


CASES_ND = [(2, seed) for seed in range(40)] + [(3, seed) for seed in range(40)]


@pytest.mark.parametrize("rank,seed", CASES_ND, ids=[f"{r}d-seed{s}" for r, s in CASES_ND])
def test_mask_and_attended_keys_nd(rank, seed):
    rng = np.random.default_rng(1000 * rank + seed)
    shape, ks, ss, ds, cs = _random_case(rng, rank, 9 if rank == 2 else 6)
    case = f"shape={shape} K={ks} s={ss} d={ds} causal={cs}"
    want = oracle.visible(shape, ks, ss, ds, cs)
    got = _window.mask(shape, ks, ss, ds, cs)
    assert got.shape == (math.prod(shape),) * 2, case
    np.testing.assert_array_equal(got, want, err_msg=case)
    assert _window.attended_keys(shape, ks, ss, ds, cs) == int(want.sum()), case


def test_neighborhood_is_cached_and_read_only():
    start, end = _window.neighborhood(9, 3, 2, 2, False)
    assert start.dtype == end.dtype == np.int64
    with pytest.raises(ValueError):
        start[0] = 5
    q_start, q_end = _window.inverse_neighborhood(9, 3, 2, 2, False)
    assert q_start.dtype == q_end.dtype == np.int64
    with pytest.raises(ValueError):
        q_end[0] = 5


def test_windows_are_monotone_in_the_query():
    """What the tiled implementations rely on: start and end non-decreasing in i'."""
    for length in range(2, 17):
        for k, s, d in _legal_1d(length):
            for causal in (False, True):
                start, end = _window.neighborhood(length, k, s, d, causal)
                for g in range(d):
                    assert (np.diff(start[g::d]) >= 0).all() and (np.diff(end[g::d]) >= 0).all()


def test_dense_fraction():
    assert _window.dense_fraction((16, 48, 48), (7, 7, 7)) == pytest.approx(343 / (16 * 48 * 48))
