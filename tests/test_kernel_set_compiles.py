"""The full kernel set's front end compiles, beyond the smoke set that CI builds.

Per (architecture, direction), the smallest head dim outside the smoke set, and the largest when
it exceeds the smoke set's, are compiled to PTX without optimisation: the smallest takes the
64-byte swizzle and chunking path (head dim 32), the largest the tightest shared-memory and
register budgets (d256 on sm90). The FP8 forward kernels, which no CI build compiles, are
compiled too, one per head dim (rank 3, first configuration: the rank and configuration only
change compile-time tile shapes). The kernels' static checks (budgets, layout checks evaluated
at compile time) run in the compiler's front end, so a full-set kernel that cannot compile
fails here in seconds instead of in a user's hour-long source build. Skips without nvcc or the
CUTLASS headers.
"""

import sys
from pathlib import Path

import pytest

from jax_gna import _kernel_table
from tests import nvcc_build

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cuda"))
import generate_kernel_table  # noqa: E402


def _extremes():
    table = [k for k in _kernel_table.kernels() if k.dtype == "float16" and k.rank == 3]
    smoke = {(k.arch, k.direction, k.head_dim) for k in _kernel_table.kernels() if k.smoke}
    out = []
    for arch, direction in sorted({(k.arch, k.direction) for k in table}):
        rows = [
            k
            for k in table
            if (k.arch, k.direction) == (arch, direction)
            and (arch, direction, k.head_dim) not in smoke
            and k.config == 0
        ]
        dims = sorted({k.head_dim for k in rows})
        built = [d for a, di, d in smoke if (a, di) == (arch, direction)]
        wanted = {dims[0]} | ({dims[-1]} if dims[-1] > max(built, default=0) else set())
        out += [next(k for k in rows if k.head_dim == d) for d in sorted(wanted)]
    return sorted(out, key=lambda k: k.file_stem)


def _fp8():
    return [
        k
        for k in _kernel_table.kernels()
        if k.dtype in _kernel_table.FP8_DTYPES and k.rank == 3 and k.config == 0
    ]


KERNELS = _extremes() + _fp8()


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.file_stem)
def test_kernel_front_end_compiles(tmp_path, kernel):
    # The macros the build's generated translation unit sets.
    defines = dict(d.split("=") for d in generate_kernel_table.defines(kernel))
    # -O0 for the device compiler: the front end's checks run the same, and optimisation would
    # take minutes per kernel.
    ptx = nvcc_build.kernel_ptx(
        tmp_path, kernel.arch, kernel.direction, defines, extra=("-Xcicc", "-O0")
    )
    # Without their knobs, the forward's trace compiles to nothing (no clock reads, no printf).
    assert "%clock64" not in ptx and "vprintf" not in ptx


# A Hopper forward of each kind (16-bit, FP8): the development knobs' code compiles.
KNOBBED = [
    k
    for k in _kernel_table.kernels()
    if k.arch == "sm90" and k.direction == "fwd" and k.rank == 3 and k.config == 0
    and k.head_dim == 128 and k.dtype in ("bfloat16", *_kernel_table.FP8_DTYPES)
]  # fmt: skip


@pytest.mark.parametrize("kernel", KNOBBED, ids=lambda k: k.file_stem)
def test_forward_development_knobs_compile(tmp_path, kernel):
    """Softmax turns (GNA_SM90_FWD_TURNS=2), the clock-stamp trace (GNA_SM90_FWD_TRACE,
    benchmarks/fwd_trace.py) and item boundaries overlapped (GNA_SM90_FWD_OVERLAP_ITEMS=1): code
    that only a performance experiment builds, kept compiling."""
    defines = dict(d.split("=") for d in generate_kernel_table.defines(kernel))
    defines |= {
        "GNA_SM90_FWD_TURNS": "2", "GNA_SM90_FWD_TRACE": "1", "GNA_SM90_FWD_OVERLAP_ITEMS": "1"
    }  # fmt: skip
    ptx = nvcc_build.kernel_ptx(
        tmp_path, kernel.arch, kernel.direction, defines, extra=("-Xcicc", "-O0")
    )
    assert "%clock64" in ptx and "vprintf" in ptx
