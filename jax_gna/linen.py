"""Flax Linen layers: `NeighborhoodAttention`, a drop-in for
``flax.linen.MultiHeadDotProductAttention`` on 1-D, 2-D and 3-D token grids, and
`make_attention_fn` for its ``attention_fn``.

The twin of `jax_gna.nnx.NeighborhoodAttention`: the same fields, submodule names and parameter
shapes, and identical outputs for identical parameters. Shape legend: ``B...`` batch dims,
``X...`` spatial dims, ``F`` input features, ``E`` context (extra) tokens.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.typing import DotGeneralT, Dtype, Initializer, PrecisionLike

from jax_gna import _flax_attention
from jax_gna._flax_attention import BoolOrTuple, IntOrTuple, make_attention_fn

__all__ = ["NeighborhoodAttention", "make_attention_fn"]


class NeighborhoodAttention(nn.Module):
    """Multi-head neighborhood attention over a token grid (`jax_gna.gna`), with the fields,
    submodules and parameters of ``flax.linen.MultiHeadDotProductAttention``.

    Example usage::

      >>> import jax, jax.numpy as jnp
      >>> import jax_gna.linen
      >>> layer = jax_gna.linen.NeighborhoodAttention(num_heads=4, kernel_size=(3, 3))
      >>> x = jnp.ones((2, 8, 8, 32))  # [batch, height, width, features]
      >>> variables = layer.init(jax.random.key(0), x)
      >>> layer.apply(variables, x).shape
      (2, 8, 8, 32)

    Migrating from ``nn.MultiHeadDotProductAttention`` means adding a ``kernel_size``; the
    parameter tree (``query``, ``key``, ``value``, ``out``, and ``query_ln``/``key_ln`` with
    ``normalize_qk``) is unchanged. Every field and call argument of Flax's layer is accepted by
    name (``tests/test_linen.py`` compares the signatures). ``attention_fn``, the attention
    einsum factories, ``dropout_rate > 0`` and ``decode=True`` raise ``NotImplementedError``
    when the layer runs, as do ``mask`` and ``sow_weights`` at call time.

    Attributes:
      num_heads: number of query heads; ``qkv_features`` must be divisible by it.
      kernel_size: window size per spatial axis, an int or one per axis (see `jax_gna.gna`).
        The number of spatial axes is the length of any per-axis tuple among the window
        options, else ``spatial_dims``.
      qkv_features: total query/key/value features (default: the input features).
      out_features: output features (default: the input features).
      num_kv_heads: key/value heads for grouped-query attention (default ``num_heads``).
      spatial_dims: number of spatial axes (1, 2 or 3) when every window option is an int.
      stride, dilation, is_causal: the window options of `jax_gna.gna`.
      dtype: computation dtype (default: inferred from inputs and params).
      param_dtype: parameter dtype.
      precision: precision of the projections (the attention core accumulates in float32).
      kernel_init, out_kernel_init, bias_init, out_bias_init, use_bias: as in Flax.
      normalize_qk: apply LayerNorm to query and key heads.
      force_fp32_for_softmax: always honoured (the softmax runs in float32).
      qkv_dot_general, out_dot_general, qkv_dot_general_cls, out_dot_general_cls: the
        projections' dot_general, as in Flax.
      attention_fn, qk_attn_weights_einsum_cls, attn_weights_value_einsum_cls: must be None
        (the layer computes the attention; keep Flax's layer with `make_attention_fn` to swap
        the function instead).
      implementation: passed to `jax_gna.gna` (None picks the best available).
      q_tile_shape, kv_tile_shape: tile shapes of the ``"cuda"`` kernels, passed to
        `jax_gna.gna` (both or neither; None: the kernels pick for each call).
      deterministic_backward: passed to `jax_gna.gna` as ``deterministic``: True makes the
        CUDA gradients bit-identical run to run, None (default) follows XLA's
        ``--xla_gpu_deterministic_ops``. (``deterministic`` is Flax's dropout switch.)
      fp8_dtype: None (default), or ``jnp.float8_e4m3fn``/``jnp.float8_e5m2``: the projected
        query, key and value are quantised to it on the fly, each with a per-tensor scale
        (``amax / max(fp8_dtype)``), and attended with those descales (see `jax_gna.gna`; the
        ``xla`` implementation runs them), the attention output in the layer's dtype. Forward
        only, for inference: differentiating the layer raises (train without it, in
        bf16/fp16).
      dropout_rate: must be 0.0; broadcast_dropout and deterministic have no effect.
      decode: must be False.
    """

    num_heads: int
    kernel_size: IntOrTuple
    qkv_features: int | None = None
    out_features: int | None = None
    num_kv_heads: int | None = None
    spatial_dims: int | None = None
    stride: IntOrTuple = 1
    dilation: IntOrTuple = 1
    is_causal: BoolOrTuple = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    out_kernel_init: Initializer | None = None
    bias_init: Initializer = nn.initializers.zeros_init()
    out_bias_init: Initializer | None = None
    use_bias: bool = True
    normalize_qk: bool = False
    implementation: str | None = None
    q_tile_shape: IntOrTuple | None = None
    kv_tile_shape: IntOrTuple | None = None
    deterministic_backward: bool | None = None
    fp8_dtype: Dtype | None = None
    dropout_rate: float = 0.0
    broadcast_dropout: bool = True
    deterministic: bool | None = None
    decode: bool = False
    attention_fn: Callable[..., jax.Array] | None = None
    force_fp32_for_softmax: bool = False
    qkv_dot_general: DotGeneralT | None = None
    out_dot_general: DotGeneralT | None = None
    qkv_dot_general_cls: Any = None
    out_dot_general_cls: Any = None
    qk_attn_weights_einsum_cls: Callable[..., Callable[..., jax.Array]] | None = None
    attn_weights_value_einsum_cls: Callable[..., Callable[..., jax.Array]] | None = None

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        inputs_kv: jax.Array | None = None,
        context: jax.Array | None = None,
        is_causal: BoolOrTuple | None = None,
        mask: jax.Array | None = None,
        deterministic: bool | None = None,
        dropout_rng: Any = None,
        sow_weights: bool = False,
    ) -> jax.Array:
        """Attend over the token grid of ``inputs_q``.

        Args:
          inputs_q: ``[B..., X..., F]`` tokens on a grid with one axis per window axis.
          inputs_k: ``[B..., X..., F_kv]`` on the same grid; default ``inputs_q``.
          inputs_v: as ``inputs_k``; default ``inputs_k``.
          inputs_kv: Flax's deprecated single key/value input: ``inputs_k = inputs_v =
            inputs_kv`` (with Flax's ``DeprecationWarning``).
          context: optional ``[B..., E, F_kv]`` tokens (e.g. text) that every query attends to
            in the same softmax, projected by the same ``key``/``value`` layers.
          is_causal: overrides the ``is_causal`` attribute for this call when not None.
          mask: must be None (arbitrary masks are not supported).
          deterministic, dropout_rng: accepted for compatibility; no effect (no dropout).
          sow_weights: must be False (the attention weights are never materialised).

        Returns:
          ``[B..., X..., out_features]``.
        """
        del deterministic, dropout_rng
        _flax_attention.check_dropout(self.dropout_rate, deterministic=None)
        _flax_attention.check_decode(self.decode)
        _flax_attention.check_attention_fn(self.attention_fn)
        _flax_attention.check_einsum("qk_attn_weights_einsum_cls", self.qk_attn_weights_einsum_cls)
        _flax_attention.check_einsum(
            "attn_weights_value_einsum_cls", self.attn_weights_value_einsum_cls
        )
        if inputs_kv is not None:
            if inputs_k is not None or inputs_v is not None:
                raise ValueError(
                    "If either `inputs_k` or `inputs_v` is not None, `inputs_kv` must be None "
                    "(it is Flax's deprecated way to pass both; prefer inputs_k and inputs_v)."
                )
            inputs_k = inputs_v = inputs_kv
            warnings.warn(
                "The inputs_kv arg will be deprecated soon (as in Flax). Use inputs_k and "
                "inputs_v instead.",
                DeprecationWarning,
                stacklevel=2,
            )
        _flax_attention.check_mask(mask)
        _flax_attention.check_sow_weights(sow_weights)
        window = _flax_attention.make_window(
            self.kernel_size, self.stride, self.dilation, self.is_causal, self.spatial_dims
        ).with_causal(is_causal)
        tiles = _flax_attention.make_tiles(self.q_tile_shape, self.kv_tile_shape, window.rank)
        deterministic_backward = _flax_attention.check_deterministic_backward(
            self.deterministic_backward
        )
        inputs_k, inputs_v = _flax_attention.resolve_inputs(
            inputs_q, inputs_k, inputs_v, context, window
        )

        features = inputs_q.shape[-1]
        qkv_features = self.qkv_features or features
        out_features = self.out_features or features
        num_kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by 'num_kv_heads' heads "
                f"({num_kv_heads})."
            )
        if qkv_features % self.num_heads != 0:
            raise ValueError(
                f"Memory dimension ({qkv_features}) must be divisible by 'num_heads' heads "
                f"({self.num_heads})."
            )
        head_dim = qkv_features // self.num_heads

        dense = functools.partial(
            nn.DenseGeneral,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            use_bias=self.use_bias,
        )
        qkv = functools.partial(
            dense,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dot_general=self.qkv_dot_general,
            dot_general_cls=self.qkv_dot_general_cls,
        )
        query_ln = key_ln = None
        if self.normalize_qk:
            query_ln, key_ln = (
                nn.LayerNorm(
                    use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name
                )
                for name in ("query_ln", "key_ln")
            )
        layers = _flax_attention.Projections(
            query=qkv(features=(self.num_heads, head_dim), name="query"),
            key=qkv(features=(num_kv_heads, head_dim), name="key"),
            value=qkv(features=(num_kv_heads, head_dim), name="value"),
            out=dense(
                features=out_features,
                axis=(-2, -1),
                kernel_init=self.out_kernel_init or self.kernel_init,
                bias_init=self.out_bias_init or self.bias_init,
                dot_general=self.out_dot_general,
                dot_general_cls=self.out_dot_general_cls,
                name="out",
            ),
            query_ln=query_ln,
            key_ln=key_ln,
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
            tiles=tiles,
            deterministic_backward=deterministic_backward,
            fp8_dtype=_flax_attention.check_fp8_dtype(self.fp8_dtype),
        )
