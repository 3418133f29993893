"""Views (a shard's sub-problem: its queries against a key block, with the windows of the whole
axis; `cuda/include/gna/window.h` AxisView) through the CPU FFI ops, forward and backward,
against the brute-force oracle's whole-axis visibility restricted to the slices
(`tests/oracle.py` `view_visible`), and the checks of the view attributes."""

import dataclasses

import numpy as np
import pytest

from jax_gna import _extension, _ffi_call
from jax_gna._params import GnaParams
from tests import oracle

pytestmark = pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))


@dataclasses.dataclass(frozen=True)
class ViewCase:
    seed: int
    extent: tuple  # whole axes
    window: tuple  # (kernel_size, stride, dilation, is_causal), per-axis tuples
    views: tuple  # per axis (q_offset, q_length, kv_offset, kv_length)
    heads: int
    kv_heads: int

    @property
    def rank(self) -> int:
        return len(self.extent)

    def params(self) -> GnaParams:
        ks, st, dl, ca = self.window
        view = tuple((n, v[0], v[2]) for n, v in zip(self.extent, self.views))
        return GnaParams(ks, st, dl, ca, 0.5, view=view)

    def mask(self) -> np.ndarray:
        return oracle.view_visible(self.extent, self.views, *self.window)


def random_view(rng, length: int, dilation: int) -> tuple[int, int, int, int]:
    """A legal view: the query slice starts inside the axis (it may run past its end: padding
    queries); the key slice starts at the same dilation phase anywhere near the axis, so that
    it may miss windows, cut them or hang over either border."""
    qo = int(rng.integers(0, length))
    nq = int(rng.integers(1, length - qo + 3))
    shift = int(rng.integers(-(length // dilation) - 1, length // dilation + 2))
    ko = qo - dilation * shift
    nk = int(rng.integers(1, length + 3))
    return qo, nq, ko, nk


def random_case(seed: int) -> ViewCase:
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(1, 4))
    extent = tuple(int(rng.integers(4, 13 if rank == 1 else 8)) for _ in range(rank))
    window = oracle.random_window(rng, extent)
    views = tuple(random_view(rng, n, d) for n, d in zip(extent, window[2]))
    kv_heads = int(rng.integers(1, 3))
    return ViewCase(seed, extent, window, views, kv_heads * int(rng.integers(1, 3)), kv_heads)


def whole_case(seed: int) -> ViewCase:
    """A view that is the whole problem (offsets 0): must equal the square problem."""
    case = random_case(seed)
    views = tuple((0, n, 0, n) for n in case.extent)
    return dataclasses.replace(case, views=views)


CASES = [random_case(s) for s in range(40)] + [whole_case(s) for s in range(100, 104)]


def _inputs(case: ViewCase, dtype=np.float32):
    rng = np.random.default_rng(case.seed)
    nq = tuple(v[1] for v in case.views)
    nk = tuple(v[3] for v in case.views)
    q = rng.standard_normal((2, *nq, case.heads, 8)).astype(dtype)
    k = rng.standard_normal((2, *nk, case.kv_heads, 8)).astype(dtype)
    v = rng.standard_normal((2, *nk, case.kv_heads, 4)).astype(dtype)
    dout = rng.standard_normal((2, *nq, case.heads, 4)).astype(dtype)
    dlse = rng.standard_normal((2, *nq, case.heads)).astype(np.float32)
    return q, k, v, dout, dlse


def _check_lse(lse, want):
    lse = np.asarray(lse)
    empty = np.isneginf(want)
    np.testing.assert_array_equal(np.isneginf(lse), empty)
    np.testing.assert_allclose(lse[~empty], want[~empty], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c.seed}-r{c.rank}")
def test_view_forward_and_backward_match_oracle(case):
    q, k, v, dout, dlse = _inputs(case)
    params = case.params()
    out, lse = _ffi_call.forward(params, q, k, v)
    want_out, want_lse, grads = oracle.attention(
        q, k, v, *case.window, rank=case.rank, scale=0.5, mask=case.mask(), dout=dout, dlse=dlse
    )
    assert not np.isnan(np.asarray(out)).any()
    np.testing.assert_allclose(np.asarray(out), want_out, rtol=1e-5, atol=1e-5)
    _check_lse(lse, want_lse)
    dq, dk, dv = _ffi_call.backward(params, dout, q, k, v, out, lse, dlse)
    for got, want in zip((dq, dk, dv), grads[:3]):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_view_of_whole_axis_is_the_square_problem():
    case = whole_case(7)
    q, k, v, _, _ = _inputs(case)
    square = dataclasses.replace(case.params(), view=None)
    np.testing.assert_array_equal(
        np.asarray(_ffi_call.forward(case.params(), q, k, v)[0]),
        np.asarray(_ffi_call.forward(square, q, k, v)[0]),
    )


def test_shard_views_reassemble_the_whole_problem():
    """Two query halves, each against the keys its windows reach, give the global result."""
    rng = np.random.default_rng(3)
    n, window = 14, ((5,), (2,), (2,), (False,))
    q = rng.standard_normal((1, n, 2, 8)).astype(np.float32)
    k = rng.standard_normal((1, n, 2, 8)).astype(np.float32)
    v = rng.standard_normal((1, n, 2, 8)).astype(np.float32)
    whole, whole_lse = _ffi_call.forward(GnaParams(*window, 0.5), q, k, v)
    parts = []
    for qo, ko, kend in ((0, 0, 12), (7, 1, 14)):  # same dilation phase: (qo - ko) % 2 == 0
        params = GnaParams(*window, 0.5, view=((n, qo, ko),))
        parts.append(_ffi_call.forward(params, q[:, qo : qo + 7], k[:, ko:kend], v[:, ko:kend]))
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts], 1), whole, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts], 1), whole_lse, atol=1e-6)


@pytest.mark.parametrize(
    "view, match",
    [
        (((10, 0, 1),), "dilation phase"),
        (((10, 10, 0),), "start inside the axis"),
        (((10, -1, 0),), "start inside the axis"),
        (((3, 0, 0),), "illegal window"),
    ],
)
def test_bad_views_are_refused_with_the_rule(view, match):
    q = np.zeros((1, 6, 1, 8), np.float32)
    k = np.zeros((1, 8, 1, 8), np.float32)
    params = GnaParams((4,), (1,), (2,), (False,), 1.0, view=view)
    with pytest.raises(Exception, match=match):
        np.asarray(_ffi_call.forward(params, q, k, k)[0])


def test_view_attributes_must_cover_every_axis():
    q = np.zeros((1, 6, 6, 1, 8), np.float32)
    params = GnaParams((3, 3), (1, 1), (1, 1), (False, False), 1.0, view=((6, 0, 0),))
    with pytest.raises(Exception, match="one entry per spatial axis"):
        np.asarray(_ffi_call.forward(params, q, q, q)[0])


def test_key_shapes_may_differ_only_with_a_view():
    q = np.zeros((1, 6, 1, 8), np.float32)
    k = np.zeros((1, 8, 1, 8), np.float32)
    params = GnaParams((3,), (1,), (1,), (False,), 1.0)
    with pytest.raises(Exception, match="share batch and spatial dims"):
        _ffi_call.forward(params, q, k, k)
