"""implementation="cuda" on a Blackwell GPU: the sm100 forward kernel through the public API.

NOT RUN YET: no compute-capability-10 GPU was available when these tests were written; they
skip, with the reason, everywhere else. They are the sweeps of `tests/gpu/test_cuda_fwd.py`
(which checks the sm90 kernel on a Hopper GPU) with the sm100 kernels' head dims (32, 64, 128):
random configurations per rank (odd extents, stride, dilation, per-axis causal, GQA, fp16/bf16,
extra batch dims, extra KV tokens, user scale including non-positive, a compiled tile
configuration drawn per case), every compiled tile configuration on a few problems, larger
tile-aligned problems, and zero, negative and tiny softmax scales; the oracle is the dense
masked reference in float32 on the CPU. Run on a B200/GB200 with
``python -m pytest -m sm100 tests/gpu/test_sm100_fwd.py`` (``GNA_GPU_CASES`` sets the random
configurations per rank, default 100).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_gna import _extension, _tiles
from tests.gpu import test_cuda_fwd as hopper

pytestmark = [pytest.mark.gpu, pytest.mark.sm100]


def _skip_reason() -> str | None:
    if _extension.ext is None:
        return str(_extension.missing)
    if "100a" not in _extension.built_cuda_archs():
        return f"this build has no sm_100a kernels (built: {_extension.built_cuda_archs()})"
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        return "no GPU visible to JAX: the sm100 kernels need a compute-capability-10.0 GPU"
    cc = str(getattr(gpus[0], "compute_capability", ""))
    if cc != "10.0":
        return f"needs a compute-capability-10.0 (Blackwell B200/GB200) GPU, found {cc}"
    return None


_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [*pytestmark, pytest.mark.skip(reason=_REASON)]

N_CASES = int(os.environ.get("GNA_GPU_CASES", "100"))
FULL_SET = _extension.ext is not None and _extension.ext.kernel_set != "smoke"
HEAD_DIMS = (32, 64, 128) if FULL_SET else (128,)
DTYPES = (jnp.bfloat16, jnp.float16) if FULL_SET else (jnp.bfloat16,)
# The smoke set holds one sm100 kernel: bf16, head dim 128, rank 3, the default tiles.
RANKS = (1, 2, 3) if FULL_SET else (3,)


@pytest.fixture(autouse=True)
def _exact_reference():
    with jax.default_matmul_precision("highest"):
        yield


def _configs(rank: int, dim: int) -> tuple:
    """The sm100 tile configurations of (rank, head dim): the sm90 shapes
    (`tests/test_sm100_host.py` checks the C++ table against them); smoke: the default only."""
    configs = _tiles.supported_tiles(rank, dim, "bfloat16")
    return configs if FULL_SET else configs[:1]


def _random_case(rng: np.random.Generator, rank: int) -> dict:
    case = hopper._random_case(rng, rank)  # its head dims go up to 256: draw one of ours
    case["dim"] = int(rng.choice(HEAD_DIMS))
    case["dtype"] = DTYPES[int(rng.integers(len(DTYPES)))]
    configs = _configs(rank, case["dim"])
    case["tiles"] = configs[int(rng.integers(len(configs)))]
    return case


CHUNKS = 10  # separate test items, so pytest-xdist spreads the compiles over workers


@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("rank", RANKS)
def test_random_configurations_match_reference(rank, chunk):
    rng = np.random.default_rng(2000 + rank)
    cases = [_random_case(rng, rank) for _ in range(N_CASES)]  # same cases for every chunk
    for i in range(chunk, N_CASES, CHUNKS):
        hopper._check_against_reference(cases[i], seed=i)


COMPILED = [(rank, dim, cfg) for rank in RANKS for dim in HEAD_DIMS for cfg in _configs(rank, dim)]


@pytest.mark.parametrize(
    ("rank", "dim", "tiles"), COMPILED, ids=[f"{r}d-d{d}-{c}" for r, d, c in COMPILED]
)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_every_compiled_tile_configuration_matches_reference(rank, dim, tiles, dtype):
    for i, problem in enumerate(hopper.CONFIG_PROBLEMS[rank]):
        case = dict(
            batch=(2,), heads=4, heads_kv=2, dim=dim, dtype=dtype, scale=None, extra=0,
            tiles=tiles, **problem,
        )  # fmt: skip
        hopper._check_against_reference(case, seed=200 + i)


@pytest.mark.parametrize(
    "shape",
    [s for s in hopper.BLOCKED if len(s["extents"]) in RANKS],
    ids=lambda s: "x".join(map(str, s["extents"])),
)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_larger_problems_match_reference(shape, dtype):
    rank = len(shape["extents"])
    case = dict(
        batch=(1,), heads=4, heads_kv=2, dim=128, dtype=dtype, dilation=(1,) * rank,
        is_causal=(False,) * rank, scale=None, extra=0, **shape,
    )  # fmt: skip
    hopper._check_against_reference(case, seed=9)


@pytest.mark.parametrize("scale", [0.0, -0.3, 1e-3])
def test_non_positive_and_tiny_scales_match_reference(scale):
    case = dict(
        batch=(2,), extents=(6, 9, 20), heads=6, heads_kv=2, dim=128, dtype=jnp.bfloat16,
        kernel_size=(3, 5, 7), stride=(1, 2, 3), dilation=(2, 1, 2), is_causal=(True, False, True),
        scale=scale, extra=0,
    )  # fmt: skip
    hopper._check_against_reference(case, seed=11)
