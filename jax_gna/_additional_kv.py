"""Additional key/value tokens (e.g. text tokens) attended by every query.

Implementations other than the reference compute the neighborhood part and a dense attention
over the extra tokens separately and merge the two by their log-sum-exps. The merge is plain
JAX, so gradients are exact as long as the neighborhood part is differentiable in both its
output and its LSE. It runs in float32 and rounds to the input dtype once, at the end; for the
same accuracy as without extra tokens, the neighborhood part should come in float32 too
(`jax_gna._implementations` asks the implementations that can for it).

The dense part is `attend`: every query sees every extra token, so it needs none of the
reference's masking, and its gradient recomputes the probabilities from the saved log-sum-exp
rather than keeping them: a video model's ``[tokens, heads, extra]`` float32 scores are
gigabytes per layer, and a training step would otherwise hold several of them per layer.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jax_gna._mesh import explicit_mesh, on_auto_axes
from jax_gna._nonfinite import finite
from jax_gna._symbolic import static_product


@jax.custom_vjp
def merge(
    out_a: jax.Array, lse_a: jax.Array, out_b: jax.Array, lse_b: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One softmax over the union of two disjoint key sets, from the two partial results.

    ``out_*`` ``[..., H, Dv]`` and fp32 ``lse_*`` ``[..., H]``; the output is float32. In the
    gradient, a row whose cotangents are all zero contributes nothing, so that a non-finite
    row the loss does not use stays out of it (autodiff would give ``0 * nan``).
    """
    return _merge_fwd(out_a, lse_a, out_b, lse_b)[0]


def _merge_fwd(out_a, lse_a, out_b, lse_b):
    lse = jnp.logaddexp(lse_a, lse_b)
    weight_a, weight_b = jnp.exp(lse_a - lse), jnp.exp(lse_b - lse)
    out = _weighted_sum(out_a, weight_a, out_b, weight_b)
    # The merged output is recomputed in the backward rather than kept: it is the largest array.
    return (out, lse), (out_a, out_b, weight_a, weight_b)


def _weighted_sum(out_a, weight_a, out_b, weight_b):
    f32 = jnp.float32
    return weight_a[..., None] * out_a.astype(f32) + weight_b[..., None] * out_b.astype(f32)


def _merge_bwd(residuals, cotangents):
    out_a, out_b, weight_a, weight_b = residuals
    out = _weighted_sum(out_a, weight_a, out_b, weight_b)
    dout, dlse = cotangents
    active = jnp.any(dout != 0, axis=-1) | (dlse != 0)

    def part(weight, part_out):
        # d out / d part_out = weight; d (out, lse) / d part_lse = weight * (part_out - out, 1)
        d_out = jnp.where(active[..., None], weight[..., None] * dout, 0.0)
        d_lse = weight * (jnp.sum(dout * (part_out.astype(jnp.float32) - out), -1) + dlse)
        return d_out.astype(part_out.dtype), jnp.where(active, d_lse, 0.0)

    return (*part(weight_a, out_a), *part(weight_b, out_b))


merge.defvjp(_merge_fwd, _merge_bwd)


def attend_and_merge(
    query: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    additional_keys: jax.Array,
    additional_values: jax.Array,
    scale: float,
    n_batch: int,
) -> tuple[jax.Array, jax.Array]:
    """Add the extra tokens to a neighborhood result ``(out, lse)`` of `query` (``out`` in any
    float dtype); the result is in the query's dtype, rounded once."""
    extra_out, extra_lse = attend(query, additional_keys, additional_values, scale, n_batch)
    out, lse = merge(out, lse, extra_out, extra_lse)
    return out.astype(query.dtype), lse


