"""implementation="cuda" on the edges of the public API: a window of 1 along an axis (a video of
one frame) and empty batches. Run with ``python -m pytest -m gpu tests/gpu/test_cuda_edges.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import reference
from tests.gpu.test_cuda_fwd import _REASON, _oracle

pytestmark = pytest.mark.gpu
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]


@pytest.mark.parametrize("frames", [1, 4])
def test_window_one_along_time(frames):
    """na3d with window (1, 7, 7) on bf16 video latents (T = 1: image latents), against the
    reference; where the kernels refuse a window of 1, implementation=None falls back and says
    why."""
    rng = np.random.default_rng(frames)
    q, k, v = (
        jnp.asarray(rng.standard_normal((2, frames, 16, 16, 4, 128)), jnp.bfloat16)
        for _ in range(3)
    )
    window = dict(kernel_size=(1, 7, 7), stride=(1, 2, 2))
    why = jax_gna.supported_implementations(q, k, v, **window)["cuda"]
    want = _oracle(q, k, v, **window)
    got = jax_gna.na3d(q, k, v, **window).astype(jnp.float32)
    np.testing.assert_allclose(got, want, atol=2.5e-2, rtol=2.5e-2)
    if why is not None:
        pytest.skip(f"the CUDA kernels refuse a window of 1 ({why}); the fallback was checked")
    got = jax_gna.na3d(q, k, v, **window, implementation="cuda").astype(jnp.float32)
    np.testing.assert_allclose(got, want, atol=2.5e-2, rtol=2.5e-2)


def test_empty_batch():
    """A batch of 0 gives the empty result and gradient, through "cuda" where it takes the call
    (no kernel is launched over an empty grid), else through implementation=None."""
    q = jnp.zeros((0, 16, 16, 4, 128), jnp.bfloat16)
    why = jax_gna.supported_implementations(q, q, q, (7, 7))["cuda"]
    impl = None if why is not None else "cuda"

    def attend(q):
        return jax_gna.na2d(q, q, q, (7, 7), implementation=impl, return_lse=True)

    out, lse = attend(q)
    assert out.shape == q.shape and lse.shape == q.shape[:-1]
    grads = jax.grad(lambda q: jnp.sum(attend(q)[0].astype(jnp.float32)))(q)
    assert grads.shape == q.shape
    assert reference.gna(q, q, q, (7, 7)).shape == q.shape


@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.float16])
def test_out_dtype(out_dtype):
    """The kernels write bf16 and the op casts to ``out_dtype``; gradients flow back through the
    cast in bf16."""
    rng = np.random.default_rng(7)
    q, k, v = (
        jnp.asarray(rng.standard_normal((2, 16, 16, 4, 128)), jnp.bfloat16) for _ in range(3)
    )

    def attend(q, k, v):
        return jax_gna.na2d(q, k, v, (7, 7), implementation="cuda", out_dtype=out_dtype)

    out = attend(q, k, v)
    assert out.dtype == out_dtype
    np.testing.assert_allclose(
        np.asarray(out, np.float32), _oracle(q, k, v, kernel_size=(7, 7)), atol=2.5e-2, rtol=2.5e-2
    )
    np.testing.assert_array_equal(
        out, jax_gna.na2d(q, k, v, (7, 7), implementation="cuda").astype(out_dtype)
    )
    grads = jax.grad(lambda *a: jnp.sum(attend(*a).astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(
        lambda *a: jnp.sum(reference.gna(*a, (7, 7)).astype(jnp.float32)), argnums=(0, 1, 2)
    )(q, k, v)
    for g, w in zip(grads, want):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=5e-2)
