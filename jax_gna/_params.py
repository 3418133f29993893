"""Normalisation and validation of GNA arguments: the one place that decides what is legal.

`make_params` brings every argument to one form (ints become per-axis tuples, ``None`` becomes
the default), checks each one against the shapes, and returns a frozen, hashable `GnaParams`.
Nothing runs before it has passed. Messages name the argument, the rule and what came in.

Shape legend used across the package: ``B...`` leading batch dims, ``X...`` spatial dims (one
per axis of the window), ``H`` query heads, ``Hkv`` key/value heads, ``D`` query/key head dim,
``Dv`` value head dim, ``E`` extra (additional) key/value tokens.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_gna import _symbolic
from jax_gna._fp8 import FP8_DTYPES, FP8_OUT_DTYPE

IntOrTuple = int | tuple[int, ...]
BoolOrTuple = bool | tuple[bool, ...]


@dataclasses.dataclass(frozen=True)
class GnaParams:
    """Static, normalised GNA parameters: one entry per spatial axis."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    scale: float
    # Tile shapes of the CUDA forward kernels (both or neither); None: not chosen yet.
    q_tile_shape: tuple[int, ...] | None = None
    kv_tile_shape: tuple[int, ...] | None = None
    # The CUDA backward's dQ order: True gives bit-identical gradients run to run.
    deterministic: bool = False
    # A view (cuda/include/gna/window.h AxisView): per axis (whole-axis extent, offset of the
    # query slice, offset of the key slice); q/out/lse then hold the query slices and k/v the
    # key slices (their shapes give the slices' lengths). None: the arrays hold whole axes.
    # Set by `jax_gna._halo` for the shard-local FFI calls; never by users.
    view: tuple[tuple[int, int, int], ...] | None = None

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    @property
    def has_tiles(self) -> bool:
        return self.q_tile_shape is not None

    def without_tiles(self) -> GnaParams:
        return dataclasses.replace(self, q_tile_shape=None, kv_tile_shape=None)

    def attrs(self) -> dict[str, Any]:
        """FFI attributes both directions share. The only place their dtypes are decided (the C++
        bindings take ``Span<const int64_t>`` and ``float``; any other type fails to decode at
        run time)."""
        return dict(
            kernel_size=_i64(self.kernel_size),
            stride=_i64(self.stride),
            dilation=_i64(self.dilation),
            is_causal=_i64([int(c) for c in self.is_causal]),
            scale=np.float32(self.scale),
            view_extent=_i64([v[0] for v in self.view or ()]),
            view_q_offset=_i64([v[1] for v in self.view or ()]),
            view_kv_offset=_i64([v[2] for v in self.view or ()]),
        )

    def view_list(self) -> list[int]:
        """The view as the extension's host helpers take it: flattened, empty without one."""
        return [int(x) for v in self.view or () for x in v]

    def backward_attrs(
        self, q_tile: Sequence[int] = (), kv_tile: Sequence[int] = ()
    ) -> dict[str, Any]:
        """FFI attributes of ``jax_gna_bwd``: `attrs` plus the deterministic flag (0 or 1) and
        the backward's own tile shapes (empty: the launcher's default; they need not be the
        forward's)."""
        return self.attrs() | dict(
            deterministic=np.int64(int(self.deterministic)),
            q_tile=_i64(q_tile),
            kv_tile=_i64(kv_tile),
        )

    def forward_attrs(self) -> dict[str, Any]:
        """FFI attributes of ``jax_gna_fwd``: `attrs` plus the tile shapes (empty: unset)."""
        return self.attrs() | dict(
            q_tile=_i64(self.q_tile_shape or ()), kv_tile=_i64(self.kv_tile_shape or ())
        )


def _i64(values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _is_traced(x: Any) -> bool:
    # Any jax array (traced or not) is data, not a static parameter.
    return isinstance(x, jax.Array)


def _not_static(name: str, value: Any) -> TypeError:
    kind = "bool" if name == "is_causal" else "int"
    return TypeError(
        f"`{name}` must be static (a Python {kind}, or a tuple of them), got a jax array {value}: "
        "it fixes the shape of the window, which must be known when the call is traced. Pass a "
        f"Python value: under `jax.jit`, close over it (functools.partial) or mark it static "
        f"(jax.jit(f, static_argnames='{name}'))."
    )


def static_int(name: str, value: Any) -> int:
    if _is_traced(value):
        raise _not_static(name, value)
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Invalid value for `{name}`; expected an integer or tuple of integers, got {value!r}."
        )
    return int(value)


