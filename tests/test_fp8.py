"""Float8 query/key/value with descales: the ``xla`` and ``reference`` implementations against
the float64 oracle on the dequantised inputs, the argument rules, forward only, and which
implementation runs them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _implementations, parallel, reference
from jax_gna._params import make_params
from tests import oracle

FP8 = (jnp.float8_e4m3fn, jnp.float8_e5m2)
# The output is bfloat16 (8 bits of mantissa); the lse is float32 from float32 inputs.
OUT_TOL = dict(atol=2e-2, rtol=2e-2)
LSE_TOL = dict(atol=1e-4, rtol=1e-4)


def _fp8(rng, shape, dtype):
    return jnp.asarray(rng.standard_normal(shape) * 2, jnp.float32).astype(dtype)


def _descale(rng, kind, heads):
    if kind is None:
        return None
    if kind == "tensor":
        return jnp.float32(rng.uniform(0.25, 2))
    return jnp.asarray(rng.uniform(0.25, 2, heads), jnp.float32)


def _dequantized(x, descale):
    """float64 ``x * descale`` (per head on the heads axis), the values attention must see."""
    x = np.asarray(x.astype(jnp.float32), np.float64)
    if descale is None:
        return x
    d = np.asarray(descale, np.float64)
    return x * (d[:, None] if d.ndim else d)


CASES = [
    # spatial, kernel, stride, dilation, causal, heads, kv_heads, batch, extra tokens
    ((11,), (3,), (1,), (2,), (False,), 4, 2, (2,), 0),
    ((9,), (4,), (2,), (1,), (True,), 2, 2, (), 3),
    ((5, 7), (3, 3), (1, 2), (1, 2), (False, True), 4, 1, (1, 2), 2),
    ((4, 5, 6), (2, 3, 3), (1, 1, 2), (2, 1, 1), (True, False, False), 2, 1, (1,), 0),
]


@pytest.mark.parametrize("dtype", FP8, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("descales", [None, "tensor", "head"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c[0])}d")
@pytest.mark.parametrize("implementation", [None, "xla", "reference"])
def test_fp8_matches_the_oracle_on_dequantized_inputs(case, descales, dtype, implementation):
    spatial, ks, st, dl, ca, heads, kv_heads, batch, extra = case
    rng = np.random.default_rng(len(spatial) + heads)
    q = _fp8(rng, (*batch, *spatial, heads, 8), dtype)
    k = _fp8(rng, (*batch, *spatial, kv_heads, 8), dtype)
    v = _fp8(rng, (*batch, *spatial, kv_heads, 6), dtype)
    ek = _fp8(rng, (*batch, extra, kv_heads, 8), dtype) if extra else None
    ev = _fp8(rng, (*batch, extra, kv_heads, 6), dtype) if extra else None
    qd, kd, vd = (_descale(rng, descales, n) for n in (heads, kv_heads, kv_heads))
    window = dict(kernel_size=ks, stride=st, dilation=dl, is_causal=ca)
    fp8 = dict(q_descale=qd, k_descale=kd, v_descale=vd, additional_keys=ek, additional_values=ev)
    if implementation == "reference":
        out, lse = reference.gna(q, k, v, **window, **fp8, return_lse=True)
    else:
        out, lse = jax_gna.gna(
            q, k, v, **window, **fp8, return_lse=True, implementation=implementation
        )
    want_out, want_lse = oracle.attention(
        _dequantized(q, qd),
        _dequantized(k, kd),
        _dequantized(v, vd),
        ks,
        st,
        dl,
        ca,
        rank=len(spatial),
        extra_k=None if ek is None else _dequantized(ek, kd),
        extra_v=None if ev is None else _dequantized(ev, vd),
    )
    assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out, np.float64), want_out, **OUT_TOL)
    np.testing.assert_allclose(lse, want_lse, **LSE_TOL)


def test_fp8_runs_under_jit_with_traced_descales():
    rng = np.random.default_rng(0)
    q, k, v = (_fp8(rng, (2, 9, 2, 8), jnp.float8_e4m3fn) for _ in range(3))
    d = jnp.asarray([0.5, 2.0], jnp.float32)
    f = jax.jit(lambda q, k, v, d: jax_gna.na1d(q, k, v, 3, q_descale=d, v_descale=d[0]))
    want = reference.gna(q, k, v, (3,), q_descale=d, v_descale=d[0])
    np.testing.assert_allclose(
        np.asarray(f(q, k, v, d), np.float32), np.asarray(want, np.float32), atol=1e-2
    )


def test_gna_sharded_takes_fp8_without_a_split():
    """One device: the sharded entry point runs float8 as `gna` does."""
    rng = np.random.default_rng(1)
    q, k, v = (_fp8(rng, (1, 8, 2, 8), jnp.float8_e5m2) for _ in range(3))
    mesh = jax.make_mesh((1,), ("x",))
    out = parallel.gna_sharded(q, k, v, (3,), mesh=mesh, axis_name="x", k_descale=0.5)
    want = reference.gna(q, k, v, (3,), k_descale=0.5)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32), atol=1e-2)


# -- rules ------------------------------------------------------------------------------------


def _qkv(dtype=jnp.float8_e4m3fn, heads=4, kv_heads=2):
    rng = np.random.default_rng(2)
    return (
        _fp8(rng, (9, heads, 8), dtype),
        _fp8(rng, (9, kv_heads, 8), dtype),
        _fp8(rng, (9, kv_heads, 8), dtype),
    )


@pytest.mark.parametrize("entry", [jax_gna.gna, reference.gna])
def test_fp8_mixed_with_other_dtypes_is_refused(entry):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="one float8 dtype.*float8_e4m3fn, bfloat16"):
        entry(q, k.astype(jnp.bfloat16), v, 3)
    with pytest.raises(TypeError, match="one float8 dtype"):
        entry(q, k, v.astype(jnp.float8_e5m2), 3)


@pytest.mark.parametrize("name", ["q_descale", "k_descale", "v_descale"])
def test_descales_of_non_fp8_inputs_are_refused(name):
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
    with pytest.raises(TypeError, match=f"`{name}` applies to float8 inputs only"):
        jax_gna.gna(q, k, v, 3, **{name: 1.0})
    with pytest.raises(TypeError, match=f"`{name}` applies to float8 inputs only"):
        reference.gna(q, k, v, 3, **{name: 1.0})


@pytest.mark.parametrize(
    "name, bad, error, match",
    [
        ("q_descale", jnp.ones(2, jnp.float32), ValueError, r"shape \(4,\).*query heads"),
        ("k_descale", jnp.ones(4, jnp.float32), ValueError, r"shape \(2,\).*key/value heads"),
        ("v_descale", jnp.ones((1, 2), jnp.float32), ValueError, "got shape"),
        ("q_descale", jnp.ones(4, jnp.bfloat16), TypeError, "got dtype bfloat16"),
        ("k_descale", True, TypeError, "float32 scalar"),
        ("v_descale", "1", TypeError, "float32 scalar"),
        ("q_descale", float("nan"), ValueError, "must be finite"),
        ("k_descale", jnp.asarray([1.0, jnp.inf], jnp.float32), ValueError, "must be finite"),
    ],
)
def test_bad_descales_are_refused(name, bad, error, match):
    q, k, v = _qkv()
    with pytest.raises(error, match=f"`{name}`.*{match}"):
        jax_gna.gna(q, k, v, 3, **{name: bad})


def test_python_and_numpy_scalars_are_per_tensor_descales():
    q, k, v = _qkv()
    want = jax_gna.gna(q, k, v, 3, q_descale=jnp.float32(0.5), k_descale=jnp.float32(2))
    for half, two in ((0.5, 2), (np.float64(0.5), np.float32(2))):
        np.testing.assert_array_equal(jax_gna.gna(q, k, v, 3, q_descale=half, k_descale=two), want)


def test_extra_tokens_must_share_the_fp8_dtype():
    q, k, v = _qkv()
    extra = jnp.zeros((2, 2, 8), jnp.bfloat16)
    with pytest.raises(TypeError, match="`additional_keys` must have dtype float8_e4m3fn"):
        jax_gna.gna(q, k, v, 3, additional_keys=extra, additional_values=extra)


# -- forward only -----------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [jax_gna.gna, reference.gna])
def test_differentiating_fp8_attention_raises(entry):
    q, k, v = _qkv()
    q = q.astype(jnp.float32)

    def loss(q, d):
        out = entry(q.astype(jnp.float8_e4m3fn), k, v, 3, q_descale=d)
        return out.astype(jnp.float32).sum()

    with pytest.raises(NotImplementedError, match="FP8 attention is forward only.*bf16/fp16"):
        jax.grad(loss)(q, jnp.float32(1))
    with pytest.raises(NotImplementedError, match="forward only"):
        jax.grad(loss, argnums=1)(q, jnp.float32(1))
    with pytest.raises(NotImplementedError, match="forward only"):
        jax.vjp(jax.jit(loss), q, jnp.float32(1))


def test_fp8_inputs_without_gradients_run_under_grad():
    """Only derivatives through the float8 call raise: a loss that differentiates something
    else (float8 inputs held constant) runs."""
    q, k, v = _qkv()

    def loss(w):
        return (w * jax_gna.gna(q, k, v, 3).astype(jnp.float32)).sum()

    assert jax.grad(loss)(jnp.float32(2)).dtype == jnp.float32


# -- implementations --------------------------------------------------------------------------


def test_fp8_picks_xla_and_the_kernels_say_why_not():
    """Without a GPU: the CUDA FP8 forward takes float8_e4m3fn (its refusal is then the
    build's or the GPU's, never the dtype), float8_e5m2 it refuses by dtype."""
    q, k, v = _qkv()
    params = make_params(q, k, v, 3)
    assert _implementations.select(None, q, k, v, params).name == "xla"
    reason = _implementations.CUDA.refusal(q, k, v, params)
    assert reason is not None and "float8" not in reason
    q5, k5, v5 = _qkv(jnp.float8_e5m2)
    e5m2 = _implementations.CUDA.why_not(q5, k5, v5, make_params(q5, k5, v5, 3))
    assert e5m2.startswith("the FP8 kernels take float8_e4m3fn only")
    assert "not float8" in _implementations.CPU.why_not(q, k, v, params)
    supported = jax_gna.supported_implementations(q, k, v, 3)
    assert supported["xla"] is None and supported["reference"] is None
    assert "float8" in supported["cpu"]
    with pytest.raises(NotImplementedError, match="implementation='cpu'.*not float8"):
        jax_gna.gna(q, k, v, 3, implementation="cpu")


def test_fp8_with_tile_shapes_and_no_implementation_runs_xla():
    """Tile shapes belong to the CUDA kernels, which refuse float8: None drops them."""
    q, k, v = _qkv()
    out = jax_gna.gna(q, k, v, 3, q_tile_shape=4, kv_tile_shape=4)
    np.testing.assert_array_equal(out, jax_gna.gna(q, k, v, 3))


# -- Flax -------------------------------------------------------------------------------------


def _relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() / np.abs(want).max()


# Observed on these layers: 4.3% (e4m3fn, 3 mantissa bits) and 7.2% (e5m2, 2 bits) of the
# largest output, with per-tensor scales.
FLAX_TOL = {jnp.float8_e4m3fn: 0.08, jnp.float8_e5m2: 0.14}


@pytest.mark.parametrize("dtype", FP8, ids=lambda d: jnp.dtype(d).name)
def test_nnx_layer_with_fp8_is_close_to_the_layer_without(dtype):
    from flax import nnx

    from jax_gna.nnx import NeighborhoodAttention

    x = jax.random.normal(jax.random.key(0), (2, 6, 7, 16))
    context = jax.random.normal(jax.random.key(1), (2, 3, 16))

    def layer(**kw):
        return NeighborhoodAttention(4, 16, (3, 3), num_kv_heads=2, rngs=nnx.Rngs(0), **kw)

    want = layer()(x, context=context)
    got = layer(fp8_dtype=dtype)(x, context=context)
    assert _relative_error(got, want) < FLAX_TOL[dtype]

    def loss(model):
        return model(x).sum()

    with pytest.raises(NotImplementedError, match="forward only"):
        nnx.grad(loss)(layer(fp8_dtype=dtype))


@pytest.mark.parametrize("dtype", FP8, ids=lambda d: jnp.dtype(d).name)
def test_linen_layer_with_fp8_is_close_to_the_layer_without(dtype):
    from jax_gna.linen import NeighborhoodAttention

    x = jax.random.normal(jax.random.key(2), (1, 9, 8, 16))
    plain = NeighborhoodAttention(num_heads=2, kernel_size=(3, 5), dilation=(2, 1))
    fp8 = NeighborhoodAttention(num_heads=2, kernel_size=(3, 5), dilation=(2, 1), fp8_dtype=dtype)
    params = plain.init(jax.random.key(3), x)
    assert _relative_error(fp8.apply(params, x), plain.apply(params, x)) < FLAX_TOL[dtype]
    with pytest.raises(NotImplementedError, match="forward only"):
        jax.grad(lambda p: fp8.apply(p, x).sum())(params)


@pytest.mark.parametrize("bad", [jnp.bfloat16, "int8", True])
def test_flax_fp8_dtype_must_be_a_float8_dtype(bad):
    from flax import nnx

    from jax_gna.nnx import NeighborhoodAttention

    with pytest.raises(TypeError, match="`fp8_dtype` must be None or one of float8_e4m3fn"):
        NeighborhoodAttention(2, 8, (3,), fp8_dtype=bad, rngs=nnx.Rngs(0))


# -- make_attention_fn ------------------------------------------------------------------------


def _through_fp8(x, dtype):
    """``x`` quantised to `dtype` with a per-tensor scale and read back (float32): the values
    the attention must see."""
    x = x.astype(jnp.float32)
    largest = float(jnp.finfo(dtype).max)
    descale = jnp.max(jnp.abs(x)) / largest
    return jnp.clip(x / descale, -largest, largest).astype(dtype).astype(jnp.float32) * descale


def _reference_on_fp8_values(dtype, kernel_size):
    """An ``attention_fn`` for Flax's layers: `reference.gna` on the quantised-and-read-back
    query, key and value, in the inputs' dtype."""

    def attention_fn(query, key, value, **kwargs):
        q, k, v = (_through_fp8(x, dtype) for x in (query, key, value))
        return reference.gna(q, k, v, kernel_size).astype(query.dtype)

    return attention_fn


