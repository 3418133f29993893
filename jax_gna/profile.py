"""Profiler CLI: ``python -m jax_gna.profile -i 30 48 80 -n 24 -d 128 -w 18 24 24 -s 16 8 8``.

Times each requested GNA implementation and dense attention on the same inputs in the same
process (cuDNN through ``jax.nn.dot_product_attention(implementation="cudnn")`` on a GPU; XLA's
dense attention elsewhere, and the table says so), and prints time, speedup over dense, the
kernels' own time from a profiler trace and the JAX-path overhead beside it, the simulator's
bound (`jax_gna.sim`) and effective TFLOP/s. Effective FLOPs count the attended (query, key)
pairs only: ``2 * B * H * pairs * (D + Dv)`` forward (``4 * B * H * pairs * D`` when
``Dv == D``); ``--backprop`` times forward + backward and counts the backward as 2.5x the
forward; ``--deterministic on|off|both`` then picks the backward's mode (`jax_gna.gna`'s
``deterministic``; ``both`` times each implementation in both modes, in the same run), and the
``backward`` column says which backward ran (the CUDA kernels, or the ``xla`` stand-in on
problems they cannot run). The dense cuDNN backward follows XLA's
``--xla_gpu_deterministic_ops`` flag (``XLA_FLAGS``), for the whole process.

``--dtype fp8`` (forward only) times FP8 attention: the inputs are made in bfloat16 and
quantised to float8_e4m3fn with per-tensor scales (`jax_gna.quantize_fp8`, before timing), and
each implementation runs twice, on the float8 inputs with their descales (the ``fp8`` row) and
on the bfloat16 inputs they came from (the ``bf16`` row), against dense attention on the
bfloat16 inputs; a note gives each ``fp8`` row's speedup over its ``bf16`` row.

Timing (`jax_gna._timing`; ``docs/performance.md`` explains the method): a sample runs one
candidate alone for at least ``--sample-seconds`` (0.25 s): back-to-back dispatches of one
jitted function that holds up to ``--max-calls`` independent calls on as many different input
sets (forward, or forward + backward with every gradient an output); the candidates' samples
alternate (each implementation, then dense, then again), ``--iters`` samples each per run,
``--repeats`` runs, after ``--warmup`` untimed samples each. The table gives the median and its
spread (min-max over samples, or over the runs' medians with several runs); the speedup is the
ratio of the medians. On a GPU one more dispatch of each candidate runs under
``jax.profiler.trace``: the ``kernel`` column is the device time per call of the operation's own
kernels (``gna::`` for ours, cuDNN's for dense), ``overhead`` the rest of the time per call
(XLA's work around the call, launch gaps). ``--no-trace`` skips it; off a GPU it reads n/a.

The simulator's columns (tiles, bound) describe the GPU kernels: they are printed on a GPU only
(``--dry-run`` lists them anywhere). ``--q-tile``/``--kv-tile`` set the tile shapes of the
``cuda`` implementation (``auto`` too, when it picks ``cuda``; the other implementations have
no tiles); without them the kernels run the compiled configuration with the best simulated
bound. The table's tiles column says which configuration ran, and its bound is that
configuration's.

``--dry-run`` runs nothing and needs no GPU: it lists the kernels' candidate tile
configurations with their simulated numbers (and optionally the strides worth trying).
The arguments follow NATTEN's profiler (``python -m natten.profiler``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import jax_gna
from jax_gna import _ffi_call, _fp8, _implementations, _kernel_trace, _tiles, _timing, sim
from jax_gna._params import make_params, resolve_deterministic, xla_wants_determinism

_IMPLEMENTATIONS = ("auto", *_implementations.NAMES)
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "float8_e4m3fn"}
# --dtype fp8: the inputs are made in this dtype and quantised (per tensor), and the same
# implementations run on them unquantised too; the row names end in these suffixes.
_FP8_SOURCE = "bfloat16"
_FP8_ROWS = (" fp8", " bf16")
# Dense attention through XLA materialises [B, H, N, N] float32 scores (and a few temporaries):
# skip it above this much memory instead of running out.
_DENSE_XLA_MAX_BYTES = {"cpu": 4 << 30, "gpu": 24 << 30}
_BACKWARD_FLOPS_FACTOR = 2.5
# --deterministic: the values of `jax_gna.gna`'s `deterministic` each mode times.
_DETERMINISTIC_MODES = {"auto": (None,), "off": (False,), "on": (True,), "both": (False, True)}

_FLAGS = {
    "kernel_size": "-w/--window",
    "stride": "-s/--stride",
    "dilation": "--dilation",
    "is_causal": "-c/--causal",
    "heads": "-n/--heads, --heads-kv",
    "spatial shape": "-i/--input-size",
    "head dim": "-d/--dim, --dim-value",
}


def _flag_hint(message: str) -> str:
    """Which flags a jax_gna validation message is about (it names the gna arguments)."""
    hits = [f"{name} is {flag}" for name, flag in _FLAGS.items() if name in message]
    return f" ({'; '.join(hits)})" if hits else ""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "t", "yes", "y"):
        return True
    if t in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false/1/0), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jax_gna.profile",
        description="Profile jax_gna against dense attention, next to the simulator's bound.",
        epilog="Example: python -m jax_gna.profile -i 30 48 80 -n 24 -d 128 -w 18 24 24 "
        "-s 16 8 8 --dry-run",
    )
    prob = p.add_argument_group("problem")
    prob.add_argument(
        "-i", "--input-size", type=_positive_int, nargs="+", required=True, metavar="X",
        help="token layout: 1 to 3 extents",
    )  # fmt: skip
    prob.add_argument("-b", "--batch", type=_positive_int, default=1, help="batch (default 1)")
    prob.add_argument("-n", "--heads", type=_positive_int, default=1, help="query heads")
    prob.add_argument("--heads-kv", type=_positive_int, help="key/value heads (default: heads)")
    prob.add_argument("-d", "--dim", type=_positive_int, default=64, help="QK head dim (64)")
    prob.add_argument("--dim-value", type=_positive_int, help="V head dim (default: --dim)")
    prob.add_argument(
        "-w", "--window", type=_positive_int, nargs="+", metavar="K",
        help="window per axis (one value for all axes; default: the input size, i.e. dense)",
    )  # fmt: skip
    prob.add_argument(
        "-s", "--stride", type=_positive_int, nargs="+", metavar="S", help="stride (1)"
    )
    prob.add_argument("--dilation", type=_positive_int, nargs="+", metavar="D", help="dilation")
    prob.add_argument(
        "-c", "--causal", type=_bool, nargs="*", metavar="BOOL",
        help="causal per axis; bare -c makes every axis causal",
    )  # fmt: skip
    prob.add_argument(
        "--dtype", choices=tuple(_DTYPES), default="bf16",
        help="(default bf16); fp8: float8_e4m3fn quantised from bf16 inputs with per-tensor "
        "scales, timed next to bf16 on the same inputs (forward only)",
    )  # fmt: skip
    prob.add_argument(
        "--add-kv", type=_non_negative_int, default=0, metavar="E",
        help="extra key/value tokens every query attends to (e.g. text tokens)",
    )  # fmt: skip
    prob.add_argument("--backprop", action="store_true", help="time forward + backward")
    prob.add_argument(
        "--deterministic", choices=_DETERMINISTIC_MODES, default="auto",
        help="with --backprop: the backward's mode; auto follows XLA_FLAGS' "
        "--xla_gpu_deterministic_ops, both times each implementation in both modes (auto)",
    )  # fmt: skip
    run = p.add_argument_group("what to run")
    run.add_argument(
        "--implementation", action="append", metavar="NAME",
        help="implementation(s) to time, repeatable or comma-separated: "
        f"{', '.join(_IMPLEMENTATIONS)} (default: auto, what implementation=None picks)",
    )  # fmt: skip
    run.add_argument("--q-tile", type=_positive_int, nargs="+", metavar="T", help="Q tile shape")
    run.add_argument("--kv-tile", type=_positive_int, nargs="+", metavar="T", help="KV tile")
    run.add_argument(
        "--warmup", type=_non_negative_int, default=1,
        help="untimed samples per candidate before the timed ones (1)",
    )  # fmt: skip
    run.add_argument(
        "--iters", type=_positive_int, default=20, help="timed samples per candidate and run (20)"
    )
    run.add_argument(
        "--repeats", type=_positive_int, default=1, metavar="R",
        help="runs of --iters alternating samples in this process; with R >= 2 the table gives "
        "the median of the runs' medians and their min-max (1)",
    )  # fmt: skip
    run.add_argument(
        "--sample-seconds", type=_positive_float, default=_timing.SAMPLE_S, metavar="S",
        help=f"shortest sample: one candidate alone this long ({_timing.SAMPLE_S:g})",
    )  # fmt: skip
    run.add_argument(
        "--max-calls", type=_positive_int, metavar="N",
        help="most independent calls in one jitted dispatch (default: "
        f"{_timing.MAX_CALLS['gpu']} on a GPU, {_timing.MAX_CALLS['other']} elsewhere)",
    )  # fmt: skip
    run.add_argument(
        "--no-trace", action="store_true",
        help="skip the profiler trace that measures the kernels' own time (GPU only)",
    )  # fmt: skip
    run.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    run.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    run.add_argument(
        "--dry-run", action="store_true",
        help="run nothing: list candidate tile configurations with their simulated numbers",
    )  # fmt: skip
    run.add_argument(
        "--suggest-strides", type=_non_negative_int, default=0, metavar="N",
        help="with --dry-run: also list the N best Pareto-improving strides",
    )  # fmt: skip
    return p


@dataclasses.dataclass(frozen=True)
class Config:
    """The validated arguments."""

    problem: sim.Problem
    batch: int
    heads: int
    heads_kv: int
    dim: int
    dim_value: int
    dtype: str
    add_kv: int
    backprop: bool
    deterministic: tuple[bool | None, ...]  # one timed row per implementation and value
    implementations: tuple[str, ...]
    tiles: _tiles.TileConfig | None
    method: _timing.Method
    trace: bool
    dense: bool
    json: str | None
    dry_run: bool
    suggest_strides: int

    @property
    def fp8(self) -> bool:
        return _fp8.is_fp8(self.dtype)

    @property
    def input_dtype(self) -> str:
        """The dtype the inputs are made in: `dtype`, or with fp8 the one they are quantised
        from."""
        return _FP8_SOURCE if self.fp8 else self.dtype


def _per_axis(parser, flag: str, values, rank: int, default):
    if values is None:
        return default
    if len(values) == 1:
        return tuple(values) * rank
    if len(values) != rank:
        wanted = "1 value" if rank == 1 else f"1 or {rank} values (one per axis of -i/--input-size)"
        parser.error(
            f"argument {flag}: expected {wanted}, got {len(values)}: " + " ".join(map(str, values))
        )
    return tuple(values)


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Parse and validate; bad arguments exit through argparse with a message naming the flag."""
    parser = build_parser()
    a = parser.parse_args(argv)
    shape = tuple(a.input_size)
    rank = len(shape)
    if not 1 <= rank <= 3:
        parser.error(f"argument -i/--input-size: expected 1 to 3 extents, got {rank}")
    window = _per_axis(parser, "-w/--window", a.window, rank, shape)
    stride = _per_axis(parser, "-s/--stride", a.stride, rank, (1,) * rank)
    dilation = _per_axis(parser, "--dilation", a.dilation, rank, (1,) * rank)
    if a.causal is None:
        causal = (False,) * rank
    elif not a.causal:
        causal = (True,) * rank
    else:
        causal = _per_axis(parser, "-c/--causal", a.causal, rank, None)
    heads_kv = a.heads if a.heads_kv is None else a.heads_kv
    dim_value = a.dim if a.dim_value is None else a.dim_value
    dtype = _DTYPES[a.dtype]
    _validate_gna(parser, a, shape, window, stride, dilation, causal, heads_kv, dim_value, dtype)
    problem = sim.Problem(shape, window, stride, dilation, causal)

    impls: list[str] = []
    for item in a.implementation or ["auto"]:
        for name in (x.strip() for x in item.split(",")):
            if name not in _IMPLEMENTATIONS:
                parser.error(
                    f"argument --implementation: unknown implementation {name!r}; expected "
                    f"one of {', '.join(_IMPLEMENTATIONS)}"
                )
            if name not in impls:
                impls.append(name)

    tiles = None
    if (a.q_tile is None) != (a.kv_tile is None):
        parser.error("argument --q-tile/--kv-tile: give both tile shapes or neither")
    if a.q_tile is not None:
        for flag, t in (("--q-tile", a.q_tile), ("--kv-tile", a.kv_tile)):
            if len(t) != rank:
                parser.error(
                    f"argument {flag}: expected {rank} values (one per axis of "
                    f"-i/--input-size), got {len(t)}: {' '.join(map(str, t))}"
                )
        tiles = _tiles.TileConfig(tuple(a.q_tile), tuple(a.kv_tile))
    if a.suggest_strides and not a.dry_run:
        parser.error("argument --suggest-strides: only with --dry-run")
    if a.dtype == "fp8" and a.backprop:
        parser.error(
            "argument --dtype: fp8 is forward only (FP8 attention has no backward); drop "
            "--backprop, or time the backward with --dtype bf16"
        )
    if a.deterministic != "auto" and not a.backprop:
        parser.error(
            "argument --deterministic: only with --backprop (it is the backward's mode; the "
            "forward pass is deterministic)"
        )
    return Config(
        problem=problem,
        batch=a.batch,
        heads=a.heads,
        heads_kv=heads_kv,
        dim=a.dim,
        dim_value=dim_value,
        dtype=dtype,
        add_kv=a.add_kv,
        backprop=a.backprop,
        deterministic=_DETERMINISTIC_MODES[a.deterministic],
        implementations=tuple(impls),
        tiles=tiles,
        method=_timing.Method(
            iters=a.iters,
            repeats=a.repeats,
            warmup=a.warmup,
            sample_s=a.sample_seconds,
            max_calls=a.max_calls,
        ),
        trace=not a.no_trace,
        dense=not a.no_dense,
        json=a.json,
        dry_run=a.dry_run,
        suggest_strides=a.suggest_strides,
    )


