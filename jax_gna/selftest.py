"""Checks this installation of jax_gna on this machine: ``python -m jax_gna.selftest``.

Every kernel family the build holds and the machine can run is checked against
`jax_gna.reference` (float32, on the CPU) on one small random problem per family: the output,
the LSE and the gradients dq, dk, dv (through `jax.vjp` with random cotangents for both):

- ``cuda``: every compiled forward kernel for the visible GPU's architecture, one row per
  dtype x head dim x rank x tile configuration (run with those tiles); its gradients run the
  CUDA backward kernel of that dtype, head dim and rank where the build has one (checked in
  the compiled program), else the ``xla`` backward;
- ``cpu``: the C++ CPU kernel, fp32/fp16/bf16 x ranks 1-3;
- ``xla``: the portable pure-JAX path, fp32/bf16 x ranks 1-3.

The problems are strided, dilated, causal on some axes, with grouped-query heads (2 query heads
per key/value head). Tolerances, with ``tol`` per dtype (fp32 1e-5, fp16 2e-3, bf16 1.6e-2):

- out: ``|got - want| <= tol + tol * |want|``;
- LSE: the same with 1e-5 (fp32) or 2e-3 (fp16, bf16);
- each gradient, with ``rms`` its root mean square: ``|got - want| <= a * rms + r * |want|``,
  (a, r) = (1e-4, 1e-4) fp32, (0.02, 2^-10) fp16, (0.2, 2^-7) bf16: the bounds of the GPU
  gradient tests, which follow the rounding of the inputs to the tensor cores.

It prints a table (family, status, worst error as a fraction of its tolerance, time) and a
one-line verdict, and exits 1 if any family fails. ``--json`` prints the same as JSON.
``--debug-kernels`` runs the kernels' debug build when the installed build is one (built with
``JAX_GNA_DEBUG_KERNELS=ON``) and exits 2 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jax_gna
from jax_gna import _extension, reference

# Per rank: odd extents with borders, stride, dilation and causality mixed (the kernels' GPU
# tests check every compiled tile configuration on these too).
PROBLEMS = {
    1: dict(extents=(411,), kernel_size=(64,), stride=(8,), dilation=(2,), is_causal=(True,)),
    2: dict(
        extents=(40, 35),
        kernel_size=(7, 6),
        stride=(3, 2),
        dilation=(2, 3),
        is_causal=(True, False),
    ),
    3: dict(
        extents=(12, 14, 17),
        kernel_size=(3, 4, 5),
        stride=(2, 1, 3),
        dilation=(2, 3, 1),
        is_causal=(False, True, True),
    ),
}
HEADS, KV_HEADS = 2, 1
CPU_HEAD_DIM = 32

# dtype -> (out tol, LSE tol, gradient (rms multiple, relative)).
TOLERANCES = {
    "float32": (1e-5, 1e-5, (1e-4, 1e-4)),
    "float16": (2e-3, 2e-3, (0.02, 2**-10)),
    "bfloat16": (1.6e-2, 2e-3, (0.2, 2**-7)),
}


@dataclasses.dataclass
class Family:
    """One row of the report: an implementation on one dtype x head dim x rank (x tiles)."""

    implementation: str
    dtype: str
    head_dim: int
    rank: int
    arch: str | None = None
    q_tile: tuple[int, ...] | None = None
    kv_tile: tuple[int, ...] | None = None
    cuda_backward: bool = False  # the gradients must run the CUDA backward kernel
    status: str = "not run"
    worst: str = ""  # which quantity came closest to its tolerance
    worst_error: float = 0.0  # its largest |got - want|
    tolerance_fraction: float = 0.0  # the largest error / allowed error (> 1 fails)
    seconds: float = 0.0
    detail: str = ""

    @property
    def name(self) -> str:
        dtype = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[self.dtype]
        name = f"{self.implementation}"
        if self.arch:
            name += f" sm{self.arch}"
        name += f" {dtype} d{self.head_dim} {self.rank}-D"
        if self.q_tile is not None:
            name += f" Q{_shape(self.q_tile)}/KV{_shape(self.kv_tile)}"
        return name


def _shape(t) -> str:
    return "(" + ",".join(str(x) for x in t) + ")"


def _problem_key(family: Family) -> tuple[str, int, int]:
    return family.dtype, family.head_dim, family.rank


def _inputs(family: Family) -> tuple[np.ndarray, ...]:
    """q, k, v, the output cotangent and the LSE cotangent, in float32: the same for every
    family of one dtype, head dim and rank."""
    extents = PROBLEMS[family.rank]["extents"]
    dtype, head_dim, rank = _problem_key(family)
    rng = np.random.default_rng([list(TOLERANCES).index(dtype), head_dim, rank])
    d = family.head_dim
    return (
        rng.standard_normal((1, *extents, HEADS, d), dtype=np.float32),
        rng.standard_normal((1, *extents, KV_HEADS, d), dtype=np.float32),
        rng.standard_normal((1, *extents, KV_HEADS, d), dtype=np.float32),
        rng.standard_normal((1, *extents, HEADS, d), dtype=np.float32),
        rng.standard_normal((1, *extents, HEADS), dtype=np.float32),
    )


def _forward_and_gradients(attention: Callable) -> Callable:
    """(q, k, v, dout, dlse) -> (out, lse, dq, dk, dv) under one jit."""

    def run(q, k, v, dout, dlse):
        (out, lse), vjp = jax.vjp(attention, q, k, v)
        return (out, lse, *vjp((dout, dlse)))

    return jax.jit(run)


_reference_cache: dict[tuple, tuple[np.ndarray, ...]] = {}


def _reference(family: Family, inputs) -> tuple[np.ndarray, ...]:
    """The reference's out, lse, dq, dk, dv in float32 on the CPU, from the inputs rounded to
    the family's dtype (one computation per problem, shared by its tile configurations)."""
    key = _problem_key(family)
    if key not in _reference_cache:
        window = {n: v for n, v in PROBLEMS[family.rank].items() if n != "extents"}
        cpu = jax.devices("cpu")[0]
        rounded = [
            jax.device_put(jnp.asarray(x, family.dtype).astype(jnp.float32), cpu)
            for x in inputs[:4]
        ]
        run = _forward_and_gradients(
            lambda q, k, v: reference.gna(q, k, v, **window, return_lse=True)
        )
        with jax.default_device(cpu):
            result = run(*rounded, jax.device_put(inputs[4], cpu))
        _reference_cache[key] = tuple(np.asarray(x, np.float32) for x in result)
    return _reference_cache[key]


