"""Jit-compiled inference (and, with ``--train``, training steps) of a small 3-D video transformer
on a video latent: GNA against dense attention.

The model patchifies a latent video ``[batch, frames, height, width, channels]`` into a
``[batch, T, H, W, dim]`` token grid, runs a stack of transformer blocks whose attention also
sees text tokens, and unpatchifies. It is built twice from the same seed, with identical
parameters: once with `jax_gna.nnx.NeighborhoodAttention` (a 3-D window, optionally strided,
text tokens passed as ``context``) and once with ``nnx.MultiHeadAttention`` running
``jax.nn.dot_product_attention`` (cuDNN on a GPU) over all video and text tokens.

Both models are timed the way the profiler times attention (``docs/performance.md``): a sample
runs one model alone for at least ``--sample-seconds`` (back-to-back jitted dispatches, each of
independent calls on different latents), the models' samples alternate, and the speed-up is
the ratio of the medians, with its spread. ``--train`` also times a training step (forward,
backward through the whole model, an Adam update) of each model.

    python examples/video_inference.py                     # small shape, fine on a CPU
    python examples/video_inference.py --shape hunyuan     # HunyuanVideo-like, on a GPU
    python examples/video_inference.py --shape hunyuan --train --repeats 3
    python examples/video_inference.py --quick             # tiny shape, for CI
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jax_gna.nnx
from jax_gna import _timing

# Token grid (T, H, W) after a 1x2x2 patchify; window and stride per axis (T, H, W); timed
# samples per model (iters), the shortest sample in seconds (sample_s) and, optionally, the most
# independent calls per dispatch (max_calls; default: `_timing.default_max_calls`).
SHAPES = {
    "quick": dict(
        grid=(4, 6, 6),
        dim=32,
        heads=2,
        depth=1,
        window=(3, 3, 3),
        stride=1,
        text=4,
        iters=2,
        sample_s=0.01,
        max_calls=2,  # CI: short samples, little to compile
    ),
    "small": dict(
        grid=(8, 16, 16),
        dim=128,
        heads=4,
        depth=2,
        window=(3, 7, 7),
        stride=1,
        text=16,
        iters=5,
        sample_s=_timing.SAMPLE_S,
    ),
    # HunyuanVideo 720p, 5 s: a 30x48x80 token grid (115,200 tokens), 24 heads of 128, 256 text
    # tokens, with the 18x24x24 window and 16x8x8 stride of the GNA paper's HunyuanVideo runs.
    "hunyuan": dict(
        grid=(30, 48, 80),
        dim=3072,
        heads=24,
        depth=2,
        window=(18, 24, 24),
        stride=(16, 8, 8),
        text=256,
        iters=10,
        sample_s=_timing.SAMPLE_S,
    ),
}
LATENT_CHANNELS = 16
PATCH = (1, 2, 2)


def patchify(latent: jax.Array) -> jax.Array:
    b, t, h, w, c = latent.shape
    pt, ph, pw = PATCH
    x = latent.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
    return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, t // pt, h // ph, w // pw, -1)


def unpatchify(x: jax.Array) -> jax.Array:
    b, t, h, w, _ = x.shape
    pt, ph, pw = PATCH
    x = x.reshape(b, t, h, w, pt, ph, pw, LATENT_CHANNELS)
    return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, t * pt, h * ph, w * pw, -1)


def dense_attention_fn(implementation: str | None):
    """An ``attention_fn`` for ``nnx.MultiHeadAttention`` that calls
    ``jax.nn.dot_product_attention`` (``"cudnn"`` is its flash-attention kernel on GPUs)."""

    def attention_fn(query, key, value, **kwargs):
        del kwargs  # no mask or dropout in this model
        return jax.nn.dot_product_attention(query, key, value, implementation=implementation)

    return attention_fn


class Block(nnx.Module):
    """Pre-norm transformer block; the video tokens attend to each other and to the text."""

    def __init__(self, cfg: dict, attention: str, implementation, *, rngs: nnx.Rngs):
        dim, heads = cfg["dim"], cfg["heads"]
        self.attention = attention
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        if attention == "gna":
            self.attn = jax_gna.nnx.NeighborhoodAttention(
                heads,
                dim,
                cfg["window"],
                stride=cfg["stride"],
                implementation=implementation,
                rngs=rngs,
            )
        else:  # the same parameters, dense attention over every token
            self.attn = nnx.MultiHeadAttention(
                heads,
                dim,
                decode=False,
                attention_fn=dense_attention_fn(implementation),
                rngs=rngs,
            )
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp1 = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.mlp2 = nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, text: jax.Array) -> jax.Array:
        h = self.norm1(x)
        if self.attention == "gna":
            a = self.attn(h, context=text)
        else:
            tokens = h.reshape(h.shape[0], -1, h.shape[-1])
            a = self.attn(tokens, jnp.concatenate([tokens, text], axis=1)).reshape(h.shape)
        x = x + a
        return x + self.mlp2(jax.nn.gelu(self.mlp1(self.norm2(x))))


class VideoTransformer(nnx.Module):
    def __init__(self, cfg: dict, attention: str, implementation=None, *, dtype, rngs):
        patch_features = LATENT_CHANNELS * math.prod(PATCH)
        self.embed = nnx.Linear(patch_features, cfg["dim"], rngs=rngs)
        self.blocks = nnx.List(
            [Block(cfg, attention, implementation, rngs=rngs) for _ in range(cfg["depth"])]
        )
        self.proj = nnx.Linear(cfg["dim"], patch_features, rngs=rngs)
        self.dtype = dtype

    def __call__(self, latent: jax.Array, text: jax.Array) -> jax.Array:
        x = self.embed(patchify(latent)).astype(self.dtype)
        for block in self.blocks:
            x = block(x, text.astype(self.dtype))
        return unpatchify(self.proj(x))


def build(cfg: dict, attention: str, implementation=None, dtype=jnp.float32, seed: int = 0):
    """The model with parameters in ``dtype``; the same seed gives the same parameters for
    ``attention="gna"`` and ``"dense"``."""
    model = VideoTransformer(cfg, attention, implementation, dtype=dtype, rngs=nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p: p.astype(dtype), params))
    return model


def inputs(cfg: dict, dtype, batch: int = 1, seed: int = 0):
    t, h, w = cfg["grid"]
    k1, k2 = jax.random.split(jax.random.key(seed))
    latent_shape = (batch, t * PATCH[0], h * PATCH[1], w * PATCH[2], LATENT_CHANNELS)
    latent = jax.random.normal(k1, latent_shape, dtype)
    text = jax.random.normal(k2, (batch, cfg["text"], cfg["dim"]), dtype)
    return latent, text


def forward_fn(model):
    """The model's forward as a function of ``(state, latent, text)``."""
    graphdef, _ = nnx.split(model)

    def forward(state, latent, text):
        return nnx.merge(graphdef, state)(latent, text)

    return forward


