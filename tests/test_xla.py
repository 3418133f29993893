"""``implementation="xla"`` (`jax_gna._xla`, tiled and memory-efficient) against the brute-force
oracle, and its gradients against both the oracle's VJP and autodiff of the dense reference.

Tiny problems fit in one query tile with the default tiling, so many cases shrink the minimum
tile (`_MIN_TILE_TOKENS`) and the `lax.map` chunk (`_SCORES_PER_CHUNK`) to exercise many tiles,
partial last tiles, boxes clamped at the borders and dilation groups of different lengths.

Every case compiles its own program (the window is static), so the default run keeps the
sweep small enough for CI; ``JAX_GNA_EXTENDED_TESTS=1`` runs 60 forward and 15 gradient cases
per rank.
"""

import contextlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _xla
from jax_gna._params import make_params
from tests import oracle

f32, bf16, f16 = jnp.float32, jnp.bfloat16, jnp.float16
OUT_TOL = {f32: (2e-5, 2e-5), f16: (1e-2, 5e-3), bf16: (3e-2, 1e-2)}
LSE_TOL = (3e-5, 1e-5)
GRAD_TOL = (1e-4, 1e-4)
DTYPES = (f32, f32, f32, bf16, f16)  # case i uses DTYPES[i % 5]
MAX_EXTENT = {1: 48, 2: 12, 3: 7}
EXTENDED = os.environ.get("JAX_GNA_EXTENDED_TESTS", "0") not in ("", "0")
BATCHES = [(), (2,), (1, 2), (2, 1, 1)]


@contextlib.contextmanager
def tiling(min_tile_tokens=None, scores_per_chunk=None):
    """Temporarily change the xla path's tiling constants (and drop its plan caches)."""
    saved = _xla._MIN_TILE_TOKENS, _xla._SCORES_PER_CHUNK
    try:
        if min_tile_tokens is not None:
            _xla._MIN_TILE_TOKENS = min_tile_tokens
        if scores_per_chunk is not None:
            _xla._SCORES_PER_CHUNK = scores_per_chunk
        _xla.plan.cache_clear()
        _xla.tile_table.cache_clear()
        yield
    finally:
        _xla._MIN_TILE_TOKENS, _xla._SCORES_PER_CHUNK = saved
        _xla.plan.cache_clear()
        _xla.tile_table.cache_clear()


def make_case(rank, i, *, dtype, seed_base=0, extra=None, max_tokens=200):
    rng = np.random.default_rng([seed_base, rank, i])
    while True:
        spatial = tuple(int(x) for x in rng.integers(2, MAX_EXTENT[rank] + 1, size=rank))
        if math.prod(spatial) <= max_tokens:
            break
    batch = BATCHES[int(rng.integers(len(BATCHES)))]
    hkv = int(rng.integers(1, 3))
    h = hkv * int(rng.integers(1, 4))
    d = int(rng.choice([4, 8]))
    dv = int(rng.choice([d, 6]))
    e = int(rng.integers(1, 4)) if (rng.random() < 0.3 if extra is None else extra) else 0
    ks, ss, ds, cs = oracle.random_window(rng, spatial)
    scale = None if rng.random() < 0.4 else float(rng.uniform(0.05, 1.5))
    tile = [None, 1, 4, 12][int(rng.integers(4))]
    chunk = [None, None, 1, 5000][int(rng.integers(4))]
    normal = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # noqa: E731
    arrays = dict(
        query=normal(*batch, *spatial, h, d),
        key=normal(*batch, *spatial, hkv, d),
        value=normal(*batch, *spatial, hkv, dv),
    )
    if e:
        arrays["additional_keys"] = normal(*batch, e, hkv, d)
        arrays["additional_values"] = normal(*batch, e, hkv, dv)
    window = dict(kernel_size=ks, stride=ss, dilation=ds, is_causal=cs)
    what = (
        f"{ {k: tuple(v.shape) for k, v in arrays.items()} } {dtype.__name__} {window} "
        f"scale={scale} min_tile_tokens={tile} scores_per_chunk={chunk}"
    )
    return arrays, window, scale, dict(min_tile_tokens=tile, scores_per_chunk=chunk), what


