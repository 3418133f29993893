"""The public API (`jax_gna.gna`, `na1d`/`na2d`/`na3d`, `supported_implementations`) under
jit, vmap and grad, the `implementation=` choices and their errors, `return_lse` and `scale`.
Results are compared with the brute-force oracle."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _implementations
from tests import oracle

f32 = jnp.float32
TOL = dict(atol=2e-5, rtol=2e-5)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)
IMPLS = [None, "xla", "reference"]
IMPL_IDS = ["default", "xla", "reference"]

# A 2-D problem: q [B=2, 6, 5, H=4, D=8], GQA with 2 kv heads, Dv = 6, 3 extra tokens.
WINDOW = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(1, 1), is_causal=(False, True))


def arrays(seed, batch=(2,), spatial=(6, 5), heads=4, kv_heads=2, extra=3):
    rng = np.random.default_rng(seed)
    n = lambda *s: jnp.asarray(rng.normal(size=s), f32)  # noqa: E731
    a = dict(
        query=n(*batch, *spatial, heads, 8),
        key=n(*batch, *spatial, kv_heads, 8),
        value=n(*batch, *spatial, kv_heads, 6),
    )
    if extra:
        a["additional_keys"] = n(*batch, extra, kv_heads, 8)
        a["additional_values"] = n(*batch, extra, kv_heads, 6)
    return a


def want(a, window=WINDOW, scale=None, **cot):
    f64 = {k: np.asarray(v, np.float64) for k, v in a.items()}
    return oracle.attention(
        f64["query"],
        f64["key"],
        f64["value"],
        *window.values(),
        rank=len(window["kernel_size"]),
        extra_k=f64.get("additional_keys"),
        extra_v=f64.get("additional_values"),
        scale=scale,
        **cot,
    )


def test_supported_implementations_on_cpu():
    a = arrays(0, extra=0)
    sup = jax_gna.supported_implementations(**a, **WINDOW)
    assert list(sup) == ["cuda", "cpu", "xla", "reference"]
    assert sup["xla"] is None and sup["reference"] is None
    assert isinstance(sup["cuda"], str) and "GPU" in sup["cuda"], sup
    assert sup["cpu"] is None or isinstance(sup["cpu"], str)


def test_supported_implementations_validates_arguments():
    a = arrays(0, extra=0)
    with pytest.raises(ValueError, match="`stride`"):
        jax_gna.supported_implementations(**a, kernel_size=(3, 3), stride=4)


@pytest.mark.parametrize("bad", ["XLA", "triton", "", 3], ids=["XLA", "triton", "empty", "int"])
def test_unknown_implementation_raises_value_error(bad):
    with pytest.raises(ValueError, match="Unknown `implementation`"):
        jax_gna.gna(**arrays(0), **WINDOW, implementation=bad)


def test_cuda_on_cpu_raises_not_implemented_with_reason():
    with pytest.raises(NotImplementedError, match=r"implementation='cuda'.*GPU.*Usable here"):
        jax_gna.gna(**arrays(0), **WINDOW, implementation="cuda")


def test_cpu_implementation_runs_or_says_why():
    a = arrays(0)
    reason = jax_gna.supported_implementations(a["query"], a["key"], a["value"], **WINDOW)["cpu"]
    if reason is None:
        out = jax_gna.gna(**a, **WINDOW, implementation="cpu")
        np.testing.assert_allclose(out, want(a)[0], **TOL)
    else:
        with pytest.raises(NotImplementedError, match="implementation='cpu'"):
            jax_gna.gna(**a, **WINDOW, implementation="cpu")


def test_default_picks_first_usable_implementation(monkeypatch):
    a = arrays(1)
    chosen = []
    select = _implementations.select

    def spy(*args):
        chosen.append(select(*args))
        return chosen[-1]

    monkeypatch.setattr(_implementations, "select", spy)
    out = jax_gna.gna(**a, **WINDOW)
    sup = jax_gna.supported_implementations(a["query"], a["key"], a["value"], **WINDOW)
    assert chosen == [next(i for i in ("cuda", "cpu", "xla") if sup[i] is None)]
    np.testing.assert_allclose(out, want(a)[0], **TOL)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_return_lse(impl):
    a = arrays(2)
    out = jax_gna.gna(**a, **WINDOW, implementation=impl)
    out2, lse = jax_gna.gna(**a, **WINDOW, implementation=impl, return_lse=True)
    assert isinstance(out, jax.Array) and out.shape == (2, 6, 5, 4, 6) and out.dtype == f32
    assert lse.shape == (2, 6, 5, 4) and lse.dtype == f32
    w_out, w_lse = want(a)
    np.testing.assert_allclose(out, w_out, **TOL)
    np.testing.assert_allclose(out2, w_out, **TOL)
    np.testing.assert_allclose(lse, w_lse, **TOL)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize("scale", [None, 0.3, 2.0, 0.0], ids=["default", "0.3", "2", "zero"])
def test_scale(scale, impl):
    """None means head_dim ** -0.5; any number (zero included) multiplies the scores."""
    a = arrays(3, extra=0)
    out, lse = jax_gna.gna(**a, **WINDOW, scale=scale, implementation=impl, return_lse=True)
    w_out, w_lse = want(a, scale=8**-0.5 if scale is None else scale)
    np.testing.assert_allclose(out, w_out, **TOL)
    np.testing.assert_allclose(lse, w_lse, **TOL)


def test_rank_fixed_entry_points():
    a = arrays(4, batch=(2, 1), extra=0)
    # Two batch dims: na2d fixes the rank, so plain ints work.
    out = jax_gna.na2d(**a, kernel_size=3, stride=2)
    w = want(a, window=dict(kernel_size=(3, 3), stride=(2, 2), dilation=(1, 1), is_causal=(0, 0)))
    np.testing.assert_allclose(out, w[0], **TOL)
    assert jax_gna.na2d.__name__ == "na2d" and "2-D" in jax_gna.na2d.__doc__
    b = arrays(5, batch=(), spatial=(9,), extra=0)
    np.testing.assert_allclose(
        jax_gna.na1d(**b, kernel_size=4, dilation=2),
        want(b, window=dict(kernel_size=(4,), stride=(1,), dilation=(2,), is_causal=(False,)))[0],
        **TOL,
    )
    c = arrays(6, batch=(1,), spatial=(3, 4, 5), extra=0)
    np.testing.assert_allclose(
        jax_gna.na3d(**c, kernel_size=(2, 3, 4), is_causal=True),
        want(c, window=dict(kernel_size=(2, 3, 4), stride=1, dilation=1, is_causal=True))[0],
        **TOL,
    )


def test_rank_checks():
    one_d = arrays(7, batch=(), spatial=(8,), extra=0)  # [8, H, D]: no batch dim
    with pytest.raises(ValueError, match="`query`.*at least 4 dims"):
        jax_gna.na2d(**one_d, kernel_size=3)
    with pytest.raises(ValueError, match="`kernel_size` has 2 entries"):
        jax_gna.na1d(**arrays(7, extra=0), kernel_size=(3, 3))
    two_d = arrays(7, batch=(1,), spatial=(6, 5), extra=0)
    with pytest.raises(ValueError, match="`query`.*at least 5 dims"):
        jax_gna.na3d(**{k: v[0] for k, v in two_d.items()}, kernel_size=3)


def test_array_likes_are_accepted():
    a = arrays(8, extra=2)
    np_args = {k: np.asarray(v) for k, v in a.items()}
    out = jax_gna.gna(**np_args, **WINDOW, implementation="xla")
    np.testing.assert_allclose(out, want(a)[0], **TOL)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_jit_no_retrace_for_same_shapes(impl):
    chex.clear_trace_counter()  # the counter is per function body, shared by the parametrizations

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(a):
        return jax_gna.gna(**a, **WINDOW, implementation=impl, return_lse=True)

    for seed in (9, 10, 11):
        a = arrays(seed)
        out, lse = f(a)
        w_out, w_lse = want(a)
        np.testing.assert_allclose(out, w_out, **TOL)
        np.testing.assert_allclose(lse, w_lse, **TOL)


def test_jit_with_static_arguments():
    f = jax.jit(
        jax_gna.gna,
        static_argnames=("kernel_size", "stride", "dilation", "is_causal", "implementation"),
    )
    a = arrays(12)
    out = f(**a, **WINDOW, implementation="xla")
    np.testing.assert_allclose(out, want(a)[0], **TOL)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_vmap_over_extra_leading_dim(impl):
    a = arrays(13, batch=(3, 2))
    f = jax.vmap(lambda x: jax_gna.na2d(**x, **WINDOW, implementation=impl, return_lse=True))
    out, lse = f(a)
    w_out, w_lse = want(a)  # the oracle treats both leading dims as batch
    np.testing.assert_allclose(out, w_out, **TOL)
    np.testing.assert_allclose(lse, w_lse, **TOL)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_vmap_batching_only_the_query(impl):
    kv = arrays(14, batch=(2,))
    qs = arrays(15, batch=(3, 2), extra=0)["query"]

    def one(q, k, v, ek, ev):
        return jax_gna.na2d(
            q, k, v, **WINDOW, additional_keys=ek, additional_values=ev, implementation=impl
        )

    f = jax.vmap(one, in_axes=(0, None, None, None, None))
    out = jax.jit(f)(qs, *(kv[n] for n in ("key", "value", "additional_keys", "additional_values")))
    for s in range(3):
        np.testing.assert_allclose(out[s], want({**kv, "query": qs[s]})[0], **TOL)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_grad_matches_oracle(impl):
    a = arrays(16)
    rng = np.random.default_rng(17)
    w_out = rng.normal(size=(2, 6, 5, 4, 6))
    w_lse = rng.normal(size=(2, 6, 5, 4))

    def loss(x):
        out, lse = jax_gna.gna(**x, **WINDOW, implementation=impl, return_lse=True)
        return jnp.sum(out * w_out) + jnp.sum(lse * w_lse)

    grads = jax.jit(jax.grad(loss))(a)
    _, _, w = want(a, dout=w_out, dlse=w_lse)
    for name, g in zip(("query", "key", "value", "additional_keys", "additional_values"), w):
        np.testing.assert_allclose(grads[name], g, err_msg=name, **GRAD_TOL)


@pytest.mark.parametrize("impl", ["xla", "reference"])
def test_grad_of_vmapped_call(impl):
    a = arrays(18, batch=(2, 2), extra=0)

    def loss(q, k, v):
        out = jax.vmap(lambda *x: jax_gna.na2d(*x, **WINDOW, implementation=impl))(q, k, v)
        return jnp.sum(out**2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(a["query"], a["key"], a["value"])
    out = want(a)[0]
    _, _, w = want(a, dout=2 * out, dlse=np.zeros(out.shape[:-1]))
    for g, wg in zip(grads, w[:3]):
        np.testing.assert_allclose(g, wg, **GRAD_TOL)


def test_half_precision_output_dtype():
    a = {k: v.astype(jnp.bfloat16) for k, v in arrays(19).items()}
    for impl in IMPLS:
        out, lse = jax_gna.gna(**a, **WINDOW, implementation=impl, return_lse=True)
        assert out.dtype == jnp.bfloat16 and lse.dtype == f32, impl
        chex.assert_trees_all_close(
            out.astype(f32), want(a)[0].astype(np.float32), atol=3e-2, rtol=1e-2
        )


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_zero_extra_tokens_is_no_extra_tokens(impl):
    a = arrays(20, extra=0)
    empty = dict(
        additional_keys=jnp.zeros((2, 0, 2, 8), f32),
        additional_values=jnp.zeros((2, 0, 2, 6), f32),
    )
    out, lse = jax_gna.gna(**a, **empty, **WINDOW, implementation=impl, return_lse=True)
    w_out, w_lse = want(a)
    np.testing.assert_allclose(out, w_out, **TOL)
    np.testing.assert_allclose(lse, w_lse, **TOL)
