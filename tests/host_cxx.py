"""The host C++ compiler, for the tests that build small probes of the CUDA headers' plain C++
parts (no nvcc, no GPU). They skip, with the reason, where no compiler is found."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def build(tmp_path_factory, source: Path, opt: str = "-O1") -> Path:
    """`source` (a .cc file) built with the host compiler, the repository root and
    cuda/include on the include path."""
    if CXX is None:
        pytest.skip("no host C++ compiler (g++/c++/clang++) found")
    exe = tmp_path_factory.mktemp("host_cxx") / source.stem
    subprocess.run(
        [CXX, "-std=c++17", opt, "-I", str(ROOT), "-I", str(ROOT / "cuda" / "include")]
        + [str(source), "-o", str(exe)],
        check=True,
    )
    return exe
