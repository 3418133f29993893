"""``implementation="xla"`` on batch/head-sharded inputs (4 fake CPU devices): Auto and Explicit
meshes give the reference's values and gradients, keep the input's sharding, and the compiled
HLO has no all-gather."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_gna
from jax_gna import reference

pytestmark = pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (fake) devices")

WINDOW = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
LAYOUTS = {
    "batch": ((4,), ("b",), P("b")),
    "batch-and-heads": ((2, 2), ("b", "h"), P("b", None, None, "h")),
}


def _inputs():
    rng = np.random.default_rng(1)
    shapes = [(4, 8, 9, 4, 8), (4, 8, 9, 2, 8), (4, 8, 9, 2, 6)]
    return tuple(jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes)


def _loss(fn):
    def loss(q, k, v):
        out, lse = fn(q, k, v)
        return jnp.sum(out * jnp.cos(out)) + jnp.sum(jnp.sin(lse))

    return loss


def _xla(q, k, v):
    return jax_gna.gna(q, k, v, **WINDOW, return_lse=True, implementation="xla")


def _reference(q, k, v):
    return reference.gna(q, k, v, **WINDOW, return_lse=True)


@pytest.mark.parametrize("mode", [AxisType.Auto, AxisType.Explicit], ids=lambda m: m.name)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_xla_on_sharded_inputs(layout, mode):
    q, k, v = _inputs()
    expected = (_reference(q, k, v), jax.grad(_loss(_reference), (0, 1, 2))(q, k, v))
    mesh_shape, axes, spec = LAYOUTS[layout]
    mesh = jax.make_mesh(mesh_shape, axes, axis_types=(mode,) * len(axes))
    with jax.set_mesh(mesh):
        q, k, v = (jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v))
        forward = jax.jit(_xla)
        backward = jax.jit(jax.grad(_loss(_xla), (0, 1, 2)))
        got = (forward(q, k, v), backward(q, k, v))
        hlo = forward.lower(q, k, v).compile().as_text()
        hlo += backward.lower(q, k, v).compile().as_text()
    chex.assert_trees_all_close(got, expected, atol=1e-4, rtol=1e-4)
    assert "all-gather" not in hlo
    want = tuple(spec) + (None,) * (q.ndim - len(spec))
    out_spec = tuple(got[0][0].sharding.spec) + (None,) * q.ndim
    assert out_spec[: q.ndim - 1] == want[:-1]
