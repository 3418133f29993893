"""Compiler launcher for the CUDA kernels: runs the compile, then reports `k/N` done with a time
estimate, so a long source build shows progress even where pip hides the build's output.

Usage (CMake's CUDA_COMPILER_LAUNCHER): compile_progress.py STATE_FILE TOTAL -- COMPILER ARGS...

The report goes to the terminal (/dev/tty) when there is one, since pip captures the build's
output unless run with -v; otherwise to stdout (build logs, CI). STATE_FILE counts finished
compiles and keeps each unit's compiler CPU seconds (what build-time estimates are made of); the
build removes it before the first one.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import subprocess
import sys
import time


def _update(state_file: str, unit: str | None) -> dict:
    """Adds one finished compile of `unit` with its CPU seconds (None: just notes the start)
    under a file lock; returns the state."""
    with open(state_file, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        state = json.loads(text) if text.strip() else {"start": time.time(), "done": 0}
        if unit is not None:
            state["done"] += 1
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            state.setdefault("cpu_seconds", {})[unit] = round(usage.ru_utime + usage.ru_stime, 1)
        f.seek(0)
        f.truncate()
        json.dump(state, f)
        return state


def _unit_name(args: list[str]) -> str:
    """`<family>/<unit>` of the compiled source, e.g. `sm90/fwd_kBF16_d128_r2_c0`."""
    sources = [a for a in args if a.endswith(".cu")]
    if not sources:
        return "?"
    family = os.path.basename(os.path.dirname(os.path.abspath(sources[-1])))
    return f"{family}/{os.path.splitext(os.path.basename(sources[-1]))[0]}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _report(line: str) -> None:
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(line + "\n")
        return
    except OSError:
        pass
    print(line, flush=True)


def main(argv: list[str]) -> int:
    state_file, total, sep, *command = argv
    if sep != "--" or not command:
        raise SystemExit("usage: compile_progress.py STATE_FILE TOTAL -- COMPILER ARGS...")
    _update(state_file, None)
    rc = subprocess.call(command)
    if rc != 0:
        return rc
    unit = _unit_name(command)
    state = _update(state_file, unit)
    done, total_n = state["done"], int(total)
    elapsed = time.time() - state["start"]
    left = elapsed / done * max(total_n - done, 0)
    _report(
        f"jax_gna: CUDA kernels {done}/{total_n} compiled ({unit}); "
        f"{_minutes(elapsed)} elapsed, about {_minutes(left)} left"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