def _validate_gna(parser, a, shape, window, stride, dilation, causal, heads_kv, dim_v, dtype):
    """The GNA rules, by jax_gna's own validation (on shapes only, nothing is allocated)."""
    import jax

    def struct(*s):
        return jax.ShapeDtypeStruct(s, dtype)

    q = struct(a.batch, *shape, a.heads, a.dim)
    k = struct(a.batch, *shape, heads_kv, a.dim)
    v = struct(a.batch, *shape, heads_kv, dim_v)
    extra_keys = extra_values = None
    if a.add_kv:
        extra_keys, extra_values = (
            struct(a.batch, a.add_kv, heads_kv, a.dim),
            struct(a.batch, a.add_kv, heads_kv, dim_v),
        )
    try:
        make_params(
            q,
            k,
            v,
            window,
            stride=stride,
            dilation=dilation,
            is_causal=causal,
            additional_keys=extra_keys,
            additional_values=extra_values,
            rank=len(shape),
        )
    except (TypeError, ValueError) as e:
        parser.error(f"{e}{_flag_hint(str(e))}")


def _candidates(cfg: Config) -> tuple[list[sim.Simulation], str]:
    """Tile configurations for the bound, ranked, and a note saying where they come from."""
    p = cfg.problem
    name = {v: k for k, v in _DTYPES.items()}[cfg.dtype]
    if cfg.fp8:
        name += " (the bf16 tile configurations)"  # the FP8 kernels run the 16-bit ones
    try:
        sims = sim.tile_candidates(p, cfg.dim, cfg.input_dtype)
        note = f"sm90 forward kernels, {name}, head dim {cfg.dim}"
    except NotImplementedError as e:
        try:
            sims = sim.tile_candidates(p, cfg.dim, "bfloat16")
            note = f"no sm90 kernel for this call ({e}); bf16 tiles, head dim {cfg.dim}"
        except NotImplementedError as e2:
            sims = sim.tile_candidates(p, 128, "bfloat16")
            note = f"no sm90 kernel for this call ({e2}); bf16 tiles of head dim 128"
    if cfg.tiles is not None:
        user = sim.simulate(p, cfg.tiles)
        known = [s.tiles for s in sims]
        tag = "given by --q-tile/--kv-tile"
        if cfg.tiles not in known:
            tag += "; not a configuration the kernels implement, simulated only"
        sims = [user] + [s for s in sims if s.tiles != cfg.tiles]
        note += f"; {tag}"
    return sims, note


