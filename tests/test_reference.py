"""`jax_gna.reference.gna` (dense masked jnp) against the brute-force float64 oracle.

Random sweeps: every case draws a legal window (K, stride, dilation, per-axis causal) and a
scale from its own seed; the array shapes come from a small list of "shape classes" (odd
extents, several leading batch dims, GQA/MQA, extra KV tokens, D != Dv, three dtypes) so that
eager jnp dispatch reuses its compiled ops across the cases of a class and 200 cases per rank
stay fast. Half-precision inputs are compared against the oracle run on the same rounded inputs.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_gna import reference
from tests import oracle

f32, bf16, f16 = jnp.float32, jnp.bfloat16, jnp.float16

# Output tolerances (absolute, relative). The reference rounds its output to the input dtype;
# the LSE is float32 from the same (rounded) inputs, so it stays tight for every dtype.
OUT_TOL = {f32: (2e-5, 2e-5), f16: (1e-2, 5e-3), bf16: (3e-2, 1e-2)}
LSE_TOL = (3e-5, 1e-5)

# (spatial, batch, heads, kv_heads, head_dim, value_head_dim, extra_tokens)
CLASSES = {
    1: [
        ((13,), (2,), 2, 1, 4, 4, 0),
        ((16,), (), 3, 3, 8, 5, 2),
        ((9,), (2, 1), 4, 2, 4, 4, 1),
    ],
    2: [
        ((5, 7), (2,), 2, 1, 4, 4, 0),  # MQA
        ((6, 6), (1,), 4, 2, 8, 8, 2),  # GQA, extra tokens
        ((7, 5), (), 3, 3, 4, 6, 2),  # no batch dim, Dv != D
        ((3, 9), (2, 3), 2, 2, 4, 4, 1),  # two batch dims
        ((4, 5), (1, 2, 1), 6, 3, 4, 4, 0),  # three batch dims
    ],
    3: [
        ((3, 5, 4), (2,), 2, 1, 4, 4, 0),
        ((5, 3, 5), (1,), 4, 2, 8, 8, 3),
        ((4, 4, 3), (), 3, 3, 4, 6, 2),
        ((3, 3, 5), (2, 2), 2, 2, 4, 4, 1),
        ((2, 5, 3), (1, 2, 1), 6, 3, 4, 4, 0),
    ],
}
PER_CLASS = {1: 20, 2: 40, 3: 40}  # 60 / 200 / 200 cases
DTYPES = (f32, f32, bf16, f16)  # case i uses DTYPES[i % 4]

CASES = [
    (rank, c, i)
    for rank, classes in CLASSES.items()
    for c in range(len(classes))
    for i in range(PER_CLASS[rank])
]


def make_case(rank, c, i, *, seed_base=0, dtype=None):
    """Arrays and the keyword arguments of one case: the shapes of class `c`, everything else
    drawn from the case's own seed."""
    spatial, batch, h, hkv, d, dv, e = CLASSES[rank][c]
    dtype = dtype or DTYPES[i % len(DTYPES)]
    rng = np.random.default_rng([seed_base, rank, c, i])
    ks, ss, ds, cs = oracle.random_window(rng, spatial)
    scale = None if rng.random() < 0.4 else float(rng.uniform(0.05, 1.5))
    normal = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # noqa: E731
    arrays = dict(
        query=normal(*batch, *spatial, h, d),
        key=normal(*batch, *spatial, hkv, d),
        value=normal(*batch, *spatial, hkv, dv),
    )
    if e:
        arrays["additional_keys"] = normal(*batch, e, hkv, d)
        arrays["additional_values"] = normal(*batch, e, hkv, dv)

    # Exercise the int/bool shorthands where the rank can still be inferred.
    def compact(t):
        return t[0] if len(set(t)) == 1 and rng.random() < 0.5 else t

    kw = dict(stride=compact(ss), dilation=compact(ds), is_causal=compact(cs), scale=scale)
    # An int kernel_size needs the rank from another tuple, or a shape with one reading.
    rank_fixed = any(isinstance(kw[n], tuple) for n in ("stride", "dilation", "is_causal"))
    kernel = compact(ks) if rank_fixed or (rank == 1 and not batch) else ks
    kw["kernel_size"] = kernel
    window = dict(kernel_size=ks, stride=ss, dilation=ds, is_causal=cs)
    return arrays, kw, window, dtype


def run_oracle(arrays, window, scale, rank, *, dout=None, dlse=None):
    f64 = {k: np.asarray(v).astype(np.float64) for k, v in arrays.items()}
    return oracle.attention(
        f64["query"],
        f64["key"],
        f64["value"],
        window["kernel_size"],
        window["stride"],
        window["dilation"],
        window["is_causal"],
        rank=rank,
        extra_k=f64.get("additional_keys"),
        extra_v=f64.get("additional_values"),
        scale=scale,
        dout=dout,
        dlse=dlse,
    )


