"""``out_dtype``: the dtype of ``out`` on every implementation here (against the float64 oracle),
float8 inputs, context parallelism, gradients through the cast (against the reference) and the
argument rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

import jax_gna
from jax_gna import _extension, parallel, reference
from tests import oracle

IMPLEMENTATIONS = ["reference", "xla"] + (["cpu"] if _extension.ext is not None else [])

CASES = [
    # spatial, kernel, stride, dilation, causal, heads, kv_heads, batch, extra tokens
    ((13,), (3,), (1,), (3,), (False,), 4, 2, (2,), 0),
    ((9,), (4,), (2,), (1,), (True,), 2, 2, (), 3),
    ((5, 7), (3, 3), (1, 2), (1, 2), (False, True), 4, 1, (1, 2), 2),
]

# (input dtype, out_dtype): wider, narrower and sideways.
DTYPES = [
    (jnp.bfloat16, jnp.float32),
    (jnp.float16, jnp.float32),
    (jnp.float32, jnp.bfloat16),
    (jnp.bfloat16, jnp.float16),
    (jnp.float32, jnp.float32),
]
# A float32 ``out`` is rounded once, from float32: as exact as a float32 call. The others hold
# one rounding to their own precision.
TOL = {
    jnp.float32: dict(atol=2e-5, rtol=2e-5),
    jnp.float16: dict(atol=2e-3, rtol=2e-3),
    jnp.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def _arrays(case, dtype, seed=0):
    spatial, _, _, _, _, heads, kv_heads, batch, extra = case
    rng = np.random.default_rng(seed)

    def make(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(dtype)

    q = make(*batch, *spatial, heads, 8)
    k = make(*batch, *spatial, kv_heads, 8)
    v = make(*batch, *spatial, kv_heads, 6)
    ek = make(*batch, extra, kv_heads, 8) if extra else None
    ev = make(*batch, extra, kv_heads, 6) if extra else None
    return q, k, v, ek, ev


def _window(case):
    _, ks, st, dl, ca, *_ = case
    return dict(kernel_size=ks, stride=st, dilation=dl, is_causal=ca)


def _f64(x):
    return None if x is None else np.asarray(x.astype(jnp.float32), np.float64)


@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda d: f"{jnp.dtype(d[0])}-{jnp.dtype(d[1])}")
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c[0])}d-extra{c[-1]}")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_out_dtype_matches_the_oracle(implementation, case, dtypes):
    dtype, out_dtype = dtypes
    q, k, v, ek, ev = _arrays(case, dtype)
    window = _window(case)
    out, lse = jax_gna.gna(
        q, k, v, **window, additional_keys=ek, additional_values=ev,
        out_dtype=out_dtype, return_lse=True, implementation=implementation,
    )  # fmt: skip
    want_out, want_lse = oracle.attention(
        _f64(q), _f64(k), _f64(v), *window.values(), rank=len(case[0]),
        extra_k=_f64(ek), extra_v=_f64(ev),
    )  # fmt: skip
    assert out.dtype == out_dtype and lse.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out, np.float64), want_out, **TOL[out_dtype])
    np.testing.assert_allclose(lse, want_lse, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtypes", DTYPES[:3], ids=lambda d: f"{jnp.dtype(d[0])}-{jnp.dtype(d[1])}")
def test_reference_takes_out_dtype(dtypes):
    dtype, out_dtype = dtypes
    case = CASES[2]
    q, k, v, ek, ev = _arrays(case, dtype, seed=1)
    window = _window(case)
    out = reference.gna(
        q, k, v, **window, additional_keys=ek, additional_values=ev, out_dtype=out_dtype
    )
    want, _ = oracle.attention(
        _f64(q), _f64(k), _f64(v), *window.values(), rank=2, extra_k=_f64(ek), extra_v=_f64(ev)
    )
    assert out.dtype == out_dtype
    np.testing.assert_allclose(np.asarray(out, np.float64), want, **TOL[out_dtype])


@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("implementation", [None, "xla", "reference"])
def test_fp8_out_dtype(implementation, out_dtype):
    """Float8 inputs are attended in float32: ``out_dtype`` rounds that result once."""
    rng = np.random.default_rng(2)
    q, k, v = (
        jnp.asarray(rng.standard_normal((2, 9, 2, 8)), jnp.float32).astype(jnp.float8_e4m3fn)
        for _ in range(3)
    )
    descales = dict(q_descale=0.5, k_descale=jnp.asarray([1.0, 2.0], jnp.float32))
    out = jax_gna.na1d(q, k, v, 3, **descales, out_dtype=out_dtype, implementation=implementation)
    qd, kd, vd = _f64(q) * 0.5, _f64(k) * np.asarray([1.0, 2.0])[:, None], _f64(v)
    want, _ = oracle.attention(qd, kd, vd, 3, rank=1)
    assert out.dtype == out_dtype
    np.testing.assert_allclose(np.asarray(out, np.float64), want, **TOL[out_dtype])
    # The default stays bfloat16.
    assert jax_gna.na1d(q, k, v, 3, **descales, implementation=implementation).dtype == (
        jnp.bfloat16
    )


@pytest.mark.parametrize("strategy", ["halo", "heads"])
def test_gna_sharded_takes_out_dtype(strategy):
    """The shards compute in float32 too (one rounding): results equal one device's."""
    case = ((5, 7), (3, 3), (1, 2), (1, 2), (False, True), 4, 2, (1, 2), 2)
    q, k, v, ek, ev = _arrays(case, jnp.bfloat16, seed=3)
    window = _window(case)
    mesh = jax.make_mesh((2,), ("x",), axis_types=(AxisType.Auto,))
    kv = dict(additional_keys=ek, additional_values=ev)
    out = parallel.gna_sharded(
        q, k, v, **window, **kv, mesh=mesh, axis_name="x", spatial_axis=1, strategy=strategy,
        out_dtype=jnp.float32, implementation="xla",
    )  # fmt: skip
    want = jax_gna.gna(q, k, v, **window, **kv, out_dtype=jnp.float32, implementation="xla")
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, want, atol=1e-6, rtol=1e-6)


