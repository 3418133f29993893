"""benchmarks/training_check.py on the CPU: our CPU kernel trains like the reference, and the
verdict fails curves that disagree."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

from jax_gna import _extension

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "training_check.py"


def _training_check():
    """The script (not a package), imported by path once."""
    if "training_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("training_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["training_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["training_check"]


@pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))
def test_cpu_kernel_trains_like_the_reference(tmp_path, capsys):
    tc = _training_check()
    path = tmp_path / "training.json"
    argv = ["--implementation", "cpu", "--steps", "8", "--grid", "8", "--dim", "32"]
    code = tc.main([*argv, "--batch-size", "4", "--json", str(path)])
    data = json.loads(path.read_text())
    assert code == (0 if data["passed"] else 1)
    # 8 steps are too few to require learning; the curves must agree.
    assert data["checks"]["first_step"] and data["checks"]["curves"], capsys.readouterr().out
    losses = data["losses"]
    assert len(losses["ours"]) == len(losses["reference"]) == len(losses["control"]) == 8
    assert np.all(np.isfinite(losses["ours"]))
    # A float32 kernel: the forward agrees far within the bound, and the runs differ at all.
    assert data["first_step_rel_diff"] < 1e-3
    assert losses["ours"] != losses["control"]
    progress = capsys.readouterr().err  # one progress bar per run
    assert all(f"{i}/3 {run}" in progress for i, run in enumerate(RUNS, 1)), progress


RUNS = ("ours", "reference", "control")


def _curves(steps=200, seed=0):
    rng = np.random.default_rng(seed)
    ref = np.exp(-np.arange(steps) / 40) + 0.1 + 0.01 * rng.standard_normal(steps)
    control = ref * (1 + 0.002 * rng.standard_normal(steps))
    return ref, control


def test_verdict_passes_close_curves_and_fails_others():
    verdict = _training_check().verdict
    ref, control = _curves()
    close = ref * (1 + 0.01 * np.random.default_rng(1).standard_normal(len(ref)))
    result = verdict(close, ref, control)
    assert result["passed"], result
    assert result["allowed_smoothed_rel_diff"] == pytest.approx(0.05)  # the floor
    slower = np.exp(-np.arange(len(ref)) / 60) + 0.1  # learns, but a visibly other curve
    assert verdict(slower, ref, control)["checks"] == dict(
        first_step=True, curves=False, ours_learned=True, reference_learned=True
    )
    off_at_start = close.copy()
    off_at_start[0] *= 1.02
    assert not verdict(off_at_start, ref, control)["checks"]["first_step"]
    flat = np.full(len(ref), ref[0])
    assert not verdict(flat, ref, control)["checks"]["ours_learned"]
