"""The timing method (`jax_gna._timing`) and the kernel-time trace (`jax_gna._kernel_trace`).

No timing assertions: what is checked is what runs (N independent calls in one jitted function,
nothing merged or dropped by XLA), in which order (alternating samples), and what is reported.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _kernel_trace, _timing, profile


def _cpu_impl() -> str:
    x = jnp.zeros((1, 8, 1, 8), jnp.float32)
    return "cpu" if jax_gna.supported_implementations(x, x, x, (3,))["cpu"] is None else "xla"


def _count(pattern: str, fn, pool, n: int) -> int:
    jitted = _timing.independent_calls(fn, n)
    return len(re.findall(pattern, jitted.lower(pool.take(n)).compile().as_text()))


@pytest.mark.parametrize("backprop", [False, True])
def test_a_dispatch_holds_n_independent_calls_that_xla_keeps(backprop):
    argv = "-i 12 10 -n 2 -d 16 -w 5 4 -s 2 1".split() + (["--backprop"] if backprop else [])
    cfg = profile.parse_args(argv)
    pool = _timing.InputPool(lambda i: profile._inputs(cfg, i))
    n = 5
    impl = _cpu_impl()
    gna = profile._gna_fn(cfg, impl)
    dense = profile._dense_fn(cfg, "xla", False)
    if impl == "cpu":  # our op is one custom call per pass: n of each, none merged or dropped
        for target in ("jax_gna_fwd", "jax_gna_bwd") if backprop else ("jax_gna_fwd",):
            pattern = f'custom_call_target="{target}"'
            assert _count(pattern, gna, pool, 1) == 1
            assert _count(pattern, gna, pool, n) == n
    per_call = _count(r" dot\(", dense, pool, 1)  # dense attention: 2 dots forward, 6 with bwd
    assert per_call == (6 if backprop else 2)
    assert _count(r" dot\(", dense, pool, n) == n * per_call
    assert _count(r" while\(", dense, pool, n) == 0  # straight-line calls, no loop

    # Every call's outputs are returned, each computed from its own input set.
    sets = pool.take(n)
    outs = _timing.independent_calls(gna, n)(sets)
    assert len(outs) == n
    for got, inputs in zip(outs, sets):
        jax.tree.map(np.testing.assert_array_equal, got, jax.jit(gna)(*inputs))
    assert not np.array_equal(jax.tree.leaves(outs[0])[0], jax.tree.leaves(outs[1])[0])


def test_input_pool_makes_each_set_once_and_shares_them():
    made = []
    pool = _timing.InputPool(lambda i: made.append(i) or (jnp.full(3, float(i)),))
    a = pool.take(2)
    b = pool.take(3)
    assert made == [0, 1, 2]
    assert b[:2] == a and float(b[2][0][0]) == 2.0


class _Recorder:
    """A stand-in timer that logs what `alternate` asks of it."""

    def __init__(self, name, log, fail_at=None):
        self.name, self.log, self.fail_at = name, log, fail_at
        self.samples = []

    def prepare(self, warmup):
        self.log.append(("prepare", self.name, warmup))

    def sample(self, run):
        if self.fail_at is not None and len(self.samples) == self.fail_at:
            raise RuntimeError("device lost\nsecond line")
        self.log.append(("sample", self.name, run))
        self.samples.append(run)

    def result(self):
        return {"status": "ok", "samples": list(self.samples)}


def test_samples_alternate_between_the_candidates_run_after_run():
    log = []
    timers = {"ours": _Recorder("ours", log), "dense": _Recorder("dense", log)}
    results = _timing.alternate(timers, iters=3, repeats=2, warmup=2)
    assert log[:2] == [("prepare", "ours", 2), ("prepare", "dense", 2)]
    samples = log[2:]
    assert [name for _, name, _ in samples] == ["ours", "dense"] * 6
    assert [run for _, _, run in samples] == [0] * 6 + [1] * 6
    assert results["ours"]["samples"] == [0, 0, 0, 1, 1, 1]


def test_a_failing_candidate_is_reported_and_the_others_go_on():
    log = []
    timers = {
        "ok": _Recorder("ok", log),
        "flaky": _Recorder("flaky", log, fail_at=1),
        "broken": ValueError("no kernel"),
    }
    got = _timing.alternate(timers, iters=4)
    assert list(got) == ["ok", "flaky", "broken"]  # the order asked for
    assert got["ok"]["samples"] == [0, 0, 0, 0]
    assert got["flaky"]["status"] == "failed: RuntimeError: device lost"
    assert got["broken"]["status"] == "failed: ValueError: no kernel"


def test_timer_prepares_samples_and_reports():
    pool = _timing.InputPool(lambda i: (jax.random.normal(jax.random.key(i), (32, 32)),))
    timer = _timing.Timer(lambda x: jnp.tanh(x @ x), pool, sample_s=0.01, max_calls=4)
    timer.prepare(warmup=1)
    assert 1 <= timer.calls <= 4 and timer.dispatches >= 1
    for run in (0, 0, 1, 1):
        timer.sample(run)
    r = timer.result()
    assert r["status"] == "ok" and len(r["samples_ms"]) == 2 and len(r["runs"]) == 2
    assert r["calls_per_sample"] == r["calls_per_dispatch"] * r["dispatches_per_sample"]
    assert r["first_call_s"] > 0 and r["shortest_sample_s"] > 0
    assert len(timer.dispatch()) == timer.calls


def test_memory_budget_limits_the_calls_per_dispatch():
    pool = _timing.InputPool(lambda i: (jnp.full((256,), float(i)),))  # 1 KiB in, 1 KiB out
    timer = _timing.Timer(lambda x: x * 2, pool, sample_s=0.05, max_calls=64, memory=5 << 10)
    timer.prepare(warmup=0)
    assert timer.calls == 2  # 5 KiB hold two calls' inputs and outputs
    timer = _timing.Timer(lambda x: x * 2, pool, sample_s=0.05, max_calls=3, memory=1 << 30)
    timer.prepare(warmup=0)
    assert timer.calls == 3


def test_summary_statistics():
    one_run = _timing.summarize([[0.001, 0.003, 0.002]])
    assert one_run["median_ms"] == pytest.approx(2.0)
    assert one_run["spread_ms"] == pytest.approx([1.0, 3.0])  # over the samples
    assert one_run["spread_over"] == "samples"
    three = _timing.summarize([[0.001, 0.002], [0.004, 0.004], [0.003, 0.003]])
    assert [r["median_ms"] for r in three["runs"]] == pytest.approx([1.5, 4.0, 3.0])
    assert three["median_ms"] == pytest.approx(3.0)  # median of the run medians
    assert three["spread_ms"] == pytest.approx([1.5, 4.0])  # over the runs' medians
    assert three["min_ms"] == pytest.approx(1.0)

    ours = _timing.summarize([[0.001, 0.002]])
    base = _timing.summarize([[0.004, 0.004]])
    s = _timing.speedup(ours, base)
    assert s["speedup"] == pytest.approx(4.0 / 1.5)
    assert s["speedup_spread"] == pytest.approx([2.0, 4.0])  # paired samples: 4/2, 4/1
    ours = _timing.summarize([[0.001], [0.002], [0.001]])
    base = _timing.summarize([[0.004], [0.004], [0.005]])
    s = _timing.speedup(ours, base)
    assert s["speedup_runs"] == pytest.approx([4.0, 2.0, 5.0])
    assert s["speedup"] == pytest.approx(4.0) and s["speedup_spread"] == pytest.approx([2, 5])


_TRACE = """
planes {
  id: 1
  name: "/device:GPU:0"
  lines { id: 7 name: "Stream #7(Kernel)" timestamp_ns: 1000
    events { metadata_id: 1 offset_ps: 0 duration_ps: 5000000 }
    events { metadata_id: 2 offset_ps: 6000000 duration_ps: 1000000 }
    events { metadata_id: 1 offset_ps: 8000000 duration_ps: 5000000 }
  }
  lines { id: 9 name: "Stream #9(MemcpyD2D)" timestamp_ns: 1000
    events { metadata_id: 3 offset_ps: 12000000 duration_ps: 2000000 }
  }
  lines { id: 8 name: "XLA Ops" timestamp_ns: 1000
    events { metadata_id: 2 offset_ps: 0 duration_ps: 50000000 }
  }
  event_metadata { key: 1 value { id: 1 name: "void gna::sm90::fwd_kernel<128>(Params)" } }
  event_metadata { key: 2 value { id: 2 name: "loop_transpose_fusion" } }
  event_metadata { key: 3 value { id: 3 name: "MemcpyD2D" } }
}
planes { id: 2 name: "/host:CPU" }
"""


def test_kernel_trace_sums_the_device_work_per_call():
    data = jax.profiler.ProfileData.from_text_proto(_TRACE)
    events = _kernel_trace.device_events(data)
    assert len(events) == 4  # the stream lines only: "XLA Ops" is not device work
    times = _kernel_trace.summarize(events, calls=2)
    # Busy 1-6, 7-8, 9-15 us (the copy overlaps the second kernel by 1 us): 12 us for 2 calls.
    assert times.busy_ms == pytest.approx(0.006)
    assert times.own_ms(_kernel_trace.OWN_KERNELS["gna"]) == pytest.approx(0.005)
    assert times.own_ms(_kernel_trace.OWN_KERNELS["cudnn"]) is None
    names = [k["name"] for k in times.kernels]
    assert names[0].startswith("void gna::") and set(names[1:]) == {
        "loop_transpose_fusion",
        "MemcpyD2D",
    }
    assert times.kernels[0]["launches_per_call"] == 1.0
    as_json = times.json(_kernel_trace.OWN_KERNELS["gna"])
    assert [k["own"] for k in as_json["kernels"]] == [True, False, False]


def test_kernel_time_comes_from_the_last_dispatch_of_a_sustained_sample():
    """Only the last dispatch counts: the first ones run at the clock the idle gap left."""
    E = _kernel_trace.Event
    # Three dispatches of the same two kernels; the first is faster (a boosted clock).
    events = [
        E("void gna::k", 0, 4000), E("copy", 4000, 1000),
        E("void gna::k", 6000, 5000), E("copy", 11000, 1000),
        E("void gna::k", 13000, 5000), E("copy", 18000, 1000),
    ]  # fmt: skip
    last = _kernel_trace.last_dispatch(events, 3)
    assert [e.start_ns for e in last] == [13000, 18000]
    times = _kernel_trace.summarize(last, calls=1)
    assert times.own_ms(_kernel_trace.OWN_KERNELS["gna"]) == pytest.approx(0.005)
    # A count the events do not divide into: every dispatch is kept (the caller averages).
    assert _kernel_trace.last_dispatch(events[:5], 3) == events[:5]
    assert _kernel_trace.last_dispatch(events, 1) == events


def test_kernel_trace_without_a_gpu_says_why_instead_of_failing(monkeypatch):
    host_only = jax.profiler.ProfileData.from_text_proto('planes { id: 2 name: "/host:CPU" }')
    assert _kernel_trace.summarize(_kernel_trace.device_events(host_only), 1) == (
        "no GPU in the trace"
    )
    empty = jax.profiler.ProfileData.from_text_proto('planes { id: 1 name: "/device:GPU:0" }')
    assert "no device events" in _kernel_trace.summarize(_kernel_trace.device_events(empty), 1)

    f = jax.jit(lambda x: x @ x)
    x = jnp.ones((16, 16))
    assert _kernel_trace.trace_calls(lambda: f(x), 1) == "no GPU in the trace"  # a real trace

    def broken_trace(log_dir):
        raise RuntimeError("profiler already running\nmore")

    monkeypatch.setattr(jax.profiler, "trace", broken_trace)
    reason = _kernel_trace.trace_calls(lambda: f(x), 1)
    assert reason == "trace failed: RuntimeError: profiler already running"


def test_profile_rows_get_the_kernel_time_and_the_overhead(monkeypatch):
    times = _kernel_trace.summarize(
        _kernel_trace.device_events(jax.profiler.ProfileData.from_text_proto(_TRACE)), calls=2
    )
    timer = type("T", (), {"dispatch": None, "calls": 2, "dispatches": 3})()
    traced = []

    def trace_calls(dispatch, calls, dispatches):
        traced.append(dispatches)  # a sample's worth of dispatches
        return times

    monkeypatch.setattr(_kernel_trace, "trace_calls", trace_calls)
    row = {"median_ms": 0.010}
    profile._kernel_columns(row, timer, _kernel_trace.OWN_KERNELS["gna"])
    assert traced == [3]
    assert row["trace"] == "ok"
    assert row["kernel_ms"] == pytest.approx(0.005)
    assert row["overhead_ms"] == pytest.approx(0.005)
    assert row["device_busy_ms"] == pytest.approx(0.006)
    row = {"median_ms": 0.010}  # no cuDNN kernel in this trace: all device work stands in
    profile._kernel_columns(row, timer, _kernel_trace.OWN_KERNELS["cudnn"])
    assert row["kernel_ms"] == pytest.approx(0.006) and "all device work" in row["trace"]
    monkeypatch.setattr(_kernel_trace, "trace_calls", lambda dispatch, calls, dispatches: "no GPU")
    row = {"median_ms": 0.010}
    profile._kernel_columns(row, timer, _kernel_trace.OWN_KERNELS["gna"])
    assert row == {"median_ms": 0.010, "trace": "no GPU"}
