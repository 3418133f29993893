"""Runs pytest on test files of the repository against the Bazel-built jax_gna (a `py_test` main).

Usage (the py_test's args): [--expect-kernel-set=SET] [--expect-cuda-archs=A,B] TEST_FILE...

Before any test runs it makes sure that `jax_gna` and its extension are the ones in this test's
runfiles, and that the extension holds what the build was configured to build.
"""

from __future__ import annotations

import os
import sys


def _drop_other_jax_gna_finders() -> None:
    """Removes import hooks that claim `jax_gna`: a pip editable install of jax_gna in the same
    environment puts one in front of `sys.path`, which would shadow the Bazel-built package."""
    for finder in list(sys.meta_path):
        if isinstance(finder, type):  # the standard builtin, frozen and path finders
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is not None and find_spec("jax_gna", None) is not None:
            sys.meta_path.remove(finder)


def _check_build(kernel_set: str | None, cuda_archs: str | None) -> str | None:
    """The reason the imported jax_gna is not this build's, or None."""
    from jax_gna import _extension

    runfiles = os.path.abspath(os.environ.get("TEST_SRCDIR", os.getcwd()))
    ext = _extension.ext
    if ext is None:
        return f"the Bazel-built extension does not import: {_extension.missing}"
    if not os.path.abspath(ext.__file__).startswith(runfiles + os.sep):
        return f"jax_gna._ext comes from {ext.__file__}, not from this test's runfiles {runfiles}"
    info = _extension.build_info()
    if kernel_set is not None and info["kernel_set"] != kernel_set:
        return f"kernel set {info['kernel_set']!r}, expected {kernel_set!r}"
    expected_archs = tuple(a for a in (cuda_archs or "").split(",") if a)
    if cuda_archs is not None and info["cuda_archs"] != expected_archs:
        return f"CUDA archs {info['cuda_archs']}, expected {expected_archs}"
    print(f"jax_gna build under test: {info}")
    return None


def main(argv: list[str]) -> int:
    options = {"--expect-kernel-set": None, "--expect-cuda-archs": None}
    files = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in options:
            options[key] = value
        else:
            files.append(arg)
    _drop_other_jax_gna_finders()
    problem = _check_build(options["--expect-kernel-set"], options["--expect-cuda-archs"])
    if problem is not None:
        print(f"pytest_main: {problem}", file=sys.stderr)
        return 1

    import pytest

    return pytest.main(["-p", "no:cacheprovider", *files])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
