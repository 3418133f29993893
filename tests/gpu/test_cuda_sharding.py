"""implementation="cuda" on inputs sharded over a one-GPU mesh, Explicit (jax's default) and
Auto, with and without a mesh context (`jax.set_mesh`): values and gradients equal those of the
same call on unsharded inputs (and the reference), and results keep the input's sharding; and
`gna_sharded` on a one-GPU mesh runs the kernels with the caller's tiles and determinism.
Run on a GPU machine with ``python -m pytest -m gpu tests/gpu``."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_gna
from jax_gna import parallel, reference

pytestmark = pytest.mark.gpu

WINDOW = dict(kernel_size=(5, 3), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
# GQA with 5 extra tokens; head dim 128 is in every kernel set.
SHAPES = [(2, 16, 12, 4, 128), (2, 16, 12, 2, 128), (2, 16, 12, 2, 128), (2, 5, 2, 128)]


def _inputs(device):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s, dtype=np.float32) for s in SHAPES + SHAPES[-1:]]
    return tuple(jax.device_put(jnp.asarray(x, jnp.bfloat16), device) for x in arrays)


def _skip_reason() -> str | None:
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        return "no GPU visible to JAX"
    q, k, v, _, _ = _inputs(gpu)
    return jax_gna.supported_implementations(q, k, v, **WINDOW)["cuda"]


_REASON = _skip_reason()
if _REASON is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_REASON)]


def _results_and_grads(implementation):
    def loss(q, k, v, ek, ev):
        out, lse = jax_gna.gna(
            q, k, v, **WINDOW, additional_keys=ek, additional_values=ev, return_lse=True,
            implementation=implementation,
        )  # fmt: skip
        out32 = out.astype(jnp.float32)
        return jnp.sum(out32 * jnp.cos(out32)) + jnp.sum(jnp.sin(lse)), (out, lse)

    def run(*xs):
        grads, results = jax.grad(loss, (0, 1, 2, 3, 4), has_aux=True)(*xs)
        return results, grads

    return jax.jit(run)


def _spec(x) -> tuple:
    spec = tuple(x.sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


@pytest.mark.parametrize("with_context", [False, True], ids=["no-context", "set_mesh"])
@pytest.mark.parametrize("mode", [AxisType.Explicit, AxisType.Auto], ids=lambda m: m.name)
@pytest.mark.parametrize(
    "spec, extra_spec",
    [(P("x"), P("x")), (P(None, None, None, "x"), P(None, None, "x"))],
    ids=["batch", "heads"],
)
def test_cuda_on_a_one_gpu_mesh(spec, extra_spec, mode, with_context):
    gpu = jax.devices("gpu")[0]
    xs = _inputs(gpu)
    run = _results_and_grads("cuda")
    want = run(*xs)
    mesh = jax.make_mesh((1,), ("x",), axis_types=(mode,), devices=[gpu])
    specs = (spec,) * 3 + (extra_spec,) * 2
    sharded = tuple(jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(xs, specs))
    if with_context:
        with jax.set_mesh(mesh):
            got = run(*sharded)
    else:
        got = run(*sharded)
    chex.assert_trees_all_close(got, want, atol=2e-2, rtol=2e-2)
    (out, lse), grads = got
    q_spec = _spec(sharded[0])
    want_shardings = [(out, q_spec[:-1] + (None,)), (lse, q_spec[:-1])]
    want_shardings += [(g, _spec(x)) for g, x in zip(grads, sharded)]
    for result, result_spec in want_shardings:
        # One device: any spec is equivalent, and Auto meshes may name the axis or not.
        assert result.sharding.is_equivalent_to(NamedSharding(mesh, P(*result_spec)), result.ndim)
        if mode == AxisType.Explicit:
            assert _spec(result) == result_spec
    # and against the oracle, on the CPU in float32
    cpu = jax.devices("cpu")[0]
    q, k, v, ek, ev = (jax.device_put(x, cpu).astype(jnp.float32) for x in xs)
    with jax.default_device(cpu):
        expected = jax.jit(
            lambda *a: reference.gna(*a[:3], **WINDOW, additional_keys=a[3], additional_values=a[4])
        )(q, k, v, ek, ev)
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), expected, atol=3e-2, rtol=3e-2)


def test_gna_sharded_runs_the_kernels_with_the_callers_tiles_and_determinism():
    """`gna_sharded` takes `gna`'s tile shapes and `deterministic`: the shard's forward calls
    run those tiles, its backward calls are deterministic, and the gradients equal `gna`'s
    with the same options."""
    gpu = jax.devices("gpu")[0]
    q, k, v, _, _ = _inputs(gpu)
    tiles = dict(q_tile_shape=(8, 16), kv_tile_shape=(8, 16))
    reason = jax_gna.supported_implementations(q, k, v, **WINDOW, **tiles)["cuda"]
    if reason is not None:
        pytest.skip(reason)
    options = dict(**WINDOW, **tiles, implementation="cuda", deterministic=True)
    mesh = jax.make_mesh((1,), ("x",), devices=[gpu])

    def grad(attention):
        loss = lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v).astype(jnp.float32)))  # noqa: E731
        return jax.jit(jax.grad(loss, (0, 1, 2)))

    sharded = grad(
        lambda q, k, v: parallel.gna_sharded(q, k, v, **options, mesh=mesh, axis_name="x")
    )
    text = sharded.lower(q, k, v).as_text()
    forward = [line for line in text.splitlines() if "stablehlo.custom_call @jax_gna_fwd(" in line]
    backward = [line for line in text.splitlines() if "stablehlo.custom_call @jax_gna_bwd(" in line]
    assert forward and all("q_tile = dense<[8, 16]>" in call for call in forward)
    assert all("kv_tile = dense<[8, 16]>" in call for call in forward)
    assert all("deterministic = 1 : i64" in call for call in backward)
    single = grad(lambda q, k, v: jax_gna.gna(q, k, v, **options))
    chex.assert_trees_all_close(sharded(q, k, v), single(q, k, v), atol=2e-2, rtol=2e-2)
