"""GNA's two XLA FFI custom calls (``jax_gna_fwd``, ``jax_gna_bwd``) and the extension's verdicts
on a call.

One target name per direction with a handler per platform (`PLATFORM`); XLA runs the handler of
the platform the computation is compiled for, so the calls here are platform-neutral. `forward`
and `backward` are the bare calls: attributes from `GnaParams.forward_attrs` / `backward_attrs`
(the one place their dtypes are decided), the workspace as an extra uint8 result dropped right
away, and results typed for the caller's `shard_map` axes. `jax_gna._ffi_op` makes them a
differentiable, batchable, partitionable op.

The verdicts (`why_not`, `backward_why_not`) are the C++ launcher's own answers, asked through
the extension's host helpers, so Python never second-guesses what the kernels support.

Shape legend: ``B...`` batch dims, ``X...`` spatial dims, ``H`` query heads, ``Hkv`` key/value
heads, ``D`` query/key head dim, ``Dv`` value head dim.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_gna import _extension, _symbolic, sim
from jax_gna._params import GnaParams

# The platform each implementation's handler runs on.
PLATFORM = {"cuda": "gpu", "cpu": "cpu"}
CPU_DTYPES = ("float32", "float16", "bfloat16")
CUDA_DTYPES = ("float16", "bfloat16")
# Float8 inputs the CUDA forward takes (``jax_gna_fwd_fp8``: descales, bfloat16 output).
CUDA_FP8_DTYPES = ("float8_e4m3fn",)


# ---------------------------------------------------------------------------------------------
# What the extension says about a call


def _problem_args(query, key, value, params: GnaParams) -> tuple:
    """The arguments the extension's host helpers take to describe one call; symbolic batch
    dims and head counts (`jax.export`) stand in as one batch entry and one GQA group
    (`_symbolic.stand_ins`)."""
    n_batch = query.ndim - params.rank - 2
    q_shape, k_shape, v_shape, _ = _symbolic.stand_ins(query, key, value, n_batch)
    return (
        q_shape,
        k_shape,
        v_shape,
        str(query.dtype),
        list(params.kernel_size),
        list(params.stride),
        list(params.dilation),
        [int(c) for c in params.is_causal],
    )


def _workspace_bytes(bytes_of: Callable, query, key, value, params: GnaParams, **mode):
    """The workspace of one call by the extension's helper `bytes_of` (`mode`: its keyword
    arguments beyond the problem): linear in the batch and the heads (one block of row
    statistics and dQ accumulators per batch entry and query head), so with symbolic ones it is
    the stand-ins' size times the dims they stand for."""
    n_batch = query.ndim - params.rank - 2
    factor = _symbolic.stand_ins(query, key, value, n_batch)[3]
    args = _problem_args(query, key, value, params)
    return bytes_of(*args, view=params.view_list(), **mode) * factor


def _compute_capability(query) -> tuple[int, int] | None:
    """(major, minor) of the GPU the call runs on: the query's device when it is a concrete
    array, else JAX's first GPU; None without a GPU."""
    device = None
    try:
        device = next(iter(query.devices()))
    except (AttributeError, jax.errors.ConcretizationTypeError, RuntimeError, StopIteration):
        pass
    if device is None or device.platform != "gpu":
        try:
            device = jax.devices("gpu")[0]
        except RuntimeError:
            return None
    cc = getattr(device, "compute_capability", None)
    if cc is None:
        return None
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


@functools.cache
def extension_takes_window_one() -> bool:
    """Whether the built extension accepts ``kernel_size`` 1 on an axis (a cheap probe of its
    window validator; builds from before window 1 was legal refuse it)."""
    if _extension.ext is None:
        return False
    try:
        _extension.ext.window(1, 1)
    except ValueError:
        return False
    return True


def _problem(query, params: GnaParams) -> sim.Problem:
    n_batch = query.ndim - params.rank - 2
    return sim.Problem(
        tuple(query.shape[n_batch : n_batch + params.rank]),
        params.kernel_size,
        params.stride,
        params.dilation,
        params.is_causal,
    )


def cuda_backward_reason(query, key, value, params: GnaParams) -> str | None:
    """None if the CUDA backward kernels can run the gradient of this call on the query's GPU
    (without one: on any arch this build has kernels for), else the reason (no such kernels in
    this build, the GPU's compute capability, dtype, head dims, ...), as the C++ launcher
    decides it."""
    ext = _extension.ext
    if ext is None:
        return _extension.missing
    if not ext.cuda_has_backward():
        return "this build of jax_gna has no CUDA backward kernels"
    cc = _compute_capability(query) or (-1, 0)
    try:
        return ext.cuda_bwd_can_implement(
            *_problem_args(query, key, value, params), *cc, view=params.view_list()
        )
    except ValueError as e:
        return str(e)


