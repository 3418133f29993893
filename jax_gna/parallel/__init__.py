"""Context parallelism: GNA with one spatial axis sharded over a mesh axis.

Each device holds a contiguous block (a shard) of one spatial axis of ``query``, ``key`` and
``value``. Instead of gathering the whole axis (what XLA does for an op whose spatial dims must
be replicated), two strategies attend it where it lies:

- ``"halo"`` (the default): every device receives from its two neighbours only the keys and
  values its queries' windows reach and attends its queries with the *global* windows
  (`jax_gna._halo`: the split plan, the exchanges, the shard-local attention), so results
  and gradients equal one device's.
- ``"heads"``: an all-to-all of heads gives every device the whole axis for its share of the
  heads (`jax_gna.parallel.heads`).

`gna_sharded` is the explicit entry point. `jax_gna.gna` routes here the inputs that arrive
with a spatial axis sharded (`spatial_split`). Under jit on Auto meshes traced values carry no
sharding to route by; there the partitioning rule of the FFI op (`jax_gna._ffi_op`) lowers a
spatially sharded call to the same shard-local halo functions (docs/design.md, "Context
parallelism").

Shape legend: ``B...`` batch dims, ``X...`` spatial dims, ``H`` query heads, ``Hkv`` key/value
heads, ``D`` query/key head dim, ``Dv`` value head dim, ``E`` additional key/value tokens.
"""

from __future__ import annotations

import functools

import jax
from jax.typing import ArrayLike, DTypeLike

from jax_gna import _additional_kv, _fp8, _implementations
from jax_gna._halo.plan import (
    AxisName,
    Halo,
    ShardPlan,
    check_halo,
    halo,
    plan_split,
    shard_plan,
    shard_shapes,
    views_refusal,
)
from jax_gna._halo.shard import attend_shard, shard_params
from jax_gna._mesh import axis_size, layout_of, mesh_platform
from jax_gna._params import (
    BoolOrTuple,
    GnaParams,
    IntOrTuple,
    as_arrays,
    make_params,
    out_dtype_of,
    refuse_mask_and_bias,
)
from jax_gna.parallel.heads import sharded_by_heads
from jax_gna.parallel.split import mesh_of, run_sharded, specs

STRATEGIES = ("halo", "heads")


def shard_implementation(
    requested: str | None, platform: str, query, key, value, params: GnaParams, plan: ShardPlan
) -> str:
    """The implementation the shards of a halo split run on `platform` (``"cpu"``, ``"gpu"``,
    ...), `query`/`key`/`value` being one shard's shapes.

    `requested` if given (NotImplementedError saying why where it cannot: tile shapes it has
    none of, another platform, kernels that refuse a device's view); for None the first of
    `jax_gna._implementations.IMPLEMENTATIONS` that ``implementation=None`` may pick and whose
    kernels take every device's view on this platform, else the first that needs no views
    (the ``xla`` tiles). As in `jax_gna.gna`, None ignores tile shapes unless it picks an
    implementation with tiles, which must then take them."""

    def refusal(impl: _implementations.Implementation, params: GnaParams) -> str | None:
        return impl.platform_refusal(platform) or views_refusal(
            impl.why_not, query, key, value, params, plan
        )

    if requested is None:
        for impl in _implementations.IMPLEMENTATIONS:
            if not impl.auto:
                continue
            if not impl.takes_views:
                return impl.name
            if refusal(impl, params.without_tiles()) is None:
                reason = refusal(impl, params) if impl.has_tiles and params.has_tiles else None
                if reason is not None:
                    raise NotImplementedError(
                        f"implementation=None picked {impl.name!r} for the shards of this call, "
                        f"and it refuses the tile shapes: {reason}."
                    )
                return impl.name
        raise AssertionError("unreachable: the xla implementation runs every shard")
    impl = _implementations.get(requested)
    reason = impl.tiles_refusal(params) or (refusal(impl, params) if impl.takes_views else None)
    if reason is not None:
        raise NotImplementedError(
            f"implementation={requested!r} cannot run the shards of this call: {reason}. "
            "Use implementation=None (the xla tiles where the kernels cannot)."
        )
    return impl.name


