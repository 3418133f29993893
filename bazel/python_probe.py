"""Prints where the Python-side build dependencies of jax_gna live, one `key=value` per line.

Run by the `local_python_deps` repository rule (bazel/python_deps.bzl) with the interpreter the
Bazel build uses. Keys with no value are not installed; the rule decides what that means.
"""

import importlib.util
import os
import sys
import sysconfig


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) if spec and spec.origin else ""


def _xla_ffi_include_dir() -> str:
    try:
        import jax.ffi
    except ImportError:
        return ""
    return jax.ffi.include_dir()


def main() -> None:
    cutlass = _package_dir("cutlass_library")
    found = {
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "python_include": sysconfig.get_paths()["include"],
        "xla_ffi_include": _xla_ffi_include_dir(),
        "nanobind": _package_dir("nanobind"),
        "cutlass_include": os.path.join(cutlass, "source", "include") if cutlass else "",
    }
    for key, value in found.items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main()