def backward_why_not(implementation: str, query, key, value, params: GnaParams) -> str | None:
    """None if the backward custom call of `implementation` (``"cpu"`` or ``"cuda"``) can run
    the gradient of this call (the CPU one always can), else the reason
    (`cuda_backward_reason`)."""
    return cuda_backward_reason(query, key, value, params) if implementation == "cuda" else None


def _cuda_can_implement(query, key, value, params: GnaParams, tiles=None) -> str | None:
    """The C++ launcher's verdict on this call with `tiles` (a `TileConfig`; None: those of
    `params`, or, without any, whichever compiled configuration fits), on the query's GPU
    (without one: on any arch this build has kernels for)."""
    q_tile, kv_tile = (
        (params.q_tile_shape, params.kv_tile_shape) if tiles is None else (tiles.q, tiles.kv)
    )
    cc = _compute_capability(query) or (-1, 0)
    try:
        return _extension.ext.cuda_fwd_can_implement(
            *_problem_args(query, key, value, params),
            *cc,
            q_tile=list(q_tile or ()),
            kv_tile=list(kv_tile or ()),
            view=params.view_list(),
        )
    except ValueError as e:
        return str(e)


def why_not(implementation: str, query, key, value, params: GnaParams) -> str | None:
    """None if `implementation` (``"cpu"`` or ``"cuda"``) can run this call, else the reason.

    Covers the extension (built? taking this window? with CUDA kernels?), dtype, and for CUDA
    the device's compute capability and what the kernels support (head dim, requested tile
    shapes, views, ...), as the C++ launcher decides it. The caller checks the platform the
    call runs on.
    """
    if 1 in params.kernel_size and not extension_takes_window_one():
        return "this build of the extension needs kernel_size >= 2 on every axis (rebuild it)"
    ext = _extension.ext
    if ext is None:
        return _extension.missing
    dtype = str(query.dtype)
    if implementation == "cpu":
        if dtype not in CPU_DTYPES:
            return f"the CPU kernel supports dtypes {CPU_DTYPES}, got {dtype}"
        return None
    if implementation != "cuda":
        raise ValueError(f"why_not: expected 'cpu' or 'cuda', got {implementation!r}")
    if not ext.cuda_targets():
        return (
            "this build of jax_gna has no CUDA kernels (it was built without nvcc, with "
            "JAX_GNA_CUDA=OFF, or without an arch in JAX_GNA_CUDA_ARCHS that has kernels)"
        )
    if dtype not in CUDA_DTYPES + CUDA_FP8_DTYPES:
        return f"the CUDA kernels support dtypes {CUDA_DTYPES + CUDA_FP8_DTYPES}, got {dtype}"
    if dtype in CUDA_FP8_DTYPES and _extension.FWD_FP8_TARGET not in ext.cuda_targets():
        return "this build of jax_gna has no FP8 forward (rebuild it)"
    if _compute_capability(query) is None:
        return "no CUDA GPU is visible to JAX"
    reason = _cuda_can_implement(query, key, value, params)
    if reason is not None and params.has_tiles:
        if _cuda_can_implement(query, key, value, params.without_tiles()) is None:
            # The kernels run this call, only not with these tiles: say which argument it is.
            reason = (
                f"q_tile_shape={params.q_tile_shape}, kv_tile_shape={params.kv_tile_shape}: "
                f"{reason}"
            )
    return reason


def cuda_tiles(query, key, value, params: GnaParams) -> GnaParams:
    """`params` with the tile shapes the CUDA forward runs: the requested ones, else among the
    compiled configurations that can run this call (`jax_gna._tiles.SM90_FORWARD`; every
    dilation loads on every configuration), the one with the best simulated bound, ties broken
    by fewer partial tiles (`jax_gna.sim.tile_candidates`)."""
    if params.has_tiles:
        return params
    problem = _problem(query, params)
    # The FP8 kernels run the 16-bit forward's tile configurations.
    dtype = jnp.bfloat16 if str(query.dtype) in CUDA_FP8_DTYPES else query.dtype
    try:
        candidates = sim.tile_candidates(problem, query.shape[-1], dtype)
    except NotImplementedError:  # not in the Python table: let the launcher use its default
        return params
    for candidate in candidates:
        if _cuda_can_implement(query, key, value, params, candidate.tiles) is None:
            tiles = candidate.tiles
            return dataclasses.replace(params, q_tile_shape=tiles.q, kv_tile_shape=tiles.kv)
    return params


