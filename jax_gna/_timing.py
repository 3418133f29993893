"""The timing method shared by the profiler, the benchmarks and the video example.

A candidate is a function of one input set (a tuple of arrays, ``None`` allowed). It is timed
in samples:

- a **dispatch** is one call of ``independent_calls(fn, n)``: one jitted function that runs
  ``fn`` on ``n`` different input sets and returns all ``n`` outputs. The calls share no data,
  so none waits for another and XLA adds nothing between them; the input sets are distinct
  arrays, so no two calls are common subexpressions, and every output is returned, so none is
  dead code. Rotating through ``n`` sets also keeps a short call from finding its inputs still
  in the L2 cache from the call before, which a model's calls never do.
- a **sample** is ``dispatches`` dispatches issued back to back, then one
  ``block_until_ready``: at least ``sample_s`` (0.25 s) of one candidate alone, long enough for
  a GPU to settle into the clock state that candidate sustains. ``n`` is chosen so that a
  sample is a few dispatches (dispatch is asynchronous: the host enqueues the next one while
  the device runs the current one, so there is no gap between them), within a memory budget.
- `alternate` runs the candidates' samples in turn (A, B, A, B, ... with two candidates),
  ``iters`` samples each per run, ``repeats`` runs, so that slow drift reaches all alike.

`Timer.result` reports per run the median over samples (and its spread), and over runs the
median of the run medians with its spread (min and max over runs when there are several, else
over samples). `speedup` compares two candidates the same way.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

# A sample runs one candidate at least this long.
SAMPLE_S = 0.25
# n is chosen so that a sample is about this many dispatches.
_DISPATCHES_PER_SAMPLE = 4
# Most independent calls in one jitted function: compile time grows with it (the cap is lower
# on a CPU, where dispatch costs little next to a call and XLA compiles slowly).
MAX_CALLS = {"gpu": 256, "other": 16}
# Inputs and outputs of the n calls of a dispatch may take this much memory: at most this
# fraction of the device's memory, and at most the cap (default: 1 GiB where the device does not
# say how much memory it has).
_MEMORY_FRACTION = 0.25
_MEMORY_CAP = 8 << 30
_MEMORY_UNKNOWN = 1 << 30
# Samples are planned this much longer than the shortest allowed, so that noise in the estimate
# of a dispatch's time rarely makes one shorter.
_PLAN_MARGIN = 1.1
# The first estimate of a call's time runs calls back to back until a round takes this long.
_ESTIMATE_S = 0.02


def default_max_calls() -> int:
    import jax

    return MAX_CALLS["gpu" if jax.default_backend() == "gpu" else "other"]


def memory_budget() -> int:
    """Bytes the inputs and outputs of one dispatch may take on the default device."""
    import jax

    try:
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # not every backend reports memory
        limit = None
    if not limit:
        return _MEMORY_UNKNOWN
    return int(min(_MEMORY_CAP, _MEMORY_FRACTION * limit))


def independent_calls(fn: Callable[..., Any], n: int):
    """``jax.jit`` of ``n`` independent calls of ``fn``: it takes a tuple of ``n`` input sets
    (each a tuple of ``fn``'s arguments) and returns the tuple of the ``n`` outputs."""
    import jax

    def run(input_sets):
        if len(input_sets) != n:
            raise ValueError(f"expected {n} input sets, got {len(input_sets)}")
        return tuple(fn(*inputs) for inputs in input_sets)

    return jax.jit(run)


class InputPool:
    """Input sets ``0, 1, 2, ...`` made on demand by ``make(i)`` and kept, so that every
    candidate timed on ``n`` sets gets the same first ``n``."""

    def __init__(self, make: Callable[[int], tuple]):
        self._make = make
        self._sets: list[tuple] = []

    def take(self, n: int) -> tuple[tuple, ...]:
        while len(self._sets) < n:
            self._sets.append(self._make(len(self._sets)))
        return tuple(self._sets[:n])


def _nbytes(tree) -> int:
    import jax

    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


class Timer:
    """Times one candidate: `prepare` compiles, picks ``n`` and the dispatches per sample and
    warms up; `sample` takes one timed sample into a run; `result` summarises."""

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: InputPool,
        *,
        sample_s: float = SAMPLE_S,
        max_calls: int | None = None,
        memory: int | None = None,
    ):
        self.fn, self.inputs = fn, inputs
        self.sample_s = sample_s
        self.max_calls = default_max_calls() if max_calls is None else max_calls
        self.memory = memory_budget() if memory is None else memory
        self.calls = 1  # n: independent calls per dispatch
        self.dispatches = 1  # per sample
        self.runs: list[list[float]] = []  # seconds per call, per sample, per run
        self.first_call_s = math.nan  # the first call of fn: compile and run
        self.first_dispatch_s = math.nan  # the same for the n-call function that is timed
        self.shortest_sample_s = math.inf

    # -- set-up ---------------------------------------------------------------------------

    def _build(self, n: int) -> None:
        self.calls = n
        self.jitted = independent_calls(self.fn, n)
        self.sets = self.inputs.take(n)

    def dispatch(self):
        """One dispatch (asynchronous): the outputs of the ``n`` calls."""
        return self.jitted(self.sets)

    def _seconds(self, dispatches: int) -> float:
        """Seconds for ``dispatches`` dispatches issued back to back, then one wait."""
        import jax

        t0 = time.perf_counter()
        for _ in range(dispatches):
            out = self.dispatch()
        jax.block_until_ready(out)
        return time.perf_counter() - t0

    def _calls_for(self, per_call: float) -> int:
        """n for a call of ``per_call`` seconds: a sample of about `_DISPATCHES_PER_SAMPLE`
        dispatches, within `max_calls` and the memory budget."""
        import jax

        inputs = self.inputs.take(1)[0]
        per_call_bytes = _nbytes(inputs) + _nbytes(jax.eval_shape(self.fn, *inputs))
        fits = max(1, self.memory // max(per_call_bytes, 1))
        wanted = math.ceil(self.sample_s / _DISPATCHES_PER_SAMPLE / max(per_call, 1e-9))
        return max(1, min(wanted, self.max_calls, fits))

    def prepare(self, warmup: int) -> None:
        """Compile, choose ``n`` and the dispatches per sample, then ``warmup`` untimed
        samples."""
        self._build(1)
        self.first_call_s = self.first_dispatch_s = self._seconds(1)  # compiles
        calls, seconds = 1, self._seconds(1)
        while seconds < _ESTIMATE_S and calls < 4096:  # microsecond calls: a longer round
            calls *= 4
            seconds = self._seconds(calls)
        per_call = seconds / calls
        # Single dispatches include the host's dispatch cost: an upper bound of the call's time,
        # so n may come out low; one rebuild from the n-call measurement corrects it.
        for _ in range(2):
            n = self._calls_for(per_call)
            if n <= self.calls:
                break
            self._build(n)
            self.first_dispatch_s = self._seconds(1)  # compiles
            per_call = self._seconds(1) / n
        # The first dispatches after a compile can be slow (allocation): the faster of two.
        per_dispatch = min(self._seconds(1), self._seconds(1)) if self.calls > 1 else None
        self._plan(per_dispatch or per_call)
        for _ in range(warmup):
            self._plan(self._seconds(self.dispatches) / self.dispatches)

    def _plan(self, per_dispatch: float) -> None:
        """Dispatches per sample for a dispatch of ``per_dispatch`` seconds."""
        self.dispatches = max(1, math.ceil(_PLAN_MARGIN * self.sample_s / max(per_dispatch, 1e-9)))

    # -- samples --------------------------------------------------------------------------

    def sample(self, run: int) -> None:
        """One timed sample into run ``run`` (runs are numbered from 0, in order)."""
        while len(self.runs) <= run:
            self.runs.append([])
        seconds = self._seconds(self.dispatches)
        self.runs[run].append(seconds / (self.dispatches * self.calls))
        self.shortest_sample_s = min(self.shortest_sample_s, seconds)
        if seconds < self.sample_s:  # ran faster than planned: the next sample is longer
            self._plan(seconds / self.dispatches)

    def result(self) -> dict[str, Any]:
        out = summarize(self.runs)
        out.update(
            calls_per_dispatch=self.calls,
            dispatches_per_sample=self.dispatches,
            calls_per_sample=self.calls * self.dispatches,
            shortest_sample_s=self.shortest_sample_s,
            first_call_s=self.first_call_s,
            first_dispatch_s=self.first_dispatch_s,
            status="ok",
        )
        return out


def _quartiles(xs: Sequence[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarize(runs: Sequence[Sequence[float]], scale: float = 1e3) -> dict[str, Any]:
    """Medians and spreads of per-call seconds grouped by run, in milliseconds (``scale``)."""
    per_run = []
    for samples in runs:
        ms = [s * scale for s in samples]
        q1, q3 = _quartiles(ms)
        per_run.append(
            dict(median_ms=statistics.median(ms), min_ms=min(ms), max_ms=max(ms), iqr_ms=[q1, q3])
        )
    medians = [r["median_ms"] for r in per_run]
    every = [s * scale for samples in runs for s in samples]
    over = "runs" if len(runs) > 1 else "samples"
    spread_of = medians if len(runs) > 1 else every
    return dict(
        median_ms=statistics.median(medians),
        spread_ms=[min(spread_of), max(spread_of)],
        spread_over=over,
        min_ms=min(every),
        runs=per_run,
        samples_ms=[[s * scale for s in samples] for samples in runs],
    )


def speedup(ours: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``base`` time over ``ours``, from two `Timer.result` dicts timed by the same `alternate`:
    per run the ratio of the medians; overall the median over runs, with min and max over runs,
    or with one run over the ratios of the samples taken one after the other."""
    runs = [b["median_ms"] / o["median_ms"] for o, b in zip(ours["runs"], base["runs"])]
    if len(runs) > 1:
        spread = runs
    else:
        spread = [b / o for o, b in zip(ours["samples_ms"][0], base["samples_ms"][0])]
    return dict(speedup=statistics.median(runs), speedup_spread=[min(spread), max(spread)],
                speedup_runs=runs)  # fmt: skip


def alternate(
    timers: dict[str, Any],
    *,
    iters: int,
    repeats: int = 1,
    warmup: int = 1,
    on_stage: Callable[[str], None] | None = None,
    on_sample: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Prepare every timer (``prepare(warmup)``), then ``repeats`` runs of ``iters`` rounds,
    each round one ``sample(run)`` of every timer in order. A timer that raises is reported as
    ``{"status": "failed: ..."}`` and left out of the later rounds; the others go on. Returns
    each timer's ``result()`` (or failure) by name; ``timers`` may hold an exception instead of
    a timer (one raised while building it), reported the same way."""
    results: dict[str, dict[str, Any]] = {}
    live: dict[str, Any] = {}

    def fail(name: str, e: BaseException) -> None:
        results[name] = {"status": f"failed: {type(e).__name__}: {first_line(e)}"}
        live.pop(name, None)

    for name, timer in timers.items():
        if isinstance(timer, BaseException):
            fail(name, timer)
            continue
        if on_stage is not None:
            on_stage(name)
        try:
            timer.prepare(warmup)
            live[name] = timer
        except Exception as e:
            fail(name, e)
    for run in range(repeats):
        for _ in range(iters):
            for name, timer in list(live.items()):
                try:
                    timer.sample(run)
                except Exception as e:
                    fail(name, e)
            if on_sample is not None:
                on_sample()
    results.update({name: timer.result() for name, timer in live.items()})
    return {name: results[name] for name in timers}


def format_ms(ms: float) -> str:
    """Milliseconds with 4 significant digits or more: ``12.697``, ``0.0673``."""
    return f"{ms:.3f}" if ms >= 1 else f"{ms:.4f}"


def format_spread(lo: float, hi: float, fmt: Callable[[float], str] = format_ms) -> str:
    return f"[{fmt(lo)}-{fmt(hi)}]"


def format_time(row: dict[str, Any]) -> str:
    """``"12.697 [12.612-12.803]"``: a `Timer.result`'s median and spread, in ms."""
    return f"{format_ms(row['median_ms'])} {format_spread(*row['spread_ms'])}"


def format_speedup(row: dict[str, Any]) -> str:
    """``"9.67x [9.60-9.71]"`` from a row with `speedup`'s fields (``"-"`` without a speedup)."""
    if row.get("speedup") is None:
        return "-"
    text = f"{row['speedup']:.2f}x"
    if "speedup_spread" in row:
        text += " " + format_spread(*row["speedup_spread"], fmt=lambda x: f"{x:.2f}")
    return text


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


@dataclasses.dataclass(frozen=True)
class Method:
    """The sample settings, as the profiler's and the benchmarks' flags give them."""

    iters: int = 20
    repeats: int = 1
    warmup: int = 1
    sample_s: float = SAMPLE_S
    max_calls: int | None = None  # None: `default_max_calls`

    def describe(self) -> str:
        runs = f" per run, {self.repeats} runs" if self.repeats > 1 else ""
        return (
            f"{self.iters} samples per candidate{runs}, each >= {self.sample_s:g} s of "
            f"independent calls, candidates alternating, {plural(self.warmup, 'warm-up sample')}"
        )

    def json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"max_calls": self.max_calls or default_max_calls()}
