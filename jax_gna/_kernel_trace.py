"""Device time per call from a profiler trace: what the GPU spends in each call's kernels.

`trace_calls` runs one dispatch of ``calls`` calls under ``jax.profiler.trace`` and reads the
trace back (``jax.profiler.ProfileData``): every event on a line ``Stream #...`` of a
``/device:GPU:*`` plane is device work (kernels, copies, memsets) that the dispatch launched.
`KernelTimes` gives the busy time per call (the union of those events, over the calls) and,
per kernel name, the launches and the time per call. ``own`` picks the kernels that make up the
operation itself (`OWN_KERNELS`: jax_gna's kernels live in the C++ namespace ``gna::``, cuDNN's
attention kernels carry cuDNN's names); what else the device runs is XLA's around the call.

Anything that stops the trace from being read (no GPU, CUPTI unavailable, a jax without
``ProfileData``) gives a reason string instead of numbers, never an exception.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

# Substrings (case-insensitive) of the kernel names that make up each side's operation.
OWN_KERNELS = {
    "gna": ("gna::",),
    "cudnn": ("cudnn", "sdpa", "fmha", "flash"),
}
_DEVICE_PLANE_PREFIX = "/device:GPU:"
_DEVICE_LINE_PREFIX = "Stream #"


@dataclasses.dataclass(frozen=True)
class Event:
    name: str
    start_ns: float
    duration_ns: float


@dataclasses.dataclass(frozen=True)
class KernelTimes:
    """Device work of ``calls`` calls, per call."""

    calls: int
    busy_ms: float  # the device busy with any of the calls' work, per call
    kernels: tuple[dict[str, Any], ...]  # per name: launches and ms per call, slowest first

    def own_ms(self, patterns: Iterable[str]) -> float | None:
        """Milliseconds per call in the kernels whose names contain one of ``patterns``; None
        when there are none."""
        hits = [k for k in self.kernels if _matches(k["name"], patterns)]
        return sum(k["ms_per_call"] for k in hits) if hits else None

    def json(self, patterns: Iterable[str] = ()) -> dict[str, Any]:
        patterns = tuple(patterns)
        return {
            "calls_traced": self.calls,
            "device_busy_ms": self.busy_ms,
            "kernels": [dict(k, own=_matches(k["name"], patterns)) for k in self.kernels],
        }


def _matches(name: str, patterns: Iterable[str]) -> bool:
    low = name.lower()
    return any(p.lower() in low for p in patterns)


def device_events(profile) -> list[Event] | None:
    """The device work in a ``jax.profiler.ProfileData``; None when it has no GPU plane."""
    events, planes = [], 0
    for plane in profile.planes:
        if not plane.name.startswith(_DEVICE_PLANE_PREFIX):
            continue
        planes += 1
        for line in plane.lines:
            if not line.name.startswith(_DEVICE_LINE_PREFIX):
                continue  # "XLA Ops", "CUPTI overhead", counters: not device work
            for e in line.events:
                events.append(Event(e.name, float(e.start_ns), float(e.duration_ns)))
    return events if planes else None


def last_dispatch(events: list[Event] | None, dispatches: int) -> list[Event] | None:
    """The events of the last of ``dispatches`` identical dispatches (each launches the same
    work, so the last ``len(events) / dispatches`` events in start order); ``events`` itself
    when the count does not divide (the caller then averages over every dispatch)."""
    if not events or dispatches <= 1 or len(events) % dispatches:
        return events
    return sorted(events, key=lambda e: e.start_ns)[-(len(events) // dispatches) :]


def _busy_ns(events: list[Event]) -> float:
    """Length of the union of the events' intervals (overlapping streams count once)."""
    total, end = 0.0, -float("inf")
    for e in sorted(events, key=lambda e: e.start_ns):
        stop = e.start_ns + e.duration_ns
        if stop <= end:
            continue
        total += stop - max(e.start_ns, end)
        end = stop
    return total


def summarize(events: list[Event] | None, calls: int) -> KernelTimes | str:
    """Per-call device time of ``calls`` calls' events, or why there is none."""
    if events is None:
        return "no GPU in the trace"
    if not events:
        return "no device events in the trace (is CUPTI available?)"
    per_name: dict[str, list[float]] = {}
    for e in events:
        per_name.setdefault(e.name, []).append(e.duration_ns)
    kernels = sorted(
        (
            {
                "name": name,
                "launches_per_call": len(ds) / calls,
                "ms_per_call": sum(ds) / calls / 1e6,
            }
            for name, ds in per_name.items()
        ),
        key=lambda k: -k["ms_per_call"],
    )
    return KernelTimes(calls=calls, busy_ms=_busy_ns(events) / calls / 1e6, kernels=tuple(kernels))


def trace_calls(dispatch: Callable[[], Any], calls: int, dispatches: int = 1) -> KernelTimes | str:
    """Trace ``dispatches`` ``dispatch()``es (``calls`` calls each, asynchronous, issued back to
    back: a timed sample's worth) and return the device time per call of the last one, or why
    it could not be measured.

    Only the last dispatch counts because a GPU's clock depends on what it ran just before: a
    lone dispatch after the idle gap of starting the profiler runs at a higher clock than the
    same work sustained (an H100 at its power cap runs ~1.5 GHz sustained and boosts higher
    after a pause), and its kernel time would then look shorter than the timed samples'."""
    import jax

    profile_data = getattr(jax.profiler, "ProfileData", None)
    if profile_data is None:
        return "this jax has no jax.profiler.ProfileData"
    try:
        jax.block_until_ready(dispatch())  # nothing else in flight while tracing
        with tempfile.TemporaryDirectory(prefix="jax_gna_trace_") as log_dir:
            with jax.profiler.trace(log_dir):
                for _ in range(dispatches):
                    out = dispatch()
                jax.block_until_ready(out)
            paths = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
            if not paths:
                return "the profiler wrote no trace"
            profile = profile_data.from_file(max(paths, key=os.path.getmtime))
            events = device_events(profile)
            last = last_dispatch(events, dispatches)
            return summarize(last, calls * (dispatches if last is events else 1))
    except Exception as e:  # a trace is extra information: never fail the run over it
        text = str(e).strip().splitlines()
        return f"trace failed: {type(e).__name__}: {text[0][:160] if text else ''}"
