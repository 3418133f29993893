"""Shard-local attention of the halo algorithm: one device's part of a spatially split call.

Runs inside a manual-axes context: the body of `jax.shard_map` (`jax_gna.parallel`), or the
lowering a `custom_partitioning` rule returns (`jax_gna._ffi_op`, for spatially sharded calls
under jit on Auto meshes). A device exchanges its blocks with its neighbours
(`jax_gna._halo.exchange`), attends its queries with the *global* windows (windows shifting at
the global borders, stride and dilation groups across shard boundaries and causal axes all come
out exactly as on one device) and returns the rows its left neighbour computed for it.

The attention over a device's blocks is a *view* of the whole problem (`GnaParams.view`): the
FFI kernels run each device's call (`ShardPlan.calls`) where they take it, else the ``xla``
tiles run with the device's window table, or the dense masks (``"reference"``). FFI attributes
and slices are static and every device has its own, so the FFI call is a `jax.lax.switch` over
the device index with one branch per device. Gradients are exact: the transposes of the
exchanges send the halo's key/value gradients (and the query rows' gradients) back to their
owners.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jax_gna import _ffi_call, _xla, reference
from jax_gna._halo.exchange import (
    block_parts,
    call_parts,
    exchange_blocks,
    key_exchange,
    own_rows,
    own_rows_transpose,
    pad_rows,
    query_block,
    query_exchange,
    return_parts,
    slice_rows,
)
from jax_gna._halo.plan import AxisName, ShardPlan, views_refusal
from jax_gna._params import GnaParams


def _switch_calls(device, plan: ShardPlan, branch, empty):
    """``branch(call)`` of this device's FFI call (`ShardPlan.calls`): one `jax.lax.switch` branch
    per device (FFI attributes and slices are static), ``empty()`` for a device without
    queries."""
    branches = [
        (lambda c: lambda: branch(c))(call) if call is not None else empty for call in plan.calls
    ]
    return jax.lax.switch(device, branches)


# ---------------------------------------------------------------------------------------------
# Per-shard computation


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _shard_xla(query, key, value, device, params: GnaParams, plan: ShardPlan):
    table = tuple(jnp.asarray(t)[device] for t in plan.tables)
    return _xla.forward(query, key, value, params, plan.axis_plans, table)


def _shard_xla_fwd(query, key, value, device, params, plan):
    out, lse = _shard_xla(query, key, value, device, params, plan)
    return (out, lse), (query, key, value, device, out, lse)


def _shard_xla_bwd(params, plan, residuals, cotangents):
    query, key, value, device, out, lse = residuals
    dout, dlse = cotangents
    table = tuple(jnp.asarray(t)[device] for t in plan.tables)
    grads = _xla.backward(query, key, value, out, lse, dout, dlse, params, plan.axis_plans, table)
    return (*grads, None)


_shard_xla.defvjp(_shard_xla_fwd, _shard_xla_bwd)


def _shard_reference(query, key, value, device, params: GnaParams, plan: ShardPlan):
    """Dense masked softmax over the key block (O(query block x key block) memory)."""
    masks = []
    for a, m in enumerate(plan.masks):
        m = jnp.asarray(m)
        masks.append(m[device] if a == plan.axis else m[0])
    visible = _xla.tile_mask(masks)
    n_batch = query.ndim - params.rank - 2
    return reference.softmax_attention(query, [key], [value], params.scale, n_batch, visible)


def _shard_ffi(query, key, value, device, params: GnaParams, plan: ShardPlan):
    """``(out, lse)`` of the query block by the FFI kernel of the platform: the device's
    queries against its key slice, with its view. Rows it does not compute are 0, lse -inf."""
    dim = query.ndim - params.rank - 2 + plan.axis

    def empty():
        out = jnp.zeros(query.shape[:-1] + value.shape[-1:], query.dtype)
        return out, jnp.full(query.shape[:-1], -jnp.inf, jnp.float32)

    def branch(call):
        queries, keys, view = call
        out, lse = _ffi_call.forward(
            dataclasses.replace(params, view=view),
            slice_rows(query, dim, queries),
            slice_rows(key, dim, keys),
            slice_rows(value, dim, keys),
        )
        n = plan.query_block_length
        return pad_rows(out, dim, queries, n), pad_rows(lse, dim, queries, n, -jnp.inf)

    return _switch_calls(device, plan, branch, empty)


def _shard_backward(dout, query, key, value, out, lse, dlse, device, params, plan, backward):
    """The gradients of a query block over its key block, as `block_parts` of the query block
    (`query_exchange`) and of the key and value blocks (`key_exchange`): the FFI backward of the
    device's call (`backward` ``"ffi"``), or the ``xla`` backward with the device's window
    table. Rows the device does not compute must have zero cotangents.

    The FFI branches cut the parts straight from the call's results: a `jax.lax.switch`
    branch's results are materialized, so whole blocks would cost a pass each to build and
    another to cut (docs/history.md, "Context parallelism")."""
    dim = query.ndim - params.rank - 2 + plan.axis
    queries_exchange = query_exchange(plan, dim, None)
    keys_exchange = key_exchange(plan, dim, None)
    if backward == "ffi":

        def empty():
            return (
                block_parts(queries_exchange, jnp.zeros_like(query)),
                block_parts(keys_exchange, jnp.zeros_like(key)),
                block_parts(keys_exchange, jnp.zeros_like(value)),
            )

        def branch(call):
            queries, keys, view = call
            dq, dk, dv = _ffi_call.backward(
                dataclasses.replace(params, view=view),
                slice_rows(dout, dim, queries).astype(query.dtype),
                slice_rows(query, dim, queries),
                slice_rows(key, dim, keys),
                slice_rows(value, dim, keys),
                slice_rows(out, dim, queries),
                slice_rows(lse, dim, queries),
                slice_rows(dlse, dim, queries),
            )
            return (
                call_parts(queries_exchange, dq, queries, plan.query_block_length),
                call_parts(keys_exchange, dk, keys, plan.key_block_length),
                call_parts(keys_exchange, dv, keys, plan.key_block_length),
            )

        return _switch_calls(device, plan, branch, empty)
    # Rows the device does not compute get lse +inf: probability 0, so their (zero)
    # cotangents stay finite whatever their out/lse hold.
    h = plan.halo
    bounds = np.asarray([h.computed(p) for p in range(h.devices)]) - h.shard * np.arange(
        h.devices
    ).reshape(-1, 1)
    lo, hi = jnp.asarray(bounds)[device]
    row = jnp.arange(plan.query_block_length).reshape((-1,) + (1,) * (lse.ndim - dim - 1))
    lse = jnp.where((lo <= row) & (row < hi), lse, jnp.inf)
    table = tuple(jnp.asarray(t)[device] for t in plan.tables)
    plans = plan.axis_plans
    dq, dk, dv = _xla.backward(query, key, value, out, lse, dout, dlse, params, plans, table)
    return (
        block_parts(queries_exchange, dq),
        block_parts(keys_exchange, dk),
        block_parts(keys_exchange, dv),
    )


def _blocks_backward(dout, dlse, blocks, out, lse, params, plan, dim, axis_name, backward):
    """``(dq, dk, dv)`` of the shard from the cotangents of its query block's ``out``/``lse``:
    the backward over the key block (`_shard_backward`), then the halo rows of ``dk``/``dv``
    and the neighbour's rows of ``dq`` go back to their owners."""
    device = jax.lax.axis_index(axis_name)
    parts = _shard_backward(dout, *blocks, out, lse, dlse, device, params, plan, backward)
    exchanges = (query_exchange, key_exchange, key_exchange)
    return tuple(
        return_parts(ex(plan, dim, axis_name), *p) for ex, p in zip(exchanges, parts, strict=True)
    )


