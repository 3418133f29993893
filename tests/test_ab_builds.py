"""benchmarks/ab_builds.py: variant specs, the FP8 smoke switch and the summary (no build)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _ab():
    if "ab_builds" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "ab_builds", ROOT / "benchmarks" / "ab_builds.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["ab_builds"] = module
        spec.loader.exec_module(module)
    return sys.modules["ab_builds"]


def test_variants_patches_and_cmake_args(tmp_path):
    ab = _ab()
    patch = tmp_path / "x.patch"
    patch.write_text("")
    v = ab.parse_variants(["base", f"new:{patch}"], ["new=-DFOO=1", "new=-DBAR=2"])
    assert v["base"] == {"patch": None, "cmake": [], "env": {}}
    assert v["new"] == {"patch": patch.resolve(), "cmake": ["-DFOO=1", "-DBAR=2"], "env": {}}
    v = ab.parse_variants(["a", "b"], [], ["b=GNA_X=1", "b=GNA_Y=a=b"])
    assert v["a"]["env"] == {} and v["b"]["env"] == {"GNA_X": "1", "GNA_Y": "a=b"}
    for specs, args, envs, message in [
        (["a", "a"], [], [], "unique"),
        (["a b"], [], [], "unique"),
        ([f"a:{tmp_path / 'missing.patch'}"], [], [], "no patch file"),
        (["a"], ["b=-DX=1"], [], "NAME a --variant"),
        (["a"], ["-DX=1"], [], "NAME a --variant"),
        (["a"], [], ["b=X=1"], "NAME=VAR=VALUE"),
        (["a"], [], ["a=X"], "NAME=VAR=VALUE"),
        (["a"], [], ["a=1X=1"], "NAME=VAR=VALUE"),
    ]:
        with pytest.raises(ValueError, match=message):
            ab.parse_variants(specs, args, envs)


def test_variants_that_differ_only_in_their_environment_share_a_build(tmp_path):
    ab = _ab()
    patch = tmp_path / "x.patch"
    patch.write_text("")
    v = ab.parse_variants(
        ["a", "a_env", "k", "k_env", f"p:{patch}", f"p_env:{patch}"],
        ["k=-DX=1", "k_env=-DX=1"],
        ["a_env=V=1", "k_env=V=1", "p_env=V=1"],
    )
    assert ab.shared_builds(v) == {
        "a": "a", "a_env": "a", "k": "k", "k_env": "k", "p": "p", "p_env": "p"
    }  # fmt: skip


def test_fp8_kernels_join_the_smoke_set():
    ab = _ab()
    table = (ROOT / "jax_gna" / "_kernel_table.py").read_text()
    switched = ab.fp8_in_smoke(table)
    assert "smoke=False," in table and "smoke=False," not in switched
    assert switched.count("smoke=True,") == table.count("smoke=False,") + table.count("smoke=True,")
    with pytest.raises(RuntimeError, match="smoke=False"):
        ab.fp8_in_smoke(switched)


def test_fp16_kernels_join_the_smoke_set():
    """The switched table's smoke set holds the bf16 kernels and the fp16 ones of the same head
    dim, forward and backward, and nothing else new (kernels() of both texts, compared)."""
    ab = _ab()
    table = (ROOT / "jax_gna" / "_kernel_table.py").read_text()

    def smoke(text: str) -> set:
        ns: dict = {}
        exec(compile(text, "_kernel_table.py", "exec"), ns)  # noqa: S102 - our own table
        # (arch, direction, dtype, head dim, rank, config) of each smoke kernel
        return {(k.arch, k.direction, k.dtype, k.head_dim, k.rank, k.config)
                for k in ns["kernels"]() if k.smoke}  # fmt: skip

    before, after = smoke(table), smoke(ab.fp16_in_smoke(table))
    added = after - before
    assert before < after and added
    assert {(k[0], k[2], k[3]) for k in added} == {("sm90", "float16", 128)}
    assert {k[1] for k in added} == {"fwd", "bwd"}
    with pytest.raises(RuntimeError, match="with-fp16"):
        ab.fp16_in_smoke(ab.fp16_in_smoke(table))


def _result(ms: dict[str, float], dense: float | None) -> dict:
    """A profiler result as `jax_gna.profile` writes it (speedups only where dense ran)."""
    rows = [{"implementation": k, "median_ms": v, **({"speedup": dense / v} if dense else {})}
            for k, v in ms.items()]  # fmt: skip
    rows.append({"implementation": "xla", "median_ms": "unavailable"})
    return {"results": rows, "dense": {"median_ms": dense, "speedup": 1.0} if dense else None}


def test_summary_medians_spreads_and_speedups():
    ab = _ab()
    runs = {
        "hunyuan-gna": {
            "m": [_result({"cuda": 20.0}, 200.0), _result({"cuda": 22.0}, 198.0)],
            "p": [_result({"cuda": 10.0}, 100.0)],
        }
    }
    lines = ab.summary(runs).splitlines()
    assert lines[0].split() == ["problem", "row", "variant", "ms", "over", "dense"]
    by = {(line.split()[1], line.split()[2]): line.split()[3:] for line in lines[1:]}
    assert by[("cuda", "m")] == ["21.000", "[20.000-22.000]", "9.50x"]  # median of 10x, 9x
    assert by[("cuda", "p")] == ["10.000", "[10.000-10.000]", "10.00x"]
    assert by[("dense", "m")] == ["199.000", "[198.000-200.000]", "1.00x"]
    assert ("xla", "m") not in by  # rows without a time are left out
    assert ab.rows(_result({"cuda": 5.0}, None)) == {"cuda": (5.0, None)}
    short = ab.summary({"1d": {"m": [_result({"cuda": 0.0687}, 0.877)]}}).splitlines()[1]
    assert short.split()[3:5] == ["0.0687", "[0.0687-0.0687]"]  # sub-ms times keep 4 decimals


def test_cli_refuses_bad_variants_and_unknown_problems(capsys):
    ab = _ab()
    with pytest.raises(SystemExit):
        ab.main(["--variant", "a", "--variant", "a", "--problems", "hunyuan-gna"])
    assert "unique" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ab.main(["--variant", "a", "--problems", "no-such-problem"])
    assert "invalid choice" in capsys.readouterr().err


def test_profile_once_runs_the_profiler_on_the_given_tree(tmp_path):
    ab = _ab()
    problem = {p.name: p for p in ab._design_problems().PROBLEMS}["1d-32k-gna"]
    result = ab.profile_once(ROOT, problem, ["--dry-run"], tmp_path / "r.json")
    assert result["problem"]["input_size"] == [32768] and ab.rows(result) == {}


def test_profile_once_runs_with_the_variant_environment(tmp_path, monkeypatch):
    ab = _ab()
    problem = {p.name: p for p in ab._design_problems().PROBLEMS}["1d-32k-gna"]
    seen = {}

    def fake_run(cmd, cwd, env, check, stdout):
        seen.update(env)
        pathlib.Path(cmd[cmd.index("--json") + 1]).write_text("{}")

    monkeypatch.setattr(ab.subprocess, "run", fake_run)
    assert ab.profile_once(ROOT, problem, [], tmp_path / "r.json", {"GNA_X": "1"}) == {}
    assert seen["GNA_X"] == "1" and seen["PYTHONPATH"] == str(ROOT)


def test_run_tests_reports_pytest_last_line_or_the_failure(tmp_path):
    ab = _ab()
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    (tmp_path / "test_bad.py").write_text("def test_bad():\n    assert False\n")
    assert "1 passed" in ab.run_tests(tmp_path, ["test_ok.py"], 1, tmp_path / "ok.log")
    # A marker expression selects: the failing test is not run.
    marked = "import pytest\n\n@pytest.mark.slow\ndef test_slow_bad():\n    assert False\n"
    (tmp_path / "test_marked.py").write_text(marked)
    ok = ab.run_tests(tmp_path, ["test_ok.py", "test_marked.py"], 1, tmp_path / "m.log", "not slow")
    assert "1 passed, 1 deselected" in ok, ok
    line = ab.run_tests(tmp_path, ["test_bad.py"], 1, tmp_path / "bad.log")
    assert line.startswith("FAILED (exit 1)") and "1 failed" in line and "bad.log" in line
    # The environment reaches the tests.
    (tmp_path / "test_env.py").write_text(
        "import os\n\ndef test_env():\n    assert os.environ['GNA_AB_PROBE'] == '7'\n"
    )
    ok = ab.run_tests(tmp_path, ["test_env.py"], 1, tmp_path / "e.log", env={"GNA_AB_PROBE": "7"})
    assert "1 passed" in ok, ok


def test_check_import_refuses_a_tree_that_python_would_not_import(tmp_path):
    """Where jax_gna is installed in editable mode (as the README installs it), its import hook
    wins over PYTHONPATH, and timing `tmp_path` would time the installed build instead."""
    ab = _ab()
    (tmp_path / "jax_gna").mkdir()
    (tmp_path / "jax_gna" / "__init__.py").write_text("")
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('jax_gna').origin)"],
        env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    if pathlib.Path(probe.stdout.strip()).resolve().is_relative_to(tmp_path.resolve()):
        ab.check_import(tmp_path)
    else:
        with pytest.raises(RuntimeError, match="editable mode"):
            ab.check_import(tmp_path)


def test_cli_refuses_a_work_folder_inside_the_tree(capsys):
    with pytest.raises(SystemExit):
        _ab().main(["--variant", "a", "--problems", "hunyuan-gna", "--work", str(ROOT / "ab")])
    assert "must lie outside" in capsys.readouterr().err
    assert not (ROOT / "ab").exists()


def test_reuse_keeps_a_build_of_the_same_sources_and_options(tmp_path, monkeypatch):
    ab = _ab()
    tree = tmp_path / "tree"
    (tree / "jax_gna").mkdir(parents=True)
    (tree / "jax_gna" / "a.py").write_text("x = 1\n")
    (tree / "jax_gna" / "_ext.so").write_text("built")  # never part of the sources
    monkeypatch.setattr(ab, "ROOT", tree)
    patch = tmp_path / "p.patch"
    patch.write_text("")
    variant = {"patch": patch, "cmake": []}
    args = ab.argparse.Namespace(with_fp8=False, with_fp16=False, kernel_set="smoke",
                                 archs="90a", cutlass_include=None, reuse=True)  # fmt: skip
    stamp = ab.build_stamp(variant, args)
    (tree / "jax_gna" / "_ext.so").write_text("rebuilt")
    assert ab.build_stamp(variant, args) == stamp
    for change in (
        lambda: (tree / "jax_gna" / "a.py").write_text("x = 2\n"),
        lambda: patch.write_text("diff"),
        lambda: variant["cmake"].append("-DX=1"),
        lambda: setattr(args, "with_fp8", True),
    ):
        change()
        assert ab.build_stamp(variant, args) != stamp
        stamp = ab.build_stamp(variant, args)
    work = tmp_path / "work"
    (work / "v").mkdir(parents=True)
    (work / "v.stamp").write_text(stamp)
    # The stamp matches: the copy is returned as it is, nothing is copied or built.
    assert ab.build("v", variant, work, args, jobs=1) == work / "v"
    assert not any((work / "v").iterdir())
