"""A window of 1 along an axis (``kernel_size`` 1): each query sees only the key at its own
position along that axis (in its dilation group, which then holds only itself). A video of
one frame (T = 1) with window 1 along time is image attention within the frame.

Checked against the brute-force oracle (forward and gradients) for ``reference`` and
``xla``, by the independent identity "window 1 along T = 2-D attention per frame", and for
``cpu`` once the built extension accepts a window of 1 (skipped otherwise, with the reason).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _extension, _ffi_call, _window, sim
from tests import oracle
from tests.test_api import arrays, want

f32 = jnp.float32
TOL = dict(atol=2e-5, rtol=2e-5)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)

# (name, spatial, kernel_size, stride, dilation, is_causal)
CASES = [
    ("single-frame", (1, 6, 7), (1, 3, 3), 1, 1, False),
    ("frames-causal", (3, 5, 4), (1, 3, 2), (1, 2, 1), (1, 1, 2), (True, False, True)),
    ("dilated-one", (7, 6), (1, 3), 1, (3, 2), (False, True)),
    ("all-one", (4, 5), (1, 1), 1, (2, 5), False),
    ("one-d", (9,), (1,), 1, 4, True),
    ("extent-one-everywhere", (1, 1, 1), (1, 1, 1), 1, 1, False),
]
IDS = [c[0] for c in CASES]


def _arrays(seed, spatial, batch=(2,), extra=0):
    return arrays(seed, batch=batch, spatial=spatial, extra=extra)


def _window_of(case):
    _, _, k, s, d, c = case
    return dict(kernel_size=k, stride=s, dilation=d, is_causal=c)


def _cpu_takes_window_one():
    return _extension.ext is not None and _ffi_call.extension_takes_window_one()


IMPLS = [
    "reference",
    "xla",
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            not _cpu_takes_window_one(),
            reason="the built extension refuses kernel_size 1 (its C++ window validator needs "
            ">= 2; rebuild with the C++ side that accepts it)",
        ),
    ),
]


def test_window_one_is_the_own_position():
    start, end = _window.neighborhood(9, 1, 1, 4, False)
    np.testing.assert_array_equal(end - start, 1)
    np.testing.assert_array_equal(start, np.arange(9) // 4)  # own group coordinate
    m = _window.axis_mask(9, 1, dilation=4, is_causal=True)
    np.testing.assert_array_equal(m, np.eye(9, dtype=bool))
    np.testing.assert_array_equal(m, oracle.visible((9,), 1, 1, 4, True))
    q_start, q_end = _window.inverse_neighborhood(9, 1, 1, 4, False)
    np.testing.assert_array_equal(q_end - q_start, 1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_oracle(case, impl):
    window = _window_of(case)
    a = _arrays(0, case[1], extra=2 if case[0] == "single-frame" else 0)
    out, lse = jax_gna.gna(**a, **window, implementation=impl, return_lse=True)
    w_out, w_lse = want(a, window)
    np.testing.assert_allclose(out, w_out, **TOL)
    np.testing.assert_allclose(lse, w_lse, **TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_gradients_match_oracle(case, impl):
    window = _window_of(case)
    a = _arrays(1, case[1])
    rng = np.random.default_rng(2)
    w_out = rng.normal(size=a["query"].shape[:-1] + (6,))
    w_lse = rng.normal(size=a["query"].shape[:-1])

    def loss(x):
        out, lse = jax_gna.gna(**x, **window, implementation=impl, return_lse=True)
        return jnp.sum(out * w_out) + jnp.sum(lse * w_lse)

    grads = jax.grad(loss)(a)
    _, _, wanted = want(a, window, dout=w_out, dlse=w_lse)
    for name, g in zip(("query", "key", "value"), wanted):
        np.testing.assert_allclose(grads[name], g, err_msg=name, **GRAD_TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_window_one_along_time_is_attention_within_each_frame(impl):
    """na3d with window (1, kh, kw) equals na2d on every frame, for T = 1 and T > 1."""
    for frames in (1, 3):
        a = _arrays(3, (frames, 6, 5), batch=(2,))
        out = jax_gna.na3d(**a, kernel_size=(1, 3, 3), stride=(1, 2, 1), implementation=impl)
        per_frame = jax.vmap(
            lambda q, k, v: jax_gna.na2d(q, k, v, (3, 3), stride=(2, 1), implementation=impl),
            in_axes=1,
            out_axes=1,
        )(a["query"], a["key"], a["value"])
        np.testing.assert_allclose(out, per_frame, **TOL)


def test_default_implementation_runs_a_single_frame_video():
    """Whatever the build, ``implementation=None`` runs it (``cpu`` or, where the built
    extension refuses a window of 1, ``xla``), and `supported_implementations` says why."""
    a = _arrays(4, (1, 8, 8), batch=(1,))
    out = jax_gna.na3d(**a, kernel_size=(1, 3, 3))
    window = dict(kernel_size=(1, 3, 3), stride=1, dilation=1, is_causal=False)
    np.testing.assert_allclose(out, want(a, window)[0], **TOL)
    reasons = jax_gna.supported_implementations(
        a["query"], a["key"], a["value"], kernel_size=(1, 3, 3)
    )
    assert reasons["xla"] is None and reasons["reference"] is None
    if _extension.ext is not None and not _cpu_takes_window_one():
        assert "kernel_size >= 2" in reasons["cpu"]


def test_simulator_takes_window_one():
    problem = sim.Problem((1, 8, 8), kernel_size=(1, 3, 3))
    assert problem.attended_pairs == 64 * 9
    result = sim.simulate(problem, q_tile=(1, 4, 4), kv_tile=(1, 4, 4))
    assert result.flop_speedup == pytest.approx(64 / 9)


@pytest.mark.parametrize(
    "window, match",
    [
        (dict(kernel_size=(1, 3), stride=(2, 1)), "`stride` cannot be larger"),
        (dict(kernel_size=(1, 3), dilation=(7, 1)), "`kernel_size` and `dilation`"),
        (dict(kernel_size=(0, 3)), "`kernel_size`.*positive"),
    ],
)
def test_window_one_rules(window, match):
    a = _arrays(5, (6, 5))
    with pytest.raises(ValueError, match=match):
        jax_gna.gna(**a, **window)
