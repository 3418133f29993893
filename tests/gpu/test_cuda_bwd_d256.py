"""The sm90 head-dim-256 backward kernel on a Hopper GPU, through jax.grad.

At d256 the kernel takes its own path (`cuda/sm90/bwd_config.h`): 64-token KV tiles, the head
dim of dK, dV and dQ split over the two consumer warpgroups, P^T and dS^T through shared memory,
dQ added in two parts per warpgroup. So it gets its own cases, with `test_cuda_bwd`'s helpers,
oracle (`jax.grad` of `reference.gna` in float32 on the CPU) and tolerances: random
configurations per rank (fp16 and bf16, GQA, causal, dilation, stride, extra KV tokens, an LSE
cotangent), problems with many KV tiles per Q tile, bit-identical deterministic runs, a
FLUX-like 2-D problem (12 heads of 256) at small size, and views as context parallelism makes
them (`test_sm90_views`' cases at d256), each of which must run the CUDA backward kernel, not
the xla stand-in. Skips where the build has no d256 backward kernel (the smoke set).

Run with ``python -m pytest -m gpu tests/gpu/test_cuda_bwd_d256.py -n 8``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# tests/gpu is on sys.path while pytest collects this file: the other GPU tests' helpers.
import test_sm90_views as views
from test_cuda_bwd import (
    _REASON,
    _assert_grads_close,
    _case,
    _check_case,
    _cuda_grad,
    _random_case,
    check_deterministic_runs,
)
from test_cuda_fwd import DTYPES

from jax_gna import _extension

pytestmark = pytest.mark.gpu


def _d256_skip_reason() -> str | None:
    if _REASON is not None:
        return _REASON
    built = {
        k["dtype"]
        for k in _extension.built_cuda_kernels()
        if k["arch"] == "90a" and k["direction"] == "backward" and k["head_dim"] == 256
    }
    if not built:
        return "this build has no sm90 head-dim-256 backward kernel (the smoke set)"
    return None


_SKIP = _d256_skip_reason()
if _SKIP is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_SKIP)]

D = 256


@pytest.fixture(autouse=True)
def _exact_reference():
    with jax.default_matmul_precision("highest"):
        yield


N_RANDOM = 12  # per rank; the CPU oracle at d256 costs twice d128's


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_random_configurations_match_reference_gradients(rank):
    rng = np.random.default_rng(4000 + rank)
    for i in range(N_RANDOM):
        case = dict(_random_case(rng, rank), dim=D)
        _check_case(case, seed=i)


LARGER = {  # several KV tiles per Q tile along every axis
    "1d-window-200": _case((700,), (200,), (1,), dim=D),
    "1d-gna-causal-dilated": _case((640,), (150,), (32,), (2,), (True,), dim=D, extra=5),
    "2d-40x40-13x13": _case((40, 40), (13, 13), dim=D, lse_cotangent=True),
    "2d-gna-dilated-gqa": _case(
        (36, 44), (9, 12), (3, 4), (2, 2), heads=6, heads_kv=2, dim=D, extra=3
    ),
    "3d-gna": _case((8, 16, 16), (4, 8, 8), (2, 4, 4), dim=D),
    "3d-odd-causal": _case(
        (9, 13, 19),
        (5, 8, 7),
        is_causal=(True, False, False),
        heads=2,
        heads_kv=1,
        dim=D,
        extra=7,
        lse_cotangent=True,
    ),  # fmt: skip
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", list(LARGER))
def test_larger_problems_match_reference_gradients(name, dtype):
    _check_case(dict(LARGER[name], dtype=dtype), seed=13)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_flux_like_12_heads_of_256(dtype):
    """FLUX's attention shape in miniature: a 2-D token grid, 12 heads of 256, a GNA window
    with stride (FLUX-4K runs 80x80 / 16x16 on 256x256; here 13x13 / 4x4 on 32x32)."""
    case = _case((32, 32), (13, 13), (4, 4), heads=12, heads_kv=12, dim=D, dtype=dtype)
    _check_case(case, seed=17)
    _check_case(case, seed=18, deterministic=True)


# Many KV tiles (8x8 at d256) add into the same dQ rows under a 13x13 window, over GQA heads.
DETERMINISM_CASE = _case((40, 40), (13, 13), heads=4, heads_kv=2, dim=D, lse_cotangent=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_deterministic_mode_is_bit_identical_over_runs(dtype):
    case = dict(DETERMINISM_CASE, dtype=dtype)
    args, w, want = check_deterministic_runs(case, seed=5, runs=4)
    _assert_grads_close(
        _cuda_grad(w, deterministic=False)(*args), want, case["dtype"], "default mode"
    )


# Views as jax_gna.parallel makes them, and random key slices, at d256 (the forward takes views
# at every head dim).
SHARD_CASES = [views.shard_case(s) for s in range(8)]
RANDOM_VIEW_CASES = [views.random_case(1000 + s) for s in range(8)]


@pytest.mark.parametrize("case_axis", SHARD_CASES, ids=lambda c: f"seed{c[0].seed}")
def test_shard_view_equals_the_whole_problem_sliced(case_axis):
    case, axis = case_axis
    views.test_shard_view_equals_the_whole_problem_sliced((dataclasses.replace(case, dim=D), axis))


@pytest.mark.parametrize("case", RANDOM_VIEW_CASES, ids=lambda c: f"seed{c.seed}-r{c.rank}")
def test_random_view_matches_the_oracle(case):
    views.test_random_view_matches_the_oracle(dataclasses.replace(case, dim=D))