def _flattened(p: sim.Problem, tiles: _tiles.TileConfig) -> sim.Simulation | None:
    if p.rank == 1:
        return None
    try:
        return sim.simulate_flattened(p, math.prod(tiles.q), math.prod(tiles.kv))
    except ValueError:
        return None  # too large to brute-force


def _describe(cfg: Config) -> str:
    p = cfg.problem
    kv = f" (kv {cfg.heads_kv})" if cfg.heads_kv != cfg.heads else ""
    dv = f"/{cfg.dim_value}" if cfg.dim_value != cfg.dim else ""
    extra = f", +{cfg.add_kv} extra KV tokens" if cfg.add_kv else ""
    dtype = cfg.dtype
    if cfg.fp8:
        dtype += f" (from {cfg.input_dtype}, per-tensor scales) and {cfg.input_dtype}"
    return f"batch {cfg.batch}, heads {cfg.heads}{kv}, head dim {cfg.dim}{dv}, {dtype}, {p}{extra}"


def _pairs(cfg: Config) -> tuple[int, int, bool]:
    """(attended pairs, dense pairs, dense is causal) per batch entry and head."""
    p = cfg.problem
    n, e = p.tokens, cfg.add_kv
    dense_causal = p.rank == 1 and p.is_causal[0]
    dense = n * (n + 1) // 2 + n * e if dense_causal else n * (n + e)
    return p.attended_pairs + n * e, dense, dense_causal


