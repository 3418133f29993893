"""Peak memory and time of ``implementation="xla"`` against the dense ``"reference"``.

The xla path tiles the queries and gathers one key box per tile, so its memory grows with
tokens x window; the reference materialises the dense ``[N, N]`` scores. Memory comes from the
compiled programs (``jax.jit(...).lower(...).compile().memory_analysis()``: temporaries,
arguments and outputs), which needs no run; time is the median of a few runs after a warm-up.
The reference is only compiled, not run, when its estimate would not fit comfortably in memory
(``--skip-reference-run``, on by default then).

    python benchmarks/xla_memory.py                          # 1 x 16x48x48, 8 heads, d64, 7x7x7
    python benchmarks/xla_memory.py --shape 8 24 24 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_gna
from jax_gna import _window

GiB = 2**30


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _fn(impl: str, args: argparse.Namespace, backward: bool):
    window = dict(
        kernel_size=tuple(args.window),
        stride=tuple(args.stride),
        dilation=tuple(args.dilation),
        is_causal=args.causal,
    )

    def forward(q, k, v):
        return jax_gna.gna(q, k, v, **window, implementation=impl)

    if not backward:
        return forward
    return jax.grad(lambda q, k, v: jnp.sum(forward(q, k, v).astype(jnp.float32)), (0, 1, 2))


def _memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = dict(
        temp=int(m.temp_size_in_bytes),
        argument=int(m.argument_size_in_bytes),
        output=int(m.output_size_in_bytes),
        alias=int(getattr(m, "alias_size_in_bytes", 0)),
    )
    # Live at once in the worst case: inputs, outputs and all temporaries (minus aliasing).
    out["peak_estimate"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    return out


def _time(compiled, inputs, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        jax.block_until_ready(compiled(*inputs))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*inputs))
        times.append(time.perf_counter() - start)
    return dict(median_s=statistics.median(times), min_s=min(times), runs=len(times))


def measure(impl: str, args: argparse.Namespace, backward: bool, run: bool) -> dict:
    q_shape = (args.batch, *args.shape, args.heads, args.head_dim)
    kv_shape = (args.batch, *args.shape, args.kv_heads, args.head_dim)
    dtype = jnp.dtype(args.dtype)
    avals = [jax.ShapeDtypeStruct(s, dtype) for s in (q_shape, kv_shape, kv_shape)]
    start = time.perf_counter()
    lowered = jax.jit(_fn(impl, args, backward)).lower(*avals)
    compiled = lowered.compile()
    result = dict(
        implementation=impl,
        pass_="fwd+bwd" if backward else "fwd",
        compile_s=time.perf_counter() - start,
        memory=_memory(compiled),
        ran=run,
    )
    if run:
        rng = np.random.default_rng(0)
        inputs = [jnp.asarray(rng.standard_normal(a.shape, np.float32), dtype) for a in avals]
        result["time"] = _time(compiled, inputs, args.warmup, args.repeats)
    return result


def _fmt_bytes(n: int) -> str:
    return f"{n / GiB:8.3f} GiB" if n >= GiB / 10 else f"{n / 2**20:8.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--shape", type=int, nargs="+", default=[16, 48, 48], help="token grid")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--window", type=int, nargs="+", default=None, help="default: 7 per axis")
    p.add_argument("--stride", type=int, nargs="+", default=None, help="default: 1 per axis")
    p.add_argument("--dilation", type=int, nargs="+", default=None, help="default: 1 per axis")
    p.add_argument("--causal", action="store_true", help="causal along every axis")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backward", action="store_true", help="also measure fwd+bwd (jax.grad)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--skip-reference-run",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only compile the reference (memory estimate) without running it; default: on "
        "when its estimate exceeds half of the physical memory",
    )
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    rank = len(args.shape)
    args.kv_heads = args.kv_heads or args.heads
    args.window = args.window or [7] * rank
    args.stride = args.stride or [1] * rank
    args.dilation = args.dilation or [1] * rank
    args.causal = (args.causal,) * rank
    for name in ("window", "stride", "dilation"):
        if len(getattr(args, name)) != rank:
            p.error(f"--{name} needs {rank} values (one per axis of --shape)")

    tokens = math.prod(args.shape)
    pairs = (
        args.batch
        * args.heads
        * _window.attended_keys(args.shape, args.window, args.stride, args.dilation, args.causal)
    )
    dense_scores = args.batch * args.heads * tokens * tokens * 4
    print(
        f"GNA {rank}-D, batch {args.batch}, tokens {'x'.join(map(str, args.shape))} = {tokens}, "
        f"heads {args.heads}/{args.kv_heads}, head dim {args.head_dim}, window "
        f"{'x'.join(map(str, args.window))}, stride {args.stride}, dilation {args.dilation}, "
        f"causal {args.causal[0]}, {args.dtype}"
    )
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()} "
        f"({jax.devices()[0].device_kind}), python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; attended pairs {pairs:.3e} "
        f"({pairs / (args.batch * args.heads * tokens**2):.2%} of dense); dense fp32 scores "
        f"alone: {_fmt_bytes(dense_scores).strip()}"
    )
    budget = _physical_memory()
    results = []
    for backward in (False, True) if args.backward else (False,):
        xla = measure("xla", args, backward, run=True)
        results.append(xla)
        ref = measure("reference", args, backward, run=False)
        skip = args.skip_reference_run
        if skip is None:
            skip = budget is None or ref["memory"]["peak_estimate"] > budget / 2
        if not skip:
            ref = measure("reference", args, backward, run=True)
        results.append(ref)

    header = (
        f"{'implementation':<14} {'pass':<8} {'temp':>12} {'arguments':>12} {'outputs':>12} "
        f"{'peak (est.)':>12} {'time (median)':>14} {'compile':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        m = r["memory"]
        t = f"{r['time']['median_s'] * 1e3:11.1f} ms" if r["ran"] else "    not run"
        print(
            f"{r['implementation']:<14} {r['pass_']:<8} {_fmt_bytes(m['temp']):>12} "
            f"{_fmt_bytes(m['argument']):>12} {_fmt_bytes(m['output']):>12} "
            f"{_fmt_bytes(m['peak_estimate']):>12} {t:>14} {r['compile_s']:8.1f}s"
        )
    for backward in sorted({r["pass_"] for r in results}):
        x, ref = (next(r for r in results if r["pass_"] == backward and r["implementation"] == i)
                  for i in ("xla", "reference"))  # fmt: skip
        ratio = ref["memory"]["peak_estimate"] / max(1, x["memory"]["peak_estimate"])
        line = f"{backward}: reference / xla peak memory = {ratio:.1f}x"
        if ref["ran"]:
            line += f", time = {ref['time']['median_s'] / x['time']['median_s']:.2f}x"
        print(line)

    if args.json:
        record = dict(
            problem=dict(
                batch=args.batch,
                shape=args.shape,
                heads=args.heads,
                kv_heads=args.kv_heads,
                head_dim=args.head_dim,
                window=args.window,
                stride=args.stride,
                dilation=args.dilation,
                causal=args.causal[0],
                dtype=args.dtype,
                attended_pairs=pairs,
            ),
            environment=dict(
                jax=jax.__version__,
                backend=jax.default_backend(),
                device=jax.devices()[0].device_kind,
                cpus=os.cpu_count(),
                physical_memory=budget,
            ),
            results=[{("pass" if k == "pass_" else k): v for k, v in r.items()} for r in results],
        )
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
