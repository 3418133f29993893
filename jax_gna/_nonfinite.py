"""Non-finite keys and values stay inside the windows that hold them.

In IEEE arithmetic ``0 * nan`` is ``nan``, so a dense product of masked probabilities with the
values (or of zero cotangents with the keys) would carry one non-finite entry to every query of
the product. The implementations that compute such products (`jax_gna.reference`, the ``xla``
tiles) multiply the finite part instead, ``finite(x)``, and put ``nan`` back exactly where a
query's window holds a non-finite entry, ``reached(visible, bad)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
