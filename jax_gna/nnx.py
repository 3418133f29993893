"""Flax NNX layers: `NeighborhoodAttention`, a drop-in for ``flax.nnx.MultiHeadAttention`` on
1-D, 2-D and 3-D token grids, and `make_attention_fn` for ``nnx.MultiHeadAttention``'s
``attention_fn``.

Shape legend: ``B...`` batch dims, ``X...`` spatial dims (one per axis of the window), ``F``
input features, ``E`` context (extra) tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes
from flax.typing import DotGeneralT, Dtype, Initializer, PrecisionLike, PromoteDtypeFn

from jax_gna import _flax_attention
from jax_gna._flax_attention import BoolOrTuple, IntOrTuple, make_attention_fn

__all__ = ["NeighborhoodAttention", "make_attention_fn"]

_DEFAULT_KERNEL_INIT = nnx.initializers.lecun_normal()  # flax's defaults
_DEFAULT_BIAS_INIT = nnx.initializers.zeros_init()
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def _sharded(layer, out_sharding=None):
    """`layer` called with ``out_sharding`` (Flax's projections take it) when one is given."""
    if out_sharding is None:
        return layer
    return functools.partial(layer, out_sharding=out_sharding)


class NeighborhoodAttention(nnx.Module):
    """Multi-head neighborhood attention over a token grid (`jax_gna.gna`), with the
    constructor, submodules and parameters of ``flax.nnx.MultiHeadAttention``.

    Example usage::

      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jax_gna.nnx
      >>> layer = jax_gna.nnx.NeighborhoodAttention(
      ...     num_heads=4, in_features=32, kernel_size=(3, 3), rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 8, 8, 32))  # [batch, height, width, features]
      >>> layer(x).shape
      (2, 8, 8, 32)
      >>> text = jnp.ones((2, 5, 32))  # tokens every query also attends to
      >>> layer(x, context=text).shape
      (2, 8, 8, 32)

    Migrating from ``nnx.MultiHeadAttention(num_heads, in_features, ...)`` means adding a
    ``kernel_size``: the submodules ``query``, ``key``, ``value``, ``out`` (and ``query_ln``,
    ``key_ln`` with ``normalize_qk``) have the same names and parameter shapes, are created in
    the same order, and so get the same values from the same ``rngs``. Checkpoints swap both ways.

    Every argument of ``nnx.MultiHeadAttention`` is accepted by name (``tests/test_nnx.py``
    compares the signatures): the projection options (``*_promote_dtype``, ``*_dot_general*``,
    the ``*_metadata`` sharding annotations, ``out_sharding``/``qkv_sharding`` at call time) go
    to the same submodules as there; ``keep_rngs`` has nothing to keep without dropout. Those the
    kernels cannot honour are accepted only at their neutral value and raise
    ``NotImplementedError`` otherwise: ``attention_fn`` (this layer is the attention function),
    ``dropout_rate > 0``, ``decode=True`` (and `init_cache`), and at call time ``mask``,
    ``decode`` and ``sow_weights``. ``kernel_size`` takes the third positional place, so
    ``qkv_features`` and the later ones are passed by name.

    Args:
      num_heads: number of query heads; ``qkv_features`` must be divisible by it.
      in_features: features of ``inputs_q`` (the last axis).
      kernel_size: window size per spatial axis, an int or one per axis (see `jax_gna.gna`).
        The number of spatial axes is the length of any per-axis tuple among ``kernel_size``,
        ``stride``, ``dilation`` and ``is_causal``, else ``spatial_dims``.
      qkv_features: total query/key/value features over all heads (default ``in_features``).
      out_features: output features (default ``in_features``).
      num_kv_heads: key/value heads for grouped-query attention (default ``num_heads``); must
        divide ``num_heads``.
      in_kv_features: features of ``inputs_k``/``inputs_v``/``context`` (default
        ``in_features``).
      spatial_dims: number of spatial axes (1, 2 or 3) when every window option is an int.
      stride: queries per window group along each axis (1 is neighborhood attention).
      dilation: window dilation per axis.
      is_causal: causal masking per axis.
      dtype: computation dtype (default: inferred from inputs and params).
      param_dtype: parameter dtype.
      precision: precision of the projections (the attention core accumulates in float32).
      kernel_init: initializer of the ``query``/``key``/``value`` kernels (and ``out`` when
        ``out_kernel_init`` is None).
      out_kernel_init: initializer of the ``out`` kernel.
      bias_init: initializer of the biases (and ``out``'s when ``out_bias_init`` is None).
      out_bias_init: initializer of the ``out`` bias.
      use_bias: whether the projections have biases.
      attention_fn: must be None: the layer computes neighborhood attention (keep
        ``nnx.MultiHeadAttention`` with `make_attention_fn` to swap the function instead).
      normalize_qk: apply LayerNorm to query and key heads (arxiv.org/abs/2302.05442).
      qkv_promote_dtype, out_promote_dtype, ln_promote_dtype: dtype promotion of the
        ``query``/``key``/``value``, ``out`` and ``query_ln``/``key_ln`` submodules, as in Flax.
      qkv_dot_general, out_dot_general, qkv_dot_general_cls, out_dot_general_cls: the
        projections' dot_general, as in Flax.
      implementation: passed to `jax_gna.gna` (None picks the best available).
      q_tile_shape: tile shapes of the ``"cuda"`` kernels, passed to `jax_gna.gna` (both or
        neither; None: the kernels pick the best compiled configuration for each call).
      kv_tile_shape: see ``q_tile_shape``.
      deterministic_backward: passed to `jax_gna.gna` as ``deterministic``: True makes the
        CUDA gradients bit-identical run to run, None (default) follows XLA's
        ``--xla_gpu_deterministic_ops``. (``deterministic`` is Flax's dropout switch.)
      fp8_dtype: None (default), or ``jnp.float8_e4m3fn``/``jnp.float8_e5m2``: the projected
        query, key and value are quantised to it on the fly, each with a per-tensor scale
        (``amax / max(fp8_dtype)``), and attended with those descales (see `jax_gna.gna`; the
        ``xla`` implementation runs them), the attention output in the layer's dtype. Forward
        only, for inference: differentiating the layer raises (train without it, in
        bf16/fp16).
      dropout_rate: must be 0.0 (accepted so migrating code fails loudly, not silently).
      broadcast_dropout: accepted for compatibility; no effect without dropout.
      deterministic: accepted for compatibility; no effect without dropout.
      decode: must be falsy.
      rngs: the random streams for the initializers.
      keep_rngs: accepted for compatibility: without dropout there are no rngs to keep.
      kernel_metadata, out_kernel_metadata, bias_metadata, out_bias_metadata,
        query_ln_scale_metadata, key_ln_scale_metadata: metadata (e.g. sharding annotations)
        of the projection and normalisation parameters, as in Flax (``out_*`` default to the
        others).
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        kernel_size: IntOrTuple,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        in_kv_features: int | None = None,
        *,
        spatial_dims: int | None = None,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        kernel_init: Initializer = _DEFAULT_KERNEL_INIT,
        out_kernel_init: Initializer | None = None,
        bias_init: Initializer = _DEFAULT_BIAS_INIT,
        out_bias_init: Initializer | None = None,
        use_bias: bool = True,
        attention_fn: Callable[..., jax.Array] | None = None,
        normalize_qk: bool = False,
        qkv_promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
        out_promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
        ln_promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
        qkv_dot_general: DotGeneralT | None = None,
        out_dot_general: DotGeneralT | None = None,
        qkv_dot_general_cls: Any = None,
        out_dot_general_cls: Any = None,
        implementation: str | None = None,
        q_tile_shape: IntOrTuple | None = None,
        kv_tile_shape: IntOrTuple | None = None,
        deterministic_backward: bool | None = None,
        fp8_dtype: Dtype | None = None,
        dropout_rate: float = 0.0,
        broadcast_dropout: bool = True,
        deterministic: bool | None = None,
        decode: bool | None = None,
        rngs: nnx.Rngs,
        keep_rngs: bool = True,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        out_kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
        out_bias_metadata: Mapping[str, Any] = _NO_METADATA,
        query_ln_scale_metadata: Mapping[str, Any] = _NO_METADATA,
        key_ln_scale_metadata: Mapping[str, Any] = _NO_METADATA,
    ):
        _flax_attention.check_dropout(dropout_rate, deterministic=None)
        _flax_attention.check_decode(decode)
        _flax_attention.check_attention_fn(attention_fn)
        if not isinstance(keep_rngs, bool):
            raise TypeError(f"`keep_rngs` must be a bool, got {keep_rngs!r}.")
        self.window = _flax_attention.make_window(
            kernel_size, stride, dilation, is_causal, spatial_dims
        )
        self.tiles = _flax_attention.make_tiles(q_tile_shape, kv_tile_shape, self.window.rank)
        self.deterministic_backward = _flax_attention.check_deterministic_backward(
            deterministic_backward
        )
        self.num_heads = num_heads
        self.in_features = in_features
        self.qkv_features = in_features if qkv_features is None else qkv_features
        self.out_features = in_features if out_features is None else out_features
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.in_kv_features = in_features if in_kv_features is None else in_kv_features
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by 'num_kv_heads' heads "
                f"({self.num_kv_heads})."
            )
        if self.qkv_features % self.num_heads != 0:
            raise ValueError(
                f"Memory dimension ({self.qkv_features}) must be divisible by 'num_heads' heads "
                f"({self.num_heads})."
            )
        self.head_dim = self.qkv_features // self.num_heads
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.use_bias = use_bias
        self.normalize_qk = normalize_qk
        self.implementation = implementation
        self.fp8_dtype = _flax_attention.check_fp8_dtype(fp8_dtype)

        def projection(in_features, out_features, **kw):
            return nnx.LinearGeneral(
                in_features,
                out_features,
                dtype=dtype,
                param_dtype=param_dtype,
                precision=precision,
                use_bias=use_bias,
                rngs=rngs,
                **kw,
            )

        # Created in nnx.MultiHeadAttention's order so the same rngs give the same parameters.
        inits = dict(
            kernel_init=kernel_init,
            bias_init=bias_init,
            promote_dtype=qkv_promote_dtype,
            dot_general=qkv_dot_general,
            dot_general_cls=qkv_dot_general_cls,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )
        self.query = projection(in_features, (self.num_heads, self.head_dim), **inits)
        self.key = projection(self.in_kv_features, (self.num_kv_heads, self.head_dim), **inits)
        self.value = projection(self.in_kv_features, (self.num_kv_heads, self.head_dim), **inits)
        self.query_ln: nnx.LayerNorm | None
        self.key_ln: nnx.LayerNorm | None
        if normalize_qk:
            self.query_ln, self.key_ln = (
                nnx.LayerNorm(
                    self.head_dim,
                    use_bias=False,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    promote_dtype=ln_promote_dtype,
                    rngs=rngs,
                    scale_metadata=metadata,
                )
                for metadata in (query_ln_scale_metadata, key_ln_scale_metadata)
            )
        else:
            self.query_ln = nnx.data(None)
            self.key_ln = nnx.data(None)
        self.out = projection(
            (self.num_heads, self.head_dim),
            self.out_features,
            axis=(-2, -1),
            kernel_init=out_kernel_init or kernel_init,
            bias_init=out_bias_init or bias_init,
            promote_dtype=out_promote_dtype,
            dot_general=out_dot_general,
            dot_general_cls=out_dot_general_cls,
            kernel_metadata=out_kernel_metadata or kernel_metadata,
            bias_metadata=out_bias_metadata or bias_metadata,
        )
        self.rngs = None  # flax keeps the dropout stream here; there is no dropout

    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        context: jax.Array | None = None,
        is_causal: BoolOrTuple | None = None,
        mask: jax.Array | None = None,
        deterministic: bool | None = None,
        rngs: Any = None,
        sow_weights: bool = False,
        decode: bool | None = None,
        out_sharding: Any = None,
        qkv_sharding: Any = None,
    ) -> jax.Array:
        """Attend over the token grid of ``inputs_q``.

        Args:
          inputs_q: ``[B..., X..., F]`` tokens on a grid with one axis per window axis.
          inputs_k: ``[B..., X..., in_kv_features]`` on the same grid; default ``inputs_q``.
          inputs_v: as ``inputs_k``; default ``inputs_k``.
          context: optional ``[B..., E, in_kv_features]`` tokens (e.g. text) that every query
            attends to in the same softmax, projected by the same ``key``/``value`` layers.
          is_causal: overrides the constructor's ``is_causal`` for this call when not None.
          mask: must be None (arbitrary masks are not supported).
          deterministic: accepted for compatibility; no effect (there is no dropout).
          rngs: accepted for compatibility; no effect (there is no dropout).
          sow_weights: must be False (the attention weights are never materialised).
          decode: must be falsy (there is no decode cache).
          out_sharding: sharding of the output, passed to the ``out`` projection (as in Flax).
          qkv_sharding: sharding of the projected grid tokens ``[B..., X..., H, D]``, passed to
            the ``query``/``key``/``value`` projections (as in Flax; not to the context's).

        Returns:
          ``[B..., X..., out_features]``.
        """
        del deterministic, rngs
        _flax_attention.check_mask(mask)
        _flax_attention.check_decode(decode)
        _flax_attention.check_sow_weights(sow_weights)
        if inputs_q.shape[-1] != self.in_features:
            raise ValueError(
                f"Incompatible input dimension, got {inputs_q.shape[-1]} but module expects "
                f"{self.in_features}."
            )
        window = self.window.with_causal(is_causal)
        inputs_k, inputs_v = _flax_attention.resolve_inputs(
            inputs_q, inputs_k, inputs_v, context, window
        )
        grid = functools.partial(_sharded, out_sharding=qkv_sharding)
        layers = _flax_attention.Projections(
            grid(self.query),
            grid(self.key),
            grid(self.value),
            _sharded(self.out, out_sharding),
            self.query_ln,
            self.key_ln,
            context_key=self.key,
            context_value=self.value,
        )
        return _flax_attention.forward(
            layers,
            inputs_q,
            inputs_k,
            inputs_v,
            context,
            window,
            dtype=self.dtype,
            implementation=self.implementation,
            tiles=self.tiles,
            deterministic_backward=self.deterministic_backward,
            fp8_dtype=self.fp8_dtype,
        )

    def set_view(
        self,
        deterministic: bool | None = None,
        decode: bool | None = None,
        batch_size: int | tuple[int, ...] | None = None,
        max_length: int | None = None,
    ) -> None:
        """Used by ``nnx.view`` (as Flax's): ``deterministic`` is accepted (no dropout, no
        effect), ``decode=True`` refuses (no decode cache, so no ``batch_size``/``max_length``
        to size one with)."""
        del deterministic, batch_size, max_length
        _flax_attention.check_decode(decode)

    def init_cache(self, input_shape: Any, dtype: Dtype = jnp.float32) -> None:
        """Refuses: there is no autoregressive decode cache (see ``decode``)."""
        del input_shape, dtype
        _flax_attention.check_decode(True)
