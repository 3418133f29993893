"""The pure-jnp masked reference: dense scores, the exact GNA mask, fp32 softmax.

This is the oracle every implementation is tested against, and the function we recommend users
compare their integrations with (e.g. with ``chex.assert_trees_all_close``). It costs
``O(N^2)`` memory and time for ``N`` tokens, so keep it to small problems.

Shape legend: ``B...`` batch dims, ``X...`` spatial dims, ``H`` query heads, ``Hkv`` key/value
heads, ``D`` query/key head dim, ``Dv`` value head dim, ``E`` additional key/value tokens.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jax_gna import _nonfinite, _window
from jax_gna._mesh import explicit_mesh, on_auto_axes
from jax_gna._params import GnaParams, make_params, refuse_mask_and_bias

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
    mask: None = None,
    bias: None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Generalized neighborhood attention by a dense masked softmax (the reference).

    Same arguments, semantics and results as `jax_gna.gna` (see there), computed in float32
    with the full ``[N, N]`` mask built from the window rule. A non-finite query, key or value
    reaches exactly the output channels whose window holds it, as if each query's window were
    computed alone. Differentiable in reverse mode (``jax.grad``, ``jax.vjp``; its own VJP, the
    textbook softmax backward in which a query whose cotangents are zero contributes nothing,
    so that a loss over the other queries has finite gradients).

    Returns:
      ``out`` ``[B..., X..., H, Dv]`` in the query's dtype, and with ``return_lse=True`` also
      ``lse`` ``[B..., X..., H]`` in float32 (natural log of the sum of exponentiated scaled
      scores).
    """
    refuse_mask_and_bias(mask, bias)
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
    visible: np.ndarray | jax.Array | None = None,
    out_dtype: jnp.dtype | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Masked softmax attention in float32 over the concatenation of `keys`/`values`.

    Args:
      query: ``[B..., T..., H, D]`` (any token dims between the ``n_batch`` batch dims and the
        heads).
      keys, values: each ``[B..., S..., Hkv, D]`` / ``[B..., S..., Hkv, Dv]``.
      visible: boolean ``[prod(T), total keys]`` or None for no mask.
      out_dtype: dtype of ``out``; default the query's.

    Returns:
      ``out`` ``[B..., T..., H, Dv]`` and fp32 ``lse`` ``[B..., T..., H]``. A non-finite query,
      key or value reaches only the outputs whose window holds it, in the gradients too (see
      `_masked_softmax`).
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

    def flat(x):  # explicit sizes: any of them may be 0
        return x.reshape(b, math.prod(x.shape[n_batch:-2]), kv_heads, x.shape[-1]).astype(f32)

    q = query.reshape(b, n, kv_heads, heads // kv_heads, query.shape[-1]).astype(f32)
    k = jnp.concatenate([flat(x) for x in keys], 1)
    v = jnp.concatenate([flat(x) for x in values], 1)
    if visible is None:
        visible = np.ones((n, k.shape[1]), bool)
    out, lse = _masked_softmax(q, k, v, jnp.asarray(visible), scale)
    out = out.reshape(*batch_shape, *tokens_shape, heads, v.shape[-1])
    out = out.astype(query.dtype if out_dtype is None else out_dtype)
    lse = jnp.moveaxis(lse, 3, 1).reshape(*batch_shape, *tokens_shape, heads)
    return out, lse


def _scores(q, k, visible, scale):
    """``[B, N, Hkv, G, D]`` x ``[B, M, Hkv, D]`` -> scaled scores ``[B, Hkv, G, N, M]``,
    -inf where the key is not visible."""
    s = jnp.einsum("bnkgd,bmkd->bkgnm", q, k, precision=_HIGHEST) * scale
    return jnp.where(visible, s, -jnp.inf)


def _probabilities(s, lse, where):
    """exp(s - lse) where `where` (visible pairs, of the rows that count), exactly 0 elsewhere
    (so a row without visible keys, lse -inf, gets 0 rather than nan)."""
    return jnp.where(where, jnp.exp(s - lse[..., None]), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _masked_softmax(q, k, v, visible, scale):
    """``(out [B, N, Hkv, G, Dv], lse [B, Hkv, G, N])`` of q ``[B, N, Hkv, G, D]``, k ``[B, M,
    Hkv, D]``, v ``[B, M, Hkv, Dv]`` (float32) and visibility ``[N, M]``.

    Its gradient is the textbook softmax backward, with one rule on top: a query whose
    cotangents (of ``out`` and ``lse``) are all zero contributes nothing, so that ``0 * nan``
    never carries a non-finite entry to gradients that do not depend on it (autodiff of the
    same formulas would).
    """
    return _masked_softmax_fwd(q, k, v, visible, scale)[0]


def _masked_softmax_fwd(q, k, v, visible, scale):
    s = _scores(q, k, visible, scale)
    lse = jax.nn.logsumexp(s, axis=-1)
    p = _probabilities(s, lse, visible)
    out = jnp.einsum("bkgnm,bmkd->bnkgd", p, _nonfinite.finite(v), precision=_HIGHEST)
    out = jnp.where(_nonfinite.reached(visible, ~jnp.isfinite(v))[:, :, :, None], jnp.nan, out)
    return (out, lse), (q, k, v, visible, out, lse)


def _masked_softmax_bwd(scale, residuals, cotangents):
    q, k, v, visible, out, lse = residuals
    dout, dlse = cotangents
    active = jnp.moveaxis(jnp.any(dout != 0, axis=-1), 1, 3) | (dlse != 0)  # [B, Hkv, G, N]
    p = _probabilities(_scores(q, k, visible, scale), lse, visible & active[..., None])
    dv = jnp.einsum("bkgnm,bnkgd->bmkd", p, dout, precision=_HIGHEST)
    dp = jnp.einsum("bnkgd,bmkd->bkgnm", dout, _nonfinite.finite(v), precision=_HIGHEST)
    # A non-finite value reaches dS through delta: the output of a query that sees it is nan.
    delta = jnp.moveaxis(jnp.sum(dout * out, axis=-1), 1, 3) - dlse
    ds = jnp.where(p == 0, 0.0, p * (dp - delta[..., None])) * scale
    dq = jnp.einsum("bkgnm,bmkd->bnkgd", ds, _nonfinite.finite(k), precision=_HIGHEST)
    dk = jnp.einsum("bkgnm,bnkgd->bmkd", ds, _nonfinite.finite(q), precision=_HIGHEST)
    return dq, dk, dv, None


_masked_softmax.defvjp(_masked_softmax_fwd, _masked_softmax_bwd)
