"""What the op emits, checked without running it: cross-lowering for CUDA on the CPU (the
custom call, its attributes and result types), the CPU lowering of gradients, abstract
evaluation, and jax.export with the documented safety-check opt-out."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jax_gna
from jax_gna import _extension, _ffi_call, _ffi_op
from jax_gna._params import make_params

pytestmark = pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))

WINDOW = dict(kernel_size=(3, 5), stride=(1, 5), dilation=(2, 1), is_causal=(True, False))
SCALE = 0.25


def _inputs(dtype=jnp.bfloat16):
    q = jnp.zeros((2, 8, 10, 4, 16), dtype)
    k = jnp.zeros((2, 8, 10, 2, 16), dtype)
    v = jnp.zeros((2, 8, 10, 2, 32), dtype)
    return q, k, v


def _ffi(q, k, v):
    return _ffi_op.gna_ffi(q, k, v, make_params(q, k, v, **WINDOW, scale=SCALE))


def _loss(q, k, v):
    out, lse = _ffi(q, k, v)
    return jnp.sum(out.astype(jnp.float32)) + jnp.sum(lse)


def _custom_calls(text: str, target: str) -> list[str]:
    return [line for line in text.splitlines() if f"stablehlo.custom_call @{target}(" in line]


def test_cuda_lowering_emits_the_forward_custom_call_with_its_attributes():
    text = jax.jit(_ffi).trace(*_inputs()).lower(lowering_platforms=("cuda",)).as_text()
    (call,) = _custom_calls(text, "jax_gna_fwd")
    assert "kernel_size = dense<[3, 5]> : tensor<2xi64>" in call
    assert "stride = dense<[1, 5]> : tensor<2xi64>" in call
    assert "dilation = dense<[2, 1]> : tensor<2xi64>" in call
    assert "is_causal = dense<[1, 0]> : tensor<2xi64>" in call
    assert "scale = 2.500000e-01 : f32" in call
    operands, results = call.rsplit(" -> ", 1)
    assert operands.count("tensor<2x8x10x4x16xbf16>") == 1
    assert operands.count("tensor<2x8x10x2x16xbf16>") == 1
    assert operands.count("tensor<2x8x10x2x32xbf16>") == 1
    # out in the input dtype, fp32 lse, the uint8 workspace.
    assert re.search(r"tensor<2x8x10x4x32xbf16>, tensor<2x8x10x4xf32>, tensor<\d+xui8>", results)


def _ffi_with(q, k, v, **kw):
    return _ffi_op.gna_ffi(q, k, v, make_params(q, k, v, **WINDOW, scale=SCALE, **kw))


def _cuda_grad_text(*inputs, **kw) -> str:
    def loss(q, k, v):
        out, lse = _ffi_with(q, k, v, **kw)
        return jnp.sum(out.astype(jnp.float32)) + jnp.sum(lse)

    traced = jax.jit(jax.grad(loss, (0, 1, 2))).trace(*(inputs or _inputs()))
    return traced.lower(lowering_platforms=("cuda",)).as_text()


def test_cuda_gradients_use_the_xla_backward_where_cuda_kernels_cannot_run_them():
    text = _cuda_grad_text()
    assert len(_custom_calls(text, "jax_gna_fwd")) == 1
    q, k, v = _inputs()
    reason = _ffi_call.cuda_backward_reason(q, k, v, make_params(q, k, v, **WINDOW))
    if reason is None:
        assert len(_custom_calls(text, "jax_gna_bwd")) == 1
    else:
        assert not _custom_calls(text, "jax_gna_bwd")
        assert "stablehlo.while" in text  # the xla backward's loop over tiles


def test_cuda_backward_choice_is_per_problem(monkeypatch):
    """The custom_vjp asks `cuda_backward_reason` per call: the CUDA backward custom call where
    it answers None, the xla backward (no custom call) where it gives a reason."""
    asked = []

    def fake_reason(query, key, value, params):
        asked.append((query.shape, params))
        return None if query.shape[-1] == 16 else "head_dim=32 is not supported"

    monkeypatch.setattr(_ffi_call, "cuda_backward_reason", fake_reason)
    text = _cuda_grad_text()
    assert len(_custom_calls(text, "jax_gna_bwd")) == 1
    assert asked and asked[-1][0] == (2, 8, 10, 4, 16)
    q, k, v = _inputs()
    wide = [jnp.zeros(x.shape[:-1] + (32,), x.dtype) for x in (q, k, v)]
    text = _cuda_grad_text(*wide)
    assert not _custom_calls(text, "jax_gna_bwd")
    assert "stablehlo.while" in text


@pytest.mark.parametrize(
    ("deterministic", "flags", "value"),
    [(True, "", 1), (False, "--xla_gpu_deterministic_ops=true", 0), (None, "", 0),
     (None, "--xla_gpu_deterministic_ops=true", 1)],
)  # fmt: skip
def test_backward_custom_call_carries_the_deterministic_attribute(
    monkeypatch, deterministic, flags, value
):
    monkeypatch.setenv("XLA_FLAGS", flags)
    q, k, v = _inputs(jnp.float32)

    def loss(q, k, v):
        out, lse = _ffi_with(q, k, v, deterministic=deterministic)
        return jnp.sum(out) + jnp.sum(lse)

    text = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, v).as_text()  # CPU
    (call,) = _custom_calls(text, "jax_gna_bwd")
    assert f"deterministic = {value} : i64" in call
    (fwd,) = _custom_calls(text, "jax_gna_fwd")
    assert "deterministic" not in fwd
    # The public API passes it through as well, and a cross-lowering for CUDA carries it when
    # the CUDA backward runs the problem.
    monkeypatch.setattr(_ffi_call, "cuda_backward_reason", lambda *args: None)
    public = jax.jit(
        jax.grad(
            lambda q: jnp.sum(
                jax_gna.gna(q, k, v, **WINDOW, deterministic=deterministic, implementation="cpu")
            )
        )
    )
    (call,) = _custom_calls(public.lower(q).as_text(), "jax_gna_bwd")
    assert f"deterministic = {value} : i64" in call
    (call,) = _custom_calls(_cuda_grad_text(deterministic=deterministic), "jax_gna_bwd")
    assert f"deterministic = {value} : i64" in call


def test_cpu_gradients_use_the_backward_custom_call_only():
    q, k, v = _inputs(jnp.float32)
    text = jax.jit(jax.grad(_loss, (0, 1, 2))).lower(q, k, v).as_text()
    assert len(_custom_calls(text, "jax_gna_bwd")) == 1
    assert "stablehlo.while" not in text  # the xla stand-in branch was not lowered
    (call,) = _custom_calls(text, "jax_gna_bwd")
    assert "kernel_size = dense<[3, 5]> : tensor<2xi64>" in call


def test_multi_platform_lowering():
    text = jax.jit(_ffi).trace(*_inputs()).lower(lowering_platforms=("cuda", "cpu")).as_text()
    assert _custom_calls(text, "jax_gna_fwd")


def test_eval_shape():
    out, lse = jax.eval_shape(_ffi, *_inputs())
    assert out.shape == (2, 8, 10, 4, 32) and out.dtype == jnp.bfloat16
    assert lse.shape == (2, 8, 10, 4) and lse.dtype == jnp.float32


def test_export_needs_the_custom_call_opt_out():
    with pytest.raises(ValueError, match="custom calls"):
        export.export(jax.jit(_ffi), platforms=["cuda"])(*_inputs())
    opt_out = [export.DisabledSafetyCheck.custom_call(_extension.FWD_TARGET)]
    exported = export.export(jax.jit(_ffi), platforms=["cuda"], disabled_checks=opt_out)(*_inputs())
    assert "jax_gna_fwd" in exported.mlir_module()


def test_exported_cpu_module_runs():
    rng = np.random.default_rng(0)
    shapes = [(2, 8, 10, 4, 16), (2, 8, 10, 2, 16), (2, 8, 10, 2, 32)]
    q, k, v = (jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes)
    opt_out = [
        export.DisabledSafetyCheck.custom_call(_extension.FWD_TARGET),
        export.DisabledSafetyCheck.custom_call(_extension.BWD_TARGET),
    ]
    exported = export.export(jax.jit(_ffi), platforms=["cpu"], disabled_checks=opt_out)(q, k, v)
    try:  # serialization needs the optional flatbuffers package
        exported = export.deserialize(exported.serialize())
    except ImportError:
        pass
    out, lse = exported.call(q, k, v)
    expected_out, expected_lse = jax.jit(_ffi)(q, k, v)
    np.testing.assert_array_equal(out, expected_out)
    np.testing.assert_array_equal(lse, expected_lse)
