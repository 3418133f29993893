"""The kernels' supported tile shapes, listed in one place.

`SM90_FORWARD` is read from the kernel table (`jax_gna/_kernel_table.py`, where the kernels
gain or lose a configuration); everything else (the simulator's `jax_gna.sim.choose_tiles`, the
profiler's dry run) reads it from here.

A tile configuration is a Q tile shape and a KV tile shape, one entry per spatial axis of the
problem, in the problem's axis order (``(T, H, W)`` for 3-D). Tiles live in dilation-group
coordinates: with dilation, a ``(2, 8, 8)`` tile holds 2 x 8 x 8 tokens of one dilation group.
The Q tile's token count is the rows of the kernel's GEMM tile, the KV tile's its columns.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jax_gna import _kernel_table


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """One Q tile shape and one KV tile shape, each one int per spatial axis."""

    q: tuple[int, ...]
    kv: tuple[int, ...]

    def __post_init__(self):
        q, kv = tuple(int(x) for x in self.q), tuple(int(x) for x in self.kv)
        if len(q) != len(kv) or not q:
            raise ValueError(
                f"Q and KV tile shapes need one entry per spatial axis each, got q={q}, kv={kv}."
            )
        if any(x < 1 for x in q + kv):
            raise ValueError(f"Tile shapes must be positive, got q={q}, kv={kv}.")
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "kv", kv)

    @property
    def rank(self) -> int:
        return len(self.q)

    def __str__(self) -> str:
        return f"Q{_shape(self.q)}/KV{_shape(self.kv)}"


def _shape(t: tuple[int, ...]) -> str:
    return "(" + ",".join(str(x) for x in t) + ")"


def _table(arch: str, direction: str) -> dict[int, dict[int, tuple[TileConfig, ...]]]:
    """rank -> head dim -> the configurations of `arch`'s kernels of `direction` ("fwd" or
    "bwd") in the kernel table."""
    table: dict[int, dict[int, list[TileConfig]]] = {}
    first_dtype = next(iter(_kernel_table.DTYPES))  # every dtype has the same configurations
    for k in _kernel_table.kernels():
        if k.arch == arch and k.direction == direction and k.dtype == first_dtype:
            table.setdefault(k.rank, {}).setdefault(k.head_dim, []).append(TileConfig(k.q, k.kv))
    return {
        rank: {d: tuple(cfgs) for d, cfgs in sorted(by_dim.items())}
        for rank, by_dim in sorted(table.items())
    }


# Hopper (sm_90a) forward kernels, fp16 and bf16: rank -> head dim -> configurations, the
# compiled ones of the kernel table (`jax_gna/_kernel_table.py`, from which the build generates
# `cuda/sm90/kernel_table.h`'s `fwd_tile_table`) in the same order; the first is the kernel's
# default (what it runs when no tiles are requested), and the extension reports its own table
# (`jax_gna._extension.build_info()["cuda_forward_tiles"]`, checked by tests/test_tiles.py).
# `jax_gna.gna(implementation="cuda" or None)` runs the one with the best simulated bound for
# the call (`jax_gna.sim.tile_candidates`) unless tile shapes are given. Why these shapes:
# `cuda/sm90/fwd_config.h`.
SM90_FORWARD: dict[int, dict[int, tuple[TileConfig, ...]]] = _table("sm90", "fwd")
# The backward kernels' configurations, likewise (`bwd_tile_table`; why these shapes:
# `cuda/sm90/bwd_config.h`): the gradient of a CUDA call runs the one with the best simulated
# bound (`jax_gna._ffi_call.cuda_backward_tiles`), whatever tiles its forward ran.
SM90_BACKWARD: dict[int, dict[int, tuple[TileConfig, ...]]] = _table("sm90", "bwd")
SM90_DTYPES: tuple[str, ...] = tuple(_kernel_table.DTYPES)

_TABLES = {("sm90", "fwd"): SM90_FORWARD, ("sm90", "bwd"): SM90_BACKWARD}


def supported_tiles(
    rank: int, head_dim: int, dtype: object, arch: str = "sm90", direction: str = "fwd"
) -> tuple:
    """The tile configurations the ``arch`` kernels of ``direction`` implement for this call.

    Args:
      rank: number of spatial axes (1, 2 or 3).
      head_dim: the query/key head dim ``D``.
      dtype: the input dtype (anything `numpy.dtype` or JAX understands, e.g. ``"bfloat16"``).
      arch: the kernel family; only ``"sm90"`` (Hopper) is listed so far.
      direction: ``"fwd"`` (the forward kernels) or ``"bwd"`` (the backward kernels).

    Returns:
      A tuple of `TileConfig`, the kernel's default first.

    Raises:
      ValueError: for an unknown ``arch`` or ``direction``, or a rank outside 1..3.
      NotImplementedError: when the kernels have no configuration for this dtype or head dim.
    """
    if (arch, direction) not in _TABLES:
        archs = tuple(dict.fromkeys(a for a, _ in _TABLES))
        raise ValueError(
            f"Unknown `arch` {arch!r} or `direction` {direction!r}; expected an arch of {archs} "
            "and 'fwd' or 'bwd'."
        )
    table, dtypes = _TABLES[(arch, direction)], SM90_DTYPES
    if rank not in table:
        raise ValueError(f"GNA supports 1, 2 or 3 spatial axes, got rank={rank}.")
    name = dtype_name(dtype)
    if name not in dtypes:
        raise NotImplementedError(f"The {arch} kernels support dtypes {dtypes}, got dtype={name}.")
    if head_dim not in table[rank]:
        raise NotImplementedError(
            f"The {arch} kernels support head dims {tuple(table[rank])}, got head_dim={head_dim}."
        )
    return table[rank][head_dim]


def dtype_name(dtype: object) -> str:
    """Canonical name of a dtype given as a string, NumPy/JAX dtype or scalar type."""
    aliases = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "f32": "float32"}
    if isinstance(dtype, str) and dtype.lower() in aliases:
        return aliases[dtype.lower()]
    try:
        return np.dtype(dtype).name
    except TypeError:
        import jax.numpy as jnp  # bfloat16 is not a NumPy dtype name without ml_dtypes

        return jnp.dtype(dtype).name
