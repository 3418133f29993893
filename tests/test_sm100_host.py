"""What the Blackwell (sm_100a) kernels launch, checked on the CPU (no GPU, no nvcc).

The sm100 kernels cannot run here (no Blackwell GPU anywhere; `tests/gpu/test_sm100_fwd.py` and
`tests/gpu/test_sm100_bwd.py` run where one is). Everything they compute on the host is checked
instead, through small programs (`cuda/sm100/tests/fwd_work_cases.cc`, `bwd_work_cases.cc`,
built with the host compiler) over the same headers. The forward:

- the tile table (`cuda/sm100/fwd_config.h`) holds the sm90 shapes of `jax_gna._tiles`
  (so the simulator's pick and user tile requests mean the same on both architectures) and fits
  the kernel's budgets: 128-row Q tiles (one M = 128 UMMA), S0 + S1 + O in 512 TMEM columns,
  Q + K/V stages + P in 227 KB of shared memory, but over half the SM's (one CTA per SM, as
  each allocates all of TMEM);
- the launch (one CTA per work item: `kernel_axes`, `fwd_params`, `decode_fwd_work` of
  `cuda/common/fwd_params.h`) runs every (batch, head, dilation group, Q tile) holding a query
  exactly once, and each item's KV-tile box and mask-free KV tiles equal brute force from
  `tests/oracle.py`'s windows.

The backward (KV-stationary, `cuda/common/bwd_params.h`):

- its tile table (`cuda/sm100/bwd_config.h`) holds the forward's default shapes and fits TMEM
  (dK, dV, S^T, dP^T) and shared memory (K, V, Q/dO stages, P^T, dS^T), one CTA per SM;
- its CTA order over KV tiles (`bwd_set_deterministic`): the forward's rule in the default mode
  (or the `GNA_BWD_TILE_ORDER` knob's), row-major in deterministic mode whatever the knob says;
  block indices count the KV tiles in that order, then groups, KV heads, batch;
- every (batch, KV head, dilation group, KV tile) runs once, in both modes; its Q-tile box
  and mask-free Q tiles equal brute force; it visits every query head of its GQA group over the
  box (reversed in deterministic mode), each visit at its own row-statistics slot;
- deterministic mode: the CTAs adding into one Q tile's dQ hold the turns 0..m-1, m the size
  of the Q tile's forward KV box (no turn is missing, so no CTA waits forever), in the order of
  their block indices (a CTA waits only for CTAs launched before it); the workspace parts fit;
- its data flow, emulated in fp32 on the host with the same headers (`bwd_emulation.cc`: the
  pre-pass, every CTA's visits, masks on partial pairs only, dQ blocks at the row-statistics
  slots and their conversion, dK/dV per KV row, garbage in rows outside the groups), gives
  jax.grad of the reference: all of the kernel but its tensor-core plumbing.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from jax_gna import _tiles
from tests import host_cxx, oracle

ROOT = Path(__file__).resolve().parents[1]
TMEM_COLUMNS = 512
SMEM_BYTES = 227 * 1024  # per CTA
SM_SMEM_BYTES = 228 * 1024  # per SM


def _build(tmp_path_factory, name: str, opt: str = "-O1") -> Path:
    """cuda/sm100/tests/<name>.cc built with the host compiler."""
    source = ROOT / "cuda" / "sm100" / "tests" / f"{name}.cc"
    return host_cxx.build_probe(tmp_path_factory, source, flags=(opt,))


def _env(bwd_tile_order: str | None = None) -> dict:
    """The environment of a probe: CTA orders by the rule, unless `bwd_tile_order` sets the
    development knob GNA_BWD_TILE_ORDER."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_TILE_ORDER")}
    if bwd_tile_order is not None:
        env["GNA_BWD_TILE_ORDER"] = bwd_tile_order
    return env


