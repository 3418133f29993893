"""Additional key/value tokens (e.g. text tokens) attended by every query.

Implementations other than the reference compute the neighborhood part and a dense attention
over the extra tokens separately and merge the two by their log-sum-exps. The merge is plain
JAX, so gradients are exact as long as the neighborhood part is differentiable in both its
output and its LSE.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_gna import reference


def merge_partials(
    outs: list[jax.Array] | tuple[jax.Array, ...], lses: list[jax.Array] | tuple[jax.Array, ...]
) -> tuple[jax.Array, jax.Array]:
    """One softmax over the union of disjoint key sets, from the partial results of each.

    ``outs[i]`` ``[..., H, Dv]`` and fp32 ``lses[i]`` ``[..., H]``; a part without a visible
    key has lse -inf (and any finite out). Rows that see no key in any part get out 0 and lse
    -inf, with finite gradients. Accumulates in fp32; the output has ``outs[0]``'s dtype.
    """
    if len(outs) == 1:
        return outs[0], lses[0]
    lse = functools.reduce(jnp.logaddexp, lses)
    # exp(-inf - 0) = 0 where no part sees a key (where the gradient must not be NaN either).
    finite = jnp.where(jnp.isneginf(lse), 0.0, lse)
    out = sum(
        jnp.exp(part_lse - finite)[..., None] * o.astype(jnp.float32)
        for o, part_lse in zip(outs, lses)
    )
    return out.astype(outs[0].dtype), lse


def attend_and_merge(
    query: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    additional_keys: jax.Array,
    additional_values: jax.Array,
    scale: float,
    n_batch: int,
) -> tuple[jax.Array, jax.Array]:
    """Add the extra tokens to a neighborhood result ``(out, lse)`` of `query`."""
    extra_out, extra_lse = reference.softmax_attention(
        query, [additional_keys], [additional_values], scale, n_batch
    )
    return merge_partials((out, extra_out), (lse, extra_lse))
