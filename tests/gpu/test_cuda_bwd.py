"""Gradients of implementation="cuda" on a Hopper GPU: the sm90 backward kernel through jax.grad.

dq, dk, dv (and the gradients of extra KV tokens, which reach the kernel through the LSE
cotangent of the merge) against `jax.grad` of `jax_gna.reference.gna` computed in float32 on
the CPU from the same inputs (`test_cuda_fwd` explains why there), over random configurations
per rank (odd extents, stride, dilation, per-axis causal, GQA, extra KV tokens, an LSE
cotangent, user scale, fp16/bf16, head dims 32/64/128, batch 1, 2 or 2x1); every one of them
must run the CUDA backward kernel (its custom call in the compiled HLO), not the xla stand-in.
Then: bit-identical gradients over repeated runs in deterministic mode on a problem where many
KV tiles add into the same dQ rows (also with the dQ accumulator split into copies),
deterministic against default mode, jit, vmap, jax.checkpoint, XLA command buffers (on and off,
in subprocesses since XLA reads its flags once per process) and ``--xla_gpu_deterministic_ops``.
Head dim 256 takes its own kernel path and its own cases: `test_cuda_bwd_d256`. Run with
``python -m pytest -m gpu tests/gpu/test_cuda_bwd.py -n 8``; ``GNA_GPU_CASES`` sets the
configurations per rank (100).

Tolerances. The kernel, like every flash-attention backward, rounds to the input dtype what
feeds the tensor cores: P for dV = P^T dO, dS = P * (dP - D) for dQ = dS K and dK = dS^T Q, and
it reads the forward's rounded output in D = rowsum(dO * O); the results are rounded too. Each
rounding is relative, 2^-9 (bf16) or 2^-12 (fp16) of the term, but dS sums to about zero over a
row, so its errors do not shrink with the result: near rows whose exact gradient cancels out
(causal first queries, peaked softmax), the error is a few units of eps times the gradient's
typical size, not its own. Hence, per gradient tensor, with ``rms`` its root mean square:
``|got - want| <= ATOL * rms + RTOL * |want|`` elementwise, plus a relative Frobenius error
``||got - want|| / ||want|| <= FRO`` that catches small systematic errors (a wrong scale, a
dropped term) which the elementwise bound would let through. A dense float32 model of exactly
these roundings (on the CPU; 32 random 1-D and 2-D problems per dtype, causal and strided, head
dims 32-128, with and without an LSE cotangent) stayed within 0.070 rms (bf16) and 0.0046 rms
(fp16) beyond ``2 eps |want|`` (eps = 2^-8 and 2^-11: RTOL below), with Frobenius errors of at
most 0.0029 and 0.0004; the bounds below allow about 3x and 4-5x that, since the kernel's own
forward output and summation order differ from the model's. A dropped key tile or a wrong
scale is still far outside them.
"""

from __future__ import annotations

import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

# tests/gpu is on sys.path while pytest collects this file: the forward tests' helpers.
from test_cuda_fwd import (
    CHUNKS,
    DTYPES,
    HEAD_DIMS,
    N_CASES,
    _inputs,
    _skip_reason,
    _window,
    run_script,
)

import jax_gna
from jax_gna import _extension, _ffi_call, _ffi_op, _tiles, reference
from jax_gna._params import make_params
from tests import hlo_attrs

pytestmark = pytest.mark.gpu


def _bwd_skip_reason() -> str | None:
    reason = _skip_reason()
    if reason is None and not _extension.ext.cuda_has_backward():
        return "this build has no CUDA backward kernels (gradients run the xla backward)"
    return reason


_REASON = _bwd_skip_reason()
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]

BWD_HEAD_DIMS = tuple(d for d in HEAD_DIMS if d <= 128)
# name -> (ATOL in units of rms, RTOL, FRO); see the module docstring.
TOL = {jnp.bfloat16: (0.2, 2**-7, 0.015), jnp.float16: (0.02, 2**-10, 0.002)}
# Dense reference cost cap, in attention scores (batch x heads x queries x keys): it keeps the
# CPU oracle at a fraction of a second per case.
SCORE_BUDGET = 8_000_000
f32 = jnp.float32


