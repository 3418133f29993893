"""implementation="cuda" with a non-finite query, key or value entry: the forward's outputs and
LSE are non-finite exactly where the reference's are, and match it elsewhere.

The kernels multiply masked probabilities by whole KV tiles (``0 * nan = nan``), then check
every row in their epilogue and recompute, key by key over its own window, each row that came
out non-finite (cuda/common/exact_row.h). So a value reaches exactly the queries whose window
holds it, in its channel; a query or key the whole row and its LSE (`tests/test_nonfinite.py`
states the rule; `tests/test_exact_row.py` checks the recomputation on the host). Both the
16-bit and the FP8 kernels. The gradients are held to less: a bad entry stays within its batch
entry and its (kv) head. Run with ``python -m pytest -m gpu tests/gpu/test_cuda_nonfinite.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _extension, reference
from tests import oracle
from tests.gpu.test_cuda_fwd import _oracle
from tests.gpu.test_cuda_window_of_one import _skip_reason

pytestmark = pytest.mark.gpu


_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]

f32 = jnp.float32
TOL = 2.5e-2  # bf16 (`test_cuda_fwd`)
# [B=2, 16, 20, H=4, D=128] bf16, GQA (2 kv heads); stride, dilation, causality.
SPATIAL = (16, 20)
WINDOW = dict(kernel_size=(5, 7), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
HEADS, KV_HEADS, DIM = 4, 2, 128
BAD = (1, 7, 9, 1, 5)  # batch, x, y, kv head, channel
# The query heads that read kv head BAD[3].
BAD_HEADS = np.arange(HEADS) // (HEADS // KV_HEADS) == BAD[3]


def _inputs(name: str | None):
    """bf16 q, k, v with a nan at BAD in the key (`name` "key") or value ("value"), or none."""
    rng = np.random.default_rng(0)

    def normal(heads):
        return jnp.asarray(rng.standard_normal((2, *SPATIAL, heads, DIM)), jnp.bfloat16)

    q, k, v = normal(HEADS), normal(KV_HEADS), normal(KV_HEADS)
    if name == "key":
        k = k.at[BAD].set(jnp.nan)
    elif name == "value":
        v = v.at[BAD].set(jnp.nan)
    why = jax_gna.supported_implementations(q, k, v, **WINDOW)["cuda"]
    if why is not None:
        pytest.skip(f"the CUDA kernels refuse this problem: {why}")
    return q, k, v


def _other(shape_heads: int, heads_hit: np.ndarray) -> np.ndarray:
    """[B, X, Y, heads] True outside the bad batch entry's heads `heads_hit`."""
    other = np.ones((2, *SPATIAL, shape_heads), bool)
    other[BAD[0]] = ~heads_hit
    return other


def _sees_bad() -> np.ndarray:
    """[X, Y] queries whose window holds the bad token."""
    flat = BAD[1] * SPATIAL[1] + BAD[2]
    return oracle.visible(SPATIAL, *WINDOW.values())[:, flat].reshape(SPATIAL)


def _assert_same_nonfinite(out, lse, want_out, want_lse, lse_tol=2e-3):
    """Non-finite exactly where the reference is (per output channel, and the LSE), close
    elsewhere."""
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(want_out))
    np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(want_lse))
    fin = np.isfinite(want_out)
    np.testing.assert_allclose(out[fin], want_out[fin], atol=TOL, rtol=TOL)
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[fin], want_lse[fin], atol=lse_tol, rtol=lse_tol)


def _spoiled(name: str, bad: float):
    """Finite float32 q, k, v with `bad` at BAD of `name` (a query: in the first query head of
    kv head BAD[3])."""
    q, k, v = (np.array(x.astype(f32)) for x in _inputs(None))
    head = BAD[3] * (HEADS // KV_HEADS) if name == "query" else BAD[3]
    {"query": q, "key": k, "value": v}[name][(*BAD[:3], head, BAD[4])] = bad
    return q, k, v


def _sees(name: str) -> np.ndarray:
    """[X, Y] queries whose window holds BAD (a query: that query alone)."""
    if name != "query":
        return _sees_bad()
    return np.arange(np.prod(SPATIAL)).reshape(SPATIAL) == BAD[1] * SPATIAL[1] + BAD[2]


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name", ["query", "key", "value"])
def test_a_nonfinite_entry_reaches_exactly_the_queries_that_see_it(name, bad):
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _spoiled(name, bad))
    out, lse = jax_gna.gna(q, k, v, **WINDOW, implementation="cuda", return_lse=True)
    out, lse = np.asarray(out.astype(f32)), np.asarray(lse)
    want_out, want_lse = (np.asarray(x) for x in _oracle(q, k, v, **WINDOW, return_lse=True))
    _assert_same_nonfinite(out, lse, want_out, want_lse)
    # A nan reaches the queries that see it (for a query: itself), no others. (An infinite
    # key may give some of them a score of -inf, which leaves them finite.)
    rows = ~np.isfinite(out).all(axis=-1)  # [B, X, Y, H]
    assert not rows[1 - BAD[0]].any()
    if np.isnan(bad):
        assert rows[BAD[0]].any(axis=-1).sum() == _sees(name).sum()
    if name == "value":  # one channel only
        assert (~np.isfinite(out)).sum(axis=-1).max() == 1


