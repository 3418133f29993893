"""The sm90 forward kernel through its standalone harness (`cuda/tests/sm90_fwd_harness.cu`).

Builds the harness with nvcc (the full kernel set, or `JAX_GNA_KERNEL_SET=smoke`) and runs its
correctness sweep: random problems over ranks 1-3, head dims 32-256, fp16/bf16, odd extents,
stride, dilation, per-axis causal, GQA and batch 2 against a brute-force float64 CPU reference,
with NaN-poisoned outputs. Needs an H100/H200 (compute capability 9.0) and nvcc; run with
`pytest -m gpu tests/gpu/test_sm90_fwd.py`. `JAX_GNA_HARNESS_DIR` names a build folder to
reuse (objects rebuild only where `cuda/` changed) instead of a fresh temporary one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _compute_capability() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    out = subprocess.run(
        [smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True
    )
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout.strip() else None


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found: the sm90 harness is built from source")
    if _compute_capability() != "9.0":
        pytest.skip("needs a compute-capability-9.0 GPU (H100/H200)")
    # JAX_GNA_HARNESS_DIR: build (incrementally) there, e.g. to reuse objects between runs.
    prebuilt = os.environ.get("JAX_GNA_HARNESS_DIR")
    out = Path(prebuilt) if prebuilt else tmp_path_factory.mktemp("sm90")
    kernel_set = os.environ.get("JAX_GNA_KERNEL_SET", "full")
    env = dict(os.environ, JOBS=str(max(1, min(8, os.cpu_count() or 1))))
    subprocess.run(
        [str(ROOT / "cuda" / "tests" / "build_sm90_harness.sh"), str(out), kernel_set],
        check=True,
        env=env,
    )
    return out / "sm90_fwd_harness"


def test_forward_matches_brute_force_reference(harness):
    n_random = os.environ.get("GNA_SM90_CHECK_CASES", "200")
    run = subprocess.run([str(harness), "check", n_random], capture_output=True, text=True)
    print(run.stdout[-20000:])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "CHECK SUMMARY" in run.stdout
    assert " 0 failed" in run.stdout
