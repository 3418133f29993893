"""Derivatives of `jax_gna.reference.gna` in every mode: forward (jvp, jacfwd, linearize),
reverse, higher order (hessians in each composition) and under vmap, against autodiff of the
same masked softmax written in plain jnp (no custom rules), central finite differences, and one
another; and forward mode keeps a non-finite entry to the queries whose window holds it, as
reverse mode does (`tests/test_nonfinite.py`)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jax_gna import reference
from tests import oracle

TOL = dict(atol=2e-5, rtol=2e-5)
HIGHEST = jax.lax.Precision.HIGHEST

# [B=2, 5, 9, H=4, D=4] with GQA (2 kv heads), Dv = 3, 2 extra tokens; stride, dilation and
# causality on different axes; odd extents.
SPATIAL = (5, 9)
WINDOW = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
NAMES = ("query", "key", "value", "additional_keys", "additional_values")


def _arrays(seed, spatial=SPATIAL, batch=2, heads=4, kv_heads=2, dim=4, dim_v=3, extra=2):
    rng = np.random.default_rng(seed)
    n = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    a = dict(
        query=n(batch, *spatial, heads, dim),
        key=n(batch, *spatial, kv_heads, dim),
        value=n(batch, *spatial, kv_heads, dim_v),
    )
    if extra:
        a["additional_keys"] = n(batch, extra, kv_heads, dim)
        a["additional_values"] = n(batch, extra, kv_heads, dim_v)
    return a


def _reference(window=WINDOW):
    return lambda a: reference.gna(**a, **window, return_lse=True)


def _plain(window=WINDOW, spatial=SPATIAL):
    """The same attention as plain jnp: dense scores, the oracle's mask, softmax; autodiff
    differentiates it in every mode with no custom rule."""
    visible = oracle.visible(spatial, *window.values())

    def attend(a):
        q = a["query"]
        b, heads, dim = q.shape[0], q.shape[-2], q.shape[-1]
        n = math.prod(spatial)
        k = a["key"].reshape(b, n, -1, dim)
        v = a["value"].reshape(b, n, -1, a["value"].shape[-1])
        mask = visible
        if "additional_keys" in a:
            k = jnp.concatenate([k, a["additional_keys"]], 1)
            v = jnp.concatenate([v, a["additional_values"]], 1)
            mask = np.concatenate([mask, np.ones((n, a["additional_keys"].shape[1]), bool)], 1)
        group = heads // k.shape[2]
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        s = jnp.einsum("bnhd,bmhd->bhnm", q.reshape(b, n, heads, dim), k, precision=HIGHEST)
        s = jnp.where(mask, s * dim**-0.5, -jnp.inf)
        out = jnp.einsum("bhnm,bmhd->bnhd", jax.nn.softmax(s), v, precision=HIGHEST)
        lse = jnp.moveaxis(jax.nn.logsumexp(s, -1), 1, 2)
        return out.reshape(*q.shape[:-1], v.shape[-1]), lse.reshape(q.shape[:-1])

    return attend


def _close(got, want, tol=TOL):
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **tol), got, want)


def test_reference_and_plain_jnp_agree():
    a = _arrays(0)
    _close(_reference()(a), _plain()(a))


def test_jvp_and_linearize_match_plain_autodiff():
    a, t = _arrays(1), _arrays(2)

    @functools.partial(jax.jit, static_argnums=2)
    def jvp(a, t, attend):
        return jax.jvp(attend, (a,), (t,))

    out, tangent = jvp(a, t, _reference())
    want_out, want_tangent = jvp(a, t, _plain())
    _close(out, want_out)
    _close(tangent, want_tangent)
    _close(jax.jit(lambda a, t: jax.linearize(_reference(), a)[1](t))(a, t), want_tangent)


def test_jvp_matches_central_differences():
    a, t = _arrays(3), _arrays(4)
    eps = 1e-2
    f = jax.jit(_reference())

    def at(step):
        return f(jax.tree.map(lambda x, d: x + step * d, a, t))

    want = jax.tree.map(lambda p, m: (p - m) / (2 * eps), at(eps), at(-eps))
    _close(jax.jvp(f, (a,), (t,))[1], want, dict(atol=2e-3, rtol=2e-3))


def test_forward_and_reverse_mode_are_transposes():
    """<g, J t> == <J^T g, t> for the same point: jvp against jax.vjp."""
    a, t, rng = _arrays(5), _arrays(6), np.random.default_rng(7)
    g = tuple(jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in _reference()(a))

    @jax.jit
    def both_sides(a, t, g):
        forward = jax.jvp(_reference(), (a,), (t,))[1]
        pulled = jax.vjp(_reference(), a)[1](g)[0]
        lhs = sum(jnp.vdot(x, y) for x, y in zip(g, forward))
        return lhs, sum(jnp.vdot(pulled[n], t[n]) for n in NAMES)

    np.testing.assert_allclose(*both_sides(a, t, g), rtol=1e-4)


def test_jacfwd_equals_jacrev_and_plain_autodiff():
    a = _arrays(8, batch=1)
    keys = ("key", "additional_values")  # one input of the grid, one extra

    @jax.jit
    def jacobians(a):
        def f(attend):
            return lambda x: attend({**a, **dict(zip(keys, x))})

        x = tuple(a[n] for n in keys)
        return (
            jax.jacfwd(f(_reference()))(x),
            jax.jacrev(f(_reference()))(x),
            jax.jacfwd(f(_plain()))(x),
        )

    fwd, rev, plain = jacobians(a)
    _close(fwd, rev, dict(atol=1e-5, rtol=1e-5))
    _close(fwd, plain)


# A tiny 1-D problem: hessians over every input stay small.
TINY_WINDOW = dict(kernel_size=(3,), stride=(1,), dilation=(2,), is_causal=(False,))


def _tiny_loss(attend):
    rng = np.random.default_rng(9)
    w_out = jnp.asarray(rng.normal(size=(1, 7, 2, 2)), jnp.float32)
    w_lse = jnp.asarray(rng.normal(size=(1, 7, 2)), jnp.float32)

    def loss(flat, unravel):
        out, lse = attend(unravel(flat))
        return jnp.sum(jnp.sin(out) * w_out) + jnp.sum(lse * w_lse)

    return loss


@pytest.mark.parametrize(
    "compose",
    [jax.hessian, lambda f: jax.jacrev(jax.jacrev(f)), lambda f: jax.jacfwd(jax.jacfwd(f))],
    ids=["fwd-over-rev", "rev-over-rev", "fwd-over-fwd"],
)
def test_hessians_match_plain_autodiff(compose):
    a = _arrays(10, spatial=(7,), batch=1, heads=2, kv_heads=1, dim=2, dim_v=2, extra=1)
    flat, unravel = ravel_pytree(a)
    got = jax.jit(compose(lambda x: _tiny_loss(_reference(TINY_WINDOW))(x, unravel)))(flat)
    want = jax.jit(jax.hessian(lambda x: _tiny_loss(_plain(TINY_WINDOW, (7,)))(x, unravel)))(flat)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got, got.T, atol=1e-4, rtol=1e-4)


def test_vmap_of_forward_and_reverse_mode():
    a, t = _arrays(11), _arrays(12)

    def loss(attend):
        return lambda a: sum(jnp.sum(jnp.sin(x)) for x in attend(a))

    @functools.partial(jax.jit, static_argnums=(2, 3))
    def derivatives(a, t, attend, vmapped):
        jvp = lambda a, t: jax.jvp(attend, (a,), (t,))[1]  # noqa: E731
        grad = jax.grad(loss(attend))
        if not vmapped:
            return jvp(a, t), grad(a)
        split = lambda x: x.reshape(2, 1, *x.shape[1:])  # noqa: E731
        merge = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        a, t = jax.tree.map(split, a), jax.tree.map(split, t)
        return jax.tree.map(merge, (jax.vmap(jvp)(a, t), jax.vmap(grad)(a)))

    _close(derivatives(a, t, _reference(), True), derivatives(a, t, _plain(), False))


BAD_TOKEN = (1, 2, 3)  # batch, x, y


@pytest.mark.parametrize("name", ["query", "key", "value"])
def test_forward_mode_keeps_a_nan_to_the_windows_that_hold_it(name):
    """Tangents of the queries whose window holds the nan are nan; the others are finite and
    the same as with that entry replaced by 0 (they do not depend on it)."""
    a, t = _arrays(13), _arrays(14)
    spoiled = dict(a)
    spoiled[name] = a[name].at[(*BAD_TOKEN, 1, 0)].set(jnp.nan)
    clean = dict(a)
    clean[name] = a[name].at[(*BAD_TOKEN, 1, 0)].set(0.0)
    t_out, t_lse = jax.jvp(_reference(), (spoiled,), (t,))[1]
    want_out, want_lse = jax.jvp(_reference(), (clean,), (t,))[1]
    flat = BAD_TOKEN[1] * SPATIAL[1] + BAD_TOKEN[2]
    if name == "query":
        sees = np.arange(math.prod(SPATIAL)) == flat
    else:
        sees = oracle.visible(SPATIAL, *WINDOW.values())[:, flat]
    bad = np.zeros((2, *SPATIAL), bool)
    bad[BAD_TOKEN[0]] = sees.reshape(SPATIAL)
    # The nan is in head 1: query head 1, or kv head 1 (query heads 2 and 3).
    heads = np.arange(4) == 1 if name == "query" else np.arange(4) // 2 == 1
    bad_rows = bad[..., None] & heads  # [B, X, Y, H]
    assert np.isnan(t_out[bad_rows]).all() and np.isnan(t_lse[bad_rows]).all()
    np.testing.assert_allclose(t_out[~bad_rows], want_out[~bad_rows], **TOL)
    np.testing.assert_allclose(t_lse[~bad_rows], want_lse[~bad_rows], **TOL)
