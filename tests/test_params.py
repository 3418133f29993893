"""Argument normalisation and validation (`jax_gna._params`): every bad input raises the right
exception type, before anything runs, with a message naming the argument."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import reference
from jax_gna._params import GnaParams, make_params, xla_wants_determinism

f32 = jnp.float32


def z(*shape, dtype=f32):
    return jnp.zeros(shape, dtype)


# q [B=2, X=6, Y=5, H=4, D=8], k/v with 2 kv heads, v head dim 3.
Q, K, V = z(2, 6, 5, 4, 8), z(2, 6, 5, 2, 8), z(2, 6, 5, 2, 3)
EK, EV = z(2, 3, 2, 8), z(2, 3, 2, 3)

# name -> (kwargs overriding the good call, exception, regex the message must match)
BAD = {
    "rank_too_small": (dict(q=z(4, 8), k=z(4, 8), v=z(4, 8)), ValueError, "spatial axes"),
    "rank_too_large": (
        dict(q=z(1, 2, 2, 2, 2, 1, 4), k=z(1, 2, 2, 2, 2, 1, 4), v=z(1, 2, 2, 2, 2, 1, 4),
             kernel_size=2, stride=(1, 1, 1, 1)),
        ValueError, "spatial axes",
    ),
    # An int kernel_size on [B, X, Y, H, D] reads as 1-D, 2-D or 3-D: never guessed.
    "int_kernel_is_ambiguous": (
        dict(kernel_size=3), ValueError,
        r"ambiguous: `kernel_size`=3.*\(2, 6, 5, 4, 8\).*1-D with batch dims \(2, 6\) or 2-D "
        r"with batch dims \(2,\) or 3-D without batch dims.*kernel_size=\(3,\) for 1-D, "
        r"\(3, 3\) for 2-D.*na1d/na2d/na3d",
    ),
    "rank_from_tuple_too_large": (dict(kernel_size=(2, 2, 2, 2)), ValueError, "spatial axes"),
    "key_rank_differs": (dict(k=z(2, 6, 5, 1, 2, 8)), ValueError, "same rank"),
    "value_rank_differs": (dict(v=z(6, 5, 2, 3)), ValueError, "same rank"),
    "token_layout_differs": (dict(k=z(2, 6, 4, 2, 8)), ValueError, "token layout"),
    "value_layout_differs": (dict(v=z(2, 5, 5, 2, 3)), ValueError, "token layout"),
    "batch_differs": (dict(k=z(3, 6, 5, 2, 8)), ValueError, "batch dims"),
    "value_batch_differs": (dict(v=z(1, 6, 5, 2, 3)), ValueError, "batch dims"),
    "heads_not_divisible": (
        dict(q=z(2, 6, 5, 3, 8)), ValueError, r"evenly divide.*heads=3, kv_heads=2"
    ),
    "kv_heads_differ": (dict(v=z(2, 6, 5, 1, 3)), ValueError, "`key` and `value`.*heads"),
    "qk_head_dim_differs": (dict(k=z(2, 6, 5, 2, 7)), ValueError, "head dim.*8 and 7"),
    "dtype_mismatch": (dict(k=z(2, 6, 5, 2, 8, dtype=jnp.bfloat16)), TypeError, "same dtype"),
    "value_dtype_mismatch": (dict(v=z(2, 6, 5, 2, 3, dtype=jnp.float16)), TypeError, "dtype"),
    "integer_query": (
        dict(q=z(2, 6, 5, 4, 8, dtype=jnp.int32)), TypeError, "`query`.*floating-point"
    ),
    "integer_all": (
        dict(q=z(2, 6, 5, 4, 8, dtype=jnp.int32), k=z(2, 6, 5, 2, 8, dtype=jnp.int32),
             v=z(2, 6, 5, 2, 3, dtype=jnp.int32)),
        TypeError, "floating-point",
    ),
    "kernel_size_0": (dict(kernel_size=(0, 3)), ValueError, r"`kernel_size`.*positive.*\(0, 3\)"),
    "kernel_size_0_one_axis": (dict(kernel_size=(3, 0)), ValueError, "`kernel_size`"),
    "kernel_size_negative": (dict(kernel_size=-3, fn="na2d"), ValueError, "`kernel_size`"),
    "stride_0": (dict(stride=0), ValueError, "`stride`.*positive"),
    "stride_above_window_one": (
        dict(kernel_size=(1, 3), stride=(2, 1)), ValueError, "`stride` cannot be larger"
    ),
    "stride_negative_one_axis": (dict(stride=(1, -1)), ValueError, "`stride`"),
    "stride_larger_than_kernel": (
        dict(kernel_size=(3, 2), stride=(3, 3)), ValueError, r"`stride`.*`kernel_size`.*\(3, 3\)"
    ),
    "dilation_0": (dict(dilation=0), ValueError, "`dilation`.*positive"),
    "dilation_negative_one_axis": (dict(dilation=(2, -1)), ValueError, "`dilation`"),
    "kernel_times_dilation_exceeds_extent": (
        dict(kernel_size=(3, 3), dilation=(2, 2)), ValueError,
        r"`kernel_size` and `dilation`.*\(6, 5\)",
    ),
    "kernel_exceeds_extent": (dict(kernel_size=(7, 3)), ValueError, "`kernel_size`"),
    "is_causal_int": (dict(is_causal=1), TypeError, "`is_causal`"),
    "is_causal_tuple_with_int": (dict(is_causal=(True, 0)), TypeError, "`is_causal`"),
    "is_causal_string": (dict(is_causal="yes"), TypeError, "`is_causal`"),
    "kernel_tuple_too_short_for_na2d": (
        dict(kernel_size=(3,), fn="na2d"), ValueError, "`kernel_size` has 1 entries"
    ),
    "stride_tuple_length_mismatch": (
        dict(kernel_size=(3, 3), stride=(1, 1, 1)), ValueError, "`stride` has 3 entries"
    ),
    "dilation_tuple_length_mismatch": (
        dict(dilation=(1,), fn="na2d"), ValueError, "`dilation` has 1 entries"
    ),
    "is_causal_tuple_length_mismatch": (
        dict(kernel_size=(3, 3), is_causal=(True,)), ValueError, "`is_causal` has 1 entries"
    ),
    "kernel_size_bool": (dict(kernel_size=True), TypeError, "`kernel_size`"),
    "kernel_size_bool_in_tuple": (dict(kernel_size=(3, True)), TypeError, "`kernel_size`"),
    "kernel_size_float": (dict(kernel_size=3.0), TypeError, "`kernel_size`"),
    "stride_float": (dict(stride=(1, 1.5)), TypeError, "`stride`"),
    "dilation_numpy_array": (dict(dilation=np.array([1, 1])), TypeError, "`dilation`"),
    "scale_string": (dict(scale="big"), TypeError, "`scale`"),
    "scale_bool": (dict(scale=True), TypeError, "`scale`"),
    "scale_inf": (dict(scale=float("inf")), ValueError, "`scale`.*finite"),
    "scale_nan": (dict(scale=float("nan")), ValueError, "`scale`.*finite"),
    "scale_overflows_float32": (dict(scale=-1e39), ValueError, "`scale`.*float32"),
    "scale_numpy_inf": (dict(scale=np.float64("inf")), ValueError, "`scale`.*finite"),
    "extra_keys_without_values": (
        dict(ek=EK, ev=None), ValueError, "`additional_keys` and `additional_values`.*together"
    ),
    "extra_values_without_keys": (
        dict(ek=None, ev=EV), ValueError, "`additional_keys` and `additional_values`.*together"
    ),
    "extra_batch_mismatch": (
        dict(ek=z(1, 3, 2, 8), ev=EV), ValueError, "`additional_keys`.*batch"
    ),
    "extra_values_batch_mismatch": (
        dict(ek=EK, ev=z(3, 3, 2, 3)), ValueError, "`additional_values`.*batch"
    ),
    "extra_heads_mismatch": (
        dict(ek=z(2, 3, 4, 8), ev=EV), ValueError, "`additional_keys`.*heads"
    ),
    "extra_values_heads_mismatch": (
        dict(ek=EK, ev=z(2, 3, 1, 3)), ValueError, "`additional_values`.*heads"
    ),
    "extra_key_dim_mismatch": (
        dict(ek=z(2, 3, 2, 3), ev=EV), ValueError, "`additional_keys`.*head dim"
    ),
    "extra_value_dim_mismatch": (
        dict(ek=EK, ev=z(2, 3, 2, 8)), ValueError, "`additional_values`.*head dim"
    ),
    "extra_token_counts_differ": (
        dict(ek=EK, ev=z(2, 4, 2, 3)), ValueError, r"same number of extra tokens.*3 and 4"
    ),
    "extra_wrong_rank": (
        dict(ek=z(2, 1, 3, 2, 8), ev=EV), ValueError, "`additional_keys`.*dims"
    ),
    "extra_dtype_mismatch": (
        dict(ek=z(2, 3, 2, 8, dtype=jnp.float16), ev=EV), TypeError, "`additional_keys`.*dtype"
    ),
    "na2d_on_1d_problem": (
        dict(q=z(6, 4, 8), k=z(6, 2, 8), v=z(6, 2, 3), fn="na2d"), ValueError, "`query`.*4 dims"
    ),
    "na3d_on_2d_problem": (
        dict(q=z(6, 5, 4, 8), k=z(6, 5, 2, 8), v=z(6, 5, 2, 3), fn="na3d"),
        ValueError, "`query`.*5 dims",
    ),
    "na1d_with_2d_kernel_tuple": (
        dict(kernel_size=(3, 3), fn="na1d"), ValueError, "`kernel_size` has 2 entries"
    ),
}  # fmt: skip

ENTRY_POINTS = {
    "gna": jax_gna.gna,
    "gna_xla": lambda *a, **kw: jax_gna.gna(*a, **kw, implementation="xla"),
    "reference": reference.gna,
}


def _call(fn, q=Q, k=K, v=V, kernel_size=(3, 3), ek=None, ev=None, **kw):
    return fn(q, k, v, kernel_size, additional_keys=ek, additional_values=ev, **kw)


def test_good_call_is_accepted():
    """The baseline every bad case departs from (traced only: validation runs at trace time)."""
    for fn in (*ENTRY_POINTS.values(), jax_gna.na2d):
        out = jax.eval_shape(
            lambda fn=fn: _call(
                fn, ek=EK, ev=EV, stride=(2, 1), dilation=(2, 1), is_causal=(True, False)
            )
        )
        assert out.shape == (2, 6, 5, 4, 3)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("name", list(BAD))
def test_invalid_argument_raises(name, entry):
    kwargs, exc, match = BAD[name]
    kwargs = dict(kwargs)
    fn = kwargs.pop("fn", None)
    fn = getattr(jax_gna, fn) if fn is not None else ENTRY_POINTS[entry]
    with pytest.raises(exc, match=match):
        _call(fn, **kwargs)


def test_make_params_rejects_non_arrays():
    with pytest.raises(TypeError, match="`query` must be an array"):
        make_params([[0.0]], K, V, 3)
    with pytest.raises(TypeError, match="`value` must be an array"):
        make_params(Q, K, None, 3)


@pytest.mark.parametrize("what", ["scale", "kernel_size", "kernel_size_entry", "stride"])
def test_traced_static_argument_raises_type_error(what):
    def f(q, k, v, x):
        kw = {
            "scale": dict(kernel_size=(3, 3), scale=x),
            "kernel_size": dict(kernel_size=x),
            "kernel_size_entry": dict(kernel_size=(3, x)),
            "stride": dict(kernel_size=(3, 3), stride=x),
        }[what]
        return jax_gna.gna(q, k, v, **kw)

    name = "kernel_size" if what.startswith("kernel_size") else what
    value = jnp.float32(0.5) if what == "scale" else jnp.int32(2)
    with pytest.raises(TypeError, match=f"`{name}`.*(static|traced)"):
        jax.jit(f)(Q, K, V, value)


def test_concrete_jax_array_as_static_argument_raises():
    with pytest.raises(TypeError, match="`kernel_size`"):
        jax_gna.gna(Q, K, V, jnp.int32(3))
    with pytest.raises(TypeError, match="`scale`"):
        jax_gna.gna(Q, K, V, (3, 3), scale=jnp.float32(1.0))


def test_normalisation():
    p = make_params(Q, K, V, 3, rank=2)
    assert p == GnaParams((3, 3), (1, 1), (1, 1), (False, False), 8**-0.5)
    assert p.rank == 2
    p = make_params(
        Q, K, V, (3, 2), stride=(2, None and 1 or 1), dilation=2, is_causal=(True, np.False_)
    )
    assert p.kernel_size == (3, 2) and p.stride == (2, 1) and p.dilation == (2, 2)
    assert p.is_causal == (True, False)
    assert all(type(c) is bool for c in p.is_causal)
    p = make_params(
        Q, K, V, np.int64(3), stride=None, dilation=None, is_causal=None, scale=2, rank=2
    )
    assert p == GnaParams((3, 3), (1, 1), (1, 1), (False, False), 2.0)
    assert all(type(x) is int for x in p.kernel_size + p.stride + p.dilation)
    assert type(p.scale) is float
    # Several batch dims: rank from a tuple, or fixed by the caller.
    q = z(2, 3, 6, 5, 4, 8)
    k = z(2, 3, 6, 5, 2, 8)
    assert make_params(q, k, k, (3, 3)).rank == 2
    assert make_params(q, k, k, 3, rank=2).rank == 2
    assert make_params(z(6, 4, 8), z(6, 2, 8), z(6, 2, 8), (3,)).rank == 1


def test_params_are_frozen_and_hashable():
    a = make_params(Q, K, V, 3, stride=(2, 1), is_causal=(True, False))
    b = make_params(Q, K, V, (3, 3), stride=(2, 1), is_causal=(True, False))
    assert a == b and hash(a) == hash(b)
    assert len({a, b, make_params(Q, K, V, (3, 3))}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.stride = (1, 1)


TILE_ERRORS = {
    "q_alone": (dict(q_tile_shape=(16, 8)), ValueError, "given together.*kv_tile_shape=None"),
    "kv_alone": (dict(kv_tile_shape=8), ValueError, "given together.*q_tile_shape=None"),
    "length": (dict(q_tile_shape=(16, 8, 1), kv_tile_shape=8), ValueError,
               "`q_tile_shape` has 3 entries but the problem has 2 spatial axes"),
    "zero": (dict(q_tile_shape=(16, 0), kv_tile_shape=8), ValueError,
             r"`q_tile_shape`; expected .*positive integers, one per spatial axis, got \(16, 0\)"),
    "negative_kv": (dict(q_tile_shape=8, kv_tile_shape=-8), ValueError,
                    "`kv_tile_shape`.*positive"),
    "float": (dict(q_tile_shape=(16, 8.0), kv_tile_shape=8), TypeError, "`q_tile_shape`"),
    "bool": (dict(q_tile_shape=8, kv_tile_shape=True), TypeError, "`kv_tile_shape`"),
    "string": (dict(q_tile_shape="16x8", kv_tile_shape=8), TypeError, "`q_tile_shape`"),
    "array": (dict(q_tile_shape=np.array([16, 8]), kv_tile_shape=8), TypeError, "`q_tile_shape`"),
}  # fmt: skip


@pytest.mark.parametrize("kw, error, match", TILE_ERRORS.values(), ids=TILE_ERRORS)
def test_invalid_tile_shapes_raise(kw, error, match):
    with pytest.raises(error, match=match):
        make_params(Q, K, V, (3, 3), **kw)
    with pytest.raises(error, match=match):  # before any implementation is considered
        jax_gna.gna(Q, K, V, (3, 3), implementation="xla", **kw)


def test_traced_tile_shape_raises_type_error():
    with pytest.raises(TypeError, match="`q_tile_shape`.*(static|traced)"):
        jax.jit(lambda q, t: jax_gna.gna(q, K, V, (3, 3), q_tile_shape=(t, 8), kv_tile_shape=8))(
            Q, jnp.int32(16)
        )


def test_tile_shapes_are_normalised_and_passed_as_forward_attributes():
    p = make_params(Q, K, V, (3, 3), q_tile_shape=[16, np.int64(8)], kv_tile_shape=8)
    assert p.q_tile_shape == (16, 8) and p.kv_tile_shape == (8, 8) and p.has_tiles
    assert all(type(x) is int for x in p.q_tile_shape + p.kv_tile_shape)
    assert p.without_tiles() == make_params(Q, K, V, (3, 3)) and not p.without_tiles().has_tiles
    assert hash(p) != hash(p.without_tiles())
    fwd = p.forward_attrs()
    assert fwd.keys() == p.attrs().keys() | {"q_tile", "kv_tile"}
    assert fwd["q_tile"].dtype == fwd["kv_tile"].dtype == np.int64
    assert list(fwd["q_tile"]) == [16, 8] and list(fwd["kv_tile"]) == [8, 8]
    unset = make_params(Q, K, V, (3, 3)).forward_attrs()
    assert unset["q_tile"].shape == unset["kv_tile"].shape == (0,)  # empty: the kernels pick
    assert unset["q_tile"].dtype == np.int64


def test_attrs_dtypes():
    attrs = make_params(Q, K, V, (3, 2), stride=(2, 1), dilation=(1, 2), is_causal=(True, False))
    attrs = attrs.attrs()
    for name in ("kernel_size", "stride", "dilation", "is_causal"):
        assert isinstance(attrs[name], np.ndarray) and attrs[name].dtype == np.int64, name
    assert list(attrs["kernel_size"]) == [3, 2] and list(attrs["stride"]) == [2, 1]
    assert list(attrs["dilation"]) == [1, 2] and list(attrs["is_causal"]) == [1, 0]
    assert type(attrs["scale"]) is np.float32 and attrs["scale"] == np.float32(8**-0.5)


@pytest.mark.parametrize(
    ("flags", "wanted"),
    [
        ("", False),
        ("--xla_gpu_deterministic_ops=true", True),
        ("--xla_gpu_deterministic_ops=TRUE", True),
        ("--xla_gpu_deterministic_ops=1", True),
        ("--xla_gpu_deterministic_ops", True),  # a bare boolean flag is on, as XLA parses it
        ("--xla_gpu_deterministic_ops=false", False),
        ("--xla_gpu_deterministic_ops=0", False),
        ("--xla_gpu_exclude_nondeterministic_ops=true", True),
        ("--xla_force_host_platform_device_count=8  --xla_gpu_deterministic_ops=true", True),
        ("--xla_gpu_deterministic_ops=true --xla_gpu_deterministic_ops=false", False),  # last wins
        ("--xla_gpu_deterministic_ops_extra=true", False),  # another flag's name
        ("--xla_gpu_deterministic_ops=maybe", False),  # XLA refuses it; not a request
        ("xla_gpu_deterministic_ops=true", False),  # not a flag without the dashes
    ],
)
def test_xla_flags_parsing(flags, wanted):
    assert xla_wants_determinism(flags) is wanted


def test_deterministic_none_follows_xla_flags_at_trace_time(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert make_params(Q, K, V, (3, 3)).deterministic is False
    assert make_params(Q, K, V, (3, 3), deterministic=True).deterministic is True
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=true")
    assert make_params(Q, K, V, (3, 3)).deterministic is True
    assert make_params(Q, K, V, (3, 3), deterministic=False).deterministic is False
    assert make_params(Q, K, V, (3, 3), deterministic=np.bool_(True)).deterministic is True
    monkeypatch.delenv("XLA_FLAGS")
    assert make_params(Q, K, V, (3, 3)).deterministic is False


@pytest.mark.parametrize("bad", [1, 0, "true", 1.0, np.array(True), (True,)])
@pytest.mark.parametrize("entry", ["gna", "gna_xla", "na2d"])
def test_invalid_deterministic_raises_type_error_naming_it(entry, bad):
    fn = jax_gna.na2d if entry == "na2d" else ENTRY_POINTS[entry]
    with pytest.raises(TypeError, match="`deterministic`; expected True, False or None"):
        _call(fn, deterministic=bad)


def test_traced_deterministic_raises_type_error():
    with pytest.raises(TypeError, match="`deterministic` must be static"):
        jax.jit(lambda q, d: jax_gna.gna(q, K, V, (3, 3), deterministic=d))(Q, jnp.bool_(True))


def test_deterministic_is_a_backward_attribute_only():
    on, off = (make_params(Q, K, V, (3, 3), deterministic=d) for d in (True, False))
    assert on != off and hash(on) != hash(off)  # separate cached ops
    assert on.without_tiles().deterministic is True
    for params, value in ((on, 1), (off, 0)):
        attrs = params.backward_attrs()
        assert attrs.keys() == params.attrs().keys() | {"deterministic", "q_tile", "kv_tile"}
        assert type(attrs["deterministic"]) is np.int64 and attrs["deterministic"] == value
        assert "deterministic" not in params.forward_attrs()
    # The backward's own tiles (empty: the launcher's default), int64 as the forward's.
    for q_tile, kv_tile in (((), ()), ((2, 4), (4, 4))):
        attrs = off.backward_attrs(q_tile, kv_tile)
        for name, want in (("q_tile", q_tile), ("kv_tile", kv_tile)):
            assert attrs[name].dtype == np.int64 and tuple(attrs[name]) == want


# -- the layout, when the shapes are read in a way the caller did not mean -------------------


def test_an_int_kernel_size_is_never_guessed():
    """[32, 32, 8, 64] is an unbatched 32x32 grid or a batch of 32 sequences: refuse, and say
    how to say which (jax.nn.dot_product_attention's unbatched [T, N, H] has no such issue)."""
    q = z(32, 32, 8, 64)
    for fn in (jax_gna.gna, reference.gna):
        with pytest.raises(
            ValueError,
            match=r"ambiguous: `kernel_size`=7.*\(32, 32, 8, 64\) reads as 1-D with batch dims "
            r"\(32,\) or 2-D without batch dims.*kernel_size=\(7,\) for 1-D, \(7, 7\) for "
            r"2-D, or call na1d/na2d",
        ):
            fn(q, q, q, 7)
    with pytest.raises(ValueError, match="ambiguous"):
        jax_gna.supported_implementations(q, q, q, 7)
    assert make_params(q, q, q, (7, 7)).rank == 2  # a tuple says it
    assert make_params(q, q, q, 7, rank=1).rank == 1  # so does na1d
    assert make_params(q, q, q, 7, stride=(1, 1)).rank == 2  # or any per-axis option


def test_an_int_kernel_size_where_the_shape_has_one_reading():
    q, k = z(9, 4, 8), z(9, 2, 8)  # [X, H, D]: 1-D, no batch dims
    assert make_params(q, k, k, 3).rank == 1


LAYOUT_ERRORS = {
    # tokens flattened to [batch, tokens, heads, head_dim], given to na2d
    "flattened_tokens_to_na2d": (
        dict(q=z(2, 64, 4, 8), k=z(2, 64, 2, 8), v=z(2, 64, 2, 3), kernel_size=7, fn="na2d"),
        r"spatial shape=\(2, 64\).*\[batch\.\.\., \*spatial, heads, head_dim\]; `query` "
        r"\(2, 64, 4, 8\) reads as no batch dims, spatial \(2, 64\), heads 4, head_dim 8\. If "
        r"the axis of 2 is a batch axis.*1 spatial axis: pass kernel_size=\(7,\) or call na1d",
    ),
    # a 3-D window on a batch of 2-D grids
    "three_tuple_on_2d_grid": (
        dict(kernel_size=(3, 3, 3)),
        r"`query` \(2, 6, 5, 4, 8\) reads as no batch dims, spatial \(2, 6, 5\).*batch axis.*"
        r"2 spatial axes: pass kernel_size=\(3, 3\) or call na2d",
    ),
    # a 2-D window on a 1-D problem [batch, length, heads, head_dim]
    "pair_on_1d_problem": (
        dict(q=z(1, 8, 2, 4), k=z(1, 8, 2, 4), v=z(1, 8, 2, 4)),
        r"reads as no batch dims, spatial \(1, 8\), heads 2, head_dim 4\. If the axis of 1 is a "
        r"batch axis.*pass kernel_size=\(3,\) or call na1d",
    ),
    # heads-first [B, H, X, Y, D] with GQA: the "spatial" dims differ
    "heads_first_gqa": (
        dict(q=z(2, 4, 6, 5, 8), k=z(2, 2, 6, 5, 8), v=z(2, 2, 6, 5, 8), fn="na2d"),
        r"token layout.*`query` \(2, 4, 6, 5, 8\) reads as batch \(2,\), spatial \(4, 6\), "
        r"heads 5.*Heads-first arrays.*moveaxis",
    ),
    # heads-first [B, H, X, Y, D] with few heads: the heads axis is smaller than the window
    "heads_first_few_heads": (
        dict(q=z(2, 2, 6, 5, 8), k=z(2, 2, 6, 5, 8), v=z(2, 2, 6, 5, 8), fn="na2d"),
        r"reads as batch \(2,\), spatial \(2, 6\), heads 5.*heads of heads-first arrays",
    ),
    "heads_not_divisible_shows_the_reading": (
        dict(q=z(2, 6, 5, 3, 8)),
        r"heads=3, kv_heads=2.*`query` \(2, 6, 5, 3, 8\) reads as batch \(2,\), spatial \(6, 5\)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(LAYOUT_ERRORS))
def test_layout_errors_state_the_layout_the_reading_and_the_fix(name):
    kwargs, match = LAYOUT_ERRORS[name]
    kwargs = dict(kwargs)
    fn = getattr(jax_gna, kwargs.pop("fn", "gna"))
    with pytest.raises(ValueError, match=match):
        _call(fn, **kwargs)


def test_legal_heads_first_looking_shapes_are_not_refused():
    """More "heads" than spatial positions, or a window that fits the heads axis: legal
    heads-last input, not an error (the docs show the layout instead)."""
    q = z(1, 4, 4, 16, 8)  # [B, X, Y, H=16, D]
    assert _call(jax_gna.na2d, q=q, k=q, v=q, kernel_size=3).shape == (1, 4, 4, 16, 8)


def test_traced_kernel_size_says_how_to_make_it_static():
    f = jax.jit(lambda q, n: jax_gna.gna(q, K, V, n))
    with pytest.raises(TypeError, match=r"`kernel_size` must be static.*static_argnames"):
        f(Q, jnp.int32(3))
    f = jax.jit(lambda q, n: jax_gna.na2d(q, K, V, (3, n)))
    with pytest.raises(TypeError, match=r"`kernel_size` must be static.*functools.partial"):
        f(Q, jnp.int32(3))


@pytest.mark.parametrize("entry", ["gna", "na2d", "reference"])
def test_mask_and_bias_are_refused_with_what_is_supported(entry):
    fn = reference.gna if entry == "reference" else getattr(jax_gna, entry)
    with pytest.raises(
        NotImplementedError, match=r"`mask` is not supported.*is_causal.*additional_keys"
    ):
        _call(fn, mask=jnp.ones((30, 30), bool))
    with pytest.raises(NotImplementedError, match=r"`bias` is not supported.*`scale`"):
        _call(fn, bias=z(30, 30))
    # None, as jax.nn.dot_product_attention's callers pass it, is fine.
    assert _call(fn, mask=None, bias=None).shape == (2, 6, 5, 4, 3)


def test_head_dim_0_needs_an_explicit_scale():
    q, v = z(2, 6, 5, 4, 0), z(2, 6, 5, 2, 3)
    k = z(2, 6, 5, 2, 0)
    with pytest.raises(ValueError, match=r"head dim 0.*default `scale`.*pass `scale`"):
        make_params(q, k, v, (3, 3))
    assert make_params(q, k, v, (3, 3), scale=1.0).scale == 1.0
