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
from jax.typing import ArrayLike, DTypeLike

from jax_gna import _fp8, _nonfinite, _window
from jax_gna._mesh import explicit_mesh, on_auto_axes
from jax_gna._params import GnaParams, make_params, out_dtype_of, refuse_mask_and_bias

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
    q_descale: ArrayLike | None = None,
    k_descale: ArrayLike | None = None,
    v_descale: ArrayLike | None = None,
    out_dtype: DTypeLike | None = None,
    return_lse: bool = False,
    mask: None = None,
    bias: None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Generalized neighborhood attention by a dense masked softmax (the reference).

    Same arguments, semantics and results as `jax_gna.gna` (see there), computed in float32
    with the full ``[N, N]`` mask built from the window rule. A non-finite query, key or value
    reaches exactly the output channels whose window holds it, as if each query's window were
    computed alone (``docs/nonfinite.md``). Differentiable in every mode and order
    (``jax.grad``, ``jax.vjp``, ``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``, hessians) and
    under ``jax.vmap``. Its own derivative rule is the textbook softmax derivative, except that
    a query whose cotangents are all zero contributes nothing to the gradients (and a zero
    tangent nothing to the forward-mode derivatives): a loss over the queries that never see a
    non-finite entry has finite gradients, equal to those with that entry replaced by 0.

    Float8 inputs with ``q_descale``/``k_descale``/``v_descale`` (see `jax_gna.gna`) attend to
    their dequantised float32 values, ``out`` in bfloat16 by default; differentiating through
    them raises.

    Returns:
      ``out`` ``[B..., X..., H, Dv]`` in ``out_dtype`` (default the query's dtype, bfloat16 for
      float8 inputs; rounded once from float32), and
      with ``return_lse=True`` also ``lse`` ``[B..., X..., H]`` in float32 (natural log of the
      sum of exponentiated scaled scores).
    """
    refuse_mask_and_bias(mask, bias)
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    if additional_keys is not None:
        additional_keys = jnp.asarray(additional_keys)
    if additional_values is not None:
        additional_values = jnp.asarray(additional_values)
    scales = _fp8.descales(query, key, value, q_descale, k_descale, v_descale)
    out_dtype = out_dtype_of(out_dtype, query)
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
    if scales is not None:
        query, key, value, additional_keys, additional_values = _fp8.dequantize(
            scales, query, key, value, additional_keys, additional_values
        )
    out, lse = attention(query, key, value, params, additional_keys, additional_values, out_dtype)
    return (out, lse) if return_lse else out


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    params: GnaParams,
    additional_keys: jax.Array | None = None,
    additional_values: jax.Array | None = None,
    out_dtype: jnp.dtype | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The reference on validated inputs: returns ``(out, lse)``, ``out`` in `out_dtype`
    (default the query's)."""
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
    return softmax_attention(query, keys, values, params.scale, n_batch, visible, out_dtype)


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
            return softmax_attention(q, ks, vs, scale, n_batch, visible, out_dtype)

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


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _masked_softmax(q, k, v, visible, scale):
    """``(out [B, N, Hkv, G, Dv], lse [B, Hkv, G, N])`` of q ``[B, N, Hkv, G, D]``, k ``[B, M,
    Hkv, D]``, v ``[B, M, Hkv, Dv]`` (float32) and visibility ``[N, M]``.

    Its derivative is the textbook softmax JVP, written so that its transpose (the VJP) follows
    one rule on top of the textbook backward: a query whose cotangents (of ``out`` and ``lse``)
    are all zero contributes nothing, so that ``0 * nan`` never carries a non-finite entry to
    gradients that do not depend on it (autodiff of the same formulas would). The linear maps
    take finite coefficients; `_nonfinite.nan_if_nonzero` adds ``nan`` where a nonzero
    (co)tangent meets a non-finite entry, as `_nan_pattern` describes. Every transformation
    applies: forward and reverse mode, any order, vmap.
    """
    return _forward(q, k, v, visible, scale)[:2]


