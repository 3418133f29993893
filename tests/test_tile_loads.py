"""`cuda/common/tile_loads.h` (how the CUDA kernels load a token tile with TMA boxes) on the CPU.

`cuda/tests/tile_loads_cases.cc` emulates the TMA unit (per-dimension bounds, element
strides, zero fill, dense box order) over the tensor maps the header lays out, runs every box
the kernels would issue for random problems (every compiled tile shape; dilations up to 128,
past the element-stride limit of 8 and past one box per tile; odd extents; several batch
entries; short view arrays), and compares the shared-memory tile with the tokens it must hold,
computed from the definition (tile row (o0, o1, o2) of dilation group g holds array positions
g + d * (x + o) of its own batch entry, zeros past the array). It also checks the TMA limits
and that every box starts on a swizzle atom. Here: that program, plus the plans of the problems
whose speed matters (one box per tile wherever one box can hold the tile).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import host_cxx

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    source = ROOT / "cuda" / "tests" / "tile_loads_cases.cc"
    return host_cxx.build_probe(tmp_path_factory, source, flags=("-O2", "-Wall", "-Werror"))


@pytest.mark.parametrize("seed", [1, 2])
def test_emulated_boxes_land_exactly_the_tile(program, seed):
    run = subprocess.run([program, str(seed), "60"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("failures 0"), run.stdout


def _plan(program, tile, dilation, extent, batch=2) -> str:
    args = [str(x) for x in (*tile, *dilation, *extent, batch)]
    return subprocess.run([program, "plan", *args], capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize(
    ("tile", "dilation", "extent", "boxes"),
    [
        # Undilated and small dilations: one box per tile, as before dilation was generalised.
        ((1, 1, 128), (1, 1, 1), (1, 1, 32768), 1),
        ((1, 1, 128), (1, 1, 2), (1, 1, 32768), 1),
        ((1, 16, 8), (1, 4, 4), (1, 128, 128), 1),
        ((2, 8, 8), (1, 1, 1), (30, 48, 80), 1),
        ((2, 8, 8), (2, 2, 2), (21, 48, 80), 1),
        ((4, 4, 8), (1, 1, 1), (16, 44, 80), 1),
        # 1-D: any dilation by group (the axis split into group and position).
        ((1, 1, 128), (1, 1, 8), (1, 1, 32768), 1),
        ((1, 1, 128), (1, 1, 64), (1, 1, 32768), 1),
        ((1, 1, 64), (1, 1, 1000), (1, 1, 32769), 1),
        # Past the element-stride limit on one 2-D/3-D axis: split, or a box per frame.
        ((1, 16, 8), (1, 1, 16), (1, 256, 256), 1),
        ((2, 8, 8), (9, 1, 1), (30, 48, 80), 2),
        ((2, 8, 8), (1, 1, 9), (30, 48, 80), 2),
        # Two axes past it: one axis split, a box per row of the other.
        ((1, 8, 16), (1, 16, 16), (1, 256, 256), 8),
        ((1, 16, 8), (1, 16, 16), (1, 256, 256), 16),
    ],
)
def test_plans_keep_one_box_per_tile_where_they_can(program, tile, dilation, extent, boxes):
    plan = _plan(program, tile, dilation, extent)
    assert plan.startswith(f"boxes {boxes} "), plan
