"""The kernel table (`jax_gna/_kernel_table.py`) and everything derived from it agree.

- The generated files (C++ tables, CMake and Bazel lists) are not stale.
- `jax_gna._tiles` reports the table's forward configurations.
- The C++ constexpr tables, compiled by a host compiler, list the same tiles, head dims and
  kernel sets (full and smoke) as the table.
- The names the build reports (`build_info()["cuda_kernels"]`) parse, and the translation units'
  names are unique.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from jax_gna import _extension, _kernel_table, _tiles
from tests import host_cxx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cuda"))
import generate_kernel_table  # noqa: E402

KERNELS = _kernel_table.kernels()


def test_generated_files_are_current():
    stale = [
        str(p.relative_to(ROOT))
        for p, text in generate_kernel_table.outputs().items()
        if not p.exists() or p.read_text() != text
    ]
    assert not stale, f"stale: {stale}; run python cuda/generate_kernel_table.py"
    assert generate_kernel_table.main(["--check"]) == 0


def test_tiles_module_lists_the_table_s_sm90_forward():
    expected: dict = {}
    fp8: dict = {}
    for k in KERNELS:
        if k.arch == "sm90" and k.direction == "fwd":
            rows = fp8 if k.dtype in _kernel_table.FP8_DTYPES else expected
            rows.setdefault((k.dtype, k.rank, k.head_dim), []).append((k.q, k.kv))
    # The FP8 forward runs the 16-bit forward's configurations (jax_gna._ffi_call.cuda_tiles
    # picks its tiles as bfloat16's).
    assert fp8, "the table lists sm90 FP8 forward kernels"
    for (_, rank, head_dim), configs in fp8.items():
        assert configs == expected[("bfloat16", rank, head_dim)]
    for (dtype, rank, head_dim), configs in expected.items():
        got = _tiles.supported_tiles(rank, head_dim, dtype, arch="sm90")
        assert [(c.q, c.kv) for c in got] == configs, (dtype, rank, head_dim)
    assert {
        (d, r, h) for r, by in _tiles.SM90_FORWARD.items() for h in by for d in _tiles.SM90_DTYPES
    } == set(expected)


def test_table_invariants():
    stems = [(k.arch, k.file_stem) for k in KERNELS]
    assert len(set(stems)) == len(stems), "two kernels share a translation unit name"
    for k in KERNELS:
        assert len(k.q) == len(k.kv) == k.rank
        assert _extension._KERNEL_UNIT.match(f"{k.arch}:{k.unit}"), k.unit
    # sm90's backward tiles are the same at every head dim up to 128, and d256 has its own
    # (bwd_config.h says why): 64-token Q tiles, each KV tile a forward configuration's of the
    # same head dim, its Q tile that configuration's halved along the first axis longer than 1.
    sm90_bwd = {
        (k.head_dim == 256, k.rank, k.config, k.q, k.kv, k.stages)
        for k in KERNELS
        if k.arch == "sm90" and k.direction == "bwd"
    }
    assert len(sm90_bwd) == 8
    fwd = {
        (k.head_dim == 256, k.rank, k.kv): k.q
        for k in KERNELS
        if k.arch == "sm90" and k.direction == "fwd"
    }
    for wide, rank, _, q, kv, _ in sm90_bwd:
        assert math.prod(q) == 64 and q[-1] % 8 == 0
        assert math.prod(kv) == (64 if wide else 128)
        assert (wide, rank, kv) in fwd
        if not wide:
            fq = fwd[(wide, rank, kv)]
            first = next(a for a, x in enumerate(fq) if x > 1)
            assert q == fq[:first] + (fq[first] // 2,) + fq[first + 1 :], (q, fq)
    # sm100's backward tiles are the forward's default (cuda/sm100/bwd_config.h).
    default = {
        (k.dtype, k.head_dim, k.rank): (k.q, k.kv)
        for k in KERNELS
        if k.arch == "sm100" and k.config == 0
    }
    for k in KERNELS:
        if k.arch == "sm100" and k.direction == "bwd":
            assert (k.q, k.kv) == default[(k.dtype, k.head_dim, k.rank)], k
    # Every smoke set holds a kernel of each direction the architecture builds.
    for arch in _kernel_table.SMOKE:
        assert {k.direction for k in KERNELS if k.arch == arch and k.smoke} == {"fwd", "bwd"}


_PRINTER = r"""
#include <cstdio>
#include "cuda/sm90/bwd_config.h"
#include "cuda/sm90/fwd_config.h"
#include "cuda/sm100/bwd_config.h"
#include "cuda/sm100/fwd_config.h"

