"""Jit-compiled inference of a small 3-D video transformer on a video latent: GNA against dense
attention.

The model patchifies a latent video ``[batch, frames, height, width, channels]`` into a
``[batch, T, H, W, dim]`` token grid, runs a stack of transformer blocks whose attention also
sees text tokens, and unpatchifies. It is built twice from the same seed, with identical
parameters: once with `jax_gna.nnx.NeighborhoodAttention` (a 3-D window, optionally strided,
text tokens passed as ``context``) and once with ``nnx.MultiHeadAttention`` running
``jax.nn.dot_product_attention`` over all video and text tokens. Both are timed under
``jax.jit``.

    python examples/video_inference.py                     # small shape, fine on a CPU
    python examples/video_inference.py --shape hunyuan     # HunyuanVideo-like, on a GPU
    python examples/video_inference.py --quick             # tiny shape, for CI
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jax_gna.nnx

# Token grid (T, H, W) after a 1x2x2 patchify; window and stride per axis (T, H, W).
SHAPES = {
    "quick": dict(
        grid=(4, 6, 6), dim=32, heads=2, depth=1, window=(3, 3, 3), stride=1, text=4, iters=2
    ),
    "small": dict(
        grid=(8, 16, 16), dim=128, heads=4, depth=2, window=(3, 7, 7), stride=1, text=16, iters=5
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


def time_model(model, latent, text, iters: int) -> tuple[jax.Array, float, float]:
    """``(output, compile seconds, median seconds per call)`` of the jit-compiled model."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, latent, text: nnx.merge(graphdef, state)(latent, text))
    start = time.perf_counter()
    out = jax.block_until_ready(forward(state, latent, text))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(forward(state, latent, text))
        times.append(time.perf_counter() - start)
    return out, compile_s, float(np.median(times))


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

    results = {}
    runs = [("gna", args.implementation)] + ([] if args.skip_dense else [("dense", dense_impl)])
    for attention, impl in runs:
        model = build(cfg, attention, impl, dtype)
        out, compile_s, seconds = time_model(model, latent, text, cfg["iters"])
        results[attention] = dict(out=out, compile_s=compile_s, seconds=seconds)
        label = f"{attention} ({impl or 'auto'})"
        print(f"{label:>16}: {seconds * 1e3:9.2f} ms per call (compile {compile_s:.1f} s)")
    if "dense" in results:
        speedup = results["dense"]["seconds"] / results["gna"]["seconds"]
        print(f"GNA speed-up over dense attention: {speedup:.2f}x")
    return dict(results=results, latent_shape=latent.shape, cfg=cfg)


if __name__ == "__main__":
    main()
