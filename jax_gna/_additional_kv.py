"""Additional key/value tokens (e.g. text tokens) attended by every query.

Implementations other than the reference compute the neighborhood part and a dense attention
over the extra tokens separately and merge the two by their log-sum-exps. The merge is plain
JAX, so gradients are exact as long as the neighborhood part is differentiable in both its
output and its LSE. It runs in float32 and rounds to the input dtype once, at the end; for the
same accuracy as without extra tokens, the neighborhood part should come in float32 too
(`jax_gna._implementations` asks the implementations that can for it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_gna import reference


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
    f32 = jnp.float32
    out = weight_a[..., None] * out_a.astype(f32) + weight_b[..., None] * out_b.astype(f32)
    return (out, lse), (out_a, out_b, out, weight_a, weight_b)


def _merge_bwd(residuals, cotangents):
    out_a, out_b, out, weight_a, weight_b = residuals
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
    extra_out, extra_lse = reference.softmax_attention(
        query, [additional_keys], [additional_values], scale, n_batch, out_dtype=jnp.float32
    )
    out, lse = merge(out, lse, extra_out, extra_lse)
    return out.astype(query.dtype), lse