template <class Fwd, class Bwd, class FwdBuilt, class BwdBuilt, class Dims>
void dump(const char* arch, const Dims& dims, Fwd fwd, Bwd bwd, FwdBuilt fwd_built,
          BwdBuilt bwd_built) {
  const gna::DType dtypes[] = {gna::DType::kF16, gna::DType::kBF16, gna::DType::kE4M3};
  for (int d : dims) {
    for (int rank = 1; rank <= 3; ++rank) {
      const gna::FwdTileConfigs t = fwd(rank, d);
      for (int c = 0; c < t.count; ++c) {
        const gna::FwdTileConfig& x = t.config[c];
        for (int i = 0; i < 3; ++i)
          if (fwd_built(dtypes[i], d, rank, c))
            std::printf("%s fwd %d %d %d %d q%d,%d,%d kv%d,%d,%d s%d\n", arch, i, d, rank, c,
                        x.q[0], x.q[1], x.q[2], x.kv[0], x.kv[1], x.kv[2], x.stages);
      }
    }
  }
  for (int d : dims) {
    for (int rank = 1; rank <= 3; ++rank) {
      const gna::FwdTileConfigs t = bwd(rank, d);
      for (int c = 0; c < t.count; ++c) {
        const gna::FwdTileConfig& x = t.config[c];
        for (int i = 0; i < 2; ++i)
          if (bwd_built(dtypes[i], d, rank, c))
            std::printf("%s bwd %d %d %d %d q%d,%d,%d kv%d,%d,%d s%d\n", arch, i, d, rank, c,
                        x.q[0], x.q[1], x.q[2], x.kv[0], x.kv[1], x.kv[2], x.stages);
      }
    }
  }
}

int main() {
  dump("sm90", gna::sm90::kFwdHeadDims, gna::sm90::fwd_tile_configs, gna::sm90::bwd_tile_configs,
       gna::sm90::fwd_kernel_built, gna::sm90::bwd_kernel_built);
  dump("sm100", gna::sm100::kFwdHeadDims, gna::sm100::fwd_tile_configs,
       gna::sm100::bwd_tile_configs, gna::sm100::fwd_kernel_built, gna::sm100::bwd_kernel_built);
}
"""


def _expected(smoke: bool) -> list[str]:
    dtypes = list(_kernel_table.DTYPES) + list(_kernel_table.FP8_DTYPES)
    lines = []
    for k in KERNELS:
        if smoke and not k.smoke:
            continue
        pad = lambda t: ",".join(map(str, (1,) * (3 - len(t)) + t))  # noqa: E731
        lines.append(
            f"{k.arch} {k.direction} {dtypes.index(k.dtype)} {k.head_dim} {k.rank} {k.config} "
            f"q{pad(k.q)} kv{pad(k.kv)} s{k.stages}"
        )
    return sorted(lines)


@pytest.mark.parametrize("kernel_set", ["full", "smoke"])
def test_cxx_tables_match_the_table(tmp_path, kernel_set):
    src = tmp_path / "print_tables.cc"
    src.write_text(_PRINTER)
    smoke = ("-DGNA_KERNEL_SET_SMOKE=1",) if kernel_set == "smoke" else ()
    exe = host_cxx.build(tmp_path / "print_tables", [src], flags=("-O1", *smoke))
    got = sorted(
        subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    )
    assert got == _expected(kernel_set == "smoke")


def test_cxx_head_dims_match_the_table():
    for arch in _kernel_table.SMOKE:
        header = (ROOT / "cuda" / arch / "kernel_table.h").read_text()
        for direction, name in (("fwd", "kFwdHeadDims"), ("bwd", "kBwdHeadDims")):
            dims = sorted(
                {k.head_dim for k in KERNELS if k.arch == arch and k.direction == direction}
            )
            assert f"{name}[] = {{{', '.join(map(str, dims))}}};" in header
