"""The sm90 FP8 forward's V transpose, checked on the CPU (nvcc, no GPU).

FP8 wgmma reads V^T (head dim rows, tokens contiguous) with its tokens in the order of P's A
operand registers, and the kernel's producer threads build it from V as TMA lands it
(`cuda/sm90/kernel/fwd_fp8_kernel_ws.cuh`, transpose_v: ldmatrix.trans, byte permutes,
stmatrix). `cuda/sm90/tests/fp8_transpose.cu` runs its lane functions on the host over whole
tiles through the kernel's own shared-memory layouts, with the two matrix instructions emulated;
this test builds it with nvcc against the CUTLASS headers (`tests/nvcc_build.py`) and expects
every byte where the GEMM reads it (each stored once, nothing outside the stage), matrix
instructions of four wavefronts (no bank conflicts) and shared memory within one CTA's 227 KB,
for every FP8 kernel configuration. It skips, with the reason, without nvcc or the headers.
"""

from __future__ import annotations

from jax_gna import _kernel_table
from tests import nvcc_build

ROOT = nvcc_build.ROOT


def test_v_transpose_lands_where_the_fp8_gemm_reads(tmp_path):
    src = ROOT / "cuda" / "sm90" / "tests" / "fp8_transpose.cu"
    run = nvcc_build.run_host_program(tmp_path, src)
    lines = run.stdout.splitlines()
    fp8 = [
        k
        for k in _kernel_table.kernels()
        if k.arch == "sm90" and k.dtype in _kernel_table.FP8_DTYPES
    ]
    assert run.returncode == 0 and len(lines) == len(fp8), run.stdout + run.stderr
    for line in lines:
        words = line.split()
        field = {name: int(n) for name, n in zip(words[1::2], words[2::2])}
        assert field["mismatches"] == 0, line
        assert field["stray"] == 0, line
        assert field["load_wavefronts"] == 4, line
        assert field["store_wavefronts"] == 4, line
        assert field["smem"] <= 227 * 1024, line
