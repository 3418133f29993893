"""The profiler CLI (`python -m jax_gna.profile`) and the DESIGN §8 problem list."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import jax_gna
from jax_gna import _extension, profile

ROOT = pathlib.Path(__file__).resolve().parents[1]
HUNYUAN = "-i 30 48 80 -n 24 -d 128 -w 18 24 24 -s 16 8 8".split()
SMALL = "-i 12 10 -b 2 -n 4 --heads-kv 2 -d 16 -w 5 4 -s 2 1".split()


def test_dry_run_lists_candidate_tiles_with_simulated_numbers(capsys):
    assert profile.main([*HUNYUAN, "--dry-run", "--suggest-strides", "3"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out
    assert "Q(2,8,8)/KV(2,8,8) *" in out  # the chosen configuration is marked
    assert "11.11x" in out
    assert "flattened" in out  # the 1-D tiling comparison
    assert "Pareto-improving strides" in out


def test_dry_run_json(tmp_path, capsys):
    path = tmp_path / "dry.json"
    profile.main([*HUNYUAN, "--dry-run", "--json", str(path)])
    data = json.loads(path.read_text())
    assert data["chosen"]["q_tile"] == [2, 8, 8]
    assert data["chosen"]["block_sparse"] is True
    assert data["chosen"]["bound"] == pytest.approx(11.11, abs=0.01)
    assert data["flattened"]["bound"] < 4


def test_dry_run_with_given_tiles_simulates_them(capsys):
    profile.main([*HUNYUAN, "--dry-run", "--q-tile", "4", "8", "8", "--kv-tile", "2", "8", "8"])
    out = capsys.readouterr().out
    assert "Q(4,8,8)/KV(2,8,8) *" in out
    assert "not a configuration the kernels implement" in out


def test_module_runs_as_a_script():
    r = subprocess.run(
        [sys.executable, "-m", "jax_gna.profile", "-i", "256", "256", "-w", "80", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Q(16,8)/KV(16,8) *" in r.stdout


def _usable_cpu_implementations() -> list[str]:
    import jax.numpy as jnp

    x = jnp.zeros((1, 8, 1, 8), jnp.float32)
    supported = jax_gna.supported_implementations(x, x, x, (3,))
    return [i for i in ("cpu", "xla") if supported[i] is None]


@pytest.mark.parametrize("extra", [[], ["--backprop"], ["--add-kv", "3", "--dtype", "fp32"]])
def test_small_real_run(tmp_path, capsys, extra):
    impls = _usable_cpu_implementations()
    path = tmp_path / "run.json"
    argv = [*SMALL, "--implementation", ",".join(impls), "--warmup", "1", "--iters", "2"]
    assert profile.main([*argv, *extra, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "speedup vs dense" in out and "dense (xla)" in out
    data = json.loads(path.read_text())
    assert [r["implementation"] for r in data["results"]] == impls
    for row in data["results"] + [data["dense"]]:
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["tflops"] > 0
    for row in data["results"]:
        assert row["speedup"] == pytest.approx(data["dense"]["median_ms"] / row["median_ms"])
        assert row["bound"] == data["simulation"]["token_bound"]
    assert data["pass"] == ("forward + backward" if "--backprop" in extra else "forward")


def test_backprop_in_both_deterministic_modes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    path = tmp_path / "run.json"
    argv = [*SMALL, "--implementation", "xla", "--warmup", "0", "--iters", "1", "--backprop"]
    assert profile.main([*argv, "--deterministic", "both", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    rows = {r["implementation"]: r for r in data["results"]}
    assert list(rows) == ["xla", "xla [deterministic]"]
    assert rows["xla"]["deterministic"] is False and rows["xla [deterministic]"]["deterministic"]
    assert all(r["status"] == "ok" for r in rows.values())
    assert data["problem"]["deterministic"] == [False, True]
    # auto: the XLA flag decides, and the row says which mode ran.
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=true")
    result = profile.run([*argv, "--no-dense"])
    assert [r["implementation"] for r in result["results"]] == ["xla [deterministic]"]


def test_deterministic_mode_reaches_gna(monkeypatch):
    seen = []

    def fake_gna(q, k, v, kernel_size, **kw):
        seen.append(kw["deterministic"])
        return q

    monkeypatch.setattr(jax_gna, "gna", fake_gna)
    cfg = profile.parse_args([*SMALL, "--backprop", "--deterministic", "both"])
    assert cfg.deterministic == (False, True)
    inputs = profile._inputs(cfg)
    for value in cfg.deterministic:
        profile._gna_fn(cfg, "xla", value)(*inputs)
    assert seen == [False, True]


def test_design_problems_summary_reports_the_deterministic_cost():
    rows = [
        dict(implementation="cuda", deterministic=False, status="ok", median_ms=10.0),
        dict(implementation="cuda [deterministic]", deterministic=True, status="ok",
             median_ms=11.5),
        dict(implementation="xla", deterministic=False, status="ok", median_ms=1.0),
    ]  # fmt: skip
    assert _design_problems()._deterministic_costs(rows) == ["cuda: deterministic +15%"]


def test_tile_flags_reach_the_cuda_implementation_only(monkeypatch):
    cfg = profile.parse_args([*SMALL, "--q-tile", "16", "8", "--kv-tile", "16", "8"])
    seen = {}

    def fake_gna(q, k, v, kernel_size, **kw):
        seen[kw["implementation"]] = (kw.get("q_tile_shape"), kw.get("kv_tile_shape"))
        return q

    monkeypatch.setattr(jax_gna, "gna", fake_gna)
    inputs = profile._inputs(cfg)
    for impl in ("cuda", None, "cpu", "xla", "reference"):
        profile._gna_fn(cfg, impl)(*inputs)
    tiles = ((16, 8), (16, 8))
    untiled = (None, None)
    assert seen == {"cuda": tiles, None: tiles, "cpu": untiled, "xla": untiled,
                    "reference": untiled}  # fmt: skip


@pytest.mark.skipif(
    _extension.ext is None or not _extension.ext.cuda_targets(),
    reason="this build has no CUDA kernels",
)
def test_table_says_which_tiles_the_cuda_implementation_runs():
    cfg = profile.parse_args("-i 32 48 -n 2 -d 128 -w 8 16 -s 8 16".split())
    q, k, v, *_ = profile._inputs(cfg)
    assert profile._cuda_tiles(cfg, q, k, v) == jax_gna.sim.TileConfig((8, 16), (8, 16))
    given = profile.parse_args("-i 32 48 -n 2 -d 128 -w 8 16 --q-tile 16 8 --kv-tile 16 8".split())
    assert profile._cuda_tiles(given, q, k, v) == jax_gna.sim.TileConfig((16, 8), (16, 8))
    row = dict(implementation="cuda", tiles="Q(8,16)/KV(8,16)", status="ok", median_ms=1.0,
               speedup=2.0, bound=12.0, tflops=3.0)  # fmt: skip
    table = profile._results_table([row, dict(implementation="dense (cudnn)", status="ok",
                                              median_ms=2.0, speedup=1.0, tflops=6.0)])  # fmt: skip
    header, _, cuda, dense = table.splitlines()
    assert header.split()[:2] == ["implementation", "tiles"]
    assert cuda.split()[:2] == ["cuda", "Q(8,16)/KV(8,16)"]
    assert dense.split()[2] == "-"


def test_unavailable_implementation_is_reported_not_run(capsys):
    assert profile.main([*SMALL, "--implementation", "cuda", "--iters", "1", "--no-dense"]) == 1
    out = capsys.readouterr().out
    assert "cuda: unavailable" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-i", "16", "16", "-w", "5", "5", "5"], "argument -w/--window: expected 1 or 2 values"),
        (["-i", "16", "-w", "5", "-s", "6"], "stride is -s/--stride"),
        (["-i", "16", "-w", "20"], "kernel_size is -w/--window"),
        (["-i", "16", "-n", "3", "--heads-kv", "2"], "-n/--heads"),
        (["-i", "16", "--implementation", "tpu"], "argument --implementation: unknown"),
        (["-i", "16", "-w", "4", "--q-tile", "8"], "--q-tile/--kv-tile: give both"),
        (["-i", "16", "16", "-w", "4", "--q-tile", "8", "--kv-tile", "8"], "--q-tile: expected 2"),
        (["-i", "1", "2", "3", "4"], "-i/--input-size: expected 1 to 3"),
        (["-i", "16", "-c", "maybe"], "-c/--causal"),
        (["-i", "16", "-d", "0"], "-d/--dim"),
        (["-i", "16", "--dtype", "fp8"], "--dtype"),
        (["-i", "16", "--suggest-strides", "3"], "only with --dry-run"),
        (["-i", "16", "--deterministic", "both"], "--deterministic: only with --backprop"),
        (["-i", "16", "--backprop", "--deterministic", "yes"], "--deterministic: invalid"),
    ],
)
def test_bad_arguments_exit_with_a_message_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        profile.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_causal_flag_forms():
    assert profile.parse_args(["-i", "8", "8", "-w", "3"]).problem.is_causal == (False, False)
    assert profile.parse_args(["-i", "8", "8", "-w", "3", "-c"]).problem.is_causal == (True, True)
    cfg = profile.parse_args(["-i", "8", "8", "-w", "3", "-c", "true", "0"])
    assert cfg.problem.is_causal == (True, False)


def _design_problems():
    """benchmarks/design_problems.py (not a package), imported by path once."""
    if "design_problems" not in sys.modules:
        path = ROOT / "benchmarks" / "design_problems.py"
        spec = importlib.util.spec_from_file_location("design_problems", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["design_problems"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["design_problems"]


def test_design_problems_are_valid_profiler_arguments():
    dp = _design_problems()
    assert len(dp.PROBLEMS) == 10  # DESIGN §8: 4 problems x (NA, GNA) + 2 dense
    for p in dp.PROBLEMS:
        cfg = profile.parse_args(p.argv())
        assert cfg.problem.shape == p.input_size and cfg.dim == 128


def test_design_problems_dry_run_summary(capsys):
    dp = _design_problems()
    assert dp.main(["--dry-run", "--only", "1d-32k"]) == 0
    out = capsys.readouterr().out
    summary = out.split("=== summary")[1]
    assert "1d-32k-na" in summary and "15.06x" in summary
    assert "1d-32k-gna" in summary and "16.00x" in summary


def test_interleaved_timing_reports_a_failure_and_times_the_rest():
    calls = {"flaky": 0}

    def ok(x):
        return x + 1

    def flaky(x):
        calls["flaky"] += 1
        if calls["flaky"] > 3:  # compile + 1 warm-up + 1 sample succeed, then it breaks
            raise RuntimeError("device lost\nsecond line")
        return x

    import jax.numpy as jnp

    progress = profile._Progress(0)
    got = profile._time_interleaved(
        {"ok": ok, "flaky": flaky, "broken": ValueError("no kernel")},
        (jnp.ones(3),),
        warmup=1,
        iters=4,
        progress=progress,
    )
    progress.close()
    assert got["ok"]["status"] == "ok" and got["ok"]["median_ms"] > 0
    assert got["flaky"]["status"] == "failed: RuntimeError: device lost"
    assert got["broken"]["status"] == "failed: ValueError: no kernel"


def test_short_forward_calls_are_chained_in_one_jit():
    import jax.numpy as jnp

    def f(q, k, v, ek, ev):  # an output of the query's shape: chainable
        return q * 0.5 + v

    op = profile._with_backprop(f, backprop=False, chainable=True)
    q, k, v = jnp.ones(4), jnp.zeros(4), jnp.full(4, 2.0)
    # Each call's query is the previous output: 1 -> 2.5 -> 3.25 -> 3.625.
    np.testing.assert_allclose(op.chained(3)(q, k, v, None, None, None), 3.625)
    assert profile._with_backprop(f, backprop=False, chainable=False).chained is None

    # Forward + backward: each call's query is the previous call's dQ, and every call's dK/dV
    # is an output (nothing is dead code).
    step = profile._with_backprop(f, backprop=True, chainable=True)
    out, dq, grads = step.chained(2)(q, k, v, jnp.ones(4), None, None)
    np.testing.assert_allclose(dq, 0.5)  # d/dq sum(do * (q / 2 + v)) = do / 2
    np.testing.assert_allclose(out, 0.5 * 0.5 + 2.0)  # the second call's query is dq = 0.5
    assert len(grads) == 2
    np.testing.assert_allclose(grads[0][1], 1.0)  # dv = do

    timer = profile._Timer(op, (q, k, v, None, None, None))
    progress = profile._Progress(0)
    timer.prepare(warmup=2, progress=progress)  # microsecond calls: chained
    timer.sample()
    got = timer.result()
    assert 1 < got["chained_calls"] <= profile._MAX_CHAIN
    assert got["calls_per_sample"] == timer.batch * got["chained_calls"]
    assert got["median_ms"] > 0
