"""`python -m jax_gna.selftest`: which families it runs for a build and a GPU, that it passes
correct implementations and fails wrong ones, its exit status, its JSON and --debug-kernels.
(CI runs the whole self-test on the installed wheel; these check its logic on cheap rows.)"""

import json

import pytest

import jax_gna
from jax_gna import _extension, selftest

CHEAP = selftest.Family("xla", "float32", 32, 1)


def _kernels():
    fwd = dict(direction="forward", dtype="bfloat16", head_dim=128, rank=2, config=1)
    return [
        dict(fwd, arch="90a", q_tile=(8, 16), kv_tile=(8, 16)),
        dict(fwd, arch="90a", head_dim=256, config=0, q_tile=(16, 8), kv_tile=(8, 8)),
        dict(direction="backward", arch="90a", dtype="bfloat16", head_dim=128, rank=2),
        dict(fwd, arch="100a", q_tile=(8, 16), kv_tile=(8, 16)),
    ]


@pytest.mark.parametrize(("gpu_arch", "cuda_rows"), [("90a", 2), ("100a", 1), (None, 0)])
def test_families_are_the_built_kernels_the_gpu_runs_plus_cpu_and_xla(
    monkeypatch, gpu_arch, cuda_rows
):
    monkeypatch.setattr(_extension, "build_info", lambda: {"cuda_kernels": _kernels()})
    monkeypatch.setattr(selftest, "_gpu_arch", lambda: (gpu_arch, "a test GPU"))
    rows, notes = selftest.families()
    cuda = [f for f in rows if f.implementation == "cuda"]
    assert len(cuda) == cuda_rows
    assert all(f.arch == gpu_arch for f in cuda)
    if gpu_arch == "90a":
        # The d128 row has a backward kernel of its (dtype, head dim, rank) in the listed
        # build, the d256 row none: its gradients take the xla backward.
        assert [f.cuda_backward for f in cuda] == [True, False]
        assert cuda[0].name == "cuda sm90a bf16 d128 2-D Q(8,16)/KV(8,16)"
    for arch, count in (("90a", 2), ("100a", 1)):
        noted = f"{count} sm{arch} forward kernel(s) not run" in " ".join(notes)
        assert noted == (arch != gpu_arch), notes
    xla = {(f.dtype, f.rank) for f in rows if f.implementation == "xla"}
    assert xla == {(d, r) for d in ("float32", "bfloat16") for r in (1, 2, 3)}
    cpu = [f for f in rows if f.implementation == "cpu"]
    assert len(cpu) == (9 if _extension.ext is not None else 0)


def test_a_correct_family_passes_with_its_errors():
    family = selftest.check(selftest.Family("xla", "float32", 32, 1))
    assert family.status == "PASS", family.detail
    assert 0 < family.tolerance_fraction <= 1 and family.worst in ("out", "lse", "dq", "dk", "dv")


def test_a_wrong_result_fails(monkeypatch):
    right = jax_gna.gna

    def off_by_one_percent(*args, **kwargs):
        out, lse = right(*args, **kwargs)
        return out * 1.01, lse

    monkeypatch.setattr(jax_gna, "gna", off_by_one_percent)
    family = selftest.check(selftest.Family("xla", "float32", 32, 1))
    assert family.status == "FAIL" and "exceeds its tolerance" in family.detail


def test_a_refused_family_fails_with_the_reason():
    family = selftest.check(
        selftest.Family("cuda", "bfloat16", 128, 1, q_tile=(128,), kv_tile=(128,))
    )
    assert family.status == "FAIL" and family.detail


@pytest.mark.parametrize("fail", [False, True])
def test_json_report_and_exit_status(monkeypatch, capsys, fail):
    rows = [selftest.Family("xla", "float32", 32, 1)]
    monkeypatch.setattr(selftest, "families", lambda: (rows, ["a note"]))
    if fail:
        monkeypatch.setattr(selftest, "check", lambda f: setattr(f, "status", "FAIL") or f)
    rc = selftest.main(["--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == int(fail)
    assert report["verdict"] == ("fail" if fail else "pass")
    assert report["families"][0]["family"] == "xla fp32 d32 1-D"
    assert report["notes"] == ["a note"]


def test_table_and_verdict(monkeypatch, capsys):
    monkeypatch.setattr(
        selftest, "families", lambda: ([selftest.Family("xla", "float32", 32, 1)], [])
    )
    assert selftest.main([]) == 0
    out = capsys.readouterr().out
    assert "xla fp32 d32 1-D  PASS" in out
    assert out.strip().splitlines()[-1].startswith("jax_gna ")
    assert "selftest: PASS" in out


def test_debug_kernels_needs_a_debug_build(monkeypatch, capsys):
    monkeypatch.setattr(_extension, "build_info", lambda: {"debug_kernels": False})
    assert selftest.main(["--debug-kernels"]) == 2
    assert "JAX_GNA_DEBUG_KERNELS=ON" in capsys.readouterr().err


@pytest.mark.skipif(_extension.ext is None, reason="needs the CPU kernel")
def test_cpu_rows_run_on_the_cpu_of_a_gpu_machine(monkeypatch):
    # On a GPU machine jax's default backend is the GPU; the cpu rows must still trace and run
    # on the CPU (they failed there with "it runs on CPU and this call runs on GPU").
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    family = selftest.check(selftest.Family("cpu", "float32", 32, 2))
    assert family.status == "PASS", family.detail


def test_a_traced_call_runs_on_the_default_device(monkeypatch):
    import jax
    import jax.numpy as jnp

    from jax_gna import _mesh

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    seen = []

    def trace(q):
        seen.append(_mesh.array_platform(q))
        return q

    q = jnp.zeros((1, 8, 2, 32))
    jax.jit(trace)(q)
    with jax.default_device(jax.devices("cpu")[0]):
        jax.jit(trace).lower(q)
    assert seen == ["gpu", "cpu"]
    with pytest.raises(NotImplementedError, match=r"jax\.default_device\(jax\.devices\('cpu'\)"):
        jax.jit(lambda q: jax_gna.gna(q, q, q, (3,), implementation="cpu"))(q)
