"""GNA as XLA FFI custom calls: the op composition behind ``implementation="cpu"/"cuda"``.

One target name per direction (``jax_gna_fwd``, ``jax_gna_bwd``) with a handler per platform;
XLA runs the handler of the platform the computation is compiled for, so everything here is
platform-neutral. The layers, outermost first (research/jax_ffi.md §4.3, §9.4):

1. ``jax.custom_vjp``: the forward saves ``(q, k, v, out, lse)``; the backward calls the
   backward op with cotangents for both ``out`` and ``lse``. The backward op is the FFI one on
   the CPU always, and on GPUs when the CUDA backward kernels can run the problem there
   (`cuda_backward_reason`, asked per call at trace time); otherwise GPUs run the ``xla``
   backward (`_attention_bwd`).
2. Explicit-mesh re-typing: custom calls type their results replicated, so results get the
   sharding of the input they belong to again (`_retype`); a no-op outside Explicit meshes.
3. ``jax.custom_batching.custom_vmap``: vmap moves the mapped axis to the front and calls the
   same op again; the handlers fold every leading dim into the batch.
4. ``custom_partitioning`` with a Shardy rule: batch and head dims may stay sharded, head dims
   (D, Dv) are replicated; `shardings` rebuilds every operand's sharding from q's spec
   (GQA-safe: the kv heads are split by the same mesh axes, or heads are replicated). A
   spatial dim sharded over several devices stays sharded when the halo fits in a shard: the
   partitioned lowering is `jax_gna.parallel`'s shard-local halo exchange + attention (this
   op's kernels on each shard's view where they take it, else the ``xla`` tiles with
   per-device window tables; forward and backward); other spatial shardings are replicated
   (gathered) as before.
5. ``jax.ffi.ffi_call``: attributes from `GnaParams.forward_attrs` / `backward_attrs` (the
   one place their dtypes are decided; the backward's include ``deterministic``) and the
   workspace as an extra uint8 result, dropped right away.

Shape legend: ``B...`` batch dims, ``X...`` spatial dims, ``H`` query heads, ``Hkv`` key/value
heads, ``D`` query/key head dim, ``Dv`` value head dim.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_gna import _extension, _symbolic, _xla, parallel, sim
from jax_gna._mesh import explicit_mesh, per_shard, result_sharding, shardings
from jax_gna._params import GnaParams

CPU_DTYPES = ("float32", "float16", "bfloat16")
CUDA_DTYPES = ("float16", "bfloat16")


# ---------------------------------------------------------------------------------------------
# Availability


def cuda_backward_available() -> bool:
    """Whether this build has CUDA backward kernels at all (sm_90a or sm_100a). Whether they
    run a given call is `cuda_backward_reason`'s answer; gradients of the calls they cannot run
    (and all gradients on GPUs of builds without them) are computed by the ``xla`` backward (see
    `_attention_bwd`). The CPU backward is always the FFI kernel."""
    return _extension.ext is not None and _extension.ext.cuda_has_backward()


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


def _workspace_bytes(bytes_of: Callable, query, key, value, params: GnaParams):
    """The workspace of one call by the extension's helper `bytes_of`: linear in the batch and
    the heads (one block of row statistics and dQ accumulators per batch entry and query head),
    so with symbolic ones it is the stand-ins' size times the dims they stand for."""
    n_batch = query.ndim - params.rank - 2
    factor = _symbolic.stand_ins(query, key, value, n_batch)[3]
    return bytes_of(*_problem_args(query, key, value, params), view=params.view_list()) * factor


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

    Covers the extension (built? with CUDA kernels?), dtype, and for CUDA the device's compute
    capability and what the kernels support (head dim, requested tile shapes, ...), as the C++
    launcher decides it. The caller checks the platform the call runs on.
    """
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
    if dtype not in CUDA_DTYPES:
        return f"the CUDA kernels support dtypes {CUDA_DTYPES}, got {dtype}"
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
    n_batch = query.ndim - params.rank - 2
    problem = sim.Problem(
        tuple(query.shape[n_batch : n_batch + params.rank]),
        params.kernel_size,
        params.stride,
        params.dilation,
        params.is_causal,
    )
    try:
        candidates = sim.tile_candidates(problem, query.shape[-1], query.dtype)
    except NotImplementedError:  # not in the Python table: let the launcher use its default
        return params
    for candidate in candidates:
        if _cuda_can_implement(query, key, value, params, candidate.tiles) is None:
            tiles = candidate.tiles
            return dataclasses.replace(params, q_tile_shape=tiles.q, kv_tile_shape=tiles.kv)
    return params


# ---------------------------------------------------------------------------------------------
# Layer 5: the custom calls


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


def _ffi_forward(params: GnaParams, q, k, v):
    ext = _extension.ext
    if ext is None:
        raise NotImplementedError(_extension.missing)
    workspace = _workspace_bytes(ext.fwd_workspace_bytes, q, k, v, params)
    results = (
        _result(q, q.shape[:-1] + v.shape[-1:], q.dtype),  # out
        _result(q, q.shape[:-1], jnp.float32),  # lse
        _result(q, (workspace,), jnp.uint8),
    )
    call = jax.ffi.ffi_call(_extension.FWD_TARGET, results, vmap_method="broadcast_all")
    out, lse, _ = call(q, k, v, **params.forward_attrs())
    return out, lse


def _ffi_backward(params: GnaParams, dout, q, k, v, out, lse, dlse):
    ext = _extension.ext
    if ext is None:
        raise NotImplementedError(_extension.missing)
    workspace = _workspace_bytes(ext.bwd_workspace_bytes, q, k, v, params)
    results = (
        _result(q, q.shape, q.dtype),
        _result(q, k.shape, k.dtype),
        _result(q, v.shape, v.dtype),
        _result(q, (workspace,), jnp.uint8),
    )
    call = jax.ffi.ffi_call(_extension.BWD_TARGET, results, vmap_method="broadcast_all")
    dq, dk, dv, _ = call(dout.astype(q.dtype), q, k, v, out, lse, dlse, **params.backward_attrs())
    return dq, dk, dv


def _xla_backward(params: GnaParams, dout, q, k, v, out, lse, dlse):
    """The ``xla`` backward, standing in on GPUs for CUDA backward kernels that cannot run the
    call (or that this build does not have).

    In an Explicit mesh it runs per shard over batch and heads (shard_map with the same specs
    the custom calls use), since its reshapes cannot re-type sharded dims."""

    args = (dout, q, k, v, out, lse, dlse)
    mesh = explicit_mesh(q)
    if mesh is None:
        # Partitioned like the FFI backward: per batch/head shard, halo path for a sharded
        # spatial dim (else XLA would partition the tile loops itself, gathering the axis).
        return _xla_backward_op(params, _group(q, k))(*args)
    backward = functools.partial(_xla_backward_impl, params)
    run = per_shard(backward, mesh, jax.typeof(q), params.rank, k.shape[-2], "tttttrr", "ttt")
    return run(*args)


def _xla_backward_impl(params: GnaParams, dout, q, k, v, out, lse, dlse):
    return _xla._backward(q, k, v, out, lse, dout, dlse, params)


# ---------------------------------------------------------------------------------------------
# Layer 4: sharding


def _rule(rank: int, group: int, operands: str, results: str) -> str:
    """Shardy rule text for the layout letters in `operands` / `results` (``q``: query-headed
    tensor with dim d, ``o``: query-headed with dim e, ``k``/``v``: kv-headed with d / e, ``l``:
    query-headed without dim).

    With GQA the query heads are a factor ``h`` of their own rather than the compound ``(m g)``:
    a compound lets Shardy split ``m`` by a sub-axis (e.g. 4 devices over 2 kv heads), which
    JAX cannot express as a NamedSharding for `partition` and fails on. `partition` keeps the
    two consistent instead (`_shardings`)."""
    spatial = " ".join(f"x{a}" for a in range(rank))
    q_heads = "h" if group > 1 else "m"
    layouts = {
        "q": f"... {spatial} {q_heads} d",
        "o": f"... {spatial} {q_heads} e",
        "k": f"... {spatial} m d",
        "v": f"... {spatial} m e",
        "l": f"... {spatial} {q_heads}",
    }
    lhs = ", ".join(layouts[c] for c in operands)
    rhs = ", ".join(layouts[c] for c in results)
    return f"{lhs} -> {rhs}"


def _factors(rule: str) -> list[str]:
    return rule.replace("(", " ").replace(")", " ").replace(",", " ").replace("->", " ").split()


# A shard-local lowering of one op: (params, local problem, sharded dim, mesh axes, the
# implementation each shard runs) -> the function of the op's operands that one device runs
# (`jax_gna.parallel`'s halo algorithm).
HaloLowering = Callable[[GnaParams, "parallel._Local", int, "parallel.AxisName", str], Callable]


def _with_spatial(sharding: NamedSharding, dim: int, entry) -> NamedSharding:
    spec = list(sharding.spec)
    spec[dim] = entry
    return NamedSharding(sharding.mesh, P(*spec))


def _partitioned(
    impl: Callable,
    params: GnaParams,
    group: int,
    operands: str,
    results: str,
    anchor: int,
    kv_anchor: int,
    halo: HaloLowering | None = None,
    ffi: bool = True,
) -> Callable:
    """`impl` under custom_partitioning: sharded over batch and heads, never gathered there.

    `operands`/`results` are layout letters (see `_rule`); `anchor` is the index of the query
    operand whose spec decides every sharding, `kv_anchor` that of an operand with kv heads.

    A spatial dim of the query sharded over several devices stays sharded when `halo` is given
    and the halo fits in a shard (`parallel.plan_split`): the lowering then exchanges K/V halos
    with the neighbours and attends locally (`halo(...)`), instead of gathering the axis: with
    the FFI kernel of the mesh's platform on each shard's view where it takes them (`ffi`: the
    op is the FFI one), else the ``xla`` tiles. Otherwise spatial dims are replicated (XLA
    gathers them before the call)."""
    op = custom_partitioning(impl)
    rank = params.rank

    def layoutshardings(mesh, arg_shapes):
        q_info = arg_shapes[anchor]
        tensor, rows = shardings(mesh, q_info, rank, arg_shapes[kv_anchor].shape[-2])
        lowering = impl
        split = None
        if halo is not None:
            spec = getattr(q_info.sharding, "spec", ())
            split = parallel.plan_split(mesh, spec, tuple(q_info.shape), params)
        if split is not None:
            entry, axis, local = split
            dim = len(q_info.shape) - rank - 2 + axis
            tensor, rows = _with_spatial(tensor, dim, entry), _with_spatial(rows, dim, entry)
            implementation = "xla"
            if ffi:
                shapes = parallel._shard_shapes(
                    local, dim, q_info, arg_shapes[kv_anchor], arg_shapes[kv_anchor + 1]
                )
                implementation = parallel.shard_implementation(
                    None, parallel.platform_of(mesh), *shapes, params, local
                )
            anchors = (q_info, arg_shapes[kv_anchor], arg_shapes[kv_anchor + 1])
            shard_params = parallel.shard_params(implementation, *anchors, params)
            lowering = halo(shard_params, local, dim, entry, implementation)

        def pick(letters: str) -> tuple:
            return tuple(rows if c == "l" else tensor for c in letters)

        return pick, lowering

    def infer(mesh, arg_shapes, result_shape):
        return layoutshardings(mesh, arg_shapes)[0](results)

    def partition(mesh, arg_shapes, result_shape):
        pick, lowering = layoutshardings(mesh, arg_shapes)
        return mesh, lowering, pick(results), pick(operands)

    rule = _rule(rank, group, operands, results)
    # Spatial factors may stay sharded only where `partition` can take the halo path; it
    # replicates them itself otherwise (the returned operand shardings make XLA gather).
    replicated = {"d", "e"} | (set() if halo else {f"x{a}" for a in range(rank)})
    op.def_partition(
        partition=partition,
        infer_sharding_from_operands=infer,
        sharding_rule=rule,
        # Shardy wants these in the order the factors first appear in the rule.
        need_replication_factors=tuple(dict.fromkeys(f for f in _factors(rule) if f in replicated)),
    )
    return op


def _halo_forward(params: GnaParams, local, dim: int, axis_name, implementation: str) -> Callable:
    def run(q, k, v):
        return parallel.attend_shard(q, k, v, params, local, dim, axis_name, implementation)

    return run


def _halo_backward(params: GnaParams, local, dim: int, axis_name, implementation: str) -> Callable:
    def run(dout, q, k, v, out, lse, dlse):
        return parallel.attend_shard_backward(
            dout.astype(q.dtype),
            q,
            k,
            v,
            out,
            lse,
            dlse,
            params,
            local,
            dim,
            axis_name,
            implementation,
        )

    return run


# ---------------------------------------------------------------------------------------------
# Layer 3: batching


def _folding_vmap(op: Callable) -> Callable:
    """`op` with a vmap rule that moves the mapped axis into the (folded) batch dims."""
    batched_op = custom_vmap(op)

    @batched_op.def_vmap
    def _rule(axis_size, in_batched, *args):
        args = [
            x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
            for x, batched in zip(args, in_batched)
        ]
        results = batched_op(*args)  # itself: nested vmaps fold one axis each
        return results, jax.tree.map(lambda _: True, results)

    return batched_op


@functools.lru_cache(maxsize=256)
def _forward_op(params: GnaParams, group: int) -> Callable:
    impl = functools.partial(_ffi_forward, params)
    return _folding_vmap(_partitioned(impl, params, group, "qkv", "ol", 0, 1, _halo_forward))


@functools.lru_cache(maxsize=256)
def _backward_op(params: GnaParams, group: int) -> Callable:
    impl = functools.partial(_ffi_backward, params)
    op = _partitioned(impl, params, group, "oqkvoll", "qkv", 1, 2, _halo_backward)
    return _folding_vmap(op)


@functools.lru_cache(maxsize=256)
def _xla_backward_op(params: GnaParams, group: int) -> Callable:
    # Jitted: custom_partitioning refuses a body with hoisted constants (the tile tables);
    # a jit call keeps them inside its own closed jaxpr.
    impl = jax.jit(functools.partial(_xla_backward_impl, params))
    op = _partitioned(impl, params, group, "oqkvoll", "qkv", 1, 2, _halo_backward, ffi=False)
    return _folding_vmap(op)


# ---------------------------------------------------------------------------------------------
# Layers 1 and 2: differentiation and Explicit-mesh typing


def _retype(y: jax.Array, like: jax.Array, keep_last: bool) -> jax.Array:
    """In an Explicit mesh, give `y` the sharding of `like` (custom calls type their results
    replicated, which custom_vjp and the caller would see as a different type). Without
    `keep_last`, `y` is `like`'s layout without its last dim (lse)."""
    if explicit_mesh(like) is None:
        return y
    return jax.sharding.reshard(y, result_sharding(like, keep_last))


