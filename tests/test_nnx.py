"""jax_gna.nnx.NeighborhoodAttention and make_attention_fn against independent computations:
flax's own nnx.MultiHeadAttention (a window covering the whole grid is dense attention), and
hand-written projections through the jnp reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_gna
import jax_gna.nnx
from jax_gna import _flax_attention
from jax_gna.nnx import NeighborhoodAttention, make_attention_fn
from tests.flax_signatures import missing_or_different

F = 16  # input features


def _x(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _params(module):
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _copy_params(src, dst):
    nnx.update(dst, nnx.state(src, nnx.Param))


def _call(module, *arrays, **options):
    """``module(*arrays, **options)`` under nnx.jit: eager dispatch runs the attention op by op,
    which is several times slower on a CPU. Array options are traced, the rest static."""
    traced = {k: v for k, v in options.items() if isinstance(v, jax.Array)}
    static = {k: v for k, v in options.items() if k not in traced}
    return nnx.jit(lambda m, a, kw: m(*a, **kw, **static))(module, arrays, traced)


def _mha(**kw):
    return nnx.MultiHeadAttention(decode=False, rngs=nnx.Rngs(0), **kw)


@functools.partial(jax.jit, static_argnames=("window", "num_heads", "normalize"))
def _manual(params, x, window, *, num_heads, context=None, inputs_k=None, normalize=False):
    """The layer written out by hand: einsum projections, jax_gna.reference.gna, einsum out."""

    def proj(name, a):
        p = params[name]
        return jnp.einsum("...f,fhd->...hd", a, p["kernel"]) + p["bias"]

    def ln(name, a):
        mean = a.mean(-1, keepdims=True)
        var = ((a - mean) ** 2).mean(-1, keepdims=True)
        return (a - mean) / jnp.sqrt(var + 1e-6) * params[name]["scale"]

    kv_in = x if inputs_k is None else inputs_k
    q, k, v = proj("query", x), proj("key", kv_in), proj("value", kv_in)
    assert q.shape[-2] == num_heads
    ek = ev = None
    if context is not None:
        ek, ev = proj("key", context), proj("value", context)
    if normalize:
        q, k = ln("query_ln", q), ln("key_ln", k)
        ek = None if ek is None else ln("key_ln", ek)
    kernel_size, stride, dilation, is_causal = window
    o = jax_gna.reference.gna(
        q,
        k,
        v,
        kernel_size,
        stride=stride,
        dilation=dilation,
        is_causal=is_causal,
        additional_keys=ek,
        additional_values=ev,
    )
    return jnp.einsum("...hd,hdo->...o", o, params["out"]["kernel"]) + params["out"]["bias"]


SETTINGS = {
    "plain": dict(num_heads=4, in_features=F),
    "qkv_out_features": dict(num_heads=2, in_features=F, qkv_features=8, out_features=12),
    "gqa": dict(num_heads=4, in_features=F, num_kv_heads=2),
    "mqa_normalize_qk": dict(num_heads=4, in_features=F, num_kv_heads=1, normalize_qk=True),
    "no_bias": dict(num_heads=2, in_features=F, use_bias=False),
    "in_kv_features": dict(num_heads=2, in_features=F, in_kv_features=6),
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_parameters_match_multi_head_attention_names_shapes_and_values(settings):
    ours = NeighborhoodAttention(kernel_size=(3, 3), rngs=nnx.Rngs(0), **settings)
    theirs = _mha(**settings)
    ours_p, theirs_p = _params(ours), _params(theirs)
    assert jax.tree.structure(ours_p) == jax.tree.structure(theirs_p)
    # Same creation order: the same rngs give the same values, so checkpoints swap.
    jax.tree.map(np.testing.assert_array_equal, ours_p, theirs_p)


FULL = ("plain", "gqa", "mqa_normalize_qk")


@pytest.mark.parametrize("settings", [SETTINGS[k] for k in FULL], ids=FULL)
def test_window_covering_the_grid_equals_multi_head_attention(settings):
    x = _x((2, 4, 5, F))
    ours = NeighborhoodAttention(kernel_size=(4, 5), rngs=nnx.Rngs(1), **settings)
    theirs = _mha(**settings)
    _copy_params(ours, theirs)
    expected = _call(theirs, x.reshape(2, 20, F)).reshape(2, 4, 5, -1)
    np.testing.assert_allclose(_call(ours, x), expected, rtol=2e-5, atol=2e-5)


def test_context_with_full_window_equals_cross_attention_over_grid_and_context():
    x, text = _x((2, 3, 4, F)), _x((2, 5, F), seed=1)
    ours = NeighborhoodAttention(4, F, (3, 4), num_kv_heads=2, rngs=nnx.Rngs(2))
    theirs = _mha(num_heads=4, in_features=F, num_kv_heads=2)
    _copy_params(ours, theirs)
    flat = x.reshape(2, 12, F)
    expected = _call(theirs, flat, jnp.concatenate([flat, text], axis=1)).reshape(2, 3, 4, F)
    np.testing.assert_allclose(_call(ours, x, context=text), expected, rtol=2e-5, atol=2e-5)


CASES = {  # grid + (F,), (kernel_size, stride, dilation, is_causal), num_kv_heads, normalize_qk
    "1d_causal_strided": ((2, 9), ((4,), 2, 1, True), None, False),
    "2d_stride_dilation_causal_gqa_ln": (
        (2, 7, 8),
        ((3, 3), (2, 1), (1, 2), (True, False)),
        2,
        True,
    ),
    "3d_mqa": ((1, 4, 5, 6), ((2, 3, 3), 1, 1, False), 1, False),
    "2d_two_batch_dims_ln": ((2, 2, 5, 6), ((3, 3), 1, 1, False), None, True),
}


@pytest.mark.parametrize("grid, window, num_kv_heads, normalize", CASES.values(), ids=CASES)
def test_output_matches_manual_projection_through_reference(grid, window, num_kv_heads, normalize):
    kernel_size, stride, dilation, is_causal = window
    layer = NeighborhoodAttention(
        4,
        F,
        kernel_size,
        num_kv_heads=num_kv_heads,
        stride=stride,
        dilation=dilation,
        is_causal=is_causal,
        normalize_qk=normalize,
        rngs=nnx.Rngs(3),
    )
    x, text = _x(grid + (F,)), _x(grid[: len(grid) - len(kernel_size)] + (3, F), seed=1)
    expected = _manual(_params(layer), x, window, num_heads=4, context=text, normalize=normalize)
    np.testing.assert_allclose(_call(layer, x, context=text), expected, rtol=1e-4, atol=1e-5)


def test_same_grid_cross_attention_projects_inputs_k_with_in_kv_features():
    x, y = _x((2, 6, 6, F)), _x((2, 6, 6, 6), seed=1)
    layer = NeighborhoodAttention(2, F, (3, 3), in_kv_features=6, rngs=nnx.Rngs(4))
    expected = _manual(_params(layer), x, ((3, 3), 1, 1, False), num_heads=2, inputs_k=y)
    np.testing.assert_allclose(_call(layer, x, y), expected, rtol=1e-4, atol=1e-5)


def test_spatial_dims_with_int_options_equals_per_axis_tuples():
    x = _x((2, 6, 7, F))
    a = NeighborhoodAttention(2, F, 3, spatial_dims=2, stride=2, rngs=nnx.Rngs(5))
    b = NeighborhoodAttention(2, F, (3, 3), stride=(2, 2), rngs=nnx.Rngs(5))
    assert a.window == b.window
    np.testing.assert_array_equal(_call(a, x), _call(b, x))


def test_call_is_causal_overrides_the_constructor():
    x = _x((2, 6, 6, F))
    plain = NeighborhoodAttention(2, F, (3, 3), rngs=nnx.Rngs(6))
    causal = NeighborhoodAttention(2, F, (3, 3), is_causal=(True, False), rngs=nnx.Rngs(6))
    np.testing.assert_array_equal(_call(plain, x, is_causal=(True, False)), _call(causal, x))
    np.testing.assert_array_equal(_call(causal, x, is_causal=False), _call(plain, x))
    assert not np.allclose(_call(plain, x), _call(causal, x))


def test_jit_matches_eager_and_grads_match_multi_head_attention():
    x = _x((2, 4, 4, F))
    ours = NeighborhoodAttention(4, F, (4, 4), num_kv_heads=2, rngs=nnx.Rngs(7))
    theirs = _mha(num_heads=4, in_features=F, num_kv_heads=2)
    _copy_params(ours, theirs)

    def loss_ours(m, x):
        return jnp.sum(jnp.sin(m(x)))

    def loss_theirs(m, x):
        return jnp.sum(jnp.sin(m(x.reshape(2, 16, F))))

    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(ours, x), ours(x), rtol=1e-5, atol=1e-6)
    g_ours = nnx.to_pure_dict(nnx.jit(nnx.grad(loss_ours))(ours, x))
    g_theirs = nnx.to_pure_dict(nnx.grad(loss_theirs)(theirs, x))
    assert jax.tree.structure(g_ours) == jax.tree.structure(g_theirs)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_ours, g_theirs
    )


DTYPES = {
    "f32": (jnp.float32, None, jnp.float32),
    "bf16_inputs_f32_params": (jnp.bfloat16, None, jnp.float32),
    "bf16_compute": (jnp.float32, jnp.bfloat16, jnp.float32),
    "bf16_params": (jnp.bfloat16, None, jnp.bfloat16),
    # (float16 compute is left out: XLA:CPU cannot jit flax's float16 projections)
    "f32_compute_bf16_params": (jnp.bfloat16, jnp.float32, jnp.bfloat16),
}


@pytest.mark.parametrize("x_dtype, dtype, param_dtype", DTYPES.values(), ids=DTYPES.keys())
def test_dtype_policy_matches_multi_head_attention(x_dtype, dtype, param_dtype):
    x = _x((2, 4, 4, F), dtype=x_dtype)
    kw = dict(num_heads=2, in_features=F, dtype=dtype, param_dtype=param_dtype)
    ours = NeighborhoodAttention(kernel_size=(4, 4), rngs=nnx.Rngs(8), **kw)
    theirs = _mha(**kw)
    _copy_params(ours, theirs)
    jax.tree.map(lambda p: assert_dtype(p, param_dtype), _params(ours))
    out, expected = _call(ours, x), _call(theirs, x.reshape(2, 16, F)).reshape(2, 4, 4, F)
    assert out.dtype == expected.dtype
    np.testing.assert_allclose(out.astype(np.float32), expected.astype(np.float32), atol=0.05)


def assert_dtype(x, dtype):
    assert x.dtype == dtype, (x.dtype, dtype)


def test_implementation_is_passed_through():
    x = _x((1, 5, 5, F))
    kw = dict(num_heads=2, in_features=F, kernel_size=(3, 3))
    ref = NeighborhoodAttention(implementation="reference", rngs=nnx.Rngs(9), **kw)
    xla = NeighborhoodAttention(implementation="xla", rngs=nnx.Rngs(9), **kw)
    np.testing.assert_allclose(_call(ref, x), _call(xla, x), rtol=1e-5, atol=1e-5)
    q = jnp.zeros((1, 5, 5, 2, 8))
    unusable = [i for i, why in jax_gna.supported_implementations(q, q, q, (3, 3)).items() if why]
    if not unusable:
        pytest.skip("every implementation can run here")
    layer = NeighborhoodAttention(implementation=unusable[0], rngs=nnx.Rngs(9), **kw)
    with pytest.raises(NotImplementedError, match=f"implementation='{unusable[0]}'"):
        layer(x)


def test_tile_shapes_are_passed_through():
    x = _x((1, 5, 5, F))
    kw = dict(num_heads=2, in_features=F, kernel_size=(3, 3))
    plain = NeighborhoodAttention(rngs=nnx.Rngs(9), **kw)
    tiled = NeighborhoodAttention(rngs=nnx.Rngs(9), q_tile_shape=(16, 8), kv_tile_shape=8, **kw)
    assert tiled.tiles.q_tile_shape == (16, 8) and tiled.tiles.kv_tile_shape == (8, 8)
    # Off the GPU implementation=None ignores them; an explicit other implementation refuses.
    np.testing.assert_array_equal(_call(tiled, x), _call(plain, x))
    xla = NeighborhoodAttention(implementation="xla", q_tile_shape=8, kv_tile_shape=8,
                                rngs=nnx.Rngs(9), **kw)  # fmt: skip
    with pytest.raises(NotImplementedError, match="`q_tile_shape`/`kv_tile_shape`"):
        xla(x)
    fn = make_attention_fn((3, 3), implementation="xla", q_tile_shape=8, kv_tile_shape=8)
    q = jnp.zeros((1, 5, 5, 2, 8))
    with pytest.raises(NotImplementedError, match="'cuda' kernels"):
        fn(q, q, q)
    with pytest.raises(ValueError, match="together"):
        make_attention_fn((3, 3), kv_tile_shape=8)


def test_deterministic_backward_is_passed_through_apart_from_dropout_deterministic(monkeypatch):
    seen = []
    real_gna = _flax_attention.gna

    def spy(*args, deterministic, **kw):
        seen.append(deterministic)
        return real_gna(*args, deterministic=deterministic, **kw)

    monkeypatch.setattr(_flax_attention, "gna", spy)
    x = _x((1, 5, 5, F))
    kw = dict(num_heads=2, in_features=F, kernel_size=(3, 3), rngs=nnx.Rngs(9))
    NeighborhoodAttention(**kw)(x)
    NeighborhoodAttention(deterministic_backward=True, **kw)(x, deterministic=False)
    NeighborhoodAttention(deterministic_backward=False, deterministic=True, **kw)(x)
    q = jnp.zeros((1, 5, 5, 2, 8))
    make_attention_fn((3, 3), deterministic_backward=True)(q, q, q, deterministic=False)
    assert seen == [None, True, False, True]
    with pytest.raises(TypeError, match="`deterministic_backward`"):
        make_attention_fn((3, 3), deterministic_backward="yes")


def _layer(**kw):
    return NeighborhoodAttention(2, F, (3, 3), rngs=nnx.Rngs(0), **kw)


CONSTRUCTOR_ERRORS = {
    "dropout_rate": (dict(dropout_rate=0.1), NotImplementedError, "dropout_rate=0.1"),
    "dropout_rate_deterministic": (
        dict(dropout_rate=0.1, deterministic=True),
        NotImplementedError,
        "dropout_rate",
    ),
    "decode": (dict(decode=True), NotImplementedError, "decode=True"),
    "heads_divide": (dict(num_kv_heads=3), ValueError, "num_kv_heads"),
    "kernel_size_type": (dict(kernel_size=(3.0, 3)), TypeError, "kernel_size"),
    "spatial_dims_mismatch": (dict(spatial_dims=3), ValueError, "kernel_size"),
    "rank_4": (dict(kernel_size=(3, 3, 3, 3)), ValueError, "1, 2 or 3"),
    "q_tile_alone": (dict(q_tile_shape=(16, 8)), ValueError, "`q_tile_shape` and `kv_tile_shape`"),
    "tile_length": (
        dict(q_tile_shape=(2, 8, 8), kv_tile_shape=(2, 8, 8)),
        ValueError,
        "`q_tile_shape` has 3",
    ),
    "tile_type": (dict(q_tile_shape=16, kv_tile_shape=8.0), TypeError, "`kv_tile_shape`"),
    "deterministic_backward_type": (
        dict(deterministic_backward=1),
        TypeError,
        "`deterministic_backward`; expected True",
    ),
}


@pytest.mark.parametrize("kw, error, match", CONSTRUCTOR_ERRORS.values(), ids=CONSTRUCTOR_ERRORS)
def test_constructor_refuses_with_a_message_naming_the_option(kw, error, match):
    args = dict(kernel_size=(3, 3))
    args.update(kw)
    with pytest.raises(error, match=match):
        NeighborhoodAttention(2, F, rngs=nnx.Rngs(0), **args)


def test_int_kernel_size_without_spatial_dims_is_refused():
    with pytest.raises(ValueError, match="spatial_dims"):
        NeighborhoodAttention(2, F, 3, rngs=nnx.Rngs(0))


def test_init_cache_is_refused():
    with pytest.raises(NotImplementedError, match="decode"):
        _layer().init_cache((2, 6, 6, F))


X = _x((2, 6, 6, F))
CALL_ERRORS = {
    "mask": (dict(mask=jnp.ones((2, 2, 36, 36), bool)), NotImplementedError, "mask"),
    "decode": (dict(decode=True), NotImplementedError, "decode=True"),
    "sow_weights": (dict(sow_weights=True), NotImplementedError, "sow_weights=True"),
    "other_grid": (dict(inputs_k=X[:, :5]), ValueError, "`inputs_k` on the same token grid"),
    "inputs_v_without_k": (dict(inputs_v=X), ValueError, "inputs_k"),
    "context_batch": (dict(context=_x((3, 4, F))), ValueError, "`context`"),
    "in_features": (dict(inputs_q=X[..., :8]), ValueError, "Incompatible input dimension"),
    "kernel_too_big": (dict(inputs_q=X[:, :2]), ValueError, "kernel_size"),
    "implementation": (dict(implementation="nope"), ValueError, "nope"),
}


@pytest.mark.parametrize("kw, error, match", CALL_ERRORS.values(), ids=CALL_ERRORS)
def test_call_refuses_with_a_message_naming_the_option(kw, error, match):
    kw = dict(kw)
    layer = _layer(implementation=kw.pop("implementation", None))
    inputs_q = kw.pop("inputs_q", X)
    with pytest.raises(error, match=match):
        layer(inputs_q, **kw)


def test_accepted_compatibility_arguments_change_nothing():
    layer = _layer(broadcast_dropout=False, deterministic=False, decode=False)
    np.testing.assert_array_equal(
        layer(X, deterministic=False, rngs=nnx.Rngs(1), decode=False), layer(X)
    )


# -- make_attention_fn with nnx.MultiHeadAttention -----------------------------------------------


def test_attention_fn_in_multi_head_attention_equals_the_layer():
    x = _x((2, 6, 7, F))
    window = dict(stride=(1, 2), dilation=(2, 1), is_causal=(False, True))
    ours = NeighborhoodAttention(4, F, (3, 3), num_kv_heads=2, rngs=nnx.Rngs(10), **window)
    theirs = _mha(
        num_heads=4,
        in_features=F,
        num_kv_heads=2,
        attention_fn=jax_gna.nnx.make_attention_fn((3, 3), **window),
    )
    _copy_params(ours, theirs)
    np.testing.assert_allclose(_call(theirs, x), _call(ours, x), rtol=1e-6, atol=1e-6)
    # flax's call-time is_causal=True makes every axis causal
    np.testing.assert_allclose(
        _call(theirs, x, is_causal=True), _call(ours, x, is_causal=True), atol=1e-6
    )


def test_attention_fn_allows_dropout_rate_when_deterministic_and_refuses_otherwise():
    x = _x((2, 5, 5, F))
    layer = nnx.MultiHeadAttention(
        2,
        F,
        dropout_rate=0.1,
        decode=False,
        rngs=nnx.Rngs(0, dropout=1),
        attention_fn=make_attention_fn((3, 3)),
    )
    assert _call(layer, x, deterministic=True).shape == x.shape
    with pytest.raises(NotImplementedError, match="dropout_rate=0.1"):
        layer(x, deterministic=False)


def test_attention_fn_refuses_mask_sow_weights_bias_and_unknown_options():
    x = _x((2, 5, 5, F))
    layer = _mha(num_heads=2, in_features=F, attention_fn=make_attention_fn((3, 3)))
    with pytest.raises(NotImplementedError, match="mask"):
        layer(x, mask=jnp.ones((2, 2, 25, 25), bool))
    with pytest.raises(NotImplementedError, match="sow_weights"):
        layer(x, sow_weights=True)
    fn = make_attention_fn((3, 3))
    q = _x((2, 5, 5, 2, 8))
    with pytest.raises(NotImplementedError, match="bias"):
        fn(q, q, q, bias=jnp.zeros((2, 2, 25, 25)))
    with pytest.raises(NotImplementedError, match="new_option=3"):
        fn(q, q, q, new_option=3)
    np.testing.assert_array_equal(fn(q, q, q, new_option=None), fn(q, q, q))


def test_attention_fn_dtype_casts_like_flax():
    q = _x((2, 5, 5, 2, 8))
    assert make_attention_fn((3, 3))(q, q, q, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    assert make_attention_fn((3, 3))(q, q.astype(jnp.bfloat16), q).dtype == jnp.float32


# Our own meaning: is_causal=None keeps the constructor's; attention_fn=None is this layer.
OWN_DEFAULTS = ("is_causal", "attention_fn")


@pytest.mark.parametrize("method", ["__init__", "__call__", "init_cache", "set_view"])
def test_accepts_every_argument_of_flax_multi_head_attention(method):
    problems = missing_or_different(
        getattr(NeighborhoodAttention, method),
        getattr(nnx.MultiHeadAttention, method),
        OWN_DEFAULTS,
    )
    assert not problems, problems


def _counting(calls, name, fn):
    def counted(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)

    return counted


def test_projection_options_reach_the_same_submodules_as_in_flax():
    """Metadata, dtype promotion and dot_general go where nnx.MultiHeadAttention puts them:
    same parameter metadata as Flax's layer, and every function is called."""
    calls = []
    promote = nnx.nn.dtypes.promote_dtype
    options = dict(
        normalize_qk=True,
        kernel_metadata=dict(tag="kernel"),
        out_kernel_metadata=dict(tag="out_kernel"),
        bias_metadata=dict(tag="bias"),
        query_ln_scale_metadata=dict(tag="query_ln"),
        key_ln_scale_metadata=dict(tag="key_ln"),
        qkv_promote_dtype=_counting(calls, "qkv_promote", promote),
        out_promote_dtype=_counting(calls, "out_promote", promote),
        ln_promote_dtype=_counting(calls, "ln_promote", promote),
        qkv_dot_general=_counting(calls, "qkv_dot", jax.lax.dot_general),
        out_dot_general=_counting(calls, "out_dot", jax.lax.dot_general),
    )
    ours = NeighborhoodAttention(2, F, (3, 3), rngs=nnx.Rngs(0), **options)
    theirs = nnx.MultiHeadAttention(2, F, decode=False, rngs=nnx.Rngs(0), **options)

    def metadata(module):
        return {
            path: {k: v for k, v in p.get_metadata().items() if k == "tag"}
            for path, p in nnx.iter_graph(module)
            if isinstance(p, nnx.Param)
        }

    assert metadata(ours) == metadata(theirs) and metadata(ours)
    ours(_x((1, 5, 5, F)))
    assert set(calls) == {"qkv_promote", "out_promote", "ln_promote", "qkv_dot", "out_dot"}


