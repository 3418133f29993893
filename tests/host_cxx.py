"""The host C++ compiler, for the tests that build small probes of the CUDA headers' plain C++
parts and of the CPU kernel (no nvcc, no GPU). They skip, with the reason, where no compiler is
found."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def build(exe: Path, sources: list[Path], flags: tuple[str, ...] = ("-O1",),
          libs: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """`sources` built into `exe` with the host compiler (C++17, `flags`), the repository root and
    cuda/include on the include path, then `libs`."""
    if CXX is None:
        pytest.skip("no host C++ compiler (g++/c++/clang++) found")
    include = ["-I", str(ROOT), "-I", str(ROOT / "cuda" / "include")]
    command = [CXX, "-std=c++17", *flags, *include, *map(str, sources), *libs, "-o", str(exe)]
    subprocess.run(command, check=True)
    return exe


def build_probe(tmp_path_factory, source: Path, flags: tuple[str, ...] = ("-O1",)) -> Path:
    """One probe source (a .cc file) built into a fresh temporary folder."""
    return build(tmp_path_factory.mktemp(source.stem) / source.stem, [source], flags)
