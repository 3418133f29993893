"""The FFI op under JAX transformations: eager and jit, grad, vmap (any extra leading dims,
unbatched operands, non-leading mapped axes), vmap(grad), nested vmap, jax.checkpoint; and no
retracing for repeated calls with the same shapes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _extension, _ffi_op, reference
from jax_gna._params import make_params

pytestmark = pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))

WINDOW = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
TOL = dict(atol=1e-4, rtol=1e-4)


def _inputs(batch=(2,), seed=0):
    rng = np.random.default_rng(seed)  # not jax.random: it compiles per shape (slow on CPU)
    shapes = [(*batch, 7, 9, 4, 8), (*batch, 7, 9, 2, 8), (*batch, 7, 9, 2, 6)]
    return tuple(jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes)


def _ffi(q, k, v):
    return _ffi_op.gna_ffi(q, k, v, make_params(q, k, v, **WINDOW))


@jax.jit
def _reference(q, k, v):
    return reference.gna(q, k, v, **WINDOW, return_lse=True)


def _loss(fn):
    def loss(q, k, v):
        out, lse = fn(q, k, v)
        return jnp.sum(out * jnp.cos(out)) + jnp.sum(jnp.sin(lse))

    return loss


_ref_grad = jax.jit(jax.grad(_loss(_reference), (0, 1, 2)))


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_forward_and_grad_eager_and_jit(transform):
    q, k, v = _inputs()
    chex.assert_trees_all_close(transform(_ffi)(q, k, v), _reference(q, k, v), **TOL)
    grads = transform(jax.grad(_loss(_ffi), (0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close(grads, _ref_grad(q, k, v), **TOL)


def test_vmap_with_unbatched_key_value():
    q, k, v = _inputs(batch=(3, 2))
    out, lse = jax.vmap(_ffi, in_axes=(0, None, None))(q, k[0], v[0])
    for i in range(q.shape[0]):
        chex.assert_trees_all_close((out[i], lse[i]), _reference(q[i], k[0], v[0]), **TOL)


def test_vmap_over_a_non_leading_axis():
    q, k, v = _inputs(batch=(2, 3))
    out, lse = jax.vmap(_ffi, in_axes=1, out_axes=1)(q, k, v)
    chex.assert_trees_all_close((out, lse), _reference(q, k, v), **TOL)


def test_nested_vmap_folds_every_axis():
    q, k, v = _inputs(batch=(2, 2, 1))
    out, lse = jax.jit(jax.vmap(jax.vmap(_ffi)))(q, k, v)
    chex.assert_trees_all_close((out, lse), _reference(q, k, v), **TOL)
    text = jax.jit(jax.vmap(jax.vmap(_ffi))).lower(q, k, v).as_text()
    assert text.count("@jax_gna_fwd") == 1  # one call over the folded batch, not a loop


def test_vmap_of_grad():
    q, k, v = _inputs(batch=(3, 1))
    grads = jax.jit(jax.vmap(jax.grad(_loss(_ffi), (0, 1, 2))))(q, k, v)
    expected = jax.vmap(_ref_grad)(q, k, v)
    chex.assert_trees_all_close(grads, expected, **TOL)


def test_grad_of_vmap():
    q, k, v = _inputs(batch=(3, 1))

    def batched_loss(fn):
        return lambda q, k, v: jnp.sum(jax.vmap(_loss(fn))(q, k, v))

    grads = jax.jit(jax.grad(batched_loss(_ffi), (0, 1, 2)))(q, k, v)
    expected = jax.jit(jax.grad(batched_loss(_reference), (0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close(grads, expected, **TOL)


def test_checkpoint():
    q, k, v = _inputs()
    rematted = jax.checkpoint(_loss(_ffi))
    grads = jax.jit(jax.grad(rematted, (0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close(grads, _ref_grad(q, k, v), **TOL)


def test_public_api_jit_grad_vmap():
    q, k, v = _inputs(batch=(2, 1))

    def gna(q, k, v):
        return jax_gna.gna(q, k, v, **WINDOW, return_lse=True, implementation="cpu")

    grads = jax.jit(jax.vmap(jax.grad(_loss(gna), (0, 1, 2))))(q, k, v)
    chex.assert_trees_all_close(grads, jax.vmap(_ref_grad)(q, k, v), **TOL)


def test_repeated_calls_do_not_retrace():
    q, k, v = _inputs()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(q, k, v):
        # New but equal GnaParams on every trace; the op cache must not depend on identity.
        return jax.grad(_loss(_ffi), (0, 1, 2))(q, k, v)

    for i in range(3):
        step(q + i, k, v)
    chex.clear_trace_counter()


def test_op_cache_keys_on_equal_params():
    q, k, v = _inputs()
    a, b = make_params(q, k, v, **WINDOW), make_params(q, k, v, **WINDOW)
    assert a is not b and _ffi_op._forward_op(a, 2) is _ffi_op._forward_op(b, 2)
