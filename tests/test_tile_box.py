"""`cuda/include/gna/tile_box.h` (KV-tile boxes, empty/full/partial tiles, and the backward's
Q-tile boxes) against brute force.

The C++ header is compiled into a small program (`cuda/tests/tile_box_cases.cc`) with the host
compiler; its answers are checked against per-element visibility computed from the window rule
(docs/design.md, "GNA semantics") directly: here (forward boxes and kinds) and by
`tests/oracle.py`'s element mask (the backward's Q-tile boxes, and views: a shard's queries
against a key block, with the windows of the whole axis, checked against the oracle's whole-axis
mask restricted to the slices). No code under test is used as the oracle.
"""

from __future__ import annotations

import itertools
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests import host_cxx, oracle

ROOT = Path(__file__).resolve().parents[1]
EMPTY, FULL, PARTIAL = 0, 1, 2


def _window(iq: int, lg: int, k: int, s: int, causal: bool) -> tuple[int, int]:
    """The window rule (docs/design.md, "GNA semantics"), one query in group coordinates."""
    if causal:
        leader = min((iq // s) * s + s - 1, lg - 1)
        return max(leader - k + 1, 0), iq + 1
    leader = min((iq // s) * s + s // 2, lg - 1)
    start = min(max(leader - k // 2, 0), lg - k)
    return start, start + k


def _axis_visibility(lg, k, s, causal, q_pos, k_pos) -> np.ndarray:
    """[len(q_pos), len(k_pos)] visibility; positions outside [0, lg) see/are seen by nothing."""
    vis = np.zeros((len(q_pos), len(k_pos)), dtype=bool)
    for i, q in enumerate(q_pos):
        if not 0 <= q < lg:
            continue
        start, end = _window(q, lg, k, s, causal)
        for j, key in enumerate(k_pos):
            vis[i, j] = 0 <= key < lg and start <= key < end
    return vis


def _brute_kind(axes, g, q_idx, k_idx) -> int:
    """Kind of one (Q tile, KV tile) pair from the N-d per-element visibility."""
    mats, q_valid, k_valid = [], [], []
    for (length, k, s, d, causal, qt, kt), ga, qi, ki in zip(axes, g, q_idx, k_idx):
        lg = (length - ga + d - 1) // d
        q_pos = list(range(qi * qt, qi * qt + qt))
        k_pos = list(range(ki * kt, ki * kt + kt))
        mats.append(_axis_visibility(lg, k, s, causal, q_pos, k_pos))
        q_valid.append(np.array([0 <= p < lg for p in q_pos]))
        k_valid.append(np.array([0 <= p < lg for p in k_pos]))
    # N-d visibility [q0, q1, .., k0, k1, ..] as the AND over axes, element by element.
    rank = len(axes)
    vis = np.ones([m.shape[0] for m in mats] + [m.shape[1] for m in mats], dtype=bool)
    qv = np.ones([m.shape[0] for m in mats], dtype=bool)
    for a, m in enumerate(mats):
        shape = [1] * (2 * rank)
        shape[a], shape[rank + a] = m.shape
        vis &= m.reshape(shape)
        qshape = [1] * rank
        qshape[a] = m.shape[0]
        qv &= q_valid[a].reshape(qshape)
    all_keys_valid = all(v.all() for v in k_valid)
    count = int(vis.sum())
    if count == 0:
        return EMPTY
    n_valid_q = int(qv.sum())
    n_keys = int(np.prod([m.shape[1] for m in mats]))
    return FULL if all_keys_valid and count == n_valid_q * n_keys else PARTIAL


def _random_axis(rng, small: bool):
    length = int(rng.integers(1, 10 if small else 23))
    d = int(rng.integers(1, length + 1)) if rng.random() < 0.3 else 1
    k = int(rng.integers(1, length // d + 1))  # K = 1: the query alone
    s = int(rng.integers(1, k + 1))
    causal = bool(rng.random() < 0.3)
    qt = int(rng.choice([1, 2, 3, 4, 8]))
    kt = int(rng.choice([1, 2, 3, 4, 8]))
    return (length, k, s, d, causal, qt, kt)


def _cases():
    rng = np.random.default_rng(1234)
    cases = []
    # Exhaustive 1-D: every legal (L, K, s, d, causal) for small L (K = 1 and L = 1 included),
    # a few tile pairs.
    for length in range(1, 11):
        for d in range(1, length + 1):
            for k in range(1, length // d + 1):
                for s in range(1, k + 1):
                    for causal in (False, True):
                        for qt, kt in ((1, 1), (2, 3), (4, 4), (3, 8)):
                            cases.append([(length, k, s, d, causal, qt, kt)])
    for _ in range(150):
        cases.append([_random_axis(rng, small=False)])
    for _ in range(120):
        cases.append([_random_axis(rng, small=True) for _ in range(2)])
    for _ in range(60):
        cases.append([_random_axis(rng, small=True) for _ in range(3)])
    return cases


@pytest.fixture(scope="module")
def tile_box_program(tmp_path_factory) -> Path:
    return host_cxx.build_probe(tmp_path_factory, ROOT / "cuda" / "tests" / "tile_box_cases.cc")


@pytest.fixture(scope="module")
def case_rows(tile_box_program) -> tuple[list, list[list[str]]]:
    """The cases and, per case, the program's output lines after its "case <n>" line."""
    cases = _cases()
    text = "\n".join(
        " ".join([str(len(c))] + [" ".join(str(int(x)) for x in ax) for ax in c]) for c in cases
    )
    out = subprocess.run(
        [str(tile_box_program)], input=text, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    rows: list[list[str]] = []
    for line in out:
        if line.startswith("case "):
            assert line == f"case {len(rows)}", line
            rows.append([])
        else:
            rows[-1].append(line)
    assert len(rows) == len(cases)
    return cases, rows


def _tile_count(axes, g) -> list[int]:
    """Per axis: (group length, Q tiles, KV tiles) of dilation group ``g``."""
    out = []
    for ax, ga in zip(axes, g):
        lg = (ax[0] - ga + ax[3] - 1) // ax[3]
        out.append((lg, (lg + ax[5] - 1) // ax[5], (lg + ax[6] - 1) // ax[6]))
    return out


def test_boxes_and_kinds_match_brute_force(case_rows):
    cases, case_out = case_rows
    checked = 0
    for axes, out in zip(cases, case_out):
        rank = len(axes)
        groups = list(itertools.product(*[range(ax[3]) for ax in axes]))
        rows = [r for r in out if r.startswith("q")]
        expected_rows = sum(math.prod(n[1] for n in _tile_count(axes, g)) for g in groups)
        assert len(rows) == expected_rows, (axes, len(rows), expected_rows)
        for row in rows:
            parts = row.split()
            g = tuple(int(x) for x in parts[1 : 1 + rank])
            q_idx = [int(x) for x in parts[1 + rank : 1 + 2 * rank]]
            box = [int(x) for x in parts[2 + 2 * rank : 2 + 4 * rank]]
            full = [int(x) for x in parts[3 + 4 * rank : 3 + 6 * rank]]
            kinds = parts[-1]
            k_ranges = [range(-1, n[2] + 1) for n in _tile_count(axes, g)]
            nonempty = []
            for pos, k_idx in enumerate(itertools.product(*k_ranges)):
                want = _brute_kind(axes, g, q_idx, k_idx)
                got = int(kinds[pos])
                assert got == want, (axes, g, q_idx, k_idx, got, want)
                in_full = all(full[2 * a] <= k_idx[a] < full[2 * a + 1] for a in range(rank))
                assert in_full == (want == FULL), (axes, g, q_idx, k_idx, full, want)
                if want != EMPTY:
                    nonempty.append(k_idx)
                checked += 1
            assert nonempty, (axes, g, q_idx)  # every valid query sees itself
            for a in range(rank):
                lo = min(k[a] for k in nonempty)
                hi = max(k[a] for k in nonempty) + 1
                assert (box[2 * a], box[2 * a + 1]) == (lo, hi), (axes, g, q_idx, a, box)
    assert checked > 10000


def _box_tiles(g, ranges) -> set[tuple[int, ...]]:
    """(group..., tile...) of every tile of a box given as per-axis [begin, end) pairs."""
    return {tuple(g) + t for t in itertools.product(*(range(b, e) for b, e in ranges))}


def test_inverse_boxes_match_element_mask(case_rows):
    """For every KV tile, q_tile_box holds exactly the Q tiles with a visible token pair, and
    full_q_tile_range exactly those whose every valid query sees every slot of the KV tile,
    by the N-d element mask of `tests/oracle.py` over the whole token grid."""
    cases, case_out = case_rows
    checked = 0
    for axes, out in zip(cases, case_out):
        rank = len(axes)
        shape = tuple(ax[0] for ax in axes)
        ks, st, dl, ca, qt, kt = (tuple(ax[i] for ax in axes) for i in range(1, 7))
        q_tiles, k_tiles, pairs, n_valid_q = oracle.tile_pair_counts(
            oracle.visible(shape, ks, st, dl, ca),
            oracle.tile_ids(shape, dl, qt),
            oracle.tile_ids(shape, dl, kt),
        )
        q_keys = [tuple(int(x) for x in t) for t in q_tiles]
        k_col = {tuple(int(x) for x in t): j for j, t in enumerate(k_tiles)}
        rows = [r for r in out if r.startswith("k")]
        groups = list(itertools.product(*[range(d) for d in dl]))
        expected_rows = sum(math.prod(n[2] + 2 for n in _tile_count(axes, g)) for g in groups)
        assert len(rows) == expected_rows, (axes, len(rows), expected_rows)
        for row in rows:
            parts = row.split()
            g = tuple(int(x) for x in parts[1 : 1 + rank])
            k_idx = tuple(int(x) for x in parts[1 + rank : 1 + 2 * rank])
            box = [int(x) for x in parts[2 + 2 * rank : 2 + 4 * rank]]
            full = [int(x) for x in parts[3 + 4 * rank : 3 + 6 * rank]]
            j = k_col.get(g + k_idx)  # None: the KV tile holds no token of group g
            want_visited, want_full = set(), set()
            if j is not None:
                for i, q in enumerate(q_keys):
                    if pairs[i, j] > 0:
                        want_visited.add(q)
                    if pairs[i, j] == n_valid_q[i] * math.prod(kt):
                        want_full.add(q)
            case = (axes, g, k_idx, box, full)
            assert _box_tiles(g, zip(box[::2], box[1::2])) == want_visited, case
            assert _box_tiles(g, zip(full[::2], full[1::2])) == want_full, case
            checked += 1
    assert checked > 10000


def _random_view(rng, length: int, d: int) -> tuple[int, int, int, int]:
    """A legal view: the query slice starts inside the axis (it may run past its end); the key
    slice starts at the same dilation phase, anywhere near the axis."""
    qo = int(rng.integers(0, length))
    shift = int(rng.integers(-(length // d) - 1, length // d + 2))
    return (
        qo,
        int(rng.integers(1, length - qo + 3)),
        qo - d * shift,
        int(rng.integers(1, length + 3)),
    )


def _view_cases():
    rng = np.random.default_rng(99)
    cases = []
    for n in range(400):
        rank = 1 + n % 3
        axes = [_random_axis(rng, small=rank > 1) for _ in range(rank)]
        cases.append([(*ax, *_random_view(rng, ax[0], ax[3])) for ax in axes])
    return cases


def test_views_match_the_whole_axis_element_mask(tile_box_program):
    """Every function of the header on views, in local tile indices: forward boxes, kinds and
    full ranges, and the backward's Q-tile boxes and full ranges, against tile pair counts of
    `oracle.view_visible` (valid queries: those inside the axis; keys outside the axis or the
    slice are never visible)."""
    cases = _view_cases()
    text = "\n".join(
        " ".join(["v", str(len(c))] + [" ".join(str(int(x)) for x in ax) for ax in c])
        for c in cases
    )
    out = subprocess.run(
        [str(tile_box_program)], input=text, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    starts = [i for i, line in enumerate(out) if line.startswith("case ")] + [len(out)]
    assert len(starts) == len(cases) + 1
    checked = 0
    for c, axes in enumerate(cases):
        rank = len(axes)
        extent = tuple(ax[0] for ax in axes)
        ks, st, dl, ca, qt, kt = (tuple(ax[i] for ax in axes) for i in range(1, 7))
        views = [ax[7:] for ax in axes]
        q_shape, k_shape = tuple(v[1] for v in views), tuple(v[3] for v in views)
        mask = oracle.view_visible(extent, views, ks, st, dl, ca)
        coords = np.array(list(itertools.product(*(range(n) for n in q_shape))))
        valid = np.all(coords + np.array([v[0] for v in views]) < np.array(extent), axis=1)
        q_tiles, k_tiles, pairs, n_valid_q = oracle.tile_pair_counts(
            mask[valid], oracle.tile_ids(q_shape, dl, qt)[valid], oracle.tile_ids(k_shape, dl, kt)
        )
        q_keys = [tuple(int(x) for x in t) for t in q_tiles]
        k_keys = [tuple(int(x) for x in t) for t in k_tiles]
        slots = math.prod(kt)
        # (Q tile, KV tile) -> kind, for the pairs with a visible token pair (others: empty).
        kinds_of = {
            (q, k_keys[j]): FULL if pairs[i, j] == n_valid_q[i] * slots else PARTIAL
            for i, q in enumerate(q_keys)
            for j in np.flatnonzero(pairs[i])
        }

        for row in out[starts[c] + 1 : starts[c + 1]]:
            parts = row.split()
            g = tuple(int(x) for x in parts[1 : 1 + rank])
            idx = tuple(int(x) for x in parts[1 + rank : 1 + 2 * rank])
            box = list(zip(*[iter(int(x) for x in parts[2 + 2 * rank : 2 + 4 * rank])] * 2))
            full = list(zip(*[iter(int(x) for x in parts[3 + 4 * rank : 3 + 6 * rank])] * 2))
            if parts[0] == "q":
                kinds = parts[-1]
                n_k = [int(np.ceil(len(range(ga, v[3], ax[3])) / ax[6])) for ga, v, ax in
                       zip(g, views, axes)]  # fmt: skip
                visited, want_full = set(), set()
                for pos, k_idx in enumerate(itertools.product(*(range(-1, n + 1) for n in n_k))):
                    want = kinds_of.get((g + idx, g + k_idx), EMPTY)
                    assert int(kinds[pos]) == want, (axes, g, idx, k_idx)
                    if want != EMPTY:
                        visited.add(g + k_idx)
                    if want == FULL:
                        want_full.add(g + k_idx)
                assert (_box_tiles(g, box) & visited) == visited, (axes, g, idx, box)
                assert len(_box_tiles(g, box)) == len(visited), (axes, g, idx, box)
                assert _box_tiles(g, full) == want_full, (axes, g, idx, full)
            else:
                want_visited = {q for q, k in kinds_of if k == g + idx}
                want_full = {q for q, k in kinds_of if k == g + idx and kinds_of[q, k] == FULL}
                assert _box_tiles(g, box) == want_visited, (axes, g, idx, box)
                assert _box_tiles(g, full) == want_full, (axes, g, idx, full)
            checked += 1
    assert checked > 10000
