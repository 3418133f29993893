"""Every CUDA kernel entry point waits for the kernel before it (programmatic dependent launch).

Under the development knob GNA_PDL (cuda/common/dev_knobs.h) every kernel launches with
programmatic stream serialization: its CTAs may start while the previous kernel on the stream
still runs, so each entry point must wait (`enter_after_prior_grids`,
cuda/common/grid_dependency.cuh) before any global memory access. A new kernel without it would
read inputs that are not yet written; this reads the sources so that such a kernel fails here.
"""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Kernels launched by the library (the forward and backward kernels and the backward's passes);
# tests, harnesses and the trace printer (a development knob's own launch) are not.
SOURCES = [
    p
    for p in sorted((ROOT / "cuda").rglob("*.cu*"))
    if "tests" not in p.parts and p.name != "fwd_trace.cuh"
]


def _entry_bodies(text: str):
    """(name, first statement) of every __global__ function defined in `text`."""
    for m in re.finditer(r"__global__\s[^;{]*?\b(\w+)\s*\([^)]*\)\s*\{", text):
        body = text[m.end() :]
        lines = [
            line.strip()
            for line in body.splitlines()
            if line.strip() and not line.strip().startswith(("#", "//"))
        ]
        yield m.group(1), lines[0] if lines else ""


def test_every_kernel_entry_waits_for_the_previous_kernel_first():
    entries = [(p, name, first) for p in SOURCES for name, first in _entry_bodies(p.read_text())]
    names = {name for _, name, _ in entries}
    # The six entry points of today, so that the scan cannot silently find none.
    expected = {
        "gna_fwd_sm90_kernel", "gna_bwd_sm90_kernel", "gna_fwd_sm100_kernel",
        "gna_bwd_sm100_kernel", "bwd_row_stats_kernel", "bwd_dq_convert_kernel",
    }  # fmt: skip
    assert expected <= names, sorted(names)
    missing = [f"{p.relative_to(ROOT)}: {name}" for p, name, first in entries
               if not first.startswith("enter_after_prior_grids();")]  # fmt: skip
    assert not missing, "entry points that do not wait first: " + ", ".join(missing)


def test_the_scan_sees_a_kernel_without_the_wait():
    text = "template <class T>\n__global__ void __launch_bounds__(256) k(int p) {\n  x = 1;\n}\n"
    assert list(_entry_bodies(text)) == [("k", "x = 1;")]
