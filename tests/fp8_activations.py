"""Attention inputs like a diffusion transformer's, the errors FP8 attention makes on them and
the error model that bounds them: shared by the CPU accuracy test (`tests/test_fp8_accuracy.py`)
and its GPU variant (`tests/gpu/test_cuda_fp8.py`).

A scenario is a 12x12 token grid, 8 heads of head dim 64 (one of the FP8 kernel's), window 5x5.
Most channels are N(0, 1). In the "loud" heads (2 of the 8) every channel is multiplied by
``head_gain`` and three channels of q/k (and three of v) by a further 20, 50 and 100, as
trained transformers grow a few outlier channels in a few heads. Each head's query is then
rescaled so that its scores ``scale * q . k`` have standard deviation 2 over all pairs, the
temperature of a moderately peaked softmax (unscaled outlier channels would make it one-hot).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from tests import oracle

SHAPE = (1, 12, 12, 8, 64)  # [batch, x, y, heads, head dim]
KERNEL_SIZE = (5, 5)
LOUD_HEADS = (2, 5)
QK_OUTLIER_CHANNELS = (3, 17, 41)
V_OUTLIER_CHANNELS = (12, 30, 50)
OUTLIER_GAINS = (20.0, 50.0, 100.0)
SCORE_STD = 2.0


@dataclasses.dataclass(frozen=True)
class Scenario:
    """How far the loud heads stand above the others (``head_gain``; with outlier channels
    when ``outliers``): their amax over the quiet heads' is about ``100 * head_gain``."""

    head_gain: float
    outliers: bool


SCENARIOS = {
    "plain": Scenario(head_gain=1.0, outliers=False),  # every head and channel N(0, 1)
    "outliers": Scenario(head_gain=100.0, outliers=True),  # amax ~1e4 x the quiet heads'
    "extreme": Scenario(head_gain=1000.0, outliers=True),  # ~1e5 x: past e4m3's normal range
}


def _gains(scenario: Scenario, channels: tuple[int, ...]) -> np.ndarray:
    heads, dim = SHAPE[-2:]
    gains = np.ones((heads, dim), np.float32)
    for h in LOUD_HEADS:
        gains[h] *= scenario.head_gain
        if scenario.outliers:
            gains[h, list(channels)] *= OUTLIER_GAINS
    return gains


