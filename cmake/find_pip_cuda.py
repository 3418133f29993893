"""Prints the CUDA toolkit root of pip's NVIDIA compiler packages, or nothing if there is none.

CUDA 13's `nvidia-cuda-nvcc`, `nvidia-cuda-runtime`, `nvidia-cuda-crt`, `nvidia-nvvm` and
`nvidia-cuda-cccl` wheels install one toolkit tree, `<site-packages>/nvidia/cu13/` (`bin/nvcc`,
`include/`, `lib/libcudart_static.a`, `nvvm/`). Searched: the `nvidia` namespace package as this
interpreter imports it (the build environment), then this interpreter's own site-packages (with
pip's build isolation: the environment being installed into).
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig

CUDA_MAJOR = "13"


def candidate_dirs() -> list[str]:
    """Directories that may hold `cu13/bin/nvcc`, in search order."""
    dirs = []
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(spec.submodule_search_locations)
    for key in ("purelib", "platlib"):
        dirs.append(os.path.join(sysconfig.get_paths()[key], "nvidia"))
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def toolkit_root() -> str | None:
    """The first `nvidia/cu13` directory with an executable `bin/nvcc` and a static cudart."""
    for d in candidate_dirs():
        root = os.path.join(d, f"cu{CUDA_MAJOR}")
        nvcc = os.path.join(root, "bin", "nvcc")
        cudart = os.path.join(root, "lib", "libcudart_static.a")
        if os.access(nvcc, os.X_OK) and os.path.isfile(cudart):
            return root
    return None


if __name__ == "__main__":
    print(toolkit_root() or "")
