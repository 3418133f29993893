"""The FFI op on sharded inputs (4 fake CPU devices, tests/conftest.py): batch- and
head-sharded inputs, Auto and Explicit meshes, GQA. Values match the reference, results keep
the input's sharding, and the compiled HLO has no all-gather (each device runs its shard)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_gna
from jax_gna import _extension, _ffi_op, reference
from jax_gna._params import make_params

pytestmark = [
    pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing)),
    pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (fake) devices"),
]

WINDOW = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
TOL = dict(atol=1e-4, rtol=1e-4)
MODES = [AxisType.Auto, AxisType.Explicit]


def _inputs():
    rng = np.random.default_rng(0)  # not jax.random: it compiles per shape (slow on CPU)
    shapes = [(4, 8, 9, 4, 8), (4, 8, 9, 2, 8), (4, 8, 9, 2, 6)]
    return tuple(jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes)


def _ffi(q, k, v):
    return _ffi_op.gna_ffi(q, k, v, make_params(q, k, v, **WINDOW))


def _loss(fn):
    def loss(q, k, v):
        out, lse = fn(q, k, v)
        return jnp.sum(out * jnp.cos(out)) + jnp.sum(jnp.sin(lse))

    return loss


def _reference(q, k, v):
    return reference.gna(q, k, v, **WINDOW, return_lse=True)


@pytest.fixture(scope="module")
def expected():
    q, k, v = _inputs()
    results = jax.jit(_reference)(q, k, v)
    grads = jax.jit(jax.grad(_loss(_reference), (0, 1, 2)))(q, k, v)
    return results, grads


def _put(mesh, x, spec):
    return jax.device_put(x, NamedSharding(mesh, spec))


def _spec(x):
    spec = tuple(x.sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


LAYOUTS = {
    # name: (mesh shape, mesh axes, q/k/v spec)
    "batch": ((4,), ("b",), P("b")),
    "heads": ((2,), ("h",), P(None, None, None, "h")),
    "batch-and-heads": ((2, 2), ("b", "h"), P("b", None, None, "h")),
}


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_sharded_inputs_run_per_shard(layout, mode, expected):
    mesh_shape, axes, spec = LAYOUTS[layout]
    mesh = jax.make_mesh(mesh_shape, axes, axis_types=(mode,) * len(axes))
    q, k, v = _inputs()
    with jax.set_mesh(mesh):
        q, k, v = (_put(mesh, x, spec) for x in (q, k, v))
        forward = jax.jit(_ffi)
        backward = jax.jit(jax.grad(_loss(_ffi), (0, 1, 2)))
        results, grads = forward(q, k, v), backward(q, k, v)
        hlo = (
            forward.lower(q, k, v).compile().as_text() + backward.lower(q, k, v).compile().as_text()
        )
    chex.assert_trees_all_close((results, grads), expected, **TOL)
    assert "all-gather" not in hlo
    assert "jax_gna_fwd" in hlo and "jax_gna_bwd" in hlo
    want = tuple(spec) + (None,) * (q.ndim - len(spec))
    assert _spec(results[0])[:-1] == want[:-1]
    assert _spec(results[1]) == want[:-1]
    assert all(_spec(g)[:-1] == want[:-1] for g in grads)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_query_heads_sharded_with_replicated_kv(mode, expected):
    """GQA: q heads split over 2 devices, k/v replicated: every shard must get the kv heads of
    its own query heads (partition() derives all shardings from q)."""
    mesh = jax.make_mesh((2,), ("h",), axis_types=(mode,))
    q, k, v = _inputs()
    with jax.set_mesh(mesh):
        q = _put(mesh, q, P(None, None, None, "h"))
        k, v = _put(mesh, k, P()), _put(mesh, v, P())
        forward = jax.jit(_ffi)
        results = forward(q, k, v)
        grads = jax.jit(jax.grad(_loss(_ffi), (0, 1, 2)))(q, k, v)
        hlo = forward.lower(q, k, v).compile().as_text()
    chex.assert_trees_all_close((results, grads), expected, **TOL)
    assert "all-gather" not in hlo  # the forward only slices the replicated k/v


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_heads_sharded_finer_than_kv_heads_stay_correct(mode, expected):
    """4 devices over 4 query heads but only 2 kv heads: heads cannot stay split (a shard would
    need half a kv head group), so they are gathered; values must still be right."""
    mesh = jax.make_mesh((4,), ("h",), axis_types=(mode,))
    q, k, v = _inputs()
    with jax.set_mesh(mesh):
        q = _put(mesh, q, P(None, None, None, "h"))
        results = jax.jit(_ffi)(q, k, v)
        grads = jax.jit(jax.grad(_loss(_ffi), (0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close((results, grads), expected, **TOL)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_spatially_sharded_inputs_stay_correct(mode, expected):
    mesh = jax.make_mesh((2,), ("x",), axis_types=(mode,))
    q, k, v = _inputs()
    with jax.set_mesh(mesh):
        q, k, v = (_put(mesh, x, P(None, "x")) for x in (q, k, v))
        results = jax.jit(_ffi)(q, k, v)
    chex.assert_trees_all_close(results, expected[0], **TOL)


def test_xla_backward_stand_in_runs_per_shard_in_explicit_mesh(expected):
    """The backward that GPUs use while the build has no CUDA backward kernels, called
    directly (on CPU the FFI backward is chosen)."""
    mesh = jax.make_mesh((4,), ("b",), axis_types=(AxisType.Explicit,))
    q, k, v = _inputs()
    params = make_params(q, k, v, **WINDOW)
    with jax.set_mesh(mesh):
        q, k, v = (_put(mesh, x, P("b")) for x in (q, k, v))

        def grads(q, k, v):
            (out, lse), pullback = jax.vjp(_ffi, q, k, v)
            dout, dlse = jax.grad(lambda o, s: _loss(lambda *_: (o, s))(q, k, v), (0, 1))(out, lse)
            return _ffi_op._xla_backward(params, dout, q, k, v, out, lse, dlse)

        result = jax.jit(grads)(q, k, v)
    chex.assert_trees_all_close(result, expected[1], **TOL)
    assert np.all([_spec(g)[0] == "b" for g in result])


@pytest.mark.parametrize("implementation", ["cpu", "xla", "reference"])
@pytest.mark.parametrize("layout", ["batch", "heads"])
def test_gna_inside_a_users_shard_map(layout, implementation, expected):
    """`jax_gna.gna` called per shard inside the user's own `shard_map` (type checks on): its
    results vary over the mesh axis like its inputs, so gradients flow; they match the
    reference on the whole arrays. (The custom calls used to type their results as the same on
    every device, and differentiating failed.)"""
    mesh_shape, axes, spec = LAYOUTS[layout]
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[: mesh_shape[0]]), axes)

    def per_shard(q, k, v):
        out, lse = jax_gna.gna(q, k, v, **WINDOW, return_lse=True, implementation=implementation)
        assert set(axes) <= _varying(out) and set(axes) <= _varying(lse)
        return out, lse

    lse_spec = P(*(tuple(spec) + (None,) * 4)[:4])
    fn = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec,) * 3, out_specs=(spec, lse_spec))
    q, k, v = (_put(mesh, x, spec) for x in _inputs())
    results = jax.jit(fn)(q, k, v)
    grads = jax.jit(jax.grad(_loss(fn), (0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close((results, grads), expected, **TOL)


def _varying(x) -> set:
    """The mesh axes `x` is typed to vary over inside shard_map."""
    return set(jax.typeof(x).manual_axis_type.varying)