def run_oracle(arrays, window, scale, *, dout=None, dlse=None):
    f64 = {k: np.asarray(v).astype(np.float64) for k, v in arrays.items()}
    return oracle.attention(
        f64["query"],
        f64["key"],
        f64["value"],
        *window.values(),
        rank=len(window["kernel_size"]),
        extra_k=f64.get("additional_keys"),
        extra_v=f64.get("additional_values"),
        scale=scale,
        dout=dout,
        dlse=dlse,
    )


def assert_close(got, want, tol, what):
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64), want, atol=tol[0], rtol=tol[1], err_msg=what
    )


FWD_PER_RANK = 60 if EXTENDED else 20
FWD_CASES = [(rank, i) for rank in (1, 2, 3) for i in range(FWD_PER_RANK)]


@pytest.mark.parametrize(
    "rank,i", FWD_CASES, ids=[f"{r}d-{DTYPES[i % 5].__name__}-seed{i}" for r, i in FWD_CASES]
)
def test_xla_forward_matches_oracle(rank, i):
    dtype = DTYPES[i % 5]
    arrays, window, scale, tiles, what = make_case(rank, i, dtype=dtype)
    q, k, v = arrays["query"], arrays["key"], arrays["value"]
    with tiling(**tiles):
        if i % 3 == 0 and "additional_keys" not in arrays:
            # The op itself, on normalised parameters.
            params = make_params(q, k, v, **window, scale=scale)
            out, lse = jax.jit(_xla.gna_xla, static_argnums=3)(q, k, v, params)
        else:
            call = lambda a: jax_gna.gna(  # noqa: E731
                **a, **window, scale=scale, return_lse=True, implementation="xla"
            )
            out, lse = jax.jit(call)(arrays)
    assert out.dtype == dtype and out.shape == q.shape[:-1] + v.shape[-1:], what
    assert lse.dtype == f32 and lse.shape == q.shape[:-1], what
    want_out, want_lse = run_oracle(arrays, window, scale)
    assert_close(out, want_out, OUT_TOL[dtype], "out " + what)
    assert_close(lse, want_lse, LSE_TOL, "lse " + what)


# Larger problems with the default tiling: several natural tiles per axis.
BIG = {
    "1d_L300_K9_s3_d2_causal": ((300,), (9,), (3,), (2,), (True,)),
    "1d_L257_K16_s5": ((257,), (16,), (5,), (1,), (False,)),
    "2d_23x19_mixed": ((23, 19), (5, 4), (2, 1), (2, 3), (False, True)),
    "3d_9x8x7_mixed": ((9, 8, 7), (3, 4, 2), (1, 3, 2), (2, 1, 3), (True, False, False)),
}