def _group(query, key) -> int:
    return query.shape[-2] // key.shape[-2]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(query, key, value, params: GnaParams):
    out, lse = _forward_op(params, _group(query, key))(query, key, value)
    return _retype(out, query, keep_last=True), _retype(lse, query, keep_last=False)


def _attention_fwd(query, key, value, params):
    out, lse = _attention(query, key, value, params)
    return (out, lse), (query, key, value, out, lse)


def _attention_bwd(params, residuals, cotangents):
    query, key, value, out, lse = residuals
    dout, dlse = cotangents
    args = (dout, query, key, value, out, lse, dlse.astype(jnp.float32))
    ffi_backward = _backward_op(params, _group(query, key))

    def typed(backward):
        def run(*args):
            dq, dk, dv = backward(*args)
            return (
                _retype(dq, query, keep_last=True),
                _retype(dk, key, keep_last=True),
                _retype(dv, value, keep_last=True),
            )

        return run

    if cuda_backward_reason(query, key, value, params) is None:
        return typed(ffi_backward)(*args)  # the CPU and the CUDA handler alike
    # The CUDA backward kernels cannot run this problem (or this build has none): on GPUs the
    # xla backward runs instead. platform_dependent keeps only the branch of the platform
    # being compiled for.
    return jax.lax.platform_dependent(
        *args,
        cpu=typed(ffi_backward),
        default=typed(functools.partial(_xla_backward, params)),
    )


_attention.defvjp(_attention_fwd, _attention_bwd)


def gna_ffi(query, key, value, params: GnaParams) -> tuple[jax.Array, jax.Array]:
    """``(out, lse)`` through the FFI custom calls.

    Args:
      query: ``[B..., X..., H, D]``, float32/float16/bfloat16 (CPU) or float16/bfloat16 (CUDA).
      key: ``[B..., X..., Hkv, D]``.
      value: ``[B..., X..., Hkv, Dv]``.
      params: validated parameters (`jax_gna._params.make_params`).

    Returns:
      ``out`` ``[B..., X..., H, Dv]`` in the query's dtype and ``lse`` ``[B..., X..., H]`` in
      float32. Differentiable in q, k, v with cotangents for both; works under jit, vmap, grad,
      jax.checkpoint and with batch- or head-sharded inputs (Auto and Explicit meshes); a
      sharded spatial dim exchanges K/V halos when they fit in a shard (`_partitioned`).

    Raises:
      NotImplementedError: without a built extension.
    """
    if _extension.ext is None:
        raise NotImplementedError(_extension.missing)
    return _attention(query, key, value, params)