def train_step_fn(model, optimizer):
    """One training step as a function of ``(params, opt_state, latent, text, target)``:
    forward, backward and the optimizer's update; returns the new parameters, the new optimizer
    state and the loss (all outputs, so nothing is dead code)."""
    graphdef, _ = nnx.split(model)

    def step(params, opt_state, latent, text, target):
        def loss_fn(params):
            out = nnx.merge(graphdef, params)(latent, text)
            return jnp.mean(jnp.square(out.astype(jnp.float32) - target.astype(jnp.float32)))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def candidates(cfg: dict, models: dict, dtype, train: bool, sample_s: float, max_calls=None):
    """`_timing.Timer`s by name: each model's forward (``"gna"``, ``"dense"``) and, with
    ``train``, its training step (``"gna train"``, ``"dense train"``). Input set ``i`` holds
    latent and text ``i`` (and a target), so the calls of a dispatch are independent."""

    def batch(i):
        latent, text = inputs(cfg, dtype, seed=i)
        return latent, text, jax.random.normal(jax.random.key(10_000 + i), latent.shape, dtype)

    timers = {}
    for attention, model in models.items():
        state = nnx.state(model)
        timers[attention] = _timing.Timer(
            forward_fn(model),
            _timing.InputPool(lambda i, state=state: (state, *batch(i)[:2])),
            sample_s=sample_s,
            max_calls=max_calls,
        )
        if train:
            optimizer = optax.adam(1e-4)
            params = nnx.state(model, nnx.Param)
            opt_state = optimizer.init(params)
            timers[f"{attention} train"] = _timing.Timer(
                train_step_fn(model, optimizer),
                _timing.InputPool(lambda i, p=params, o=opt_state: (p, o, *batch(i))),
                sample_s=sample_s,
                max_calls=max_calls,
            )
    return timers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--quick", action="store_true", help="same as --shape quick (CI)")
    parser.add_argument("--implementation", default=None, help="jax_gna implementation")
    parser.add_argument(
        "--dense-implementation",
        default=None,
        help='jax.nn.dot_product_attention implementation (default: "cudnn" on a GPU)',
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--skip-dense", action="store_true", help="time GNA only")
    parser.add_argument(
        "--train", action="store_true", help="also time a training step (forward, backward, Adam)"
    )
    parser.add_argument("--iters", type=int, help="timed samples per model and run")
    parser.add_argument("--repeats", type=int, default=1, help="runs of alternating samples")
    parser.add_argument("--sample-seconds", type=float, help="shortest sample (0.25)")
    parser.add_argument("--max-calls", type=int, help="most independent calls per dispatch")
    args = parser.parse_args(argv)

    cfg = SHAPES["quick" if args.quick else args.shape]
    on_gpu = jax.default_backend() == "gpu"
    dtype = jnp.dtype(args.dtype or ("bfloat16" if on_gpu else "float32"))
    dense_impl = args.dense_implementation or ("cudnn" if on_gpu else None)
    latent, text = inputs(cfg, dtype)
    tokens, window = math.prod(cfg["grid"]), cfg["window"]
    print(
        f"{jax.devices()[0].device_kind}: latent {latent.shape} {dtype.name} -> grid "
        f"{cfg['grid']} ({tokens} tokens) + {cfg['text']} text tokens, {cfg['depth']} blocks, "
        f"{cfg['heads']} heads of {cfg['dim'] // cfg['heads']}; window {window}, stride "
        f"{cfg['stride']} ({math.prod(window) / tokens:.1%} of the grid per query)"
    )

    heads = jnp.zeros((1, *cfg["grid"], cfg["heads"], cfg["dim"] // cfg["heads"]), dtype)
    usable = jax_gna.supported_implementations(heads, heads, heads, window, stride=cfg["stride"])
    del heads
    print("jax_gna implementations usable here:", [i for i, why in usable.items() if why is None])

    impls = {"gna": args.implementation, "dense": dense_impl}
    models = {
        attention: build(cfg, attention, impls[attention], dtype)
        for attention in (("gna",) if args.skip_dense else ("gna", "dense"))
    }
    method = _timing.Method(
        iters=args.iters or cfg["iters"],
        repeats=args.repeats,
        sample_s=args.sample_seconds or cfg["sample_s"],
        max_calls=args.max_calls or cfg.get("max_calls"),
    )
    print(f"timing: {method.describe()}")
    timers = candidates(cfg, models, dtype, args.train, method.sample_s, method.max_calls)
    timed = _timing.alternate(
        timers,
        iters=method.iters,
        repeats=method.repeats,
        warmup=method.warmup,
        on_stage=lambda name: print(f"  compiling and warming up {name} ...", flush=True),
    )

    results = {}
    for name, r in timed.items():
        attention = name.split()[0]
        label = f"{name} ({impls[attention] or 'auto'})"
        if r["status"] != "ok":
            print(f"{label:>22}: {r['status']}")
            results[name] = r
            continue
        lo, hi = r["spread_ms"]
        print(
            f"{label:>22}: {r['median_ms']:9.2f} ms per call [{lo:.2f}-{hi:.2f}] "
            f"({_timing.plural(r['calls_per_dispatch'], 'call')} per dispatch, compile "
            f"{r['first_call_s']:.1f} s)"
        )
        results[name] = dict(r, seconds=r["median_ms"] / 1e3, compile_s=r["first_call_s"])
    for attention, model in models.items():
        if attention in results:  # the output of one forward, for checks
            forward = jax.jit(forward_fn(model))
            results[attention]["out"] = forward(nnx.state(model), latent, text)
    speedups = {}
    for suffix, what in (("", "forward"), (" train", "training step")):
        gna, dense = results.get("gna" + suffix), results.get("dense" + suffix)
        if gna and dense and gna["status"] == dense["status"] == "ok":
            speedups[what] = _timing.speedup(gna, dense)
            s = speedups[what]
            lo, hi = s["speedup_spread"]
            print(
                f"GNA speed-up over dense attention, end to end ({what}): "
                f"{s['speedup']:.2f}x [{lo:.2f}-{hi:.2f}]"
            )
    return dict(
        results=results, speedups=speedups, latent_shape=latent.shape, cfg=cfg,
        method=method.json(),
    )  # fmt: skip


if __name__ == "__main__":
    main()