def _flops(cfg: Config, pairs: int) -> float:
    fwd = 2.0 * cfg.batch * cfg.heads * pairs * (cfg.dim + cfg.dim_value)
    return fwd * (1 + _BACKWARD_FLOPS_FACTOR) if cfg.backprop else fwd


def dry_run(cfg: Config, out: TextIO | None = None) -> dict[str, Any]:
    """Print the candidate tile configurations with their simulated numbers."""
    out = out or sys.stdout
    p = cfg.problem
    sims, note = _candidates(cfg)
    chosen = sims[0]
    pairs, dense_pairs, _ = _pairs(cfg)
    print("jax_gna profiler: dry run (nothing is executed)", file=out)
    print(f"problem: {_describe(cfg)}", file=out)
    print(
        f"tokens {p.tokens}, attended pairs {p.attended_pairs} "
        f"({p.attended_pairs / p.dense_pairs:.1%} of dense), FLOP-wise speedup "
        f"{p.flop_speedup:.2f}x; forward {_flops(cfg, pairs) / 1e12:.3f} TFLOP "
        f"(dense {_flops(cfg, dense_pairs) / 1e12:.3f})",
        file=out,
    )
    print(f"\ncandidate tile configurations ({note}); * = chosen:", file=out)
    print(sim.table(sims, marker=chosen), file=out)
    flat = _flattened(p, chosen.tiles)
    if flat is not None:
        print("\nfor comparison, 1-D tiling of the row-major flattened layout:", file=out)
        print(sim.table([flat]), file=out)
    result: dict[str, Any] = {
        "problem": _problem_json(cfg),
        "tile_note": note,
        "candidates": [_sim_json(s) for s in sims],
        "chosen": _sim_json(chosen),
        "flattened": None if flat is None else _sim_json(flat),
    }
    if cfg.suggest_strides:
        best = sim.suggest_strides(p, chosen.tiles, max_results=cfg.suggest_strides)
        print(
            f"\nPareto-improving strides for {chosen.tiles} (best {len(best)}; a larger "
            "stride is listed only if it raises the bound):",
            file=out,
        )
        print(sim.table(best), file=out)
        result["suggested_strides"] = [_sim_json(s) for s in best]
    return result


def _problem_json(cfg: Config) -> dict[str, Any]:
    p = cfg.problem
    return {
        "input_size": p.shape,
        "window": p.kernel_size,
        "stride": p.stride,
        "dilation": p.dilation,
        "causal": p.is_causal,
        "batch": cfg.batch,
        "heads": cfg.heads,
        "heads_kv": cfg.heads_kv,
        "dim": cfg.dim,
        "dim_value": cfg.dim_value,
        "dtype": cfg.dtype,
        "input_dtype": cfg.input_dtype,
        "add_kv": cfg.add_kv,
        "backprop": cfg.backprop,
        "deterministic": list(cfg.deterministic) if cfg.backprop else None,
    }


def _sim_json(s: sim.Simulation) -> dict[str, Any]:
    return {
        "stride": s.problem.stride,
        "q_tile": s.tiles.q,
        "kv_tile": s.tiles.kv,
        "tiling": s.tiling,
        "bound": s.bound,
        "token_bound": s.token_bound,
        "flop_speedup": s.flop_speedup,
        "mean_speedup": s.mean_speedup,
        "max_kv_tiles": s.max_kv_tiles,
        "dense_kv_tiles": s.dense_kv_tiles,
        "visited": s.visited,
        "full": s.full,
        "partial": s.partial,
        "block_sparse": s.block_sparse,
    }


