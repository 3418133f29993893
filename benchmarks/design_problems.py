"""The standard problems of DESIGN.md §8, as data, and a driver that profiles them all.

Each problem is batch 1, head dim 128, 24 or 32 heads (1 for 1-D), at stride 1
(neighborhood attention) and at the GNA stride that makes it perfectly block-sparse. The
profiler (`python -m jax_gna.profile`) runs each one; benchmarks import `PROBLEMS`.

Usage::

  python benchmarks/design_problems.py --dry-run            # simulated numbers only, no GPU
  python benchmarks/design_problems.py --implementation cuda --json results.json
  python benchmarks/design_problems.py --only hunyuan       # names containing "hunyuan"
  # forward + backward against cuDNN forward + backward, our backward in both modes:
  python benchmarks/design_problems.py --implementation cuda --backprop --deterministic both \
      --json results.json

Every other flag goes to the profiler (``--backprop``, ``--deterministic``, ``--dtype``,
``--iters``, ...). The closing summary puts each measured speedup over dense next to the
simulator's bounds (``bound``: the paper's rule; ``N^2-bound``: against dense over the unpadded
tokens, which is what the measured speedup over cuDNN should approach), with effective TFLOP/s
(a backward counts 2.5x the forward) and, with ``--deterministic both``, what the deterministic
backward costs over the default one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class DesignProblem:
    """One standard problem; `argv` gives its profiler arguments."""

    name: str
    input_size: tuple[int, ...]
    heads: int
    window: tuple[int, ...]
    stride: tuple[int, ...]
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
        ]


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
    DesignProblem("flux-4k-dense", (256, 256), 24, (256, 256), (1, 1)),
    DesignProblem("1d-32k-dense", (32768,), 1, (32768,), (1,)),
)


def main(argv: Sequence[str] | None = None) -> int:
    from jax_gna import profile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the problems whose name contains this")
    parser.add_argument("--dry-run", action="store_true", help="simulate only")
    parser.add_argument("--json", metavar="PATH", help="write every result to one JSON file")
    args, passthrough = parser.parse_known_args(argv)
    chosen = [p for p in PROBLEMS if args.only is None or args.only in p.name]
    if not chosen:
        parser.error(f"argument --only: no problem name contains {args.only!r}")
    results = {}
    for p in chosen:
        print(f"\n=== {p.name}: python -m jax_gna.profile {' '.join(p.argv())}", flush=True)
        results[p.name] = profile.run(
            p.argv() + list(passthrough) + (["--dry-run"] if args.dry_run else [])
        )
    print("\n=== summary: measured speedup over dense next to the simulator's bound")
    print(_summary(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


def _summary(results: dict) -> str:
    header = ("problem", "tiles", "bound", "N^2-bound", "FLOP-wise", "block-sparse", "measured")
    rows = [header]
    for name, r in results.items():
        s = r.get("simulation") or r["chosen"]
        measured = []
        for row in r.get("results", []):
            if row.get("status") != "ok":
                continue
            timing = f"{row['median_ms']:.2f} ms, {row['tflops']:.0f} TFLOP/s"
            if row.get("backward", "cuda") != "cuda":
                timing += ", xla backward"
            if row.get("speedup") is not None:
                measured.append(f"{row['implementation']} {row['speedup']:.2f}x ({timing})")
            else:
                measured.append(f"{row['implementation']} ({timing})")
        measured += _deterministic_costs(r.get("results", []))
        dense = r.get("dense", {})
        if dense.get("status") == "ok":
            measured.append(
                f"{dense['implementation']} {dense['median_ms']:.2f} ms, "
                f"{dense['tflops']:.0f} TFLOP/s"
            )
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