@pytest.mark.parametrize("name", list(BIG))
def test_xla_forward_default_tiling_larger_problems(name):
    spatial, ks, ss, ds, cs = BIG[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    arrays = dict(
        query=jnp.asarray(rng.normal(size=(1, *spatial, 4, 8)), f32),
        key=jnp.asarray(rng.normal(size=(1, *spatial, 2, 8)), f32),
        value=jnp.asarray(rng.normal(size=(1, *spatial, 2, 8)), f32),
    )
    window = dict(kernel_size=ks, stride=ss, dilation=ds, is_causal=cs)
    call = lambda a: jax_gna.gna(**a, **window, return_lse=True, implementation="xla")  # noqa: E731
    out, lse = jax.jit(call)(arrays)
    want_out, want_lse = run_oracle(arrays, window, None)
    assert_close(out, want_out, OUT_TOL[f32], name)
    assert_close(lse, want_lse, LSE_TOL, name)


GRAD_PER_RANK = 15 if EXTENDED else 3
GRAD_CASES = [
    (rank, i, mode)
    for rank in (1, 2, 3)
    for i in range(GRAD_PER_RANK)
    for mode in [("both", "out", "lse")[i % 3]]
]
NAMES = ("query", "key", "value", "additional_keys", "additional_values")


def _loss(impl, window, scale, w_out, w_lse):
    def loss(a):
        out, lse = jax_gna.gna(**a, **window, scale=scale, return_lse=True, implementation=impl)
        total = 0.0
        if w_out is not None:
            total = total + jnp.sum(out * w_out)
        if w_lse is not None:
            total = total + jnp.sum(lse * w_lse)
        return total

    return loss


@pytest.mark.parametrize(
    "rank,i,mode", GRAD_CASES, ids=[f"{r}d-seed{i}-loss_{m}" for r, i, m in GRAD_CASES]
)
def test_xla_gradients_match_reference_and_oracle(rank, i, mode):
    """d/d(q, k, v, extra k/v) of a random linear function of out and/or lse."""
    arrays, window, scale, tiles, what = make_case(
        rank, i, dtype=f32, seed_base=1, extra=i % 2 == 0, max_tokens=120
    )
    rng = np.random.default_rng([2, rank, i])
    q, v = arrays["query"], arrays["value"]
    w_out = rng.normal(size=q.shape[:-1] + v.shape[-1:]) if mode != "lse" else None
    w_lse = rng.normal(size=q.shape[:-1]) if mode != "out" else None
    with tiling(**tiles):
        got = jax.jit(jax.grad(_loss("xla", window, scale, w_out, w_lse)))(arrays)
    ref = jax.jit(jax.grad(_loss("reference", window, scale, w_out, w_lse)))(arrays)
    _, _, want = run_oracle(
        arrays,
        window,
        scale,
        dout=w_out if w_out is not None else np.zeros(q.shape[:-1] + v.shape[-1:]),
        dlse=w_lse if w_lse is not None else np.zeros(q.shape[:-1]),
    )
    for name, g in zip(NAMES, want):
        if g is None:
            continue
        assert_close(got[name], g, GRAD_TOL, f"xla d{name} vs oracle {what}")
        assert_close(got[name], np.asarray(ref[name]), GRAD_TOL, f"xla d{name} vs ref {what}")


def test_xla_gradients_half_precision_close_to_reference():
    arrays, window, scale, tiles, what = make_case(2, 99, dtype=bf16, seed_base=3, extra=True)
    with tiling(**tiles):
        got = jax.jit(jax.grad(_loss("xla", window, scale, None, 1.0)))(arrays)
    ref = jax.jit(jax.grad(_loss("reference", window, scale, None, 1.0)))(arrays)
    for name in NAMES:
        assert got[name].dtype == bf16, name
        assert_close(got[name], np.asarray(ref[name], np.float64), (5e-2, 2e-2), name + what)


def _temp_bytes(fn, *avals):
    return jax.jit(fn).lower(*avals).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("what", ["forward", "gradient"])
def test_xla_memory_grows_linearly_not_quadratically(what):
    """Compiled temp memory of the xla path: far below the dense [N, N] scores and roughly
    proportional to N (x4 tokens -> at most ~x4 memory, the dense reference would be x16)."""

    def fn(q, k, v):
        return jax_gna.gna(q, k, v, (7,), dilation=2, implementation="xla")

    if what == "gradient":
        fwd = fn
        fn = jax.grad(lambda q, k, v: jnp.sum(fwd(q, k, v)), argnums=(0, 1, 2))
    temps = {}
    for n in (2048, 8192):
        aval = jax.ShapeDtypeStruct((1, n, 2, 16), f32)
        temps[n] = _temp_bytes(fn, aval, aval, aval)
    dense_scores = 8192 * 8192 * 2 * 4
    assert temps[8192] < dense_scores / 16, temps
    assert temps[8192] < 6 * temps[2048], temps
