"""The FP8 forward's polynomial 2^x (`cuda/sm90/kernel/fp8_exp2.cuh`, exp2_fma), emulated in
NumPy float32 with the header's own constants (read from the header, so the two cannot differ).

The softmax computes some of its exponentials with it (development knob GNA_SM90_FP8_FMA_EXP2),
so it must match what MUFU.EX2 gives the kernel where the kernel relies on it: a relative error
of ~1e-4 on the softmax's range, exactly 0 for -inf (masked scores; a row with no key keeps a
zero sum), +inf for huge arguments (the speculative softmax detects a stale max by its row sums),
NaN for NaN, and exact powers of two at integers.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

HEADER = pathlib.Path(__file__).resolve().parent.parent / "cuda/sm90/kernel/fp8_exp2.cuh"
F32 = np.float32


def _constants() -> dict[str, np.float32]:
    text = HEADER.read_text()
    found = re.findall(r"constexpr float (k\w+) = ([0-9.eE+-]+)f;", text)
    return {name: F32(value) for name, value in found}


C = _constants()


def _gpu(x: np.ndarray) -> np.ndarray:
    """A float32 result as the GPU gives it: every NaN is 0x7fffffff (the bit trick below
    shifts a NaN's mantissa into the exponent)."""
    x = np.array(x, dtype=F32)
    x.view(np.uint32)[np.isnan(x)] = 0x7FFFFFFF
    return x


def _fma(a, b, c):
    """float32 fma: the product is exact in float64 (2 x 24 bits), the sum rounds once in
    float64 and again to float32 (the double rounding is far below the tested errors)."""
    return _gpu((a.astype(np.float64) * b + np.float64(c)).astype(F32))


def exp2_fma(x) -> np.ndarray:
    """exp2_fma step by step, in float32 (bit operations on uint32)."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(invalid="ignore"):
        x = _gpu(np.minimum(np.maximum(x, F32(-127)), F32(128)))  # max.NaN, min.NaN
        # x + kExp2Round rounded down: kExp2Round + floor(x) (exact for |x| < 2^22)
        t = _gpu((np.float64(C["kExp2Round"]) + np.floor(x.astype(np.float64))).astype(F32))
        f = _gpu(x - _gpu(t - C["kExp2Round"]))
        p = _fma(np.full_like(f, C["kExp2C3"]), f, C["kExp2C2"])
        p = _fma(p, f, C["kExp2C1"])
        p = _fma(p, f, F32(1))
        scale = (t.view(np.uint32) << np.uint32(23)).view(F32)
        return _gpu(p * scale)


def test_constants_are_read():
    assert set(C) == {"kExp2Round", "kExp2C1", "kExp2C2", "kExp2C3"}
    assert C["kExp2Round"] == F32(1.5 * 2**23 + 127)


def test_relative_error_over_the_softmax_range():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            np.linspace(-126, 128, 2_000_001, endpoint=False, dtype=F32),
            rng.uniform(-126, 128, 1_000_000).astype(F32),
            rng.uniform(-1, 1, 1_000_000).astype(F32),
            np.nextafter(np.arange(-125, 128, dtype=F32), F32(-np.inf)),  # just below integers
        ]
    )
    got = exp2_fma(x).astype(np.float64)
    want = np.exp2(x.astype(np.float64))
    rel = got / want - 1
    assert np.all(np.isfinite(got))
    # the header's bound: 8.6e-5 (minimax on [0, 1] with p(0) = 1) plus float32 rounding
    assert np.max(np.abs(rel)) < 8.7e-5, np.max(np.abs(rel))
    # minimax: the error reaches its bound with both signs (a plain fit would not)
    assert np.max(rel) > 8.4e-5 and np.min(rel) < -8.4e-5


def test_monotone():
    x = np.linspace(-126, 128, 4_000_001, dtype=F32)
    assert np.all(np.diff(exp2_fma(x)) >= 0)


def test_integers_are_exact_powers_of_two():
    n = np.arange(-126, 128)
    assert np.array_equal(exp2_fma(n.astype(F32)), np.exp2(n).astype(F32))


def test_below_the_normal_range_and_minus_infinity():
    low = [-np.inf, -np.finfo(F32).max, -1e30, -(2.0**22), -1000, -128, -127.5, -127, -126.001]
    low = np.concatenate([low, np.linspace(-127, -126, 1001, endpoint=False)]).astype(F32)
    assert np.array_equal(exp2_fma(low).view(np.uint32), np.zeros(len(low), np.uint32))


@pytest.mark.parametrize("x", [128, 128.5, 200, 2.0**22, 1e30, np.finfo(F32).max, np.inf])
def test_large_arguments_give_infinity(x):
    assert exp2_fma(F32(x)) == np.inf


def test_just_below_128_is_finite():
    x = np.nextafter(F32(128), F32(0))
    got = exp2_fma(x)
    assert np.isfinite(got) and abs(float(got) / 2.0 ** float(x) - 1) < 8.7e-5


def test_nan_gives_nan():
    assert np.isnan(exp2_fma(F32(np.nan)))


def test_zero_gives_one():
    assert exp2_fma(F32(0)) == 1 and exp2_fma(F32(-0.0)) == 1
