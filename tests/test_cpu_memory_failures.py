"""Host failures inside the CPU path end in a clean error, never in std::terminate.

- The FFI handlers under an address-space limit (RLIMIT_AS, in a subprocess): the fp32 copies of
  bf16 inputs cannot be allocated; the call must fail with RESOURCE_EXHAUSTED naming the
  target, and the process must go on (the same call runs once the limit is lifted). The
  extension's host helpers raise MemoryError the same way.
- The CPU kernel's threads (`cuda/tests/cpu_kernel_failures.cc`, built with the host compiler,
  which injects the failures): a worker thread that cannot start, and allocations that fail
  inside the tasks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jax_gna import _extension
from tests import host_cxx

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: compiles first, then limits the address space to what the
# process maps now plus a margin: enough for XLA's result buffers, not for the kernel's fp32
# copies (each twice a bf16 input).
_UNDER_LIMIT = textwrap.dedent(
    """
    import resource
    import numpy as np, jax, jax.numpy as jnp
    from jax_gna import _extension, _ffi_call
    from jax_gna._params import GnaParams

    def mapped():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    def under_limit(margin, fn):
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (mapped() + margin, hard))
        try:
            return fn()
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    params = GnaParams((3,), (1,), (1,), (False,), 0.5)
    x = jnp.ones((1, 2**20, 1, 32), jnp.bfloat16)  # 64 MiB each
    lse = jnp.zeros(x.shape[:-1], jnp.float32)
    fwd = jax.jit(lambda q, k, v: _ffi_call.forward(params, q, k, v)).lower(x, x, x).compile()
    bwd = jax.jit(lambda *a: _ffi_call.backward(params, *a))
    bwd = bwd.lower(x, x, x, x, x, lse, lse).compile()
    # Room for the results (out and lse: 68 MiB; dq, dk, dv: 192 MiB), not for a copy (128 MiB).
    mib = 2**20
    print("fwd:", under_limit(100 * mib, lambda: jax.block_until_ready(fwd(x, x, x))))
    grads = lambda: jax.block_until_ready(bwd(x, x, x, x, x, lse, lse))
    print("bwd:", under_limit(250 * mib, grads))
    print("helper:", under_limit(100 * mib, lambda: _extension.ext.window(2**30 - 1, 1)))
    out, _ = jax.block_until_ready(fwd(x, x, x))  # the limit is lifted: the same call runs
    print("after:", float(out[0, 0, 0, 0]))
    """
)


@pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")
def test_handlers_out_of_host_memory_fail_cleanly():
    proc = subprocess.run(
        [sys.executable, "-c", _UNDER_LIMIT],
        cwd=ROOT,
        env=os.environ | {"JAX_PLATFORMS": "cpu"},  # the CPU handlers, also on a GPU machine
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stderr[-3000:]}"
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    for target in ("fwd", "bwd"):
        assert "RESOURCE_EXHAUSTED" in lines[target], lines[target]
        assert f"jax_gna_{target}: out of host memory" in lines[target], lines[target]
    assert lines["helper"].startswith("MemoryError"), lines["helper"]
    assert lines["after"] == "1.0"


@pytest.fixture(scope="module")
def failure_program(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("cpu_kernel_failures") / "cpu_kernel_failures"
    sources = [
        ROOT / "cuda" / "cpu" / "attention.cc",
        ROOT / "cuda" / "tests" / "cpu_kernel_failures.cc",
    ]
    return host_cxx.build(exe, sources, flags=("-O2", "-pthread"), libs=("-ldl",))


@pytest.mark.parametrize("mode", ["thread", "task"])
def test_cpu_kernel_survives_thread_failures(failure_program, mode):
    proc = subprocess.run([str(failure_program), mode], capture_output=True, text=True, timeout=300)
    if proc.stdout.strip() == "skip":
        pytest.skip("one hardware thread: the kernel starts no thread")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (
        f"exit status {proc.returncode}: {proc.stdout} {proc.stderr}"
    )