def test_call_time_shardings_reach_the_projections(monkeypatch):
    """Strings stand in for shardings: the spy records them and calls the projection without."""
    seen = []
    call = nnx.LinearGeneral.__call__

    def spy(self, inputs, out_sharding=None):
        seen.append(out_sharding)
        return call(self, inputs)

    monkeypatch.setattr(nnx.LinearGeneral, "__call__", spy)
    layer = NeighborhoodAttention(2, F, (3, 3), rngs=nnx.Rngs(0))
    x, text = _x((1, 5, 5, F)), _x((1, 3, F), seed=1)
    want = layer(x, context=text)
    got = layer(x, context=text, qkv_sharding="qkv", out_sharding="out")
    np.testing.assert_array_equal(got, want)
    # query, key, value of the grid with qkv_sharding; the context's without; out with its own.
    assert seen[-6:] == ["qkv", "qkv", "qkv", None, None, "out"]


def test_keep_rngs_and_attention_fn():
    NeighborhoodAttention(2, F, (3, 3), keep_rngs=False, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`keep_rngs`"):
        NeighborhoodAttention(2, F, (3, 3), keep_rngs="no", rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="attention_fn=.*this layer is the attention"):
        NeighborhoodAttention(
            2, F, (3, 3), attention_fn=nnx.dot_product_attention, rngs=nnx.Rngs(0)
        )


def test_nnx_view_sets_what_it_can():
    class Block(nnx.Module):
        def __init__(self):
            self.attn = NeighborhoodAttention(2, F, (3, 3), rngs=nnx.Rngs(0))

    view = nnx.view(Block(), deterministic=True)  # would raise if no module took it
    assert view.attn(_x((1, 5, 5, F))).shape == (1, 5, 5, F)
    with pytest.raises(NotImplementedError, match="decode=True"):
        nnx.view(Block(), decode=True, batch_size=1, max_length=4)


def test_flattened_tokens_get_an_error_that_names_the_layout():
    """[batch, tokens, features] fed to a 2-D layer reads as one batch x tokens image; where
    the window does not fit that reading, the error says how the input was read."""
    layer = NeighborhoodAttention(2, F, (7, 7), rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"spatial shape=\(2, 64\).*\[batch\.\.\., \*spatial, features\]; `inputs_q` "
        r"\(2, 64, 16\) reads as no batch dims, spatial \(2, 64\), features 16\. If the axis of 2 "
        r"is a batch axis.*kernel_size=\(7,\).*reshaped",
    ):
        layer(_x((2, 64, F)))
