"""The public entry points: `gna` and the rank-checked `na1d`, `na2d`, `na3d`.

`gna`'s signature is the one written out; `na1d`/`na2d`/`na3d` share it with the number of
spatial axes bound, and `jax_gna.parallel.gna_sharded` and `jax_gna.reference.gna` take the
same keywords (`tests/test_signatures.py` checks that they agree).
"""

from __future__ import annotations

import inspect

import jax
from jax.typing import ArrayLike, DTypeLike

from jax_gna import _fp8, _implementations, parallel
from jax_gna._mesh import spatially_sharded
from jax_gna._params import (
    BoolOrTuple,
    IntOrTuple,
    as_arrays,
    make_params,
    out_dtype_of,
    refuse_mask_and_bias,
)


def _attention(
    query,
    key,
    value,
    kernel_size,
    *,
    additional_keys,
    additional_values,
    q_descale,
    k_descale,
    v_descale,
    out_dtype,
    return_lse,
    implementation,
    rank,
    mask,
    bias,
    **options,
):
    """`gna` with the number of spatial axes fixed (`rank`) or inferred (None); `options` are
    `make_params`'s other keywords."""
    refuse_mask_and_bias(mask, bias)
    query, key, value, extra_keys, extra_values = as_arrays(
        query, key, value, additional_keys, additional_values
    )
    scales = _fp8.descales(query, key, value, q_descale, k_descale, v_descale)
    out_dtype = out_dtype_of(out_dtype, query)
    params = make_params(
        query,
        key,
        value,
        kernel_size,
        additional_keys=extra_keys,
        additional_values=extra_values,
        rank=rank,
        **options,
    )
    if scales is not None:
        # Float8: chosen on the float8 inputs; the CUDA FP8 kernel takes them as they are,
        # every other implementation runs on their dequantised float32 values.
        implementation, params = _implementations.for_fp8(implementation, query, key, value, params)
        if implementation == "cuda":
            out, lse = _implementations.attend_fp8(
                query, key, value, params, extra_keys, extra_values, scales, out_dtype
            )
            return (out, lse) if return_lse else out
        query, key, value, extra_keys, extra_values = _fp8.dequantize(
            scales, query, key, value, extra_keys, extra_values
        )
    split = None
    # Explicit "xla" with tile shapes goes on to `select`, which refuses them. Only an input
    # with a sharded spatial dim asks context parallelism whether it splits.
    routable = implementation is None or (implementation == "xla" and not params.has_tiles)
    if routable and spatially_sharded(query, params.rank):
        split = parallel.spatial_split(query, params.without_tiles())
    if split is not None:
        # A spatially sharded input: exchange halos instead of gathering the axis.
        mesh, axis_name, axis = split
        out, lse = parallel.sharded(
            query,
            key,
            value,
            params.without_tiles(),
            extra_keys,
            extra_values,
            mesh=mesh,
            axis_name=axis_name,
            spatial_axis=axis,
            implementation=implementation,
            out_dtype=out_dtype,
        )
    else:
        out, lse = _implementations.attend(
            query, key, value, params, extra_keys, extra_values, implementation, out_dtype
        )
    return (out, lse) if return_lse else out


