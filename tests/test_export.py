"""`jax.export` of `jax_gna.gna`: serialized programs that load in a new process after
``import jax_gna``, and shape-polymorphic exports (symbolic batch dims and head counts) that
give the reference's values and gradients at several concrete sizes. Dims that must be static
(spatial extents, head dims, extra tokens) are refused with an error naming them."""

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jax_gna
from jax_gna import _extension

# Our custom calls are outside jax's list of targets with compatibility guarantees.
CUSTOM_CALLS = [
    export.DisabledSafetyCheck.custom_call(t)
    for t in (_extension.FWD_TARGET, _extension.BWD_TARGET)
]
WINDOW = dict(kernel_size=(3, 4), stride=(2, 1), dilation=(1, 2), is_causal=(False, True))
TOL = dict(atol=1e-4, rtol=1e-4)
NEEDS_EXTENSION = pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))
IMPLEMENTATIONS = [pytest.param("cpu", marks=NEEDS_EXTENSION), "xla", "reference"]
SPATIAL = (8, 9)


def _shapes(batch, heads=4, kv_heads=2, extra=3):
    """q, k, v, extra k, extra v: GQA, value head dim 6 (differs from the query's 8)."""
    return [
        (*batch, *SPATIAL, heads, 8),
        (*batch, *SPATIAL, kv_heads, 8),
        (*batch, *SPATIAL, kv_heads, 6),
        (*batch, extra, kv_heads, 8),
        (*batch, extra, kv_heads, 6),
    ]


def _inputs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes)


def _attend(implementation):
    def attend(q, k, v, ek, ev):
        return jax_gna.gna(
            q, k, v, **WINDOW, additional_keys=ek, additional_values=ev, return_lse=True,
            implementation=implementation,
        )  # fmt: skip

    return attend


def _export(fn, shapes):
    """`fn` exported for the CPU at `shapes` (symbolic or not), serialized with its VJP and
    read back."""
    specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    exported = export.export(jax.jit(fn), platforms=["cpu"], disabled_checks=CUSTOM_CALLS)(*specs)
    return export.deserialize(exported.serialize(vjp_order=1))


def _check_against_reference(exported, xs):
    """The exported forward and its VJP at concrete inputs `xs` against the reference."""
    reference = _attend("reference")
    results = exported.call(*xs)
    want, pullback = jax.vjp(reference, *xs)
    chex.assert_trees_all_close(results, want, **TOL)
    cotangents = _inputs([r.shape for r in want], seed=1)
    grads = exported.vjp().call(*xs, *cotangents)
    chex.assert_trees_all_close(grads, pullback(cotangents), **TOL)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_symbolic_batch(implementation):
    (b,) = export.symbolic_shape("b")
    exported = _export(_attend(implementation), _shapes((b,)))
    for batch in (2, 3):
        _check_against_reference(exported, _inputs(_shapes((batch,))))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_several_symbolic_batch_dims(implementation):
    b, c = export.symbolic_shape("b, c")
    exported = _export(_attend(implementation), _shapes((b, 2, c)))
    for batch in ((1, 2, 3), (2, 2, 1)):
        _check_against_reference(exported, _inputs(_shapes(batch)))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_symbolic_heads(implementation):
    """Query heads 2*h over h key/value heads: the GQA group (2) is static."""
    b, h = export.symbolic_shape("b, h")
    exported = _export(_attend(implementation), _shapes((b,), heads=2 * h, kv_heads=h))
    for batch, kv_heads in ((2, 1), (1, 3)):
        _check_against_reference(exported, _inputs(_shapes((batch,), 2 * kv_heads, kv_heads)))


def _static_dim_cases():
    b, x, d, e, h, g = export.symbolic_shape("b, x, d, e, h, g")
    _, _, v, ek, ev = _shapes((b,))
    spatial = [(b, x, 9, 4, 8), (b, x, 9, 2, 8), (b, x, 9, 2, 6), ek, ev]
    head_dim = [(b, 8, 9, 4, d), (b, 8, 9, 2, d), v, (b, 3, 2, d), ev]
    return {
        "spatial": (spatial, r"`query` has the symbolic spatial extent \(axis 0\) x"),
        "head-dim": (head_dim, r"`query` has the symbolic head dim d .* must be static"),
        "extra-tokens": (_shapes((b,), extra=e), "symbolic number of extra tokens e"),
        "heads-group": (_shapes((b,), heads=h, kv_heads=g), "static GQA group"),
        "no-kv-heads": (_shapes((b,), heads=h, kv_heads=0), "must evenly divide"),
    }