@pytest.mark.parametrize("name", ["query", "key", "value"])
def test_fp8_a_nan_reaches_exactly_the_queries_that_see_it(name):
    fp8 = jnp.float8_e4m3fn
    if not any(k["dtype"] == "float8_e4m3fn" for k in _extension.built_cuda_kernels()):
        pytest.skip("this build has no FP8 forward kernels (JAX_GNA_KERNEL_SET=full builds them)")
    q8, k8, v8 = (jnp.asarray(x, fp8) for x in _spoiled(name, np.nan))
    descale = dict(q_descale=jnp.float32(0.5), k_descale=jnp.float32(0.75),
                   v_descale=jnp.float32(1.5))  # fmt: skip
    out, lse = jax_gna.gna(q8, k8, v8, **WINDOW, **descale, out_dtype=f32, implementation="cuda",
                           return_lse=True)  # fmt: skip
    out, lse = np.asarray(out), np.asarray(lse)
    dq, dk, dv = (x.astype(f32) * d for x, d in zip((q8, k8, v8), descale.values()))
    want_out, want_lse = (np.asarray(x) for x in _oracle(dq, dk, dv, **WINDOW, return_lse=True))
    # FP8's tolerance (tests/gpu/test_cuda_fp8.py): 2^-4 max|v| + the window's subnormal term.
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(want_out))
    np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(want_lse))
    fin = np.isfinite(want_out)
    vmax = float(np.nanmax(np.abs(np.asarray(dv))))
    np.testing.assert_allclose(out[fin], want_out[fin], atol=0.08 * vmax, rtol=0)
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[fin], want_lse[fin], atol=2e-3, rtol=2e-3)
    rows = ~np.isfinite(out).all(axis=-1)
    assert rows[BAD[0]].any(axis=-1).sum() == _sees(name).sum()
    assert not rows[1 - BAD[0]].any()


@pytest.mark.parametrize("name", ["key", "value"])
def test_gradients_of_other_entries_and_heads_stay_finite(name):
    """A loss over every output: the gradients of the other batch entry and of the heads that
    do not read the bad kv head are finite and match the reference's."""
    q, k, v = _inputs(name)
    dout = jnp.asarray(np.random.default_rng(1).standard_normal((2, *SPATIAL, HEADS, DIM)), f32)

    def loss(attend):
        def total(q, k, v, dout):
            return jnp.sum(attend(q, k, v, **WINDOW).astype(f32) * dout)

        return jax.jit(jax.grad(total, argnums=(0, 1, 2)))

    def cuda(*args, **kwargs):
        return jax_gna.gna(*args, **kwargs, implementation="cuda")

    got = loss(cuda)(q, k, v, dout)
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        want = loss(reference.gna)(*(jax.device_put(x, cpu).astype(f32) for x in (q, k, v, dout)))
    others = (_other(HEADS, BAD_HEADS), *[_other(KV_HEADS, np.arange(KV_HEADS) == BAD[3])] * 2)
    for what, g, w, other in zip(("dq", "dk", "dv"), got, want, others):
        g, w = np.asarray(g.astype(f32))[other], np.asarray(w)[other]
        assert np.isfinite(w).all()
        assert np.isfinite(g).all(), f"{what}: the nan left its batch entry and head"
        # The bound of `test_cuda_bwd` for bf16: 0.2 rms + 2^-7 |want|.
        rms = float(np.sqrt(np.mean(w**2)))
        assert (np.abs(g - w) <= 0.2 * rms + 2**-7 * np.abs(w)).all(), what
