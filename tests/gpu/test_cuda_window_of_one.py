"""A window of one position along an axis (kernel_size 1) through the CUDA kernels: the FFI
calls directly (whatever the Python API accepts), forward and, where this build has them,
backward, against the float64 brute-force oracle (`tests/oracle.py`). The host takes K = 1 as
it takes the trivial axes it pads ranks with; these cases check the windows of real axes:
a single-frame video with kernel (1, 3, 3), K = 1 with dilation, causal.

Run on a GPU machine with ``python -m pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_gna import _extension, _ffi_call
from jax_gna._params import GnaParams
from tests import oracle

pytestmark = pytest.mark.gpu


def _skip_reason() -> str | None:
    if _extension.ext is None:
        return str(_extension.missing)
    if not _extension.ext.cuda_targets():
        return "this build has no CUDA kernels"
    try:
        jax.devices("gpu")
    except RuntimeError:
        return "no GPU visible to JAX"
    return None


_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]

HEAD_DIM = 128  # in every kernel set
# name -> (q, k, v shape, (kernel_size, stride, dilation, is_causal))
CASES = {
    "video-one-frame": (
        (1, 1, 24, 20, 2, HEAD_DIM),
        ((1, 3, 3), (1, 1, 2), (1, 2, 1), (True, False, False)),
    ),
    "1d-dilated": ((2, 200, 2, HEAD_DIM), ((1,), (1,), (2,), (False,))),
    "2d-one-axis": ((1, 12, 40, 2, HEAD_DIM), ((1, 7), (1, 3), (3, 1), (False, True))),
}


def _close(got, want, what: str) -> None:
    got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
    # The floor: with a window of one key along every axis the softmax is exactly 1, so dQ is
    # exactly 0 in the oracle, while the kernel's fp32 dP - delta leaves ~1e-7 (inputs are O(1)).
    scale = max(np.sqrt(np.mean(want**2)), 1e-2)
    np.testing.assert_allclose(got, want, atol=0.05 * scale, rtol=2e-2, err_msg=what)


@pytest.mark.parametrize("name", sorted(CASES))
def test_window_of_one_matches_the_oracle(name):
    shape, window = CASES[name]
    params = GnaParams(*window, HEAD_DIM**-0.5)
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in host)
    exact = [np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v)]
    dout = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    dlse = jnp.zeros(shape[:-1], jnp.float32)
    want_out, want_lse, grads = oracle.attention(
        *exact, *window, rank=len(window[0]), scale=params.scale,
        dout=np.asarray(jnp.asarray(dout, jnp.float32)), dlse=np.zeros(shape[:-1]),
    )  # fmt: skip
    args = _ffi_call._problem_args(q, k, v, params)
    assert _extension.ext.cuda_fwd_can_implement(*args) is None
    out, lse = _ffi_call.forward(params, q, k, v)
    _close(out, want_out, "out")
    np.testing.assert_allclose(np.asarray(lse), want_lse, atol=2e-2, rtol=1e-3, err_msg="lse")
    if not _extension.ext.cuda_has_backward() or _extension.ext.cuda_bwd_can_implement(*args):
        return
    dq, dk, dv = _ffi_call.backward(params, dout, q, k, v, out, lse, dlse)
    for got, want, what in zip((dq, dk, dv), grads[:3], ("dq", "dk", "dv")):
        _close(got, want, what)