@pytest.mark.parametrize("dtype", FP8, ids=lambda d: jnp.dtype(d).name)
def test_attention_fn_with_fp8_matches_the_reference_on_quantised_inputs(dtype):
    from jax_gna.nnx import make_attention_fn

    fn = make_attention_fn((3, 3), fp8_dtype=dtype, spatial_dims=2)
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((2, 5, 7, 4, 8)) * 3, jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 5, 7, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 5, 7, 2, 6)), jnp.float32)
    for dt in (jnp.float32, jnp.bfloat16):  # the result keeps the inputs' (Flax's) dtype
        got = fn(q, k, v, dtype=dt)
        want = _reference_on_fp8_values(dtype, (3, 3))(*(x.astype(dt) for x in (q, k, v)))
        assert got.dtype == dt
        np.testing.assert_allclose(
            np.asarray(got, np.float32), np.asarray(want, np.float32), **OUT_TOL
        )
    with pytest.raises(NotImplementedError, match="forward only"):
        jax.grad(lambda q: fn(q, k, v).sum())(q)


@pytest.mark.parametrize("dtype", FP8, ids=lambda d: jnp.dtype(d).name)
def test_nnx_multi_head_attention_with_fp8_attention_fn(dtype):
    from flax import nnx

    from jax_gna.nnx import make_attention_fn

    def layer(attention_fn):
        return nnx.MultiHeadAttention(
            4, 16, num_kv_heads=2, decode=False, rngs=nnx.Rngs(0), attention_fn=attention_fn
        )

    x = jax.random.normal(jax.random.key(4), (2, 6, 7, 16))
    ours = layer(make_attention_fn((3, 3), fp8_dtype=dtype))
    want = layer(_reference_on_fp8_values(dtype, (3, 3)))(x)
    got = ours(x)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, **OUT_TOL)
    with pytest.raises(NotImplementedError, match="forward only"):
        nnx.grad(lambda m: m(x).sum())(ours)


@pytest.mark.parametrize("dtype", FP8, ids=lambda d: jnp.dtype(d).name)
def test_linen_multi_head_attention_with_fp8_attention_fn(dtype):
    import flax.linen as nn

    from jax_gna.linen import make_attention_fn

    def layer(attention_fn):
        return nn.MultiHeadDotProductAttention(2, attention_fn=attention_fn)

    x = jax.random.normal(jax.random.key(5), (1, 9, 8, 16))
    ours = layer(make_attention_fn((3, 5), fp8_dtype=dtype))
    theirs = layer(_reference_on_fp8_values(dtype, (3, 5)))
    params = theirs.init(jax.random.key(6), x)
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), **OUT_TOL)
    with pytest.raises(NotImplementedError, match="forward only"):
        jax.grad(lambda p: ours.apply(p, x).sum())(params)


@pytest.mark.parametrize("bad", [jnp.bfloat16, "int8", True])
def test_attention_fn_fp8_dtype_must_be_a_float8_dtype(bad):
    from jax_gna.nnx import make_attention_fn

    with pytest.raises(TypeError, match="`fp8_dtype` must be None or one of float8_e4m3fn"):
        make_attention_fn((3,), fp8_dtype=bad)
