"""Training check: the same small Flax model trained with our kernels and with the reference.

A 2-D neighborhood-attention transformer (`jax_gna.nnx.NeighborhoodAttention`: bf16 attention
inputs, GQA, one block at stride 1 and one at a GNA stride) learns to imitate a randomly
initialised teacher of the same architecture (mean squared error on random images; a smooth
task, so that the loss curves compare well) from the same initial parameters on the same
batches, three times, with the same Adam steps (written out here, no optax):

- ``ours``: ``implementation=--implementation`` (``cuda`` on a GPU, ``cpu`` on the CPU);
- ``reference``: ``implementation="reference"`` (dense masked softmax in float32, jax.grad);
- ``control``: the reference again, with every gradient element multiplied by
  ``1 + 2^-8 * N(0, 1)`` (fresh noise each step): how far bf16-sized gradient errors alone move
  this training run away from the reference.

It prints the per-step losses and writes them with the verdict to ``--json``.

Tolerance. Two runs of the same model never stay identical: the kernels round P and dS to
bf16 in the backward (relative error 2^-9 per term), those differences change every update a
little, and training amplifies them; minibatch losses then differ by a few percent from step to
step. The check therefore compares the loss curves averaged over 20 steps: their largest
relative difference between ``ours`` and ``reference`` must stay within 4x that between
``control`` and ``reference``, or within 5%, whichever is larger. On the CPU (small model, 200
steps), the float32 implementations ``cpu`` and ``xla`` stayed within 1.0% and 0.8% of the
reference by this measure and the control within 0.65%, while per-step differences reached
4-7%; bf16 roundings in the CUDA backward may double the former, which the bound leaves room
for, while a wrong gradient moves the curve by much more. Also, the first step's loss (before
any update: the forward only) must agree to 1%, and both runs must learn (the last 20 steps'
mean loss below half the first 20 steps'), so that the comparison is not between two flat
curves. Exit status 1 when any of this fails.

    python benchmarks/training_check.py --json training.json                 # GPU: cuda
    python benchmarks/training_check.py --implementation cpu --steps 20 \\
        --grid 12 --dim 64 --batch-size 8                                    # CPU sanity run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import jax_gna.nnx

CONTROL_NOISE = 2.0**-8  # relative std of the control run's gradient noise
CONTROL_FACTOR = 4.0
FLOOR = 0.05  # relative difference of the smoothed curves always allowed
SMOOTHING = 20  # steps per moving average
FIRST_STEP = 0.01  # relative
LEARNED = 0.5  # last 20 steps' mean over the first 20's
N_OUTPUTS = 4


class Block(nnx.Module):
    """Pre-norm transformer block: neighborhood attention (bf16 inputs), then an MLP."""

    def __init__(self, dim: int, window, stride, implementation: str, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = jax_gna.nnx.NeighborhoodAttention(
            4, dim, window, num_kv_heads=2, stride=stride, dtype=jnp.bfloat16,
            implementation=implementation, rngs=rngs,
        )  # fmt: skip
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp1 = nnx.Linear(dim, 2 * dim, rngs=rngs)
        self.mlp2 = nnx.Linear(2 * dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x)).astype(x.dtype)
        return x + self.mlp2(jax.nn.gelu(self.mlp1(self.norm2(x))))


class Model(nnx.Module):
    """[batch, grid, grid] images -> [batch, N_OUTPUTS] logits."""

    def __init__(self, grid: int, dim: int, implementation: str, *, rngs: nnx.Rngs):
        self.embed = nnx.Linear(1, dim, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (grid, grid, dim)))
        self.blocks = nnx.List(
            [
                Block(dim, (7, 7), (1, 1), implementation, rngs),
                Block(dim, (8, 8), (4, 4), implementation, rngs),
            ]
        )
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, N_OUTPUTS, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.embed(images[..., None]) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=(1, 2)))


def make_batches(args) -> tuple[np.ndarray, np.ndarray]:
    """Random images ``[steps, batch, grid, grid]`` and the teacher's outputs for them
    ``[steps, batch, N_OUTPUTS]``, scaled to unit variance; the teacher has its own seed."""
    rng = np.random.default_rng(args.seed)
    images = rng.standard_normal((args.steps, args.batch_size, args.grid, args.grid))
    images = images.astype(np.float32)
    teacher = Model(args.grid, args.dim, "reference", rngs=nnx.Rngs(args.seed + 1000))
    predict = nnx.jit(lambda model, x: model(x))
    targets = np.stack([np.asarray(predict(teacher, x)) for x in images])
    return images, (targets / targets.std()).astype(np.float32)


def adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """(init, update) of Adam on a pytree of parameters."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return zeros, zeros, jnp.zeros((), jnp.int32)

    def update(params, grads, state):
        m, v, t = state
        t = t + 1
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        correction = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        params = jax.tree.map(
            lambda p, m, v: p - lr * correction * m / (jnp.sqrt(v) + eps), params, m, v
        )
        return params, (m, v, t)

    return init, update