def describe(arrays, window, kw):
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    return f"{shapes} {arrays['query'].dtype} {window} scale={kw['scale']}"


def assert_close(got, want, tol, what):
    atol, rtol = tol
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64), want, atol=atol, rtol=rtol, err_msg=what
    )


def _ids(cases, dtype=None):
    return [
        f"{r}d-class{c}-{(dtype or DTYPES[i % len(DTYPES)]).__name__}-seed{i}" for r, c, i in cases
    ]


@pytest.mark.parametrize("rank,c,i", CASES, ids=_ids(CASES))
def test_reference_matches_oracle(rank, c, i):
    arrays, kw, window, dtype = make_case(rank, c, i)
    what = describe(arrays, window, kw)
    q, k, v = arrays.pop("query"), arrays.pop("key"), arrays.pop("value")
    out, lse = reference.gna(q, k, v, **kw, **arrays, return_lse=True)
    assert out.shape == q.shape[:-1] + (v.shape[-1],) and out.dtype == dtype, what
    assert lse.shape == q.shape[:-1] and lse.dtype == jnp.float32, what
    want_out, want_lse = run_oracle(
        dict(query=q, key=k, value=v, **arrays), window, kw["scale"], rank
    )
    assert_close(out, want_out, OUT_TOL[dtype], "out " + what)
    assert_close(lse, want_lse, LSE_TOL, "lse " + what)
    assert np.array_equal(np.asarray(reference.gna(q, k, v, **kw, **arrays)), np.asarray(out))


# Gradients of the reference against the oracle's VJP: fp32 classes only.
# Gradients of the reference against the oracle's VJP: fp32, one case per class, under jit.
GRAD_CASES = [(rank, c, 0) for rank, classes in CLASSES.items() for c in range(len(classes))]


@pytest.mark.parametrize("rank,c,i", GRAD_CASES, ids=_ids(GRAD_CASES, f32))
def test_reference_gradients_match_oracle(rank, c, i):
    arrays, kw, window, _ = make_case(rank, c, i, seed_base=1, dtype=f32)
    what = describe(arrays, window, kw)
    rng = np.random.default_rng([7, rank, c, i])
    q = arrays["query"]
    w_out = rng.normal(size=q.shape[:-1] + (arrays["value"].shape[-1],))
    w_lse = rng.normal(size=q.shape[:-1])

    def loss(a):
        out, lse = reference.gna(**a, **kw, return_lse=True)
        return jnp.sum(out * w_out) + jnp.sum(lse * w_lse)

    grads = jax.jit(jax.grad(loss))(arrays)
    _, _, want = run_oracle(arrays, window, kw["scale"], rank, dout=w_out, dlse=w_lse)
    names = ["query", "key", "value", "additional_keys", "additional_values"]
    for name, g in zip(names, want):
        if g is not None:
            assert_close(grads[name], g, (5e-5, 5e-5), f"d{name} {what}")


@pytest.mark.parametrize("gqa", [1, 2, 4], ids=["mha", "gqa2", "mqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_full_window_1d_is_dense_attention(causal, gqa):
    """K == L: the same as `jax.nn.dot_product_attention` (an independent implementation)."""
    rng = np.random.default_rng(gqa + 10 * causal)
    q = jnp.asarray(rng.normal(size=(2, 12, 4, 8)), f32)
    k = jnp.asarray(rng.normal(size=(2, 12, 4 // gqa, 8)), f32)
    v = jnp.asarray(rng.normal(size=(2, 12, 4 // gqa, 8)), f32)
    got = jax.jit(lambda *a: reference.gna(*a, (12,), is_causal=causal))(q, k, v)
    dense = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal", "implementation"))
    want = dense(q, k, v, is_causal=causal, implementation="xla")
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_full_window_3d_with_extra_tokens_is_dense_attention():
    rng = np.random.default_rng(5)
    shape = (3, 4, 2)
    n = math.prod(shape)
    q = jnp.asarray(rng.normal(size=(1, *shape, 2, 8)), f32)
    k = jnp.asarray(rng.normal(size=(1, *shape, 2, 8)), f32)
    v = jnp.asarray(rng.normal(size=(1, *shape, 2, 8)), f32)
    ek = jnp.asarray(rng.normal(size=(1, 3, 2, 8)), f32)
    ev = jnp.asarray(rng.normal(size=(1, 3, 2, 8)), f32)
    got = jax.jit(
        lambda *a: reference.gna(*a[:3], shape, additional_keys=a[3], additional_values=a[4])
    )(q, k, v, ek, ev)

    @jax.jit
    def want_fn(q, k, v, ek, ev):
        kk = jnp.concatenate([k.reshape(1, n, 2, 8), ek], 1)
        vv = jnp.concatenate([v.reshape(1, n, 2, 8), ev], 1)
        return jax.nn.dot_product_attention(q.reshape(1, n, 2, 8), kk, vv, implementation="xla")

    want = want_fn(q, k, v, ek, ev)
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=2e-5, rtol=2e-5)
