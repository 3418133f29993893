"""A window of one position along an axis (kernel_size 1: each query sees only itself along it,
in its dilation group; stride then is 1) through the C++ side: the handlers' validator and the
CPU FFI kernels, forward and backward, against the brute-force oracle (`tests/oracle.py`),
including extent-1 axes (a single-frame video ``[B, 1, H, W, heads, D]`` with kernel
(1, 3, 3)), dilation, causality, GQA and a view."""

import dataclasses

import numpy as np
import pytest

from jax_gna import _extension, _ffi_call
from jax_gna._params import GnaParams
from tests import oracle

pytestmark = pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    q_shape: tuple  # [B, X..., H, D]
    kv_heads: int
    window: tuple  # (kernel_size, stride, dilation, is_causal), per-axis tuples
    view: tuple | None = None  # per axis (extent, q_offset, kv_offset, kv_length)

    @property
    def rank(self) -> int:
        return len(self.window[0])


CASES = [
    Case("1d", (2, 7, 2, 4), 2, ((1,), (1,), (1,), (False,))),
    Case("1d-causal-dilated", (1, 10, 2, 4), 1, ((1,), (1,), (3,), (True,))),
    Case("1d-dilation-is-extent", (1, 5, 1, 4), 1, ((1,), (1,), (5,), (False,))),
    Case("1d-extent-1", (2, 1, 2, 4), 2, ((1,), (1,), (1,), (False,))),
    Case(
        "video-one-frame",
        (2, 1, 5, 6, 2, 8),
        1,
        ((1, 3, 3), (1, 1, 2), (1, 1, 2), (True, False, False)),
    ),
    Case("3d-middle-axis", (1, 4, 5, 6, 2, 4), 2, ((3, 1, 2), (2, 1, 1), (1, 2, 3), (False,) * 3)),
    Case(
        "2d-view",
        (1, 4, 6, 2, 4),
        2,
        ((1, 3), (1, 2), (2, 1), (False, True)),
        view=((9, 2, 0, 6), (6, 0, -1, 8)),
    ),
]


def _inputs(case: Case, seed: int = 0):
    rng = np.random.default_rng(seed)
    b, *q_spatial, heads, dim = case.q_shape
    kv_spatial = [v[3] for v in case.view] if case.view else q_spatial
    draw = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    q = draw(b, *q_spatial, heads, dim)
    k, v = draw(b, *kv_spatial, case.kv_heads, dim), draw(b, *kv_spatial, case.kv_heads, dim)
    return q, k, v, draw(b, *q_spatial, heads, dim), draw(b, *q_spatial, heads)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_window_of_one_matches_the_oracle(case):
    q, k, v, dout, dlse = _inputs(case)
    view = tuple(v[:3] for v in case.view) if case.view else None
    params = GnaParams(*case.window, 0.5, view=view)
    mask = None
    if case.view:
        extent = tuple(v[0] for v in case.view)
        views = tuple((v[1], n, v[2], v[3]) for v, n in zip(case.view, q.shape[1:-2]))
        mask = oracle.view_visible(extent, views, *case.window)
    want_out, want_lse, grads = oracle.attention(
        q, k, v, *case.window, rank=case.rank, scale=0.5, mask=mask, dout=dout, dlse=dlse
    )
    out, lse = _ffi_call.forward(params, q, k, v)
    np.testing.assert_allclose(np.asarray(out), want_out, rtol=1e-5, atol=1e-5)
    lse = np.asarray(lse)
    empty = np.isneginf(want_lse)  # views: queries whose window misses the key slice
    np.testing.assert_array_equal(np.isneginf(lse), empty)
    np.testing.assert_allclose(lse[~empty], want_lse[~empty], rtol=1e-5, atol=1e-5)
    dq, dk, dv = _ffi_call.backward(params, dout, q, k, v, out, lse, dlse)
    for got, want in zip((dq, dk, dv), grads[:3]):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_window_of_one_with_stride_above_one_is_refused():
    q = np.zeros((1, 6, 1, 4), np.float32)
    with pytest.raises(Exception, match=r"stride\[0\] = 2; need 1 <= stride <= kernel_size \(1\)"):
        np.asarray(_ffi_call.forward(GnaParams((1,), (2,), (1,), (False,), 1.0), q, q, q)[0])


def test_geometry_helpers_take_a_window_of_one():
    # Every query sees itself only, whatever the dilation; causal or not.
    for causal in (False, True):
        start, end = _extension.ext.window(7, 1, 1, 3, causal)
        np.testing.assert_array_equal(start, np.arange(7) // 3)
        np.testing.assert_array_equal(end, np.arange(7) // 3 + 1)
    np.testing.assert_array_equal(_extension.ext.inverse_window(1, 1), ([0], [1]))
