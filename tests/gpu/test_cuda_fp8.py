"""implementation="cuda" with float8_e4m3fn inputs on a Hopper GPU: the sm90 FP8 forward kernel
through the public API, against the dense reference on the dequantised inputs in float32.

Random problems per rank (odd extents, stride, dilation, per-axis causal, GQA, extra batch
dims, extra KV tokens, descales per tensor or per head, a user scale, a compiled tile
configuration), every compiled tile configuration on a few problems, activations like a
diffusion transformer's (outlier channels, loud heads) quantised per tensor and per head, then
that the FP8 custom call is what runs, automatic selection, out_dtype, vmap and forward-only.
Skips without an sm90 build holding the FP8 kernels (the full kernel set; the smoke set has
none). Run with ``python -m pytest -m gpu tests/gpu/test_cuda_fp8.py``; ``GNA_GPU_CASES`` sets
the problems per rank (default 60). The development knob GNA_SM90_FP8_FMA_EXP2 (some of the
softmax's exponentials by a polynomial, cuda/sm90/kernel/fp8_exp2.cuh) is compile time: to test
it, build with it, e.g. ``pip install --no-build-isolation -e .
-Ccmake.define.CMAKE_CUDA_FLAGS=-DGNA_SM90_FP8_FMA_EXP2=4`` (``...CMAKE_CUDA_FLAGS=`` again
for the default), and run this file. The tolerances below stay as they are (the
polynomial's relative error, 8.6e-5, is far below e4m3's rounding of P and LSE_TOL).

Tolerance. The dequantised inputs are exact in float32, and so are the products of two e4m3
values: S = Q K^T is exact up to float32 accumulation, and the LSE (the kernel sums P in
float32 before rounding it) is as accurate as the 16-bit kernel's. The error of ``out`` comes
from P, which the kernel rounds to e4m3 before P V: the kernel stores P_eff = 2^4 exp(s - m)
with m a running max at most 2^4 below the row's max, so the row's largest key has
P_eff >= 16 and the sum of P_eff is >= 16. Rounding to e4m3 (3 mantissa bits) changes a
normal P_eff (>= 2^-6) by at most 2^-4 of itself and a subnormal one by at most 2^-10. With
out = sum_t P_t v_t / sum_t P_t (the sum from the unrounded P), the error is therefore at most
    2^-4 max|v| (the normal ones, all rounded the same way) + N 2^-10 / 16 max|v|
for N keys in the window, plus the bfloat16 rounding of out (2^-9 of |out|, taken as 2^-8).
That worst case needs every rounding to go the same way; independent roundings average out, so
the mean error is also checked against a quarter of the first term (2^-6 max|v|): a NumPy
emulation of the kernel's rounding (stale max included) stays below 0.006 max|v| for windows
of 8 to 1000 keys with scores of standard deviation up to 4.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _extension, _kernel_table, _tiles, reference
from tests import fp8_activations

pytestmark = pytest.mark.gpu
FP8 = jnp.float8_e4m3fn


def _skip_reason() -> str | None:
    if _extension.ext is None:
        return str(_extension.missing)
    if "90a" not in _extension.built_cuda_archs():
        return f"this build has no sm_90a kernels (built: {_extension.built_cuda_archs()})"
    if not any(k["dtype"] == "float8_e4m3fn" for k in _extension.built_cuda_kernels()):
        return "this build has no FP8 forward kernels (JAX_GNA_KERNEL_SET=full builds them)"
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        return "no GPU visible to JAX"
    if str(getattr(gpus[0], "compute_capability", "")) != "9.0":
        return f"needs compute capability 9.0, found {gpus[0].compute_capability}"
    return None


_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]

N_CASES = int(os.environ.get("GNA_GPU_CASES", "60"))
HEAD_DIMS = _kernel_table.FP8_FORWARD["sm90"]
LSE_TOL = 2e-3


@pytest.fixture(autouse=True)
def _exact_reference():
    with jax.default_matmul_precision("highest"):
        yield


def _random_case(rng: np.random.Generator, rank: int) -> dict:
    extents, kernel, stride, dilation, causal = [], [], [], [], []
    for _ in range(rank):
        # 1-D tiles hold 128 tokens and a TMA box spans tile * dilation <= 256 positions.
        d = int(rng.choice([1, 1, 1, 2] if rank == 1 else [1, 1, 1, 2, 3]))
        k = int(rng.integers(2, 9 if rank < 3 else 6))
        extents.append(int(rng.integers(k * d, k * d + (40 if rank == 1 else 12))))
        kernel.append(k)
        stride.append(int(rng.integers(1, k + 1)))
        dilation.append(d)
        causal.append(bool(rng.random() < 0.3))
    heads_kv = int(rng.choice([1, 2]))
    dim = int(rng.choice(HEAD_DIMS))
    configs = _tiles.supported_tiles(rank, dim, "bfloat16")  # the FP8 kernels' configurations
    return dict(
        batch=[(1,), (2,), (2, 1)][int(rng.integers(3))],
        extents=tuple(extents),
        heads=heads_kv * int(rng.choice([1, 2, 3])),
        heads_kv=heads_kv,
        dim=dim,
        kernel_size=tuple(kernel),
        stride=tuple(stride),
        dilation=tuple(dilation),
        is_causal=tuple(causal),
        scale=None if rng.random() < 0.7 else float(rng.uniform(-0.2, 0.2)),
        extra=int(rng.choice([0, 0, 0, 5])),
        descales=str(rng.choice(["none", "tensor", "head"])),
        tiles=configs[int(rng.integers(len(configs)))],
    )


def _inputs(case: dict, seed: int):
    """float8 q, k, v (and extra tokens) of standard deviation ~2 before the descales, and the
    descales: scores spread enough that the softmax is peaked (a wrong pairing of P with V
    shows), never flat."""
    rng = np.random.default_rng(seed)
    lead = (*case["batch"], *case["extents"])

    def fp8(*shape):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * 2, FP8)

    def descale(heads):
        if case["descales"] == "none":
            return None
        shape = () if case["descales"] == "tensor" else (heads,)
        return jnp.asarray(rng.uniform(0.5, 1.0, shape), jnp.float32)

    q = fp8(*lead, case["heads"], case["dim"])
    k = fp8(*lead, case["heads_kv"], case["dim"])
    v = fp8(*lead, case["heads_kv"], case["dim"])
    kwargs = dict(
        q_descale=descale(case["heads"]),
        k_descale=descale(case["heads_kv"]),
        v_descale=descale(case["heads_kv"]),
    )
    if case["extra"]:
        n = (*case["batch"], case["extra"], case["heads_kv"], case["dim"])
        kwargs |= dict(additional_keys=fp8(*n), additional_values=fp8(*n))
    return q, k, v, {n: x for n, x in kwargs.items() if x is not None}


def _window(case: dict) -> dict:
    return {n: case[n] for n in ("kernel_size", "stride", "dilation", "is_causal", "scale")}


def _oracle(query, key, value, **kwargs):
    """`reference.gna` on the CPU in float32 (it dequantises float8 inputs itself)."""
    cpu = jax.devices("cpu")[0]
    arrays = {n: jax.device_put(x, cpu) for n, x in kwargs.items() if isinstance(x, jax.Array)}
    static = {n: x for n, x in kwargs.items() if n not in arrays}
    qkv = [jax.device_put(x, cpu) for x in (query, key, value)]
    with jax.default_device(cpu):
        run = jax.jit(
            lambda qkv, arrays: reference.gna(*qkv, **arrays, **static, out_dtype=jnp.float32)
        )
        return run(qkv, arrays)


def _value_bound(value, v_descale) -> float:
    """max |v| after the descale (the tolerance's unit)."""
    v = np.abs(np.asarray(value.astype(jnp.float32), np.float64))
    if v_descale is not None:
        d = np.asarray(v_descale, np.float64)
        v = v * (d[:, None] if d.ndim else d)
    return float(v.max())


def _check(case: dict, seed: int, tiles=None) -> None:
    q, k, v, kwargs = _inputs(case, seed)
    w = _window(case)
    tile_kwargs = {} if tiles is None else dict(q_tile_shape=tiles.q, kv_tile_shape=tiles.kv)
    gna = jax.jit(
        lambda q, k, v, kwargs: jax_gna.gna(
            q, k, v, **w, **kwargs, **tile_kwargs, return_lse=True, implementation="cuda"
        )
    )
    out, lse = gna(q, k, v, kwargs)
    want, want_lse = _oracle(q, k, v, **w, **kwargs, return_lse=True)
    assert out.dtype == jnp.bfloat16 and out.shape == q.shape
    assert lse.dtype == jnp.float32 and lse.shape == q.shape[:-1]
    vmax = _value_bound(v, kwargs.get("v_descale"))
    if "additional_values" in kwargs:
        vmax = max(vmax, _value_bound(kwargs["additional_values"], kwargs.get("v_descale")))
    keys = int(np.prod(case["kernel_size"])) + case["extra"]
    got, want = np.asarray(out.astype(jnp.float32), np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want)
    bound = (2.0**-4 + keys * 2.0**-14) * vmax + 2.0**-8 * np.abs(want)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"{case}: error {err[worst]} > bound {bound[worst]} at {worst}"
    assert err.mean() <= 2.0**-6 * vmax, f"{case}: mean error {err.mean()} (max |v| {vmax})"
    np.testing.assert_allclose(lse, want_lse, atol=LSE_TOL, rtol=LSE_TOL, err_msg=str(case))


CHUNKS = 6  # separate test items, so pytest-xdist spreads the compiles over workers


@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_random_problems_match_the_reference_on_dequantized_inputs(rank, chunk):
    rng = np.random.default_rng(2000 + rank)
    cases = [_random_case(rng, rank) for _ in range(N_CASES)]
    for i in range(chunk, N_CASES, CHUNKS):
        _check(cases[i], seed=i, tiles=cases[i]["tiles"])


# Per rank: odd extents with borders, causal + dilation + stride, a tile-aligned blocked one.
CONFIG_PROBLEMS = {
    1: [
        dict(extents=(300,), kernel_size=(37,), stride=(1,), dilation=(1,), is_causal=(False,)),
        dict(extents=(411,), kernel_size=(64,), stride=(8,), dilation=(2,), is_causal=(True,)),
        dict(extents=(512,), kernel_size=(128,), stride=(128,), dilation=(1,), is_causal=(False,)),
    ],
    2: [
        dict(extents=(29, 37), kernel_size=(9, 13), stride=(1, 1), dilation=(1, 1),
             is_causal=(False, False)),
        dict(extents=(40, 35), kernel_size=(7, 6), stride=(3, 2), dilation=(2, 3),
             is_causal=(True, False)),
        dict(extents=(32, 64), kernel_size=(16, 16), stride=(16, 16), dilation=(1, 1),
             is_causal=(False, False)),
    ],
    3: [
        dict(extents=(9, 13, 19), kernel_size=(5, 7, 9), stride=(1, 1, 1), dilation=(1, 1, 1),
             is_causal=(False, False, False)),
        dict(extents=(12, 14, 17), kernel_size=(3, 4, 5), stride=(2, 1, 3), dilation=(2, 3, 1),
             is_causal=(False, True, True)),
        dict(extents=(8, 16, 16), kernel_size=(4, 8, 8), stride=(4, 8, 8), dilation=(1, 1, 1),
             is_causal=(False, False, False)),
    ],
}  # fmt: skip


def compiled_configurations(head_dims) -> list:
    """(rank, head dim, tile configuration) of every FP8 kernel of these head dims (the
    configurations of the 16-bit forward)."""
    return [
        (rank, dim, cfg)
        for rank in (1, 2, 3)
        for dim in head_dims
        for cfg in _tiles.supported_tiles(rank, dim, "bfloat16")
    ]


COMPILED = compiled_configurations(HEAD_DIMS)


@pytest.mark.parametrize("rank,dim,tiles", COMPILED, ids=lambda x: str(x))
def test_every_compiled_configuration(rank, dim, tiles):
    for i, problem in enumerate(CONFIG_PROBLEMS[rank]):
        case = dict(problem, batch=(2,), heads=4, heads_kv=2, dim=dim, scale=None, extra=0,
                    descales="head")  # fmt: skip
        _check(case, seed=100 + i, tiles=tiles)


@pytest.mark.parametrize("per_head", [False, True], ids=["per_tensor", "per_head"])
@pytest.mark.parametrize("scenario", fp8_activations.SCENARIOS)
def test_realistic_activations_are_within_the_error_model(scenario, per_head):
    """`tests/test_fp8_accuracy.py`'s case through the kernel: q, k, v built like a diffusion
    transformer's, quantised with `jax_gna.quantize_fp8`, against float32 attention on the
    original inputs. The bound is that test's error model (`fp8_activations.error_std`) with
    what the kernel rounds besides, P to e4m3 and out to bfloat16 (``kernel_rounding``)."""
    q, k, v = fp8_activations.activations(scenario)
    (q8, qd), (k8, kd), (v8, vd) = (
        jax_gna.quantize_fp8(jnp.asarray(x), FP8, per_head=per_head) for x in (q, k, v)
    )
    run = jax.jit(
        lambda q8, k8, v8, d: jax_gna.gna(
            q8, k8, v8, fp8_activations.KERNEL_SIZE, q_descale=d[0], k_descale=d[1],
            v_descale=d[2], out_dtype=jnp.float32, implementation="cuda",
        )
    )  # fmt: skip
    got = run(q8, k8, v8, (qd, kd, vd))
    want = _oracle(*(jnp.asarray(x) for x in (q, k, v)), kernel_size=fp8_activations.KERNEL_SIZE)
    fp8_activations.check_error_model(got, want, q, k, v, (qd, kd, vd), FP8, kernel_rounding=True)


KS = (7, 7)  # the small problems' window (rank 2, one batch dim)


def _small(dtype=FP8):
    rng = np.random.default_rng(7)
    q, k, v = (
        jnp.asarray(rng.standard_normal((2, 24, 20, h, 128), dtype=np.float32) * 2, dtype)
        for h in (4, 2, 2)
    )
    return q, k, v, dict(q_descale=jnp.float32(0.5), k_descale=jnp.float32(0.75),
                         v_descale=jnp.float32(1.5))  # fmt: skip


def test_the_fp8_custom_call_runs_and_none_picks_it():
    q, k, v, d = _small()
    for implementation in ("cuda", None):
        run = functools.partial(jax_gna.gna, kernel_size=KS, **d, implementation=implementation)
        text = jax.jit(run).lower(q, k, v).as_text()
        assert _extension.FWD_FP8_TARGET in text, implementation
    assert jax_gna.supported_implementations(q, k, v, KS)["cuda"] is None


def test_out_dtype_and_vmap():
    q, k, v, d = _small()
    base = jax_gna.gna(q, k, v, KS, **d, implementation="cuda")
    for out_dtype in (jnp.float16, jnp.float32):
        out = jax_gna.gna(q, k, v, KS, **d, implementation="cuda", out_dtype=out_dtype)
        assert out.dtype == out_dtype
        np.testing.assert_array_equal(out.astype(jnp.bfloat16), base)
    mapped = jax.vmap(lambda q, k, v: jax_gna.gna(q, k, v, KS, **d, implementation="cuda"))(q, k, v)
    np.testing.assert_array_equal(mapped, base)


def test_forward_only():
    q, k, v, d = _small()
    with pytest.raises(NotImplementedError, match="forward only"):
        jax.grad(
            lambda q: jax_gna.gna(q, k, v, KS, **d, implementation="cuda").astype(jnp.float32).sum()
        )(q)


def test_e5m2_runs_on_xla():
    q, k, v, d = _small(jnp.float8_e5m2)
    with pytest.raises(NotImplementedError, match="float8_e4m3fn only"):
        jax_gna.gna(q, k, v, KS, **d, implementation="cuda")
    text = jax.jit(lambda q, k, v: jax_gna.gna(q, k, v, KS, **d)).lower(q, k, v).as_text()
    assert _extension.FWD_FP8_TARGET not in text