# Jitted so that eager calls run one program instead of op-by-op dispatch of the tiles.
@functools.partial(
    jax.jit,
    static_argnames=(
        "params",
        "mesh",
        "axis_name",
        "spatial_axis",
        "implementation",
        "strategy",
        "out_dtype",
    ),
)
def sharded(
    query,
    key,
    value,
    params: GnaParams,
    extra_keys,
    extra_values,
    *,
    mesh,
    axis_name: AxisName,
    spatial_axis: int,
    implementation: str | None = None,
    strategy: str = "halo",
    out_dtype=None,
):
    """``(out, lse)`` of validated inputs with `spatial_axis` split over `axis_name`;
    `implementation` and `strategy` as in `gna_sharded`, ``out`` in `out_dtype` (None: the
    query's)."""
    out_dtype = query.dtype if out_dtype is None else out_dtype
    if strategy == "heads":
        return sharded_by_heads(
            query,
            key,
            value,
            params,
            extra_keys,
            extra_values,
            mesh,
            axis_name,
            spatial_axis,
            implementation,
            out_dtype,
        )
    rank = params.rank
    n_batch = query.ndim - rank - 2
    dim = n_batch + spatial_axis
    spatial = tuple(query.shape[n_batch : n_batch + rank])
    devices = axis_size(mesh, axis_name)
    plan = shard_plan(spatial, params, spatial_axis, devices)
    check_halo(plan.halo, spatial_axis, axis_name)
    split_specs = specs(mesh, query, key.shape[-2], rank, spatial_axis, axis_name)
    implementation = shard_implementation(
        implementation,
        mesh_platform(mesh),
        *shard_shapes(plan, dim, query, key, value),
        params,
        plan,
    )
    impl = _implementations.get(implementation)
    if not impl.has_tiles:
        params = params.without_tiles()
    params = shard_params(implementation, query, key, value, params)
    args = _implementations.run_inputs(impl, out_dtype, query, key, value, extra_keys, extra_values)

    def body(q, k, v, *extra_kv):
        out, lse = attend_shard(q, k, v, params, plan, dim, axis_name, implementation)
        if extra_kv:
            out, lse = _additional_kv.attend_and_merge(
                q, out, lse, *extra_kv, params.scale, n_batch
            )
        return out, lse

    # Shards must be equal: pad the axis at the end (no window reaches past the extent).
    total = devices * plan.halo.shard
    out, lse = run_sharded(body, mesh, split_specs, dim, total, *args)
    return out.astype(out_dtype), lse


