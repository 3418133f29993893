"""The framework-neutral half of the Flax layers: window options, refusals, the forward pass,
and the ``attention_fn`` factory.

`jax_gna.nnx` and `jax_gna.linen` only build their submodules (``query``, ``key``, ``value``,
``out`` and optionally ``query_ln``/``key_ln``) and hand them to `forward`, so both layers
compute exactly the same thing. Nothing here imports Flax.

Shape legend: ``B...`` batch dims, ``X...`` spatial dims (one per axis of the window), ``F``
input features, ``H`` query heads, ``Hkv`` key/value heads, ``D`` head dim, ``E`` context
(extra) tokens.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_gna import _fp8
from jax_gna._api import gna
from jax_gna._params import (
    BoolOrTuple,
    IntOrTuple,
    check_deterministic,
    reading,
    tile_shapes,
    window_does_not_fit,
)

INPUT_LAYOUT = "[batch..., *spatial, features]"  # the layers' inputs


@dataclasses.dataclass(frozen=True)
class Window:
    """The attention pattern of a layer, one entry per spatial axis (see `jax_gna.gna`)."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    def with_causal(self, is_causal: BoolOrTuple | None) -> Window:
        """This window with ``is_causal`` replaced, unless it is None (a call-time override)."""
        if is_causal is None:
            return self
        return dataclasses.replace(self, is_causal=_per_axis("is_causal", is_causal, self.rank))


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _per_axis(name: str, value: Any, rank: int) -> tuple:
    if _is_sequence(value):
        if len(value) != rank:
            raise ValueError(
                f"`{name}` has {len(value)} entries but the layer has {rank} spatial axes; "
                f"expected one entry per axis, got {tuple(value)!r}."
            )
        values = tuple(value)
    else:
        values = (value,) * rank
    for v in values:
        if name == "is_causal":
            ok = isinstance(v, bool | np.bool_)
            expected = "a bool or tuple of bools"
        else:
            ok = isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_)
            expected = "an integer or tuple of integers"
        if not ok:
            raise TypeError(f"Invalid value for `{name}`; expected {expected}, got {value!r}.")
    return tuple(bool(v) if name == "is_causal" else int(v) for v in values)


def make_window(
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    spatial_dims: int | None = None,
) -> Window:
    """Normalise the window options to per-axis tuples.

    The number of spatial axes is ``spatial_dims`` if given, else the length of any tuple among
    the options; with only ints and no ``spatial_dims`` it is unknown and this raises (a layer
    cannot tell ``[batch, height, width, features]`` from ``[batch, time, length, features]``).
    The value rules (``kernel_size >= 2``, ``stride <= kernel_size``, ...) are checked by
    `jax_gna.gna` when the layer first runs, against the input's spatial shape.
    """
    lengths = {
        name: len(value)
        for name, value in (
            ("kernel_size", kernel_size),
            ("stride", stride),
            ("dilation", dilation),
            ("is_causal", is_causal),
        )
        if _is_sequence(value)
    }
    if spatial_dims is not None:
        if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, numbers.Integral):
            raise TypeError(f"`spatial_dims` must be an int or None, got {spatial_dims!r}.")
        rank = int(spatial_dims)
    elif lengths:
        rank = next(iter(lengths.values()))
    else:
        raise ValueError(
            f"The number of spatial axes is unknown: kernel_size={kernel_size!r} is an int and no "
            "option is a per-axis tuple. Pass a tuple, e.g. kernel_size=(7, 7) for "
            "[batch, height, width, features] inputs, or spatial_dims=2."
        )
    if not 1 <= rank <= 3:
        raise ValueError(f"Neighborhood attention has 1, 2 or 3 spatial axes, got {rank}.")
    return Window(
        kernel_size=_per_axis("kernel_size", kernel_size, rank),
        stride=_per_axis("stride", stride, rank),
        dilation=_per_axis("dilation", dilation, rank),
        is_causal=_per_axis("is_causal", is_causal, rank),
    )


@dataclasses.dataclass(frozen=True)
class Tiles:
    """A layer's ``q_tile_shape``/``kv_tile_shape`` for the ``"cuda"`` kernels (`jax_gna.gna`);
    both None: the kernels pick."""

    q_tile_shape: tuple[int, ...] | None = None
    kv_tile_shape: tuple[int, ...] | None = None


def make_tiles(
    q_tile_shape: IntOrTuple | None, kv_tile_shape: IntOrTuple | None, rank: int
) -> Tiles:
    """Normalise and check a layer's tile shapes (both or neither, positive ints, one per
    spatial axis); whether the kernels have them is checked when the layer runs."""
    return Tiles(*tile_shapes(q_tile_shape, kv_tile_shape, rank))


