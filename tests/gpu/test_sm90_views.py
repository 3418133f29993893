"""The sm90 kernels on views (a shard's queries against its key block with the windows of the
whole axis, `cuda/include/gna/window.h` AxisView), forward and backward, on a Hopper GPU.

- Shard views as `jax_gna.parallel` makes them (random windows, 2-4 shards along a random
  axis, a random shard): out, lse and dq/dk/dv of the FFI ops with the view equal the whole
  problem's reference (`jax.grad` of `reference.gna` in float32 on the CPU) sliced to the
  shard (with cotangents on the shard's queries only, the key block's dK and dV equal the
  whole problem's on the block's positions, zero outside the axis).
- Random views (key slices cut and shifted anyhow, so that some queries see no key: O = 0,
  lse = -inf, no gradient): against the brute-force oracle of `tests/oracle.py` on the whole
  axis restricted to the slices.
- Half of the cases run the backward in deterministic mode.
- `gna_sharded(implementation="cuda")` on two GPUs: results and gradients equal one device's,
  and the compiled program calls the forward and backward kernels with views.

Run on a GPU machine: ``python -m pytest -m gpu tests/gpu/test_sm90_views.py``. Without a GPU,
``GNA_VIEW_TESTS_ON_CPU=1 python -m pytest -m gpu tests/gpu/test_sm90_views.py`` runs the same
cases on the CPU kernel (implementation "cpu"), which checks the test's own logic. Tolerances
as in `test_cuda_fwd` (forward) and `test_cuda_bwd` (backward, which explains them).
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# tests/gpu is on sys.path while pytest collects this file: the forward tests' helpers.
from test_cuda_fwd import _skip_reason as _hopper_skip_reason

from jax_gna import _extension, _ffi_call, parallel, reference
from jax_gna._halo.plan import shard_plan
from jax_gna._params import GnaParams
from tests import oracle

pytestmark = pytest.mark.gpu

ON_CPU = os.environ.get("GNA_VIEW_TESTS_ON_CPU") == "1"
IMPLEMENTATION = "cpu" if ON_CPU else "cuda"


def _skip_reason() -> str | None:
    if _extension.ext is None:
        return str(_extension.missing)
    if ON_CPU:
        return None
    reason = _hopper_skip_reason()
    if reason == "no GPU visible to JAX":
        reason += " (GNA_VIEW_TESTS_ON_CPU=1 runs the cases on the CPU kernel)"
    return reason


_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]

SMOKE = _extension.ext is not None and _extension.ext.kernel_set == "smoke"
HEAD_DIMS = (128,) if SMOKE else (32, 64, 128)
DTYPES = (jnp.bfloat16,) if SMOKE else (jnp.bfloat16, jnp.float16)
FWD_TOL = {jnp.bfloat16: 2.5e-2, jnp.float16: 4e-3}
LSE_TOL = 2e-3
# (ATOL in units of the gradient's rms, RTOL, relative Frobenius error): test_cuda_bwd's.
BWD_TOL = {jnp.bfloat16: (0.2, 2**-7, 0.015), jnp.float16: (0.02, 2**-10, 0.002)}
N_SHARD_CASES = 24
N_RANDOM_CASES = 24
# A custom call's non-empty view attribute in compiled HLO text.
VIEW_ATTR = r"view_kv_offset = dense<[^>]+> : tensor<\d+xi64>"


def _device():
    return jax.devices("cpu")[0] if ON_CPU else jax.devices("gpu")[0]


@dataclasses.dataclass(frozen=True)
class Case:
    seed: int
    extent: tuple
    window: tuple  # kernel_size, stride, dilation, is_causal (per-axis tuples)
    views: tuple  # per axis (q_offset, q_length, kv_offset, kv_length)
    heads: int
    kv_heads: int
    dim: int
    dtype: object

    @property
    def rank(self) -> int:
        return len(self.extent)

    def params(self) -> GnaParams:
        view = tuple((n, v[0], v[2]) for n, v in zip(self.extent, self.views))
        # Odd seeds run the backward's deterministic dQ order (its turns follow the view's
        # KV-tile boxes).
        return GnaParams(*self.window, self.dim**-0.5, deterministic=self.seed % 2 == 1, view=view)


def _random_window(rng, rank):
    extent, ks, st, dl, ca = [], [], [], [], []
    for _ in range(rank):
        # 1-D tiles hold 128 tokens and a TMA box spans tile * dilation <= 256 positions.
        d = int(rng.choice([1, 1, 1, 2] if rank == 1 else [1, 1, 2]))
        k = int(rng.integers(2, {1: 40, 2: 9, 3: 6}[rank]))
        extent.append(int(rng.integers(2 * k * d, 2 * k * d + {1: 120, 2: 12, 3: 6}[rank])))
        ks.append(k)
        st.append(int(rng.integers(1, k + 1)))
        dl.append(d)
        ca.append(bool(rng.random() < 0.3))
    return tuple(extent), (tuple(ks), tuple(st), tuple(dl), tuple(ca))


def _heads(rng):
    kv = int(rng.choice([1, 2]))
    return kv * int(rng.choice([1, 2])), kv


def shard_case(seed: int) -> tuple[Case, int]:
    """A shard's view as `jax_gna.parallel` makes it, and the sharded axis."""
    rng = np.random.default_rng(seed)
    while True:
        rank = int(rng.integers(1, 4))
        extent, window = _random_window(rng, rank)
        axis = int(rng.integers(rank))
        devices = int(rng.integers(2, 5))
        extent = tuple(
            (n // devices) * devices if a == axis else n for a, n in enumerate(extent)
        )  # even shards: a view's query slice must lie inside the axis
        params = GnaParams(*window, 1.0)
        if extent[axis] < window[0][axis] * window[2][axis]:
            continue
        plan = shard_plan(extent, params, axis, devices)
        if plan.halo.min_shard > plan.halo.shard:
            continue
        p = int(rng.integers(devices))
        if plan.calls[p] is None:
            continue
        rows, keys, view = plan.calls[p]
        views = tuple(
            (view[a][1], rows[1] - rows[0], view[a][2], keys[1] - keys[0])
            if a == axis
            else (0, n, 0, n)
            for a, n in enumerate(extent)
        )
        heads, kv_heads = _heads(rng)
        dim = int(rng.choice(HEAD_DIMS))
        dtype = DTYPES[int(rng.integers(len(DTYPES)))]
        return Case(seed, extent, window, views, heads, kv_heads, dim, dtype), axis


def random_case(seed: int) -> Case:
    """A random view whose query slice lies inside the axis (some of its queries may see no
    key of the key slice)."""
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(1, 4))
    extent, window = _random_window(rng, rank)
    views = []
    for n, d in zip(extent, window[2]):
        qo = int(rng.integers(0, n))
        nq = int(rng.integers(1, n - qo + 1))
        ko = qo - d * int(rng.integers(-2, n // d // 2 + 1))
        views.append((qo, nq, ko, int(rng.integers(1, n + 1))))
    dim = int(rng.choice(HEAD_DIMS))
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    return Case(seed, extent, window, tuple(views), *_heads(rng), dim, dtype)


def _slices(case: Case, which: int) -> tuple:
    """Index of the query (which=0) or key (which=2) slice in whole-axis arrays, per axis."""
    return tuple(slice(v[which], v[which] + v[which + 1]) for v in case.views)


def _block(x: np.ndarray, case: Case) -> np.ndarray:
    """The key block of whole-axis array `x` [B, X..., H, D] (zeros outside the axis)."""
    out = x
    for a, (_, _, ko, nk) in enumerate(case.views):
        n = x.shape[1 + a]
        pad = (max(-ko, 0), max(ko + nk - n, 0))
        widths = [(0, 0)] * x.ndim
        widths[1 + a] = pad
        out = np.pad(out, widths)
        start = ko + pad[0]
        out = np.take(out, np.arange(start, start + nk), axis=1 + a)
    return out


def _whole_inputs(case: Case):
    rng = np.random.default_rng(case.seed + 1000)
    shape = (1, *case.extent)
    q = rng.standard_normal((*shape, case.heads, case.dim), dtype=np.float32)
    k = rng.standard_normal((*shape, case.kv_heads, case.dim), dtype=np.float32)
    v = rng.standard_normal((*shape, case.kv_heads, case.dim), dtype=np.float32)
    dout = rng.standard_normal((*shape, case.heads, case.dim), dtype=np.float32)
    dlse = rng.standard_normal((*shape, case.heads), dtype=np.float32)
    # Round to the kernel's dtype once, so that the oracle sees the same inputs.
    rnd = lambda x: np.asarray(jnp.asarray(x, case.dtype).astype(jnp.float32))  # noqa: E731
    return rnd(q), rnd(k), rnd(v), rnd(dout), dlse


def _on_device(case: Case, *xs):
    device = _device()
    return [jax.device_put(jnp.asarray(x, case.dtype), device) for x in xs]


def _run_view(case: Case, q, k, v, dout, dlse):
    """out, lse, dq, dk, dv of the FFI ops with the case's view, in float32 NumPy."""
    params = case.params()
    qd, kd, vd, dod = _on_device(case, q, k, v, dout)
    dlsed = jax.device_put(jnp.asarray(dlse), _device())
    if not ON_CPU:
        assert _ffi_call.why_not("cuda", qd, kd, vd, params) is None
        assert _ffi_call.cuda_backward_reason(qd, kd, vd, params) is None
    out, lse = jax.jit(lambda q, k, v: _ffi_call.forward(params, q, k, v))(qd, kd, vd)
    grads = jax.jit(lambda *a: _ffi_call.backward(params, *a))(dod, qd, kd, vd, out, lse, dlsed)
    f32 = lambda x: np.asarray(jnp.asarray(x).astype(jnp.float32))  # noqa: E731
    return f32(out), f32(lse), *(f32(g) for g in grads)


def _check_forward(case, out, lse, want_out, want_lse):
    np.testing.assert_allclose(out, want_out, atol=FWD_TOL[case.dtype], rtol=FWD_TOL[case.dtype])
    np.testing.assert_allclose(lse, want_lse, atol=LSE_TOL, rtol=LSE_TOL)


def _check_grad(case, name, got, want):
    atol, rtol, fro = BWD_TOL[case.dtype]
    rms = float(np.sqrt(np.mean(want.astype(np.float64) ** 2))) or 1.0
    err = np.abs(got - want)
    bad = err > atol * rms + rtol * np.abs(want)
    assert not bad.any(), f"{name}: {bad.sum()} elements off, max error {err.max():.3g}"
    norm = float(np.linalg.norm(want)) or 1.0
    assert float(np.linalg.norm(got - want)) <= fro * norm, name


@pytest.fixture(autouse=True)
def _exact_reference():
    with jax.default_matmul_precision("highest"):
        yield


def _reference_grads(case: Case, q, k, v, dout, dlse):
    """out, lse and their vjp of the whole problem, `reference.gna` in float32 on the CPU."""
    ks, st, dl, ca = case.window
    cpu = jax.devices("cpu")[0]

    def fn(q, k, v):
        return reference.gna(
            q, k, v, ks, stride=st, dilation=dl, is_causal=ca, scale=case.dim**-0.5,
            return_lse=True,
        )  # fmt: skip

    with jax.default_device(cpu):
        (out, lse), pull = jax.vjp(fn, *(jnp.asarray(x) for x in (q, k, v)))
        grads = pull((jnp.asarray(dout), jnp.asarray(dlse)))
    return np.asarray(out), np.asarray(lse), *(np.asarray(g) for g in grads)


SHARD_CASES = [shard_case(s) for s in range(N_SHARD_CASES)]


@pytest.mark.parametrize("case_axis", SHARD_CASES, ids=lambda c: f"seed{c[0].seed}")
def test_shard_view_equals_the_whole_problem_sliced(case_axis):
    case, axis = case_axis
    q, k, v, dout, dlse = _whole_inputs(case)
    qs = (slice(None), *_slices(case, 0))
    # Cotangents only on the shard's queries: the view's gradients are then the whole
    # problem's (the key block holds every key those queries see).
    dout_s = np.zeros_like(dout)
    dout_s[qs] = dout[qs]
    dlse_s = np.zeros_like(dlse)
    dlse_s[qs] = dlse[qs]
    want_out, want_lse, want_dq, want_dk, want_dv = _reference_grads(case, q, k, v, dout_s, dlse_s)
    out, lse, dq, dk, dv = _run_view(
        case, q[qs], _block(k, case), _block(v, case), dout[qs], dlse[qs]
    )
    _check_forward(case, out, lse, want_out[qs], want_lse[qs])
    _check_grad(case, "dq", dq, want_dq[qs])
    # dK, dV of the key block: the whole axis' gradients there (zero outside the axis).
    _check_grad(case, "dk", dk, _block(want_dk, case))
    _check_grad(case, "dv", dv, _block(want_dv, case))


RANDOM_CASES = [random_case(1000 + s) for s in range(N_RANDOM_CASES)]


@pytest.mark.parametrize("case", RANDOM_CASES, ids=lambda c: f"seed{c.seed}-r{c.rank}")
def test_random_view_matches_the_oracle(case):
    q, k, v, dout, dlse = _whole_inputs(case)
    qs = (slice(None), *_slices(case, 0))
    q, dout, dlse = q[qs], dout[qs], dlse[qs]
    k, v = _block(k, case), _block(v, case)
    out, lse, dq, dk, dv = _run_view(case, q, k, v, dout, dlse)
    want_out, want_lse, grads = oracle.attention(
        q, k, v, *case.window, rank=case.rank, scale=case.dim**-0.5,
        mask=oracle.view_visible(case.extent, case.views, *case.window), dout=dout, dlse=dlse,
    )  # fmt: skip
    _check_forward(case, out, lse, want_out, want_lse)
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), grads[:3]):
        _check_grad(case, name, got, want)


