"""The CUDA kernels jax_gna compiles, in one table.

Every list of kernels derives from this module: the C++ tile tables and kernel sets
(`cuda/<family>/kernel_table.h`, `cuda/common/kernel_table.h`), the CMake and Bazel source lists
(`cuda/kernel_table.cmake`, `bazel/kernel_table.bzl`), the sm90 harness script
(`cuda/tests/build_sm90_harness.sh`) and Python's `jax_gna._tiles`. After an edit, run
``python cuda/generate_kernel_table.py``: the generated files are committed, and
tests/test_kernel_table.py fails while one is stale.

Plain data and the standard library only: the generator loads this file by its path, without
jax or the rest of the package.
"""

from __future__ import annotations

import dataclasses

# The dtypes every kernel family compiles, as NumPy names and as the C++ `gna::DType`.
DTYPES = {"float16": "kF16", "bfloat16": "kBF16"}

# FP8 forward kernels (float8_e4m3fn inputs with descales, bfloat16 output; sm90:
# cuda/sm90/kernel/fwd_fp8_kernel_ws.cuh, sm100: the 16-bit kernel's template), per arch the head
# dims that have them, in every tile configuration of the 16-bit forward of that head dim. Never
# in the smoke set.
FP8_DTYPES = {"float8_e4m3fn": "kE4M3"}
FP8_FORWARD = {"sm90": (64, 128, 256), "sm100": (64, 128)}


def cxx_dtype(dtype: str) -> str:
    """The C++ `gna::DType` of a kernel's dtype (NumPy name)."""
    return {**DTYPES, **FP8_DTYPES}[dtype]


# Forward tile configurations: (arch, {head dim: K/V pipeline stages}, Q tile, KV tile), one int
# per spatial axis in the problem's axis order (the rank is their length). Within one (arch,
# head dim, rank) the order is the configuration index; the first is the default (what a call
# without tile shapes runs when the simulator has no better one). Why these shapes:
# cuda/sm90/fwd_config.h and cuda/sm100/fwd_config.h.
FORWARD = (
    # sm90, head dims <= 128: three K/V stages.
    ("sm90", {32: 3, 64: 3, 128: 3}, (128,), (128,)),
    ("sm90", {32: 3, 64: 3, 128: 3}, (16, 8), (16, 8)),
    ("sm90", {32: 3, 64: 3, 128: 3}, (8, 16), (8, 16)),
    ("sm90", {32: 3, 64: 3, 128: 3}, (2, 8, 8), (2, 8, 8)),
    ("sm90", {32: 3, 64: 3, 128: 3}, (4, 4, 8), (4, 4, 8)),
    # sm90, head dim 256: 64-token KV tiles, two stages, one configuration per rank.
    ("sm90", {256: 2}, (128,), (64,)),
    ("sm90", {256: 2}, (16, 8), (8, 8)),
    ("sm90", {256: 2}, (2, 8, 8), (1, 8, 8)),
    # sm100: the sm90 shapes; stages fill the shared memory the head dim leaves.
    ("sm100", {32: 6, 64: 3, 128: 2}, (128,), (128,)),
    ("sm100", {32: 6, 64: 3, 128: 2}, (16, 8), (16, 8)),
    ("sm100", {32: 6, 64: 3, 128: 2}, (8, 16), (8, 16)),
    ("sm100", {32: 6, 64: 3, 128: 2}, (2, 8, 8), (2, 8, 8)),
    ("sm100", {32: 6, 64: 3, 128: 2}, (4, 4, 8), (4, 4, 8)),
)

# Backward tile configurations: (arch, {head dim: stages of the Q / dO ring}, Q tile, KV tile),
# ordered and chosen as the forward's (the first is the default). Why these shapes:
# cuda/<family>/bwd_config.h.
BACKWARD = (
    ("sm90", {32: 2, 64: 2, 128: 2}, (64,), (128,)),
    ("sm90", {32: 2, 64: 2, 128: 2}, (8, 8), (16, 8)),
    ("sm90", {32: 2, 64: 2, 128: 2}, (4, 16), (8, 16)),
    ("sm90", {32: 2, 64: 2, 128: 2}, (1, 8, 8), (2, 8, 8)),
    ("sm90", {32: 2, 64: 2, 128: 2}, (2, 4, 8), (4, 4, 8)),
    # sm90, head dim 256: 64-token KV tiles (the forward's), one Q / dO stage.
    ("sm90", {256: 1}, (64,), (64,)),
    ("sm90", {256: 1}, (8, 8), (8, 8)),
    ("sm90", {256: 1}, (1, 8, 8), (1, 8, 8)),
    ("sm100", {32: 3, 64: 2, 128: 1}, (128,), (128,)),
    ("sm100", {32: 3, 64: 2, 128: 1}, (16, 8), (16, 8)),
    ("sm100", {32: 3, 64: 2, 128: 1}, (2, 8, 8), (2, 8, 8)),
)

