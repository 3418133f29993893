"""Quick start: 2-D generalized neighborhood attention, checked against the reference.

python examples/quickstart.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import jax_gna


def main() -> None:
    rng = np.random.default_rng(0)
    # [batch, height, width, heads, head_dim]: a 32x32 token grid, 4 heads of 64.
    q, k, v = (jnp.asarray(rng.standard_normal((2, 32, 32, 4, 64)), jnp.float32) for _ in "qkv")

    # Each query attends to a 7x7 window; stride (2, 2) lets 2x2 query groups share a window.
    attend = jax.jit(lambda q, k, v: jax_gna.na2d(q, k, v, kernel_size=7, stride=2))
    out = attend(q, k, v)
    expected = jax_gna.reference.gna(q, k, v, kernel_size=(7, 7), stride=2)

    print("implementations:", jax_gna.supported_implementations(q, k, v, kernel_size=(7, 7)))
    print("output:", out.shape, out.dtype)
    print("max |out - reference|:", float(jnp.max(jnp.abs(out - expected))))
    grads = jax.grad(lambda q: jnp.sum(attend(q, k, v) ** 2))(q)
    print("grad wrt query:", grads.shape, "finite:", bool(jnp.all(jnp.isfinite(grads))))


if __name__ == "__main__":
    main()
