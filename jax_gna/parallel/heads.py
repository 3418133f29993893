"""Context parallelism by exchanging heads (``gna_sharded(strategy="heads")``).

The other way to attend a spatially sharded axis (DeepSpeed-Ulysses' all-to-all): every device
sends each other device that device's share of its heads of its shard, so that it holds the
whole axis for ``H / n`` heads (`jax.lax.all_to_all`), runs the whole-axis kernel on them, and
sends the outputs back the same way. Heads are independent, so this is exact for any window;
the devices' work is equal whatever the stride groups (the halo exchange gives a device whole
stride groups, and 30 frames in groups of 16 split 16 + 14), and the kernels run whole axes,
not views. It moves far more than a halo: (n - 1) / n of q, k, v and out, and in the backward
of dout, dq, dk and dv, which pays where the halo split is uneven and the backward dominates
(README, "Multi-device"). The heads (query and kv) on a device must divide by ``n``.

Gradients come from JAX: the transpose of an all-to-all is the reverse all-to-all.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

from jax_gna._halo.plan import shard_length
from jax_gna._implementations import attend
from jax_gna._mesh import axis_size
from jax_gna._params import GnaParams
from jax_gna.parallel.split import pad_axis, run_sharded, specs


def check_heads(mesh, axis_name, tensor_spec: P, heads: int, kv_heads: int) -> None:
    """ValueError unless every device's query and kv heads (a head axis already sharded by
    `tensor_spec` keeps that) divide by the devices of `axis_name`: each device gets whole kv
    heads and their query heads."""
    devices = axis_size(mesh, axis_name)
    entry = tuple(tensor_spec)[-2]
    split = 1 if entry is None else axis_size(mesh, entry)
    per_device = heads // split, kv_heads // split
    if per_device[0] % devices or per_device[1] % devices:
        raise ValueError(
            f"strategy='heads' splits the heads over the {devices} devices of mesh axis "
            f"{axis_name!r}: the query heads ({per_device[0]}) and kv heads ({per_device[1]}) on "
            f"a device must both divide by {devices}. Use strategy='halo', or a head count that "
            "divides."
        )


def sharded_by_heads(
    query,
    key,
    value,
    params: GnaParams,
    extra_keys,
    extra_values,
    mesh,
    axis_name,
    spatial_axis: int,
    implementation: str | None,
    out_dtype,
):
    """``(out, lse)`` of validated inputs with `spatial_axis` split over `axis_name`, by the
    all-to-all of heads; `implementation` runs the whole axis on every device, ``out`` in
    `out_dtype`."""
    rank = params.rank
    n_batch = query.ndim - rank - 2
    dim = n_batch + spatial_axis
    length = query.shape[dim]
    devices = axis_size(mesh, axis_name)
    split_specs = specs(mesh, query, key.shape[-2], rank, spatial_axis, axis_name)
    check_heads(mesh, axis_name, split_specs[0], query.shape[-2], key.shape[-2])
    total = devices * shard_length(length, devices)

    def to_heads(x):  # [.., shard, .., heads, d] -> [.., total, .., heads / n, d]
        x = jax.lax.all_to_all(x, axis_name, x.ndim - 2, dim, tiled=True)
        return jax.lax.slice_in_dim(x, 0, length, axis=dim)

    def to_positions(x, head_axis):  # the inverse; padding rows are zero
        x = pad_axis(x, dim, total)
        return jax.lax.all_to_all(x, axis_name, dim, head_axis, tiled=True)

    def body(q, k, v, *extra_kv):
        q, k, v = to_heads(q), to_heads(k), to_heads(v)
        extra_keys = extra_values = None
        if extra_kv:  # replicated along axis_name: keep this device's kv heads
            n = k.shape[-2]
            start = jax.lax.axis_index(axis_name) * n
            extra_keys, extra_values = (
                jax.lax.dynamic_slice_in_dim(e, start, n, axis=-2) for e in extra_kv
            )
        out, lse = attend(q, k, v, params, extra_keys, extra_values, implementation, out_dtype)
        return to_positions(out, out.ndim - 2), to_positions(lse, lse.ndim - 1)

    args = (query, key, value, extra_keys, extra_values)
    return run_sharded(body, mesh, split_specs, dim, total, *args)
