"""A non-finite query, key or value reaches only the queries whose window holds it: in the
outputs, the LSE and the gradients. The brute-force oracle visits each query's window alone, so
its nan pattern is the semantics; dense products (``0 * nan = nan``) must not widen it. The
reference and the CPU kernel follow it channel by channel; ``xla`` marks a non-finite value by
making the whole output row (that query and head) nan. The ``cuda`` forwards follow it channel
by channel too, by recomputing the rows their tile products made non-finite
(`tests/test_exact_row.py` on the host, `tests/gpu/test_cuda_nonfinite.py` on a GPU; the
``cuda`` backward keeps a bad entry only within its batch entry and head: ``docs/nonfinite.md``).

Gradients of a loss over the queries that never see the bad token are finite and equal to those
of the same inputs with the bad entry replaced by 0 (the loss does not depend on it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _extension
from tests import oracle
from tests.test_xla import tiling

f32 = jnp.float32
TOL = dict(atol=2e-5, rtol=2e-5)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)

# [B=2, 9, 8, H=4, D=8], GQA (2 kv heads), Dv = 6, stride/dilation/causal on different axes.
SPATIAL = (9, 8)
WINDOW = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(2, 1), is_causal=(False, True))
BAD_TOKEN = (1, 4, 3)  # batch, x, y
IMPLS = ["reference", "xla", "xla-small-tiles"]
if _extension.ext is not None:
    IMPLS.append("cpu")


def _arrays(seed=0, extra=0):
    rng = np.random.default_rng(seed)
    n = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    a = dict(query=n(2, *SPATIAL, 4, 8), key=n(2, *SPATIAL, 2, 8), value=n(2, *SPATIAL, 2, 6))
    if extra:
        a["additional_keys"] = n(2, extra, 2, 8)
        a["additional_values"] = n(2, extra, 2, 6)
    return a


def _spoil(a, name, bad=np.nan):
    a = {k: v.copy() for k, v in a.items()}
    a[name][(*BAD_TOKEN, 1, 2)] = bad  # head 1, channel 2
    return a


def _gna(impl, a, **kw):
    implementation = "xla" if impl.startswith("xla") else impl
    args = {k: jnp.asarray(v) for k, v in a.items()}
    if impl == "xla-small-tiles":  # many tiles, partial tiles, a lax.map chunk of 1
        with tiling(min_tile_tokens=1, scores_per_chunk=1):
            return jax_gna.gna(**args, **WINDOW, implementation=implementation, **kw)
    return jax_gna.gna(**args, **WINDOW, implementation=implementation, **kw)


def _oracle(a, **cot):
    f64 = {k: v.astype(np.float64) for k, v in a.items()}
    return oracle.attention(
        f64["query"], f64["key"], f64["value"], *WINDOW.values(), rank=2,
        extra_k=f64.get("additional_keys"), extra_v=f64.get("additional_values"), **cot,
    )  # fmt: skip


def _sees_bad_token(name):
    """[X, Y] queries of the bad batch element whose window holds the bad token (for a query:
    the query itself)."""
    flat = BAD_TOKEN[1] * SPATIAL[1] + BAD_TOKEN[2]
    if name == "query":
        sees = np.arange(np.prod(SPATIAL)) == flat
    else:
        sees = oracle.visible(SPATIAL, *WINDOW.values())[:, flat]
    return sees.reshape(SPATIAL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["query", "key", "value"])
@pytest.mark.parametrize("extra", [0, 2], ids=["grid", "extra-tokens"])
def test_nan_reaches_exactly_the_windows_that_hold_it(name, impl, extra):
    a = _spoil(_arrays(extra=extra), name)
    out, lse = _gna(impl, a, return_lse=True)
    out, (want_out, want_lse) = np.asarray(out), _oracle(a)
    np.testing.assert_allclose(lse, want_lse, equal_nan=True, **TOL)
    _assert_same_nonfinite(out, want_out, impl)
    rows = np.isnan(out).any(axis=(-1, -2))
    np.testing.assert_array_equal(rows[BAD_TOKEN[0]], _sees_bad_token(name))
    assert not rows[1 - BAD_TOKEN[0]].any()  # the other batch element


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_values_reach_exactly_the_windows_that_hold_them(impl, bad):
    a = _spoil(_arrays(), "value", bad)
    _assert_same_nonfinite(np.asarray(_gna(impl, a)), _oracle(a)[0], impl)


def _assert_same_nonfinite(out, want, impl):
    """Non-finite where the oracle is, per channel (per row for xla), and close elsewhere."""
    if impl.startswith("xla"):
        rows = ~np.isfinite(want).all(axis=-1, keepdims=True)
        want = np.where(rows, np.nan, want)
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(want))
    np.testing.assert_allclose(out[np.isfinite(out)], want[np.isfinite(want)], **TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["query", "key", "value"])
def test_gradients_of_a_loss_that_never_sees_the_bad_token_are_finite(name, impl):
    a = _spoil(_arrays(seed=1, extra=2), name)
    unused = np.zeros((2, *SPATIAL), bool)
    unused[BAD_TOKEN[0]] = _sees_bad_token(name)
    rng = np.random.default_rng(2)
    w_out = np.where(unused[..., None, None], 0.0, rng.normal(size=(2, *SPATIAL, 4, 6)))
    w_lse = np.where(unused[..., None], 0.0, rng.normal(size=(2, *SPATIAL, 4)))

    def loss(x):
        out, lse = _gna(impl, x, return_lse=True)
        # where, not a product: the unused outputs are nan, and nan * 0 is nan.
        return jnp.sum(jnp.where(unused[..., None, None], 0.0, out) * w_out) + jnp.sum(
            jnp.where(unused[..., None], 0.0, lse) * w_lse
        )

    grads = jax.grad(loss)({k: jnp.asarray(v) for k, v in a.items()})
    clean = {k: np.nan_to_num(v, nan=0.0) for k, v in a.items()}  # same loss, finite input
    want = _oracle(clean, dout=w_out, dlse=w_lse)[2]
    for n, w in zip(("query", "key", "value", "additional_keys", "additional_values"), want):
        assert np.isfinite(np.asarray(grads[n])).all(), n
        np.testing.assert_allclose(grads[n], w, err_msg=n, **GRAD_TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["query", "key", "value"])
def test_gradients_of_a_loss_that_sees_it_are_nan_where_the_oracle_says(name, impl):
    a = _spoil(_arrays(seed=3), name)
    rng = np.random.default_rng(4)
    w_out, w_lse = rng.normal(size=(2, *SPATIAL, 4, 6)), rng.normal(size=(2, *SPATIAL, 4))

    def loss(x):  # linear in out and lse: finite cotangents
        out, lse = _gna(impl, x, return_lse=True)
        return jnp.sum(out * w_out) + jnp.sum(lse * w_lse)

    grads = jax.grad(loss)({k: jnp.asarray(v) for k, v in a.items()})
    want = _oracle(a, dout=w_out, dlse=w_lse)[2]
    for n, w in zip(("query", "key", "value"), want):
        np.testing.assert_array_equal(np.isnan(grads[n]), np.isnan(w), err_msg=n)
        np.testing.assert_allclose(grads[n], w, err_msg=n, equal_nan=True, **GRAD_TOL)