def _device_for(implementation: str):
    return jax.devices("gpu")[0] if implementation == "cuda" else jax.devices("cpu")[0]


def check(family: Family) -> Family:
    """Runs one family against the reference; fills in its status, errors and time."""
    start = time.perf_counter()
    try:
        _check(family)
    except Exception as e:  # a refusal or a crash of one family must not stop the others
        family.status = "FAIL"
        family.detail = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    family.seconds = time.perf_counter() - start
    return family


def _check(family: Family) -> None:
    window = {n: v for n, v in PROBLEMS[family.rank].items() if n != "extents"}
    tiles = {}
    if family.q_tile is not None:
        tiles = dict(q_tile_shape=family.q_tile, kv_tile_shape=family.kv_tile)
    inputs = _inputs(family)
    device = _device_for(family.implementation)
    args = [jax.device_put(jnp.asarray(x, family.dtype), device) for x in inputs[:4]]
    args.append(jax.device_put(inputs[4], device))
    run = _forward_and_gradients(
        lambda q, k, v: jax_gna.gna(
            q, k, v, **window, return_lse=True, implementation=family.implementation, **tiles
        )
    )
    with jax.default_device(device):  # traced on the family's platform, also on a GPU machine
        program = run.lower(*args).as_text()
        results = run(*args)
    if family.implementation in ("cuda", "cpu") and "jax_gna_fwd" not in program:
        raise AssertionError("the forward did not run the jax_gna_fwd kernel")
    needs_bwd_kernel = family.implementation == "cpu" or family.cuda_backward
    if needs_bwd_kernel and "jax_gna_bwd" not in program:
        raise AssertionError("the gradients did not run the jax_gna_bwd kernel")
    got = [np.asarray(jnp.asarray(x, jnp.float32)) for x in results]
    want = _reference(family, inputs)

    out_tol, lse_tol, (grad_atol, grad_rtol) = TOLERANCES[family.dtype]
    worst = ("", 0.0, -1.0)  # (quantity, |error|, fraction of the tolerance)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        if g.shape != w.shape:
            raise AssertionError(f"{name}: shape {g.shape}, want {w.shape}")
        if not np.isfinite(g).all():
            raise AssertionError(f"{name} is not finite")
        if name in ("out", "lse"):
            atol = rtol = out_tol if name == "out" else lse_tol
        else:
            atol, rtol = grad_atol * float(np.sqrt(np.mean(w**2))), grad_rtol
        error = np.abs(g - w)
        fraction = error / (atol + rtol * np.abs(w))
        i = np.unravel_index(int(np.argmax(fraction)), fraction.shape)
        if fraction[i] > worst[2]:
            worst = (name, float(error[i]), float(fraction[i]))
    family.worst, family.worst_error, family.tolerance_fraction = worst
    family.status = "PASS" if family.tolerance_fraction <= 1 else "FAIL"
    if family.status == "FAIL":
        family.detail = f"{family.worst} error {family.worst_error:.3g} exceeds its tolerance"