def _attend_ffi_fwd(query, key, value, params, plan, dim, axis_name, backward):
    blocks = exchange_blocks(query, key, value, plan, dim, axis_name)
    out, lse = _shard_ffi(*blocks, jax.lax.axis_index(axis_name), params, plan)
    return (out, lse), (blocks, out, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _attend_ffi(query, key, value, params, plan, dim, axis_name, backward):
    """``(out, lse)`` of the shard's query block by the FFI kernels: the exchanges, then the
    device's call (`_shard_ffi`). One custom VJP over both, so that the backward returns the
    halo gradients straight from the call's results (`_shard_backward`)."""
    return _attend_ffi_fwd(query, key, value, params, plan, dim, axis_name, backward)[0]


def _attend_ffi_bwd(params, plan, dim, axis_name, backward, residuals, cotangents):
    blocks, out, lse = residuals
    dout, dlse = cotangents
    dlse = dlse.astype(jnp.float32)
    return _blocks_backward(dout, dlse, blocks, out, lse, params, plan, dim, axis_name, backward)


_attend_ffi.defvjp(_attend_ffi_fwd, _attend_ffi_bwd)


def attend_shard(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    params: GnaParams,
    plan: ShardPlan,
    dim: int,
    axis_name: AxisName,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """``(out, lse)`` of one shard: receive the K/V halos (and the query rows it computes for
    its right neighbour) along mesh axis `axis_name`, attend its queries with the global
    windows, and return the neighbour's rows.

    Runs inside a manual-axes context (see the module docstring); `dim` is the sharded dim of
    the arrays. `implementation` is a resolved one (`jax_gna.parallel.shard_implementation`,
    `ffi_on_views`): ``"cpu"``/``"cuda"`` run the FFI kernels on the device's call
    (`ShardPlan.calls`). Differentiable (the transposes of the exchanges return halo gradients
    to their owners).
    """
    if implementation in _ffi_call.PLATFORM:
        ffi = _ffi_backward_runs(implementation, query, key, value, params, plan)
        backward = "ffi" if ffi else "xla"
        out, lse = _attend_ffi(query, key, value, params, plan, dim, axis_name, backward)
    else:
        device = jax.lax.axis_index(axis_name)
        attend = _shard_xla if implementation == "xla" else _shard_reference
        blocks = exchange_blocks(query, key, value, plan, dim, axis_name)
        out, lse = attend(*blocks, device, params, plan)
    return own_rows(out, plan, dim, axis_name), own_rows(lse, plan, dim, axis_name)


def attend_shard_backward(
    dout: jax.Array,
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    dlse: jax.Array,
    params: GnaParams,
    plan: ShardPlan,
    dim: int,
    axis_name: AxisName,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(dq, dk, dv)`` of one shard given the forward's ``out``/``lse`` (no recomputation):
    the exchanges of `attend_shard` again (the query block's ``out``/``lse`` too), the backward
    over the key block (the FFI kernel on the device's call where `implementation` is
    ``"cpu"``/``"cuda"`` and it runs, else ``xla``), then the halo rows of ``dk``/``dv`` and
    the neighbour's rows of ``dq`` go back to their owners."""
    blocks = exchange_blocks(query, key, value, plan, dim, axis_name)
    out, lse = (query_block(x, plan, dim, axis_name) for x in (out, lse))
    # Cotangents of the rows this device computes (0 elsewhere).
    dout, dlse = (own_rows_transpose(c, plan, dim, axis_name) for c in (dout, dlse))
    ffi = implementation in _ffi_call.PLATFORM and _ffi_backward_runs(
        implementation, *blocks, params, plan
    )
    backward = "ffi" if ffi else "xla"
    return _blocks_backward(dout, dlse, blocks, out, lse, params, plan, dim, axis_name, backward)


def _ffi_backward_runs(implementation, query, key, value, params: GnaParams, plan) -> bool:
    """Whether the FFI backward of `implementation` takes every device's call."""
    why_not = functools.partial(_ffi_call.backward_why_not, implementation)
    return views_refusal(why_not, query, key, value, params, plan) is None


def ffi_on_views(platform: str, query, key, value, params: GnaParams, plan: ShardPlan) -> str:
    """What the shards of a call to the FFI op run on `platform` (``"cpu"``, ``"gpu"``): the
    FFI kernels of the platform where they take every device's call, else ``"xla"``."""
    for implementation, home in _ffi_call.PLATFORM.items():
        if home != platform:
            continue
        why_not = functools.partial(_ffi_call.why_not, implementation)
        if views_refusal(why_not, query, key, value, params, plan) is None:
            return implementation
    return "xla"


def shard_params(implementation: str, query, key, value, params: GnaParams) -> GnaParams:
    """`params` for the shards' kernel calls: for ``"cuda"`` with the tile shapes one device
    would run the whole problem with (`jax_gna._ffi_call.cuda_tiles`; shapes of the whole
    arrays), so that the shards and one device run the same kernel."""
    if implementation != "cuda" or params.has_tiles:
        return params
    return _ffi_call.cuda_tiles(query, key, value, params)
