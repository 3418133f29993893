"""The sm100 kernels' shared-memory views, checked on the CPU (nvcc, no GPU).

The kernels read several operands through a second CuTe layout over bytes written through a
first. Backward (`cuda/sm100/kernel/bwd_kernel_ws.cuh`): dS as the MN-major A of dQ = dS K over
the dS^T tile the compute threads write, Q^T / dO^T / K^T as MN-major B operands over the
K-major tiles TMA fills. Forward (`cuda/sm100/kernel/fwd_kernel_ws.cuh`, 16-bit and FP8): V as
the MN-major B of P V over the K-major tile, whose chunks must lie where the host's TMA boxes put
them. `cuda/sm100/tests/smem_views.cu` evaluates both layouts element by element on the host;
this test builds it once with nvcc against the CUTLASS headers (`tests/nvcc_build.py`; the test
extra installs them) and expects no mismatch, and shared memory within one CTA's 227 KB. It
skips, with the reason, without nvcc or the headers.
"""

from __future__ import annotations

import pytest

from tests import nvcc_build

ROOT = nvcc_build.ROOT


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> list[str]:
    """The program's lines (one per kernel); it must have exited 0."""
    src = ROOT / "cuda" / "sm100" / "tests" / "smem_views.cu"
    run = nvcc_build.run_host_program(tmp_path_factory.mktemp("smem_views"), src)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.splitlines()


def _check(lines: list[str], count: int) -> None:
    assert len(lines) == count, lines
    for line in lines:
        words = line.split()
        assert int(words[-1]) == 0, line
        assert int(words[words.index("smem") + 1]) <= 227 * 1024, line


def test_backward_smem_views_alias_the_tiles_they_read(views):
    _check([line for line in views if line.startswith("bwd ")], 4)


def test_forward_smem_views_alias_the_tiles_they_read(views):
    """16-bit and FP8: V (MN-major B of P V) over the K-major tile TMA fills, the tile's chunks
    where the host's TMA boxes put them, P's 16-byte stores."""
    lines = [line for line in views if line.startswith("fwd ")]
    _check(lines, 5)
    assert sum("e4m3" in line for line in lines) == 3, lines
