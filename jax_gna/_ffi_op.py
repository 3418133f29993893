"""GNA's FFI custom calls as a JAX op: the op behind ``implementation="cpu"/"cuda"``.

`jax_gna._ffi_call` holds the bare custom calls; this module composes them with JAX's
mechanisms, outermost first:

1. ``jax.custom_vjp``: the forward saves ``(q, k, v, out, lse)``; the backward calls the
   backward op with cotangents for both ``out`` and ``lse``. The backward op is the FFI one on
   the CPU always, and on GPUs when the CUDA backward kernels can run the problem there
   (`_ffi_call.cuda_backward_reason`, asked per call at trace time); otherwise GPUs run the
   ``xla`` backward (`_attention_bwd`).
2. Explicit-mesh re-typing: custom calls type their results replicated, so results get the
   sharding of the input they belong to again (`_retype`); a no-op outside Explicit meshes.
3. ``jax.custom_batching.custom_vmap``: vmap moves the mapped axis to the front and calls the
   same op again; the handlers fold every leading dim into the batch.
4. ``custom_partitioning`` with a Shardy rule: batch and head dims may stay sharded, head dims
   (D, Dv) are replicated; `shardings` rebuilds every operand's sharding from q's spec
   (GQA-safe: the kv heads are split by the same mesh axes, or heads are replicated). A
   spatial dim sharded over several devices stays sharded when the halo fits in a shard: the
   partitioned lowering is the shard-local halo exchange and attention of `jax_gna._halo`
   (this op's kernels on each shard's view where they take it, else the ``xla`` tiles with
   per-device window tables; forward and backward); other spatial shardings are replicated
   (gathered).
5. The custom calls themselves (`jax_gna._ffi_call.forward` / `backward`).

Shape legend: ``B...`` batch dims, ``X...`` spatial dims, ``H`` query heads, ``Hkv`` key/value
heads, ``D`` query/key head dim, ``Dv`` value head dim.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_gna import _extension, _ffi_call, _xla
from jax_gna._halo.plan import AxisName, ShardPlan, plan_split, shard_shapes
from jax_gna._halo.shard import attend_shard, attend_shard_backward, ffi_on_views, shard_params
from jax_gna._mesh import explicit_mesh, mesh_platform, per_shard, result_sharding, shardings
from jax_gna._params import GnaParams

# ---------------------------------------------------------------------------------------------
# The xla backward, standing in on GPUs


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
    run = per_shard(backward, mesh, jax.typeof(q), params.rank, k.shape[-2], "tttttll", "ttt")
    return run(*args)


def _xla_backward_impl(params: GnaParams, dout, q, k, v, out, lse, dlse):
    return _xla.backward(q, k, v, out, lse, dout, dlse, params)


# ---------------------------------------------------------------------------------------------
# Layer 4: sharding


def _rule(rank: int, group: int, operands: str, results: str) -> str:
    """Shardy rule text for the layout letters in `operands` / `results` (``q``: query-headed
    tensor with dim d, ``o``: query-headed with dim e, ``k``/``v``: kv-headed with d / e, ``l``:
    query-headed without dim).

    With GQA the query heads are a factor ``h`` of their own rather than the compound ``(m g)``:
    a compound lets Shardy split ``m`` by a sub-axis (e.g. 4 devices over 2 kv heads), which
    JAX cannot express as a NamedSharding for `partition` and fails on. `partition` keeps the
    two consistent instead (`shardings`)."""
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


# A shard-local lowering of one op: (params, shard plan, sharded dim, mesh axes, the
# implementation each shard runs) -> the function of the op's operands that one device runs
# (`jax_gna._halo.shard`).
HaloLowering = Callable[[GnaParams, ShardPlan, int, AxisName, str], Callable]


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
    and the halo fits in a shard (`plan_split`): the lowering then exchanges K/V halos
    with the neighbours and attends locally (`halo(...)`), instead of gathering the axis: with
    the FFI kernel of the mesh's platform on each shard's view where it takes them (`ffi`: the
    op is the FFI one), else the ``xla`` tiles. Otherwise spatial dims are replicated (XLA
    gathers them before the call)."""
    op = custom_partitioning(impl)
    rank = params.rank

    def layoutshardings(mesh, arg_shapes):
        q_info = arg_shapes[anchor]
        tensor, lse = shardings(mesh, q_info, rank, arg_shapes[kv_anchor].shape[-2])
        lowering = impl
        split = None
        if halo is not None:
            spec = getattr(q_info.sharding, "spec", ())
            split = plan_split(mesh, spec, tuple(q_info.shape), params)
        if split is not None:
            entry, axis, plan = split
            dim = len(q_info.shape) - rank - 2 + axis
            tensor, lse = _with_spatial(tensor, dim, entry), _with_spatial(lse, dim, entry)
            kv_info = arg_shapes[kv_anchor : kv_anchor + 2]
            implementation = "xla"
            if ffi:
                shapes = shard_shapes(plan, dim, q_info, *kv_info)
                implementation = ffi_on_views(mesh_platform(mesh), *shapes, params, plan)
            per_shard_params = shard_params(implementation, q_info, *kv_info, params)
            lowering = halo(per_shard_params, plan, dim, entry, implementation)

        def pick(letters: str) -> tuple:
            return tuple(lse if c == "l" else tensor for c in letters)

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


def _halo_forward(params: GnaParams, plan, dim: int, axis_name, implementation: str) -> Callable:
    def run(q, k, v):
        return attend_shard(q, k, v, params, plan, dim, axis_name, implementation)

    return run


def _halo_backward(params: GnaParams, plan, dim: int, axis_name, implementation: str) -> Callable:
    def run(dout, q, k, v, out, lse, dlse):
        return attend_shard_backward(
            dout.astype(q.dtype),
            q,
            k,
            v,
            out,
            lse,
            dlse,
            params,
            plan,
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
    impl = functools.partial(_ffi_call.forward, params)
    return _folding_vmap(_partitioned(impl, params, group, "qkv", "ol", 0, 1, _halo_forward))


@functools.lru_cache(maxsize=256)
def _backward_op(params: GnaParams, group: int) -> Callable:
    impl = functools.partial(_ffi_call.backward, params)
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

    if _ffi_call.cuda_backward_reason(query, key, value, params) is None:
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
