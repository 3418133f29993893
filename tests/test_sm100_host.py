"""What the Blackwell (sm_100a) forward launches, checked on the CPU (no GPU, no nvcc).

The sm100 kernel cannot run here (no Blackwell GPU anywhere; `tests/gpu/test_sm100_fwd.py` runs
where one is). Everything it computes on the host is checked instead, through a small program
(`cuda/sm100/tests/fwd_work_cases.cc`, built with the host compiler) over the same headers:

- the tile table (`cuda/sm100/fwd_config.h`) holds the sm90 shapes of `jax_gna._tiles`
  (so the simulator's pick and user tile requests mean the same on both architectures) and fits
  the kernel's budgets: 128-row Q tiles (one M = 128 UMMA), S0 + S1 + O in 512 TMEM columns,
  Q + K/V stages + P in 227 KB of shared memory, but over half the SM's (one CTA per SM, as
  each allocates all of TMEM);
- the launch (one CTA per work item: `kernel_axes`, `fwd_params`, `decode_fwd_work` of
  `cuda/common/fwd_params.h`) runs every (batch, head, dilation group, Q tile) holding a query
  exactly once, and each item's KV-tile box and mask-free KV tiles equal brute force from
  `tests/oracle.py`'s windows.
"""

from __future__ import annotations

import itertools
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from jax_gna import _tiles
from tests import oracle

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
TMEM_COLUMNS = 512
SMEM_BYTES = 227 * 1024  # per CTA
SM_SMEM_BYTES = 228 * 1024  # per SM


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    if CXX is None:
        pytest.skip("no host C++ compiler (g++/c++/clang++) found")
    exe = tmp_path_factory.mktemp("sm100") / "fwd_work_cases"
    src = ROOT / "cuda" / "sm100" / "tests" / "fwd_work_cases.cc"
    subprocess.run(
        [CXX, "-std=c++17", "-O1", "-I", str(ROOT), "-I", str(ROOT / "cuda" / "include")]
        + [str(src), "-o", str(exe)],
        check=True,
    )
    return exe


def _run(program: Path, problems: list[dict]) -> tuple[list[list[int]], list[dict]]:
    lines = []
    for p in problems:
        fields = [p["rank"], p["batch"], p["heads"], p["kv_heads"], p["config"]]
        for name in ("extent", "kernel_size", "stride", "dilation", "causal"):
            fields += [int(x) for x in p[name]]
        lines.append(" ".join(map(str, fields)))
    out = subprocess.run(
        [str(program)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True
    ).stdout.splitlines()
    table = [[int(x) for x in line.split()[1:]] for line in out if line.startswith("table ")]
    cases: list[dict] = []
    for line in out:
        words = line.split()
        if words[0] == "case":
            assert int(words[1]) == len(cases), line
            cases.append(dict(num_items=int(words[3]), items=[]))
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
