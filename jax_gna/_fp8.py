"""FP8 inputs: which dtypes count, the descale rule, dequantisation, the forward-only guard, and
quantisation to float8 with per-tensor or per-head scales (`quantize_fp8`, public).

A float8 (``float8_e4m3fn`` or ``float8_e5m2``) query, key and value come with descale factors,
as in JAX's FP8 attention and FlashAttention-3: ``q_descale``, ``k_descale``, ``v_descale``
(None means 1), each a float32 scalar (per tensor) or an array ``[heads]`` (per query head for
``q_descale``, per key/value head for the others). The value attention sees is
``x.astype(float32) * descale``; extra tokens are in the same float8 dtype and take
``k_descale``/``v_descale``. The ``cuda`` implementation computes float8_e4m3fn in FP8 on Hopper
(and on Blackwell, built but never run; its FP8 forward kernels take the descales,
`descale_rows`); the ``xla`` and ``reference``
implementations attend to the dequantised float32 values. The output is bfloat16
(`FP8_OUT_DTYPE`) unless the call's ``out_dtype`` says otherwise (never float8). FP8 attention
is forward only (`dequantize` and `forward_only` make differentiation raise).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")
FP8_OUT_DTYPE = jnp.bfloat16  # the default ``out_dtype`` of float8 inputs
DESCALE_NAMES = ("q_descale", "k_descale", "v_descale")

FORWARD_ONLY = (
    "FP8 attention is forward only: a call with float8 query/key/value has no derivative "
    "rule, so jax.grad/jax.vjp/jax.jvp through it raise. Compute gradients in bf16/fp16 "
    "(quantise for inference only), or apply jax.lax.stop_gradient to the float8 inputs and "
    "descales where no gradient should flow."
)


def is_fp8(dtype: Any) -> bool:
    return str(dtype) in FP8_DTYPES


def float8_dtype(value: Any, name: str, *, none: bool = False) -> Any:
    """``value`` as one of the float8 dtypes (`FP8_DTYPES`), or None for None where ``none``;
    anything else raises TypeError naming the argument ``name``."""
    if value is None and none:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not is_fp8(dtype):
        allowed = ("None or " if none else "") + f"one of {', '.join(FP8_DTYPES)}"
        raise TypeError(f"`{name}` must be {allowed}, got {value!r}.")
    return dtype


def descales(
    query: Any,
    key: Any,
    value: Any,
    q_descale: Any = None,
    k_descale: Any = None,
    v_descale: Any = None,
) -> tuple[jax.Array | None, ...] | None:
    """The validated descales of a call: None for a call without float8 inputs, else one float32
    array (or None for 1) per tensor. Raises TypeError/ValueError naming the argument and the
    rule: float8 mixed with other dtypes, descales for non-float8 inputs, a descale of the wrong
    type, shape or (when concrete) a non-finite one."""
    arrays = (("query", query), ("key", key), ("value", value))
    given = (q_descale, k_descale, v_descale)
    fp8 = [name for name, x in arrays if is_fp8(x.dtype)]
    if not fp8:
        for name, d in zip(DESCALE_NAMES, given):
            if d is not None:
                raise TypeError(
                    f"`{name}` applies to float8 inputs only ({' or '.join(FP8_DTYPES)}); "
                    f"`query`, `key` and `value` are {query.dtype}, {key.dtype}, {value.dtype}. "
                    f"Drop `{name}`, or pass float8 query/key/value."
                )
        return None
    if len(fp8) < 3 or not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            "FP8 attention takes `query`, `key` and `value` in one float8 dtype "
            f"({' or '.join(FP8_DTYPES)}, with q_descale/k_descale/v_descale); got "
            f"{query.dtype}, {key.dtype}, {value.dtype}. Quantise all three, or none."
        )
    # Too few dims for a heads axis fail the shape rules of `make_params`.
    heads = (
        ("query heads", query.shape[-2] if query.ndim >= 2 else 1),
        ("key/value heads", key.shape[-2] if key.ndim >= 2 else 1),
        ("key/value heads", value.shape[-2] if value.ndim >= 2 else 1),
    )
    return tuple(
        _descale(name, d, per, n) for name, d, (per, n) in zip(DESCALE_NAMES, given, heads)
    )


def _descale(name: str, d: Any, per: str, heads: int) -> jax.Array | None:
    rule = f"a float32 scalar (per tensor) or a float32 array of shape ({heads},) (one per {per})"
    if d is None:
        return None
    if isinstance(d, bool | np.bool_) or not (isinstance(d, numbers.Real) or hasattr(d, "dtype")):
        raise TypeError(f"`{name}` must be {rule}, got {d!r}.")
    if hasattr(d, "dtype") and not isinstance(d, float):  # np.float64 is a Python float
        if d.dtype != jnp.float32:
            raise TypeError(f"`{name}` must be {rule}, got dtype {d.dtype}.")
        if tuple(d.shape) not in ((), (heads,)):
            raise ValueError(f"`{name}` must be {rule}, got shape {tuple(d.shape)}.")
    d = jnp.asarray(d, jnp.float32)
    try:
        concrete = np.asarray(d)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        concrete = None  # traced: its values are unknown until it runs
    if concrete is not None and not np.all(np.isfinite(concrete)):
        raise ValueError(f"`{name}` must be finite, got {concrete}.")
    return d


@jax.custom_jvp
def _forward_only(arrays):
    return arrays


@_forward_only.defjvp
def _forward_only_jvp(primals, tangents):
    raise NotImplementedError(FORWARD_ONLY)


def forward_only(arrays):
    """`arrays` (a pytree) unchanged; differentiating through it raises `FORWARD_ONLY`."""
    return _forward_only(arrays)


def descale_rows(scales, heads: int, kv_heads: int) -> jax.Array:
    """The descales (`descales`) as the CUDA FP8 kernel reads them: float32 ``[3, heads]``, the
    q, k and v descales of each query head (k and v: those of its key/value head, query head
    h attending key/value head ``h // (heads // kv_heads)``); None is 1."""
    rows = []
    for d, n in zip(scales, (heads, kv_heads, kv_heads)):
        d = jnp.ones((), jnp.float32) if d is None else d
        d = jnp.broadcast_to(d, (n,))
        rows.append(jnp.repeat(d, heads // n))
    return jnp.stack(rows)


def _scaled(x: jax.Array | None, descale: jax.Array | None) -> jax.Array | None:
    if x is None:
        return None
    x = x.astype(jnp.float32)
    if descale is None:
        return x
    # A per-head descale multiplies the heads axis ([..., heads, dim]).
    return x * (descale[:, None] if descale.ndim else descale)


def dequantize(scales, query, key, value, extra_keys=None, extra_values=None) -> tuple:
    """``(query, key, value, extra_keys, extra_values)`` in float32, each float8 array times its
    descale (`scales` from `descales`); extra tokens take the key/value descales.
    Differentiating through it raises `FORWARD_ONLY`."""
    query, key, value, extra_keys, extra_values, scales = forward_only(
        (query, key, value, extra_keys, extra_values, scales)
    )
    q_d, k_d, v_d = scales
    return (
        _scaled(query, q_d),
        _scaled(key, k_d),
        _scaled(value, v_d),
        _scaled(extra_keys, k_d),
        _scaled(extra_values, v_d),
    )


def quantize(arrays, dtype, per_head: bool = False) -> tuple[list[jax.Array | None], jax.Array]:
    """`arrays` (None allowed) in the float8 `dtype` with one scale shared by all of them,
    ``amax / max(dtype)`` (1 where the amax is 0), and its descale (float32): ``descale *
    quantized`` approximates the input. Per tensor the descale is a scalar; ``per_head`` gives
    one per head (the amax over every axis but the heads axis, ``[..., heads, dim]``), shape
    ``[heads]``. A key and its extra tokens share one scale, since attention takes one
    ``k_descale`` for both."""
    present = [x.astype(jnp.float32) for x in arrays if x is not None]
    largest = float(jnp.finfo(dtype).max)

    def amax(x):
        if not per_head:
            return jnp.max(jnp.abs(x))
        return jnp.max(jnp.abs(x), axis=tuple(a for a in range(x.ndim) if a != x.ndim - 2))

    peak = functools.reduce(jnp.maximum, [amax(x) for x in present])
    descale = jnp.where(peak > 0, peak / largest, 1.0).astype(jnp.float32)
    # A per-head descale divides the heads axis ([..., heads, dim]).
    divisor = descale[:, None] if per_head else descale
    # Clip: rounding of amax / descale may land above the largest finite float8 (NaN in e4m3fn).
    quantized = [
        None
        if x is None
        else jnp.clip(x.astype(jnp.float32) / divisor, -largest, largest).astype(dtype)
        for x in arrays
    ]
    return quantized, descale


def quantize_fp8(
    x: Any, dtype: Any = jnp.float8_e4m3fn, *, per_head: bool = False
) -> tuple[Any, jax.Array]:
    """Quantise attention inputs to float8 for `jax_gna.gna`, with their descale.

    Scales ``x`` so that its largest magnitude lands on the largest finite value of ``dtype``
    (``scale = amax / max(dtype)``), rounds to ``dtype`` (to nearest) and returns the descale,
    so that ``x8.astype(float32) * descale`` approximates ``x``. Pass the descale as
    ``q_descale``/``k_descale``/``v_descale``::

      (q8, qd), (k8, kd), (v8, vd) = (quantize_fp8(x, per_head=True) for x in (q, k, v))
      out = jax_gna.gna(q8, k8, v8, (7, 7), q_descale=qd, k_descale=kd, v_descale=vd)

    Args:
      x: ``[B..., X..., H, D]`` (any float dtype), or a tuple or list of such arrays (None
        allowed) that share one scale: a key and its ``additional_keys`` (attention takes one
        ``k_descale`` for both), or a value and its ``additional_values``.
      dtype: ``jnp.float8_e4m3fn`` (the default; 3 mantissa bits, the ``"cuda"`` FP8 kernel's)
        or ``jnp.float8_e5m2`` (2 mantissa bits, more range).
      per_head: False: one scale for the whole tensor (a float32 scalar descale). True: one per
        head, the amax over every axis but the heads axis (``-2``), a float32 descale ``[H]``;
        it keeps the precision of heads whose values are far smaller than the largest head's
        (docs/fp8.md measures the difference).

    Returns:
      ``(x8, descale)``: ``x8`` in ``dtype`` with the structure of ``x`` (None stays None), and
      the float32 descale (a scalar, or ``[H]`` with ``per_head``); 1 where ``x`` is all zeros.
      A non-finite ``x`` gives a non-finite descale, which `jax_gna.gna` refuses.

    Raises:
      TypeError: ``dtype`` is not a float8 dtype, ``x`` is not floating point, or
        ``per_head`` is not a bool.
      ValueError: with ``per_head``, an array without a heads axis, or arrays with different
        numbers of heads.
    """
    single = not isinstance(x, tuple | list)
    arrays = [x] if single else list(x)
    dtype = float8_dtype(dtype, "dtype")
    if not isinstance(per_head, bool | np.bool_):
        raise TypeError(f"`per_head` must be a bool, got {per_head!r}.")
    arrays = [None if a is None else jnp.asarray(a) for a in arrays]
    present = [a for a in arrays if a is not None]
    if not present:
        raise ValueError("`x` must hold at least one array, got only None.")
    for a in present:
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"`x` must be floating point, got dtype {a.dtype}.")
    if per_head:
        shapes = [tuple(a.shape) for a in present]
        if any(len(s) < 2 for s in shapes) or len({s[-2] for s in shapes}) != 1:
            raise ValueError(
                "`x` with `per_head=True` must be [..., heads, dim], every array with the same "
                f"number of heads (axis -2); got shapes {', '.join(map(str, shapes))}."
            )
    quantized, descale = quantize(arrays, dtype, per_head=bool(per_head))
    if single:
        return quantized[0], descale
    return type(x)(quantized), descale
