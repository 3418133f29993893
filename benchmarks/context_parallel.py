"""Context parallelism: GNA with the time axis split over devices vs one device.

Runs the same problem (default HunyuanVideo-shaped: 1 x 30x48x80 tokens, 24 heads, head dim
128, bf16, window 18x24x24, stride 16x8x8) once on one device and once with
`jax_gna.parallel.gna_sharded` over ``--devices`` devices along spatial axis 0, and prints:

- the median step time of each and the speedup (not on CPU devices, which share one host's
  cores);
- the halo exchange alone (the same ppermutes of K and V, and of the query rows a device
  computes for its neighbour, nothing else) and its share of the sharded step: the
  communication share;
- the halo sizes and the largest difference between the two results.

Both sides run the same kernel: ``--implementation`` (default: the FFI kernel of the platform,
``cuda`` on GPUs, ``cpu`` on CPUs) on the whole problem on one device, and per shard on each
shard's view (`jax_gna.parallel`; where the kernel refuses the views, the shards fall back to
``xla`` and the line "shards ran" says so). The speedup is over one device running the same
problem unsharded through that kernel. ``--baseline xla`` times another implementation on one
device as well, for context.

    python benchmarks/context_parallel.py                   # needs 2 GPUs
    python benchmarks/context_parallel.py --backward        # forward + backward
    python benchmarks/context_parallel.py --small           # CPU, 2 fake devices, tiny problem
    python benchmarks/context_parallel.py --per-shard       # also each shard's kernel alone
    python benchmarks/context_parallel.py --strategy heads  # all-to-all of heads, not halos

With ``--strategy heads`` the devices exchange heads instead (`jax_gna.parallel.gna_sharded`'s
``strategy``): each runs the whole axis for its share of the heads, and the communication
share is that of the all-to-alls (with ``--backward`` those of the backward too); --per-shard
times the halo strategy's views only. On GPUs of one host, XLA moves the all-to-alls with the
copy engines under ``XLA_FLAGS=--xla_gpu_use_memcpy_local_p2p=true`` (recorded in the JSON as
``xla_flags``; docs/multi_device.md).

The halo exchange is not overlapped with the attention: a device's queries attend one key
block (its shard plus the halos) in one kernel call. (Attending the own shard while the halo
arrives, then the halo, merged by log-sum-exp, measured slower on 2 H200s: docs/history.md.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[30, 48, 80])
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--window", type=int, nargs="+", default=[18, 24, 24])
    parser.add_argument("--stride", type=int, nargs="+", default=[16, 8, 8])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument(
        "--implementation",
        default=None,
        help="the kernel on one device and per shard (default: cuda on GPUs, cpu on CPUs)",
    )
    parser.add_argument("--baseline", default=None, help="also time gna(implementation=...)")
    parser.add_argument(
        "--per-shard",
        action="store_true",
        help="also time each shard's kernel call alone on one device (no communication)",
    )
    parser.add_argument(
        "--strategy",
        choices=("halo", "heads"),
        default="halo",
        help="gna_sharded's strategy: halo exchange, or the all-to-all of heads",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--small", "--dry-run", action="store_true", help="tiny problem on fake CPU devices"
    )
    args = parser.parse_args(argv)
    if args.small:
        args.shape, args.heads, args.dim = [8, 6, 8], 2, 16
        args.window, args.stride, args.dtype = [5, 3, 3], [4, 1, 1], "float32"
    return args


def _median_seconds(fn, *xs, iters: int) -> float:
    import jax

    jax.block_until_ready(fn(*xs))  # compile and warm up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*xs))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _per_shard_times(args, one, params, plan, shard_impl) -> list[dict] | None:
    """Each shard's kernel call (its view: queries against the key block) alone on the first
    device, without communication: what a shard's step costs in compute. FFI kernels only."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jax_gna import _ffi_call
    from jax_gna._halo.shard import shard_params

    if shard_impl not in _ffi_call.PLATFORM:
        return None
    params = shard_params(shard_impl, *one, params)
    q, k, v = one
    h = plan.halo
    times = []
    for p, call in enumerate(plan.calls):
        if call is None:
            continue
        _, keys, view = call
        view_params = dataclasses.replace(params, view=view)
        # The call's key slice: global positions, zeros past the borders (as the halo gives).
        positions = np.arange(*keys) + plan.key_origin(p)
        inside = jnp.asarray((positions >= 0) & (positions < h.length))[
            (None, slice(None)) + (None,) * (k.ndim - 2)
        ]

        def block(x, positions=positions, inside=inside):
            return jnp.where(inside, jnp.take(x, np.clip(positions, 0, h.length - 1), axis=1), 0)

        q_shard = q[:, slice(*h.computed(p))]
        k_block, v_block = block(k), block(v)
        forward = jax.jit(lambda q, k, v, pv=view_params: _ffi_call.forward(pv, q, k, v))
        entry = {"forward": _median_seconds(forward, q_shard, k_block, v_block, iters=args.iters)}
        if args.backward:
            out, lse = forward(q_shard, k_block, v_block)
            backward = jax.jit(lambda *a, pv=view_params: _ffi_call.backward(pv, *a))
            cotangents = (out, q_shard, k_block, v_block, out, lse, jnp.zeros_like(lse))
            entry["backward"] = _median_seconds(backward, *cotangents, iters=args.iters)
        times.append(entry)
    return times


