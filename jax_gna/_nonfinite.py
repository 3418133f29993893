"""Non-finite queries, keys and values stay inside the windows that hold them.

In IEEE arithmetic ``0 * nan`` is ``nan``, so a dense product of masked probabilities with the
values (or of zero cotangents with the keys) would carry one non-finite entry to every query of
the product. The implementations that compute such products multiply the finite parts,
`finite`, and put ``nan`` back where a query's window holds a non-finite entry:

- `jax_gna.reference` exactly, per output channel: `reached`;
- the ``xla`` tiles for the price of one more value channel, per (query, head): `flag_rows`
  appends to every value the channel "not finite", which the probability-weighted sum turns
  into the probability mass of such values, and `poison_rows` makes the rows where it is
  positive ``nan``.

Keys and queries need no such step: a non-finite one makes the masked scores (and so the whole
output row and its LSE) of exactly the queries that see it non-finite.

Derivatives meet the same product in transposition: a linear map whose coefficients are ``nan``
sends a zero cotangent to ``nan``. The reference's derivative rules therefore use finite
coefficients and add the ``nan`` back through `nan_if_nonzero`, which keeps a zero a zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir


def finite(x: jax.Array) -> jax.Array:
    """``x`` with its non-finite entries replaced by 0."""
    return jnp.where(jnp.isfinite(x), x, 0)


def reached(visible: jax.Array, bad: jax.Array) -> jax.Array:
    """Which outputs a non-finite value reaches.

    Args:
      visible: ``[N, M]`` (query, key) visibility, bool.
      bad: ``[B, M, Hkv, Dv]``, bool: the value entries that are not finite.

    Returns:
      bool ``[B, N, Hkv, Dv]``: True where a key visible to the query holds a non-finite entry
      in that channel.
    """
    f32 = jnp.float32
    return jnp.einsum("nm,bmkd->bnkd", visible.astype(f32), bad.astype(f32)) > 0


def flag_rows(values: jax.Array) -> jax.Array:
    """``[..., Dv]`` -> ``[..., Dv + 1]``: the finite values and a last channel, 1 where the
    value has a non-finite entry, else 0."""
    bad = ~jnp.all(jnp.isfinite(values), axis=-1, keepdims=True)
    return jnp.concatenate([finite(values), bad.astype(values.dtype)], axis=-1)


def poison_rows(out: jax.Array) -> jax.Array:
    """``[..., Dv + 1]`` probability-weighted sums of `flag_rows` values -> ``[..., Dv]``, nan
    in the rows that gave a non-finite value a positive probability."""
    return jnp.where(out[..., -1:] > 0, jnp.nan, out[..., :-1])


def nan_if_nonzero(x: jax.Array) -> jax.Array:
    """``nan`` where ``x`` is nonzero (or nan), 0 where it is zero.

    A primitive that autodiff treats as linear and as its own transpose: its derivative and its
    transpose are itself, applied to the tangent or cotangent. So a derivative rule built from
    finite coefficients, `jnp.where` masks, sums and this marks exactly the derivatives that a
    nonzero (co)tangent carries to a non-finite entry, and leaves those of zero ones at 0 (a
    product with a ``nan`` coefficient would give ``0 * nan = nan``). Sums of its results stay
    0 or ``nan`` (no cancellation), so they act as "any".
    """
    return _nan_if_nonzero_p.bind(x)


def _nan_if_nonzero_impl(x):
    return jnp.where(x != 0, jnp.nan, jnp.zeros_like(x))


_nan_if_nonzero_p = Primitive("nan_if_nonzero")
_nan_if_nonzero_p.def_impl(_nan_if_nonzero_impl)
_nan_if_nonzero_p.def_abstract_eval(lambda aval: aval)
mlir.register_lowering(_nan_if_nonzero_p, mlir.lower_fun(_nan_if_nonzero_impl, False))
ad.deflinear(_nan_if_nonzero_p, lambda ct: [nan_if_nonzero(ct)])
batching.defvectorized(_nan_if_nonzero_p)