def test_empty_batch_has_the_out_dtype():
    q = jnp.zeros((0, 9, 2, 8), jnp.bfloat16)
    out = jax_gna.na1d(q, q, q, 3, out_dtype=jnp.float32)
    assert out.shape == (0, 9, 2, 8) and out.dtype == jnp.float32


# -- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtypes", DTYPES[:4], ids=lambda d: f"{jnp.dtype(d[0])}-{jnp.dtype(d[1])}")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradients_flow_through_the_cast(implementation, dtypes):
    """The cast to ``out_dtype`` is part of the call: its VJP brings the cotangent back to the
    dtype the implementation wrote, and the input gradients are in the inputs' dtypes."""
    dtype, out_dtype = dtypes
    case = CASES[2]
    q, k, v, ek, ev = _arrays(case, dtype, seed=4)
    window = _window(case)
    weights = jnp.asarray(np.random.default_rng(5).standard_normal((*q.shape[:-1], 6)), jnp.float32)

    def loss(attention):
        def f(q, k, v, ek, ev):
            out = attention(q, k, v, **window, additional_keys=ek, additional_values=ev)
            assert out.dtype == out_dtype
            return jnp.sum(out.astype(jnp.float32) * weights)

        return f

    def ours(*args, **kw):
        return jax_gna.gna(*args, **kw, out_dtype=out_dtype, implementation=implementation)

    def theirs(q, k, v, additional_keys, additional_values, **kw):  # float32, same values
        q, k, v, ek, ev = (
            x.astype(jnp.float32) for x in (q, k, v, additional_keys, additional_values)
        )
        out = reference.gna(q, k, v, additional_keys=ek, additional_values=ev, **kw)
        return out.astype(out_dtype)

    got = jax.grad(loss(ours), argnums=(0, 1, 2, 3, 4))(q, k, v, ek, ev)
    want = jax.grad(loss(theirs), argnums=(0, 1, 2, 3, 4))(q, k, v, ek, ev)
    for g, w, x in zip(got, want, (q, k, v, ek, ev)):
        assert g.dtype == x.dtype
        tol = 2e-2 if dtype == jnp.bfloat16 else 2e-3
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=tol)


# -- rules ------------------------------------------------------------------------------------


def _entries():
    mesh = jax.make_mesh((1,), ("x",))
    return {
        "gna": jax_gna.gna,
        "na1d": jax_gna.na1d,
        "reference": reference.gna,
        "gna_sharded": lambda *a, **kw: parallel.gna_sharded(*a, mesh=mesh, axis_name="x", **kw),
    }


@pytest.mark.parametrize("entry", ["gna", "na1d", "reference", "gna_sharded"])
@pytest.mark.parametrize("fp8_inputs", [False, True])
@pytest.mark.parametrize("fp8_out", [jnp.float8_e4m3fn, "float8_e5m2"])
def test_float8_out_dtype_is_refused(entry, fp8_inputs, fp8_out):
    q = jnp.ones((9, 2, 8), jnp.float8_e4m3fn if fp8_inputs else jnp.bfloat16)
    with pytest.raises(NotImplementedError, match="`out_dtype`.*FP8 output is not supported"):
        _entries()[entry](q, q, q, 3, out_dtype=fp8_out)


@pytest.mark.parametrize("entry", ["gna", "reference", "gna_sharded"])
@pytest.mark.parametrize("bad", [jnp.int32, "uint8", bool, True, 3, "float", "nonsense"])
def test_non_floating_out_dtype_is_refused(entry, bad):
    q = jnp.ones((9, 2, 8), jnp.float32)
    if bad == "float":  # numpy reads it as float64: allowed
        assert _entries()[entry](q, q, q, 3, out_dtype=bad).dtype == jnp.float32
        return
    with pytest.raises(TypeError, match="`out_dtype` must be None or a floating-point dtype"):
        _entries()[entry](q, q, q, 3, out_dtype=bad)


def test_an_array_is_not_an_out_dtype():
    q = jnp.ones((9, 2, 8), jnp.float32)
    with pytest.raises(TypeError, match="`out_dtype` must be None or a floating-point dtype"):
        jax_gna.gna(q, q, q, 3, out_dtype=q)
