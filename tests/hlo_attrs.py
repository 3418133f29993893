"""Attributes of a custom call in lowered StableHLO text (``jax.jit(f).lower(...).as_text()``),
for the tests that check which tile shapes a call passes to the kernels."""

from __future__ import annotations

import re


def int64_attr(text: str, target: str, name: str) -> tuple[int, ...]:
    """The int64 array attribute `name` of the one `target` custom call in `text`."""
    (call,) = [line for line in text.splitlines() if f"@{target}(" in line]
    m = re.search(rf"\b{name} = dense<([^>]*)> : tensor<(\d+)xi64>", call)
    assert m, call
    values, size = m.group(1).strip("[]"), int(m.group(2))
    parsed = tuple(int(x) for x in values.split(",")) if values else ()
    return parsed * size if len(parsed) == 1 and size > 1 else parsed  # a splat: one value


def tiles(text: str, target: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(q_tile, kv_tile)`` of the one `target` custom call in `text`."""
    return int64_attr(text, target, "q_tile"), int64_attr(text, target, "kv_tile")
