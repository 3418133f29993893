"""jax_gna.linen.NeighborhoodAttention against flax.linen.MultiHeadDotProductAttention (a window
covering the whole grid is dense attention) and against its NNX twin with the same parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_gna.linen
import jax_gna.nnx
from jax_gna.linen import NeighborhoodAttention
from tests.flax_signatures import missing_or_different

F = 16  # input features


def _x(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _init(module, x, **kw):
    return jax.jit(module.init)(jax.random.key(0), x, **kw)


def _apply(module, variables, *args, **kw):
    """module.apply under jax.jit (eager dispatch is several times slower on a CPU)."""
    return jax.jit(module.apply)(variables, *args, **kw)


SETTINGS = {
    "plain": dict(num_heads=4),
    "qkv_out_features": dict(num_heads=2, qkv_features=8, out_features=12),
    "normalize_qk_no_bias": dict(num_heads=2, normalize_qk=True, use_bias=False),
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS)
def test_parameters_match_multi_head_dot_product_attention(settings):
    x = _x((2, 5, 5, F))
    key = jax.random.key(0)
    ours = jax.eval_shape(NeighborhoodAttention(kernel_size=(3, 3), **settings).init, key, x)
    theirs = jax.eval_shape(nn.MultiHeadDotProductAttention(**settings).init, key, x[:, 0])
    assert ours == theirs


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS)
def test_window_covering_the_grid_equals_multi_head_dot_product_attention(settings):
    x = _x((2, 3, 5, F))
    variables = _init(NeighborhoodAttention(kernel_size=(3, 5), **settings), x)
    ours = _apply(NeighborhoodAttention(kernel_size=(3, 5), **settings), variables, x)
    theirs = _apply(nn.MultiHeadDotProductAttention(**settings), variables, x.reshape(2, 15, F))
    np.testing.assert_allclose(ours, theirs.reshape(ours.shape), rtol=2e-5, atol=2e-5)


TWINS = {  # layer settings, [batch, *spatial], with context tokens
    "2d_gqa_context": (dict(num_heads=4, kernel_size=(3, 3), num_kv_heads=2), (2, 6, 7), True),
    "2d_causal_strided_ln": (
        dict(num_heads=2, kernel_size=(3, 3), stride=(2, 1), is_causal=(True, False)),
        (2, 6, 7),
        False,
    ),
    "1d_bf16_compute": (
        dict(num_heads=2, kernel_size=3, spatial_dims=1, dtype=jnp.bfloat16),
        (3, 9),
        True,
    ),
    "3d_bf16_params_ln": (
        dict(num_heads=2, kernel_size=(2, 3, 3), normalize_qk=True, param_dtype=jnp.bfloat16),
        (1, 3, 4, 5),
        False,
    ),
}


@pytest.mark.parametrize("settings, grid, with_context", TWINS.values(), ids=TWINS)
def test_linen_and_nnx_give_identical_outputs_for_identical_parameters(
    settings, grid, with_context
):
    x = _x(grid + (F,))
    context = _x((grid[0], 4, F), seed=1) if with_context else None
    linen_layer = NeighborhoodAttention(**settings)
    variables = _init(linen_layer, x, context=context)
    nnx_layer = jax_gna.nnx.NeighborhoodAttention(in_features=F, rngs=nnx.Rngs(0), **settings)
    jax.tree.map(
        lambda a, b: np.testing.assert_equal((a.shape, a.dtype), (b.shape, b.dtype)),
        variables["params"],
        nnx.to_pure_dict(nnx.state(nnx_layer, nnx.Param)),
    )
    nnx.update(nnx_layer, variables["params"])
    ours = _apply(linen_layer, variables, x, context=context)
    twin = nnx.jit(lambda m, x, c: m(x, context=c))(nnx_layer, x, context)
    assert ours.dtype == twin.dtype
    np.testing.assert_array_equal(ours, twin)


def test_jit_and_grad_match_multi_head_dot_product_attention():
    x = _x((2, 4, 4, F))
    ours, theirs = NeighborhoodAttention(4, (4, 4)), nn.MultiHeadDotProductAttention(4)
    variables = _init(ours, x)

    def loss(params, module, x):
        return jnp.sum(jnp.sin(module.apply({"params": params}, x)))

    g_ours = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], ours, x)
    g_theirs = jax.grad(loss)(variables["params"], theirs, x.reshape(2, 16, F))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_ours, g_theirs
    )


DTYPES = {
    "bf16_inputs_f32_params": (jnp.bfloat16, None, jnp.float32),
    "bf16_compute": (jnp.float32, jnp.bfloat16, jnp.float32),
    "bf16_params": (jnp.float32, None, jnp.bfloat16),
}


@pytest.mark.parametrize("x_dtype, dtype, param_dtype", DTYPES.values(), ids=DTYPES)
def test_dtype_policy_matches_multi_head_dot_product_attention(x_dtype, dtype, param_dtype):
    x = _x((2, 3, 3, F), dtype=x_dtype)
    kw = dict(num_heads=2, dtype=dtype, param_dtype=param_dtype)
    variables = _init(NeighborhoodAttention(kernel_size=(3, 3), **kw), x)
    assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(param_dtype)}
    ours = _apply(NeighborhoodAttention(kernel_size=(3, 3), **kw), variables, x)
    theirs = _apply(nn.MultiHeadDotProductAttention(**kw), variables, x.reshape(2, 9, F))
    assert ours.dtype == theirs.dtype
    np.testing.assert_allclose(
        ours.astype(np.float32), theirs.reshape(ours.shape).astype(np.float32), atol=0.05
    )


X = _x((2, 5, 5, F))
ERRORS = {
    "attention_fn": (dict(attention_fn=nn.dot_product_attention), {}, "attention_fn="),
    "qk_einsum": (dict(qk_attn_weights_einsum_cls=lambda: jnp.einsum), {}, "qk_attn_weights"),
    "value_einsum": (
        dict(attn_weights_value_einsum_cls=lambda: jnp.einsum),
        {},
        "attn_weights_value",
    ),
    "dropout_rate": (dict(dropout_rate=0.1, deterministic=True), {}, "dropout_rate=0.1"),
    "decode": (dict(decode=True), {}, "decode=True"),
    "mask": ({}, dict(mask=jnp.ones((2, 2, 25, 25), bool)), "mask"),
    "sow_weights": ({}, dict(sow_weights=True), "sow_weights=True"),
}


@pytest.mark.parametrize("fields, call, match", ERRORS.values(), ids=ERRORS)
def test_unsupported_options_raise_naming_the_option(fields, call, match):
    with pytest.raises(NotImplementedError, match=match):
        NeighborhoodAttention(2, (3, 3), **fields).init(jax.random.key(0), X, **call)


def test_tile_shapes_are_checked_and_passed_through():
    variables = _init(NeighborhoodAttention(2, (3, 3)), X)
    tiled = NeighborhoodAttention(2, (3, 3), q_tile_shape=(16, 8), kv_tile_shape=(16, 8))
    # Off the GPU implementation=None ignores them; an explicit other implementation refuses.
    np.testing.assert_array_equal(
        _apply(tiled, variables, X), _apply(NeighborhoodAttention(2, (3, 3)), variables, X)
    )
    xla = NeighborhoodAttention(2, (3, 3), implementation="xla", q_tile_shape=8, kv_tile_shape=8)
    with pytest.raises(NotImplementedError, match="`q_tile_shape`/`kv_tile_shape`"):
        _apply(xla, variables, X)
    with pytest.raises(ValueError, match="`q_tile_shape` and `kv_tile_shape`"):
        _init(NeighborhoodAttention(2, (3, 3), kv_tile_shape=8), X)


def test_deterministic_backward_is_checked_and_passed_through(monkeypatch):
    seen = []
    real_gna = jax_gna._flax_attention.gna

    def spy(*args, deterministic, **kw):
        seen.append(deterministic)
        return real_gna(*args, deterministic=deterministic, **kw)

    variables = _init(NeighborhoodAttention(2, (3, 3)), X)
    monkeypatch.setattr(jax_gna._flax_attention, "gna", spy)
    for value in (None, True, False):
        layer = NeighborhoodAttention(2, (3, 3), deterministic_backward=value, deterministic=True)
        _apply(layer, variables, X)
    assert seen == [None, True, False]
    with pytest.raises(TypeError, match="`deterministic_backward`; expected True"):
        _init(NeighborhoodAttention(2, (3, 3), deterministic_backward=1), X)


def test_int_kernel_size_needs_spatial_dims():
    with pytest.raises(ValueError, match="spatial_dims"):
        _init(NeighborhoodAttention(2, 3), X)


def test_attention_fn_in_multi_head_dot_product_attention_equals_the_layer():
    window = dict(stride=(2, 1), is_causal=(False, True))
    ours = NeighborhoodAttention(2, (3, 3), **window)
    theirs = nn.MultiHeadDotProductAttention(
        2, attention_fn=jax_gna.linen.make_attention_fn((3, 3), **window)
    )
    variables = _init(ours, X)
    np.testing.assert_allclose(_apply(theirs, variables, X), _apply(ours, variables, X), atol=1e-6)
    with pytest.raises(NotImplementedError, match="mask"):
        theirs.apply(variables, X, mask=jnp.ones((2, 2, 25, 25), bool))


@pytest.mark.parametrize("method", ["fields", "__call__"])
def test_accepts_every_argument_of_flax_multi_head_dot_product_attention(method):
    """The dataclass fields (the constructor) and the call; ours keep ``kernel_size`` second,
    so Flax's positional fields after ``num_heads`` are passed by name."""
    theirs, ours = nn.MultiHeadDotProductAttention, NeighborhoodAttention
    if method == "__call__":
        theirs, ours = theirs.__call__, ours.__call__
    problems = missing_or_different(ours, theirs, own_defaults=("attention_fn",))
    assert not problems, problems