class _Progress:
    """A tqdm bar over the sample rounds on an interactive stderr when tqdm is installed, else
    one line per candidate as it compiles and warms up."""

    def __init__(self, total: int):
        self._bar = None
        if sys.stderr.isatty():  # a bar in a log file is noise: print lines there instead
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, file=sys.stderr, leave=False, unit="round")

    def stage(self, name: str) -> None:
        if self._bar is None:
            print(f"[jax_gna.profile] preparing {name} ...", file=sys.stderr, flush=True)
        else:
            self._bar.set_description(name)

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _inputs(cfg: Config, index: int = 0):
    """Input set ``index``: ``(q, k, v, do, extra_keys, extra_values)`` from random key
    ``index`` (``do`` only with --backprop; the extra tokens only with --add-kv), in
    ``cfg.input_dtype``."""
    import jax

    p = cfg.problem
    keys = jax.random.split(jax.random.key(index), 6)
    b, s = cfg.batch, p.shape

    def normal(key, *shape):
        return jax.random.normal(key, shape, dtype=cfg.input_dtype)

    q = normal(keys[0], b, *s, cfg.heads, cfg.dim)
    k = normal(keys[1], b, *s, cfg.heads_kv, cfg.dim)
    v = normal(keys[2], b, *s, cfg.heads_kv, cfg.dim_value)
    do = normal(keys[3], b, *s, cfg.heads, cfg.dim_value) if cfg.backprop else None
    extra_keys = extra_values = None
    if cfg.add_kv:
        extra_keys = normal(keys[4], b, cfg.add_kv, cfg.heads_kv, cfg.dim)
        extra_values = normal(keys[5], b, cfg.add_kv, cfg.heads_kv, cfg.dim_value)
    return q, k, v, do, extra_keys, extra_values


def _quantized(inputs, dtype: str):
    """An input set (`_inputs`, forward only) quantised to ``dtype`` with per-tensor scales, the
    extra tokens with the key's and value's: ``(q, k, v, None, extra_keys, extra_values,
    descales)``, ``descales`` the tuple of the q, k and v descales."""
    q, k, v, _, extra_keys, extra_values = inputs
    q, q_descale = _fp8.quantize_fp8(q, dtype)
    (k, extra_keys), k_descale = _fp8.quantize_fp8((k, extra_keys), dtype)
    (v, extra_values), v_descale = _fp8.quantize_fp8((v, extra_values), dtype)
    return q, k, v, None, extra_keys, extra_values, (q_descale, k_descale, v_descale)


def _with_backprop(f, backprop: bool):
    """One timed call of ``f(q, k, v, extra_keys, extra_values)`` as a function of an input set:
    the forward's output, or with ``backprop`` the output and every gradient (dq, dk, dv), so
    that no part of the backward is dead code. A forward input set may end in the descales of
    float8 inputs (`_quantized`), which go on to ``f``."""
    import jax

    if not backprop:

        def forward(q, k, v, do, extra_keys, extra_values, *descales):
            return f(q, k, v, extra_keys, extra_values, *descales)

        return forward

    def forward_backward(q, k, v, do, extra_keys, extra_values):
        out, vjp = jax.vjp(lambda q, k, v: f(q, k, v, extra_keys, extra_values), q, k, v)
        return out, vjp(do)

    return forward_backward


def _gna_fn(cfg: Config, impl: str | None, deterministic: bool | None = None):
    p = cfg.problem
    kwargs: dict[str, Any] = dict(
        stride=p.stride,
        dilation=p.dilation,
        is_causal=p.is_causal,
        implementation=impl,
        deterministic=deterministic,
    )
    if cfg.tiles is not None and (impl is None or _implementations.get(impl).has_tiles):
        kwargs.update(q_tile_shape=cfg.tiles.q, kv_tile_shape=cfg.tiles.kv)

    def f(q, k, v, extra_keys, extra_values, descales=(None, None, None)):
        return jax_gna.gna(
            q,
            k,
            v,
            p.kernel_size,
            additional_keys=extra_keys,
            additional_values=extra_values,
            q_descale=descales[0],
            k_descale=descales[1],
            v_descale=descales[2],
            **kwargs,
        )

    return _with_backprop(f, cfg.backprop)


def _params(cfg: Config, q, k, v):
    """The call's parameters, as `jax_gna.gna` makes them for the problem's window."""
    p = cfg.problem
    return make_params(
        q, k, v, p.kernel_size, stride=p.stride, dilation=p.dilation, is_causal=p.is_causal
    )


def _cuda_tiles(cfg: Config, q, k, v) -> _tiles.TileConfig | None:
    """The tile configuration ``implementation="cuda"`` runs on these inputs: --q-tile/--kv-tile,
    else the kernels' pick for the call."""
    if cfg.tiles is not None:
        return cfg.tiles
    params = _ffi_call.cuda_tiles(q, k, v, _params(cfg, q, k, v))
    if not params.has_tiles:
        return None
    return _tiles.TileConfig(params.q_tile_shape, params.kv_tile_shape)


def _cuda_backward_reason(cfg: Config, q, k, v) -> str | None:
    """None if ``implementation="cuda"``'s gradients run the CUDA backward kernels on these
    inputs, else why the ``xla`` backward stands in."""
    return _implementations.CUDA.backward_why_not(q, k, v, _params(cfg, q, k, v))