def _forward(q, k, v, visible, scale):
    """``out``, ``lse`` and the probabilities ``p [B, Hkv, G, N, M]`` (0 where not visible)."""
    s = _scores(q, k, visible, scale)
    lse = jax.nn.logsumexp(s, axis=-1)
    p = _probabilities(s, lse, visible)
    out = jnp.einsum("bkgnm,bmkd->bnkgd", p, _nonfinite.finite(v), precision=_HIGHEST)
    out = jnp.where(_nonfinite.reached(visible, ~jnp.isfinite(v))[:, :, :, None], jnp.nan, out)
    return out, lse, p


@_masked_softmax.defjvp
def _masked_softmax_jvp(scale, primals, tangents):
    q, k, v, visible = primals
    dq, dk, dv, _ = tangents
    out, lse, p = _forward(q, k, v, visible, scale)
    fp, fout = _nonfinite.finite(p), _nonfinite.finite(out)
    fq, fk, fv = (_nonfinite.finite(x) for x in (q, k, v))
    # Textbook: d lse = sum P dS, d out = sum P (dS - d lse) V + P dV, with dS the scores'.
    d_scores = jnp.einsum("bnkgd,bmkd->bkgnm", dq, fk, precision=_HIGHEST) + jnp.einsum(
        "bnkgd,bmkd->bkgnm", fq, dk, precision=_HIGHEST
    )
    weighted = fp * (d_scores * scale)
    d_lse = jnp.sum(weighted, axis=-1)
    d_out = (
        jnp.einsum("bkgnm,bmkd->bnkgd", weighted, fv, precision=_HIGHEST)
        - jnp.moveaxis(d_lse, 3, 1)[..., None] * fout
        + jnp.einsum("bkgnm,bmkd->bnkgd", fp, dv, precision=_HIGHEST)
    )
    nan_out, nan_lse = _nan_pattern(p, out, dq, dk, dv)
    return (out, lse), (d_out + nan_out, d_lse + nan_lse)


def _nan_pattern(p, out, dq, dk, dv):
    """The ``nan`` (else 0) that tangents ``dq, dk, dv`` carry to ``(d out, d lse)``.

    A query is non-finite when its probabilities or its output are: a non-finite query or key
    in its window makes its scores non-finite, a non-finite value its output. Its ``(d out, d
    lse)`` is ``nan`` where a nonzero tangent reaches it through a pair of nonzero probability
    (the query's own ``dq``, or ``dk`` of such a key) or through a non-finite probability
    (``dv`` of such a key).

    Transposed, it is the reverse-mode rule: the ``dq``, ``dk``, ``dv`` of those pairs are
    ``nan`` where the query's cotangents are nonzero (the textbook backward's nan), and exactly
    0 where they are all zero.
    """
    bad_p = ~jnp.isfinite(p)  # p is 0 where not visible
    bad_row = jnp.any(bad_p, -1) | jnp.moveaxis(jnp.any(~jnp.isfinite(out), -1), 1, 3)
    score_pairs = (p != 0) & bad_row[..., None]  # [B, Hkv, G, N, M]
    nz = _nonfinite.nan_if_nonzero

    def per_key(x):  # [B, M, Hkv, D] -> [B, Hkv, 1, 1, M]: nan where the key's tangent is nonzero
        return jnp.moveaxis(jnp.sum(nz(x), -1), 1, 2)[:, :, None, None, :]

    from_q = jnp.where(jnp.any(score_pairs, -1), jnp.moveaxis(jnp.sum(nz(dq), -1), 1, 3), 0.0)
    from_k = jnp.sum(jnp.where(score_pairs, per_key(dk), 0.0), -1)
    from_v = jnp.sum(jnp.where(bad_p, per_key(dv), 0.0), -1)
    nan_lse = nz(from_q + from_k + from_v)  # [B, Hkv, G, N]
    nan_out = nz(jnp.broadcast_to(jnp.moveaxis(nan_lse, 3, 1)[..., None], out.shape))
    return nan_out, nan_lse
