"""The standard problems, as data, and a driver that profiles them all.

Batch 1, head dim 128, in three groups (``--group``):

- ``standard``: FLUX-4K, HunyuanVideo, Cosmos and 1-D, each at stride 1 (neighborhood
  attention) and at the GNA stride that makes it perfectly block-sparse; 24 or 32 heads, 1 for
  1-D.
- ``dense``: window = the whole extent, i.e. dense attention through the GNA kernels, against
  cuDNN: FLUX-4K (65,536 tokens, 24 heads), 1-D 32k (1 head), and 1-D 8k and 64k with enough
  heads to fill an H100 (132 SMs; the 1-D kernels take 128 queries per CTA): 16 heads at 8k
  (1,024 CTAs, about 8 waves) and 8 heads at 64k (4,096 CTAs, 31 waves; more heads would only
  lengthen each call).
- ``dilation``: 2-D 128x128 (window 13x13, dilation 1 and 4) and 256x256 (window 13x13,
  dilation 1, 4 and 16), 24 heads; 1-D 32768 (window 512, dilation 1, 8 and 64), 1 head.

The profiler (`python -m jax_gna.profile`) runs each one with the timing method of
``docs/performance.md``; benchmarks import `PROBLEMS`.

Usage::

  python benchmarks/design_problems.py --dry-run            # simulated numbers only, no GPU
  python benchmarks/design_problems.py --implementation cuda --repeats 3 --json results.json
  python benchmarks/design_problems.py --group dilation     # one group
  python benchmarks/design_problems.py --only hunyuan       # names containing "hunyuan"
  # forward + backward against cuDNN forward + backward, our backward in both modes:
  python benchmarks/design_problems.py --implementation cuda --backprop --deterministic both \
      --json results.json
  # FP8 (e4m3, per-tensor scales) next to our bf16 and cuDNN bf16, forward only:
  python benchmarks/design_problems.py --implementation cuda --dtype fp8 --json results.json

Every other flag goes to the profiler (``--backprop``, ``--deterministic``, ``--dtype``,
``--iters``, ``--repeats``, ...). The closing summary puts each measured speedup over dense
(median and spread) next to the simulator's bounds (``bound``: the paper's rule; ``N^2-bound``:
against dense over the unpadded tokens, which is what the measured speedup over cuDNN should
approach), with effective TFLOP/s (a backward counts 2.5x the forward), the kernels' own time,
with ``--deterministic both`` what the deterministic backward costs over the default one, and
with ``--dtype fp8`` each FP8 row's speedup over the bf16 row of its implementation; then the
same as a Markdown table for ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from jax_gna._timing import format_ms, format_speedup, format_time


@dataclasses.dataclass(frozen=True)
class DesignProblem:
    """One standard problem; `argv` gives its profiler arguments."""

    name: str
    input_size: tuple[int, ...]
    heads: int
    window: tuple[int, ...]
    stride: tuple[int, ...]
    group: str = "standard"
    dilation: tuple[int, ...] | None = None
    dim: int = 128
    batch: int = 1

    def argv(self) -> list[str]:
        def ints(flag: str, values: Sequence[int]) -> list[str]:
            return [flag, *map(str, values)]

        return [
            *ints("-i", self.input_size),
            *ints("-b", (self.batch,)),
            *ints("-n", (self.heads,)),
            *ints("-d", (self.dim,)),
            *ints("-w", self.window),
            *ints("-s", self.stride),
            *(ints("--dilation", self.dilation) if self.dilation else []),
        ]


def _dilated(name: str, input_size, heads: int, window, dilations) -> list[DesignProblem]:
    rank = len(input_size)
    return [
        DesignProblem(f"{name}-d{d}", input_size, heads, window, (1,) * rank, "dilation",
                      (d,) * rank)
        for d in dilations
    ]  # fmt: skip


PROBLEMS: tuple[DesignProblem, ...] = (
    DesignProblem("flux-4k-na", (256, 256), 24, (80, 80), (1, 1)),
    DesignProblem("flux-4k-gna", (256, 256), 24, (80, 80), (16, 16)),
    DesignProblem("hunyuan-na", (30, 48, 80), 24, (18, 24, 24), (1, 1, 1)),
    DesignProblem("hunyuan-gna", (30, 48, 80), 24, (18, 24, 24), (16, 8, 8)),
    DesignProblem("cosmos-na", (16, 44, 80), 32, (16, 24, 16), (1, 1, 1)),
    DesignProblem("cosmos-gna", (16, 44, 80), 32, (16, 24, 16), (1, 8, 16)),
    DesignProblem("1d-32k-na", (32768,), 1, (2048,), (1,)),
    DesignProblem("1d-32k-gna", (32768,), 1, (2048,), (256,)),
    # Window = whole extent: dense attention through the GNA kernel, against cuDNN.
    DesignProblem("flux-4k-dense", (256, 256), 24, (256, 256), (1, 1), "dense"),
    DesignProblem("1d-32k-dense", (32768,), 1, (32768,), (1,), "dense"),
    DesignProblem("1d-8k-dense", (8192,), 16, (8192,), (1,), "dense"),
    DesignProblem("1d-64k-dense", (65536,), 8, (65536,), (1,), "dense"),
    # Dilation: the same window spread over every d-th token.
    *_dilated("dilation-2d-128", (128, 128), 24, (13, 13), (1, 4)),
    *_dilated("dilation-2d-256", (256, 256), 24, (13, 13), (1, 4, 16)),
    *_dilated("dilation-1d-32k", (32768,), 1, (512,), (1, 8, 64)),
)
GROUPS = tuple(dict.fromkeys(p.group for p in PROBLEMS))


def main(argv: Sequence[str] | None = None) -> int:
    from jax_gna import profile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the problems whose name contains this")
    parser.add_argument(
        "--group", choices=GROUPS, action="append",
        help="run this group only (repeatable; default: every group)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="simulate only")
    parser.add_argument("--json", metavar="PATH", help="write every result to one JSON file")
    args, passthrough = parser.parse_known_args(argv)
    groups = args.group or GROUPS
    chosen = [
        p for p in PROBLEMS if p.group in groups and (args.only is None or args.only in p.name)
    ]
    if not chosen:
        parser.error(
            f"arguments --only/--group: no problem of group {'/'.join(groups)} has a name "
            f"containing {args.only!r}"
        )
    results = {}
    for p in chosen:
        print(f"\n=== {p.name}: python -m jax_gna.profile {' '.join(p.argv())}", flush=True)
        results[p.name] = profile.run(
            p.argv() + list(passthrough) + (["--dry-run"] if args.dry_run else [])
        )
    print("\n=== summary: measured speedup over dense next to the simulator's bound")
    print(_summary(results))
    if not args.dry_run:
        print("\n=== the same as Markdown (median [min-max]), for docs/performance.md")
        print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


def _timed(row: dict) -> str:
    """A timed row in a few words: ``12.697 [12.61-12.80] ms, 406 TFLOP/s, kernel 12.60 ms``."""
    text = f"{format_time(row)} ms"
    text += f", {row['tflops']:.3g} TFLOP/s"
    if "kernel_ms" in row:
        text += f", kernel {format_ms(row['kernel_ms'])} ms"
    if row.get("backward", "cuda") != "cuda":
        text += ", xla backward"
    if "over_bf16" in row:
        text += f", {format_speedup(row['over_bf16'])} over {row['over_bf16']['implementation']}"
    return text


def _summary(results: dict) -> str:
    header = ("problem", "tiles", "bound", "N^2-bound", "FLOP-wise", "block-sparse", "measured")
    rows = [header]
    for name, r in results.items():
        s = r.get("simulation") or r["chosen"]
        measured = []
        for row in r.get("results", []):
            if row.get("status") != "ok":
                continue
            if row.get("speedup") is not None:
                measured.append(f"{row['implementation']} {format_speedup(row)} ({_timed(row)})")
            else:
                measured.append(f"{row['implementation']} ({_timed(row)})")
        measured += _deterministic_costs(r.get("results", []))
        dense = r.get("dense", {})
        if dense.get("status") == "ok":
            measured.append(f"{dense['implementation']} {_timed(dense)}")
        q, kv = ",".join(map(str, s["q_tile"])), ",".join(map(str, s["kv_tile"]))
        rows.append(
            (
                name,
                f"Q({q})/KV({kv})",
                f"{s['bound']:.2f}x",
                f"{s['token_bound']:.2f}x",
                f"{s['flop_speedup']:.2f}x",
                "yes" if s["block_sparse"] else "no",
                "; ".join(measured) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


MARKDOWN_HEADER = (
    "| problem | pass | ours | ours (ms) | dense | dense (ms) | speedup | kernel (ms) | "
    "overhead (ms) | TFLOP/s | bound |"
)


def markdown(results: dict) -> str:
    """One Markdown row per timed implementation: the layout of docs/performance.md's tables
    (times and speedups as median [min-max])."""
    lines = [MARKDOWN_HEADER, "|" + "---|" * MARKDOWN_HEADER.count(" | ") + "---|"]
    for name, r in results.items():
        dense = r.get("dense", {})
        dense_cells = (
            (
                dense["implementation"],
                format_time(dense),
            )
            if dense.get("status") == "ok"
            else ("-", "-")
        )
        for row in r.get("results", []):
            if row.get("status") != "ok":
                continue
            cells = [
                name,
                r["pass"],
                row["implementation"] + (", xla backward" if row.get("backward", "cuda") !=
                                         "cuda" else ""),
                format_time(row),
                *dense_cells,
                format_speedup(row),
                format_ms(row["kernel_ms"]) if "kernel_ms" in row else "n/a",
                format_ms(row["overhead_ms"]) if "overhead_ms" in row else "n/a",
                f"{row['tflops']:.3g}",
                f"{row['bound']:.2f}x" if "bound" in row else "-",
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _deterministic_costs(rows: list[dict]) -> list[str]:
    """Lines "<impl>: deterministic +x%", one per implementation timed in both backward modes."""
    times = {
        (row["implementation"].removesuffix(" [deterministic]"), row["deterministic"]): row
        for row in rows
        if row.get("status") == "ok" and "deterministic" in row
    }
    costs = []
    for (name, deterministic), row in times.items():
        default = times.get((name, False))
        if deterministic and default is not None:
            extra = row["median_ms"] / default["median_ms"] - 1
            costs.append(f"{name}: deterministic {extra:+.0%}")
    return costs


if __name__ == "__main__":
    sys.exit(main())
