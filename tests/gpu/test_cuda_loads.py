"""implementation="cuda" on a Hopper GPU: how the kernels load tiles (cuda/common/tile_loads.h).

- Every legal dilation runs on the kernels: random problems with dilations up to 32 per axis in
  2-D/3-D and up to 64 in 1-D (past the TMA element-stride limit of 8 and past one box per
  tile), odd extents, several batch entries, GQA, causal axes, extra tokens, each compiled tile
  configuration; `supported_implementations` names `cuda` for all of them, and the forward, the
  LSE and the gradients match the reference (the CUDA backward ran, not the xla stand-in).
- One batch entry's non-finite values never reach another's results: NaN/Inf in the keys or
  values of batch entry 1 only, 3-D with odd frame counts (tiles straddle the end of the first
  axis); entry 0's output, LSE and gradients are finite and equal to the single-entry result.

Run with ``python -m pytest -m gpu tests/gpu/test_cuda_loads.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# tests/gpu is on sys.path while pytest collects this file: the forward/backward tests' helpers.
from test_cuda_bwd import BWD_HEAD_DIMS, SCORE_BUDGET, _case, _check_case, _scores
from test_cuda_fwd import DTYPES, _check_against_reference, _inputs, _skip_reason, _window

import jax_gna
from jax_gna import _extension, _tiles

pytestmark = pytest.mark.gpu

_REASON = _skip_reason()
if _REASON is None and not _extension.ext.cuda_has_backward():
    _REASON = "this build has no CUDA backward kernels"
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]

N_DILATED = 24  # random problems per rank
CHUNKS = 6  # separate test items, so that pytest-xdist spreads them
# Past the element-stride limit (8) and past one TMA box per tile (1-D: 128 x 3 > 256).
DILATIONS = {1: (3, 5, 8, 9, 16, 33, 64), 2: (1, 2, 8, 9, 13, 16, 32), 3: (1, 2, 5, 9, 16, 32)}


def _dilated_case(rng: np.random.Generator, rank: int) -> dict:
    extents, kernel, stride, dilation, causal = [], [], [], [], []
    for _ in range(rank):
        d = int(rng.choice(DILATIONS[rank]))
        k = int(rng.integers(2, {1: 24, 2: 6, 3: 4}[rank] if d <= 9 else 3 if rank > 1 else 9))
        kernel.append(k)
        dilation.append(d)
        # Odd extents, often not a multiple of the dilation (groups of two lengths).
        extents.append(k * d + int(rng.integers(0, 2 * d + 3)))
        stride.append(int(rng.integers(1, k + 1)))
        causal.append(bool(rng.random() < 0.25))
    heads_kv = int(rng.choice([1, 2]))
    case = _case(
        extents,
        kernel,
        stride,
        dilation,
        causal,
        batch=[(1,), (2,), (2, 1)][int(rng.integers(3))],
        heads=heads_kv * int(rng.choice([1, 2])),
        heads_kv=heads_kv,
        dim=int(rng.choice(BWD_HEAD_DIMS)),
        dtype=DTYPES[int(rng.integers(len(DTYPES)))],
        extra=int(rng.choice([0, 0, 3])),
        lse_cotangent=bool(rng.random() < 0.3),
    )
    configs = _tiles.supported_tiles(rank, case["dim"], case["dtype"])
    case["tiles"] = configs[int(rng.integers(len(configs)))]
    return case


def _dilated_cases(rank: int) -> list[dict]:
    rng = np.random.default_rng(3000 + rank)
    cases = []
    while len(cases) < N_DILATED:
        case = _dilated_case(rng, rank)
        if _scores(case) <= SCORE_BUDGET:  # keeps the dense CPU oracle fast
            cases.append(case)
    return cases


@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_every_dilation_runs_on_the_kernels(rank, chunk):
    cases = _dilated_cases(rank)
    for i in range(chunk, len(cases), CHUNKS):
        case = cases[i]
        q, k, v, _ = _inputs(case, seed=i)
        tiles = case["tiles"]
        supported = jax_gna.supported_implementations(
            q, k, v, **_window(case), q_tile_shape=tiles.q, kv_tile_shape=tiles.kv
        )
        assert supported["cuda"] is None, (supported["cuda"], case)
        _check_against_reference(case, seed=i)  # forward and LSE, with the case's tiles
        _check_case(case, seed=i)  # gradients (the kernels' pick of tiles)


# 3-D, odd frame counts: a 2- or 4-frame tile straddles the end of the time axis.
ISOLATION_CASES = {
    "21-frames": _case((21, 8, 8), (3, 3, 3), dim=128),
    "odd-dilated": _case((31, 9, 16), (4, 3, 5), (2, 1, 5), (3, 1, 2)),
    "causal-gqa-extra": _case((13, 8, 8), (5, 3, 3), is_causal=(True, False, False), extra=3),
    "2d-odd": _case((25, 17), (5, 3)),
    "1d-odd": _case((301,), (37,), (5,), (3,)),
}


@pytest.mark.parametrize("bad", ["nan", "inf"])
@pytest.mark.parametrize("tensor", ["key", "value"])
@pytest.mark.parametrize("name", list(ISOLATION_CASES))
def test_a_batch_entry_never_sees_another_entrys_values(name, tensor, bad):
    case = dict(ISOLATION_CASES[name], batch=(2,))
    q, k, v, extra = _inputs(case, seed=7)
    w = _window(case)
    dout = jnp.asarray(np.random.default_rng(8).standard_normal(q.shape), q.dtype)
    # Entry 1: its first and last frames non-finite (the rows a straddling tile would load).
    poison = jnp.full(k.shape[2:], float(bad), k.dtype)
    bad_kv = {"key": k, "value": v}[tensor]
    bad_kv = bad_kv.at[1, 0].set(poison).at[1, -1].set(poison)
    k, v = (bad_kv, v) if tensor == "key" else (k, bad_kv)

    def attend(q, k, v, extra):
        # Deterministic: dQ partials add in a fixed order, so runs can be compared bit for bit.
        return jax_gna.gna(
            q, k, v, **w, **extra, return_lse=True, implementation="cuda", deterministic=True
        )

    def grads(q, k, v, extra):
        def loss(q, k, v):
            out, lse = attend(q, k, v, extra)
            return jnp.sum(out[0].astype(jnp.float32) * dout[0].astype(jnp.float32)) + jnp.sum(
                lse[0]
            )

        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    out, lse = jax.jit(attend)(q, k, v, extra)
    dq, dk, dv = jax.jit(grads)(q, k, v, extra)
    one = {n: x[:1] for n, x in extra.items()}
    out1, lse1 = jax.jit(attend)(q[:1], k[:1], v[:1], one)
    dq1, dk1, dv1 = jax.jit(grads)(q[:1], k[:1], v[:1], one)
    # The kernels' results are bit-identical; extra tokens merge in XLA ops, which XLA may fuse
    # differently for one entry than for two (last-bit differences).
    tol = 2e-2 if case["extra"] else 0.0
    for got, want, what in [
        (out[0], out1[0], "out"),
        (lse[0], lse1[0], "lse"),
        (dq[0], dq1[0], "dq"),
        (dk[0], dk1[0], "dk"),
        (dv[0], dv1[0], "dv"),
    ]:
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        bad = int((~np.isfinite(got)).sum())
        assert bad == 0, f"{what} of entry 0 has {bad} non-finite values ({name})"
        np.testing.assert_allclose(
            got, want, rtol=tol, atol=tol, err_msg=f"{what} of entry 0 ({name})"
        )