def check_deterministic_backward(value: Any) -> bool | None:
    """A layer's ``deterministic_backward``: None or a bool, passed to `jax_gna.gna` as
    ``deterministic`` (a layer's own ``deterministic`` is Flax's dropout switch)."""
    return check_deterministic(value, "deterministic_backward")


# -- refusals ---------------------------------------------------------------------------------


def unsupported(option: str, value: Any, why: str, instead: str) -> NotImplementedError:
    """The error for a Flax attention option jax_gna cannot honour: it names the option and the
    value, says why, and what to do instead."""
    return NotImplementedError(f"{option}={value!r} is not supported by jax_gna: {why}; {instead}.")


_NO_WEIGHTS = "the kernels never materialise the attention weights"


def check_dropout(dropout_rate: float, deterministic: bool | None = True) -> None:
    """Attention dropout needs the weights; refuse it unless it would be a no-op."""
    if dropout_rate and deterministic is not True:
        raise unsupported(
            "dropout_rate",
            dropout_rate,
            f"attention dropout needs the attention weights and {_NO_WEIGHTS}",
            "use dropout_rate=0.0 and apply dropout to the layer output instead",
        )


def check_decode(decode: bool | None) -> None:
    if decode:
        raise unsupported(
            "decode",
            decode,
            "there is no autoregressive key/value cache; neighborhood attention runs on a whole "
            "token grid at once",
            "call the layer on the full grid (with is_causal for causal models)",
        )


def check_mask(mask: Any) -> None:
    if mask is not None:
        raise unsupported(
            "mask",
            "<array>",
            "the attention pattern is fixed by kernel_size, stride, dilation and is_causal",
            "express the pattern with those options (is_causal for causal masking) or use "
            "flax's dot-product attention",
        )


def check_attention_fn(attention_fn: Any) -> None:
    if attention_fn is not None:
        raise unsupported(
            "attention_fn",
            attention_fn,
            "this layer is the attention function (neighborhood attention by jax_gna.gna)",
            "leave it None, or keep Flax's layer and pass attention_fn=make_attention_fn(...)",
        )


def check_einsum(name: str, value: Any) -> None:
    """The attention einsums of Flax's layers: the kernels compute those products."""
    if value is not None:
        raise unsupported(name, value, "the kernels compute the products", "leave it None")


def check_sow_weights(sow_weights: bool) -> None:
    if sow_weights:
        raise unsupported(
            "sow_weights", sow_weights, _NO_WEIGHTS, "compute them with jax_gna.reference"
        )


# -- the forward pass shared by both layers -----------------------------------------------------


class Projections(NamedTuple):
    """A layer's submodules as callables: ``query``/``key``/``value`` map ``[..., F]`` to
    ``[..., heads, D]``, ``out`` maps ``[..., H, D]`` to ``[..., out_features]``; the
    normalisations are None without ``normalize_qk``. The context tokens go through
    ``context_key``/``context_value``, default ``key``/``value`` (the same parameters; the
    grid's may add a sharding for the grid's shape)."""

    query: Callable[[jax.Array], jax.Array]
    key: Callable[[jax.Array], jax.Array]
    value: Callable[[jax.Array], jax.Array]
    out: Callable[[jax.Array], jax.Array]
    query_ln: Callable[[jax.Array], jax.Array] | None
    key_ln: Callable[[jax.Array], jax.Array] | None
    context_key: Callable[[jax.Array], jax.Array] | None = None
    context_value: Callable[[jax.Array], jax.Array] | None = None


def resolve_inputs(
    inputs_q: jax.Array,
    inputs_k: jax.Array | None,
    inputs_v: jax.Array | None,
    context: jax.Array | None,
    window: Window,
) -> tuple[jax.Array, jax.Array]:
    """Flax's defaulting (``inputs_k`` from ``inputs_q``, ``inputs_v`` from ``inputs_k``) plus
    the layout checks neighborhood attention needs, in the layer's terms (``[batch...,
    *spatial, features]``). Returns ``(inputs_k, inputs_v)``."""
    rank = window.rank
    if inputs_k is None:
        if inputs_v is not None:
            raise ValueError(
                "`inputs_k` cannot be None if `inputs_v` is not None. To use the same array for "
                "both, pass it as `inputs_k` and leave `inputs_v` as None."
            )
        inputs_k = inputs_q
    if inputs_v is None:
        inputs_v = inputs_k
    if inputs_q.ndim < rank + 1:
        raise ValueError(
            f"`inputs_q` must be {INPUT_LAYOUT} with {rank} spatial axes, i.e. "
            f"at least {rank + 1} dims; got shape {inputs_q.shape}."
        )
    n_batch = inputs_q.ndim - rank - 1
    error = window_does_not_fit(
        inputs_q.shape[n_batch:-1],
        window.kernel_size,
        window.dilation,
        reading("inputs_q", inputs_q.shape, rank, tail=("features",)),
        INPUT_LAYOUT,
    )
    if error is not None:
        raise error
    tokens = inputs_q.shape[:-1]
    for name, x in (("inputs_k", inputs_k), ("inputs_v", inputs_v)):
        if x.shape[:-1] != tokens:
            raise ValueError(
                f"Neighborhood attention needs `{name}` on the same token grid as `inputs_q`: "
                f"[batch..., *spatial] {x.shape[:-1]} != {tokens}. Pass tokens that every query "
                "should see (e.g. text) as `context=` instead."
            )
    if context is not None:
        batch = inputs_q.shape[:n_batch]
        if context.ndim != n_batch + 2 or context.shape[:n_batch] != batch:
            raise ValueError(
                f"`context` must be [batch..., n_extra, features] with the batch dims {batch} of "
                f"`inputs_q` {inputs_q.shape}; got shape {context.shape}."
            )
    return inputs_k, inputs_v