def _cuda_backward_tiles(cfg: Config, q, k, v) -> str:
    """The tile configuration the CUDA backward runs on these inputs (its pick, else its only
    or default configuration)."""
    q_tile, kv_tile = _ffi_call.cuda_backward_tiles(q, k, v, _params(cfg, q, k, v))
    if q_tile:
        return str(_tiles.TileConfig(q_tile, kv_tile))
    rank = cfg.problem.rank
    default = _tiles.supported_tiles(rank, q.shape[-1], q.dtype, direction="bwd")[0]
    return str(default)


def _dense_fn(cfg: Config, implementation: str, causal: bool):
    import jax
    import jax.numpy as jnp

    n = cfg.problem.tokens

    def f(q, k, v, extra_keys, extra_values):
        b = q.shape[0]
        q2 = q.reshape(b, n, *q.shape[-2:])
        k2 = k.reshape(b, n, *k.shape[-2:])
        v2 = v.reshape(b, n, *v.shape[-2:])
        if extra_keys is not None:
            k2, v2 = (
                jnp.concatenate([k2, extra_keys], axis=1),
                jnp.concatenate([v2, extra_values], axis=1),
            )
        out = jax.nn.dot_product_attention(
            q2, k2, v2, is_causal=causal, implementation=implementation
        )
        return out.reshape(q.shape[:-1] + (v.shape[-1],))

    return _with_backprop(f, cfg.backprop)


def _platform() -> tuple[str, str]:
    import jax

    d = jax.devices()[0]
    return d.platform, f"{d.device_kind} ({d.platform})"


def _timers(cfg: Config, candidates: dict[str, Any], pools: dict[str, _timing.InputPool]):
    """A `_timing.Timer` per candidate function on its input pool (exceptions stay as they
    are)."""
    m = cfg.method
    return {
        name: fn
        if isinstance(fn, Exception)
        else _timing.Timer(fn, pools[name], sample_s=m.sample_s, max_calls=m.max_calls)
        for name, fn in candidates.items()
    }


def _input_pools(cfg: Config) -> list[tuple[str, _timing.InputPool]]:
    """``(row-name suffix, input pool)`` per kind of input the implementations run on: the
    inputs of ``cfg.dtype``, or with fp8 the quantised ones (`_quantized`) and then the ones
    they come from, in that order. The dense baseline takes the last pool."""
    pool = _timing.InputPool(lambda index: _inputs(cfg, index))
    if not cfg.fp8:
        return [("", pool)]
    # Set i is made again from random key i (not kept: the bf16 rows may time fewer sets).
    quantized = _timing.InputPool(lambda index: _quantized(_inputs(cfg, index), cfg.dtype))
    return list(zip(_FP8_ROWS, (quantized, pool)))


def _speedup_over_source(rows: list[dict[str, Any]], requested: list[str]) -> None:
    """With fp8: add to each timed fp8 row its speedup over the bf16 row of the same requested
    implementation (``requested[i]`` is row i's ``--implementation``; ``auto`` may pick
    differently for each dtype), as ``over_bf16``: `_timing.speedup`'s fields and the name of
    that row."""
    fp8, source = _FP8_ROWS
    timed = {
        (impl, row["implementation"].endswith(fp8)): row
        for impl, row in zip(requested, rows)
        if row.get("status") == "ok" and row["implementation"].endswith((fp8, source))
    }
    for (impl, is_fp8), row in timed.items():
        base = timed.get((impl, False)) if is_fp8 else None
        if base is not None:
            over = {"implementation": base["implementation"]} | _timing.speedup(row, base)
            row["over_bf16"] = over


def _kernel_columns(row: dict[str, Any], timer, own: tuple[str, ...]) -> None:
    """Trace a sample's worth of ``timer``'s dispatches and add the last one's kernel time and
    overhead per call to ``row``; if the trace cannot be read, ``row["trace"]`` says why."""
    times = _kernel_trace.trace_calls(timer.dispatch, timer.calls, timer.dispatches)
    if isinstance(times, str):
        row["trace"] = times
        return
    row.update(times.json(own))
    kernel = times.own_ms(own)
    if kernel is None:  # e.g. the xla implementation: no kernel of its own, XLA's only
        row["trace"] = f"no {'/'.join(own)} kernels: the kernel column is all device work"
        kernel = times.busy_ms
    else:
        row["trace"] = "ok"
    row["kernel_ms"] = kernel
    row["overhead_ms"] = row["median_ms"] - kernel


