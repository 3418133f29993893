"""The source build's decisions, at the CMake level: which CUDA architectures get kernels
(cmake/CudaArchs.cmake, with a fake nvidia-smi), where pip's NVIDIA compiler packages are found
(cmake/find_pip_cuda.py, with a fake site-packages), the progress launcher of the kernel build
(cmake/compile_progress.py), and that a machine without a C++ compiler still configures (and so
installs the pure-Python package)."""

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")
needs_cmake = pytest.mark.skipif(CMAKE is None, reason="cmake is not on PATH")


def _executable(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _resolve_archs(tmp_path, requested: str, nvidia_smi: str | None):
    """Runs jax_gna_resolve_cuda_archs in CMake script mode with PATH holding only a fake
    nvidia-smi (the given shell script body) or nothing; returns (returncode, archs, output)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        _executable(bin_dir / "nvidia-smi", "#!/bin/sh\n" + nvidia_smi + "\n")
    driver = tmp_path / "resolve.cmake"
    driver.write_text(
        textwrap.dedent(f"""\
        cmake_minimum_required(VERSION 3.25)
        include("{ROOT}/cmake/CudaArchs.cmake")
        jax_gna_resolve_cuda_archs("{requested}" archs)
        message(NOTICE "ARCHS=[${{archs}}]")
        """)
    )
    result = subprocess.run(
        [CMAKE, "-P", str(driver)],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    archs = None
    for line in output.splitlines():
        if line.startswith("ARCHS=["):
            archs = line[len("ARCHS=[") : -1]
    return result.returncode, archs, output


@needs_cmake
@pytest.mark.parametrize(
    ("nvidia_smi", "expected"),
    [
        ("echo 9.0", "90a"),
        ("printf '9.0\\n9.0\\n'", "90a"),
        ("printf '10.0\\n9.0\\n'", "100a;90a"),
        ("echo 8.6", ""),  # an Ampere GPU: no kernels for it, so none are built
        ("printf '8.9\\n10.0\\n'", "100a"),
        ("echo 12.0", ""),  # sm_100a code does not run on 12.0
        ("echo 'NVIDIA-SMI has failed'; exit 9", "90a;100a"),  # no driver: none visible
        ("exit 0", "90a;100a"),  # no GPU listed
        (None, "90a;100a"),  # no nvidia-smi at all
    ],
    ids=[
        "h100",
        "two-h100",
        "b200-h100",
        "a100",
        "l40-b200",
        "rtx5090",
        "no-driver",
        "empty",
        "no-nvidia-smi",
    ],
)
def test_auto_archs_follow_the_visible_gpus(tmp_path, nvidia_smi, expected):
    rc, archs, output = _resolve_archs(tmp_path, "auto", nvidia_smi)
    assert rc == 0, output
    assert archs == expected, output


@needs_cmake
@pytest.mark.parametrize(
    ("requested", "expected"), [("all", "90a;100a"), ("90a", "90a"), ("100a;90a", "100a;90a")]
)
def test_explicit_archs_ignore_the_gpus(tmp_path, requested, expected):
    rc, archs, output = _resolve_archs(tmp_path, requested, "echo 8.6")
    assert rc == 0, output
    assert archs == expected, output


@needs_cmake
@pytest.mark.parametrize("requested", ["90", "sm_90a", "90a;80"])
def test_unknown_archs_are_refused_with_the_supported_ones(tmp_path, requested):
    rc, _, output = _resolve_archs(tmp_path, requested, None)
    assert rc != 0
    assert "JAX_GNA_CUDA_ARCHS" in output and "90a;100a" in output, output


def _find_pip_cuda(site: pathlib.Path) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "cmake" / "find_pip_cuda.py")],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def _fake_toolkit(site: pathlib.Path, *, nvcc: bool = True, cudart: bool = True) -> pathlib.Path:
    root = site / "nvidia" / "cu13"
    (root / "lib").mkdir(parents=True)
    if nvcc:
        _executable(root / "bin" / "nvcc", "#!/bin/sh\n")
    if cudart:
        (root / "lib" / "libcudart_static.a").write_bytes(b"")
    return root


def test_pip_cuda_toolkit_is_found_in_the_nvidia_namespace_package(tmp_path):
    root = _fake_toolkit(tmp_path / "site")
    assert _find_pip_cuda(tmp_path / "site") == str(root)


@pytest.mark.parametrize(
    "layout", [{"nvcc": False}, {"cudart": False}], ids=["no-nvcc", "no-static-cudart"]
)
def test_incomplete_pip_cuda_toolkit_is_ignored(tmp_path, layout):
    _fake_toolkit(tmp_path / "site", **layout)
    found = _find_pip_cuda(tmp_path / "site")
    assert not found.startswith(str(tmp_path)), found


def test_pip_cuda_toolkit_is_found_in_the_installing_environment(tmp_path):
    """With pip's build isolation the packages sit in the environment being installed into:
    the interpreter's own site-packages, not on its sys.path."""
    sys.path.insert(0, str(ROOT / "cmake"))
    try:
        import find_pip_cuda
    finally:
        sys.path.pop(0)
    import sysconfig

    assert (
        os.path.join(sysconfig.get_paths()["purelib"], "nvidia") in find_pip_cuda.candidate_dirs()
    )


def _progress(tmp_path, state, total, command):
    # A new session has no controlling terminal, so the report goes to stdout.
    return subprocess.run(
        [sys.executable, str(ROOT / "cmake" / "compile_progress.py"), str(state), str(total), "--"]
        + command,
        capture_output=True,
        text=True,
        start_new_session=True,
    )


def test_compile_progress_counts_finished_units(tmp_path):
    state = tmp_path / "progress.json"
    compile_ok = [sys.executable, "-c", "pass", "-c", "sm90/fwd_kBF16_d128_r2_c0.cu"]
    first = _progress(tmp_path, state, 3, compile_ok)
    second = _progress(tmp_path, state, 3, compile_ok)
    assert first.returncode == second.returncode == 0
    assert "CUDA kernels 1/3 compiled (sm90/fwd_kBF16_d128_r2_c0)" in first.stdout
    assert "CUDA kernels 2/3 compiled" in second.stdout and "left" in second.stdout
    state = json.loads(state.read_text())
    assert state["done"] == 2
    assert set(state["cpu_seconds"]) == {
        "sm90/fwd_kBF16_d128_r2_c0"
    }  # a unit's CPU time, for estimates


def test_compile_progress_passes_failures_through(tmp_path):
    state = tmp_path / "progress.json"
    failed = _progress(tmp_path, state, 3, [sys.executable, "-c", "raise SystemExit(7)"])
    assert failed.returncode == 7
    assert "compiled" not in failed.stdout
    assert json.loads(state.read_text())["done"] == 0


@needs_cmake
def test_project_configures_without_a_cxx_compiler(tmp_path):
    """No C++ compiler: configuration succeeds with a warning and nothing to install, so pip
    installs the pure-Python package."""
    env = {**os.environ, "CXX": "/nonexistent/c++", "CUDACXX": "/nonexistent/nvcc"}
    configure = subprocess.run(
        [
            CMAKE,
            "-S",
            str(ROOT),
            "-B",
            str(tmp_path / "build"),
            f"-DPython_EXECUTABLE={sys.executable}",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    output = configure.stdout + configure.stderr
    assert configure.returncode == 0, output
    assert "no C++ compiler found: installing without the compiled extension" in output
    install = subprocess.run(
        [CMAKE, "--install", str(tmp_path / "build"), "--prefix", str(tmp_path / "prefix")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert not list((tmp_path).glob("prefix/**/_ext*"))


@needs_cmake
def test_cuda_on_without_a_cxx_compiler_fails_clearly(tmp_path):
    env = {**os.environ, "CXX": "/nonexistent/c++"}
    configure = subprocess.run(
        [
            CMAKE,
            "-S",
            str(ROOT),
            "-B",
            str(tmp_path / "build"),
            "-DJAX_GNA_CUDA=ON",
            f"-DPython_EXECUTABLE={sys.executable}",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert configure.returncode != 0
    assert "JAX_GNA_CUDA=ON but no C++ compiler found" in configure.stdout + configure.stderr


@pytest.mark.parametrize("from_pip", [False, True])
def test_cuda_from_pip_adds_the_compiler_packages_to_the_build_requirements(from_pip):
    pytest.importorskip("scikit_build_core")
    env = {k: v for k, v in os.environ.items() if k != "JAX_GNA_CUDA_FROM_PIP"}
    if from_pip:
        env["JAX_GNA_CUDA_FROM_PIP"] = "1"
    result = subprocess.run(
        [sys.executable, "-c",
         "from scikit_build_core import build; print(build.get_requires_for_build_wheel())"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    requires = result.stdout
    for package in ("nvidia-cuda-nvcc", "nvidia-cuda-runtime", "nvidia-cuda-cccl"):
        assert (package in requires) == from_pip, requires
