"""implementation="cuda" with a nan in one key or value entry: what the kernels promise.

The nan stays within its batch entry and its (kv) head: every other entry and head is finite
and matches the reference, in the outputs, the LSE and the gradients. Within that entry and
head, every query whose window holds the nan gets nan (in that value channel, or for a key
somewhere in its row). Nothing more: the kernels multiply masked probabilities by whole KV tiles
(``0 * nan = nan``), so the nan may also reach other queries of the same entry and head, and a
whole output row rather than one channel; `tests/test_nonfinite.py` states the exact rule that
the other implementations follow. Run with ``python -m pytest -m gpu
tests/gpu/test_cuda_nonfinite.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import reference
from tests import oracle
from tests.gpu.test_cuda_fwd import _oracle
from tests.gpu.test_cuda_window_of_one import _skip_reason

pytestmark = pytest.mark.gpu


_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]

f32 = jnp.float32
TOL = 2.5e-2  # bf16 (`test_cuda_fwd`)
# [B=2, 16, 20, H=4, D=128] bf16, GQA (2 kv heads); stride, dilation, causality.
SPATIAL = (16, 20)
WINDOW = dict(kernel_size=(5, 7), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
HEADS, KV_HEADS, DIM = 4, 2, 128
BAD = (1, 7, 9, 1, 5)  # batch, x, y, kv head, channel
# The query heads that read kv head BAD[3].
BAD_HEADS = np.arange(HEADS) // (HEADS // KV_HEADS) == BAD[3]


def _inputs(name: str):
    rng = np.random.default_rng(0)

    def normal(heads):
        return jnp.asarray(rng.standard_normal((2, *SPATIAL, heads, DIM)), jnp.bfloat16)

    q, k, v = normal(HEADS), normal(KV_HEADS), normal(KV_HEADS)
    if name == "key":
        k = k.at[BAD].set(jnp.nan)
    else:
        v = v.at[BAD].set(jnp.nan)
    why = jax_gna.supported_implementations(q, k, v, **WINDOW)["cuda"]
    if why is not None:
        pytest.skip(f"the CUDA kernels refuse this problem: {why}")
    return q, k, v


def _other(shape_heads: int, heads_hit: np.ndarray) -> np.ndarray:
    """[B, X, Y, heads] True outside the bad batch entry's heads `heads_hit`."""
    other = np.ones((2, *SPATIAL, shape_heads), bool)
    other[BAD[0]] = ~heads_hit
    return other


def _sees_bad() -> np.ndarray:
    """[X, Y] queries whose window holds the bad token."""
    flat = BAD[1] * SPATIAL[1] + BAD[2]
    return oracle.visible(SPATIAL, *WINDOW.values())[:, flat].reshape(SPATIAL)


@pytest.mark.parametrize("name", ["key", "value"])
def test_a_nan_stays_in_its_batch_entry_and_head(name):
    q, k, v = _inputs(name)
    out, lse = jax_gna.gna(q, k, v, **WINDOW, implementation="cuda", return_lse=True)
    out, lse = np.asarray(out.astype(f32)), np.asarray(lse)
    want_out, want_lse = (np.asarray(x) for x in _oracle(q, k, v, **WINDOW, return_lse=True))
    other = _other(HEADS, BAD_HEADS)
    assert np.isfinite(want_out[other]).all() and np.isfinite(want_lse[other]).all()
    assert np.isfinite(out[other]).all(), "the nan left its batch entry and head"
    assert np.isfinite(lse[other]).all(), "the nan left its batch entry and head (lse)"
    np.testing.assert_allclose(out[other], want_out[other], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(lse[other], want_lse[other], atol=2e-3, rtol=2e-3)
    # Within the entry and head: every query whose window holds the nan is nan.
    seen = out[BAD[0]][_sees_bad()][:, BAD_HEADS]  # [queries, heads, Dv]
    if name == "value":
        assert np.isnan(seen[..., BAD[4]]).all()
    else:
        assert np.isnan(seen).any(axis=-1).all()


@pytest.mark.parametrize("name", ["key", "value"])
def test_gradients_of_other_entries_and_heads_stay_finite(name):
    """A loss over every output: the gradients of the other batch entry and of the heads that
    do not read the bad kv head are finite and match the reference's."""
    q, k, v = _inputs(name)
    dout = jnp.asarray(np.random.default_rng(1).standard_normal((2, *SPATIAL, HEADS, DIM)), f32)

    def loss(attend):
        def total(q, k, v, dout):
            return jnp.sum(attend(q, k, v, **WINDOW).astype(f32) * dout)

        return jax.jit(jax.grad(total, argnums=(0, 1, 2)))

    def cuda(*args, **kwargs):
        return jax_gna.gna(*args, **kwargs, implementation="cuda")

    got = loss(cuda)(q, k, v, dout)
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        want = loss(reference.gna)(*(jax.device_put(x, cpu).astype(f32) for x in (q, k, v, dout)))
    others = (_other(HEADS, BAD_HEADS), *[_other(KV_HEADS, np.arange(KV_HEADS) == BAD[3])] * 2)
    for what, g, w, other in zip(("dq", "dk", "dv"), got, want, others):
        g, w = np.asarray(g.astype(f32))[other], np.asarray(w)[other]
        assert np.isfinite(w).all()
        assert np.isfinite(g).all(), f"{what}: the nan left its batch entry and head"
        # The bound of `test_cuda_bwd` for bf16: 0.2 rms + 2^-7 |want|.
        rms = float(np.sqrt(np.mean(w**2)))
        assert (np.abs(g - w) <= 0.2 * rms + 2**-7 * np.abs(w)).all(), what