@pytest.mark.parametrize("strategy", ["halo", "heads"])
def test_sharded_over_two_devices_runs_the_kernels_on_views(strategy):
    """Halo exchange: each device runs the kernels on its view. strategy="heads": on the whole
    axis for its head (all-to-all)."""
    devices = jax.devices("cpu")[:2] if ON_CPU else jax.devices("gpu")
    if len(devices) < 2:
        pytest.skip(f"needs 2 devices, found {len(devices)}")
    mesh = jax.sharding.Mesh(np.asarray(devices[:2]), ("t",))
    # HunyuanVideo's time axis (30 frames, window 18, stride 16: frame 15 belongs to stride
    # group 0, so device 0 computes frames 0-15 and device 1 frames 16-29), small frames.
    window = dict(kernel_size=(18, 4, 6), stride=(16, 2, 2))
    rng = np.random.default_rng(0)
    q, k, v = (
        jnp.asarray(rng.standard_normal((1, 30, 8, 16, 2, 128), dtype=np.float32), jnp.bfloat16)
        for _ in range(3)
    )

    def sharded(q, k, v):
        return parallel.gna_sharded(
            q, k, v, **window, mesh=mesh, axis_name="t", return_lse=True,
            implementation=IMPLEMENTATION, strategy=strategy,
        )  # fmt: skip

    def loss(fn):
        return lambda *a: sum(jnp.sum(jnp.sin(x.astype(jnp.float32))) for x in fn(*a))

    split = jax.device_put((q, k, v), NamedSharding(mesh, P(None, "t")))
    forward, backward = jax.jit(sharded), jax.jit(jax.grad(loss(sharded), (0, 1, 2)))
    out, lse = forward(*split)
    grads = backward(*split)
    hlo_fwd = forward.lower(*split).compile().as_text()
    hlo_bwd = backward.lower(*split).compile().as_text()
    for hlo, target in ((hlo_fwd, "jax_gna_fwd"), (hlo_bwd, "jax_gna_bwd")):
        calls = [x for x in hlo.splitlines() if f'custom_call_target="{target}"' in x]
        with_view = [c for c in calls if re.search(VIEW_ATTR, c)]
        if strategy == "halo":
            assert len(with_view) == 2, f"{target}: {len(with_view)} calls with a view (1/device)"
        else:
            assert calls and not with_view and "all-to-all" in hlo, target
        assert "all-gather" not in hlo

    def single(q, k, v):
        return reference.gna(q, k, v, **window, return_lse=True)

    cpu = jax.devices("cpu")[0]
    f32 = [jax.device_put(x.astype(jnp.float32), cpu) for x in (q, k, v)]
    with jax.default_device(cpu):
        want_out, want_lse = jax.jit(single)(*f32)
        want_grads = jax.jit(jax.grad(loss(single), (0, 1, 2)))(*f32)
    np.testing.assert_allclose(np.asarray(out, np.float32), want_out, atol=2.5e-2, rtol=2.5e-2)
    np.testing.assert_allclose(np.asarray(lse), want_lse, atol=LSE_TOL, rtol=LSE_TOL)
    case = Case(0, (30, 8, 16), (), (), 2, 2, 128, jnp.bfloat16)
    for name, got, want in zip(("dq", "dk", "dv"), grads, want_grads):
        _check_grad(case, name, np.asarray(got, np.float32), np.asarray(want))
