"""The profiler CLI (`python -m jax_gna.profile`) and the standard problem list (benchmarks)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _extension, profile

ROOT = pathlib.Path(__file__).resolve().parents[1]
HUNYUAN = "-i 30 48 80 -n 24 -d 128 -w 18 24 24 -s 16 8 8".split()
SMALL = "-i 12 10 -b 2 -n 4 --heads-kv 2 -d 16 -w 5 4 -s 2 1".split()
# Short samples: these tests check what is run and reported, not the times.
FAST = "--warmup 1 --iters 2 --sample-seconds 0.01 --max-calls 3".split()


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


@pytest.mark.parametrize(
    "extra", [[], ["--backprop"], ["--add-kv", "3", "--dtype", "fp32"], ["--repeats", "3"]]
)
def test_small_real_run(tmp_path, capsys, extra):
    impls = _usable_cpu_implementations()
    path = tmp_path / "run.json"
    argv = [*SMALL, "--implementation", ",".join(impls), *FAST]
    assert profile.main([*argv, *extra, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "speedup vs dense" in out and "dense (xla)" in out
    data = json.loads(path.read_text())
    repeats = 3 if "--repeats" in extra else 1
    assert data["method"] == dict(iters=2, repeats=repeats, warmup=1, sample_s=0.01, max_calls=3)
    assert [r["implementation"] for r in data["results"]] == impls
    for row in data["results"] + [data["dense"]]:
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["tflops"] > 0
        assert len(row["runs"]) == len(row["samples_ms"]) == repeats
        assert all(len(samples) == 2 for samples in row["samples_ms"])
        lo, hi = row["spread_ms"]
        assert lo <= row["median_ms"] <= hi
        assert row["spread_over"] == ("runs" if repeats > 1 else "samples")
        assert 1 <= row["calls_per_dispatch"] <= 3
        assert row["calls_per_sample"] == row["calls_per_dispatch"] * row["dispatches_per_sample"]
        assert row["trace"] == "n/a (no GPU)" and "kernel_ms" not in row
    dense_runs = [r["median_ms"] for r in data["dense"]["runs"]]
    for row in data["results"]:
        runs = [d / r["median_ms"] for d, r in zip(dense_runs, row["runs"])]
        assert row["speedup_runs"] == pytest.approx(runs)
        assert row["speedup"] == pytest.approx(np.median(runs))
        lo, hi = row["speedup_spread"]
        assert lo <= row["speedup"] <= hi
        assert "bound" not in row  # the simulator's bound is for the GPU kernels
    assert data["simulation_applies"] is False
    assert data["pass"] == ("forward + backward" if "--backprop" in extra else "forward")


def test_cpu_table_leaves_out_the_gpu_columns(capsys):
    impls = _usable_cpu_implementations()
    assert profile.main([*SMALL, "--implementation", impls[0], *FAST]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("implementation"))
    assert header.split()[:4] == ["implementation", "time", "(ms)", "speedup"]
    assert "sim bound" not in header and "tiles" not in header and "GFLOP/s" in header
    assert "kernel (ms)" in header
    row = next(line for line in out.splitlines() if line.startswith(impls[0] + " "))
    assert row.split().count("n/a") == 2  # kernel time and overhead: no GPU trace here
    assert "simulator: not shown" in out and "sim bound" not in out


def test_gpu_table_has_the_simulator_and_kernel_columns():
    row = dict(implementation="cuda", tiles="Q(8,16)/KV(8,16)", status="ok", median_ms=1.0,
               spread_ms=[0.9, 1.1], speedup=2.0, speedup_spread=[1.9, 2.1], bound=12.0,
               tflops=3.0, kernel_ms=0.9, overhead_ms=0.1, trace="ok", dispatches_per_sample=2,
               calls_per_dispatch=128)  # fmt: skip
    table = profile._results_table([row], on_gpu=True)
    header, _, cuda, *notes = table.splitlines()
    assert "sim bound" in header and "TFLOP/s" in header and "tiles" in header
    assert cuda.split() == ["cuda", "Q(8,16)/KV(8,16)", "1.000", "[0.9000-1.100]", "2.00x",
                            "[1.90-2.10]", "0.9000", "0.1000", "(10%)", "12.00x", "3"]  # fmt: skip
    assert notes == ["  cuda: a sample is 2 dispatches of 128 independent calls"]
    unread = dict(row, trace="trace failed: RuntimeError: no CUPTI")
    del unread["kernel_ms"], unread["overhead_ms"]
    table = profile._results_table([unread], on_gpu=True)
    assert "n/a" in table.splitlines()[2]
    assert "cuda: kernel time: trace failed: RuntimeError: no CUPTI" in table


def test_backprop_in_both_deterministic_modes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    path = tmp_path / "run.json"
    argv = [*SMALL, "--implementation", "xla", *FAST, "--iters", "1", "--backprop"]
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
               spread_ms=[1.0, 1.0], speedup=2.0, bound=12.0, tflops=3.0,
               dispatches_per_sample=1, calls_per_dispatch=1)  # fmt: skip
    dense = dict(implementation="dense (cudnn)", status="ok", median_ms=2.0,
                 spread_ms=[2.0, 2.0], speedup=1.0, tflops=6.0, dispatches_per_sample=1,
                 calls_per_dispatch=1)  # fmt: skip
    header, _, cuda, dense, *_ = profile._results_table([row, dense]).splitlines()
    assert header.split()[:2] == ["implementation", "tiles"]
    assert cuda.split()[:2] == ["cuda", "Q(8,16)/KV(8,16)"]
    assert dense.split()[2] == "-"  # "dense (cudnn)" is two words; dense has no tiles


def test_unavailable_implementation_is_reported_not_run(capsys):
    assert profile.main([*SMALL, "--implementation", "cuda", *FAST, "--no-dense"]) == 1
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
        (["-i", "16", "--dtype", "int8"], "--dtype"),
        (["-i", "16", "--dtype", "fp8", "--backprop"], "--dtype: fp8 is forward only"),
        (["-i", "16", "--suggest-strides", "3"], "only with --dry-run"),
        (["-i", "16", "--deterministic", "both"], "--deterministic: only with --backprop"),
        (["-i", "16", "--backprop", "--deterministic", "yes"], "--deterministic: invalid"),
        (["-i", "16", "--repeats", "0"], "--repeats: expected a positive integer"),
        (["-i", "16", "--sample-seconds", "0"], "--sample-seconds: expected a positive number"),
        (["-i", "16", "--sample-seconds", "x"], "--sample-seconds: expected a positive number"),
        (["-i", "16", "--max-calls", "0"], "--max-calls: expected a positive integer"),
    ],
)
def test_bad_arguments_exit_with_a_message_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        profile.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_fp8_is_timed_next_to_bf16_on_the_same_inputs_and_dense(tmp_path, capsys):
    path = tmp_path / "fp8.json"
    argv = [*SMALL, "--dtype", "fp8", "--add-kv", "3", "--implementation", "xla,cpu", *FAST]
    assert profile.main([*argv, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    rows = {r["implementation"]: r for r in data["results"]}
    assert list(rows) == ["xla fp8", "cpu fp8", "xla bf16", "cpu bf16"]
    assert rows["cpu fp8"]["status"].startswith("unavailable") and "not float8" in out
    for name in ("xla fp8", "xla bf16"):
        assert rows[name]["status"] == "ok" and rows[name]["speedup"] > 0
    assert data["dense"]["status"] == "ok" and data["dense"]["implementation"] == "dense (xla)"
    over = rows["xla fp8"]["over_bf16"]
    assert over["implementation"] == "xla bf16" and "over_bf16" not in rows["xla bf16"]
    medians = rows["xla bf16"]["median_ms"] / rows["xla fp8"]["median_ms"]
    assert over["speedup"] == pytest.approx(medians)
    assert over["speedup_spread"][0] <= over["speedup"] <= over["speedup_spread"][1]
    assert f"xla fp8: {over['speedup']:.2f}x [" in out and "over xla bf16" in out
    assert data["problem"]["dtype"] == "float8_e4m3fn"
    assert data["problem"]["input_dtype"] == "bfloat16"
    assert "float8_e4m3fn (from bfloat16, per-tensor scales" in out
    assert "dense baseline: XLA (no GPU: cuDNN needs one), on the bfloat16 inputs" in out


def test_fp8_inputs_are_the_bf16_ones_quantised_with_per_tensor_descales(monkeypatch):
    cfg = profile.parse_args([*SMALL, "--dtype", "fp8", "--add-kv", "2"])
    (fp8_suffix, fp8_pool), (bf16_suffix, bf16_pool) = profile._input_pools(cfg)
    assert (fp8_suffix, bf16_suffix) == (" fp8", " bf16")
    fp8_set, bf16_set = fp8_pool.take(2)[1], bf16_pool.take(2)[1]
    q8, k8, v8, do, ek8, ev8, descales = fp8_set
    assert do is None and bf16_set[3] is None
    assert all(x.dtype == jnp.float8_e4m3fn for x in (q8, k8, v8, ek8, ev8))
    assert all(d.shape == () and d.dtype == jnp.float32 for d in descales)
    assert bf16_set[0].dtype == jnp.bfloat16
    # Each quantised array times its descale is the bf16 one, to e4m3's rounding; the extra
    # tokens take the key's and value's descales.
    pairs = ((q8, 0, 0), (k8, 1, 1), (v8, 2, 2), (ek8, 1, 4), (ev8, 2, 5))
    for x8, which, index in pairs:
        source = np.asarray(bf16_set[index], np.float32)
        back = np.asarray(x8, np.float32) * float(descales[which])
        assert np.abs(back - source).max() <= 2.0**-4 * np.abs(source).max()
    seen = {}

    def fake_gna(q, k, v, kernel_size, **kw):
        seen.update(kw)
        return q

    monkeypatch.setattr(jax_gna, "gna", fake_gna)
    profile._gna_fn(cfg, "xla")(*fp8_set)
    assert [seen[n] for n in ("q_descale", "k_descale", "v_descale")] == list(descales)
    assert seen["additional_keys"] is ek8
    profile._gna_fn(cfg, "xla")(*bf16_set)
    assert seen["q_descale"] is None and seen["additional_keys"] is bf16_set[4]


def test_fp8_dry_run_lists_the_bf16_tile_configurations(capsys):
    assert profile.main([*HUNYUAN, "--dtype", "fp8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sm90 forward kernels, fp8 (the bf16 tile configurations), head dim 128" in out
    assert "Q(2,8,8)/KV(2,8,8) *" in out


def test_design_problems_summary_gives_fp8_over_bf16():
    row = dict(implementation="cuda fp8", status="ok", median_ms=1.0, spread_ms=[1.0, 1.0],
               tflops=900.0, over_bf16=dict(implementation="cuda bf16", speedup=1.5,
                                            speedup_spread=[1.4, 1.6]))  # fmt: skip
    assert _design_problems()._timed(row).endswith(", 1.50x [1.40-1.60] over cuda bf16")


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
    groups = {g: [p.name for p in dp.PROBLEMS if p.group == g] for g in dp.GROUPS}
    assert len(groups["standard"]) == 8  # 4 problems x (NA, GNA)
    assert groups["dense"] == ["flux-4k-dense", "1d-32k-dense", "1d-8k-dense", "1d-64k-dense"]
    assert len(groups["dilation"]) == 8 and all("dilation" in n for n in groups["dilation"])
    for p in dp.PROBLEMS:
        cfg = profile.parse_args(p.argv())
        assert cfg.problem.shape == p.input_size and cfg.dim == 128
        if p.group == "dense":
            assert cfg.problem.kernel_size == p.input_size
        if p.group == "dilation":
            assert cfg.problem.dilation == p.dilation and p.dilation is not None
    dilations = {(p.input_size, p.dilation[0]) for p in dp.PROBLEMS if p.group == "dilation"}
    assert dilations == {
        *(((128, 128), d) for d in (1, 4)),
        *(((256, 256), d) for d in (1, 4, 16)),
        *(((32768,), d) for d in (1, 8, 64)),
    }


def test_design_problems_group_and_only_select(capsys):
    dp = _design_problems()
    assert dp.main(["--dry-run", "--group", "dilation", "--only", "1d"]) == 0
    summary = capsys.readouterr().out.split("=== summary")[1]
    assert [line.split()[0] for line in summary.splitlines()[3:]] == [
        "dilation-1d-32k-d1", "dilation-1d-32k-d8", "dilation-1d-32k-d64"
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        dp.main(["--dry-run", "--group", "dense", "--only", "hunyuan"])
    assert "no problem of group dense" in capsys.readouterr().err


def test_design_problems_real_run_reports_medians_spreads_and_markdown(
    tmp_path, capsys, monkeypatch
):
    dp = _design_problems()
    tiny = dp.DesignProblem("tiny-na", (12, 10), 2, (5, 4), (2, 1), dim=16)
    monkeypatch.setattr(dp, "PROBLEMS", (tiny,))
    path = tmp_path / "all.json"
    argv = ["--implementation", "xla", *FAST, "--repeats", "2", "--json", str(path)]
    assert dp.main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads(path.read_text())["tiny-na"]
    row = data["results"][0]
    assert row["status"] == "ok" and len(row["runs"]) == 2
    summary = out.split("=== summary")[1].split("=== the same as Markdown")[0]
    assert f"xla {row['speedup']:.2f}x [" in summary and "dense (xla)" in summary
    table = out.split("=== the same as Markdown")[1].strip().splitlines()[1:]
    assert table[0] == dp.MARKDOWN_HEADER
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:3] == ["tiny-na", "forward", "xla"]
    assert cells[4] == "dense (xla)" and cells[7:9] == ["n/a", "n/a"]  # no GPU: no trace


def test_design_problems_dry_run_summary(capsys):
    dp = _design_problems()
    assert dp.main(["--dry-run", "--only", "1d-32k"]) == 0
    out = capsys.readouterr().out
    summary = out.split("=== summary")[1]
    assert "1d-32k-na" in summary and "15.06x" in summary
    assert "1d-32k-gna" in summary and "16.00x" in summary
