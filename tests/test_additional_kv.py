"""The dense part of the extra tokens (`jax_gna._additional_kv.attend`): the same output, LSE
and gradients as the reference's masked softmax over the extra tokens alone, whole or in
chunks of queries, and a gradient whose memory does not grow with the number of queries times
the number of extra tokens (a video model's float32 scores are gigabytes per layer).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_gna import _additional_kv, reference

SCALE = 0.3


def _inputs(dtype, batch=(2, 3), tokens=(5, 7), heads=4, kv_heads=2, extra=9, dim=8, dim_v=6):
    rng = np.random.default_rng(0)
    n = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # noqa: E731
    return (
        n(*batch, *tokens, heads, dim),
        n(*batch, extra, kv_heads, dim),
        n(*batch, extra, kv_heads, dim_v),
    )


def _grads(attend, q, k, v, seed=1):
    """Gradients of a random linear function of ``out`` and ``lse``."""
    out, lse = attend(q, k, v)
    rng = np.random.default_rng(seed)
    w_out = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    w_lse = jnp.asarray(rng.normal(size=lse.shape), jnp.float32)

    def loss(q, k, v):
        out, lse = attend(q, k, v)
        return jnp.sum(out * w_out) + jnp.sum(lse * w_lse)

    return out, lse, jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def _ours(n_batch):
    return lambda q, k, v: _additional_kv.attend(q, k, v, SCALE, n_batch)


def _reference(n_batch):
    return lambda q, k, v: reference.softmax_attention(
        q, [k], [v], SCALE, n_batch, out_dtype=jnp.float32
    )


@pytest.mark.parametrize("chunk_bytes", [None, 3 * 4 * 6 * 2 * 2 * 9], ids=["whole", "chunks-of-3"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_matches_reference(monkeypatch, dtype, chunk_bytes):
    # chunks-of-3: three queries per chunk (a query's scores: 4 B x batch 6 x Hkv 2 x G 2 x M 9)
    if chunk_bytes is not None:
        monkeypatch.setattr(_additional_kv, "CHUNK_SCORE_BYTES", chunk_bytes)
    q, k, v = _inputs(dtype)
    with jax.default_matmul_precision("highest"):
        got = _grads(_ours(2), q, k, v)
        want = _grads(_reference(2), q, k, v)
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == jnp.float32 else dict(atol=2e-2, rtol=2e-2)
    for g, w in zip((got[0], got[1], *got[2]), (want[0], want[1], *want[2])):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), **tol)


def test_no_extra_tokens():
    q, k, v = _inputs(jnp.float32, extra=0)
    out, lse, (dq, dk, dv) = _grads(_ours(2), q, k, v)
    assert not np.any(out) and np.all(np.isneginf(lse)) and not np.any(dq)
    assert dk.shape == k.shape and dv.shape == v.shape


def test_zero_cotangent_rows_stay_out_of_the_gradient():
    # A nan query whose outputs the loss does not use leaves every gradient finite.
    q, k, v = _inputs(jnp.float32)
    q = q.at[0, 1, 2, 3, 1].set(jnp.nan)

    def loss(q, k, v):
        out, lse = _additional_kv.attend(q, k, v, SCALE, 2)
        return jnp.sum(out[1]) + jnp.sum(lse[1])

    for g in jax.grad(loss, argnums=(0, 1, 2))(q, k, v):
        assert np.all(np.isfinite(g))


def test_gradient_memory_is_chunked(monkeypatch):
    # 4096 queries x 8 heads x 1024 extra tokens: 128 MiB of float32 scores. The reference's
    # masked softmax keeps several such arrays for its gradient; in chunks of 4 MiB the
    # gradient's temporaries stay far below one.
    monkeypatch.setattr(_additional_kv, "CHUNK_SCORE_BYTES", 4 * 2**20)
    q = jax.ShapeDtypeStruct((1, 64, 64, 8, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 1024, 4, 64), jnp.bfloat16)
    scores = 4 * 64 * 64 * 8 * 1024

    def loss(q, k, v):
        out, lse = _additional_kv.attend(q, k, v, SCALE, 1)
        return jnp.sum(out) + jnp.sum(lse)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    temp = grad.lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes
    assert temp < scores / 2, f"{temp / 2**20:.1f} MiB of temporaries"


def test_symbolic_batch_in_chunks(monkeypatch):
    # Shape-polymorphic export: a symbolic batch counts as 1 in the chunk size (4 queries of
    # 2 x 2 heads x 9 extra tokens per chunk here).
    monkeypatch.setattr(_additional_kv, "CHUNK_SCORE_BYTES", 4 * 4 * 2 * 2 * 9)
    q, k, v = _inputs(jnp.float32, batch=(3,))
    (b,) = jax.export.symbolic_shape("b")
    shapes = [jax.ShapeDtypeStruct((b, *x.shape[1:]), x.dtype) for x in (q, k, v)]
    exported = jax.export.export(jax.jit(_ours(1)))(*shapes)
    with jax.default_matmul_precision("highest"):
        want = _reference(1)(q, k, v)
    for g, w in zip(exported.call(q, k, v), want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=2e-5)