def _probe(
    program: Path, problems: list[dict], option: str, bwd_tile_order: str | None = None
) -> subprocess.CompletedProcess:
    """The probe run on `problems` (cuda/sm100/tests/problem_input.h), with p[option] as each
    line's probe-specific field, in _env(bwd_tile_order)."""
    lines = []
    for p in problems:
        fields = [p["rank"], p["batch"], p["heads"], p["kv_heads"], int(p[option])]
        for name in ("extent", "kernel_size", "stride", "dilation", "causal"):
            fields += [int(x) for x in p[name]]
        lines.append(" ".join(map(str, fields)))
    return subprocess.run(
        [str(program)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=True,
        env=_env(bwd_tile_order),
    )


def _output(program: Path, problems: list[dict], option: str) -> list[str]:
    """The probe's stdout lines (_probe)."""
    return _probe(program, problems, option).stdout.splitlines()


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "fwd_work_cases")


def _run(program: Path, problems: list[dict]) -> tuple[list[list[int]], list[dict]]:
    out = _output(program, problems, "config")
    table = [[int(x) for x in line.split()[1:]] for line in out if line.startswith("table ")]
    cases: list[dict] = []
    for line in out:
        words = line.split()
        if words[0] == "case":
            assert int(words[1]) == len(cases), line
            cases.append(
                dict(num_items=int(words[3]), order=tuple(int(x) for x in words[9:12]), items=[])
            )
        elif words[0] == "item":
            v = [int(x) for x in words[1:10]]
            box = [int(x) for x in words[11:17]]
            full = [int(x) for x in words[18:24]]
            cases[-1]["items"].append(
                dict(
                    valid=bool(v[0]),
                    batch=v[1],
                    head=v[2],
                    group=tuple(v[3:6]),
                    q_tile=tuple(v[6:9]),
                    box=[tuple(box[2 * a : 2 * a + 2]) for a in range(3)],
                    full=[tuple(full[2 * a : 2 * a + 2]) for a in range(3)],
                )
            )
    return table, cases


# -- the tile table ---------------------------------------------------------------------------


def test_tile_table_holds_the_sm90_shapes_of_the_python_table(program):
    table, _ = _run(program, [])
    got: dict = {}
    for rank, dim, *shape, _stages in table:
        q, kv = tuple(shape[3 - rank : 3]), tuple(shape[6 - rank : 6])
        got.setdefault(rank, {}).setdefault(dim, []).append(_tiles.TileConfig(q, kv))
    want = {
        rank: {dim: list(_tiles.SM90_FORWARD[rank][dim]) for dim in (32, 64, 128)}
        for rank in (1, 2, 3)
    }
    assert got == want


def test_tile_table_fits_tmem_and_shared_memory(program):
    table, _ = _run(program, [])
    assert len(table) == 15  # ranks 1-3 x head dims 32/64/128, two configurations for 2-D/3-D
    for rank, dim, q0, q1, q2, k0, k1, k2, stages in table:
        q, kv = q0 * q1 * q2, k0 * k1 * k2
        assert q == 128, "one M = 128 UMMA, one query row per TMEM lane"
        assert kv % 32 == 0 and kv <= 128, "S is read in 32-column TMEM loads"
        assert 2 * kv + dim <= TMEM_COLUMNS, "S0, S1 and O in tensor memory"
        elem = 2  # fp16/bf16
        smem = elem * (q * dim + 2 * stages * kv * dim + q * kv)  # Q, K and V stages, P
        barriers = 8 * (1 + 4 * stages + 6) + 4
        assert smem + barriers + 1024 <= SMEM_BYTES, (rank, dim, stages, smem)
        # One CTA per SM: each allocates all 512 TMEM columns (a second would wait in
        # tcgen05.alloc), so the shared memory of two CTAs (+1 KB reserved each) must not fit.
        assert 2 * (smem + barriers + 1024 + 1024) > SM_SMEM_BYTES, (rank, dim, stages, smem)
        assert stages >= 2, "a K/V tile loads while the previous one is used"


# -- the launch: work items and their KV boxes ---------------------------------------------------


