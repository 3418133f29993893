"""The sm100 backward kernel's shared-memory views, checked on the CPU (nvcc, no GPU).

The kernel (`cuda/sm100/kernel/bwd_kernel_ws.cuh`) reads several operands through a second
CuTe layout over bytes written through a first: dS as the MN-major A of dQ = dS K over the dS^T
tile the compute threads write, Q^T / dO^T / K^T as MN-major B operands over the K-major tiles
TMA fills. `cuda/sm100/tests/bwd_smem_views.cu` evaluates both layouts element by element on
the host; this test builds it with nvcc against the CUTLASS headers of the build (skips when
either is missing) and expects no mismatch, and shared memory within one CTA's 227 KB.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")


def _cutlass_include() -> Path | None:
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "source" / "include"
    return path if (path / "cutlass" / "cutlass.h").exists() else None


def test_backward_smem_views_alias_the_tiles_they_read(tmp_path):
    include = _cutlass_include()
    if NVCC is None or include is None:
        pytest.skip("needs nvcc and the CUTLASS headers (pip install nvidia-cutlass==4.2.0.0)")
    exe = tmp_path / "bwd_smem_views"
    src = ROOT / "cuda" / "sm100" / "tests" / "bwd_smem_views.cu"
    subprocess.run(
        [NVCC, "-std=c++17", "-O1", "--expt-relaxed-constexpr", "-I", str(ROOT)]
        + [
            "-I",
            str(ROOT / "cuda" / "include"),
            "-isystem",
            str(include),
            str(src),
            "-o",
            str(exe),
        ],
        check=True,
    )
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and len(lines) == 4, run.stdout + run.stderr
    for line in lines:
        words = line.split()
        assert int(words[-1]) == 0, line
        assert int(words[words.index("smem") + 1]) <= 227 * 1024, line
