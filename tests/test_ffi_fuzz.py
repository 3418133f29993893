"""Crafted FFI calls never crash the process.

Random attributes and shapes (0, negatives, 2**31, 2**32 + k, 2**62, INT64_MIN, huge offsets,
non-finite scales, lists of the wrong length) go through ``jax.ffi.ffi_call`` to both targets
(``jax_gna_fwd``, ``jax_gna_bwd``: what a hand-written or deserialized custom call sends) and
through the extension's host helpers. Each case must either run and match the brute-force
oracle (`tests/oracle.py`) or raise a clean error that names the faulty attribute; which of the
two is decided by `_legal`, this file's own statement of the rules (not the C++ validator's).

Every batch of cases runs in a subprocess, so that a crash (SIGFPE, abort) fails the test with
the case that caused it rather than killing the test run. Seeded: the cases are the same on
every run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jax_gna import _extension
from tests import oracle

pytestmark = pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))

ROOT = Path(__file__).resolve().parents[1]
INT_MAX = 2**31 - 1
# Spatial lengths, view offsets and tiles stay below this (cuda/ffi/problem_from_shapes.h).
MAX_POSITION = 2**30
# Values that break careless decoders: zero, negatives, int and int64 bounds, 2**32 + k (an
# int truncation that looks legal), factors whose product wraps.
WEIRD = [0, -1, -7, 2**30 - 1, 2**30, 1 - 2**30, -(2**30), INT_MAX, 2**31, 2**32 + 1, 2**32 + 3]
WEIRD += [2**62, 2**63 - 1, -(2**63)]
WEIRD_SCALES = [math.inf, -math.inf, math.nan, 1e39, -1e39]
WINDOW = ("kernel_size", "stride", "dilation", "is_causal")
VIEW = ("view_extent", "view_q_offset", "view_kv_offset")
TILES = ("q_tile", "kv_tile")
EXT_TARGETS = ("ext_fwd_workspace", "ext_bwd_workspace", "ext_fwd_can", "ext_bwd_can")
# The targets that take tile shapes (each direction its own).
TILE_TARGETS = ("fwd", "bwd", "ext_fwd_can", "ext_bwd_can", "ext_bwd_workspace")
TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------
# Cases: a legal call, then at most one fault.


def _legal_call(rng) -> dict:
    """A legal call: batch dims, spatial axes, window (K = 1 included), heads, maybe a view
    (as tests/test_views.py draws them) and tiles."""
    rank = int(rng.integers(1, 4))
    batch = [int(rng.integers(1, 3)) for _ in range(int(rng.integers(0, 3)))]
    extent = [int(rng.integers(1, (9, 6, 4)[rank - 1] + 1)) for _ in range(rank)]
    window = {name: [] for name in WINDOW}
    for n in extent:
        k = int(rng.integers(1, n + 1))
        window["kernel_size"].append(k)
        window["stride"].append(int(rng.integers(1, k + 1)))
        window["dilation"].append(int(rng.integers(1, n // k + 1)))
        window["is_causal"].append(int(rng.integers(0, 2)))
    kv_heads = int(rng.integers(1, 3))
    heads, dim, dim_v = kv_heads * int(rng.integers(1, 3)), int(rng.integers(1, 5)), 3
    q_spatial, kv_spatial, view = extent, extent, []
    if rng.random() < 0.3:
        q_spatial, kv_spatial = [], []
        for n, d in zip(extent, window["dilation"]):
            qo = int(rng.integers(0, n))
            ko = qo - d * int(rng.integers(-(n // d) - 1, n // d + 2))
            view.append((n, qo, ko))
            q_spatial.append(int(rng.integers(1, n - qo + 2)))
            kv_spatial.append(int(rng.integers(1, n + 2)))
    tiles = [[int(rng.integers(1, 9)) for _ in range(rank)] for _ in TILES]
    if rng.random() < 0.7:
        tiles = [[], []]
    return dict(
        q=[*batch, *q_spatial, heads, dim],
        k=[*batch, *kv_spatial, kv_heads, dim],
        v=[*batch, *kv_spatial, kv_heads, dim_v],
        **window,
        scale=0.5,
        **{name: [v[i] for v in view] for i, name in enumerate(VIEW)},
        q_tile=tiles[0],
        kv_tile=tiles[1],
        deterministic=0,
        fault=None,
    )


def _attributes(target: str) -> list[str]:
    """The inputs of `target` a fault may hit."""
    names = [*WINDOW, *VIEW]
    if target in TILE_TARGETS:
        names += TILES
    if target in ("fwd", "bwd"):
        names.append("scale")
    if target == "bwd":
        names.append("deterministic")
    if target in EXT_TARGETS:
        names.append("shape")  # the helpers take any shape; ffi_call's are real arrays
    return names


def _with_fault(rng, call: dict, target: str) -> dict:
    """`call` with one input replaced by a weird value, or one attribute list of the wrong
    length; `fault` names the input."""
    call = {name: list(x) if isinstance(x, list) else x for name, x in call.items()}
    rank = len(call["kernel_size"])
    name = str(rng.choice(_attributes(target)))
    call["fault"] = name
    if name == "scale":
        call["scale"] = float(rng.choice(WEIRD_SCALES))
    elif name == "deterministic":
        call["deterministic"] = int(rng.choice(WEIRD))
    elif name == "shape":
        shape = call[str(rng.choice(["q", "k", "v"]))]
        shape[int(rng.integers(len(shape)))] = int(rng.choice(WEIRD))
    elif rng.random() < 0.15 and not (name in VIEW and target in EXT_TARGETS):
        # The helpers take the view flattened, so only the FFI attributes can disagree in length.
        values = call[name]
        if values and rng.random() < 0.5:
            values.pop()
        else:
            values.append(1)
    else:
        if name in VIEW and not call["view_extent"]:  # a whole-axis view, then the fault
            call["view_extent"] = call["q"][len(call["q"]) - rank - 2 : -2]
            call["view_q_offset"], call["view_kv_offset"] = [0] * rank, [0] * rank
        if name in TILES and not call["q_tile"]:
            call["q_tile"], call["kv_tile"] = [8] * rank, [8] * rank
        call[name][int(rng.integers(rank))] = int(rng.choice(WEIRD))
    return call


def _known_cases(target: str) -> list[dict]:
    """Calls that crashed or ran wrongly before the decoder checked its attributes."""
    base = dict(
        q=[1, 16, 2, 4], k=[1, 16, 2, 4], v=[1, 16, 2, 4], kernel_size=[4], stride=[1],
        dilation=[1], is_causal=[0], scale=0.5, view_extent=[], view_q_offset=[],
        view_kv_offset=[], q_tile=[], kv_tile=[], deterministic=0,
    )  # fmt: skip
    view = dict(view_extent=[16], view_q_offset=[0], view_kv_offset=[0])
    cases = [
        dict(base, dilation=[2**62], fault="dilation"),  # 4 * 2**62 wraps to 0: SIGFPE
        dict(base, dilation=[2**62], **view, fault="dilation"),  # SIGFPE in the phase rule
        dict(base, kernel_size=[2**32 + 3], fault="kernel_size"),  # ran as kernel_size 3
        dict(base, **(view | dict(view_kv_offset=[-(2**63)])), fault="view_kv_offset"),
        dict(
            base,
            **(view | dict(view_extent=[INT_MAX], view_q_offset=[INT_MAX - 1])),
            fault="view_extent",
        ),  # fmt: skip
    ]
    if target in ("fwd", "bwd"):
        cases.append(dict(base, scale=math.inf, fault="scale"))
    return cases


def _cases(target: str, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = _known_cases(target)
    for _ in range(count):
        call = _legal_call(rng)
        cases.append(call if rng.random() < 0.3 else _with_fault(rng, call, target))
    for case in cases:
        case["target"] = target
        case["legal"] = _legal(case)
    return cases


def _legal(case: dict) -> bool:
    """Whether a call is legal: the rules of jax_gna/_params.py and of a view
    (cuda/include/gna/window.h AxisView), with every value bounded so that no arithmetic on it
    overflows an int."""
    target = case["target"]
    q, k, v = case["q"], case["k"], case["v"]
    window = [case[name] for name in WINDOW]
    view = [case[name] for name in VIEW]
    tiles = [case[name] for name in TILES]
    rank = len(window[0])
    if not 1 <= rank <= 3 or any(len(x) != rank for x in window):
        return False
    if len({len(x) for x in view}) != 1 or len(view[0]) not in (0, rank):
        return False
    if target in TILE_TARGETS:
        if len({len(x) for x in tiles}) != 1 or len(tiles[0]) not in (0, rank):
            return False
        if any(not 1 <= t < MAX_POSITION for t in tiles[0] + tiles[1]):
            return False
    with np.errstate(over="ignore"):
        if target in ("fwd", "bwd") and not np.isfinite(np.float32(case["scale"])):
            return False
    if target == "bwd" and case["deterministic"] not in (0, 1):
        return False
    if not len(q) == len(k) == len(v) >= rank + 2:
        return False
    for shape in (q, k, v):
        if min(shape) < 0 or math.prod(x for x in shape if x) >= 2**63:
            return False
    n_batch = len(q) - rank - 2
    has_view = bool(view[0])
    if k[:-2] != v[:-2] or k[:n_batch] != q[:n_batch] or (k[:-2] != q[:-2] and not has_view):
        return False
    if k[-2] != v[-2] or k[-1] != q[-1] or max(q[-2], k[-2], q[-1], v[-1]) > INT_MAX:
        return False
    if k[-2] < 1 or q[-2] % k[-2]:
        return False
    for a in range(rank):
        n_q, n_k = q[n_batch + a], k[n_batch + a]
        extent = view[0][a] if has_view else n_q
        ks, st, dl, ca = (x[a] for x in window)
        if not (1 <= n_q < MAX_POSITION and 1 <= n_k < MAX_POSITION and 1 <= extent < MAX_POSITION):
            return False
        if not (1 <= ks <= INT_MAX and 1 <= dl <= INT_MAX and 1 <= st <= ks and ca in (0, 1)):
            return False
        if ks * dl > extent:
            return False
        if has_view:
            qo, ko = view[1][a], view[2][a]
            if not (0 <= qo < extent and abs(ko) < MAX_POSITION and (qo - ko) % dl == 0):
                return False
    return True


# ---------------------------------------------------------------------------------------------
# The worker: runs cases in its own process, one JSON line per case started and finished.


def _view_mask(case: dict, q_spatial, kv_spatial) -> np.ndarray:
    """`oracle.view_visible` from `oracle.window` per query, which costs O(1) however long the
    whole axis is (a legal view's extent may be close to 2**30; its slices are small)."""
    mask = np.ones((1, 1), dtype=bool)
    for a, (n_q, n_k) in enumerate(zip(q_spatial, kv_spatial)):
        extent, qo, ko = (case[name][a] for name in VIEW)
        k, s, d, causal = (case[name][a] for name in WINDOW)
        m = np.zeros((n_q, n_k), dtype=bool)
        for i in range(min(n_q, extent - qo)):
            g, start, end = oracle.window(qo + i, extent, k, s, d, bool(causal))
            for j in range(n_k):
                x = ko + j
                m[i, j] = 0 <= x < extent and x % d == g and start <= x // d < end
        mask = (mask[:, None, :, None] & m[None, :, None, :]).reshape(
            mask.shape[0] * n_q, mask.shape[1] * n_k
        )
    return mask


def _oracle(case: dict, q, k, v, dout, dlse):
    rank = len(case["kernel_size"])
    window = [tuple(case[name]) for name in WINDOW]
    window[3] = tuple(bool(c) for c in window[3])
    mask = None
    if case["view_extent"]:
        spatial = lambda x: x.shape[x.ndim - rank - 2 : -2]  # noqa: E731
        mask = _view_mask(case, spatial(q), spatial(k))
    return oracle.attention(
        q, k, v, *window, rank=rank, scale=case["scale"], mask=mask, dout=dout, dlse=dlse
    )


def _error(got, want) -> float:
    """Largest relative difference; inf where -inf entries (empty softmaxes) disagree."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    empty = np.isneginf(want)
    if (np.isneginf(got) != empty).any() or np.isnan(got).any():
        return math.inf
    if empty.all():
        return 0.0
    return float(np.max(np.abs(got[~empty] - want[~empty]) / (1 + np.abs(want[~empty]))))


def _run(case: dict, seed: int) -> float:
    """Runs one case; returns the error against the oracle (0 where there is nothing to compare)."""
    import jax
    import jax.numpy as jnp

    ext, target = _extension.ext, case["target"]
    window = [case[name] for name in WINDOW]
    if target in EXT_TARGETS:
        args = (case["q"], case["k"], case["v"], "float32", *window)
        view = [x for axis in zip(*(case[name] for name in VIEW)) for x in axis]
        if target == "ext_fwd_workspace":
            ext.fwd_workspace_bytes(*args, view=view)
        elif target == "ext_bwd_workspace":
            ext.bwd_workspace_bytes(
                *args, view=view, q_tile=case["q_tile"], kv_tile=case["kv_tile"]
            )
        elif target == "ext_fwd_can":
            ext.cuda_fwd_can_implement(
                *args, q_tile=case["q_tile"], kv_tile=case["kv_tile"], view=view
            )
        else:
            ext.cuda_bwd_can_implement(
                *args, q_tile=case["q_tile"], kv_tile=case["kv_tile"], view=view
            )
        return 0.0
    rng = np.random.default_rng(seed)
    draw = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    q, k, v = draw(case["q"]), draw(case["k"]), draw(case["v"])
    out_shape, lse_shape = (*case["q"][:-1], case["v"][-1]), tuple(case["q"][:-1])
    dout, dlse = draw(out_shape), draw(lse_shape)
    want = _oracle(case, q, k, v, dout, dlse) if case["legal"] else None
    attrs = {name: np.asarray(case[name], np.int64) for name in (*WINDOW, *VIEW)}
    with np.errstate(over="ignore"):
        attrs["scale"] = np.float32(case["scale"])
    result = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    workspace = result((0,), jnp.uint8)
    if target == "fwd":
        attrs |= {name: np.asarray(case[name], np.int64) for name in TILES}
        call = jax.ffi.ffi_call("jax_gna_fwd", (result(out_shape), result(lse_shape), workspace))
        out, lse, _ = jax.block_until_ready(call(q, k, v, **attrs))
        return max(_error(out, want[0]), _error(lse, want[1])) if want else 0.0
    out, lse = (want[0].astype(np.float32), want[1].astype(np.float32)) if want else (
        np.zeros(out_shape, np.float32), np.zeros(lse_shape, np.float32))  # fmt: skip
    attrs["deterministic"] = np.int64(case["deterministic"])
    attrs |= {name: np.asarray(case[name], np.int64) for name in TILES}
    shapes = (result(q.shape), result(k.shape), result(v.shape), workspace)
    call = jax.ffi.ffi_call("jax_gna_bwd", shapes)
    grads = jax.block_until_ready(call(dout, q, k, v, out, lse, dlse, **attrs))[:3]
    return max(_error(g, w) for g, w in zip(grads, want[2][:3])) if want else 0.0


def worker() -> None:
    """Reads a JSON list of cases on stdin; prints ``FUZZ {"start": i}`` before case i and
    ``FUZZ {"i": i, ...}`` after it, so that the parent can name the case a crash happened in."""
    cases = json.loads(sys.stdin.read())
    for i, case in enumerate(cases):
        print("FUZZ " + json.dumps({"start": i}), flush=True)
        try:
            outcome = {"i": i, "raised": None, "error": _run(case, seed=i)}
        except Exception as e:  # noqa: BLE001 -- every clean error is an outcome
            outcome = {"i": i, "raised": f"{type(e).__name__}: {e}"[:2000], "error": None}
        print("FUZZ " + json.dumps(outcome), flush=True)


# ---------------------------------------------------------------------------------------------
# The tests.


def _run_in_subprocess(cases: list[dict]) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.test_ffi_fuzz import worker; worker()"],
        cwd=ROOT,
        input=json.dumps(cases),
        env=os.environ | {"JAX_PLATFORMS": "cpu"},  # the CPU handlers, also on a GPU machine
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcomes, started = {}, None
    for line in proc.stdout.splitlines():
        if line.startswith("FUZZ "):
            message = json.loads(line[5:])
            if "start" in message:
                started = message["start"]
            else:
                outcomes[message["i"]] = message
    if proc.returncode != 0 or len(outcomes) != len(cases):
        case = cases[started] if started is not None and started not in outcomes else None
        pytest.fail(
            f"the worker died (exit status {proc.returncode}) in case {json.dumps(case)}\n"
            f"stderr:\n{proc.stderr[-4000:]}"
        )
    return [outcomes[i] for i in range(len(cases))]


def _problems(case: dict, outcome: dict) -> str | None:
    """What is wrong with the outcome of `case`, or None."""
    raised = outcome["raised"]
    if case["legal"]:
        if raised is not None:
            return f"a legal call raised {raised}"
        if not outcome["error"] < TOLERANCE:
            return f"a legal call differs from the oracle by {outcome['error']}"
        return None
    if raised is None:
        return "an illegal call ran"
    clean = "ValueError" if case["target"] in EXT_TARGETS else "INVALID_ARGUMENT"
    if clean not in raised:
        return f"not a clean error: {raised}"
    name = case["fault"]
    if name not in (None, "shape") and name not in raised:
        return f"the error does not name `{name}`: {raised}"
    return None


@pytest.mark.parametrize(
    "targets, count",
    [(("fwd",), 70), (("bwd",), 40), (EXT_TARGETS, 100)],
    ids=["jax_gna_fwd", "jax_gna_bwd", "host_helpers"],
)
def test_crafted_calls_run_correctly_or_fail_cleanly(targets, count):
    cases = [c for i, t in enumerate(targets) for c in _cases(t, count, seed=1000 + i)]
    outcomes = _run_in_subprocess(cases)
    problems = [
        f"{problem}\n  case {json.dumps(case)}"
        for case, outcome in zip(cases, outcomes)
        if (problem := _problems(case, outcome))
    ]
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems[:10])
    # The draw covers both sides of the rules.
    assert 0.2 < sum(c["legal"] for c in cases) / len(cases) < 0.8
