"""Sharded inputs through `jax_gna.gna`, every CPU-side implementation, as a JAX user passes them
(fake CPU devices, tests/conftest.py): batch-, head- or spatially-sharded, on Explicit meshes
(jax's default axis type) and Auto ones, with and without a mesh context (`jax.set_mesh`), GQA
and extra tokens. Values and gradients equal the unsharded reference; results and gradients
keep their input's sharding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_gna
from jax_gna import _extension, parallel, reference

pytestmark = pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (fake) devices")

WINDOW = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
TOL = dict(atol=1e-4, rtol=1e-4)
IMPLEMENTATIONS = [
    pytest.param(
        "cpu", marks=pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))
    ),
    "xla",
    "reference",
    None,  # the default: `cpu` where the extension is built, else `xla`
]
LAYOUTS = {
    # name: (mesh shape, mesh axes, q/k/v spec, extra-token spec)
    "batch": ((4,), ("b",), P("b"), P("b")),
    "heads": ((2,), ("h",), P(None, None, None, "h"), P(None, None, "h")),
    "spatial": ((2,), ("x",), P(None, "x"), P()),
}


def _inputs(batch=(4,)):
    """GQA (4 query heads, 2 kv heads) with 3 extra tokens: q, k, v, extra k, extra v."""
    rng = np.random.default_rng(0)  # not jax.random: it compiles per shape (slow on CPU)
    shapes = [(8, 9, 4, 8), (8, 9, 2, 8), (8, 9, 2, 6), (3, 2, 8), (3, 2, 6)]
    return tuple(jnp.asarray(rng.standard_normal((*batch, *s), dtype=np.float32)) for s in shapes)


def _results_and_grads(attend):
    """``jit(x -> ((out, lse), grads of a scalar loss by every input))``."""

    def loss(*xs):
        out, lse = attend(*xs)
        return jnp.sum(out * jnp.cos(out)) + jnp.sum(jnp.sin(lse)), (out, lse)

    def run(*xs):
        grads, results = jax.grad(loss, tuple(range(len(xs))), has_aux=True)(*xs)
        return results, grads

    return jax.jit(run)


def _gna(implementation):
    def attend(q, k, v, ek, ev):
        return jax_gna.gna(
            q,
            k,
            v,
            **WINDOW,
            additional_keys=ek,
            additional_values=ev,
            return_lse=True,
            implementation=implementation,
        )

    return attend


@pytest.fixture(scope="module")
def expected():
    return _results_and_grads(_gna("reference"))(*_inputs())


def _spec(x) -> tuple:
    """`x`'s PartitionSpec padded to its rank (Auto results often leave trailing dims out)."""
    spec = tuple(x.sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def _padded(spec, ndim: int) -> tuple:
    return tuple(spec) + (None,) * (ndim - len(spec))


@pytest.mark.parametrize("with_context", [False, True], ids=["no-context", "set_mesh"])
@pytest.mark.parametrize("mode", [AxisType.Explicit, AxisType.Auto], ids=lambda m: m.name)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_sharded_inputs(implementation, layout, mode, with_context, expected):
    mesh_shape, axes, spec, extra_spec = LAYOUTS[layout]
    mesh = jax.make_mesh(mesh_shape, axes, axis_types=(mode,) * len(axes))
    specs = (spec,) * 3 + (extra_spec,) * 2
    xs = tuple(jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(_inputs(), specs))
    run = _results_and_grads(_gna(implementation))
    if with_context:
        with jax.set_mesh(mesh):
            (out, lse), grads = run(*xs)
    else:
        (out, lse), grads = run(*xs)
    chex.assert_trees_all_close(((out, lse), grads), expected, **TOL)
    if mode == AxisType.Auto and layout == "spatial" and implementation in ("xla", "reference"):
        return  # Auto: XLA's propagation picks these shardings, and it gathers the gradients
    q_spec = _padded(spec, out.ndim)
    assert _spec(out) == q_spec
    assert _spec(lse) == q_spec[:-1]
    for x, grad in zip(xs, grads):
        assert _spec(grad) == _spec(x)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_several_batch_dims_on_an_explicit_mesh_without_context(implementation):
    """Two batch dims, the second sharded; `jax.typeof` inside the jit sees the input's
    sharding on the result."""
    xs = _inputs(batch=(2, 2))
    want = _results_and_grads(_gna("reference"))(*xs)
    mesh = jax.make_mesh((2,), ("b",))  # Explicit: jax's default
    xs = tuple(jax.device_put(x, NamedSharding(mesh, P(None, "b"))) for x in xs)

    def attend(*xs):
        out, lse = _gna(implementation)(*xs)
        assert jax.typeof(out).sharding.spec == P(None, "b", None, None, None, None)
        assert jax.typeof(lse).sharding.spec == P(None, "b", None, None, None)
        return out, lse

    got = _results_and_grads(attend)(*xs)
    chex.assert_trees_all_close(got, want, **TOL)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("mode", [AxisType.Explicit, AxisType.Auto], ids=lambda m: m.name)
def test_gna_sharded_takes_the_mesh_of_its_inputs(mode, traced):
    """`parallel.gna_sharded` without `mesh=` or a mesh context: the inputs' mesh (under jit,
    only an Explicit mesh's types carry it)."""
    if traced and mode == AxisType.Auto:
        pytest.skip("an Auto mesh's traced values do not name their mesh: pass `mesh=`")
    q, k, v, ek, ev = _inputs()
    want = reference.gna(q, k, v, **WINDOW, additional_keys=ek, additional_values=ev)
    mesh = jax.make_mesh((2,), ("x",), axis_types=(mode,))
    q, k, v = (jax.device_put(x, NamedSharding(mesh, P(None, "x"))) for x in (q, k, v))

    def attend(q, k, v):
        return parallel.gna_sharded(
            q, k, v, **WINDOW, additional_keys=ek, additional_values=ev, axis_name="x"
        )

    out = (jax.jit(attend) if traced else attend)(q, k, v)
    chex.assert_trees_all_close(out, want, **TOL)
    assert _spec(out)[1] == "x"
