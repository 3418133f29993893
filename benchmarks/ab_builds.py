"""Build variants of this tree and time them against each other on one GPU.

A variant is a copy of this working tree, optionally with a patch applied and extra CMake
arguments (a compile-time development knob, say), and optionally environment variables for its
tests and runs (a runtime knob): variants that differ only in those share one build. The builds
run in parallel, each in its own copy under ``--work``; then every round runs each chosen
standard problem (``design_problems.py``) through the profiler on each variant in turn, one
process per run, so that clock and thermal drift fall on all variants alike
(docs/performance.md, "The method").
The summary gives, per problem and profiler row, each variant's median over rounds with the
spread, and the speedup over dense measured in the same process.

Usage (repository root, a GPU machine with nvcc)::

  python benchmarks/ab_builds.py --variant base --variant new:change.patch \\
      --problems hunyuan-gna flux-4k-gna --rounds 2
  # a compile-time knob, the FP8 kernels added to the smoke set, FP8 timing:
  python benchmarks/ab_builds.py --variant k0 --variant k2 --with-fp8 \\
      --cmake-arg k2=-DCMAKE_CUDA_FLAGS=-DGNA_SM90_FP8_FMA_EXP2=2 \\
      --problems hunyuan-gna -- --dtype fp8
  # a runtime knob: two variants, one build
  python benchmarks/ab_builds.py --variant grid --variant persistent \\
      --env persistent=GNA_SM90_PERSISTENT=1 --problems flux-4k-gna

``--rounds 0`` only builds; ``--reuse`` keeps the builds of an earlier call whose sources and
options are unchanged (on a machine that stays up between calls). Arguments after ``--`` go to
the profiler (default: ``--iters 3 --repeats 1 --no-trace``).
``--tests tests/gpu/test_cuda_fwd.py ...`` runs those tests on every build first and times
only the builds that pass them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The problem list and the formatting come from this tree's jax_gna: the Python that runs the
# tool need not have it installed (see check_import).
if importlib.util.find_spec("jax_gna") is None:
    sys.path.insert(0, str(ROOT))
from jax_gna._timing import format_ms, format_spread  # noqa: E402

# What a variant's copy leaves out: version control, build outputs, the built extension.
_COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "_skbuild", "__pycache__", "*.so")
DEFAULT_PROFILER_ARGS = ["--iters", "3", "--repeats", "1", "--no-trace"]


def _design_problems():
    spec = importlib.util.spec_from_file_location("design_problems", ROOT / "benchmarks" /
                                                  "design_problems.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules["design_problems"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def parse_variants(
    specs: list[str], cmake_args: list[str], envs: tuple[str, ...] | list[str] = ()
) -> dict[str, dict]:
    """`NAME[:PATCH]` specs, `NAME=ARG` CMake arguments and `NAME=VAR=VALUE` environment
    variables -> {name: {patch, cmake, env}}."""
    variants: dict[str, dict] = {}
    for spec in specs:
        name, _, patch = spec.partition(":")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name in variants:
            raise ValueError(f"--variant {spec!r}: NAME must be unique, letters/digits/_/-")
        if patch and not Path(patch).is_file():
            raise ValueError(f"--variant {spec!r}: no patch file {patch!r}")
        variants[name] = {"patch": Path(patch).resolve() if patch else None, "cmake": [], "env": {}}
    for arg in cmake_args:
        name, sep, value = arg.partition("=")
        if not sep or name not in variants:
            raise ValueError(f"--cmake-arg {arg!r}: expected NAME=ARG with NAME a --variant")
        variants[name]["cmake"].append(value)
    for arg in envs:
        name, _, assignment = arg.partition("=")
        var, sep, value = assignment.partition("=")
        if name not in variants or not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            raise ValueError(f"--env {arg!r}: expected NAME=VAR=VALUE with NAME a --variant")
        variants[name]["env"][var] = value
    return variants


def shared_builds(variants: dict[str, dict]) -> dict[str, str]:
    """{variant: the variant whose build it runs}: the first of those with its patch and CMake
    arguments (its environment is for the runs only)."""
    first: dict[tuple, str] = {}
    return {
        n: first.setdefault((str(v["patch"]), tuple(v["cmake"])), n) for n, v in variants.items()
    }


def fp16_in_smoke(table: str) -> str:
    """jax_gna/_kernel_table.py's text with the sm90 fp16 kernels of the smoke set's head dim
    (forward and backward) in the smoke set too (which holds bf16 only)."""
    line = '"sm90": {"dtype": "bfloat16", "head_dim": 128},'
    if line not in table:
        raise RuntimeError(f"--with-fp16: jax_gna/_kernel_table.py has no `{line}` line")
    return table.replace(line, '"sm90": {"head_dim": 128},')


def fp8_in_smoke(table: str) -> str:
    """jax_gna/_kernel_table.py's text with every FP8 kernel in the smoke set (which has none)."""
    text, n = re.subn(r"(?m)^( *)smoke=False,$", r"\1smoke=True,", table)
    if n == 0:
        raise RuntimeError("--with-fp8: jax_gna/_kernel_table.py has no `smoke=False,` line")
    return text