def attend(
    query: jax.Array, keys: jax.Array, values: jax.Array, scale: float, n_batch: int
) -> tuple[jax.Array, jax.Array]:
    """Softmax attention of every query over every extra token, in float32.

    ``query`` ``[B..., T..., H, D]``, ``keys``/``values`` ``[B..., M, Hkv, D|Dv]`` (``H`` a
    multiple of ``Hkv``). Returns float32 ``out`` ``[B..., T..., H, Dv]`` and ``lse``
    ``[B..., T..., H]``. Non-finite entries follow `jax_gna.reference`'s rule: the forward is
    the textbook one (every query sees every extra token), and in the gradient a query whose
    cotangents are all zero contributes nothing.
    """
    if explicit_mesh(query) is not None:
        # The reshapes below cannot re-type sharded dims of an Explicit mesh: XLA partitions it.
        return on_auto_axes(lambda q, k, v: attend(q, k, v, scale, n_batch), query, keys, values)
    batch_shape, tokens_shape = query.shape[:n_batch], query.shape[n_batch:-2]
    heads, kv_heads = query.shape[-2], keys.shape[-2]
    b, n = math.prod(batch_shape), math.prod(tokens_shape)  # explicit: any may be 0
    q = query.reshape(b, n, kv_heads, heads // kv_heads, query.shape[-1])
    k = keys.reshape(b, keys.shape[n_batch], kv_heads, keys.shape[-1])
    v = values.reshape(b, values.shape[n_batch], kv_heads, values.shape[-1])
    out, lse = _in_chunks(q, k, v, scale)
    out = out.reshape(*batch_shape, *tokens_shape, heads, v.shape[-1])
    return out, lse.reshape(*batch_shape, *tokens_shape, heads)


# The most bytes of float32 scores one step holds: the queries go through in chunks of this
# many scores (and as many probabilities and their gradient), one after the other.
CHUNK_SCORE_BYTES = 64 * 2**20


def _in_chunks(q, k, v, scale):
    """`_dense` over chunks of queries, one at a time (`jax.lax.map`; its gradient too)."""
    b, n, kv_heads, group, _ = q.shape
    # Symbolic batch and head counts (shape-polymorphic export) count as 1: the chunks then
    # bound the scores per batch entry or head; the query tokens are always static.
    per_query = 4 * static_product((b, kv_heads, group)) * k.shape[1]
    chunk = max(1, CHUNK_SCORE_BYTES // max(1, per_query))
    if n <= chunk:
        return _dense(q, k, v, scale)
    count = -(-n // chunk)
    # Zero queries pad the last chunk: finite, and left out of the result (so of the gradient).
    q = jnp.pad(q, ((0, 0), (0, count * chunk - n), (0, 0), (0, 0), (0, 0)))
    q = jnp.moveaxis(q.reshape(b, count, chunk, *q.shape[2:]), 1, 0)
    out, lse = jax.lax.map(lambda qc: _dense(qc, k, v, scale), q)
    out = jnp.moveaxis(out, 0, 1).reshape(b, count * chunk, *out.shape[3:])[:, :n]
    return out, jnp.moveaxis(lse, 0, 1).reshape(b, count * chunk, *lse.shape[3:])[:, :n]


def _product(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """``einsum(spec, a, b)`` in float32 as exact as the reference's: 16-bit operands multiply
    exactly into a float32 accumulator (so they need no conversion), anything else runs at
    the highest precision."""
    if a.dtype == b.dtype and a.dtype in (jnp.bfloat16, jnp.float16):
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    f32, highest = jnp.float32, jax.lax.Precision.HIGHEST
    return jnp.einsum(spec, a.astype(f32), b.astype(f32), precision=highest)


def _scores(q, k, scale):
    """``[B, N, Hkv, G, D]`` x ``[B, M, Hkv, D]`` -> float32 ``[B, N, Hkv, G, M]``."""
    return _product("bnkgd,bmkd->bnkgm", q, k) * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dense(q, k, v, scale):
    """``(out [B, N, Hkv, G, Dv], lse [B, N, Hkv, G])``, both float32."""
    return _dense_fwd(q, k, v, scale)[0]


def _dense_fwd(q, k, v, scale):
    s = _scores(q, k, scale)
    lse = jax.nn.logsumexp(s, axis=-1)
    out = _product("bnkgm,bmkd->bnkgd", jnp.exp(s - lse[..., None]), v)
    return (out, lse), (q, k, v, out, lse)


def _dense_bwd(scale, residuals, cotangents):
    q, k, v, out, lse = residuals
    dout, dlse = cotangents
    # A query whose cotangents are all zero contributes nothing, whatever its (maybe
    # non-finite) probabilities: its rows of p and ds are exactly 0, and the products with
    # q and k take finite operands (a non-finite entry still reaches every query that uses it
    # through p or ds).
    active = (jnp.any(dout != 0, axis=-1) | (dlse != 0))[..., None]
    p = jnp.where(active, jnp.exp(_scores(q, k, scale) - lse[..., None]), 0.0)
    dp = _product("bnkgd,bmkd->bnkgm", dout, v)
    delta = jnp.sum(jnp.where(active, dout * out, 0.0), axis=-1, keepdims=True)
    ds = jnp.where(active, p * (dp - delta + dlse[..., None]), 0.0) * scale
    dq = _product("bnkgm,bmkd->bnkgd", ds, finite(k))
    dk = _product("bnkgm,bnkgd->bmkd", ds, finite(q))
    dv = _product("bnkgm,bnkgd->bmkd", p, dout)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)
