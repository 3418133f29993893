"""The C++ window math (cuda/include/gna/window.h, through host helpers of the extension)
against the NumPy window module (jax_gna/_window.py): exhaustively for small extents, every
legal kernel size (1 included), stride, dilation and causality; the keys of a view's queries
against the brute-force oracle's whole-axis visibility restricted to the slices."""

import numpy as np
import pytest

from jax_gna import _extension, _window
from tests import oracle

pytestmark = pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))


def _legal_axes(max_length: int):
    """Every legal axis up to `max_length`, K = 1 (the query alone) and extent 1 included."""
    for length in range(1, max_length + 1):
        for kernel_size in range(1, length + 1):
            for stride in range(1, kernel_size + 1):
                for dilation in range(1, length // kernel_size + 1):
                    for is_causal in (False, True):
                        yield length, kernel_size, stride, dilation, is_causal


@pytest.mark.parametrize("max_length", [16])
def test_window_matches_numpy_for_every_legal_axis(max_length):
    checked = 0
    for axis in _legal_axes(max_length):
        start, end = _extension.ext.window(*axis)
        expected_start, expected_end = _window.neighborhood(*axis)
        np.testing.assert_array_equal(start, expected_start, err_msg=f"start, axis {axis}")
        np.testing.assert_array_equal(end, expected_end, err_msg=f"end, axis {axis}")
        checked += 1
    assert checked > 1000


@pytest.mark.parametrize("max_length", [16])
def test_inverse_window_matches_numpy_for_every_legal_axis(max_length):
    for axis in _legal_axes(max_length):
        q_start, q_end = _extension.ext.inverse_window(*axis)
        expected_start, expected_end = _window.inverse_neighborhood(*axis)
        np.testing.assert_array_equal(q_start, expected_start, err_msg=f"q_start, axis {axis}")
        np.testing.assert_array_equal(q_end, expected_end, err_msg=f"q_end, axis {axis}")


@pytest.mark.parametrize(
    "axis",
    [
        (300, 37, 5, 3, False),
        (300, 37, 37, 2, True),
        (257, 16, 7, 16, False),
        (1000, 9, 1, 1, True),
    ],
    ids=lambda a: f"L{a[0]}-K{a[1]}-s{a[2]}-d{a[3]}-{'causal' if a[4] else 'full'}",
)
def test_window_matches_numpy_on_long_axes(axis):
    np.testing.assert_array_equal(_extension.ext.window(*axis), _window.neighborhood(*axis))
    np.testing.assert_array_equal(
        _extension.ext.inverse_window(*axis), _window.inverse_neighborhood(*axis)
    )


def test_host_helper_rejects_illegal_window():
    with pytest.raises(ValueError, match="illegal window"):
        _extension.ext.window(4, 3, 1, 2, False)  # kernel_size * dilation > length


def test_view_keys_match_the_oracle_on_the_whole_axis_sliced():
    rng = np.random.default_rng(0)
    checked = 0
    for axis in _legal_axes(12):
        length, dilation = axis[0], axis[3]
        for _ in range(3):
            qo = int(rng.integers(0, length))
            shift = int(rng.integers(-(length // dilation) - 1, length // dilation + 2))
            view = (qo, int(rng.integers(1, length - qo + 3)), qo - dilation * shift,
                    int(rng.integers(1, length + 3)))  # fmt: skip
            first, count = _extension.ext.view_keys(*axis, view)
            want = oracle.view_visible((length,), [view], *axis[1:])
            got = np.zeros_like(want)
            for i, (f, c) in enumerate(zip(first, count)):
                got[i, f + dilation * np.arange(c)] = True
            np.testing.assert_array_equal(got, want, err_msg=f"axis {axis}, view {view}")
            checked += 1
    assert checked > 1000


def test_view_keys_refuse_a_key_slice_off_the_query_phase():
    with pytest.raises(ValueError, match="dilation phase"):
        _extension.ext.view_keys(10, 3, 1, 2, False, (0, 4, 1, 4))