def gna(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    kernel_size: IntOrTuple,
    *,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    additional_keys: ArrayLike | None = None,
    additional_values: ArrayLike | None = None,
    q_descale: ArrayLike | None = None,
    k_descale: ArrayLike | None = None,
    v_descale: ArrayLike | None = None,
    out_dtype: DTypeLike | None = None,
    return_lse: bool = False,
    implementation: str | None = None,
    q_tile_shape: IntOrTuple | None = None,
    kv_tile_shape: IntOrTuple | None = None,
    deterministic: bool | None = None,
    mask: None = None,
    bias: None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Generalized neighborhood attention (GNA) over a 1-D, 2-D or 3-D token grid.

    Every query attends to a window of ``kernel_size`` keys per axis around it, in one softmax:

    .. math::

      \mathrm{out}_i = \sum_{j \in \mathcal{N}(i)} \mathrm{softmax}_j(s \cdot q_i \cdot k_j)\, v_j

    Per axis, windows shift inward at the borders (they never shrink); ``stride`` makes groups
    of ``stride`` consecutive queries share one window (1 is neighborhood attention, equal to
    ``kernel_size`` is blocked attention); ``dilation`` spreads the window over every
    ``dilation``-th token; ``is_causal`` keeps only keys at or before the query. The exact rule
    is `jax_gna.reference.gna`, the pure-jnp oracle.

    Arrays are heads-last, ``[batch..., *spatial, heads, head_dim]`` (as in
    `jax.nn.dot_product_attention`); move the heads of heads-first arrays ``[B, H, X..., D]``
    with ``jnp.moveaxis(x, 1, -2)``. Shape legend: ``B...`` batch dims (any number, including
    none), ``X...`` spatial dims (one per axis of the window), ``H`` query heads, ``Hkv``
    key/value heads (``H % Hkv == 0``; query head ``h`` uses key/value head ``h // (H //
    Hkv)``), ``D`` query/key head dim, ``Dv`` value head dim, ``E`` additional tokens.

    Args:
      query: ``[B..., X..., H, D]``.
      key: ``[B..., X..., Hkv, D]``, same dtype and token layout as ``query``.
      value: ``[B..., X..., Hkv, Dv]``.
      kernel_size: window size, an int (every axis) or one int per axis, each ``>= 1`` and with
        ``kernel_size * dilation <= extent``; 1 on an axis keeps each query to its own position
        along it (a video of one frame with window 1 along time attends within the frame). The
        number of spatial axes is the length of any per-axis tuple among the parameters; with
        ints only it must follow from the shape (``[X, H, D]``, 1-D), else this raises rather
        than guess (``[B, L, H, D]`` and ``[X, Y, H, D]`` look alike): pass tuples, or use
        `na1d`/`na2d`/`na3d`, which take it from their name.
      stride: an int or one per axis, ``1 <= stride <= kernel_size``.
      dilation: an int or one per axis, ``>= 1``.
      is_causal: a bool or one per axis.
      scale: multiplier of the scores; default ``D ** -0.5``. Must be static.
      additional_keys: optional ``[B..., E, Hkv, D]`` tokens (e.g. text tokens) that every query
        attends to, in the same softmax.
      additional_values: ``[B..., E, Hkv, Dv]``, given together with ``additional_keys``.
      q_descale: float8 inputs only (``query``, ``key``, ``value`` all ``float8_e4m3fn`` or all
        ``float8_e5m2``): the query is read as ``query.astype(float32) * q_descale``. A float32
        scalar (per tensor) or array ``[H]`` (per query head); None means 1. Must be finite.
        Float8 calls run on the FP8 kernels (``"cuda"``: ``float8_e4m3fn``, head dim 64, 128 or
        256 on Hopper, 64 or 128 on Blackwell, never run there) or on ``"xla"``/``"reference"``
        in float32 on the dequantised values, return
        ``out`` in bfloat16 unless ``out_dtype`` says otherwise, and are forward only:
        differentiating through one raises (compute gradients in bf16/fp16). Extra tokens
        are in the same float8 dtype and take ``k_descale``/``v_descale``.
      k_descale: as ``q_descale`` for ``key`` (and ``additional_keys``), scalar or ``[Hkv]``.
      v_descale: as ``q_descale`` for ``value`` (and ``additional_values``), scalar or
        ``[Hkv]``.
      out_dtype: the dtype of ``out``: float32, float16, bfloat16 (or float64 with
        ``jax_enable_x64``); default the query's, bfloat16 for float8 inputs. A float8
        ``out_dtype`` raises ``NotImplementedError`` (FP8 output is not supported). ``"cpu"``,
        ``"xla"`` and ``"reference"`` compute in float32 and round once, to ``out_dtype``;
        ``"cuda"`` writes the inputs' dtype, which is then cast. Gradients flow back through
        the cast (the input gradients are in the inputs' dtypes). ``lse`` stays float32.
      return_lse: also return the log-sum-exp of the scaled scores.
      implementation: ``None`` picks the best available (``"cuda"`` on a supported GPU, then
        ``"cpu"`` on the CPU when the extension is built, else ``"xla"``); ``"cuda"`` our GPU
        kernels; ``"cpu"`` our C++ CPU kernel; ``"xla"`` portable pure JAX, memory proportional
        to tokens x window, any backend; ``"reference"`` the dense masked softmax (O(N^2)
        memory). Asking for one that cannot run this call raises ``NotImplementedError`` with
        the reason; `jax_gna.supported_implementations` lists them all.
      q_tile_shape: Q tile of the ``"cuda"`` forward kernel, an int or one per spatial axis (in
        dilation-group coordinates), given together with ``kv_tile_shape``; it must be one of
        the compiled configurations (`jax_gna.sim.supported_tiles`), else ``"cuda"`` raises
        ``NotImplementedError`` listing them. Unset, the kernel runs the compiled configuration
        with the best simulated bound for this call (`jax_gna.sim.tile_candidates`). Other
        implementations have no tiles: an explicit ``"cpu"``/``"xla"``/``"reference"`` refuses
        tile shapes, and ``implementation=None`` ignores them unless it picks ``"cuda"``. The
        gradient's backward kernel picks its own tiles the same way, whatever these are.
      kv_tile_shape: KV tile of the ``"cuda"`` forward kernel, as ``q_tile_shape``.
      deterministic: gradients of ``"cuda"``: ``True`` makes the CUDA backward bit-identical
        run to run (it adds the dQ contributions of the key tiles in a fixed order instead of
        by atomic adds, at some cost in speed); ``False`` allows the faster order; ``None`` (the
        default) follows XLA: deterministic when ``XLA_FLAGS`` holds
        ``--xla_gpu_deterministic_ops=true`` or ``--xla_gpu_exclude_nondeterministic_ops=true``
        when the call is traced. The forward pass and the ``"cpu"`` kernel are deterministic
        either way; calls the CUDA backward cannot run take the ``xla`` backward, which is made
        of XLA's own ops (governed by the same flags), as are ``"xla"`` and ``"reference"``.
      mask: only None, so that calls written for `jax.nn.dot_product_attention` run: the
        window options fix which keys a query sees (``is_causal`` for causal masking), and
        ``additional_keys``/``additional_values`` add keys every query sees. Anything else
        raises ``NotImplementedError``.
      bias: only None (no bias is added to the scores); anything else raises
        ``NotImplementedError``.

    Returns:
      ``out`` ``[B..., X..., H, Dv]`` in ``out_dtype`` (default the input dtype, bfloat16 for
      float8 inputs), and
      with ``return_lse=True`` also ``lse`` ``[B..., X..., H]`` in float32 (natural log).

    Raises:
      TypeError, ValueError: for invalid arguments, naming the argument and the rule.
      NotImplementedError: when the requested implementation cannot run this call, or for a
        ``mask`` or ``bias``.
    """
    # The first statement, so that `locals()` holds exactly the arguments.
    return _attention(**locals(), rank=None)


_SIGNATURE = inspect.signature(gna)


def _fixed_rank(rank: int):
    """`gna` with exactly `rank` spatial axes, under its own name and `gna`'s signature."""
    name = f"na{rank}d"

    def na(*args, **kwargs):
        try:
            arguments = _SIGNATURE.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{name}() {e}") from None
        arguments.apply_defaults()
        return _attention(**arguments.arguments, rank=rank)

    na.__signature__ = _SIGNATURE
    na.__name__ = na.__qualname__ = name
    na.__doc__ = (
        f"{rank}-D generalized neighborhood attention: `gna` with exactly {rank} spatial "
        f"axis{'es' if rank > 1 else ''}.\n\n"
        f"``query`` is ``[B..., {', '.join('X' + str(a + 1) for a in range(rank))}, H, D]`` "
        "(heads-last, any number of batch dims, including none); every other argument, the "
        "results and the errors are as in `jax_gna.gna`."
    )
    return na


na1d = _fixed_rank(1)
na2d = _fixed_rank(2)
na3d = _fixed_rank(3)


def supported_implementations(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    kernel_size: IntOrTuple,
    *,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    q_tile_shape: IntOrTuple | None = None,
    kv_tile_shape: IntOrTuple | None = None,
) -> dict[str, str | None]:
    """Which implementations can run this call: each name mapped to ``None`` (usable) or the
    reason it cannot (missing extension, unsupported GPU, dtype, head dim, tile shapes the
    kernels lack...). Arguments as in `gna`. ``implementation=None`` picks the first usable of
    ``"cuda"``, ``"cpu"``, ``"xla"`` (tile shapes aside: see `gna`)."""
    query, key, value = as_arrays(query, key, value)
    params = make_params(
        query,
        key,
        value,
        kernel_size,
        stride=stride,
        dilation=dilation,
        is_causal=is_causal,
        scale=scale,
        q_tile_shape=q_tile_shape,
        kv_tile_shape=kv_tile_shape,
    )
    return _implementations.supported(query, key, value, params)


__all__ = ["gna", "na1d", "na2d", "na3d", "supported_implementations"]
