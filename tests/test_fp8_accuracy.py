"""How accurate FP8 attention is on activations like a diffusion transformer's
(`tests/fp8_activations.py`: outlier channels, heads far louder than others), with per-tensor
and per-head scales (`jax_gna.quantize_fp8`), against float32 attention on the original,
unquantised inputs. Also the rules of `quantize_fp8`.

Bound. Rounding to float8_e4m3fn (3 mantissa bits, to nearest) moves a value by at most half a
step: 2^-4 of its binade where it is normal, and 2^-10 of the descale where it is subnormal
(more than 448 / 2^-6 = 2^14.8 below the amax that set the scale) or rounds to zero.
Worst-case sums of those roundings are far too loose to test anything (they assume every
rounding goes the same way), so the test uses their statistics instead: with the roundings
independent and uniform within each element's half step, the error of each output element is,
to first order, a sum of many independent terms whose variance follows from the inputs
(`fp8_activations.error_std`). Every element must be within 8 predicted standard deviations
(a Gaussian exceeds that with probability 1e-15) and every head's mean error within 1.2 times
its mean predicted standard deviation (a Gaussian's is 0.8 times). The model predicts the
measured mean error to within about 20% here, and it applies unchanged to per-tensor and
per-head scales: it is the half steps that differ. With one per-tensor scale a head whose
values are ~1e5 below the loudest head's is quantised with subnormal steps, and its error
relative to its own values grows tenfold; per-head scales quantise every head on its own amax.

``python -m tests.test_fp8_accuracy`` prints the measured errors as the table in docs/fp8.md.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import reference
from tests import fp8_activations as acts

FP8 = jnp.float8_e4m3fn


def _attend(implementation: str, q, k, v, **descales):
    fn = reference.gna if implementation == "reference" else jax_gna.gna
    kwargs = {} if implementation == "reference" else dict(implementation=implementation)
    return fn(q, k, v, acts.KERNEL_SIZE, out_dtype=jnp.float32, **descales, **kwargs)


def _run(scenario: str, per_head: bool, implementation: str = "xla"):
    """``(got, want, (q, k, v), descales)``: FP8 attention on scenario ``scenario`` quantised
    with per-head or per-tensor scales, and float32 attention on the original inputs."""
    q, k, v = acts.activations(scenario)
    want = _attend("reference", q, k, v)
    (q8, qd), (k8, kd), (v8, vd) = (
        jax_gna.quantize_fp8(x, FP8, per_head=per_head) for x in (q, k, v)
    )
    got = _attend(implementation, q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd)
    return got, want, (q, k, v), (qd, kd, vd)


def measure(scenario: str, per_head: bool) -> dict[str, float]:
    """The errors (`fp8_activations.errors`) of FP8 attention (``xla``) on ``scenario``."""
    got, want, (_, _, v), _ = _run(scenario, per_head)
    return acts.errors(got, want, v)


@pytest.fixture(autouse=True, scope="module")
def _exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.mark.parametrize("implementation", ["reference", "xla"])
@pytest.mark.parametrize("per_head", [False, True], ids=["per_tensor", "per_head"])
@pytest.mark.parametrize("scenario", acts.SCENARIOS)
def test_fp8_error_is_within_the_e4m3_error_model(scenario, per_head, implementation):
    got, want, qkv, descales = _run(scenario, per_head, implementation)
    acts.check_error_model(got, want, *qkv, descales, FP8)


def test_the_error_model_catches_a_wrong_descale():
    """The check can fail: one head's value descale off by 2^-3 (one e4m3 step) breaks it."""
    got, want, (q, k, v), (qd, kd, vd) = _run("plain", per_head=True)
    (q8, _), (k8, _), (v8, _) = (jax_gna.quantize_fp8(x, FP8, per_head=True) for x in (q, k, v))
    wrong = vd.at[3].multiply(1 + 2.0**-3)
    bad = _attend("xla", q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=wrong)
    with pytest.raises(AssertionError, match="sigma"):
        acts.check_error_model(bad, want, q, k, v, (qd, kd, vd), FP8)


def test_per_head_scales_keep_quiet_heads_accurate():
    """Heads' amax ~1e4 apart ("outliers"): per-head scales lose less in the quiet heads.
    ~1e5 apart ("extreme"), past e4m3's normal range: one per-tensor scale makes the quiet
    heads' error several times larger; per-head scales keep it where it is on plain inputs."""
    plain = measure("plain", per_head=True)
    for scenario, factor in (("outliers", 1.0), ("extreme", 4.0)):
        per_tensor, per_head = (measure(scenario, per_head=p) for p in (False, True))
        assert per_tensor["head_mean"] > factor * per_head["head_mean"], (per_head, per_tensor)
        assert per_head["head_mean"] <= 1.2 * plain["head_mean"], (per_head, plain)


