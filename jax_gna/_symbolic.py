"""Symbolic dims (shape polymorphism, as in ``jax.export.symbolic_shape("b, 16, 16, 2, 8")``):
which dims may be symbolic, and the integer shapes that stand in for them where the compiled
extension's host helpers need concrete ones.

Batch dims may be symbolic, and so may the head counts when their GQA group (query heads per
key/value head) is static. Spatial dims, head dims and the number of extra tokens must be
static: the window tables, tiles and kernel choice are built from them at trace time.
"""

from __future__ import annotations

import math
from typing import Any

import jax


def is_symbolic(dim: Any) -> bool:
    return jax.export.is_symbolic_dim(dim)


def static_product(dims) -> int:
    """The product of the static dims among `dims`; symbolic ones count as 1."""
    return math.prod(d for d in dims if not is_symbolic(d))


def _require_static(name: str, shape: tuple, index: int, what: str, why: str) -> None:
    dim = shape[index]
    if is_symbolic(dim):
        raise ValueError(
            f"`{name}` has the symbolic {what} {dim!r} (dim {index % len(shape)} of shape "
            f"{shape}); it must be static: {why}. Only batch dims and head counts may be "
            "symbolic."
        )


def check(query, key, value, additional_keys, additional_values, n_batch: int) -> None:
    """ValueError naming the first dim of the validated-rank inputs that is symbolic where it
    must be static (see the module docstring)."""
    rank = query.ndim - n_batch - 2
    window = "the window geometry and tiles are computed from it at trace time"
    for name, x in (("query", query), ("key", key), ("value", value)):
        for a in range(rank):
            _require_static(name, x.shape, n_batch + a, f"spatial extent (axis {a})", window)
        _require_static(name, x.shape, -1, "head dim", "the kernels and tiles depend on it")
    for name, x in (("additional_keys", additional_keys), ("additional_values", additional_values)):
        if getattr(x, "ndim", None) == n_batch + 3:  # (other inputs: `make_params` says why)
            _require_static(name, x.shape, -3, "number of extra tokens", "the mask spans them")
            _require_static(name, x.shape, -1, "head dim", "the kernels and tiles depend on it")
    heads, kv_heads = query.shape[-2], key.shape[-2]
    symbolic_heads = is_symbolic(heads) or is_symbolic(kv_heads)
    # (no kv heads at all: `make_params` says so)
    if symbolic_heads and kv_heads != 0 and is_symbolic(heads // kv_heads):
        raise ValueError(
            f"Symbolic head counts need a static GQA group: `query` heads ({heads!r}) must be a "
            f"static multiple of `key` heads ({kv_heads!r}), e.g. 2*h and h."
        )


def stand_ins(query, key, value, n_batch: int) -> tuple[list, list, list, Any]:
    """``(q shape, k shape, v shape, factor)``: integer shapes for the extension's host helpers,
    with symbolic batch dims as 1 and symbolic head counts as one GQA group (the group's query
    heads, 1 key/value head); `factor` is the product of what they replace (1 without symbolic
    dims). A size linear in batch and heads, such as a workspace, is the helpers' answer for the
    stand-ins times `factor` (an upper bound where it is rounded up per part)."""
    batch = query.shape[:n_batch]
    factor = math.prod(d for d in batch if is_symbolic(d))
    batch = [1 if is_symbolic(d) else d for d in batch]
    heads, kv_heads = query.shape[-2], key.shape[-2]
    if is_symbolic(heads) or is_symbolic(kv_heads):
        factor *= kv_heads
        heads, kv_heads = heads // kv_heads, 1

    def shape(x, x_heads):
        return [*batch, *x.shape[n_batch:-2], x_heads, x.shape[-1]]

    return shape(query, heads), shape(key, kv_heads), shape(value, kv_heads), factor