def _random_case(rng: np.random.Generator, rank: int) -> dict:
    """Windows over several KV tiles (1-D up to 200 tokens, 2-D/3-D several 16x8 / 2x8x8 tiles),
    extents shrunk until the dense reference stays within `SCORE_BUDGET`."""
    max_kernel = {1: 200, 2: 16, 3: 8}[rank]
    spare = {1: 300, 2: 24, 3: 10}[rank]
    extents, kernel, stride, dilation, causal = [], [], [], [], []
    for _ in range(rank):
        # The forward's TMA boxes span tile x dilation <= 256 positions (1-D tiles: 128).
        d = int(rng.choice([1, 1, 1, 2] if rank == 1 else [1, 1, 1, 2, 3]))
        k = int(np.exp(rng.uniform(np.log(2), np.log(max_kernel))))  # small windows often
        kernel.append(k)
        extents.append(int(rng.integers(k * d, k * d + spare)))
        stride.append(int(rng.integers(1, k + 1)))
        dilation.append(d)
        causal.append(bool(rng.random() < 0.3))
    heads_kv = int(rng.choice([1, 2]))
    case = dict(
        batch=[(1,), (2,), (2, 1)][int(rng.integers(3))],
        extents=extents,
        heads=heads_kv * int(rng.choice([1, 2, 3])),
        heads_kv=heads_kv,
        dim=int(rng.choice(BWD_HEAD_DIMS)),
        dtype=DTYPES[int(rng.integers(len(DTYPES)))],
        kernel_size=tuple(kernel),
        stride=tuple(stride),
        dilation=tuple(dilation),
        is_causal=tuple(causal),
        scale=None if rng.random() < 0.7 else float(rng.uniform(-0.5, 0.5)),
        extra=int(rng.choice([0, 0, 0, 5, 17])),
        lse_cotangent=bool(rng.random() < 0.3),
    )
    minimum = [k * d for k, d in zip(kernel, dilation)]
    while _scores(case) > SCORE_BUDGET and extents != minimum:
        axis = int(np.argmax([e - m for e, m in zip(extents, minimum)]))
        extents[axis] = max(minimum[axis], extents[axis] - max(1, extents[axis] // 8))
    case["extents"] = tuple(extents)
    return case


def _scores(case: dict) -> int:
    tokens = math.prod(case["extents"])
    return math.prod(case["batch"]) * case["heads"] * tokens * (tokens + case["extra"])


def _cotangents(case: dict, seed: int, q):
    """Random cotangents of out (representable in the input dtype, so the cast of the cotangent
    to the output's dtype is exact) and, for some cases, of the LSE (else None)."""
    rng = np.random.default_rng(seed + 10**6)
    out_shape = q.shape[:-1] + (case["dim"],)
    dout = jnp.asarray(rng.standard_normal(out_shape, dtype=np.float32), case["dtype"])
    dlse = None
    if case["lse_cotangent"]:
        dlse = jnp.asarray(rng.standard_normal(q.shape[:-1], dtype=np.float32))
    return dout.astype(f32), dlse


def _loss(attention, w: dict):
    """sum(out * dout) (+ sum(lse * dlse)) of ``attention(q, k, v, **extra, **w,
    return_lse=True)``, as a function of (q, k, v, extra, dout, dlse)."""

    def loss(q, k, v, extra, dout, dlse):
        out, lse = attention(q, k, v, **extra, **w, return_lse=True)
        total = jnp.sum(out.astype(f32) * dout)
        return total if dlse is None else total + jnp.sum(lse * dlse)

    return loss


def _cuda_grad(w: dict, **kw):
    """jit(grad) of the loss through ``jax_gna.gna(implementation="cuda", **kw)`` in
    (q, k, v, extra)."""

    def attention(*args, **kwargs):
        return jax_gna.gna(*args, **kwargs, **kw, implementation="cuda")

    return jax.jit(jax.grad(_loss(attention, w), argnums=(0, 1, 2, 3)))


def _oracle_grad(w: dict, *args):
    """jax.grad of the reference in float32 on the CPU, for the same arguments."""
    cpu = jax.devices("cpu")[0]
    to_cpu = lambda x: jax.device_put(x, cpu).astype(f32)  # noqa: E731
    args = jax.tree.map(to_cpu, args)
    with jax.default_device(cpu):
        return jax.jit(jax.grad(_loss(reference.gna, w), argnums=(0, 1, 2, 3)))(*args)


def _compiled(grad_fn, *args):
    """The compiled grad and its optimised HLO text (one compile serves both)."""
    compiled = grad_fn.lower(*args).compile()
    return compiled, compiled.as_text()


def _named(grads) -> dict:
    """(dq, dk, dv, {extra-token gradients}) by name."""
    dq, dk, dv, extra = grads
    return dict(dq=dq, dk=dk, dv=dv, **{f"d_{n}": g for n, g in extra.items()})


def _assert_grads_close(got, want, dtype, context: str) -> None:
    atol, rtol, fro = TOL[dtype]
    got, want = _named(got), _named(want)
    assert got.keys() == want.keys(), context
    for name in want:
        g, r = got[name], np.asarray(want[name])
        assert g.dtype == dtype, f"{name}: dtype {g.dtype}; {context}"
        g = np.asarray(g.astype(f32))
        assert g.shape == r.shape, f"{name}: shape {g.shape} != {r.shape}; {context}"
        assert np.isfinite(g).all(), f"{name} is not finite; {context}"
        rms = float(np.sqrt(np.mean(r**2)))
        err = np.abs(g - r)
        excess = err - (atol * rms + rtol * np.abs(r))
        worst = np.unravel_index(int(np.argmax(excess)), err.shape)
        assert excess[worst] <= 0, (
            f"{name}: |got - want| = {err[worst]:.4g} at {worst} (want {r[worst]:.4g}) exceeds "
            f"{atol} * rms ({rms:.4g}) + {rtol:.4g} * |want|; {context}"
        )
        relative = float(np.linalg.norm(g - r) / max(float(np.linalg.norm(r)), 1e-30))
        assert relative <= fro, f"{name}: relative error {relative:.4g} > {fro}; {context}"


def _check_case(case: dict, seed: int, **kw) -> None:
    q, k, v, extra = _inputs(case, seed)
    dout, dlse = _cotangents(case, seed, q)
    w = _window(case)
    args = (q, k, v, extra, dout, dlse)
    context = f"case {case}, seed {seed}"
    compiled, text = _compiled(_cuda_grad(w, **kw), *args)
    if "jax_gna_bwd" not in text:
        reason = _ffi_call.cuda_backward_reason(q, k, v, make_params(q, k, v, **w))
        pytest.fail(f"the xla backward ran, not the CUDA kernel ({reason}); {context}")
    assert "jax_gna_fwd" in text, context
    _assert_grads_close(compiled(*args), _oracle_grad(w, *args), case["dtype"], context)


@pytest.mark.parametrize("chunk", range(CHUNKS))  # test items that pytest-xdist spreads
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_random_configurations_match_reference_gradients(rank, chunk):
    rng = np.random.default_rng(2000 + rank)
    cases = [_random_case(rng, rank) for _ in range(N_CASES)]  # same cases for every chunk
    for i in range(chunk, N_CASES, CHUNKS):
        _check_case(cases[i], seed=i)


def _case(extents, kernel_size, stride=None, dilation=None, is_causal=None, **kw) -> dict:
    rank = len(extents)
    case = dict(
        batch=(1,), extents=tuple(extents), heads=4, heads_kv=2, dim=128, dtype=jnp.bfloat16,
        kernel_size=tuple(kernel_size), stride=tuple(stride or (1,) * rank),
        dilation=tuple(dilation or (1,) * rank), is_causal=tuple(is_causal or (False,) * rank),
        scale=None, extra=0, lse_cotangent=False,
    )  # fmt: skip
    case.update(kw)
    return case


LARGER = {  # several tiles per axis, the design problems' patterns in miniature
    "1d-window-256": _case((1024,), (256,), (1,)),
    "1d-gna-causal": _case((1000,), (300,), (64,), is_causal=(True,)),
    "2d-48x48-13x13": _case((48, 48), (13, 13)),
    "2d-gna-dilated": _case((40, 52), (9, 12), (3, 4), (2, 2)),
    "3d-gna": _case((8, 16, 16), (4, 8, 8), (2, 4, 4)),
    "3d-odd-causal": _case(
        (9, 13, 19), (5, 8, 7), is_causal=(True, False, False), heads=2, heads_kv=1, extra=7
    ),
    # Cosmos in miniature: 12 rows (a multiple of 4, not 8), windows stepping by 4 rows; the
    # backward picks its (4, 4, 8) KV tiles here.
    "3d-rows-of-4": _case((4, 12, 16), (4, 6, 8), (1, 2, 8), lse_cotangent=True),
    # Windows stepping by 8 rows and 16 columns: the backward picks its (8, 16) KV tiles.
    "2d-blocked-8x16": _case((32, 48), (8, 16), (8, 16), lse_cotangent=True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", list(LARGER))
def test_larger_problems_match_reference_gradients(name, dtype):
    _check_case(dict(LARGER[name], dtype=dtype), seed=11)


def _clear_traces():
    """Forgets the ops built so far (jax_gna._ffi_op caches one per GnaParams) and JAX's traces."""
    for cached in (_ffi_op._forward_op, _ffi_op._backward_op, _ffi_op._xla_backward_op):
        cached.cache_clear()
    jax.clear_caches()


@pytest.fixture
def fresh_traces():
    """No op or trace of another test: the backward's tiles are picked when it is traced, and
    the ops and JAX's trace caches would reuse an earlier test's pick (and this test's would
    outlive it)."""
    _clear_traces()
    yield
    _clear_traces()


FORCED = {  # rank -> problems whose gradients run each backward configuration of the rank
    2: ["2d-gna-dilated", "2d-blocked-8x16"],
    3: ["3d-gna", "3d-odd-causal", "3d-rows-of-4"],
}


@pytest.mark.usefixtures("fresh_traces")
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize(
    ("name", "config"),
    [
        (name, config)
        for rank, names in FORCED.items()
        for name in names
        for config in range(len(_tiles.SM90_BACKWARD[rank][128]))
    ],
)
def test_every_backward_configuration_matches_reference_gradients(
    name, config, deterministic, monkeypatch
):
    """Each compiled backward configuration of ranks 2 and 3, forced for problems that would
    pick either (GQA, causal, dilation, extra tokens, an LSE cotangent), in both modes."""
    tiles = _tiles.SM90_BACKWARD[len(LARGER[name]["extents"])][128][config]
    monkeypatch.setattr(_ffi_call, "cuda_backward_tiles", lambda *a: (tiles.q, tiles.kv))
    case = LARGER[name]
    q, k, v, extra = _inputs(case, seed=13)
    dout, dlse = _cotangents(case, 13, q)
    args = (q, k, v, extra, dout, dlse)
    grad = _cuda_grad(_window(case), deterministic=deterministic)
    assert hlo_attrs.tiles(grad.lower(*args).as_text(), "jax_gna_bwd") == (tiles.q, tiles.kv)
    _check_case(case, seed=13, deterministic=deterministic)


# Many KV tiles add into the same dQ rows: 16x8 KV tiles under a 13x13 window.
DETERMINISM_CASE = _case((48, 48), (13, 13), heads=4, heads_kv=4, lse_cotangent=True)


def check_deterministic_runs(case: dict, seed: int, runs: int):
    """The gradients of `case` in deterministic mode, `runs` times: bit-identical, and close to
    the oracle's. Returns the arguments, the window and the oracle's gradients."""
    q, k, v, extra = _inputs(case, seed=seed)
    dout, dlse = _cotangents(case, seed, q)
    w = _window(case)
    args = (q, k, v, extra, dout, dlse)
    deterministic, text = _compiled(_cuda_grad(w, deterministic=True), *args)
    assert "jax_gna_bwd" in text
    results = [jax.block_until_ready(deterministic(*args)) for _ in range(runs)]
    for i, run in enumerate(results[1:], 1):
        for name, a, b in zip(("dq", "dk", "dv"), results[0][:3], run[:3]):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: run {i} differs from run 0")
    want = _oracle_grad(w, *args)
    _assert_grads_close(results[0], want, case["dtype"], "deterministic mode")
    return args, w, want


def test_deterministic_mode_is_bit_identical_over_runs_and_matches_default_mode():
    case = DETERMINISM_CASE
    args, w, want = check_deterministic_runs(case, seed=5, runs=5)
    default = _cuda_grad(w, deterministic=False)
    default_runs = [jax.block_until_ready(default(*args)) for _ in range(5)]
    for run in default_runs:
        _assert_grads_close(run, want, case["dtype"], "default mode")
    differs = sum(
        not all(np.array_equal(a, b) for a, b in zip(run[:3], default_runs[0][:3]))
        for run in default_runs[1:]
    )
    print(f"default mode: {differs} of 4 repeated runs differ from the first in some bit")


def test_deterministic_mode_with_a_kv_head_shared_by_four_query_heads():
    """A CTA's visits run over the four query heads of its KV head, with masked and full visits,
    in deterministic mode: the consumer warpgroups' GEMM turns interleave with the dQ writer's
    waits across the heads."""
    case = _case((8, 16, 16), (4, 8, 8), (2, 4, 4), heads=4, heads_kv=1, lse_cotangent=True)
    check_deterministic_runs(case, seed=7, runs=3)


def test_jit_vmap_and_remat():
    case = _case((20, 18), (7, 5), (2, 1), (1, 2), (False, True), batch=(2,), extra=3)
    q, k, v, extra = _inputs(case, seed=21)
    dout, dlse = _cotangents(case, 21, q)
    w = _window(case)
    args = (q, k, v, extra, dout, dlse)
    want = _oracle_grad(w, *args)
    traces = []

    def attention(*a, **kw):
        traces.append(1)
        return jax_gna.gna(*a, **kw, implementation="cuda")

    grad = jax.jit(jax.grad(_loss(attention, w), argnums=(0, 1, 2, 3)))
    for _ in range(3):
        _assert_grads_close(grad(*args), want, case["dtype"], "jit")
    assert len(traces) == 1, "retraced"

    # vmap over a leading axis of every input: per-example gradients.
    per_example = jax.jit(jax.vmap(jax.grad(_loss(attention, w), argnums=(0, 1, 2, 3))))
    stacked = [jnp.stack([x, x[::-1]]) for x in (q, k, v, dout)]
    extra2 = jax.tree.map(lambda x: jnp.stack([x, x[::-1]]), extra)
    dlse2 = None if dlse is None else jnp.stack([dlse, dlse[::-1]])
    got = per_example(stacked[0], stacked[1], stacked[2], extra2, stacked[3], dlse2)
    first = jax.tree.map(lambda x: x[0], got)
    _assert_grads_close(first, want, case["dtype"], "vmap, example 0")
    flipped = [x[::-1] for x in (q, k, v, dout)]
    want_flipped = _oracle_grad(
        w,
        *flipped[:3],
        jax.tree.map(lambda x: x[::-1], extra),
        flipped[3],
        None if dlse is None else dlse[::-1],
    )
    _assert_grads_close(jax.tree.map(lambda x: x[1], got), want_flipped, case["dtype"], "vmap 1")

    # jax.checkpoint: the forward is recomputed inside the backward pass.
    def remat_attention(q, k, v, additional_keys=None, additional_values=None, **kw):
        def attend(q, k, v, ek, ev):
            return jax_gna.gna(
                q, k, v, additional_keys=ek, additional_values=ev, **kw, implementation="cuda"
            )

        return jax.checkpoint(attend)(q, k, v, additional_keys, additional_values)

    remat = jax.jit(jax.grad(_loss(remat_attention, w), argnums=(0, 1, 2, 3)))
    compiled, text = _compiled(remat, *args)
    assert "jax_gna_bwd" in text
    _assert_grads_close(compiled(*args), want, case["dtype"], "jax.checkpoint")


def test_inside_a_users_shard_map():
    """jax_gna.gna per shard in the user's own shard_map over heads, on every GPU (2 on the
    2-GPU machine): the CUDA kernels run and the gradients match the reference. (Results
    typed as the same on every device made differentiating fail.)"""
    devices = jax.devices("gpu")
    n = len(devices)
    case = _case((20, 18), (7, 5), (2, 1), (1, 2), (False, True), heads=2 * n, heads_kv=n)
    q, k, v, extra = _inputs(case, seed=5)
    dout, dlse = _cotangents(case, 5, q)
    w = _window(case)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("h",))
    spec = P(None, None, None, "h")

    def attention(q, k, v, **kw):
        per_shard = lambda q, k, v: jax_gna.gna(q, k, v, **kw, implementation="cuda")  # noqa: E731
        out_specs = (spec, P(None, None, None, "h"))
        return jax.shard_map(per_shard, mesh=mesh, in_specs=(spec,) * 3, out_specs=out_specs)(
            q, k, v
        )

    args = (q, k, v, {}, dout, dlse)
    grad = jax.jit(jax.grad(_loss(attention, w), argnums=(0, 1, 2, 3)))
    compiled, text = _compiled(grad, *args)
    assert "jax_gna_bwd" in text and "jax_gna_fwd" in text
    _assert_grads_close(compiled(*args), _oracle_grad(w, *args), case["dtype"], "shard_map")


def test_gradients_of_a_vmapped_call():
    case = _case((16, 24), (5, 7), (1, 3), batch=(2,))
    q, k, v, _ = _inputs(case, seed=8)
    w = _window(case)
    qs = jnp.stack([q, q * 0.5, q[:, ::-1]])
    cot = jnp.asarray(np.random.default_rng(9).standard_normal(qs.shape, dtype=np.float32))

    def loss(attention):
        def f(qs, k, v, cot):  # dq of every call of a vmapped attention, and dk/dv summed
            out = jax.vmap(lambda q: attention(q, k, v, **w))(qs)
            return jnp.sum(out.astype(f32) * cot)

        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))

    got = loss(lambda *a, **kw: jax_gna.gna(*a, **kw, implementation="cuda"))(qs, k, v, cot)
    cpu = jax.devices("cpu")[0]
    on_cpu = [jax.device_put(x, cpu).astype(f32) for x in (qs, k, v, cot)]
    with jax.default_device(cpu):
        want = loss(reference.gna)(*on_cpu)
    _assert_grads_close((*got, {}), (*want, {}), case["dtype"], "grad of vmap")


# Gradients three times each in deterministic, default and XLA-flag-driven (None) mode; run in
# a subprocess per XLA_FLAGS setting, since XLA reads them once per process.
_GRAD_SCRIPT = textwrap.dedent(
    """
    import sys, jax, jax.numpy as jnp, numpy as np, jax_gna
    rng = np.random.default_rng(0)
    x = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32), jnp.bfloat16)
    d = int(sys.argv[2])
    q, k, v = x(2, 32, 24, 4, d), x(2, 32, 24, 2, d), x(2, 32, 24, 2, d)
    w = dict(kernel_size=(9, 7), stride=(2, 3), dilation=(2, 1), is_causal=(True, False))
    def grad(deterministic):
        def loss(q, k, v):
            out = jax_gna.gna(q, k, v, **w, implementation="cuda", deterministic=deterministic)
            return jnp.sum(jnp.tanh(out.astype(jnp.float32)))
        return jax.jit(jax.grad(loss, (0, 1, 2)))
    result = {}
    for mode, value in (("on", True), ("off", False), ("auto", None)):
        f = grad(value)
        text = f.lower(q, k, v).as_text()
        result[mode + "_attr"] = np.array("deterministic = 1 : i64" in text)
        assert "jax_gna_bwd" in f.lower(q, k, v).compile().as_text()
        for i in range(3):
            for name, g in zip(("dq", "dk", "dv"), f(q, k, v)):
                result[f"{mode}_{name}_{i}"] = np.asarray(g.astype(jnp.float32))
    np.savez(sys.argv[1], **result)
    """
)


def _run_grad_script(tmp_path, name: str, flags: str, **env_vars: str) -> dict:
    path = tmp_path / f"{name}.npz"
    run_script(_GRAD_SCRIPT, path, flags, **env_vars)
    return dict(np.load(path))


def _assert_modes_close(result: dict, other: dict | None = None) -> None:
    """Every run of every mode close to the first deterministic run (of `other` if given):
    a dQ accumulator that is not reset between replays would double here."""
    base = other or result
    for mode in ("on", "off", "auto"):
        for name in ("dq", "dk", "dv"):
            want = base[f"on_{name}_0"]
            rms = float(np.sqrt(np.mean(want**2)))
            for i in range(3):
                got = result[f"{mode}_{name}_{i}"]
                atol, rtol, _ = TOL[jnp.bfloat16]
                np.testing.assert_allclose(
                    got, want, atol=atol * rms, rtol=rtol, err_msg=f"{mode} {name} run {i}"
                )


def test_deterministic_mode_with_copies_of_the_dq_accumulator(tmp_path):
    """The sm90 deterministic backward with its dQ accumulator split into 2 and 3 copies (the
    development knob GNA_SM90_DQ_BUFFERS, read once per process: a subprocess each): turn i adds
    into copy i % copies and the conversion sums the copies. Bit-identical over repeated runs,
    close to the default mode and to one copy's gradients (a copy left unzeroed, unsummed or
    added twice would be far off; a wrong turn would hang or differ between runs)."""
    one = _run_grad_script(tmp_path, "one", "", GNA_SM90_DQ_BUFFERS="1")
    for copies in ("2", "3"):
        split = _run_grad_script(tmp_path, f"copies{copies}", "", GNA_SM90_DQ_BUFFERS=copies)
        for name in ("dq", "dk", "dv"):
            for i in (1, 2):
                np.testing.assert_array_equal(
                    split[f"on_{name}_{i}"],
                    split[f"on_{name}_0"],
                    err_msg=f"{copies} copies, {name}: run {i}",
                )
        _assert_modes_close(split)
        _assert_modes_close(split, one)


def test_command_buffers_on_and_off(tmp_path):
    """The backward handler is command-buffer compatible: recorded into a CUDA graph and
    replayed, deterministic mode gives the very bits it gives without graphs, and every
    replay of either mode stays correct."""
    on = _run_grad_script(
        tmp_path,
        "on",
        "--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL --xla_gpu_graph_min_graph_size=1",
    )
    off = _run_grad_script(tmp_path, "off", "--xla_gpu_enable_command_buffer=")
    for key in on:
        if key.startswith("on_"):
            np.testing.assert_array_equal(on[key], off[key], err_msg=key)
    assert not on["auto_attr"] and not off["auto_attr"]  # no XLA determinism flag: default
    _assert_modes_close(on)
    _assert_modes_close(off)


def test_xla_deterministic_ops_flag_makes_the_default_deterministic(tmp_path):
    result = _run_grad_script(tmp_path, "flag", "--xla_gpu_deterministic_ops=true")
    assert result["on_attr"] and result["auto_attr"] and not result["off_attr"]
    for name in ("dq", "dk", "dv"):
        for i in (1, 2):
            np.testing.assert_array_equal(result[f"auto_{name}_{i}"], result[f"auto_{name}_0"])
        np.testing.assert_array_equal(result[f"auto_{name}_0"], result[f"on_{name}_0"])
    _assert_modes_close(result)