# -- quantize_fp8 -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2], ids=lambda d: d.dtype.name)
@pytest.mark.parametrize("per_head", [False, True])
def test_quantize_fp8_maps_the_amax_to_the_largest_float8(dtype, per_head):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, 3, 8)) * np.array([1e-3, 1.0, 1e3])[:, None])
    x8, descale = jax_gna.quantize_fp8(x, dtype, per_head=per_head)
    assert x8.dtype == dtype and x8.shape == x.shape and descale.dtype == jnp.float32
    largest = float(jnp.finfo(dtype).max)
    back = np.asarray(x8.astype(jnp.float32), np.float64)
    amax = np.abs(np.asarray(x, np.float64))
    if per_head:
        assert descale.shape == (3,)
        np.testing.assert_allclose(descale, amax.max(axis=(0, 1, 3)) / largest, rtol=1e-6)
        back = back * np.asarray(descale, np.float64)[:, None]
        assert np.all(np.abs(x8.astype(jnp.float32)).max(axis=(0, 1, 3)) == largest)
    else:
        assert descale.shape == ()
        np.testing.assert_allclose(descale, amax.max() / largest, rtol=1e-6)
        back = back * float(descale)
    # Round to nearest: within half a step (2^-4 of the value in e4m3, 2^-3 in e5m2) where
    # normal; per tensor the heads 1e6 below the amax are subnormal or zero.
    mantissa = jnp.finfo(dtype).nmant
    normal = float(jnp.finfo(dtype).smallest_normal) * (
        np.asarray(descale)[:, None] if per_head else float(descale)
    )
    ok = np.abs(np.asarray(x)) >= normal
    np.testing.assert_array_less(
        np.abs(back - np.asarray(x))[ok], 2.0 ** -(mantissa + 1) * amax[ok] * (1 + 1e-6)
    )
    assert ok.mean() > (0.95 if per_head else 0.6)


def test_quantize_fp8_of_a_key_and_its_extra_tokens_shares_one_scale():
    rng = np.random.default_rng(1)
    k = jnp.asarray(rng.standard_normal((9, 2, 8)), jnp.float32)
    extra = jnp.asarray(rng.standard_normal((3, 2, 8)) * 10, jnp.bfloat16)
    for per_head in (False, True):
        (k8, none, e8), kd = jax_gna.quantize_fp8((k, None, extra), per_head=per_head)
        assert none is None and k8.dtype == e8.dtype == FP8
        _, alone = jax_gna.quantize_fp8(extra, per_head=per_head)
        np.testing.assert_array_equal(kd, alone)  # the extra tokens hold the amax
    [k8], kd = jax_gna.quantize_fp8([k])
    assert isinstance(k8, jax.Array) and kd.shape == ()


def test_quantize_fp8_of_zeros_has_descale_one_and_runs_under_jit():
    x = jnp.zeros((4, 2, 8)).at[:, 1].set(3.0)
    x8, d = jax.jit(lambda x: jax_gna.quantize_fp8(x, per_head=True))(x)
    np.testing.assert_allclose(d, [1.0, 3.0 / 448], rtol=1e-6)
    np.testing.assert_array_equal(x8.astype(jnp.float32)[:, 1], 448.0)
    out = jax_gna.gna(x8, x8, x8, 3, q_descale=d, k_descale=d, v_descale=d)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(x), rtol=1e-2)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((jnp.ones((2, 4)), jnp.bfloat16), {}, TypeError, "`dtype` must be one of float8_e4m3fn"),
        ((jnp.ones((2, 4)), "int8"), {}, TypeError, "`dtype` must be one of"),
        ((jnp.ones((2, 4), jnp.int32),), {}, TypeError, "`x` must be floating point"),
        ((jnp.ones((2, 4)),), dict(per_head=1), TypeError, "`per_head` must be a bool"),
        ((jnp.ones((4,)),), dict(per_head=True), ValueError, r"\[\.\.\., heads, dim\]"),
        (((jnp.ones((5, 2, 4)), jnp.ones((3, 1, 4))),), dict(per_head=True), ValueError,
         r"same number of heads.*\(5, 2, 4\), \(3, 1, 4\)"),
        (((None, None),), {}, ValueError, "at least one array"),
    ],
)  # fmt: skip
def test_quantize_fp8_refuses_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        jax_gna.quantize_fp8(*args, **kwargs)


def main() -> int:
    """Print the measured errors (per tensor and per head, every scenario) as Markdown."""
    print("| activations | scales | max err / max\\|v\\| | mean err / max\\|v\\| "
          "| worst head: max / its max\\|v\\| | worst head: mean / its max\\|v\\| |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    with jax.default_matmul_precision("highest"):
        for scenario in acts.SCENARIOS:
            for per_head in (False, True):
                e = measure(scenario, per_head)
                cells = [scenario, "per head" if per_head else "per tensor"]
                cells += [f"{e[m]:.2e}" for m in ("max", "mean", "head_max", "head_mean")]
                print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
