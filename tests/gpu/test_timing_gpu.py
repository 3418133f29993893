"""The timing method on a Hopper GPU: what `jax_gna.profile` times and traces there.

- A dispatch of N independent calls keeps N custom calls after XLA's optimisations: N
  ``jax_gna_fwd`` (and N ``jax_gna_bwd`` with the backward) for ``implementation="cuda"``, N
  cuDNN attention calls (``__cudnn$fmha...``) for the dense baseline.
- The profiler's trace finds the ``gna::`` kernels of the cuda rows and cuDNN's kernels of the
  dense row (the names `jax_gna._kernel_trace.OWN_KERNELS` looks for), with one launch or more
  per call, and a kernel time no longer than the time per call.

Run on a GPU machine: ``python -m pytest -m gpu tests/gpu/test_timing_gpu.py``.
"""

from __future__ import annotations

import json
import re

import pytest

# tests/gpu is on sys.path while pytest collects this file: the forward tests' helpers.
from test_cuda_fwd import _skip_reason

from jax_gna import _timing, profile

pytestmark = pytest.mark.gpu
_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]

PROBLEM = "-i 32 48 -n 4 -d 128 -w 8 16 -s 8 16".split()
FAST = "--warmup 1 --iters 3 --sample-seconds 0.05 --max-calls 8".split()


def _count(pattern: str, fn, pool, n: int) -> int:
    compiled = _timing.independent_calls(fn, n).lower(pool.take(n)).compile().as_text()
    return len(re.findall(pattern, compiled))


@pytest.mark.parametrize("backprop", [False, True])
def test_dispatch_keeps_n_kernel_calls(backprop):
    cfg = profile.parse_args(PROBLEM + (["--backprop"] if backprop else []))
    pool = _timing.InputPool(lambda i: profile._inputs(cfg, i))
    n = 6
    gna = profile._gna_fn(cfg, "cuda")
    for target in ("jax_gna_fwd", "jax_gna_bwd") if backprop else ("jax_gna_fwd",):
        pattern = f'custom_call_target="{target}"'
        assert _count(pattern, gna, pool, 1) == 1
        assert _count(pattern, gna, pool, n) == n
    dense = profile._dense_fn(cfg, "cudnn", causal=False)
    pattern = r'custom_call_target="__cudnn\$fmha[A-Za-z]*"'
    per_call = _count(pattern, dense, pool, 1)
    assert per_call == (2 if backprop else 1)
    assert _count(pattern, dense, pool, n) == n * per_call


@pytest.mark.parametrize("backprop", [False, True])
def test_profile_traces_the_kernels_of_both_sides(tmp_path, backprop):
    path = tmp_path / "run.json"
    argv = [*PROBLEM, "--implementation", "cuda", *FAST, "--json", str(path)]
    profile.main(argv + (["--backprop"] if backprop else []))
    data = json.loads(path.read_text())
    for row in data["results"] + [data["dense"]]:
        assert row["status"] == "ok", row
        assert row["trace"] == "ok", row["trace"]
        own = [k for k in row["kernels"] if k["own"]]
        assert own, [k["name"] for k in row["kernels"]]
        assert all(k["launches_per_call"] >= 1 for k in own)
        assert 0 < row["kernel_ms"] <= row["device_busy_ms"] * 1.001
        # The trace's dispatch is not a timed one, and the GPU suite runs tests side by side on
        # one GPU (pytest -n): bound it by the slowest timed sample, with some clock noise.
        assert row["kernel_ms"] <= 1.2 * max(max(s) for s in row["samples_ms"])
    cuda = data["results"][0]
    assert all("gna::" in k["name"] for k in cuda["kernels"] if k["own"])