@dataclasses.dataclass
class _Candidates:
    """What `profile` times: a row per implementation (``--implementation`` x backward mode x
    kind of input), each with its function (or the exception building it raised) and input
    pool; ``requested`` is each row's ``--implementation``, ``tiles`` those of the cuda rows."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    requested: list[str] = dataclasses.field(default_factory=list)
    functions: dict[str, Any] = dataclasses.field(default_factory=dict)
    pools: dict[str, _timing.InputPool] = dataclasses.field(default_factory=dict)
    tiles: dict[str, _tiles.TileConfig | None] = dataclasses.field(default_factory=dict)

    def add_gna_rows(self, cfg: Config, suffix: str, pool: _timing.InputPool) -> None:
        """A row per implementation and backward mode on the inputs of ``pool``, its name
        ending in ``suffix``."""
        p = cfg.problem
        q, k, v, *_ = pool.take(1)[0]
        window = dict(stride=p.stride, dilation=p.dilation, is_causal=p.is_causal)
        supported = jax_gna.supported_implementations(q, k, v, p.kernel_size, **window)
        auto = next(
            i.name for i in _implementations.IMPLEMENTATIONS if i.auto and supported[i.name] is None
        )
        if cfg.tiles is not None:  # they go to the cuda implementation only (`_gna_fn`)
            supported["cuda"] = jax_gna.supported_implementations(
                q, k, v, p.kernel_size, **window, q_tile_shape=cfg.tiles.q,
                kv_tile_shape=cfg.tiles.kv,
            )["cuda"]  # fmt: skip
        for impl, deterministic in itertools.product(cfg.implementations, cfg.deterministic):
            resolved = resolve_deterministic(deterministic)
            name = (f"auto -> {auto}" if impl == "auto" else impl) + suffix
            if cfg.backprop and resolved:
                name += " [deterministic]"
            reason = None if impl == "auto" else supported.get(impl)
            row: dict[str, Any] = {"implementation": name}
            self.rows.append(row)
            self.requested.append(impl)
            self.pools[name] = pool
            if cfg.backprop:
                row["deterministic"] = resolved
            if reason is not None:
                row["status"] = f"unavailable: {reason}"
                continue
            if (auto if impl == "auto" else impl) == "cuda":
                try:
                    self.tiles[name] = _cuda_tiles(cfg, q, k, v)
                    if cfg.backprop:
                        why = _cuda_backward_reason(cfg, q, k, v)
                        row["backward"] = "cuda" if why is None else f"xla ({why})"
                        if why is None:
                            row["backward_tiles"] = _cuda_backward_tiles(cfg, q, k, v)
                except Exception as e:
                    self.functions[name] = e
                    continue
                if self.tiles[name] is not None:
                    row["tiles"] = str(self.tiles[name])
            try:
                self.functions[name] = _gna_fn(cfg, None if impl == "auto" else impl, deterministic)
            except Exception as e:
                self.functions[name] = e


def profile(cfg: Config, out: TextIO | None = None) -> dict[str, Any]:
    """Time the implementations and dense attention; print the table; return the results."""
    out = out or sys.stdout

    p = cfg.problem
    sims, note = _candidates(cfg)
    chosen = sims[0]
    platform, device = _platform()
    on_gpu = platform == "gpu"
    pairs, dense_pairs, dense_causal = _pairs(cfg)
    pools = _input_pools(cfg)
    dense_impl = "cudnn" if on_gpu else "xla"
    dense_note = ""
    if cfg.dense and dense_impl == "xla":
        need = 4 * 3 * cfg.batch * cfg.heads * p.tokens * (p.tokens + cfg.add_kv)
        limit = _DENSE_XLA_MAX_BYTES.get(platform, _DENSE_XLA_MAX_BYTES["cpu"])
        if need > limit:
            dense_note = f"skipped: XLA's dense attention would need ~{need / 2**30:.0f} GiB"

    plan = _Candidates()
    for suffix, pool in pools:
        plan.add_gna_rows(cfg, suffix, pool)
    rows, candidates, pool_of = plan.rows, plan.functions, plan.pools
    dense: dict[str, Any] = {"implementation": f"dense ({dense_impl})"}
    pool_of[dense["implementation"]] = pools[-1][1]
    if not cfg.dense:
        dense["status"] = "skipped (--no-dense)"
    elif dense_note:
        dense["status"] = dense_note
    else:
        try:
            candidates[dense["implementation"]] = _dense_fn(cfg, dense_impl, dense_causal)
        except Exception as e:
            candidates[dense["implementation"]] = e

    m = cfg.method
    timers = _timers(cfg, candidates, pool_of)
    progress = _Progress(m.iters * m.repeats)
    try:
        timed = _timing.alternate(
            timers, iters=m.iters, repeats=m.repeats, warmup=m.warmup,
            on_stage=progress.stage, on_sample=progress.step,
        )  # fmt: skip
    finally:
        progress.close()
    for row in (*rows, dense):
        row.update(timed.get(row["implementation"], {}))

    ok = [r for r in (*rows, dense) if r.get("status") == "ok"]
    for row in ok:
        if not on_gpu:
            row["trace"] = "n/a (no GPU)"
        elif not cfg.trace:
            row["trace"] = "skipped (--no-trace)"
        else:
            own = _kernel_trace.OWN_KERNELS["gna" if row is not dense else dense_impl]
            _kernel_columns(row, timers[row["implementation"]], own)
    for row in rows:
        if row.get("status") == "ok":
            row["tflops"] = _flops(cfg, pairs) / (row["median_ms"] * 1e-3) / 1e12
            row["speedup"] = None
            if dense.get("status") == "ok":
                row.update(_timing.speedup(row, dense))
            if on_gpu:  # the simulator describes the GPU kernels
                tiles = plan.tiles.get(row["implementation"])
                row["bound"] = (chosen if tiles is None else sim.simulate(p, tiles)).token_bound
    if dense.get("status") == "ok":
        dense["tflops"] = _flops(cfg, dense_pairs) / (dense["median_ms"] * 1e-3) / 1e12
        dense["speedup"] = 1.0
    if cfg.fp8:
        _speedup_over_source(rows, plan.requested)

    pass_name = "forward + backward" if cfg.backprop else "forward"
    print(f"device: {device}", file=out)
    print(f"problem: {_describe(cfg)}", file=out)
    if on_gpu:
        print(
            f"simulator: tiles {chosen.tiles} ({note}): bound {chosen.bound:.2f}x "
            f"({chosen.token_bound:.2f}x against dense over the unpadded tokens, the 'sim "
            f"bound' below), FLOP-wise {chosen.flop_speedup:.2f}x, "
            f"{'perfectly block-sparse' if chosen.block_sparse else 'needs masking'}",
            file=out,
        )
    else:
        print(
            "simulator: not shown, its tiles and bound describe the GPU kernels (--dry-run "
            "lists them)",
            file=out,
        )
    dense_what = ("cuDNN" if dense_impl == "cudnn" else "XLA (no GPU: cuDNN needs one)") + (
        ", causal" if dense_causal else ""
    )
    if cfg.fp8:
        dense_what += f", on the {cfg.input_dtype} inputs"
    if cfg.backprop and dense_impl == "cudnn":
        # XLA reads the flag once per process: it is what the environment said at start-up.
        mode = "deterministic" if xla_wants_determinism() else "default"
        dense_what += f", {mode} backward (XLA_FLAGS)"
    print(
        f"pass: {pass_name}; dense baseline: {dense_what}; "
        f"{'TFLOP/s' if on_gpu else 'GFLOP/s'} count attended pairs only"
        + ("; backward = 2.5x forward" if cfg.backprop else ""),
        file=out,
    )
    spread_over = f"{m.repeats} runs' medians" if m.repeats > 1 else f"{m.iters} samples"
    print(f"timing: {m.describe()}; [spread] = min-max over {spread_over}", file=out)
    print(_results_table(rows + [dense], on_gpu), file=out)
    return {
        "device": device,
        "problem": _problem_json(cfg),
        "tile_note": note,
        "simulation": _sim_json(chosen),
        "simulation_applies": on_gpu,
        "pass": pass_name,
        "method": m.json(),
        "warmup": m.warmup,
        "iters": m.iters,
        "repeats": m.repeats,
        "results": rows,
        "dense": dense,
    }


def _results_table(rows: list[dict[str, Any]], on_gpu: bool = True) -> str:
    """The results as a text table; the tiles and sim bound columns only ``on_gpu``."""
    header = ["implementation", "tiles", "time (ms)", "speedup vs dense", "kernel (ms)",
              "overhead", "sim bound", "TFLOP/s" if on_gpu else "GFLOP/s"]  # fmt: skip
    gpu_only = {"tiles", "sim bound"}
    lines = [header]
    notes = []
    for r in rows:
        name = r["implementation"]
        if r.get("status") != "ok":
            lines.append([name, r.get("tiles", "-")] + ["-"] * (len(header) - 2))
            notes.append(f"  {name}: {r.get('status')}")
            continue
        if r.get("backward", "cuda") != "cuda":
            notes.append(f"  {name}: backward by {r['backward']}")
        elif "backward_tiles" in r:
            notes.append(f"  {name}: backward tiles {r['backward_tiles']}")
        if "over_bf16" in r:
            over = r["over_bf16"]
            notes.append(f"  {name}: {_timing.format_speedup(over)} over {over['implementation']}")
        trace = r.get("trace", "n/a")
        if trace not in ("ok", "n/a (no GPU)"):
            notes.append(f"  {name}: kernel time: {trace}")
        notes.append(
            f"  {name}: a sample is "
            f"{_timing.plural(r['dispatches_per_sample'], 'dispatch', 'dispatches')} of "
            f"{_timing.plural(r['calls_per_dispatch'], 'independent call')}"
        )
        time_ms = _timing.format_time(r)
        speed = _timing.format_speedup(r)
        if "kernel_ms" in r:
            kernel = _timing.format_ms(r["kernel_ms"])
            overhead = (
                f"{_timing.format_ms(r['overhead_ms'])} ({r['overhead_ms'] / r['median_ms']:.0%})"
            )
        else:
            kernel = overhead = "n/a"
        flops = r["tflops"] * (1 if on_gpu else 1e3)
        lines.append(
            [name, r.get("tiles", "-"), time_ms, speed, kernel, overhead,
             f"{r['bound']:.2f}x" if "bound" in r else "-", f"{flops:.4g}"]
        )  # fmt: skip
    keep = [i for i, h in enumerate(header) if on_gpu or h not in gpu_only]
    lines = [[x[i] for i in keep] for x in lines]
    widths = [max(len(x[i]) for x in lines) for i in range(len(keep))]
    left = 2 if on_gpu else 1  # name (and tiles) left-aligned, numbers right-aligned
    text = [
        "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths)))
        for x in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text + notes)


def run(argv: Sequence[str] | None = None, out: TextIO | None = None) -> dict[str, Any]:
    """Parse ``argv``, dry-run or profile, write ``--json``; return the results."""
    out = out or sys.stdout
    cfg = parse_args(argv)
    result = dry_run(cfg, out) if cfg.dry_run else profile(cfg, out)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(result, f, indent=2, default=_json_default)
        print(f"wrote {cfg.json}", file=out)
    return result


def _json_default(x):
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def main(argv: Sequence[str] | None = None) -> int:
    result = run(argv)
    rows = result.get("results")
    if rows is not None and rows and not any(r.get("status") == "ok" for r in rows):
        return 1  # nothing could be timed
    return 0


if __name__ == "__main__":
    sys.exit(main())