def per_axis(name: str, value: Any, rank: int, default: Any) -> tuple:
    """An int/bool or a per-axis sequence -> a tuple of length `rank`."""
    if value is None:
        value = default
    if _is_traced(value):
        raise _not_static(name, value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != rank:
            raise ValueError(
                f"`{name}` has {len(value)} entries but the problem has {rank} spatial axes; "
                f"expected one entry per axis, got {tuple(value)!r}."
            )
        return tuple(value)
    if isinstance(value, np.ndarray):
        raise TypeError(f"`{name}` must be a Python int/bool or a tuple, got an array {value!r}.")
    return (value,) * rank


LAYOUT = "[batch..., *spatial, heads, head_dim]"


def _fmt_dims(dims: Sequence[int]) -> str:
    """``(2, 6, 5)``; a symbolic dim (jax.export) prints as its name."""
    inner = ", ".join(str(x) for x in dims)
    return f"({inner},)" if len(dims) == 1 else f"({inner})"


def reading(name: str, shape: Sequence[int], rank: int, tail=("heads", "head_dim")) -> str:
    """How `shape` is read with `rank` spatial axes: ``batch (2,), spatial (6, 5), heads 4,
    head_dim 8``; `tail` names the trailing dims (the Flax layers read ``("features",)``)."""
    n_batch = len(shape) - rank - len(tail)
    parts = [f"batch {_fmt_dims(shape[:n_batch])}" if n_batch > 0 else "no batch dims"]
    parts.append(f"spatial {_fmt_dims(shape[max(n_batch, 0) : len(shape) - len(tail)])}")
    parts += [f"{t} {x}" for t, x in zip(tail, shape[len(shape) - len(tail) :])]
    return f"`{name}` {_fmt_dims(shape)} reads as {', '.join(parts)}"


def infer_rank(
    shape: Sequence[int], kernel_size: Any, stride: Any, dilation: Any, is_causal: Any
) -> int:
    """The number of spatial axes of a `jax_gna.gna` call: the length of any per-axis tuple.
    With only ints it is known only where the shape allows one reading, ``[X, H, D]`` (1-D
    without batch dims); elsewhere several are legal (``[B, L, H, D]`` is 1-D with a batch dim
    or a 2-D grid ``[X, Y, H, D]``) and this raises instead of guessing."""
    for value in (kernel_size, stride, dilation, is_causal):
        if isinstance(value, Sequence) and not isinstance(value, str):
            return len(value)
    ndim = len(shape)
    ranks = [r for r in (1, 2, 3) if ndim >= r + 2]
    is_int = isinstance(kernel_size, numbers.Integral) and not isinstance(kernel_size, bool)
    if len(ranks) <= 1 or not is_int:
        # One reading (or none: the rank check says why); a bad kernel_size fails its own check.
        return ndim - 2 if ndim <= 3 else ndim - 3
    readings = " or ".join(
        f"{r}-D " + (f"with batch dims {_fmt_dims(shape[: ndim - r - 2])}" if ndim > r + 2 else
                     "without batch dims")
        for r in ranks
    )  # fmt: skip
    examples = ", ".join(
        f"({', '.join([str(int(kernel_size))] * r)}{',' * (r == 1)}) for {r}-D" for r in ranks
    )
    raise ValueError(
        f"The number of spatial axes is ambiguous: `kernel_size`={int(kernel_size)} is an int and "
        f"`query` {_fmt_dims(shape)} reads as {readings} (arrays are {LAYOUT}). Give one "
        f"entry per spatial axis, e.g. kernel_size={examples}, or call "
        f"{'/'.join(f'na{r}d' for r in ranks)}, which take the number of axes from their name."
    )


def window_does_not_fit(
    spatial: Sequence[int],
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    reading: str = "",
    layout: str = LAYOUT,
) -> ValueError | None:
    """The error for a window larger than the token grid (None if it fits): it gives the
    shapes, `reading` (how the arrays were read, see `reading`) and, when the leading spatial
    axis is the one too small, what it usually is (a batch axis, or heads-first arrays) and the
    fix. `layout` is how the arrays are laid out: ``LAYOUT``, or the Flax layers' inputs.
    Without a `reading` (a bare spatial shape, `jax_gna.sim`) the message gives the shapes."""
    k, d = tuple(kernel_size), tuple(dilation)
    if all(ki * di <= n for ki, di, n in zip(k, d, spatial)):
        return None
    message = (
        "The product of `kernel_size` and `dilation` cannot be larger than the input along "
        f"any spatial axis, got spatial shape={tuple(spatial)}, kernel_size={k}, "
        f"dilation={d}."
    )
    if not reading:
        return ValueError(message)
    message += f" The layout is {layout}; {reading}."
    if len(spatial) > 1 and k[0] * d[0] > spatial[0]:
        fewer = len(spatial) - 1
        rest = ", ".join(str(x) for x in k[1:]) + ("," if fewer == 1 else "")
        heads_last = layout == LAYOUT
        message += (
            f" If the axis of {spatial[0]} is a batch axis (e.g. flattened tokens), the problem "
            f"has {fewer} spatial ax{'es' if fewer > 1 else 'is'}: pass kernel_size=({rest})"
            + (f" or call na{fewer}d" if heads_last else "")
            + f"; a {len(spatial)}-D grid needs its tokens reshaped to {layout}."
        )
        if heads_last:
            message += (
                " If it is the heads of heads-first arrays [batch..., heads, *spatial, "
                "head_dim], move them next to head_dim (jnp.moveaxis)."
            )
    return ValueError(message)


def check_axes(params: GnaParams, spatial: Sequence[int], reading: str = "") -> None:
    """The per-axis rules; `reading` (how the arrays were read, see `reading`) goes into the
    message when the window does not fit the spatial shape."""
    k, s, d, c = params.kernel_size, params.stride, params.dilation, params.is_causal
    if any(x < 1 for x in k):
        raise ValueError(
            "Invalid value for `kernel_size`; expected an integer or tuple of positive integers, "
            f"got {k}."
        )
    if any(x < 1 for x in s):
        raise ValueError(
            f"Invalid value for `stride`; expected an integer or tuple of positive integers, "
            f"got {s}."
        )
    if any(x < 1 for x in d):
        raise ValueError(
            "Invalid value for `dilation`; expected an integer or tuple of positive integers, "
            f"got {d}."
        )
    if any(si > ki for si, ki in zip(s, k)):
        raise ValueError(
            f"`stride` cannot be larger than `kernel_size` along any axis, got kernel_size={k}, "
            f"stride={s}."
        )
    if any(not isinstance(x, bool | np.bool_) for x in c):
        raise TypeError(
            f"Invalid value for `is_causal`; expected a bool or tuple of bools, got {c}."
        )
    error = window_does_not_fit(spatial, k, d, reading)
    if error is not None:
        raise error


def _check_scale(scale: numbers.Real) -> None:
    """The kernels take the scale as a float32: it must stay finite there (an infinite or NaN
    scale makes every output NaN)."""
    with np.errstate(over="ignore"):
        as_f32 = np.float32(scale)
    if not np.isfinite(as_f32):
        raise ValueError(
            "Invalid value for `scale`; expected a finite number within float32 range "
            f"(|scale| <= {float(np.finfo(np.float32).max):.7g}), got {scale!r}."
        )


def tile_shapes(
    q_tile_shape: Any, kv_tile_shape: Any, rank: int
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Normalise a tile request: both None, or two per-axis tuples of positive ints. Whether the
    kernels have these tiles is the implementation's business (`jax_gna._ffi_call.why_not`)."""
    if (q_tile_shape is None) != (kv_tile_shape is None):
        raise ValueError(
            "`q_tile_shape` and `kv_tile_shape` must be given together or not at all, got "
            f"q_tile_shape={q_tile_shape!r}, kv_tile_shape={kv_tile_shape!r}."
        )
    if q_tile_shape is None:
        return None, None
    shapes = []
    for name, value in (("q_tile_shape", q_tile_shape), ("kv_tile_shape", kv_tile_shape)):
        shape = tuple(static_int(name, x) for x in per_axis(name, value, rank, None))
        if any(x < 1 for x in shape):
            raise ValueError(
                f"Invalid value for `{name}`; expected an integer or tuple of positive "
                f"integers, one per spatial axis, got {shape}."
            )
        shapes.append(shape)
    return shapes[0], shapes[1]


# XLA's flags that ask for bit-identical results run to run; `deterministic=None` follows them.
DETERMINISM_FLAGS = ("xla_gpu_deterministic_ops", "xla_gpu_exclude_nondeterministic_ops")


def xla_wants_determinism(xla_flags: str | None = None) -> bool:
    """Whether ``XLA_FLAGS`` (default: the environment's, read now) turns on one of
    `DETERMINISM_FLAGS`, parsed as XLA parses boolean flags: a bare ``--flag``, ``=true`` or
    ``=1`` turns it on, ``=false`` or ``=0`` off, and the last occurrence wins."""
    if xla_flags is None:
        xla_flags = os.environ.get("XLA_FLAGS", "")
    wanted = dict.fromkeys(DETERMINISM_FLAGS, False)
    for arg in xla_flags.split():
        name, sep, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or name not in wanted:
            continue
        if not sep:
            wanted[name] = True
        elif value.lower() in ("true", "1"):
            wanted[name] = True
        elif value.lower() in ("false", "0"):
            wanted[name] = False
    return any(wanted.values())


def check_deterministic(value: Any, name: str = "deterministic") -> bool | None:
    """A validated determinism request: None (follow XLA's flags) or a Python bool."""
    if value is None:
        return None
    if _is_traced(value):
        raise TypeError(
            f"`{name}` must be static (True, False or None), got a traced value {value}."
        )
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"Invalid value for `{name}`; expected True, False or None, got {value!r}.")
    return bool(value)


def resolve_deterministic(value: Any) -> bool:
    """`check_deterministic`, with None resolved by `xla_wants_determinism` (at trace time)."""
    value = check_deterministic(value)
    return xla_wants_determinism() if value is None else value


def refuse_mask_and_bias(mask: Any, bias: Any) -> None:
    """`jax.nn.dot_product_attention`'s ``mask``/``bias`` keywords: only None is accepted."""
    if mask is not None:
        raise NotImplementedError(
            "`mask` is not supported: in GNA the window options decide which keys a query "
            "sees (kernel_size, stride, dilation, and is_causal per axis for causal masking), "
            "and additional_keys/additional_values add keys every query sees. For an arbitrary "
            "mask use jax.nn.dot_product_attention."
        )
    if bias is not None:
        raise NotImplementedError(
            "`bias` is not supported: no bias is added to the scores (`scale` multiplies them). "
            "For a score bias use jax.nn.dot_product_attention."
        )


def as_arrays(*xs: Any) -> tuple:
    """`xs` as jax arrays (None stays None)."""
    return tuple(None if x is None else jnp.asarray(x) for x in xs)


def _check_dtype(name: str, x: Any) -> None:
    if str(x.dtype) not in _FLOAT_DTYPES + FP8_DTYPES:
        raise TypeError(
            f"`{name}` must be a floating-point array ({', '.join(_FLOAT_DTYPES)}, or float8 "
            f"{' or '.join(FP8_DTYPES)} with descales), got dtype {x.dtype}."
        )


def out_dtype_of(out_dtype: Any, query: Any) -> jnp.dtype:
    """The dtype of a call's ``out``: `out_dtype` if given (canonicalised: float64 is float32
    without ``jax_enable_x64``), else the query's, or `FP8_OUT_DTYPE` for a float8 query.
    Raises TypeError for anything but a floating-point dtype, NotImplementedError for float8
    (no implementation writes FP8)."""
    if out_dtype is None:
        return jnp.dtype(FP8_OUT_DTYPE if str(query.dtype) in FP8_DTYPES else query.dtype)
    rule = f"`out_dtype` must be None or a floating-point dtype ({', '.join(_FLOAT_DTYPES)})"
    try:
        # An array is not a dtype (numpy would take its dtype, with a deprecation warning).
        dtype = None if isinstance(out_dtype, jax.Array | np.ndarray) else jnp.dtype(out_dtype)
    except TypeError:
        dtype = None
    if dtype is None:
        raise TypeError(f"{rule}, got {out_dtype!r}.")
    if str(dtype) in FP8_DTYPES:
        raise NotImplementedError(
            f"`out_dtype`={dtype} is not supported: FP8 output is not supported (no "
            f"implementation writes float8); use {jnp.dtype(FP8_OUT_DTYPE)} (the default for "
            "float8 inputs) and quantise the output yourself."
        )
    if str(dtype) not in _FLOAT_DTYPES:
        raise TypeError(f"{rule}, got {dtype}.")
    return jnp.dtype(jax.dtypes.canonicalize_dtype(dtype))


def make_params(
    query: Any,
    key: Any,
    value: Any,
    kernel_size: Any,
    *,
    stride: Any = 1,
    dilation: Any = 1,
    is_causal: Any = False,
    scale: Any = None,
    additional_keys: Any = None,
    additional_values: Any = None,
    q_tile_shape: Any = None,
    kv_tile_shape: Any = None,
    deterministic: Any = None,
    rank: int | None = None,
) -> GnaParams:
    """Validate a GNA call and normalise its parameters.

    Args:
      query: ``[B..., X..., H, D]``.
      key: ``[B..., X..., Hkv, D]``.
      value: ``[B..., X..., Hkv, Dv]``.
      kernel_size, stride, dilation, is_causal, scale, additional_keys, additional_values,
        q_tile_shape, kv_tile_shape, deterministic: as in `jax_gna.gna` (None for
        ``deterministic`` is resolved here, from ``XLA_FLAGS``).
      rank: the number of spatial axes if the caller fixes it (`na1d` ... `na3d`).

    Returns:
      The normalised `GnaParams`.

    Raises:
      TypeError: for arguments of the wrong type (including traced static arguments).
      ValueError: for values that break a rule.
    """
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"`{name}` must be an array, got {type(x).__name__}.")
        _check_dtype(name, x)
    if rank is None:
        rank = infer_rank(query.shape, kernel_size, stride, dilation, is_causal)
    if not 1 <= rank <= 3:
        raise ValueError(
            f"GNA supports 1, 2 or 3 spatial axes; got {rank} (query shape {query.shape}, "
            f"kernel_size={kernel_size!r}). Arrays are {LAYOUT}."
        )
    if query.ndim < rank + 2:
        raise ValueError(
            f"`query` must have shape {LAYOUT} with {rank} spatial "
            f"axes, i.e. at least {rank + 2} dims; got shape {query.shape}."
        )
    if key.ndim != query.ndim or value.ndim != query.ndim:
        raise ValueError(
            "`query`, `key` and `value` must have the same rank, got "
            f"query {query.shape}, key {key.shape}, value {value.shape}."
        )
    n_batch = query.ndim - rank - 2
    _symbolic.check(query, key, value, additional_keys, additional_values, n_batch)
    if (
        key.shape[:n_batch] != query.shape[:n_batch]
        or value.shape[:n_batch] != query.shape[:n_batch]
    ):
        raise ValueError(
            "`query`, `key` and `value` must have the same batch dims, got "
            f"query {query.shape[:n_batch]}, key {key.shape[:n_batch]}, "
            f"value {value.shape[:n_batch]}."
        )
    spatial = tuple(query.shape[n_batch : n_batch + rank])
    if key.shape[:-2] != query.shape[:-2] or value.shape[:-2] != query.shape[:-2]:
        raise ValueError(
            "Neighborhood attention needs `query`, `key` and `value` to share one token layout "
            f"(spatial shape), got query {spatial}, key {key.shape[n_batch:-2]}, "
            f"value {value.shape[n_batch:-2]}. Arrays are {LAYOUT}: "
            f"{reading('query', query.shape, rank)}, {reading('key', key.shape, rank)}. "
            "Heads-first arrays [batch..., heads, *spatial, head_dim] need their heads moved next "
            "to head_dim (jnp.moveaxis)."
        )
    heads, kv_heads = query.shape[-2], key.shape[-2]
    if value.shape[-2] != kv_heads:
        raise ValueError(
            f"`key` and `value` must have the same number of heads, got {kv_heads} and "
            f"{value.shape[-2]}."
        )
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(
            f"Key/value heads must evenly divide query heads, got heads={heads}, "
            f"kv_heads={kv_heads}. Arrays are {LAYOUT}: {reading('query', query.shape, rank)}, "
            f"{reading('key', key.shape, rank)}."
        )
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"`query` and `key` must have the same head dim, got {query.shape[-1]} and "
            f"{key.shape[-1]}."
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            "`query`, `key` and `value` must have the same dtype, got "
            f"{query.dtype}, {key.dtype}, {value.dtype}."
        )

    ks = tuple(static_int("kernel_size", x) for x in per_axis("kernel_size", kernel_size, rank, 1))
    st = tuple(static_int("stride", x) for x in per_axis("stride", stride, rank, 1))
    dl = tuple(static_int("dilation", x) for x in per_axis("dilation", dilation, rank, 1))
    ca = tuple(per_axis("is_causal", is_causal, rank, False))
    if scale is None:
        if query.shape[-1] == 0:
            raise ValueError(
                "`query` and `key` have head dim 0, so the default `scale` (head_dim ** -0.5) is "
                "undefined; pass `scale` explicitly (every score is then 0)."
            )
        scale = query.shape[-1] ** -0.5
    elif _is_traced(scale):
        raise TypeError(
            f"`scale` must be a static Python number, got a traced value {scale}; close over it "
            "or mark it static."
        )
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"`scale` must be a real number or None, got {scale!r}.")
    _check_scale(scale)
    check_axes(
        GnaParams(ks, st, dl, ca, float(scale)), spatial, reading("query", query.shape, rank)
    )
    _check_additional(query, key, value, additional_keys, additional_values, n_batch)
    q_tile, kv_tile = tile_shapes(q_tile_shape, kv_tile_shape, rank)
    return GnaParams(
        ks,
        st,
        dl,
        tuple(bool(c) for c in ca),
        float(scale),
        q_tile,
        kv_tile,
        resolve_deterministic(deterministic),
    )