def _random_problem(rng: np.random.Generator, rank: int) -> dict:
    ext, ks, st, dil, cau = [], [], [], [], []
    for _ in range(rank):
        d = int(rng.choice([1, 1, 2] if rank == 1 else [1, 1, 2, 3]))
        k = int(rng.integers(2, 40 if rank == 1 else 8))
        length = int(rng.integers(k * d, k * d + (300 if rank == 1 else 30)))
        ext.append(length)
        ks.append(k)
        st.append(int(rng.integers(1, k + 1)))
        dil.append(d)
        cau.append(bool(rng.random() < 0.3))
    kv_heads = int(rng.choice([1, 2]))
    return dict(
        rank=rank,
        batch=int(rng.choice([1, 2])),
        heads=kv_heads * int(rng.choice([1, 3])),
        kv_heads=kv_heads,
        config=0 if rank == 1 else int(rng.integers(2)),
        extent=tuple(ext),
        kernel_size=tuple(ks),
        stride=tuple(st),
        dilation=tuple(dil),
        causal=tuple(cau),
    )


def _kernel_axes(p: dict) -> list[tuple]:
    """Per kernel axis: (extent, kernel_size, stride, dilation, causal); leading axes trivial."""
    pad = [(1, 1, 1, 1, False)] * (3 - p["rank"])
    return pad + list(
        zip(p["extent"], p["kernel_size"], p["stride"], p["dilation"], p["causal"], strict=True)
    )


def _tiles_of(p: dict, table: list[list[int]]) -> tuple[tuple, tuple]:
    rows = [r for r in table if r[0] == p["rank"] and r[1] == 128]
    r = rows[p["config"]]
    return tuple(r[2:5]), tuple(r[5:8])