def activations(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 query, key and value of scenario ``name`` (`SCENARIOS`), shape `SHAPE`."""
    scenario = SCENARIOS[name]
    rng = np.random.default_rng(seed)

    def normal():
        return rng.standard_normal(SHAPE, dtype=np.float32)

    q = normal() * _gains(scenario, QK_OUTLIER_CHANNELS)
    k = normal() * _gains(scenario, QK_OUTLIER_CHANNELS)
    v = normal() * _gains(scenario, V_OUTLIER_CHANNELS)
    heads, dim = SHAPE[-2:]
    # Scores of every (query, key) pair per head, with gna's default scale dim ** -0.5.
    flat_q, flat_k = (x.reshape(-1, heads, dim).astype(np.float64) for x in (q, k))
    scores = np.einsum("ihd,jhd->hij", flat_q, flat_k) * dim**-0.5
    temperature = SCORE_STD / scores.reshape(heads, -1).std(axis=1)
    q = (q * temperature[:, None]).astype(np.float32)
    return q, k, v


def errors(got, want, value) -> dict[str, float]:
    """|got - want| in units of the value's magnitude: ``max`` and ``mean`` over the whole
    output relative to max |value|; ``head_max`` and ``head_mean`` the worst head's, relative
    to that head's own max |value| (what a quiet head loses)."""
    got, want, value = (np.asarray(x, np.float64) for x in (got, want, value))
    err = np.abs(got - want)
    heads_last = tuple(range(err.ndim - 2)) + (err.ndim - 1,)  # every axis but the heads'
    head_vmax = np.abs(value).max(axis=heads_last)
    vmax = np.abs(value).max()
    return dict(
        max=float(err.max() / vmax),
        mean=float(err.mean() / vmax),
        head_max=float((err.max(axis=heads_last) / head_vmax).max()),
        head_mean=float((err.mean(axis=heads_last) / head_vmax).max()),
    )


# The error model's bounds (`check_error_model`): every element within this many predicted
# standard deviations (a Gaussian exceeds 8 sigma with probability 1e-15), every head's mean
# error within this multiple of its mean predicted standard deviation (a Gaussian's mean
# |error| is sqrt(2 / pi) = 0.8 of it).
MAX_SIGMAS = 8.0
MEAN_RATIO = 1.2


def half_step(x, descale, dtype) -> np.ndarray:
    """Half the spacing of ``dtype`` around ``x / descale``, in units of ``x``: the largest
    error of rounding ``x`` to ``dtype`` (with ``descale``, a scalar or per head) to nearest.
    For e4m3 that is 2^-4 of the value's binade (3 mantissa bits), and 2^-10 of the descale
    for subnormal values and zeros."""
    info = jnp.finfo(dtype)
    d = np.asarray(descale, np.float64)
    d = d[:, None] if d.ndim else d  # per head: [..., heads, dim]
    y = np.abs(np.asarray(x, np.float64)) / d
    binade = np.floor(np.log2(np.where(y > 0, y, 1.0)))
    binade = np.maximum(np.where(y > 0, binade, info.minexp), info.minexp)
    return 2.0 ** (binade - info.nmant - 1) * d


def error_std(q, k, v, descales, dtype, *, kernel_rounding: bool = False) -> np.ndarray:
    """The predicted standard deviation of each output element's error, ``[B, X, Y, H, Dv]``,
    when q, k and v (float32, `SHAPE`, window `KERNEL_SIZE`) are rounded to ``dtype`` with
    ``descales`` (q, k, v) and attention runs exactly on the rounded values.

    First order in the rounding errors, taken as independent and uniform within each element's
    `half_step` h (variance h^2 / 3): ``out_i = sum_j p_ij v_j`` moves by
    ``sum_j p_ij (v_j - out_i) ds_ij + sum_j p_ij dv_j``, where the score ``s_ij = scale q_i .
    k_j`` moves by ``ds_ij = scale sum_d (dq_id k_jd + q_id dk_jd)``; the variance of each term
    follows. ``kernel_rounding`` adds what the CUDA FP8 kernel rounds besides: P to e4m3 before
    P V (half a step is at most 2^-4 of p, or 2^-14 for subnormal P: the kernel's P is
    ``2^4 exp(s - m)``, with a row sum of at least 16) and out to bfloat16 (half a step is at
    most 2^-8 of out)."""
    batch, *grid, heads, dim = q.shape
    tokens = int(np.prod(grid))
    visible = oracle.visible(tuple(grid), KERNEL_SIZE)
    scale = dim**-0.5
    q, k, v = (np.asarray(x, np.float64).reshape(batch, tokens, heads, -1) for x in (q, k, v))
    var = [half_step(x, d, dtype) ** 2 / 3 for x, d in zip((q, k, v), descales)]
    std = np.empty_like(v)
    for b, h in np.ndindex(batch, heads):
        qh, kh, vh = q[b, :, h], k[b, :, h], v[b, :, h]
        var_q, var_k, var_v = (x[b, :, h] for x in var)
        s = np.where(visible, scale * qh @ kh.T, -np.inf)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out = p @ vh
        centred = vh[None] - out[:, None]  # [query, key, channel]: v_j - out_i
        w = p[:, :, None] * centred  # d out_i / d s_ij
        from_q = scale**2 * np.einsum("icd,id->ic", np.einsum("ijc,jd->icd", w, kh) ** 2, var_q)
        from_k = scale**2 * np.einsum("ijc,ij->ic", w**2, (qh**2) @ var_k.T)
        from_v = (p**2) @ var_v
        total = from_q + from_k + from_v
        if kernel_rounding:
            var_p = ((2.0**-4 * p) ** 2 + 2.0**-28) / 3
            # The kernel divides by the sum of the unrounded P: the rounding moves out by
            # sum_j dp_ij v_j.
            total += var_p @ vh**2 + (2.0**-8 * out) ** 2 / 3
        std[b, :, h] = np.sqrt(total)
    return std.reshape(batch, *grid, heads, -1)


def check_error_model(got, want, q, k, v, descales, dtype, *, kernel_rounding=False) -> None:
    """Assert that ``got`` (attention on the quantised q, k, v) is within the error model
    (`error_std`) of ``want`` (float32 attention on the original ones): every element within
    `MAX_SIGMAS` standard deviations, every head's mean error within `MEAN_RATIO` of its mean
    standard deviation."""
    std = error_std(q, k, v, descales, dtype, kernel_rounding=kernel_rounding)
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    sigmas = err / std
    worst = np.unravel_index(np.argmax(sigmas), err.shape)
    assert sigmas.max() <= MAX_SIGMAS, f"error {err[worst]} = {sigmas.max():.1f} sigma at {worst}"
    heads_last = tuple(range(err.ndim - 2)) + (err.ndim - 1,)
    ratio = err.mean(axis=heads_last) / std.mean(axis=heads_last)
    assert np.all(ratio <= MEAN_RATIO), f"mean error / mean sigma per head: {ratio}"
