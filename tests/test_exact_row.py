"""The key-by-key recomputation of a forward row (`cuda/common/exact_row.h`) against the
brute-force oracle, non-finite inputs included.

The sm90 forwards recompute, over its own window, each row whose tile products came out
non-finite (a nan or infinity in a query, key or value of its tiles: masked probabilities times
whole tiles give ``0 * nan``). What they write for such a row must be what the semantics say
(``docs/nonfinite.md``): a non-finite value in channel ``c`` reaches channel ``c`` of exactly the
queries whose window holds it, a non-finite query or key the whole row and its LSE. The probe
(`cuda/tests/exact_row_cases.cc`, host compiler) runs the recomputation on every row of every
work item of the kernels' launch (the kernels' own code: item decode, row tokens and windows, the
FP8 descales), in the column sets of the kernels' threads; `tests/oracle.py` visits each window
alone in float64.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tests import host_cxx, oracle

D = 16  # the probe's head dim (kD)
SOURCE = host_cxx.ROOT / "cuda" / "tests" / "exact_row_cases.cc"


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return host_cxx.build_probe(tmp_path_factory, SOURCE)


def _run(probe, tmp_path, q, k, v, extent, window, views, scale, descale=None):
    """The probe's out, lse and per-row write counts for q ([B, q_length..., H, D]), k and v
    ([B, kv_length..., Hkv, D]) of the view `views` (per axis q_offset, q_length, kv_offset,
    kv_length) of the grid `extent`, with the FP8 descales `descale` ([3, H]) if given."""
    rank = len(extent)
    pad = lambda x, fill: list(x) + [fill] * (3 - rank)  # noqa: E731
    header = [rank, q.shape[0], q.shape[-2], k.shape[-2], *pad(extent, 1)]
    for name, fill in (("kernel_size", 1), ("stride", 1), ("dilation", 1), ("is_causal", 0)):
        header += pad([int(x) for x in window[name]], fill)
    for i, fill in enumerate((0, 1, 0, 1)):
        header += pad([view[i] for view in views], fill)
    path = tmp_path / "in.bin"
    with open(path, "wb") as f:
        f.write(np.asarray(header, np.int32).tobytes())
        f.write(np.float32(scale).tobytes())
        descale = np.zeros((0,), np.float32) if descale is None else np.asarray(descale)
        f.write(np.int32(descale.size).tobytes())
        f.write(np.ascontiguousarray(descale, np.float32).tobytes())
        for x in (q, k, v):
            f.write(np.ascontiguousarray(x, np.float32).tobytes())
    out_path = tmp_path / "out.bin"
    subprocess.run([str(probe), str(path), str(out_path)], check=True)
    raw = np.fromfile(out_path, np.float32)
    n, rows = q.size, q.size // q.shape[-1]
    return (raw[:n].reshape(q.shape), raw[n : n + rows].reshape(q.shape[:-1]),
            raw[n + rows :].reshape(q.shape[:-1]))  # fmt: skip


def _problem(rng, rank):
    extent = [int(x) for x in rng.integers(3, 12 if rank < 3 else 7, size=rank)]
    kernel, stride, dilation, causal = [], [], [], []
    for e in extent:
        d = int(rng.integers(1, max(e // 3, 1) + 1))
        k = int(rng.integers(1, e // d + 1))
        kernel.append(k)
        stride.append(int(rng.integers(1, k + 1)))
        dilation.append(d)
        causal.append(bool(rng.integers(0, 2)))
    window = dict(kernel_size=kernel, stride=stride, dilation=dilation, is_causal=causal)
    return extent, window


def _view(rng, extent, dilation):
    """A legal view of one axis (cuda/include/gna/window.h, axis_view_error): queries that may
    run past the axis, keys at the queries' dilation phase that may hang over either end or cut
    windows short."""
    q_offset = int(rng.integers(0, extent))
    q_length = int(rng.integers(1, extent - q_offset + 3))
    kv_offset = q_offset - dilation * int(rng.integers(-1, 4))
    kv_length = int(rng.integers(1, extent + 4))
    return q_offset, q_length, kv_offset, kv_length


CASES = [(rank, seed, view) for rank in (1, 2, 3) for seed in range(4) for view in (False, True)]


@pytest.mark.parametrize(
    "rank,seed,view", CASES, ids=[f"r{r}-s{s}{'-view' if v else ''}" for r, s, v in CASES]
)
@pytest.mark.parametrize("bad", ["none", "query", "key", "value", "inf-value", "-inf-key"])
def test_recomputed_rows_match_the_oracle(probe, tmp_path, rank, seed, view, bad):
    rng = np.random.default_rng(100 * rank + seed)
    extent, window = _problem(rng, rank)
    if view:
        views = [_view(rng, e, d) for e, d in zip(extent, window["dilation"])]
    else:
        views = [(0, e, 0, e) for e in extent]
    q_shape, kv_shape = [v[1] for v in views], [v[3] for v in views]
    batch, heads, kv_heads = 2, 4, 2
    q = rng.standard_normal((batch, *q_shape, heads, D)).astype(np.float32)
    k = rng.standard_normal((batch, *kv_shape, kv_heads, D)).astype(np.float32)
    v = rng.standard_normal((batch, *kv_shape, kv_heads, D)).astype(np.float32)
    target, value = {
        "none": (None, None),
        "query": (q, np.nan),
        "key": (k, np.nan),
        "value": (v, np.nan),
        "inf-value": (v, np.inf),
        "-inf-key": (k, -np.inf),
    }[bad]
    if target is not None:  # batch entry 1, a random token, head 1, channel 3
        target[(1, *[int(rng.integers(0, n)) for n in target.shape[1:-2]], 1, 3)] = value
    scale = float(rng.choice([D**-0.5, -0.7, 2.0]))
    out, lse, written = _run(probe, tmp_path, q, k, v, extent, window, views, scale)
    mask = oracle.view_visible(extent, views, *window.values())
    want_out, want_lse = oracle.attention(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), *window.values(),
        rank=rank, scale=scale, mask=mask,
    )  # fmt: skip
    # Every query inside the axis written once (past it: never), then as the oracle says.
    inside = np.ones(q_shape, bool)
    for a, (offset, length, _, _) in enumerate(views):
        shape = [1] * rank
        shape[a] = length
        inside &= (offset + np.arange(length) < extent[a]).reshape(shape)
    want_written = np.broadcast_to(inside[None, ..., None], written.shape)
    np.testing.assert_array_equal(written, want_written.astype(np.float32))
    out, lse = out[:, inside], lse[:, inside]
    want_out, want_lse = want_out[:, inside], want_lse[:, inside]
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(want_out))
    np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(want_lse))
    np.testing.assert_array_equal(np.isnan(lse), np.isnan(want_lse))
    fin = np.isfinite(want_out)
    np.testing.assert_allclose(out[fin], want_out[fin], atol=1e-5, rtol=1e-5)
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[fin], want_lse[fin], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank,seed", [(1, 7), (2, 7), (3, 7)])
def test_recomputed_rows_take_the_fp8_descales(probe, tmp_path, rank, seed):
    """FP8 inputs carry per-query-head descales ([3][heads]: q, and k and v of the head's key/value
    head): the recomputed row is the attention of the dequantised inputs."""
    rng = np.random.default_rng(100 * rank + seed)
    extent, window = _problem(rng, rank)
    views = [(0, e, 0, e) for e in extent]
    batch, heads, kv_heads = 2, 4, 2
    q = rng.standard_normal((batch, *extent, heads, D)).astype(np.float32)
    k = rng.standard_normal((batch, *extent, kv_heads, D)).astype(np.float32)
    v = rng.standard_normal((batch, *extent, kv_heads, D)).astype(np.float32)
    descale = rng.uniform(0.25, 4.0, size=(3, heads)).astype(np.float32)
    scale = D**-0.5
    out, lse, _ = _run(probe, tmp_path, q, k, v, extent, window, views, scale, descale)
    # Scores scale by q's and k's descale of the query head, values by its v descale; the
    # oracle sees a query dequantised by both (k's descale is per query head under GQA).
    q_deq = q.astype(np.float64) * (descale[0] * descale[1]).astype(np.float64)[:, None]
    want_out, want_lse = oracle.attention(
        q_deq, k.astype(np.float64), v.astype(np.float64), *window.values(), rank=rank,
        scale=scale,
    )  # fmt: skip
    want_out = want_out * descale[2].astype(np.float64)[:, None]
    np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(lse, want_lse, atol=1e-5, rtol=1e-5)