def _check_additional(
    query: Any, key: Any, value: Any, extra_keys: Any, extra_values: Any, n_batch: int
) -> None:
    if extra_keys is None and extra_values is None:
        return
    if extra_keys is None or extra_values is None:
        raise ValueError(
            "`additional_keys` and `additional_values` must be given together or not at all, "
            f"got additional_keys={'None' if extra_keys is None else 'an array'}, "
            f"additional_values={'None' if extra_values is None else 'an array'}."
        )
    for name, x in (("additional_keys", extra_keys), ("additional_values", extra_values)):
        if not hasattr(x, "shape"):
            raise TypeError(f"`{name}` must be an array, got {type(x).__name__}.")
        if x.ndim != n_batch + 3:
            raise ValueError(
                f"`{name}` must have shape [batch..., extra_tokens, kv_heads, dim] "
                f"({n_batch + 3} dims), got {x.shape}."
            )
        if x.shape[:n_batch] != query.shape[:n_batch]:
            raise ValueError(
                f"`{name}` must have the batch dims of `query` {query.shape[:n_batch]}, "
                f"got {x.shape[:n_batch]}."
            )
        if x.shape[-2] != key.shape[-2]:
            raise ValueError(
                f"`{name}` must have the kv heads of `key` ({key.shape[-2]}), got {x.shape[-2]}."
            )
        if x.dtype != query.dtype:
            raise TypeError(f"`{name}` must have dtype {query.dtype}, got {x.dtype}.")
    if extra_keys.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"`additional_keys` must have the head dim of `key` ({key.shape[-1]}), "
            f"got {extra_keys.shape[-1]}."
        )
    if extra_values.shape[-1] != value.shape[-1]:
        raise ValueError(
            f"`additional_values` must have the head dim of `value` ({value.shape[-1]}), "
            f"got {extra_values.shape[-1]}."
        )
    if extra_keys.shape[-3] != extra_values.shape[-3]:
        raise ValueError(
            "`additional_keys` and `additional_values` must hold the same number of extra "
            f"tokens, got {extra_keys.shape[-3]} and {extra_values.shape[-3]}."
        )