def build_stamp(variant: dict, args: argparse.Namespace) -> str:
    """What a variant's build is made of: every file the copy takes from this tree, the patch,
    the CMake arguments and the kernel set options (a digest)."""
    h = hashlib.sha256()
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in _COPY_IGNORE(top, dirs))
        for f in sorted(set(files) - _COPY_IGNORE(top, files)):
            path = Path(top) / f
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    if variant["patch"]:
        h.update(variant["patch"].read_bytes())
    options = [variant["cmake"], args.with_fp8, args.with_fp16, args.kernel_set, args.archs,
               args.cutlass_include]  # fmt: skip
    h.update(json.dumps(options, default=str).encode())
    return h.hexdigest()


def build(name: str, variant: dict, work: Path, args: argparse.Namespace, jobs: int) -> Path:
    """Copies the tree, applies the patch, builds the extension into the copy; returns it. With
    --reuse, a copy built before from the same sources and options is returned as it is."""
    src = work / name
    stamp = build_stamp(variant, args)
    stamp_file = work / f"{name}.stamp"
    if args.reuse and stamp_file.is_file() and stamp_file.read_text() == stamp:
        print(f"variant {name}: reusing its build under {src}", flush=True)
        return src
    stamp_file.unlink(missing_ok=True)
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT, src, ignore=_COPY_IGNORE)
    if variant["patch"]:
        # `git apply` needs no repository; where git is missing, `patch` reads the same diffs.
        apply = ["git", "apply"] if shutil.which("git") else ["patch", "-p1", "--forward", "-i"]
        done = subprocess.run([*apply, str(variant["patch"])], cwd=src, capture_output=True,
                              text=True)  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"variant {name}: {variant['patch']} does not apply:\n{done.stderr}")
    if args.with_fp8 or args.with_fp16:
        table = src / "jax_gna" / "_kernel_table.py"
        text = table.read_text()
        text = fp8_in_smoke(text) if args.with_fp8 else text
        text = fp16_in_smoke(text) if args.with_fp16 else text
        table.write_text(text)
        subprocess.run([sys.executable, "cuda/generate_kernel_table.py"], cwd=src, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    out = src / "build_ab"
    configure = [
        "cmake", "-S", str(src), "-B", str(out), "-G", "Ninja", "-DJAX_GNA_CUDA=ON",
        f"-DJAX_GNA_CUDA_ARCHS={args.archs}", f"-DJAX_GNA_KERNEL_SET={args.kernel_set}",
        "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}",
        *([f"-DCUTLASS_INCLUDE_DIR={args.cutlass_include}"] if args.cutlass_include else []),
        *variant["cmake"],
    ]  # fmt: skip
    log = work / f"build_{name}.log"
    with open(log, "w") as f:
        for cmd in (configure, ["cmake", "--build", str(out), "-j", str(jobs)]):
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"variant {name}: build failed, see {log}")
    for so in out.glob("_ext*.so"):
        shutil.copy2(so, src / "jax_gna")
    check_import(src)
    stamp_file.write_text(stamp)
    return src


def check_import(src: Path) -> None:
    """Raises unless `import jax_gna` with src on PYTHONPATH gives src's package: an editable
    install's import hook would take precedence and time the installed build instead."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    probe = "import importlib.util; print(importlib.util.find_spec('jax_gna').origin)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=src, env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    origin = Path(done.stdout.strip()).resolve()
    if not origin.is_relative_to(src.resolve()):
        raise RuntimeError(
            f"with PYTHONPATH={src}, `import jax_gna` gives {origin}: this Python has jax_gna "
            "installed in editable mode, whose import hook wins over PYTHONPATH; run ab_builds "
            "with a Python that has jax_gna's dependencies but not jax_gna itself"
        )


def run_tests(
    src: Path, paths: list[str], workers: int, log: Path, marker: str = "", env: dict | None = None
) -> str:
    """pytest on the build in `src` (GPU tests: no preallocation, so workers share the GPU),
    `marker` its ``-m`` expression if any, with the variables of `env` set; returns pytest's
    last line."""
    env = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": str(src),
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider",
           *(["-n", str(workers)] if workers > 1 else []),
           *(["-m", marker] if marker else [])]  # fmt: skip
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=src, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    last = (log.read_text().strip().splitlines() or [""])[-1]
    return last if code == 0 else f"FAILED (exit {code}): {last}; see {log}"


def profile_once(
    src: Path, problem, profiler_args: list[str], out: Path, env: dict | None = None
) -> dict:
    """One profiler run of `problem` on the build in `src`, in its own process, with the
    variables of `env` set."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "jax_gna.profile", *problem.argv(), *profiler_args,
           "--json", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=src, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def rows(result: dict) -> dict[str, tuple[float, float | None]]:
    """A profiler result's timed rows, dense included: {name: (median ms, its speedup over
    dense, as the profiler measured it in the same process)}."""
    dense = result.get("dense") or {}
    out = {}
    for name, row in [*((r["implementation"], r) for r in result.get("results", [])),
                      ("dense", dense)]:  # fmt: skip
        if isinstance(row.get("median_ms"), (int, float)):
            out[name] = (row["median_ms"], row.get("speedup"))
    return out


