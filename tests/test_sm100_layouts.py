"""The sm100 kernels' shared-memory views, checked on the CPU (nvcc, no GPU).

The kernel (`cuda/sm100/kernel/bwd_kernel_ws.cuh`) reads several operands through a second
CuTe layout over bytes written through a first: dS as the MN-major A of dQ = dS K over the dS^T
tile the compute threads write, Q^T / dO^T / K^T as MN-major B operands over the K-major tiles
TMA fills. `cuda/sm100/tests/bwd_smem_views.cu` evaluates both layouts element by element on
the host; this test builds it with nvcc against the CUTLASS headers (`tests/nvcc_build.py`; the
test extra installs them) and expects no mismatch, and shared memory within one CTA's 227 KB;
`fwd_smem_views.cu` does the same for the forward's V (an MN-major view of the K-major tile),
16-bit and FP8. It skips, with the reason, without nvcc or the headers.
"""

from __future__ import annotations

from tests import nvcc_build

ROOT = nvcc_build.ROOT


def test_backward_smem_views_alias_the_tiles_they_read(tmp_path):
    src = ROOT / "cuda" / "sm100" / "tests" / "bwd_smem_views.cu"
    run = nvcc_build.run_host_program(tmp_path, src)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and len(lines) == 4, run.stdout + run.stderr
    for line in lines:
        words = line.split()
        assert int(words[-1]) == 0, line
        assert int(words[words.index("smem") + 1]) <= 227 * 1024, line


def test_forward_smem_views_alias_the_tiles_they_read(tmp_path):
    """The forward, 16-bit and FP8: V (MN-major B of P V) over the K-major tile TMA fills, the
    tile's chunks where the host's TMA boxes put them, P's 16-byte stores."""
    src = ROOT / "cuda" / "sm100" / "tests" / "fwd_smem_views.cu"
    run = nvcc_build.run_host_program(tmp_path, src)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and len(lines) == 5, run.stdout + run.stderr
    assert sum("e4m3" in line for line in lines) == 3, run.stdout
    for line in lines:
        words = line.split()
        assert int(words[-1]) == 0, line
        assert int(words[words.index("smem") + 1]) <= 227 * 1024, line