def train(
    implementation: str, images, targets, args, noise: float = 0.0, name: str | None = None
) -> tuple[list[float], dict]:
    """Per-step losses of one run, and its initial parameters (to check they are shared); a
    progress bar on stderr shows the run (`name`) and its running loss."""
    model = Model(args.grid, args.dim, implementation, rngs=nnx.Rngs(args.seed))
    graphdef, params = nnx.split(model)
    initial = jax.tree.map(np.asarray, params)
    init, update = adam(args.lr)

    def loss_fn(params, x, y):
        return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2)

    @jax.jit
    def step(params, state, x, y, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        if noise:
            leaves, tree = jax.tree.flatten(grads)
            keys = jax.random.split(key, len(leaves))
            leaves = [
                g * (1 + noise * jax.random.normal(k, g.shape, g.dtype))
                for g, k in zip(leaves, keys)
            ]
            grads = jax.tree.unflatten(tree, leaves)
        params, state = update(params, grads, state)
        return params, state, loss

    state = init(params)
    key = jax.random.key(args.seed + 1)
    losses = []
    bar = tqdm(range(len(images)), desc=name or implementation, unit="step", file=sys.stderr)
    for i in bar:
        params, state, loss = step(params, state, images[i], targets[i], jax.random.fold_in(key, i))
        losses.append(float(loss))
        if i % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    bar.close()
    return losses, initial


def verdict(ours: list[float], ref: list[float], control: list[float]) -> dict:
    """The comparison the module docstring describes, with each criterion's numbers (shorter
    runs average over a quarter of their steps)."""
    ours, ref, control = map(np.asarray, (ours, ref, control))
    window = min(SMOOTHING, max(1, len(ref) // 4))

    def smooth(losses):
        return np.convolve(losses, np.ones(window) / window, mode="valid")

    def smoothed_rel_diff(losses):
        return float(np.max(np.abs(smooth(losses) - smooth(ref)) / smooth(ref)))

    def learned(losses):
        return float(losses[-window:].mean() / losses[:window].mean())

    rel, control_rel = smoothed_rel_diff(ours), smoothed_rel_diff(control)
    allowed = max(CONTROL_FACTOR * control_rel, FLOOR)
    first = float(abs(ours[0] - ref[0]) / abs(ref[0]))
    checks = {
        "first_step": first <= FIRST_STEP,
        "curves": rel <= allowed,
        "ours_learned": learned(ours) < LEARNED,
        "reference_learned": learned(ref) < LEARNED,
    }
    return dict(
        smoothing_steps=window,
        smoothed_max_rel_diff=rel,
        control_smoothed_max_rel_diff=control_rel,
        allowed_smoothed_rel_diff=allowed,
        max_abs_diff=float(np.abs(ours - ref).max()),
        max_rel_diff=float(np.max(np.abs(ours - ref) / ref)),
        first_step_rel_diff=first,
        learned_ratio={"ours": learned(ours), "reference": learned(ref)},
        checks=checks,
        passed=all(checks.values()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--implementation", default="cuda", help="ours: cuda (default) or cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--grid", type=int, default=24, help="image side, in tokens")
    parser.add_argument("--dim", type=int, default=256, help="model width (4 heads, 2 kv)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write losses and verdict here")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    images, targets = make_batches(args)
    ours, initial = train(args.implementation, images, targets, args, name="1/3 ours")
    ref, ref_initial = train("reference", images, targets, args, name="2/3 reference")
    jax.tree.map(np.testing.assert_array_equal, initial, ref_initial)  # same initialisation
    control, _ = train("reference", images, targets, args, noise=CONTROL_NOISE, name="3/3 control")
    seconds = time.perf_counter() - start

    print(f"{'step':>5} {'ours':>9} {'reference':>9} {'|diff|':>9} {'control':>9}")
    for i, (a, b, c) in enumerate(zip(ours, ref, control)):
        print(f"{i:5d} {a:9.5f} {b:9.5f} {abs(a - b):9.2e} {c:9.5f}")
    result = verdict(ours, ref, control)
    print(
        f"implementation={args.implementation} vs reference, {args.steps} steps in "
        f"{seconds:.1f} s on {jax.devices()[0].device_kind}: loss curves "
        f"({result['smoothing_steps']}-step means) differ by at most "
        f"{result['smoothed_max_rel_diff']:.2%} (allowed "
        f"{result['allowed_smoothed_rel_diff']:.2%}; control "
        f"{result['control_smoothed_max_rel_diff']:.2%}), single steps by at most "
        f"{result['max_rel_diff']:.2%}; first step {result['first_step_rel_diff']:.2%}; "
        f"learned to {result['learned_ratio']['ours']:.2f} of the initial loss (reference "
        f"{result['learned_ratio']['reference']:.2f}); "
        f"{'PASSED' if result['passed'] else 'FAILED'} {result['checks']}"
    )
    if args.json:
        record = dict(
            vars(args), device=jax.devices()[0].device_kind, seconds=seconds,
            losses=dict(ours=ours, reference=ref, control=control), **result,
        )  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {args.json}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