def test_dot_generals_and_float32_softmax_are_honoured():
    calls = []

    def counting(name):
        def dot_general(*args, **kwargs):
            calls.append(name)
            return jax.lax.dot_general(*args, **kwargs)

        return dot_general

    layer = NeighborhoodAttention(
        2, (3, 3), qkv_dot_general=counting("qkv"), out_dot_general=counting("out"),
        force_fp32_for_softmax=True,
    )  # fmt: skip
    variables = layer.init(jax.random.key(0), X)
    np.testing.assert_allclose(
        layer.apply(variables, X), _apply(NeighborhoodAttention(2, (3, 3)), variables, X),
        atol=1e-6,
    )  # fmt: skip
    assert calls.count("qkv") >= 3 and calls.count("out") >= 1


def test_inputs_kv_is_flax_deprecated_single_key_value_input():
    y = _x((2, 5, 5, F), seed=1)
    variables = _init(NeighborhoodAttention(2, (3, 3)), X)
    with pytest.warns(DeprecationWarning, match="inputs_kv"):
        got = NeighborhoodAttention(2, (3, 3)).apply(variables, X, inputs_kv=y)
    np.testing.assert_allclose(
        got, _apply(NeighborhoodAttention(2, (3, 3)), variables, X, y, y), atol=1e-6
    )
    with pytest.raises(ValueError, match="`inputs_kv` must be None"):
        NeighborhoodAttention(2, (3, 3)).apply(variables, X, y, inputs_kv=y)