def _promote(arrays: Sequence[jax.Array | None], dtype: Any) -> list[jax.Array | None]:
    """Cast to ``dtype``, or to the common floating dtype of the arrays when it is None (as
    ``flax.nnx.nn.dtypes.promote_dtype`` does)."""
    present = [x for x in arrays if x is not None]
    if dtype is None:
        dtype = jnp.result_type(*present)
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.promote_types(dtype, jnp.float32)
    return [None if x is None else jnp.asarray(x, dtype) for x in arrays]


def attend(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    window: Window,
    *,
    context_keys: jax.Array | None = None,
    context_values: jax.Array | None = None,
    dtype: Any = None,
    implementation: str | None = None,
    tiles: Tiles | None = None,
    deterministic_backward: bool | None = None,
    fp8_dtype: Any = None,
) -> jax.Array:
    """`jax_gna.gna` on projected heads ``[B..., X..., H|Hkv, D]`` (context ``[B..., E, Hkv,
    D]``), all cast to ``dtype`` (inferred when None), the result in that dtype;
    ``deterministic_backward`` is gna's ``deterministic``. With a float8 ``fp8_dtype``
    (`check_fp8_dtype`), query, key and value are quantised to it with per-tensor scales
    (context tokens with the key's and value's) and attended with their descales: forward
    only."""
    tiles = tiles or Tiles()
    query, key, value, context_keys, context_values = _promote(
        (query, key, value, context_keys, context_values), dtype
    )
    out_dtype = query.dtype
    descales = {}
    if fp8_dtype is not None:
        (query,), q_descale = _fp8.quantize([query], fp8_dtype)
        (key, context_keys), k_descale = _fp8.quantize([key, context_keys], fp8_dtype)
        (value, context_values), v_descale = _fp8.quantize([value, context_values], fp8_dtype)
        descales = dict(q_descale=q_descale, k_descale=k_descale, v_descale=v_descale)
    return gna(
        query,
        key,
        value,
        window.kernel_size,
        stride=window.stride,
        dilation=window.dilation,
        is_causal=window.is_causal,
        additional_keys=context_keys,
        additional_values=context_values,
        implementation=implementation,
        q_tile_shape=tiles.q_tile_shape,
        kv_tile_shape=tiles.kv_tile_shape,
        deterministic=deterministic_backward,
        out_dtype=out_dtype,
        **descales,
    )


def check_fp8_dtype(value: Any) -> Any:
    """A layer's ``fp8_dtype``: None, or one of the float8 dtypes `jax_gna.gna` takes."""
    return _fp8.float8_dtype(value, "fp8_dtype", none=True)


def forward(
    layers: Projections,
    inputs_q: jax.Array,
    inputs_k: jax.Array,
    inputs_v: jax.Array,
    context: jax.Array | None,
    window: Window,
    *,
    dtype: Any,
    implementation: str | None,
    tiles: Tiles | None = None,
    deterministic_backward: bool | None = None,
    fp8_dtype: Any = None,
) -> jax.Array:
    """Project, normalise, attend, project back. Context tokens go through the same ``key`` /
    ``value`` projections (and ``key_ln``) as the grid tokens."""
    query, key, value = layers.query(inputs_q), layers.key(inputs_k), layers.value(inputs_v)
    context_keys = context_values = None
    if context is not None:
        context_keys = (layers.context_key or layers.key)(context)
        context_values = (layers.context_value or layers.value)(context)
    if layers.query_ln is not None:
        query, key = layers.query_ln(query), layers.key_ln(key)
        if context_keys is not None:
            context_keys = layers.key_ln(context_keys)
    x = attend(
        query,
        key,
        value,
        window,
        context_keys=context_keys,
        context_values=context_values,
        dtype=dtype,
        implementation=implementation,
        tiles=tiles,
        deterministic_backward=deterministic_backward,
        fp8_dtype=fp8_dtype,
    )
    return layers.out(x)