def cuda_backward_tiles(query, key, value, params: GnaParams) -> tuple[tuple, tuple]:
    """``(q_tile, kv_tile)`` the CUDA backward runs for the gradient of this call: among the
    compiled backward configurations (`jax_gna._tiles.SM90_BACKWARD`) that can run it, the one
    with the best simulated bound, as `cuda_tiles` picks the forward's (the forward's tiles do
    not constrain it). ``((), ())`` where none applies, and the launcher takes its default: no
    CUDA backward for this call, a build without the configurations, no GPU to pick for (a
    call traced without one, e.g. for `jax.export`, runs whichever GPU's default), a GPU whose
    kernels have other shapes (sm100), or a view (a shard's queries against its key block)."""
    ext = _extension.ext
    cc = _compute_capability(query)  # the launcher of the GPU the call runs on
    if params.view or cc is None:
        return (), ()
    try:
        candidates = sim.tile_candidates(
            _problem(query, params), query.shape[-1], query.dtype, direction="bwd"
        )
    except NotImplementedError:
        return (), ()
    if ext is None or not ext.cuda_has_backward() or len(candidates) < 2:
        return (), ()
    args = _problem_args(query, key, value, params)
    for candidate in candidates:
        tiles = candidate.tiles
        try:
            reason = ext.cuda_bwd_can_implement(
                *args, *cc, q_tile=list(tiles.q), kv_tile=list(tiles.kv), view=params.view_list()
            )
        except ValueError:
            continue
        if reason is None:
            return tiles.q, tiles.kv
    return (), ()


# ---------------------------------------------------------------------------------------------
# The custom calls


def _result(like: jax.Array, shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
    """A custom call's result type, varying over the same `shard_map` axes as its input `like`.

    ffi_call types its results as given; without the input's manual axes, a result computed
    per shard inside a user's `shard_map` would be typed as the same on every device, and
    differentiating it fails (the backward's types do not match the primal's)."""
    aval = jax.typeof(like)
    if aval.manual_axis_type.empty:
        return jax.ShapeDtypeStruct(shape, dtype)
    sharding = NamedSharding(aval.sharding.mesh, P())  # (the manual axes need their mesh)
    return jax.ShapeDtypeStruct(
        shape, dtype, sharding=sharding, manual_axis_type=aval.manual_axis_type
    )


def _forward(target: str, params: GnaParams, args: tuple, out_dtype, vmap_method: str) -> tuple:
    """``(out, lse)`` of the forward custom call `target` on ``args`` (q, k, v first)."""
    ext = _extension.ext
    if ext is None:
        raise NotImplementedError(_extension.missing)
    q, k, v = args[:3]
    workspace = _workspace_bytes(ext.fwd_workspace_bytes, q, k, v, params)
    results = (
        _result(q, q.shape[:-1] + v.shape[-1:], out_dtype),  # out
        _result(q, q.shape[:-1], jnp.float32),  # lse
        _result(q, (workspace,), jnp.uint8),
    )
    call = jax.ffi.ffi_call(target, results, vmap_method=vmap_method)
    out, lse, _ = call(*args, **params.forward_attrs())
    return out, lse


def forward(params: GnaParams, q, k, v) -> tuple[jax.Array, jax.Array]:
    """``(out, lse)`` of ``jax_gna_fwd`` on q ``[B..., X..., H, D]``, k ``[B..., X..., Hkv, D]``,
    v ``[B..., X..., Hkv, Dv]`` (with ``params.view``: the view's query and key slices)."""
    return _forward(_extension.FWD_TARGET, params, (q, k, v), q.dtype, "broadcast_all")


def forward_fp8(params: GnaParams, q, k, v, descale) -> tuple[jax.Array, jax.Array]:
    """``(out, lse)`` of ``jax_gna_fwd_fp8`` (CUDA only) on float8_e4m3fn q, k, v with
    `descale` float32 ``[3, H]`` (the q, k and v descales of each query head); ``out`` in
    bfloat16. No derivative rule; vmap runs the calls one after another (a batched descale
    may differ from call to call)."""
    args = (q, k, v, descale)
    return _forward(_extension.FWD_FP8_TARGET, params, args, jnp.bfloat16, "sequential")


def backward(params: GnaParams, dout, q, k, v, out, lse, dlse) -> tuple:
    """``(dq, dk, dv)`` of ``jax_gna_bwd`` given the forward's ``out``/``lse`` and the
    cotangents of both."""
    ext = _extension.ext
    if ext is None:
        raise NotImplementedError(_extension.missing)
    q_tile, kv_tile = cuda_backward_tiles(q, k, v, params)
    workspace = _workspace_bytes(
        ext.bwd_workspace_bytes,
        q,
        k,
        v,
        params,
        deterministic=params.deterministic,
        q_tile=list(q_tile),
        kv_tile=list(kv_tile),
    )
    results = (
        _result(q, q.shape, q.dtype),
        _result(q, k.shape, k.dtype),
        _result(q, v.shape, v.dtype),
        _result(q, (workspace,), jnp.uint8),
    )
    call = jax.ffi.ffi_call(_extension.BWD_TARGET, results, vmap_method="broadcast_all")
    attrs = params.backward_attrs(q_tile, kv_tile)
    dq, dk, dv, _ = call(dout.astype(q.dtype), q, k, v, out, lse, dlse, **attrs)
    return dq, dk, dv
