"""implementation="cuda" exported with `jax.export` for a symbolic batch (and symbolic head
counts), serialized with its VJP and read back: at two concrete batch sizes its values and
gradients equal those of the same call traced for that size. The CUDA backward's workspace
grows with the batch and the heads; the export sizes it from one batch entry and GQA group
times the symbolic dims. Run on a GPU machine with ``python -m pytest -m gpu tests/gpu``."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

# tests/gpu is on sys.path while pytest collects this file.
from test_cuda_sharding import _skip_reason

import jax_gna

pytestmark = pytest.mark.gpu
_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]

WINDOW = dict(kernel_size=(5, 3), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
CHECKS = [export.DisabledSafetyCheck.custom_call(t) for t in ("jax_gna_fwd", "jax_gna_bwd")]


def _attend(q, k, v):
    return jax_gna.gna(q, k, v, **WINDOW, return_lse=True, implementation="cuda")


def _shapes(batch, heads, kv_heads):
    return [(batch, 16, 12, h, 128) for h in (heads, kv_heads, kv_heads)]


def _inputs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s, dtype=np.float32), jnp.bfloat16) for s in shapes]


@pytest.mark.parametrize("symbolic_heads", [False, True], ids=["batch", "batch-and-heads"])
def test_cuda_export_with_a_symbolic_batch(symbolic_heads):
    b, h = export.symbolic_shape("b, h")
    heads, kv_heads = (2 * h, h) if symbolic_heads else (4, 2)
    specs = [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in _shapes(b, heads, kv_heads)]
    exported = export.export(jax.jit(_attend), platforms=["cuda"], disabled_checks=CHECKS)(*specs)
    exported = export.deserialize(exported.serialize(vjp_order=1))
    gpu = jax.devices("gpu")[0]
    for batch, n_kv in ((1, 2), (3, 1 if symbolic_heads else 2)):
        xs = [jax.device_put(x, gpu) for x in _inputs(_shapes(batch, 2 * n_kv, n_kv))]
        want, pullback = jax.vjp(jax.jit(_attend), *xs)
        got = exported.call(*xs)
        chex.assert_trees_all_close(got, want, atol=2e-2, rtol=2e-2)
        cotangents = _inputs([w.shape for w in want], seed=1)
        cotangents[1] = cotangents[1].astype(jnp.float32)  # the lse's
        grads = exported.vjp().call(*xs, *cotangents)
        chex.assert_trees_all_close(grads, pullback(tuple(cotangents)), atol=5e-2, rtol=5e-2)