def gna_sharded(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    kernel_size: IntOrTuple,
    *,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: AxisName,
    spatial_axis: int = 0,
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
    strategy: str = "halo",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """`jax_gna.gna` with one spatial axis split over a mesh axis (context parallelism).

    Every device attends its block of `spatial_axis` after receiving from its neighbours only
    the keys and values its queries' windows reach (a halo, `jax.lax.ppermute`), never the
    whole axis. Results and gradients equal `jax_gna.gna` on one device: windows follow the
    global extent (they shift at the global borders, stride and dilation groups may span
    shards), and causal axes need no right halo. Works eagerly and under `jax.jit`, on Auto
    and Explicit meshes; in Explicit meshes the batch and head sharding of ``query`` are kept.

    Shape legend as in `jax_gna.gna`: ``B...`` batch dims, ``X...`` spatial dims, ``H``,
    ``Hkv`` heads, ``D``, ``Dv`` head dims, ``E`` additional tokens.

    Args:
      query: ``[B..., X..., H, D]``.
      key: ``[B..., X..., Hkv, D]``.
      value: ``[B..., X..., Hkv, Dv]``.
      kernel_size, stride, dilation, is_causal, scale: as in `jax_gna.gna`.
      mesh: the device mesh; default the one set by `jax.set_mesh`, else the one `query` is
        sharded over.
      axis_name: the mesh axis (or tuple of axes) to split `spatial_axis` over.
      spatial_axis: which spatial axis to split (0 is the outermost, e.g. time in
        ``[B, T, H, W, heads, D]``). Its extent need not divide evenly (the last shards are
        padded; that pads and slices the whole arrays once).
      additional_keys, additional_values: ``[B..., E, Hkv, D]`` / ``[B..., E, Hkv, Dv]`` extra
        tokens every query attends to; replicated on every device along `axis_name`.
      q_descale, k_descale, v_descale: descales of float8 inputs, as in `jax_gna.gna`.
      out_dtype: the dtype of ``out``, as in `jax_gna.gna`.
      return_lse: also return the log-sum-exp ``[B..., X..., H]`` (float32).
      implementation: ``None`` (the FFI kernel of the platform, ``"cpu"`` or ``"cuda"``, run
        on each shard's view where it takes it, else ``"xla"``), ``"cpu"`` / ``"cuda"`` (those
        kernels; ``NotImplementedError`` where they cannot run the shards, e.g. the CUDA
        kernels for float32), ``"xla"`` (memory-efficient tiles over the shard's window
        table), or ``"reference"`` (dense masked softmax per shard, for small problems).
      q_tile_shape, kv_tile_shape: tiles of the ``"cuda"`` kernels every shard runs, as in
        `jax_gna.gna`: another explicit implementation refuses them, and ``None`` honours them
        where the shards run ``"cuda"`` and ignores them otherwise.
      deterministic, mask, bias: as in `jax_gna.gna`.
      strategy: ``"halo"`` (the halo exchange above) or ``"heads"`` (an all-to-all of heads,
        DeepSpeed-Ulysses': every device attends the whole axis for its share of the heads,
        whose query and kv heads must divide by the devices of `axis_name`). The heads
        strategy moves far more data; on GPUs of one host, XLA moves it with the copy engines
        under ``XLA_FLAGS=--xla_gpu_use_memcpy_local_p2p=true`` (README, "Multi-device").

    Returns:
      ``out`` ``[B..., X..., H, Dv]`` sharded like ``query`` along `spatial_axis`, and with
      ``return_lse=True`` also ``lse`` ``[B..., X..., H]``.

    Raises:
      ValueError: for invalid arguments (as `jax_gna.gna`), an `axis_name` not in the mesh, an
        unknown `strategy`, shards smaller than the halo they must provide (the message names
        the minimum shard size), or, with ``strategy="heads"``, heads that do not divide.
      NotImplementedError: for an implementation that cannot run the shards (the message says
        why), tile shapes it refuses, or a ``mask`` or ``bias``.
    """

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
        stride=stride,
        dilation=dilation,
        is_causal=is_causal,
        scale=scale,
        additional_keys=extra_keys,
        additional_values=extra_values,
        q_tile_shape=q_tile_shape,
        kv_tile_shape=kv_tile_shape,
        deterministic=deterministic,
    )
    if isinstance(spatial_axis, bool) or not 0 <= spatial_axis < params.rank:
        raise ValueError(
            f"`spatial_axis` must be a spatial axis index in [0, {params.rank}), "
            f"got {spatial_axis!r}."
        )
    if implementation is not None:
        _implementations.get(implementation)  # ValueError for an unknown one
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown `strategy` {strategy!r}; expected one of {STRATEGIES}.")
    if scales is not None:
        # Float8: as in `jax_gna.gna`, the shards run the dequantised float32 values.
        implementation, params = _implementations.for_fp8(implementation, query, key, value, params)
        query, key, value, extra_keys, extra_values = _fp8.dequantize(
            scales, query, key, value, extra_keys, extra_values
        )
    out, lse = sharded(
        query,
        key,
        value,
        params,
        extra_keys,
        extra_values,
        mesh=mesh_of(mesh, query),
        axis_name=axis_name,
        spatial_axis=spatial_axis,
        implementation=implementation,
        strategy=strategy,
        out_dtype=out_dtype,
    )
    return (out, lse) if return_lse else out


def spatial_split(query: jax.Array, params: GnaParams):
    """``(mesh, axis_name, spatial_axis)`` if `query` arrives with a spatial axis sharded (an
    Explicit mesh's type under tracing, or a concrete array's NamedSharding), the halo fits in
    a shard and several devices share the axis; else None. The first sharded spatial axis
    wins (the others are gathered)."""
    layout = layout_of(query)
    if layout is None:
        return None
    mesh, spec = layout
    split = plan_split(mesh, spec, tuple(query.shape), params)
    return None if split is None else (mesh, split[0], split[1])


__all__ = ["Halo", "gna_sharded", "halo"]
