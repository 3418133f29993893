"""jax_gna: Generalized Neighborhood Attention for JAX.

``jax_gna.gna`` (and the rank-checked ``na1d``/``na2d``/``na3d``) computes sparse attention
where every query attends to a window of keys around it on a 1-D, 2-D or 3-D token grid, with
per-axis stride, dilation and causality. ``jax_gna.quantize_fp8`` quantises its inputs to float8
(with descales). ``jax_gna.reference.gna`` is the pure-jnp oracle.
Flax layers live in ``jax_gna.nnx`` and ``jax_gna.linen``; the analytical simulator in
``jax_gna.sim``.
"""

import importlib as _importlib

# Registers the handlers of our XLA custom calls (when the compiled extension is built; quietly
# nothing otherwise), so that programs exported with `jax.export` load after `import jax_gna`.
from jax_gna import _extension as _extension
from jax_gna import reference as reference
from jax_gna._api import gna as gna
from jax_gna._api import na1d as na1d
from jax_gna._api import na2d as na2d
from jax_gna._api import na3d as na3d
from jax_gna._api import supported_implementations as supported_implementations
from jax_gna._fp8 import quantize_fp8 as quantize_fp8

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("nnx", "linen", "sim")  # import flax / matplotlib only when asked for


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f"jax_gna.{name}")
    raise AttributeError(f"module 'jax_gna' has no attribute {name!r}")