def _brute_axis(axis: tuple, group: int, q_tile_index: int, q_tile: int, kv_tile: int):
    """(KV box, set of mask-free KV tiles) of one Q tile along one axis, from oracle.window."""
    length, k, s, d, causal = axis
    lg = oracle.group_length(length, d, group)
    queries = [iq for iq in range(q_tile_index * q_tile, (q_tile_index + 1) * q_tile) if iq < lg]
    windows = [oracle.window(group + d * iq, length, k, s, d, causal)[1:] for iq in queries]
    box = (min(w[0] for w in windows) // kv_tile, math.ceil(max(w[1] for w in windows) / kv_tile))
    full = {
        u
        for u in range(math.ceil(lg / kv_tile))
        if (u + 1) * kv_tile <= lg
        and all(w[0] <= u * kv_tile and (u + 1) * kv_tile <= w[1] for w in windows)
    }
    return box, full


def _tile_order(axes: list[tuple]) -> tuple[int, ...]:
    """The forward's CTA order over Q tiles (fastest axis first): the axis whose window spans
    the largest part of its extent first, ties to the later axis; axes of one token last."""

    def key(a: int):
        length, k, _, d, _ = axes[a]
        return (length == 1, -Fraction(k * d, length))

    return tuple(sorted((2, 1, 0), key=key))  # stable: ties keep the later axis first


# Problems of the CTA-order rule: (extent, kernel_size, dilation, its order, fastest axis first).
CTA_ORDER_CASES = [
    ((16, 44, 80), (16, 24, 16), (1, 1, 1), (0, 1, 2)),  # Cosmos: the window spans T
    ((30, 48, 80), (18, 24, 24), (1, 1, 1), (0, 1, 2)),  # HunyuanVideo
    ((256, 256), (80, 80), (1, 1), (2, 1, 0)),  # FLUX-4K: square, the last axis first
    ((32768,), (2048,), (1,), (2, 1, 0)),
    ((8, 24, 24), (8, 24, 24), (1, 1, 1), (2, 1, 0)),  # dense: whole axes tie
    ((64, 64), (8, 4), (4, 1), (1, 2, 0)),  # the dilated window spans half of axis 1
    ((64, 64), (8, 4), (1, 8), (2, 1, 0)),
]


def _order_problem(extent: tuple, kernel_size: tuple, dilation: tuple) -> dict:
    rank = len(extent)
    return dict(rank=rank, batch=1, heads=1, kv_heads=1, config=0, deterministic=False,
                extent=extent, kernel_size=kernel_size, stride=(1,) * rank, dilation=dilation,
                causal=(False,) * rank)  # fmt: skip


@pytest.mark.parametrize(("extent", "kernel_size", "dilation", "order"), CTA_ORDER_CASES)
def test_cta_order_puts_the_widest_window_first(program, extent, kernel_size, dilation, order):
    p = _order_problem(extent, kernel_size, dilation)
    _, (case,) = _run(program, [p])
    assert case["order"] == order == _tile_order(_kernel_axes(p))


RANDOM = [(rank, i) for rank in (1, 2, 3) for i in range(25)]


@pytest.mark.parametrize(("rank", "seed"), RANDOM, ids=[f"{r}d-{i}" for r, i in RANDOM])
def test_every_q_tile_runs_once_with_its_brute_force_kv_box(program, rank, seed):
    p = _random_problem(np.random.default_rng(100 * rank + seed), rank)
    table, (case,) = _run(program, [p])
    q_tile, kv_tile = _tiles_of(p, table)
    axes = _kernel_axes(p)
    items = case["items"]
    assert case["num_items"] == len(items)

    # Brute force: every (batch, head, group, Q tile) whose tile holds a query of its group.
    want = set()
    groups = itertools.product(*(range(a[3]) for a in axes))
    for g in groups:
        lgs = [oracle.group_length(a[0], a[3], ga) for a, ga in zip(axes, g, strict=True)]
        tiles = itertools.product(*(range(math.ceil(lg / t)) for lg, t in zip(lgs, q_tile)))
        for t in tiles:
            for b in range(p["batch"]):
                for h in range(p["heads"]):
                    want.add((b, h, g, t))
    valid = [(it["batch"], it["head"], it["group"], it["q_tile"]) for it in items if it["valid"]]
    assert len(valid) == len(set(valid)), "a Q tile runs twice"
    assert case["order"] == _tile_order(axes), p
    # The CTA order: consecutive items walk the Q tiles along the order's first axis first.
    tile_counts = [max(it["q_tile"][a] for it in items) + 1 for a in range(3)]
    first = case["order"][0]
    if tile_counts[first] > 1:
        assert items[1]["q_tile"][first] == 1, (p, case["order"])
    assert set(valid) == want, p

    for it in items:
        if not it["valid"]:
            # Only tiles past the end of a shorter dilation group are skipped.
            assert any(
                it["q_tile"][a] * q_tile[a] >= oracle.group_length(ax[0], ax[3], it["group"][a])
                for a, ax in enumerate(axes)
            ), it
            continue
        for a, ax in enumerate(axes):
            box, full = _brute_axis(ax, it["group"][a], it["q_tile"][a], q_tile[a], kv_tile[a])
            assert it["box"][a] == box, (p, it, a)
            lo, hi = it["full"][a]
            assert set(range(lo, hi)) == full, (p, it, a)


# -- the backward -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bwd_program(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "bwd_work_cases")


def _run_bwd(
    program: Path, problems: list[dict], bwd_tile_order: str | None = None
) -> tuple[list[list[int]], list[dict]]:
    out = _probe(program, problems, "deterministic", bwd_tile_order).stdout.splitlines()
    table = [[int(x) for x in line.split()[1:]] for line in out if line.startswith("table ")]
    cases: list[dict] = []
    for line in out:
        words = line.split()
        if words[0] == "case":
            assert int(words[1]) == len(cases), line
            cases.append(
                dict(
                    items=int(words[3]),
                    slots=int(words[5]),
                    workspace=[int(x) for x in words[7:12]],
                    order=tuple(int(x) for x in words[13:16]),
                    work=[],
                )
            )
        elif words[0] == "item":
            v = [int(x) for x in words[1:9]]
            box = [int(x) for x in words[10:16]]
            full = [int(x) for x in words[17:23]]
            cases[-1]["work"].append(
                dict(
                    batch=v[0],
                    kv_head=v[1],
                    group=tuple(v[2:5]),
                    kv_tile=tuple(v[5:8]),
                    box=[tuple(box[2 * a : 2 * a + 2]) for a in range(3)],
                    full=[tuple(full[2 * a : 2 * a + 2]) for a in range(3)],
                    visits=[],
                )
            )
        elif words[0] == "visit":
            head, t0, t1, t2, slot, turn = (int(x) for x in words[1:])
            cases[-1]["work"][-1]["visits"].append(
                dict(head=head, tile=(t0, t1, t2), slot=slot, turn=turn)
            )
    return table, cases


def test_backward_tile_table_fits_tmem_and_shared_memory(bwd_program):
    table, _ = _run_bwd(bwd_program, [])
    assert len(table) == 9  # ranks 1-3 x head dims 32/64/128
    for rank, dim, q0, q1, q2, k0, k1, k2, stages in table:
        default = _tiles.SM90_FORWARD[rank][dim][0]
        assert ((q0, q1, q2)[3 - rank :], (k0, k1, k2)[3 - rank :]) == (default.q, default.kv)
        q, kv = q0 * q1 * q2, k0 * k1 * k2
        assert q == 128 and kv == 128, "M = 128 UMMAs: a KV row or a Q row per TMEM lane"
        assert 2 * dim + 2 * q <= TMEM_COLUMNS, "dK, dV, S^T, dP^T (dQ over dP^T)"
        assert dim <= q, "dQ fits in dP^T's columns"
        elem = 2
        smem = elem * (2 * kv * dim + 2 * stages * q * dim + 2 * kv * q)  # K, V, Q/dO, P^T, dS^T
        smem += 2 * stages * q * 4  # lse2, delta
        barriers = 8 * (1 + 4 * stages + 6) + 4
        assert smem + barriers + 1024 <= SMEM_BYTES, (rank, dim, stages, smem)
        assert 2 * (smem + barriers + 1024 + 1024) > SM_SMEM_BYTES, (rank, dim, stages, smem)
        assert stages >= 1


def _brute_q_axis(axis: tuple, group: int, kv_tile_index: int, kv_tile: int, q_tile: int):
    """(Q box, set of mask-free Q tiles) of one KV tile along one axis, from oracle.window."""
    length, k, s, d, causal = axis
    lg = oracle.group_length(length, d, group)
    k_lo, k_hi = kv_tile_index * kv_tile, min((kv_tile_index + 1) * kv_tile, lg)
    if k_hi <= k_lo:
        return (0, 0), set()
    windows = [oracle.window(group + d * iq, length, k, s, d, causal)[1:] for iq in range(lg)]
    seen = [iq for iq, (a, b) in enumerate(windows) if b > k_lo and a < k_hi]
    box = (min(seen) // q_tile, math.ceil((max(seen) + 1) / q_tile))
    full = set()
    if (kv_tile_index + 1) * kv_tile <= lg:
        for t in range(math.ceil(lg / q_tile)):
            rows = range(t * q_tile, min((t + 1) * q_tile, lg))
            if all(windows[iq][0] <= k_lo and windows[iq][1] >= k_hi for iq in rows):
                full.add(t)
    return box, full


def _bwd_tiles(p: dict, table: list[list[int]]) -> tuple[tuple, tuple]:
    (row,) = [r for r in table if r[0] == p["rank"] and r[1] == 128]
    return tuple(row[2:5]), tuple(row[5:8])


# The knob GNA_BWD_TILE_ORDER: unset, or the first axis fastest (the reverse of row-major, which
# deterministic mode must keep all the same).
BWD_RANDOM = [
    (rank, i, det, knob)
    for rank in (1, 2, 3)
    for i in range(12)
    for det in (False, True)
    for knob in (None, "012")
]


@pytest.mark.parametrize(
    ("rank", "seed", "deterministic", "knob"),
    BWD_RANDOM,
    ids=[
        f"{r}d-{i}-{'det' if d else 'default'}" + (f"-order{k}" if k else "")
        for r, i, d, k in BWD_RANDOM
    ],
)
def test_backward_work_items_boxes_visits_and_turns(bwd_program, rank, seed, deterministic, knob):
    p = _random_problem(np.random.default_rng(500 + 100 * rank + seed), rank)
    p["deterministic"] = deterministic
    table, (case,) = _run_bwd(bwd_program, [p], knob)
    q_tile, kv_tile = _bwd_tiles(p, table)
    axes = _kernel_axes(p)
    work = case["work"]
    kv_group = p["heads"] // p["kv_heads"]
    lg0 = [oracle.group_length(a[0], a[3], 0) for a in axes]
    kv_tiles = [math.ceil(n / t) for n, t in zip(lg0, kv_tile, strict=True)]
    q_tiles = [math.ceil(n / t) for n, t in zip(lg0, q_tile, strict=True)]
    groups = list(itertools.product(*(range(a[3]) for a in axes)))

    # Every (batch, KV head, group, KV tile of group 0's count) once.
    keys = [(w["batch"], w["kv_head"], w["group"], w["kv_tile"]) for w in work]
    assert len(keys) == case["items"] == len(set(keys))
    want = set(
        itertools.product(
            range(p["batch"]),
            range(p["kv_heads"]),
            groups,
            itertools.product(*map(range, kv_tiles)),
        )
    )
    assert set(keys) == want

    visitors: dict = {}  # (batch, head, group, Q tile) -> [(block index, turn)]
    slots = set()
    for index, w in enumerate(work):
        box_tiles = []
        for a, ax in enumerate(axes):
            box, full = _brute_q_axis(ax, w["group"][a], w["kv_tile"][a], kv_tile[a], q_tile[a])
            if box == (0, 0):
                box_tiles = None
                break
            assert w["box"][a] == box, (p, w, a)
            lo, hi = w["full"][a]
            assert set(range(lo, hi)) == full, (p, w, a)
            box_tiles.append(range(*box))
        if box_tiles is None:  # a KV tile past a shorter group's end: no visit
            assert not w["visits"], (p, w)
            continue
        tiles = list(itertools.product(*box_tiles))  # row-major: TileBox order
        if deterministic:
            tiles = tiles[::-1]
        heads = range(w["kv_head"] * kv_group, (w["kv_head"] + 1) * kv_group)
        assert [(v["head"], v["tile"]) for v in w["visits"]] == [
            (h, t) for h in heads for t in tiles
        ]
        gi = 0
        for a, ax in enumerate(axes):
            gi = gi * ax[3] + w["group"][a]
        for v in w["visits"]:
            qt = (v["tile"][0] * q_tiles[1] + v["tile"][1]) * q_tiles[2] + v["tile"][2]
            n_q = math.prod(q_tiles)
            slot = (((w["batch"] * p["heads"] + v["head"]) * len(groups) + gi) * n_q + qt) * 128
            assert v["slot"] == slot and 0 <= slot < case["slots"]
            slots.add((slot, index))
            key = (w["batch"], v["head"], w["group"], v["tile"])
            visitors.setdefault(key, []).append((index, v["turn"]))
    assert case["slots"] == p["batch"] * p["heads"] * len(groups) * math.prod(q_tiles) * 128

    for (_, _, group, t), seen in visitors.items():
        kv_box = 1
        for a, ax in enumerate(axes):
            (lo, hi), _ = _brute_axis(ax, group[a], t[a], q_tile[a], kv_tile[a])
            kv_box *= hi - lo
        by_block = [turn for _, turn in sorted(seen)]
        assert sorted(by_block) == list(range(kv_box)), (p, group, t, seen)
        if deterministic:
            assert by_block == list(range(kv_box)), "a CTA would wait for a later block"

    lse2, delta, dq, sem, total = case["workspace"]
    n = case["slots"]
    assert all(x % 256 == 0 for x in (lse2, delta, dq, sem))
    assert lse2 == 0 and delta >= 4 * n and dq >= delta + 4 * n
    assert sem >= dq + 4 * n * 128 and total >= sem + 4 * (n // 128)


@pytest.mark.parametrize(("extent", "kernel_size", "dilation", "order"), CTA_ORDER_CASES)
def test_backward_cta_order_is_the_forwards_rule_and_row_major_when_deterministic(
    bwd_program, extent, kernel_size, dilation, order
):
    p = _order_problem(extent, kernel_size, dilation)
    problems = [p, {**p, "deterministic": True}]
    _, (default, deterministic) = _run_bwd(bwd_program, problems)
    assert default["order"] == order and deterministic["order"] == (2, 1, 0)
    # The knob sets the default mode's order only: deterministic turns need row-major.
    knob = "".join(map(str, order[::-1]))
    _, (default, deterministic) = _run_bwd(bwd_program, problems, knob)
    assert default["order"] == order[::-1] and deterministic["order"] == (2, 1, 0)


@pytest.mark.parametrize("value", ["", "01", "0123", "011", "013", "21a", "2 1"])
def test_backward_tile_order_knob_ignores_anything_but_a_permutation(bwd_program, value):
    p = _order_problem((30, 48, 80), (18, 24, 24), (1, 1, 1))
    run = _probe(bwd_program, [p], "deterministic", value)
    case = next(line for line in run.stdout.splitlines() if line.startswith("case "))
    assert case.split()[-3:] == ["0", "1", "2"], "the rule's order, not the knob's"
    assert f'ignoring GNA_BWD_TILE_ORDER="{value}"' in run.stderr


ORDER_RANDOM = [(rank, i) for rank in (1, 2, 3) for i in range(8)]


@pytest.mark.parametrize(("rank", "seed"), ORDER_RANDOM, ids=[f"{r}d-{i}" for r, i in ORDER_RANDOM])
def test_backward_items_run_once_in_the_cta_order(bwd_program, rank, seed):
    """Block indices count the KV tiles in the CTA order (its first axis fastest), then the
    dilation groups (row-major), KV heads and batch entries: every item once, for the rule's
    order, row-major (deterministic) and every order the knob can set."""
    rng = np.random.default_rng(700 + 100 * rank + seed)
    p = _random_problem(rng, rank)
    axes = _kernel_axes(p)
    table, _ = _run_bwd(bwd_program, [])
    _, kv_tile = _bwd_tiles(p, table)
    kv_tiles = [
        math.ceil(oracle.group_length(a[0], a[3], 0) / t)
        for a, t in zip(axes, kv_tile, strict=True)
    ]
    groups = list(itertools.product(*(range(a[3]) for a in axes)))
    items = p["batch"] * p["kv_heads"] * len(groups) * math.prod(kv_tiles)
    problems = [{**p, "deterministic": d} for d in (False, True)]
    knobs = [None] + ["".join(map(str, o)) for o in itertools.permutations(range(3))]
    for knob in knobs:
        _, cases = _run_bwd(bwd_program, problems, knob)
        for deterministic, case in zip((False, True), cases, strict=True):
            if deterministic:
                want = (2, 1, 0)
            else:
                want = tuple(map(int, knob)) if knob else _tile_order(axes)
            assert case["order"] == want, (p, knob, deterministic)
            assert case["items"] == len(case["work"]) == items
            for index, w in enumerate(case["work"]):
                kt = 0
                for a in reversed(want):
                    kt = kt * kv_tiles[a] + w["kv_tile"][a]
                gi = groups.index(w["group"])
                item = (w["batch"] * p["kv_heads"] + w["kv_head"]) * len(groups) + gi
                item = item * math.prod(kv_tiles) + kt
                assert item == index, (p, knob, deterministic, w)


# -- the backward's data flow, emulated on the host -----------------------------------------------


@pytest.fixture(scope="module")
def emulation(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "bwd_emulation", "-O2")


EMULATED = [(rank, i) for rank in (1, 2, 3) for i in range(4)]


@pytest.mark.parametrize(("rank", "seed"), EMULATED, ids=[f"{r}d-{i}" for r, i in EMULATED])
def test_backward_data_flow_matches_reference_gradients(emulation, tmp_path, rank, seed):
    """`bwd_emulation.cc` runs the kernel's data flow in fp32 (pre-pass, work items in the
    default mode's CTA order, visits, masks on partial pairs only, dQ blocks at the
    row-statistics slots and their conversion, dK/dV per KV row, garbage in rows outside the
    groups); its gradients must equal jax.grad of the reference, which checks all of the kernel
    but the tensor-core plumbing."""
    import jax

    from jax_gna import reference

    rng = np.random.default_rng(900 + 10 * rank + seed)
    p = _random_problem(rng, rank)
    # Small enough for a dense reference and an O(items x visits x 128^2 x D) emulation.
    p["extent"] = tuple(
        min(e, k * d + {1: 40, 2: 6, 3: 2}[rank])
        for e, k, d in zip(p["extent"], p["kernel_size"], p["dilation"], strict=True)
    )
    dim = 32
    scale = float(rng.choice([dim**-0.5, 0.3, -0.2]))
    spatial = (p["batch"], *p["extent"])
    x = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    q = x(*spatial, p["heads"], dim)
    k, v = x(*spatial, p["kv_heads"], dim), x(*spatial, p["kv_heads"], dim)
    dout, dlse = x(*spatial, p["heads"], dim), x(*spatial, p["heads"])
    window = dict(
        kernel_size=p["kernel_size"], stride=p["stride"], dilation=p["dilation"],
        is_causal=tuple(bool(c) for c in p["causal"]), scale=scale,
    )  # fmt: skip
    cpu = jax.devices("cpu")[0]

    def forward_and_grads(q, k, v, dout, dlse):
        (out, lse), vjp = jax.vjp(
            lambda q, k, v: reference.gna(q, k, v, **window, return_lse=True), q, k, v
        )
        return out, lse, vjp((dout, dlse))

    with jax.default_device(cpu), jax.default_matmul_precision("highest"):
        out, lse, want = jax.jit(forward_and_grads)(q, k, v, dout, dlse)
    arrays = dict(q=q, k=k, v=v, out=out, dout=dout, lse=lse, dlse=dlse)
    for name, a in arrays.items():
        np.asarray(a, dtype=np.float32).tofile(tmp_path / f"{name}.bin")
    fields = [p["rank"], p["batch"], p["heads"], p["kv_heads"], dim]
    for name in ("extent", "kernel_size", "stride", "dilation", "causal"):
        fields += [int(c) for c in p[name]]
    run = subprocess.run(
        [str(emulation), str(tmp_path)],
        input=" ".join(map(str, fields)) + f"\n{scale!r}\n",
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    )
    # The default mode's CTA order (not row-major in several of these problems).
    assert run.stdout.split() == ["order", *map(str, _tile_order(_kernel_axes(p)))]
    for name, w, like in zip(("dq", "dk", "dv"), want, (q, k, v), strict=True):
        got = np.fromfile(tmp_path / f"{name}.bin", dtype=np.float32).reshape(like.shape)
        w = np.asarray(w)
        assert np.isfinite(got).all(), f"{name}: not finite (a row unwritten or garbage); {p}"
        rms = float(np.sqrt(np.mean(w**2)))
        np.testing.assert_allclose(got, w, atol=1e-4 * rms, rtol=1e-3, err_msg=f"{name}; {p}")


# -- the extension's backward dispatch for compute capability 10.0 ------------------------------


def test_extension_backward_takes_compute_capability_10_where_sm100_is_built():
    """The CUDA FFI backward handler's verdict (`cuda_bwd_can_implement`, as `jax_gna._ffi_call`
    asks it) for a Blackwell device, in a build with sm_100a kernels (CI builds them with nvcc:
    the smoke set, bf16, head dim 128, rank 3): the sm100 backward takes what it was built for
    and says why not otherwise."""
    from jax_gna import _extension

    ext = _extension.ext
    if ext is None or "100a" not in _extension.built_cuda_archs():
        pytest.skip("this build has no sm_100a kernels")
    shape = [2, 6, 24, 24]
    q, kv = [*shape, 4, 128], [*shape, 2, 128]
    window = ([3, 9, 11], [1, 2, 3], [1, 2, 2], [1, 0, 0])
    assert ext.cuda_has_backward()
    assert ext.cuda_bwd_can_implement(q, kv, kv, "bfloat16", *window, 10, 0) is None
    assert ext.bwd_workspace_bytes(q, kv, kv, "bfloat16", *window) > 0
    why = ext.cuda_bwd_can_implement(q, kv, kv, "bfloat16", *window, 10, 3)
    assert why is not None and "10.0" in why
    wide = [*shape, 4, 256]
    why = ext.cuda_bwd_can_implement(wide, wide, wide, "bfloat16", *window, 10, 0)
    assert why is not None and "head_dim" in why
