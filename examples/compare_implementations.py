"""Compare every jax_gna implementation that can run here against the reference, with chex.

This is how we recommend testing an integration: run your exact call (shapes, dtype, window
options, extra tokens) through every implementation `jax_gna.supported_implementations` says can
run it, and compare the outputs and the gradients with `jax_gna.reference.gna` computed in
float32 from the same inputs, with a tolerance that fits the dtype. `check_implementation` is
the function to copy into your own tests.

    python examples/compare_implementations.py           # every case, float32 and bfloat16
    python examples/compare_implementations.py --quick   # one case, for CI
"""

from __future__ import annotations

import argparse
import functools
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np

import jax_gna

# Tolerance on |impl - reference_fp32| per dtype: atol and rtol, in units of the largest
# reference magnitude (so gradients of any scale are held to the same standard).
TOLERANCE = {"float32": 2e-5, "bfloat16": 2e-2, "float16": 4e-3}


def _rand(key, shape, dtype):
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def make_inputs(case: dict, dtype, seed: int = 0) -> dict:
    """Random query/key/value (and extra tokens) for one case, in ``dtype``."""
    shape, kv_heads, extra = case["shape"], case.get("kv_heads"), case.get("extra_tokens", 0)
    *tokens, heads, dim = shape
    kv_shape = (*tokens, kv_heads or heads, dim)
    keys = jax.random.split(jax.random.key(seed), 6)
    arrays = dict(
        query=_rand(keys[0], shape, dtype),
        key=_rand(keys[1], kv_shape, dtype),
        value=_rand(keys[2], kv_shape, dtype),
    )
    if extra:
        batch = tokens[: len(tokens) - len(case["options"]["kernel_size"])]
        extra_shape = (*batch, extra, kv_heads or heads, dim)
        arrays["additional_keys"] = _rand(keys[3], extra_shape, dtype)
        arrays["additional_values"] = _rand(keys[4], extra_shape, dtype)
    arrays["cotangent"] = _rand(keys[5], shape, jnp.float32)
    return arrays


def _loss(attention, arrays, cotangent):
    """A scalar whose gradient is the VJP of ``attention`` with a random cotangent."""
    out = attention(**arrays)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out


def check_implementation(implementation: str, inputs: dict, options: dict) -> dict:
    """Assert that ``implementation`` matches the float32 reference on these inputs, for the
    output and the gradients of every input. Returns the largest relative errors.

    Args:
      implementation: a name `jax_gna.supported_implementations` reports usable.
      inputs: ``query``, ``key``, ``value`` (optionally ``additional_keys`` and
        ``additional_values``) in the dtype under test, and a float32 ``cotangent`` shaped like
        the output.
      options: the window options (``kernel_size``, ``stride``, ``dilation``, ``is_causal``).
    """
    inputs = dict(inputs)
    cotangent = inputs.pop("cotangent")
    dtype = inputs["query"].dtype
    grad = jax.grad(_loss, argnums=1, has_aux=True)

    impl_fn = functools.partial(jax_gna.gna, **options, implementation=implementation)
    impl_grads, impl_out = jax.jit(grad, static_argnums=0)(impl_fn, inputs, cotangent)

    ref_fn = functools.partial(jax_gna.reference.gna, **options)
    inputs32 = {k: v.astype(jnp.float32) for k, v in inputs.items()}
    ref_grads, ref_out = jax.jit(grad, static_argnums=0)(ref_fn, inputs32, cotangent)

    chex.assert_trees_all_equal_shapes((impl_out, impl_grads), (ref_out, ref_grads))
    chex.assert_trees_all_equal_dtypes(impl_out, jnp.zeros((), dtype))
    errors = {}
    tol = TOLERANCE[jnp.dtype(dtype).name]
    for name, got, want in [("out", impl_out, ref_out)] + [
        (f"d{k}", impl_grads[k], ref_grads[k]) for k in ref_grads
    ]:
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        scale = float(np.max(np.abs(want))) or 1.0
        chex.assert_trees_all_close(got, want, atol=tol * scale, rtol=tol)
        errors[name] = float(np.max(np.abs(got - want))) / scale
    return errors


CASES = {
    "1d causal dilated, GQA": dict(
        shape=(2, 48, 4, 32), kv_heads=2, options=dict(kernel_size=(7,), dilation=2, is_causal=True)
    ),
    "2d strided": dict(shape=(2, 12, 12, 4, 32), options=dict(kernel_size=(5, 5), stride=(2, 2))),
    "2d strided dilated + text tokens, MQA": dict(
        shape=(2, 10, 11, 4, 32),
        kv_heads=1,
        extra_tokens=6,
        options=dict(kernel_size=(3, 5), stride=(1, 2), dilation=(2, 1)),
    ),
    "3d video-like": dict(
        shape=(1, 4, 8, 8, 2, 32),
        options=dict(kernel_size=(3, 5, 5), stride=(1, 2, 2), is_causal=(True, False, False)),
    ),
}
QUICK = ("2d strided dilated + text tokens, MQA",)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one case (CI)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args(argv)

    cases = {k: CASES[k] for k in QUICK} if args.quick else CASES
    checked, skipped, failures = [], [], []
    for dtype in args.dtypes.split(","):
        for name, case in cases.items():
            inputs = make_inputs(case, jnp.dtype(dtype))
            q, k, v = inputs["query"], inputs["key"], inputs["value"]
            usable = jax_gna.supported_implementations(q, k, v, **case["options"])
            for impl, reason in usable.items():
                label = f"{name:<38} {dtype:<9} {impl:<5}"
                if impl == "reference":
                    continue
                if reason is not None:
                    skipped.append((name, dtype, impl))
                    print(f"{label} skipped: {reason}")
                    continue
                try:
                    errors = check_implementation(impl, inputs, case["options"])
                except AssertionError as e:
                    failures.append((name, dtype, impl))
                    print(f"{label} FAILED\n{e}")
                    continue
                checked.append((name, dtype, impl))
                worst = max(errors, key=errors.get)
                print(f"{label} ok (max error / max |reference|: {errors[worst]:.1e} in {worst})")
    print(
        f"{len(checked)} comparisons passed, {len(failures)} failed, {len(skipped)} skipped "
        "(implementation not usable here)"
    )
    if failures:
        raise SystemExit(1)
    return dict(checked=checked, skipped=skipped)


if __name__ == "__main__":
    main(sys.argv[1:])