@pytest.mark.parametrize("case", _static_dim_cases(), ids=str)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_dims_that_must_be_static_are_named(implementation, case):
    shapes, message = _static_dim_cases()[case]
    with pytest.raises(ValueError, match=message):
        _export(_attend(implementation), shapes)


# ---------------------------------------------------------------------------------------------
# Loading in a new process


def _python(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device, as a plain user process
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


_EXPORT = """
    import sys
    import numpy as np
    import jax, jax.numpy as jnp
    from jax import export
    import jax_gna

    b, = export.symbolic_shape("b")
    spec = lambda *s: jax.ShapeDtypeStruct((b, 8, 9, *s), jnp.float32)
    attend = lambda q, k, v: jax_gna.gna(q, k, v, (3, 4), implementation="cpu", return_lse=True)
    checks = [export.DisabledSafetyCheck.custom_call(t) for t in ("jax_gna_fwd", "jax_gna_bwd")]
    exported = export.export(jax.jit(attend), platforms=["cpu"], disabled_checks=checks)(
        spec(4, 8), spec(2, 8), spec(2, 8)
    )
    with open(sys.argv[1], "wb") as f:
        f.write(exported.serialize(vjp_order=1))
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((3, 8, 9, h, 8), dtype=np.float32) for h in (4, 2, 2)]
    want = jax_gna.reference.gna(*xs, (3, 4), return_lse=True)
    cts = tuple(np.ones(w.shape, np.float32) for w in want)
    grads = jax.vjp(lambda *a: jax_gna.reference.gna(*a, (3, 4), return_lse=True), *xs)[1](cts)
    np.savez(sys.argv[2], *xs, *want, *grads)
"""

_LOAD = """
    import sys
    import numpy as np
    import jax
    from jax import export
    {imports}

    with open(sys.argv[1], "rb") as f:
        exported = export.deserialize(bytearray(f.read()))
    data = np.load(sys.argv[2])
    q, k, v, out, lse, dq, dk, dv = (data[f"arr_{{i}}"] for i in range(8))
    got = exported.call(q, k, v)
    ones = [np.ones(x.shape, np.float32) for x in (out, lse)]
    grads = exported.vjp().call(q, k, v, *ones)
    for g, w in zip((*got, *grads), (out, lse, dq, dk, dv)):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)
    print("loaded and matched")
"""


@NEEDS_EXTENSION
def test_an_export_loads_in_a_new_process_after_import_jax_gna(tmp_path):
    """Export (symbolic batch, forward and VJP) in one process; deserialize and run it in a
    fresh one that imports nothing of jax_gna but the package: the FFI handlers are
    registered on import. Without the import, XLA names the missing target (the message
    docs/usage.md documents)."""
    blob, data = str(tmp_path / "gna.jax_exported"), str(tmp_path / "data.npz")
    made = _python(_EXPORT, blob, data)
    assert made.returncode == 0, made.stderr
    loaded = _python(_LOAD.format(imports="import jax_gna"), blob, data)
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded and matched" in loaded.stdout
    bare = _python(_LOAD.format(imports=""), blob, data)
    assert bare.returncode != 0
    assert "No FFI handler registered for jax_gna_fwd" in bare.stderr


def test_import_without_the_extension_is_silent_and_the_python_paths_work():
    """A source checkout without a build: `import jax_gna` neither fails nor prints, does not
    start XLA's backends (registration is only queued), and the pure-JAX paths run."""
    script = """
        import importlib.abc, sys

        class NoExtension(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "jax_gna._ext":
                    raise ImportError("not built (simulated)")

        sys.meta_path.insert(0, NoExtension())
        import jax_gna
        from jax._src import xla_bridge
        from jax_gna import _extension

        assert not xla_bridge._backends, "importing jax_gna started XLA's backends"
        assert _extension.ext is None and "not built (simulated)" in _extension.missing
        import jax.numpy as jnp
        q = jnp.ones((1, 6, 2, 4))
        assert jax_gna.gna(q, q, q, (3,)).shape == q.shape
        assert jax_gna.supported_implementations(q, q, q, (3,))["cpu"] == _extension.missing
    """
    result = _python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
