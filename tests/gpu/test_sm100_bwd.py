"""Gradients of implementation="cuda" on a Blackwell GPU: the sm100 backward through jax.grad.

NOT RUN YET: no compute-capability-10 GPU was available when these tests were written; they
skip, with the reason, everywhere else. They are the sweeps of `tests/gpu/test_cuda_bwd.py`
(which checks the sm90 backward on a Hopper GPU, and whose helpers, tolerances and cases they
reuse) with the sm100 kernels' head dims (32, 64, 128): dq, dk, dv and the extra KV tokens'
gradients against `jax.grad` of the float32 reference on the CPU over random configurations per
rank (odd extents, stride, dilation, per-axis causal, GQA, extra KV tokens, an LSE cotangent,
user scale, fp16/bf16), each of which must run the CUDA backward kernel (its custom call in the
compiled HLO); larger problems; deterministic mode bit-identical over 5 runs on a problem where
many KV tiles add into the same dQ rows; and, with the full kernel set, jit/vmap/remat, XLA
command buffers and ``--xla_gpu_deterministic_ops``. Run on a B200/GB200 with
``python -m pytest -m sm100 tests/gpu/test_sm100_bwd.py`` (``GNA_GPU_CASES`` sets the random
configurations per rank, default 100).

The Hopper tolerances apply unchanged because the sm100 kernel rounds what the sm90 one
rounds: P to 16 bits for dV = P^T dO, and dS = P (dP - delta) computed from the fp32 P and
rounded once for dK and dQ (`tests/test_sm100_ptx.py` checks that P is not read back rounded
from shared memory, which would add a second rounding, of up to 2^-8 (bf16) relative, to every
dS element).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_gna import _extension
from tests.gpu import test_cuda_bwd as hopper
from tests.gpu import test_sm100_fwd as sm100_fwd

pytestmark = [pytest.mark.gpu, pytest.mark.sm100]


def _skip_reason() -> str | None:
    reason = sm100_fwd._skip_reason()
    if reason is None and not _extension.ext.cuda_has_backward():
        return "this build has no CUDA backward kernels (gradients run the xla backward)"
    return reason


_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [*pytestmark, pytest.mark.skip(reason=_REASON)]

N_CASES = sm100_fwd.N_CASES
FULL_SET = sm100_fwd.FULL_SET
HEAD_DIMS = sm100_fwd.HEAD_DIMS
DTYPES = sm100_fwd.DTYPES
# The smoke set holds one sm100 backward kernel: bf16, head dim 128, rank 3.
RANKS = sm100_fwd.RANKS
needs_full_set = pytest.mark.skipif(
    not FULL_SET, reason="the smoke kernel set has no 2-D sm100 backward kernel"
)


def _random_case(rng: np.random.Generator, rank: int) -> dict:
    case = hopper._random_case(rng, rank)
    case["dim"] = int(rng.choice(HEAD_DIMS))
    case["dtype"] = DTYPES[int(rng.integers(len(DTYPES)))]
    return case


CHUNKS = 10  # separate test items, so pytest-xdist spreads the compiles over workers


@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("rank", RANKS)
def test_random_configurations_match_reference_gradients(rank, chunk):
    rng = np.random.default_rng(3000 + rank)
    cases = [_random_case(rng, rank) for _ in range(N_CASES)]  # same cases for every chunk
    for i in range(chunk, N_CASES, CHUNKS):
        hopper._check_case(cases[i], seed=i)


LARGER = {name: case for name, case in hopper.LARGER.items() if len(case["extents"]) in RANKS}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", list(LARGER))
def test_larger_problems_match_reference_gradients(name, dtype):
    hopper._check_case(dict(LARGER[name], dtype=dtype), seed=11)


@pytest.mark.parametrize("dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_every_head_dim_and_dtype_on_a_3d_problem(dim, dtype):
    case = hopper._case(
        (6, 13, 19), (3, 6, 7), (1, 2, 3), (2, 1, 2), (True, False, True), heads=6, heads_kv=2,
        dim=dim, dtype=dtype, batch=(2,), extra=5, lse_cotangent=True,
    )  # fmt: skip
    hopper._check_case(case, seed=13)


# Many KV tiles (2x8x8) add into the same dQ rows under a 3x13x13 window.
DETERMINISM_CASE = hopper._case((6, 24, 24), (3, 13, 13), heads=4, heads_kv=2, lse_cotangent=True)


def test_deterministic_mode_is_bit_identical_over_runs_and_matches_default_mode():
    case = DETERMINISM_CASE
    q, k, v, extra = hopper._inputs(case, seed=5)
    dout, dlse = hopper._cotangents(case, 5, q)
    w = hopper._window(case)
    args = (q, k, v, extra, dout, dlse)
    deterministic, text = hopper._compiled(hopper._cuda_grad(w, deterministic=True), *args)
    assert "jax_gna_bwd" in text
    runs = [jax.block_until_ready(deterministic(*args)) for _ in range(5)]
    for i, run in enumerate(runs[1:], 1):
        for name, a, b in zip(("dq", "dk", "dv"), runs[0][:3], run[:3]):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: run {i} differs from run 0")
    want = hopper._oracle_grad(w, *args)
    hopper._assert_grads_close(runs[0], want, case["dtype"], "deterministic mode")
    default = hopper._cuda_grad(w, deterministic=False)
    for run in [jax.block_until_ready(default(*args)) for _ in range(3)]:
        hopper._assert_grads_close(run, want, case["dtype"], "default mode")


@needs_full_set
def test_jit_vmap_and_remat():
    hopper.test_jit_vmap_and_remat()


@needs_full_set
def test_gradients_of_a_vmapped_call():
    hopper.test_gradients_of_a_vmapped_call()


@needs_full_set
def test_command_buffers_on_and_off(tmp_path):
    hopper.test_command_buffers_on_and_off(tmp_path)


@needs_full_set
def test_xla_deterministic_ops_flag_makes_the_default_deterministic(tmp_path):
    hopper.test_xla_deterministic_ops_flag_makes_the_default_deterministic(tmp_path)
