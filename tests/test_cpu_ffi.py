"""The CPU FFI handlers (implementation="cpu") against the jnp reference: forward (out, lse)
and backward (cotangents for both) over ranks, stride, dilation, causality, GQA, dtypes,
several batch dims, additional KV; plus what `_ffi_call.why_not` says and the handlers' checks."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _extension, _ffi_call, _ffi_op, reference
from jax_gna._params import GnaParams, make_params
from tests import oracle

pytestmark = pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))


def _normal(rng, shape, dtype=jnp.float32):
    # NumPy draws: jax.random would compile a threefry kernel per shape (seconds each on CPU).
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    q_shape: tuple  # [B..., X..., H, D]
    kv_heads: int
    head_dim_v: int
    kernel_size: tuple
    stride: tuple
    dilation: tuple
    is_causal: tuple

    def inputs(self, dtype=jnp.float32, seed=0):
        rng = np.random.default_rng(seed)
        *lead, _, dim = self.q_shape
        q = _normal(rng, self.q_shape, dtype)
        k = _normal(rng, (*lead, self.kv_heads, dim), dtype)
        v = _normal(rng, (*lead, self.kv_heads, self.head_dim_v), dtype)
        return q, k, v

    def window(self):
        return dict(
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            is_causal=self.is_causal,
        )


CASES = [
    Case("1d", (2, 20, 2, 8), 2, 8, (5,), (1,), (1,), (False,)),
    Case("1d-stride-dilation-causal", (2, 23, 2, 8), 2, 8, (4,), (3,), (2,), (True,)),
    Case("1d-blocked", (1, 24, 1, 4), 1, 4, (6,), (6,), (1,), (False,)),
    Case("2d-mixed", (1, 9, 11, 4, 8), 2, 6, (3, 4), (2, 1), (1, 2), (False, True)),
    Case("2d-mqa", (2, 8, 8, 4, 4), 1, 4, (3, 3), (1, 3), (2, 1), (True, True)),
    Case("3d", (1, 5, 6, 7, 2, 4), 2, 4, (2, 3, 3), (1, 2, 3), (2, 1, 1), (True, False, False)),
    Case("3d-gqa", (1, 4, 5, 6, 6, 4), 3, 8, (3, 2, 4), (3, 1, 2), (1, 2, 1), (False,) * 3),
    Case("several-batch-dims", (2, 3, 12, 2, 4), 2, 4, (5,), (2,), (2,), (False,)),
]


def _params(case: Case, q, k, v):
    return make_params(q, k, v, **case.window())


def _tolerance(dtype):
    return dict(atol=1e-5, rtol=1e-5) if dtype == jnp.float32 else dict(atol=2e-2, rtol=2e-2)


def _vjp(fn, q, k, v, seed=1):
    """Outputs and input gradients for random cotangents of both out and lse (jitted: the
    reference runs op by op far slower than it compiles)."""

    out, lse = jax.eval_shape(fn, q, k, v)
    rng = np.random.default_rng(seed)
    dout, dlse = _normal(rng, out.shape, out.dtype), _normal(rng, lse.shape, lse.dtype)

    @jax.jit
    def run(q, k, v, dout, dlse):
        results, pullback = jax.vjp(fn, q, k, v)
        return results, pullback((dout, dlse))

    return run(q, k, v, dout, dlse)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forward_matches_reference(case):
    q, k, v = case.inputs()
    out, lse = _ffi_op.gna_ffi(q, k, v, _params(case, q, k, v))
    ref_out, ref_lse = jax.jit(
        lambda q, k, v: reference.gna(q, k, v, **case.window(), return_lse=True)
    )(q, k, v)
    chex.assert_trees_all_close((out, lse), (ref_out, ref_lse), atol=1e-5, rtol=1e-5)
    chex.assert_shape(out, (*q.shape[:-1], case.head_dim_v))
    chex.assert_type(lse, jnp.float32)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_backward_matches_reference(case):
    q, k, v = case.inputs()
    params = _params(case, q, k, v)
    results, grads = _vjp(lambda q, k, v: _ffi_op.gna_ffi(q, k, v, params), q, k, v)
    ref_results, ref_grads = _vjp(lambda q, k, v: reference.attention(q, k, v, params), q, k, v)
    chex.assert_trees_all_close(results, ref_results, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(grads, ref_grads, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "case, dtype",
    [(CASES[3], jnp.bfloat16), (CASES[1], jnp.float16)],
    ids=lambda x: x.name if isinstance(x, Case) else jnp.dtype(x).name,
)
def test_half_precision_matches_reference(case, dtype):
    q, k, v = case.inputs(dtype)
    params = _params(case, q, k, v)
    (out, lse), grads = _vjp(lambda q, k, v: _ffi_op.gna_ffi(q, k, v, params), q, k, v)
    (ref_out, ref_lse), ref_grads = _vjp(
        lambda q, k, v: reference.attention(q, k, v, params), q, k, v
    )
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    as_f32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)  # noqa: E731
    chex.assert_trees_all_close(as_f32((out, lse)), as_f32((ref_out, ref_lse)), **_tolerance(dtype))
    chex.assert_trees_all_close(as_f32(grads), as_f32(ref_grads), atol=5e-2, rtol=5e-2)


def test_public_api_with_additional_kv_matches_reference():
    case = CASES[3]
    q, k, v = case.inputs()
    rng = np.random.default_rng(7)
    extra_k = _normal(rng, (1, 5, case.kv_heads, 8))
    extra_v = _normal(rng, (1, 5, case.kv_heads, case.head_dim_v))

    def run(implementation):
        def fn(q, k, v):
            common = dict(additional_keys=extra_k, additional_values=extra_v, return_lse=True)
            if implementation == "reference":
                return reference.gna(q, k, v, **case.window(), **common)
            return jax_gna.gna(q, k, v, **case.window(), **common, implementation=implementation)

        return _vjp(fn, q, k, v)

    chex.assert_trees_all_close(run("cpu"), run("reference"), atol=1e-4, rtol=1e-4)


def test_gradient_flows_through_lse_alone():
    case = CASES[0]
    q, k, v = case.inputs()
    params = _params(case, q, k, v)
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, params)[1]))  # noqa: E731
    grads = jax.grad(loss(_ffi_op.gna_ffi), (0, 1, 2))(q, k, v)
    ref_grads = jax.jit(jax.grad(loss(reference.attention), (0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close(grads, ref_grads, atol=1e-5, rtol=1e-5)


def test_dispatch_picks_cpu_handler_on_cpu():
    q, k, v = CASES[0].inputs()
    text = jax.jit(lambda q, k, v: jax_gna.gna(q, k, v, (5,))).lower(q, k, v).as_text()
    assert "@jax_gna_fwd" in text
    assert jax_gna.supported_implementations(q, k, v, (5,))["cpu"] is None


def test_why_not_reports_the_reason():
    case = CASES[0]
    q, k, v = case.inputs()
    params = _params(case, q, k, v)
    assert _ffi_call.why_not("cpu", q, k, v, params) is None
    if not _extension.ext.cuda_targets():
        assert "no CUDA kernels" in _ffi_call.why_not("cuda", q, k, v, params)
    q64 = np.zeros(q.shape, np.float64)  # NumPy: float64 even without jax_enable_x64
    assert "float64" in _ffi_call.why_not("cpu", q64, k, v, params)


def _direct_forward_call():
    """The forward custom call without the Python layers (and their validation)."""
    return jax.ffi.ffi_call(
        "jax_gna_fwd",
        (
            jax.ShapeDtypeStruct((2, 20, 2, 8), jnp.float32),
            jax.ShapeDtypeStruct((2, 20, 2), jnp.float32),
            jax.ShapeDtypeStruct((0,), jnp.uint8),
        ),
    )


def test_host_helper_and_handler_reject_an_illegal_window():
    q, k, v = CASES[0].inputs()
    shapes = ([2, 20, 2, 8], [2, 20, 2, 8], [2, 20, 2, 8], "float32")
    with pytest.raises(ValueError, match="illegal window on axis 0"):
        _extension.ext.fwd_workspace_bytes(*shapes, [21], [1], [1], [0])
    # The handler checks too (a direct call that bypasses the Python validation).
    attrs = make_params(q, k, v, (5,)).forward_attrs() | {"kernel_size": np.asarray([30], np.int64)}
    with pytest.raises(Exception, match="illegal window on axis 0"):
        jax.block_until_ready(_direct_forward_call()(q, k, v, **attrs))


def test_handler_checks_tile_attributes_and_otherwise_ignores_them():
    q, k, v = CASES[0].inputs()
    attrs = make_params(q, k, v, (5,)).forward_attrs()
    assert attrs["q_tile"].size == 0 and attrs["kv_tile"].size == 0  # unset
    want = _direct_forward_call()(q, k, v, **attrs)
    tiled = attrs | {"q_tile": np.asarray([4], np.int64), "kv_tile": np.asarray([8], np.int64)}
    got = _direct_forward_call()(q, k, v, **tiled)  # the CPU kernel has no tiles
    np.testing.assert_array_equal(got[0], want[0])
    for bad, match in [
        ({"q_tile": np.asarray([4, 4], np.int64)}, "one entry per spatial axis"),
        ({"kv_tile": np.asarray([0], np.int64)}, "tile shapes must be positive"),
    ]:
        with pytest.raises(Exception, match=match):
            jax.block_until_ready(_direct_forward_call()(q, k, v, **(tiled | bad)))


@pytest.mark.parametrize("deterministic", [True, False])
def test_both_backward_modes_give_the_reference_gradients(deterministic):
    """The CPU kernel ignores the flag (it is deterministic either way): both modes must give
    jax.grad of the reference, bit-identical to each other, through the public API."""
    case = CASES[4]  # 2-D, MQA, stride, dilation, causal
    q, k, v = case.inputs()

    def fn(implementation, **kw):
        def attend(q, k, v):
            if implementation == "reference":
                return reference.gna(q, k, v, **case.window(), return_lse=True)
            return jax_gna.gna(
                q, k, v, **case.window(), return_lse=True, implementation=implementation, **kw
            )

        return attend

    results, grads = _vjp(fn("cpu", deterministic=deterministic), q, k, v)
    ref_results, ref_grads = _vjp(fn("reference"), q, k, v)
    chex.assert_trees_all_close(results, ref_results, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(grads, ref_grads, atol=1e-4, rtol=1e-4)
    _, other = _vjp(fn("cpu", deterministic=not deterministic), q, k, v)
    jax.tree.map(np.testing.assert_array_equal, grads, other)


@pytest.mark.parametrize("view", [False, True], ids=["grid", "view"])
def test_backward_split_into_query_slices_matches_the_oracle(view):
    """One batch entry and one kv head with work for many threads: the backward splits the
    queries into slices, each summing dK/dV over the band of keys it sees (odd extents, stride,
    dilation, causal, GQA; a view whose queries run past the axis and whose keys hang over it)."""
    extent = (37, 34)
    window = ((5, 7), (2, 1), (1, 2), (False, True))
    views = ((9, 24, 3, 30), (2, 33, -2, 36)) if view else tuple((0, n, 0, n) for n in extent)
    nq, nk = tuple(v[1] for v in views), tuple(v[3] for v in views)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, *nq, 2, 32), dtype=np.float32)
    k = rng.standard_normal((1, *nk, 1, 32), dtype=np.float32)
    v = rng.standard_normal((1, *nk, 1, 16), dtype=np.float32)
    dout = rng.standard_normal((1, *nq, 2, 16), dtype=np.float32)
    dlse = rng.standard_normal((1, *nq, 2), dtype=np.float32)
    params = GnaParams(*window, 0.25, view=tuple((n, v[0], v[2]) for n, v in zip(extent, views)))
    out, lse = _ffi_call.forward(params, q, k, v)
    grads = _ffi_call.backward(params, dout, q, k, v, out, lse, dlse)
    mask = oracle.view_visible(extent, views, *window)
    want = oracle.attention(q, k, v, *window, rank=2, scale=0.25, mask=mask, dout=dout, dlse=dlse)[
        2
    ]
    for name, got, w in zip("qkv", grads, want):
        np.testing.assert_allclose(np.asarray(got), w, rtol=1e-4, atol=1e-4, err_msg=f"d{name}")
