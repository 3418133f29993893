"""implementation="cuda" with float8_e4m3fn inputs on a Blackwell GPU: the sm100 FP8 forward
kernel through the public API.

NOT RUN YET: no compute-capability-10 GPU was available when these tests were written; they
skip, with the reason, everywhere else. They are `tests/gpu/test_cuda_fp8.py`'s checks (which
run the sm90 FP8 kernel on a Hopper GPU) with the sm100 FP8 kernels' head dims
(`_kernel_table.FP8_FORWARD["sm100"]`): random problems per rank (odd extents, stride,
dilation, causal, GQA, extra batch dims and KV tokens, per-tensor and per-head descales),
every compiled tile configuration on a few problems, and realistic activations against float32
attention, each within that file's error bound. Run on a B200/GB200 with a full-set build:
``python -m pytest -m sm100 tests/gpu/test_sm100_fp8.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from jax_gna import _extension, _kernel_table, _tiles
from tests import fp8_activations
from tests.gpu import test_cuda_fp8 as hopper
from tests.gpu import test_sm100_fwd as blackwell

pytestmark = [pytest.mark.gpu, pytest.mark.sm100]


def _skip_reason() -> str | None:
    reason = blackwell._skip_reason()  # the build has sm_100a kernels, the GPU is a 10.0
    if reason is None and not any(
        k["arch"] == "100a" and k["dtype"] == "float8_e4m3fn"
        for k in _extension.built_cuda_kernels()
    ):
        reason = "this build has no sm100 FP8 forward kernels (JAX_GNA_KERNEL_SET=full builds them)"
    return reason


_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [*pytestmark, pytest.mark.skip(reason=_REASON)]

HEAD_DIMS = _kernel_table.FP8_FORWARD["sm100"]
N_CASES = hopper.N_CASES
CHUNKS = 6


def _random_case(rng: np.random.Generator, rank: int) -> dict:
    case = hopper._random_case(rng, rank)  # sm90's head dims go up to 256: draw one of ours
    case["dim"] = int(rng.choice(HEAD_DIMS))
    configs = _tiles.supported_tiles(rank, case["dim"], "bfloat16")
    case["tiles"] = configs[int(rng.integers(len(configs)))]
    return case


@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_random_problems_match_the_reference_on_dequantized_inputs(rank, chunk):
    rng = np.random.default_rng(3000 + rank)
    cases = [_random_case(rng, rank) for _ in range(N_CASES)]
    for i in range(chunk, N_CASES, CHUNKS):
        hopper._check(cases[i], seed=i, tiles=cases[i]["tiles"])


COMPILED = hopper.compiled_configurations(HEAD_DIMS)


@pytest.mark.parametrize("rank,dim,tiles", COMPILED, ids=lambda x: str(x))
def test_every_compiled_configuration(rank, dim, tiles):
    hopper.test_every_compiled_configuration(rank, dim, tiles)


@pytest.mark.parametrize("per_head", [False, True], ids=["per_tensor", "per_head"])
@pytest.mark.parametrize("scenario", fp8_activations.SCENARIOS)
def test_realistic_activations_are_within_the_error_model(scenario, per_head):
    hopper.test_realistic_activations_are_within_the_error_model(scenario, per_head)


def test_the_fp8_custom_call_runs_and_none_picks_it():
    hopper.test_the_fp8_custom_call_runs_and_none_picks_it()


def test_out_dtype_and_vmap():
    hopper.test_out_dtype_and_vmap()


def test_forward_only():
    hopper.test_forward_only()