# -- attention_fn -----------------------------------------------------------------------------


def make_attention_fn(
    kernel_size: IntOrTuple,
    *,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    spatial_dims: int | None = None,
    implementation: str | None = None,
    q_tile_shape: IntOrTuple | None = None,
    kv_tile_shape: IntOrTuple | None = None,
    deterministic_backward: bool | None = None,
    fp8_dtype: Any = None,
) -> Callable[..., jax.Array]:
    """A drop-in ``attention_fn`` for ``flax.nnx.MultiHeadAttention`` and
    ``flax.linen.MultiHeadDotProductAttention`` that runs `jax_gna.gna`.

    Example::

      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jax_gna.nnx
      >>> layer = nnx.MultiHeadAttention(
      ...     num_heads=4, in_features=32, decode=False, rngs=nnx.Rngs(0),
      ...     attention_fn=jax_gna.nnx.make_attention_fn((3, 3)))
      >>> layer(jnp.ones((2, 8, 8, 32))).shape  # [batch, height, width, features]
      (2, 8, 8, 32)

    The layer's inputs must then be ``[B..., X..., F]``: Flax projects them to ``[B..., X...,
    H, D]`` and the function attends over the ``X...`` grid. Arguments as in `jax_gna.gna`
    (``q_tile_shape``/``kv_tile_shape`` too); ``spatial_dims`` gives the number of spatial axes
    when every option is an int; ``deterministic_backward`` is `jax_gna.gna`'s
    ``deterministic`` (bit-identical CUDA gradients; None follows XLA's flags), named apart from
    the ``deterministic`` Flax passes at call time, which is about dropout.

    ``fp8_dtype`` (None, or ``jnp.float8_e4m3fn``/``jnp.float8_e5m2``) quantises query, key
    and value on the fly, as the layers' ``fp8_dtype`` does: each to that dtype with a
    per-tensor scale (``amax / max(fp8_dtype)``), attended with those descales on the ``xla``
    implementation (see `jax_gna.gna`), the result in the dtype of the unquantised inputs.
    Forward only, for inference: differentiating through it raises (train without it).

    The returned function accepts every keyword Flax passes. ``dtype`` casts query, key and
    value (inferred when None, like Flax); ``is_causal=True`` at call time makes every axis
    causal; ``precision`` is not used (the kernels accumulate in float32);
    ``force_fp32_for_softmax`` is always honoured. It raises ``NotImplementedError`` for what
    it cannot honour: a ``mask`` or ``bias``, ``dropout_rate > 0`` when not deterministic, a
    ``module`` to sow weights into (``sow_weights=True``), custom einsums, and any unknown
    keyword whose value is not None.
    """
    window = make_window(kernel_size, stride, dilation, is_causal, spatial_dims)
    tiles = make_tiles(q_tile_shape, kv_tile_shape, window.rank)
    deterministic_backward = check_deterministic_backward(deterministic_backward)
    fp8_dtype = check_fp8_dtype(fp8_dtype)

    def neighborhood_attention_fn(
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
        broadcast_dropout: bool = True,
        dropout_rng: jax.Array | None = None,
        dropout_rate: float = 0.0,
        deterministic: bool = False,
        dtype: Any = None,
        precision: Any = None,
        module: Any = None,
        is_causal: bool = False,
        force_fp32_for_softmax: bool = False,
        qk_attn_weights_einsum: Any = None,
        attn_weights_value_einsum: Any = None,
        **kwargs: Any,
    ) -> jax.Array:
        del broadcast_dropout, dropout_rng, precision, force_fp32_for_softmax
        if bias is not None:
            raise unsupported(
                "bias", "<array>", "the kernels add no bias to the scores", "leave bias=None"
            )
        check_mask(mask)
        check_dropout(dropout_rate, deterministic)
        if module is not None:
            check_sow_weights(True)
        check_einsum("qk_attn_weights_einsum", qk_attn_weights_einsum)
        check_einsum("attn_weights_value_einsum", attn_weights_value_einsum)
        for name, v in kwargs.items():
            if v is not None:
                raise unsupported(name, v, "jax_gna does not know this option", "leave it None")
        w = window.with_causal((True,) * window.rank) if is_causal else window
        return attend(
            query,
            key,
            value,
            w,
            dtype=dtype,
            implementation=implementation,
            tiles=tiles,
            deterministic_backward=deterministic_backward,
            fp8_dtype=fp8_dtype,
        )

    return neighborhood_attention_fn