# JAX_GNA_KERNEL_SET=smoke, per arch: the kernels whose fields match every item. sm90: bf16 at
# head dim 128, every rank and configuration; sm100: one forward and one backward kernel (the
# rank only changes compile-time tile shapes).
SMOKE = {
    "sm90": {"dtype": "bfloat16", "head_dim": 128},
    "sm100": {"dtype": "bfloat16", "head_dim": 128, "rank": 3, "config": 0},
}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One compiled kernel: one generated translation unit."""

    arch: str  # the kernel family, "sm90" or "sm100"
    direction: str  # "fwd" or "bwd"
    dtype: str  # NumPy name: "float16", "bfloat16" or (FP8 forward) "float8_e4m3fn"
    head_dim: int
    rank: int
    config: int  # the index among (arch, direction, head dim, rank)'s tile configurations
    q: tuple[int, ...]  # Q tile, one int per spatial axis
    kv: tuple[int, ...]  # KV tile
    stages: int
    smoke: bool  # in JAX_GNA_KERNEL_SET=smoke

    @property
    def unit(self) -> str:
        """The name `jax_gna._extension.build_info()` reports, e.g. ``fwd_kBF16_d128_r3_c0``."""
        return (
            f"{self.direction}_{cxx_dtype(self.dtype)}_d{self.head_dim}_r{self.rank}_c{self.config}"
        )

    @property
    def file_stem(self) -> str:
        """Its translation unit's name, e.g. ``fwd_sm90_bf16_d128_r3_q2x8x8_kv2x8x8``."""
        short = {"float16": "f16", "bfloat16": "bf16", "float8_e4m3fn": "e4m3"}[self.dtype]
        q, kv = ("x".join(str(x) for x in t) for t in (self.q, self.kv))
        return f"{self.direction}_{self.arch}_{short}_d{self.head_dim}_r{self.rank}_q{q}_kv{kv}"


def _smoke(arch: str, **fields: object) -> bool:
    return all(fields.get(k, v) == v for k, v in SMOKE[arch].items())


def kernels() -> tuple[Kernel, ...]:
    """Every kernel of the full set, in build order: arch, dtype (the FP8 forward last), head
    dim, rank, then the forward's configurations before the backward's."""
    out = []
    for arch in SMOKE:
        head_dims = sorted({d for a, ds, *_ in FORWARD + BACKWARD if a == arch for d in ds})
        for dtype in DTYPES:
            for head_dim in head_dims:
                for rank in (1, 2, 3):
                    rows = [
                        (direction, config, row)
                        for direction, table in (("fwd", FORWARD), ("bwd", BACKWARD))
                        for config, row in enumerate(
                            r
                            for r in table
                            if r[0] == arch and head_dim in r[1] and len(r[2]) == rank
                        )
                    ]
                    for direction, config, (_, stages, q, kv) in rows:
                        fields = dict(dtype=dtype, head_dim=head_dim, rank=rank, config=config)
                        out.append(
                            Kernel(
                                arch=arch,
                                direction=direction,
                                dtype=dtype,
                                head_dim=head_dim,
                                rank=rank,
                                config=config,
                                q=q,
                                kv=kv,
                                stages=stages[head_dim],
                                smoke=_smoke(arch, **fields),
                            )
                        )
        out += _fp8_kernels(arch)
    return tuple(out)


def _fp8_kernels(arch: str) -> list[Kernel]:
    """The FP8 forward kernels of `arch`: the 16-bit forward's configurations of each of its
    FP8 head dims."""
    out = []
    for dtype in FP8_DTYPES:
        for head_dim in FP8_FORWARD.get(arch, ()):
            for rank in (1, 2, 3):
                rows = [
                    r for r in FORWARD if r[0] == arch and head_dim in r[1] and len(r[2]) == rank
                ]
                for config, (_, stages, q, kv) in enumerate(rows):
                    out.append(
                        Kernel(
                            arch,
                            "fwd",
                            dtype,
                            head_dim,
                            rank,
                            config,
                            q,
                            kv,
                            stages[head_dim],
                            smoke=False,
                        )
                    )
    return out
