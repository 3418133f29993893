"""The key-by-key recomputation of a forward row (`cuda/common/exact_row.h`) against the
brute-force oracle, non-finite inputs included.

The sm90 forwards recompute, over its own window, each row whose tile products came out
non-finite (a nan or infinity in a query, key or value of its tiles: masked probabilities times
whole tiles give ``0 * nan``). What they write for such a row must be what the semantics say
(``docs/nonfinite.md``): a non-finite value in channel ``c`` reaches channel ``c`` of exactly the
queries whose window holds it, a non-finite query or key the whole row and its LSE. The probe
(`cuda/tests/exact_row_cases.cc`, host compiler) runs the recomputation on every row of every
work item of the kernels' launch (the same headers: item decode, row windows), in the column
sets of the kernels' threads; `tests/oracle.py` visits each window alone in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import host_cxx, oracle

D = 16  # the probe's head dim (kD)
SOURCE = host_cxx.ROOT / "cuda" / "tests" / "exact_row_cases.cc"


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return host_cxx.build_probe(tmp_path_factory, SOURCE)


def _run(probe, tmp_path, q, k, v, window, scale):
    rank = q.ndim - 3
    pad = lambda x, fill: list(x) + [fill] * (3 - rank)  # noqa: E731
    header = [rank, q.shape[0], q.shape[-2], k.shape[-2]]
    header += pad(q.shape[1:-2], 1)
    for name, fill in (("kernel_size", 1), ("stride", 1), ("dilation", 1), ("is_causal", 0)):
        header += pad([int(x) for x in window[name]], fill)
    path = tmp_path / "in.bin"
    with open(path, "wb") as f:
        f.write(np.asarray(header, np.int32).tobytes())
        f.write(np.float32(scale).tobytes())
        for x in (q, k, v):
            f.write(np.ascontiguousarray(x, np.float32).tobytes())
    out_path = tmp_path / "out.bin"
    done = __import__("subprocess").run([str(probe), str(path), str(out_path)])
    assert done.returncode == 0, "a row was written twice or never"
    raw = np.fromfile(out_path, np.float32)
    n = q.size
    return raw[:n].reshape(q.shape), raw[n:].reshape(q.shape[:-1])


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


CASES = [(rank, seed) for rank in (1, 2, 3) for seed in range(4)]


@pytest.mark.parametrize("rank,seed", CASES, ids=[f"r{r}-s{s}" for r, s in CASES])
@pytest.mark.parametrize("bad", ["none", "query", "key", "value", "inf-value", "-inf-key"])
def test_recomputed_rows_match_the_oracle(probe, tmp_path, rank, seed, bad):
    rng = np.random.default_rng(100 * rank + seed)
    extent, window = _problem(rng, rank)
    batch, heads, kv_heads = 2, 4, 2
    q = rng.standard_normal((batch, *extent, heads, D)).astype(np.float32)
    k = rng.standard_normal((batch, *extent, kv_heads, D)).astype(np.float32)
    v = rng.standard_normal((batch, *extent, kv_heads, D)).astype(np.float32)
    spot = (1, *[int(rng.integers(0, e)) for e in extent], 1, 3)  # batch, token, head, channel
    target, value = {
        "none": (None, None),
        "query": (q, np.nan),
        "key": (k, np.nan),
        "value": (v, np.nan),
        "inf-value": (v, np.inf),
        "-inf-key": (k, -np.inf),
    }[bad]
    if target is not None:
        target[spot] = value
    scale = float(rng.choice([D**-0.5, -0.7, 2.0]))
    out, lse = _run(probe, tmp_path, q, k, v, window, scale)
    want_out, want_lse = oracle.attention(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
        window["kernel_size"], window["stride"], window["dilation"], window["is_causal"],
        rank=rank, scale=scale,
    )  # fmt: skip
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(want_out))
    np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(want_lse))
    fin = np.isfinite(want_out)
    np.testing.assert_allclose(out[fin], want_out[fin], atol=1e-5, rtol=1e-5)
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[fin], want_lse[fin], atol=1e-5, rtol=1e-5)
    if bad != "none":  # the spoiled entry reaches some rows and not all
        reached = ~np.isfinite(out).all(axis=-1)
        assert reached.any() and not reached.all()
