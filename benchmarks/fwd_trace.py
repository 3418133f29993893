"""Summarise the sm90 forward's clock stamps (the GNA_SM90_FWD_TRACE development knob).

A build with ``-DCMAKE_CUDA_FLAGS=-DGNA_SM90_FWD_TRACE`` prints, after each forward launch, one
line per stamped visit of its first CTAs' two consumer warpgroups::

    gna_trace <cta> <warpgroup> <item> <visit> s0 s1 s2 s3 s4 s5

with s0..s5 SM clock cycles at: the visit's start, the GEMM turn taken (K landed), the GEMMs
issued (V or V^T landed), S landed (the 16-bit kernel: S and the previous P V), the softmax
done, the visit done (P V retired, O rescaled). This
script reads such output (files or stdin), keeps each launch's last complete print, and gives
the median length of each phase, the visit period, and how much of one warpgroup's softmax
overlaps the other's: the two share the MUFU pipe, so overlapping softmaxes slow each other
while the tensor pipe idles. Per work item the build also prints::

    gna_item <cta> <warpgroup> <item> entry q_landed done

(the consumer's entry into the item, its Q landed, its epilogue done), from which the script
gives what an item boundary costs: the wait for Q (the first item's: the launch's loads), the
epilogue, and the gap from an item's last visit to the next item's first GEMM turn.

Usage::

    python3 one_fp8_call.py 2>&1 | python benchmarks/fwd_trace.py
    python benchmarks/fwd_trace.py trace.txt --timeline 0 0   # CTA 0, item 0, visit by visit
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict

PHASES = ("turn", "issue", "S wait", "softmax", "P V + rescale")


def _last_launch(lines, tag: str, keys: int, values: int) -> dict[tuple, list[int]]:
    """{key: values} of the `tag` lines (tag, `keys` integers, `values` integers) of the last
    launch printed."""
    launch: dict[tuple, list[int]] = {}
    for line in lines:
        fields = line.split()
        if len(fields) != 1 + keys + values or fields[0] != tag:
            continue
        key = tuple(int(f) for f in fields[1 : 1 + keys])
        if key in launch:  # a key seen again: the next launch's print begins
            launch = {}
        launch[key] = [int(f) for f in fields[1 + keys :]]
    return launch


def parse(lines) -> dict[tuple[int, int, int, int], list[int]]:
    """{(cta, warpgroup, item, visit): stamps} from the last launch printed."""
    return _last_launch(lines, "gna_trace", 4, 6)


def parse_items(lines) -> dict[tuple[int, int, int], list[int]]:
    """{(cta, warpgroup, item): [entry, q_landed, done]} from the last launch printed."""
    return _last_launch(lines, "gna_item", 3, 3)


def item_costs(trace: dict, items: dict) -> dict[str, float]:
    """Median cycles of: the first item's wait for Q, a later item's wait for Q, the epilogue
    (last visit done -> item done), and the boundary (last visit done -> the next item's first
    GEMM turn taken)."""
    last_visit = {}
    for (cta, wg, item, visit), s in trace.items():
        if visit >= last_visit.get((cta, wg, item), (-1, None))[0]:
            last_visit[(cta, wg, item)] = (visit, s)
    costs: dict[str, list[int]] = defaultdict(list)
    for (cta, wg, item), (entry, q_landed, done) in items.items():
        costs["first Q wait" if item == 0 else "Q wait"].append(q_landed - entry)
        if (cta, wg, item) in last_visit:
            end = last_visit[(cta, wg, item)][1][5]
            costs["epilogue"].append(done - end)
            following = trace.get((cta, wg, item + 1, 0))
            if following:
                costs["boundary"].append(following[1] - end)
    return {k: statistics.median(v) for k, v in costs.items()}


def phases(stamps: list[int]) -> list[int]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    """Total length of the intersection of two sets of disjoint intervals."""
    return sum(max(0, min(x1, y1) - max(x0, y0)) for x0, x1 in a for y0, y1 in b)


def summary(trace: dict[tuple[int, int, int, int], list[int]]) -> dict:
    """Median phase lengths and visit period over the visits after the first two of each item
    (the pipeline filling), and the fraction of softmax time that overlaps the other
    warpgroup's softmax."""
    lengths: dict[str, list[int]] = defaultdict(list)
    periods: list[int] = []
    softmax: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
    for (cta, wg, item, visit), s in trace.items():
        if visit < 2 or 0 in s:
            continue
        for name, length in zip(PHASES, phases(s)):
            lengths[name].append(length)
        following = trace.get((cta, wg, item, visit + 1))
        if following and following[0]:
            periods.append(following[0] - s[0])
        softmax[(cta, item, wg)].append((s[3], s[4]))
    shared = total = 0
    for (cta, item, wg), intervals in softmax.items():
        if wg == 0:
            total += sum(y - x for x, y in intervals)
            shared += overlap(intervals, softmax.get((cta, item, 1), []))
    return {
        "visits": len(trace),
        "phases": {k: statistics.median(v) for k, v in lengths.items()},
        "period": statistics.median(periods) if periods else None,
        "softmax_overlap": shared / total if total else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="trace output (default: stdin)")
    parser.add_argument("--timeline", nargs=2, type=int, metavar=("CTA", "ITEM"),
                        help="print that CTA's item visit by visit")  # fmt: skip
    args = parser.parse_args(argv)
    lines = [line for f in args.files for line in open(f)] if args.files else list(sys.stdin)
    trace = parse(lines)
    items = parse_items(lines)
    if not trace:
        print("no gna_trace lines (a build with -DGNA_SM90_FWD_TRACE prints them)")
        return 1
    result = summary(trace)
    print(f"{result['visits']} visits stamped; median cycles per visit after the first two:")
    for name, value in result["phases"].items():
        print(f"  {name:14s} {value:8.0f}")
    print(f"  {'period':14s} {result['period']:8.0f}")
    if result["softmax_overlap"] is not None:
        print(f"softmax time of warpgroup 0 overlapping warpgroup 1's: "
              f"{100 * result['softmax_overlap']:.0f}%")  # fmt: skip
    if items:
        print("item boundaries (median cycles):")
        for name, value in item_costs(trace, items).items():
            print(f"  {name:14s} {value:8.0f}")
    if args.timeline:
        cta, item = args.timeline
        keys = sorted(k for k in trace if k[0] == cta and k[2] == item)
        base = min(trace[k][0] for k in keys) if keys else 0
        for k in sorted(keys, key=lambda k: (k[3], k[1])):
            print(f"wg {k[1]} visit {k[3]:3d}: " + " ".join(f"{s - base:7d}" for s in trace[k]))
        for wg in (0, 1):
            if (cta, wg, item) in items:
                entry, q_landed, done = (s - base for s in items[(cta, wg, item)])
                print(f"wg {wg} item: entry {entry}, Q landed {q_landed}, done {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