def main(argv=None) -> dict:
    args = _parse(argv)
    if args.small and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        # Only effective before jax starts its backends (running as a script).
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={8}"
        ).strip()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jax_gna
    from jax_gna import parallel
    from jax_gna._halo.exchange import key_block, query_block
    from jax_gna._halo.plan import shard_plan, shard_shapes
    from jax_gna._mesh import mesh_platform
    from jax_gna._params import make_params

    devices = jax.devices("cpu") if args.small else jax.devices()
    fake_devices = devices[0].platform == "cpu"
    if len(devices) < args.devices:
        sys.exit(f"needs {args.devices} devices, found {len(devices)}: {devices}")
    dtype = jnp.dtype(args.dtype)
    window = dict(kernel_size=tuple(args.window), stride=tuple(args.stride))
    rng = np.random.default_rng(0)
    shape = (1, *args.shape, args.heads, args.dim)
    q, k, v = (rng.standard_normal(shape, dtype=np.float32).astype(dtype) for _ in range(3))

    def loss_of(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32))

    def step(fn):
        return jax.jit(jax.grad(loss_of(fn), (0, 1, 2)) if args.backward else fn)

    impl = args.implementation or ("cuda" if devices[0].platform == "gpu" else "cpu")

    # One device.
    one = jax.device_put((q, k, v), devices[0])
    single = step(lambda q, k, v: jax_gna.gna(q, k, v, **window, implementation=impl))
    t_single = _median_seconds(single, *one, iters=args.iters)
    t_baseline = None
    if args.baseline:
        base = step(lambda q, k, v: jax_gna.gna(q, k, v, **window, implementation=args.baseline))
        t_baseline = _median_seconds(base, *one, iters=args.iters)

    # The time axis over `--devices` devices.
    mesh = jax.sharding.Mesh(np.asarray(devices[: args.devices]), ("x",))
    split = jax.device_put((q, k, v), NamedSharding(mesh, P(None, "x")))

    def sharded_fn(q, k, v):
        return parallel.gna_sharded(
            q, k, v, **window, mesh=mesh, axis_name="x", implementation=args.implementation,
            strategy=args.strategy,
        )  # fmt: skip

    sharded = step(sharded_fn)
    t_sharded = _median_seconds(sharded, *split, iters=args.iters)

    # The exchange alone: the ppermutes of Q rows, K and V that gna_sharded does.
    params = make_params(*one, **window)
    plan = shard_plan(tuple(args.shape), params, 0, args.devices)
    shard_impl = parallel.shard_implementation(
        args.implementation,
        mesh_platform(mesh),
        *shard_shapes(plan, 1, *one),
        params,
        plan,
    )
    spec = P(None, "x")

    def exchange(q, k, v):
        q = query_block(q, plan, 1, "x")
        return (q, *(key_block(x, plan, 1, "x") for x in (k, v)))

    def exchange_heads(q, k, v, d):
        # The step's all-to-alls alone: q, k, v to heads and the output back; with --backward
        # also dout (`d`, a q-shaped array of its own) to heads and dq, dk, dv back.
        def to_heads(x):
            return jax.lax.all_to_all(x, "x", 4, 1, tiled=True)

        def back(x):
            return jax.lax.all_to_all(x, "x", 1, 4, tiled=True)

        qh, kh, vh = to_heads(q), to_heads(k), to_heads(v)
        moved = (back(qh), kh, vh)
        return moved + (back(to_heads(d)), back(kh), back(vh)) if args.backward else moved

    moved_args = split
    if args.strategy == "heads":
        n_out = 6 if args.backward else 3
        moved = jax.shard_map(
            exchange_heads, mesh=mesh, in_specs=(spec,) * 4, out_specs=(spec,) * n_out
        )
        exchange_only = jax.jit(moved)
        moved_args = (*split, jax.device_put(q, NamedSharding(mesh, spec)))
    else:
        exchange_only = jax.jit(
            jax.shard_map(exchange, mesh=mesh, in_specs=(spec,) * 3, out_specs=(spec,) * 3)
        )
    t_halo = _median_seconds(exchange_only, *moved_args, iters=args.iters)

    per_shard = (
        _per_shard_times(args, one, params, plan, shard_impl)
        if args.per_shard and args.strategy == "halo"
        else None
    )

    got = jax.jit(sharded_fn)(*split)
    want = jax.jit(lambda q, k, v: jax_gna.gna(q, k, v, **window, implementation=impl))(*one)
    error = float(np.max(np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32))))

    h = plan.halo
    result = dict(
        device=devices[0].device_kind,
        shape=list(shape),
        dtype=args.dtype,
        window=window,
        devices=args.devices,
        backward=args.backward,
        implementation=impl,
        shard_implementation=shard_impl,
        strategy=args.strategy,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        halo=dict(shard=h.shard, left=h.left, right=h.right, shifts=list(h.shifts)),
        computed=[list(h.computed(p)) for p in range(h.devices)],
        single_s=t_single,
        sharded_s=t_sharded,
        halo_s=t_halo,
        # CPU "devices" are slices of one host sharing its cores: their times compare nothing.
        speedup=None if fake_devices else t_single / t_sharded,
        halo_share=t_halo / t_sharded,
        baseline_s=t_baseline,
        per_shard=per_shard,
        max_abs_error=error,
    )
    what = "forward+backward" if args.backward else "forward"
    print(f"{result['device']}: {shape} {args.dtype} window {args.window} stride {args.stride}")
    if args.strategy == "halo":
        print(f"time axis {args.shape[0]} over {args.devices} devices: shards of {h.shard}, halo "
              f"{h.left} left / {h.right} right; the devices compute "
              f"{', '.join(f'[{lo}, {hi})' for lo, hi in result['computed'])}")  # fmt: skip
        print(f"one device ran {impl!r}; the shards ran {shard_impl!r}")
    else:
        print(f"time axis {args.shape[0]} over {args.devices} devices: shards of {h.shard}; "
              f"each device attends the whole axis for {args.heads // args.devices} of "
              f"{args.heads} heads, implementation {impl!r}")  # fmt: skip
    if fake_devices:
        print(f"{what}: 1 device {t_single * 1e3:.2f} ms, {args.devices} devices "
              f"{t_sharded * 1e3:.2f} ms (CPU devices share this host's cores: no speedup "
              "to read; this run checks that the sharded path works)")  # fmt: skip
    else:
        print(f"{what}: 1 device {t_single * 1e3:.2f} ms, {args.devices} devices "
              f"{t_sharded * 1e3:.2f} ms, speedup {result['speedup']:.2f}x")  # fmt: skip
    moved = "halo exchange" if args.strategy == "halo" else "all-to-alls of heads"
    print(f"strategy {args.strategy!r}: {moved} alone {t_halo * 1e3:.3f} ms = "
          f"{100 * result['halo_share']:.1f}% of the sharded step")  # fmt: skip
    if t_baseline is not None:
        print(f"1 device, implementation={args.baseline!r}: {t_baseline * 1e3:.2f} ms")
    for p, times in enumerate(per_shard or ()):
        print(f"shard {p} alone on one device: " + ", ".join(
            f"{name} {t * 1e3:.2f} ms" for name, t in times.items()))  # fmt: skip
    print(f"max |sharded - single| = {error:.3g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