def _gpu_arch() -> tuple[str | None, str]:
    """The kernel arch of the first GPU ("90a", "100a" or None) and a description of it."""
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        return None, "a machine without a GPU"
    cc = str(getattr(gpu, "compute_capability", ""))
    arch = {"9.0": "90a", "10.0": "100a"}.get(cc)
    return arch, f"{gpu.device_kind} (compute capability {cc})"


def families() -> tuple[list[Family], list[str]]:
    """The families this machine can run with this build, and notes on those it cannot."""
    rows, notes = [], []
    info = _extension.build_info()
    arch, _ = _gpu_arch()
    kernels = info.get("cuda_kernels", [])
    backward = {
        (k["arch"], k["dtype"], k["head_dim"], k["rank"])
        for k in kernels
        if k["direction"] == "backward"
    }
    skipped: dict[str, int] = {}
    for k in kernels:
        if k["direction"] != "forward":
            continue
        if k["arch"] != arch:
            skipped[k["arch"]] = skipped.get(k["arch"], 0) + 1
            continue
        rows.append(
            Family(
                "cuda",
                k["dtype"],
                k["head_dim"],
                k["rank"],
                arch=k["arch"],
                q_tile=k["q_tile"],
                kv_tile=k["kv_tile"],
                cuda_backward=(k["arch"], k["dtype"], k["head_dim"], k["rank"]) in backward,
            )
        )
    for a, n in sorted(skipped.items()):
        need = {"90a": "9.0", "100a": "10.0"}.get(a, "?")
        notes.append(f"{n} sm{a} forward kernel(s) not run: they need compute capability {need}")
    if _extension.ext is None:
        notes.append(f"cpu kernel not run: {_extension.missing}")
    else:
        for dtype in ("float32", "float16", "bfloat16"):
            rows += [Family("cpu", dtype, CPU_HEAD_DIM, rank) for rank in (1, 2, 3)]
    for dtype in ("float32", "bfloat16"):
        rows += [Family("xla", dtype, CPU_HEAD_DIM, rank) for rank in (1, 2, 3)]
    return rows, notes


def _table(rows: list[Family]) -> str:
    header = ("family", "status", "worst error (share of tolerance)", "time")
    lines = [
        (
            f.name,
            f.status,
            f"{f.worst} {f.worst_error:.2e} ({f.tolerance_fraction:.0%})" if f.worst else "",
            f"{f.seconds:.1f} s",
        )
        for f in rows
    ]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(4)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [fmt(header), fmt(tuple("-" * w for w in widths))]
    for row, f in zip(lines, rows):
        out.append(fmt(row))
        if f.detail:
            out.append("    " + f.detail)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jax_gna.selftest",
        description="Check every jax_gna kernel family this machine can run against "
        "jax_gna.reference.",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--debug-kernels",
        action="store_true",
        help="run the kernels' debug build, which the installed build must be "
        "(built with JAX_GNA_DEBUG_KERNELS=ON); exit 2 otherwise",
    )
    args = parser.parse_args(argv)

    info = _extension.build_info()
    if args.debug_kernels and not info.get("debug_kernels"):
        print(
            "jax_gna selftest: --debug-kernels needs a kernel debug build; this one is not "
            "(reinstall from source with JAX_GNA_DEBUG_KERNELS=ON)",
            file=sys.stderr,
        )
        return 2
    _, gpu = _gpu_arch()
    rows, notes = families()
    for i, family in enumerate(rows):
        check(family)
        if not args.json:
            print(f"[{i + 1}/{len(rows)}] {family.name}: {family.status}", file=sys.stderr)
    failed = [f for f in rows if f.status != "PASS"]
    build = (
        f"kernel set {info.get('kernel_set')}, "
        f"CUDA archs {','.join(info.get('cuda_archs', ())) or 'none'}"
        if _extension.ext is not None
        else "no compiled extension"
    )
    if info.get("debug_kernels"):
        build += ", debug kernels"
    verdict = (
        f"jax_gna {jax_gna.__version__} selftest: "
        + (f"FAIL ({len(failed)} of {len(rows)} families failed)" if failed else "PASS")
        + f" - {len(rows)} families on {gpu}, jax {jax.__version__}, build: {build}"
    )
    if args.json:
        result = {
            "verdict": "fail" if failed else "pass",
            "summary": verdict,
            "jax": jax.__version__,
            "gpu": gpu,
            "build": {k: v for k, v in info.items() if k not in ("cuda_kernels",)},
            "notes": notes,
            "families": [dict(dataclasses.asdict(f), family=f.name) for f in rows],
        }
        print(json.dumps(result, indent=1, default=str))
    else:
        print(_table(rows))
        for note in notes:
            print(f"note: {note}")
        print(verdict)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
