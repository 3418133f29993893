"""implementation="cuda" on a Hopper GPU: the sm90 forward kernel through the public API.

Random configurations per rank (odd extents, stride, dilation, per-axis causal, GQA, head dims
32-256, fp16/bf16, extra batch dims, extra KV tokens, user scale, a tile configuration drawn
among the compiled ones) against the dense masked reference computed in float32 on the same
device from the same inputs; every compiled tile configuration on a few problems; then jit (no
retrace), vmap, automatic selection, gradients (the xla backward behind the CUDA forward) and XLA
command buffers (CUDA graphs). Run on a GPU machine with ``python -m pytest -m gpu tests/gpu``
(add ``-n 8`` and ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` to spread the XLA compiles over
cores); ``GNA_GPU_CASES`` sets the configurations per rank (default 100).

The oracle (the dense reference in float32) runs on the CPU: compiles there are fast (XLA's
GPU compiles autotune every new shape) and its float32 matmuls are exact (the GPU default is
TF32, ~1e-3 off). Anything else computed on the GPU in float32 uses "highest" precision.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _extension, _tiles, reference

pytestmark = pytest.mark.gpu


def _skip_reason() -> str | None:
    if _extension.ext is None:
        return str(_extension.missing)
    if "90a" not in _extension.built_cuda_archs():
        return f"this build has no sm_90a kernels (built: {_extension.built_cuda_archs()})"
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

N_CASES = int(os.environ.get("GNA_GPU_CASES", "100"))
FULL_SET = _extension.ext is not None and _extension.ext.kernel_set != "smoke"
HEAD_DIMS = (32, 64, 128, 256) if FULL_SET else (128,)
# The subprocess scripts' head dim: 64 where the build has it (split-K paths), else the smoke
# set's 128.
SCRIPT_HEAD_DIM = 64 if FULL_SET else 128
DTYPES = (jnp.bfloat16, jnp.float16) if FULL_SET else (jnp.bfloat16,)
# bf16 keeps 8 mantissa bits (the kernel rounds P to the input dtype before P @ V).
TOL = {jnp.bfloat16: 2.5e-2, jnp.float16: 4e-3}
LSE_TOL = 2e-3


@pytest.fixture(autouse=True)
def _exact_reference():
    with jax.default_matmul_precision("highest"):
        yield


def _oracle(query, key, value, **kwargs):
    """`reference.gna` in float32 on the CPU, jit-compiled once per call."""
    cpu = jax.devices("cpu")[0]
    to_cpu = lambda x: jax.device_put(x, cpu).astype(jnp.float32)  # noqa: E731
    arrays = {n: to_cpu(x) for n, x in kwargs.items() if isinstance(x, jax.Array)}
    static = {n: x for n, x in kwargs.items() if n not in arrays}
    qkv = [to_cpu(x) for x in (query, key, value)]
    with jax.default_device(cpu):
        return jax.jit(lambda qkv, arrays: reference.gna(*qkv, **arrays, **static))(qkv, arrays)


def _random_case(rng: np.random.Generator, rank: int) -> dict:
    extents, kernel, stride, dilation, causal = [], [], [], [], []
    for _ in range(rank):
        # 1-D tiles hold 128 tokens and a TMA box spans tile * dilation <= 256 positions.
        d = int(rng.choice([1, 1, 1, 2] if rank == 1 else [1, 1, 1, 2, 3]))
        k = int(rng.integers(2, 9 if rank < 3 else 6))
        length = int(rng.integers(k * d, k * d + (40 if rank == 1 else 12)))
        extents.append(length)
        kernel.append(k)
        stride.append(int(rng.integers(1, k + 1)))
        dilation.append(d)
        causal.append(bool(rng.random() < 0.3))
    heads_kv = int(rng.choice([1, 2]))
    case = dict(
        batch=[(1,), (2,), (2, 1)][int(rng.integers(3))],
        extents=tuple(extents),
        heads=heads_kv * int(rng.choice([1, 2, 3])),
        heads_kv=heads_kv,
        dim=int(rng.choice(HEAD_DIMS)),
        dtype=DTYPES[int(rng.integers(len(DTYPES)))],
        kernel_size=tuple(kernel),
        stride=tuple(stride),
        dilation=tuple(dilation),
        is_causal=tuple(causal),
        scale=None if rng.random() < 0.7 else float(rng.uniform(-0.5, 0.5)),
        extra=int(rng.choice([0, 0, 0, 5])),
    )
    # Any compiled configuration fits these dilations (tile x dilation <= 256 per axis).
    configs = _tiles.supported_tiles(rank, case["dim"], case["dtype"])
    case["tiles"] = configs[int(rng.integers(len(configs)))]
    return case


def _inputs(case: dict, seed: int):
    rng = np.random.default_rng(seed)
    lead = (*case["batch"], *case["extents"])

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32), case["dtype"])

    q = normal(*lead, case["heads"], case["dim"])
    k = normal(*lead, case["heads_kv"], case["dim"])
    v = normal(*lead, case["heads_kv"], case["dim"])
    extra = {}
    if case["extra"]:
        n = (*case["batch"], case["extra"], case["heads_kv"], case["dim"])
        extra = dict(additional_keys=normal(*n), additional_values=normal(*n))
    return q, k, v, extra


def _window(case: dict) -> dict:
    return {n: case[n] for n in ("kernel_size", "stride", "dilation", "is_causal", "scale")}


def _check_against_reference(case: dict, seed: int) -> None:
    q, k, v, extra = _inputs(case, seed)
    w = _window(case)
    tiles = case.get("tiles")  # None: the kernels pick
    if tiles is not None:
        tiles = dict(q_tile_shape=tiles.q, kv_tile_shape=tiles.kv)
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    # One compile per call under jit (eagerly, every primitive compiles on its own per shape).
    gna = jax.jit(
        lambda q, k, v, extra: jax_gna.gna(
            q, k, v, **w, **extra, **(tiles or {}), return_lse=True, implementation="cuda"
        )
    )
    out, lse = gna(q, k, v, extra)
    want, want_lse = _oracle(q, k, v, **w, **extra, return_lse=True)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == jnp.float32 and lse.shape == q.shape[:-1]
    tol = TOL[case["dtype"]]
    np.testing.assert_allclose(f32(out), want, atol=tol, rtol=tol, err_msg=str(case))
    np.testing.assert_allclose(lse, want_lse, atol=LSE_TOL, rtol=LSE_TOL, err_msg=str(case))


CHUNKS = 10  # separate test items, so pytest-xdist spreads the compiles over workers


@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_random_configurations_match_reference(rank, chunk):
    rng = np.random.default_rng(1000 + rank)
    cases = [_random_case(rng, rank) for _ in range(N_CASES)]  # same cases for every chunk
    for i in range(chunk, N_CASES, CHUNKS):
        _check_against_reference(cases[i], seed=i)


# Every compiled tile configuration of the head dims this build holds.
COMPILED = [
    (rank, dim, cfg)
    for rank in (1, 2, 3)
    for dim in HEAD_DIMS
    for cfg in _tiles.supported_tiles(rank, dim, "bfloat16")
]
# Per rank: odd extents with borders, causal + dilation + stride, and a tile-aligned blocked one.
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


@pytest.mark.parametrize(
    ("rank", "dim", "tiles"), COMPILED, ids=[f"{r}d-d{d}-{c}" for r, d, c in COMPILED]
)
def test_every_compiled_tile_configuration_matches_reference(rank, dim, tiles):
    for i, problem in enumerate(CONFIG_PROBLEMS[rank]):
        case = dict(
            batch=(2,), heads=4, heads_kv=2, dim=dim, dtype=jnp.bfloat16, scale=None, extra=0,
            tiles=tiles, **problem,
        )  # fmt: skip
        _check_against_reference(case, seed=100 + i)


BLOCKED = [  # tile-aligned, perfectly block-sparse, and the design problems in miniature
    dict(extents=(256,), kernel_size=(128,), stride=(64,)),
    dict(extents=(32, 32), kernel_size=(16, 16), stride=(8, 8)),
    dict(extents=(8, 16, 16), kernel_size=(4, 8, 8), stride=(4, 4, 4)),
    dict(extents=(9, 17, 31), kernel_size=(5, 8, 7), stride=(1, 1, 1)),
]


@pytest.mark.parametrize("shape", BLOCKED, ids=lambda s: "x".join(map(str, s["extents"])))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_larger_problems_match_reference(shape, dtype):
    rank = len(shape["extents"])
    case = dict(
        batch=(1,),
        heads=4,
        heads_kv=2,
        dim=128,
        dtype=dtype,
        dilation=(1,) * rank,
        is_causal=(False,) * rank,
        scale=None,
        extra=0,
        **shape,
    )
    _check_against_reference(case, seed=7)


def _small(dtype=jnp.bfloat16):
    case = dict(
        batch=(2,),
        extents=(12, 10),
        heads=4,
        heads_kv=2,
        dim=128,
        dtype=dtype,
        kernel_size=(5, 4),
        stride=(2, 1),
        dilation=(1, 2),
        is_causal=(False, True),
        scale=None,
        extra=0,
    )
    return case, *_inputs(case, seed=3)[:3]


def test_auto_selection_picks_cuda_and_explains_fallbacks():
    case, q, k, v = _small()
    w = _window(case)
    supported = jax_gna.supported_implementations(q, k, v, **w)
    assert supported["cuda"] is None
    assert supported["cpu"] is not None and "CPU" in supported["cpu"]
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    assert "float32" in jax_gna.supported_implementations(*f32, **w)["cuda"]
    # implementation=None on float32 still runs (the xla path) and is exact.
    got = jax_gna.gna(*f32, **w)
    np.testing.assert_allclose(got, _oracle(*f32, **w), atol=1e-5, rtol=1e-5)
    with pytest.raises(NotImplementedError, match="float32"):
        jax_gna.gna(*f32, **w, implementation="cuda")
    # Every dilation runs on the kernels (1-D dilation 3: a 128-token tile spans 384 positions).
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 400, 2, 128)), jnp.bfloat16)
    assert jax_gna.supported_implementations(x, x, x, (5,), dilation=3)["cuda"] is None
    want = _oracle(x, x, x, kernel_size=(5,), dilation=3)
    got = jax_gna.gna(x, x, x, (5,), dilation=3).astype(jnp.float32)
    np.testing.assert_allclose(got, want, atol=2.5e-2, rtol=2.5e-2)
    # A call the kernels refuse (value head dim != query head dim) falls back to xla, with the
    # reason.
    v = x[..., :64]
    why = jax_gna.supported_implementations(x, x, v, (5,))["cuda"]
    assert why is not None and "head_dim_v" in why
    got = jax_gna.gna(x, x, v, (5,)).astype(jnp.float32)
    np.testing.assert_allclose(got, _oracle(x, x, v, kernel_size=(5,)), atol=2.5e-2, rtol=2.5e-2)


@pytest.mark.parametrize("impl", ["cuda", None])
def test_tile_overrides_run_or_raise(impl):
    case, q, k, v = _small()
    w = _window(case)
    want = _oracle(q, k, v, **w)
    for tiles in _tiles.supported_tiles(2, 128, "bfloat16"):
        got = jax_gna.gna(
            q, k, v, **w, implementation=impl, q_tile_shape=tiles.q, kv_tile_shape=tiles.kv
        )
        np.testing.assert_allclose(
            got.astype(jnp.float32), want, atol=2.5e-2, rtol=2.5e-2, err_msg=str(tiles)
        )
    with pytest.raises(NotImplementedError, match=r"not a compiled.*Q\(16,8\)/KV\(16,8\)"):
        jax_gna.gna(q, k, v, **w, implementation=impl, q_tile_shape=8, kv_tile_shape=8)


def test_jit_vmap_and_no_retrace():
    case, q, k, v = _small()
    w = _window(case)
    traces = []

    @jax.jit
    def f(q, k, v):
        traces.append(1)
        return jax_gna.gna(q, k, v, **w, implementation="cuda")

    want = _oracle(q, k, v, **w)
    for _ in range(3):
        np.testing.assert_allclose(f(q, k, v).astype(jnp.float32), want, atol=2.5e-2, rtol=2.5e-2)
    assert len(traces) == 1
    batched = jax.vmap(lambda q: jax_gna.gna(q, k, v, **w, implementation="cuda"))(
        jnp.stack([q, q[::-1]])
    )
    np.testing.assert_allclose(batched[0].astype(jnp.float32), want, atol=2.5e-2, rtol=2.5e-2)
    np.testing.assert_array_equal(batched[1], f(q[::-1], k, v))


def test_gradients_through_the_cuda_forward():
    case, q, k, v = _small()
    w = _window(case)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    rng = np.random.default_rng(0)
    cot = jnp.asarray(rng.standard_normal(q.shape, dtype=np.float32))

    def loss(impl):
        def f(q, k, v):
            out = jax_gna.gna(q, k, v, **w, implementation=impl)
            return jnp.sum(out.astype(jnp.float32) * cot)

        return jax.grad(f, argnums=(0, 1, 2))

    got = jax.jit(loss("cuda"))(q, k, v)
    want = loss("reference")(*f32)
    for g, r in zip(got, want):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(g.astype(jnp.float32), r, atol=6e-2, rtol=6e-2)


_GRAPH_SCRIPT = textwrap.dedent(
    """
    import sys, jax, jax.numpy as jnp, numpy as np, jax_gna
    rng = np.random.default_rng(0)
    x = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32), jnp.bfloat16)
    d = int(sys.argv[2])
    q, k, v = x(2, 24, 20, 4, d), x(2, 24, 20, 2, d), x(2, 24, 20, 2, d)
    w = dict(kernel_size=(7, 5), stride=(2, 3), dilation=(2, 1), is_causal=(True, False))
    f = jax.jit(lambda q, k, v: jnp.tanh(jax_gna.gna(q, k, v, **w, implementation="cuda")) * 2)
    outs = [np.asarray(f(q, k, v).astype(jnp.float32)) for _ in range(3)]
    np.save(sys.argv[1], np.stack(outs))
    """
)


def run_script(script: str, path, flags: str, **env_vars: str) -> None:
    """Runs `script` in a fresh Python with ``XLA_FLAGS=flags`` (XLA reads its flags once per
    process) and `env_vars` in its environment, with the arguments `path` (where it saves its
    results) and the head dim."""
    env = dict(os.environ, XLA_FLAGS=flags, **env_vars)
    argv = [sys.executable, "-c", script, str(path), str(SCRIPT_HEAD_DIM)]
    run = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]


def _run_graph_script(tmp_path, name: str, flags: str) -> np.ndarray:
    path = tmp_path / f"{name}.npy"
    run_script(_GRAPH_SCRIPT, path, flags)
    return np.load(path)


def test_command_buffers_on_and_off_give_identical_results(tmp_path):
    """The handler is marked command-buffer compatible, so with CUSTOM_CALL commands enabled
    XLA records it into a CUDA graph; results must not change by a bit."""
    dump = tmp_path / "dump"
    on = _run_graph_script(
        tmp_path,
        "on",
        "--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL --xla_gpu_graph_min_graph_size=1 "
        f"--xla_dump_to={dump} --xla_dump_hlo_as_text",
    )
    off = _run_graph_script(tmp_path, "off", "--xla_gpu_enable_command_buffer=")
    np.testing.assert_array_equal(on, off)
    assert (on == on[0]).all(), "repeated calls differ"
    # What XLA's dumps say about command buffers, for the log (their format changes often).
    mentions = sorted(
        p.name
        for p in dump.rglob("*")
        if p.is_file() and "command_buffer" in p.read_text(errors="ignore").lower()
    )
    print("dump files mentioning command_buffer:", mentions[:10])
