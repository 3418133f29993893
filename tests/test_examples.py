"""The examples in their reduced (--quick) modes, with assertions on what they compute."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_digits_quick_lowers_the_loss_and_beats_chance():
    result = _load("train_digits").main(["--quick"])
    losses = np.asarray(result["losses"])
    assert result["steps"] == len(losses) == 30
    assert np.all(np.isfinite(losses))
    assert losses[-5:].mean() < 0.8 * losses[:5].mean(), losses
    assert result["accuracy"] > 0.3, result["accuracy"]  # chance is 0.1


def test_video_inference_quick_runs_both_models_on_the_latent():
    result = _load("video_inference").main(["--quick"])
    assert list(result["results"]) == ["gna", "dense"]
    for attention in ("gna", "dense"):
        run = result["results"][attention]
        assert run["out"].shape == result["latent_shape"]
        assert np.all(np.isfinite(run["out"]))
        assert run["seconds"] > 0 and run["status"] == "ok"
        assert len(run["samples_ms"][0]) == result["method"]["iters"]
        assert 1 <= run["calls_per_dispatch"] <= 2  # the quick shape's cap
    assert list(result["speedups"]) == ["forward"]
    s = result["speedups"]["forward"]
    gna, dense = result["results"]["gna"], result["results"]["dense"]
    assert s["speedup"] == pytest.approx(dense["median_ms"] / gna["median_ms"])


def test_video_inference_times_training_steps_too():
    video = _load("video_inference")
    result = video.main(["--quick", "--train", "--iters", "1"])
    assert list(result["results"]) == ["gna", "gna train", "dense", "dense train"]
    assert all(r["status"] == "ok" for r in result["results"].values())
    assert list(result["speedups"]) == ["forward", "training step"]


def test_video_training_step_updates_the_parameters_and_returns_the_loss():
    video = _load("video_inference")
    cfg = video.SHAPES["quick"]
    model = video.build(cfg, "gna")
    optimizer = video.optax.adam(1e-2)
    params = video.nnx.state(model, video.nnx.Param)
    latent, text = video.inputs(cfg, np.float32)
    step = jax.jit(video.train_step_fn(model, optimizer))
    new_params, _, loss = step(params, optimizer.init(params), latent, text, latent)
    assert np.isfinite(loss) and loss > 0
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), params, new_params)
    assert all(jax.tree.leaves(changed))


def test_video_models_agree_when_the_window_covers_the_grid():
    video = _load("video_inference")
    cfg = dict(video.SHAPES["quick"], window=video.SHAPES["quick"]["grid"], stride=1)
    latent, text = video.inputs(cfg, np.float32)
    gna, dense = (video.build(cfg, attention) for attention in ("gna", "dense"))
    params = [video.nnx.to_pure_dict(video.nnx.state(m, video.nnx.Param)) for m in (gna, dense)]
    jax.tree.map(np.testing.assert_array_equal, *params)  # same seed, same parameters
    np.testing.assert_allclose(gna(latent, text), dense(latent, text), rtol=1e-4, atol=1e-4)


def test_compare_implementations_quick_passes_for_every_usable_implementation():
    compare = _load("compare_implementations")
    result = compare.main(["--quick"])
    checked = {(case, dtype, impl) for case, dtype, impl in result["checked"]}
    for case in compare.QUICK:
        for dtype in ("float32", "bfloat16"):
            assert (case, dtype, "xla") in checked


def test_compare_implementations_catches_a_wrong_implementation(monkeypatch):
    compare = _load("compare_implementations")
    case = compare.CASES["2d strided"]
    inputs = compare.make_inputs(case, np.float32)
    real_gna = compare.jax_gna.gna

    def off_by_a_little(*args, **kwargs):
        return real_gna(*args, **kwargs) * 1.001

    monkeypatch.setattr(compare.jax_gna, "gna", off_by_a_little)
    with pytest.raises(AssertionError):
        compare.check_implementation("xla", inputs, case["options"])
