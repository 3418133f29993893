"""nvcc and the CUTLASS headers, for the tests that compile CUDA sources without a GPU.

Those tests skip, with the reason, where either is missing. The headers come from
``CUTLASS_INCLUDE_DIR`` (as for the build) or else from the ``nvidia-cutlass`` wheel, which
the ``test`` extra installs (the build installs it only into its own isolated environment).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")

# The kernels' compile flags (cmake/CudaKernels.cmake), and each family's architecture.
KERNEL_FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr"]
ARCH = {"sm90": "90a", "sm100": "100a"}


def cutlass_include() -> Path | None:
    """The CUTLASS/CuTe include folder, or None."""
    candidates = []
    if os.environ.get("CUTLASS_INCLUDE_DIR"):
        candidates.append(Path(os.environ["CUTLASS_INCLUDE_DIR"]))
    spec = importlib.util.find_spec("cutlass_library")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "source" / "include")
    return next((c for c in candidates if (c / "cutlass" / "cutlass.h").exists()), None)


def require_nvcc_and_cutlass() -> tuple[str, Path]:
    """nvcc and the CUTLASS include folder, or a skip naming what is missing."""
    include = cutlass_include()
    if NVCC is None:
        pytest.skip("needs nvcc on PATH")
    if include is None:
        pytest.skip(
            "needs the CUTLASS headers: pip install nvidia-cutlass==4.2.0.0 (the test extra) "
            "or set CUTLASS_INCLUDE_DIR"
        )
    return NVCC, include


def kernel_ptx(
    tmp_path: Path, family: str, direction: str, defines: dict, extra: tuple = ()
) -> str:
    """The PTX of one kernel TU, `cuda/<family>/<direction>_instance.cu` with `defines` (what
    the kernel's generated TU #defines), compiled with the build's flags for the family's
    architecture, plus `extra` flags."""
    nvcc, include = require_nvcc_and_cutlass()
    arch = ARCH[family]
    name = "_".join([family, direction, *map(str, defines.values()), *extra]).replace("=", "-")
    out = tmp_path / f"{name}.ptx"
    cmd = [nvcc, *KERNEL_FLAGS, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-ptx"]
    cmd += ["-I", str(ROOT / "cuda" / "include"), "-isystem", str(include)]
    cmd += [f"-D{k}={v}" for k, v in defines.items()] + list(extra)
    cmd += [str(ROOT / "cuda" / family / f"{direction}_instance.cu"), "-o", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stderr[-4000:]}"
    return out.read_text()


def run_host_program(tmp_path: Path, source: Path) -> subprocess.CompletedProcess:
    """`source` (a host program over the kernels' headers: includes from the repository root
    and cuda/include) built with nvcc against the CUTLASS headers and run; its output captured."""
    nvcc, include = require_nvcc_and_cutlass()
    exe = tmp_path / source.stem
    includes = ["-I", str(ROOT), "-I", str(ROOT / "cuda" / "include"), "-isystem", str(include)]
    subprocess.run(
        [nvcc, "-std=c++17", "-O1", "--expt-relaxed-constexpr", *includes, str(source)]
        + ["-o", str(exe)],
        check=True,
    )
    return subprocess.run([str(exe)], capture_output=True, text=True)
