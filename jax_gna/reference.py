"""The pure-jnp masked reference: dense scores, the exact GNA mask, fp32 softmax.

This is the oracle every implementation is tested against, and the function we recommend users
compare their integrations with (e.g. with ``chex.assert_trees_all_close``). It costs
``O(N^2)`` memory and time for ``N`` tokens, so keep it to small problems.

Shape legend: ``B...`` batch dims, ``X...`` spatial dims, ``H`` query heads, ``Hkv`` key/value
heads, ``D`` query/key head dim, ``Dv`` value head dim, ``E`` additional key/value tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jax_gna import _window
from jax_gna._mesh import explicit_mesh, on_auto_axes
from jax_gna._params import GnaParams, make_params

_HIGHEST = jax.lax.Precision.HIGHEST


def gna(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    kernel_size: int | tuple[int, ...],
    *,
    stride: int | tuple[int, ...] = 1,
    dilation: int | tuple[int, ...] = 1,
    is_causal: bool | tuple[bool, ...] = False,
    scale: float | None = None,
    additional_keys: ArrayLike | None = None,
    additional_values: ArrayLike | None = None,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Generalized neighborhood attention by a dense masked softmax (the reference).

    Same arguments, semantics and results as `jax_gna.gna` (see there), computed in float32
    with the full ``[N, N]`` mask built from the window rule. Differentiable.

    Returns:
      ``out`` ``[B..., X..., H, Dv]`` in the query's dtype, and with ``return_lse=True`` also
      ``lse`` ``[B..., X..., H]`` in float32 (natural log of the sum of exponentiated scaled
      scores).
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    if additional_keys is not None:
        additional_keys = jnp.asarray(additional_keys)
    if additional_values is not None:
        additional_values = jnp.asarray(additional_values)
    params = make_params(
        query,
        key,
        value,
        kernel_size,
        stride=stride,
        dilation=dilation,
        is_causal=is_causal,
        scale=scale,
        additional_keys=additional_keys,
        additional_values=additional_values,
    )
    out, lse = attention(query, key, value, params, additional_keys, additional_values)
    return (out, lse) if return_lse else out


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    params: GnaParams,
    additional_keys: jax.Array | None = None,
    additional_values: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The reference on validated inputs: returns ``(out, lse)``."""
    rank = params.rank
    n_batch = query.ndim - rank - 2
    spatial = query.shape[n_batch : n_batch + rank]
    visible = _window.mask(
        spatial, params.kernel_size, params.stride, params.dilation, params.is_causal
    )
    keys, values = [key], [value]
    if additional_keys is not None:
        # Extra tokens join the same softmax and are visible to every query.
        n_extra = additional_keys.shape[-3]
        visible = np.concatenate([visible, np.ones((visible.shape[0], n_extra), bool)], axis=1)
        keys.append(additional_keys)
        values.append(additional_values)
    return softmax_attention(query, keys, values, params.scale, n_batch, visible)


def softmax_attention(
    query: jax.Array,
    keys: list[jax.Array],
    values: list[jax.Array],
    scale: float,
    n_batch: int,
    visible: np.ndarray | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Masked softmax attention in float32 over the concatenation of `keys`/`values`.

    Args:
      query: ``[B..., T..., H, D]`` (any token dims between the ``n_batch`` batch dims and the
        heads).
      keys, values: each ``[B..., S..., Hkv, D]`` / ``[B..., S..., Hkv, Dv]``.
      visible: boolean ``[prod(T), total keys]`` or None for no mask.

    Returns:
      ``out`` ``[B..., T..., H, Dv]`` in the query's dtype and fp32 ``lse`` ``[B..., T..., H]``.
    """
    if explicit_mesh(query) is not None:
        # The reshapes below cannot re-type sharded dims of an Explicit mesh: XLA partitions it.
        def attend(q, ks, vs):
            return softmax_attention(q, ks, vs, scale, n_batch, visible)

        return on_auto_axes(attend, query, keys, values)
    batch_shape = query.shape[:n_batch]
    tokens_shape = query.shape[n_batch:-2]
    heads, kv_heads = query.shape[-2], keys[0].shape[-2]
    b, n = math.prod(batch_shape), math.prod(tokens_shape)
    f32 = jnp.float32
    q = query.reshape(b, n, kv_heads, heads // kv_heads, query.shape[-1]).astype(f32)
    k = jnp.concatenate([x.reshape(b, -1, kv_heads, x.shape[-1]).astype(f32) for x in keys], 1)
    v = jnp.concatenate([x.reshape(b, -1, kv_heads, x.shape[-1]).astype(f32) for x in values], 1)
    scores = jnp.einsum("bnkgd,bmkd->bkgnm", q, k, precision=_HIGHEST) * scale
    if visible is not None:
        scores = jnp.where(jnp.asarray(visible), scores, -jnp.inf)
    lse = jax.nn.logsumexp(scores, axis=-1)
    probs = jnp.exp(scores - lse[..., None])
    out = jnp.einsum("bkgnm,bmkd->bnkgd", probs, v, precision=_HIGHEST)
    out = out.reshape(*batch_shape, *tokens_shape, heads, v.shape[-1]).astype(query.dtype)
    lse = jnp.moveaxis(lse, 3, 1).reshape(*batch_shape, *tokens_shape, heads)
    return out, lse