def summary(runs: dict[str, dict[str, list[dict]]]) -> str:
    """{problem: {variant: [result per round]}} -> a text table (median [min-max] over rounds)."""
    lines = [f"{'problem':16s} {'row':18s} {'variant':10s} {'ms':>28s} {'over dense':>12s}"]
    for problem, by_variant in runs.items():
        parsed = {variant: [rows(r) for r in results] for variant, results in by_variant.items()}
        for row in dict.fromkeys(k for rs in parsed.values() for r in rs for k in r):
            for variant, results in parsed.items():
                got = [r[row] for r in results if row in r]
                if not got:
                    continue
                ms = [g[0] for g in got]
                over = [g[1] for g in got if g[1] is not None]
                spread = f"{format_ms(statistics.median(ms))} {format_spread(min(ms), max(ms))}"
                speed = f"{statistics.median(over):.2f}x" if over else "-"
                lines.append(f"{problem:16s} {row:18s} {variant:10s} {spread:>28s} {speed:>12s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    profiler_args = DEFAULT_PROFILER_ARGS
    if "--" in argv:
        i = argv.index("--")
        argv, profiler_args = argv[:i], [*DEFAULT_PROFILER_ARGS, *argv[i + 1 :]]
    dp = _design_problems()
    by_name = {p.name: p for p in dp.PROBLEMS}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME[:PATCH]")
    parser.add_argument("--cmake-arg", action="append", default=[], metavar="NAME=ARG")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VAR=VALUE",
        help="set VAR for variant NAME's tests and runs (a runtime knob)",
    )
    parser.add_argument(
        "--problems",
        nargs="+",
        required=True,
        choices=sorted(by_name),
        metavar="NAME",
        help="standard problems by name (design_problems.py)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--with-fp8",
        action="store_true",
        help="add the FP8 kernels to the smoke set of every variant",
    )
    parser.add_argument(
        "--with-fp16",
        action="store_true",
        help="add the sm90 fp16 kernels of head dim 128 to the smoke set of every variant "
        "(time them with `-- --dtype fp16`)",
    )
    parser.add_argument("--kernel-set", default="smoke", choices=("smoke", "full"))
    parser.add_argument("--archs", default="90a", help="JAX_GNA_CUDA_ARCHS (default 90a)")
    parser.add_argument("--cutlass-include", help="CUTLASS headers (default: the wheel's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/jax_gna_ab"))
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep a variant's build under --work when its sources and options are unchanged "
        "(a later call on the same machine times without building again)",
    )
    parser.add_argument("--json", type=Path, help="write every profiler result here")
    parser.add_argument(
        "--tests",
        nargs="+",
        default=[],
        metavar="PATH",
        help="pytest these on every build first; a build that fails is not timed",
    )
    parser.add_argument("--test-workers", type=int, default=8)
    parser.add_argument(
        "--test-marker",
        default="",
        metavar="EXPR",
        help='pytest -m expression for --tests, e.g. "gpu and not slow"',
    )
    args = parser.parse_args(argv)  # fmt: skip
    try:
        variants = parse_variants(args.variant, args.cmake_arg, args.env)
    except ValueError as e:
        parser.error(str(e))
    if args.work.resolve().is_relative_to(ROOT):
        parser.error(f"--work {args.work}: must lie outside the tree it copies ({ROOT})")
    args.work.mkdir(parents=True, exist_ok=True)
    builds = shared_builds(variants)
    to_build = sorted(set(builds.values()), key=list(variants).index)
    jobs = max(1, (os.cpu_count() or 1) // len(to_build))
    with concurrent.futures.ThreadPoolExecutor(len(to_build)) as pool:
        futures = {n: pool.submit(build, n, variants[n], args.work, args, jobs) for n in to_build}
        try:
            built = {n: f.result() for n, f in futures.items()}
        except RuntimeError as e:
            print(f"ab_builds: {e}", file=sys.stderr)
            return 1
    srcs = {n: built[builds[n]] for n in variants}
    print(f"built {', '.join(built)} under {args.work}", flush=True)
    for n in list(srcs) if args.tests else []:
        log = args.work / f"tests_{n}.log"
        line = run_tests(
            srcs[n], args.tests, args.test_workers, log, args.test_marker, variants[n]["env"]
        )
        print(f"tests on {n}: {line}", flush=True)
        if line.startswith("FAILED"):
            del srcs[n]
    runs = {p: {n: [] for n in srcs} for p in args.problems}
    for r in range(args.rounds):
        for p in args.problems:
            for n, src in srcs.items():
                out = args.work / f"{p}_{n}_{r}.json"
                try:
                    runs[p][n].append(
                        profile_once(src, by_name[p], profiler_args, out, variants[n]["env"])
                    )
                except subprocess.CalledProcessError as e:
                    print(f"the profiler failed on {n}, {p} (exit {e.returncode})", flush=True)
                if args.json:  # after every run: a session cut short keeps what it measured
                    args.json.write_text(json.dumps(runs, indent=2, default=str))
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    print(summary(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
