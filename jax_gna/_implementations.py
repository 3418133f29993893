"""Which implementation runs a call: one record per implementation (`IMPLEMENTATIONS`, in the
order ``implementation=None`` tries them), and `attend`, the one-device dispatcher.

``implementation=None`` picks the first usable of ``"cuda"`` (our kernels, on a GPU they
support), ``"cpu"`` (our C++ FFI handler, on the CPU) and ``"xla"`` (portable pure JAX, any
backend). ``"reference"`` (dense masked softmax, O(N^2) memory) is never picked automatically.
`select`, `jax_gna.supported_implementations`, the shards of `jax_gna.parallel` and the
profiler all walk the same records.

Tile shapes (``q_tile_shape``/``kv_tile_shape``) belong to the ``"cuda"`` kernels: an explicit
other implementation refuses them; ``None`` honours them when it picks ``"cuda"`` (and raises if
the kernels could run the call but not with those tiles) and drops them otherwise, so that one
model runs everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jax_gna import _additional_kv, _ffi_call, _ffi_op, _fp8, reference
from jax_gna._fp8 import is_fp8
from jax_gna._mesh import array_platform, explicit_mesh, per_shard
from jax_gna._params import GnaParams
from jax_gna._xla import gna_xla


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One implementation of GNA and what it can run.

    Attributes:
      name: its ``implementation=`` name.
      platform: the one platform it runs on (``"cpu"``, ``"gpu"``), or None for any.
      why_not: ``(query, key, value, params) -> str | None``: why it cannot run a call on its
        platform (the extension, dtype, what the kernels support), None if it can.
      backward_why_not: the same for its own gradient kernels; where they refuse, the ``xla``
        backward stands in.
      run: ``(query, key, value, params, extra_keys, extra_values) -> (out, lse)`` of a call it
        can run, extra tokens (or None) included.
      takes_views: its kernels run a shard's view of the whole problem, so the shards of a
        spatially split call run it (`jax_gna.parallel`); the shards of the others run the
        ``xla`` tiles or the dense masks of their blocks.
      has_tiles: it takes ``q_tile_shape``/``kv_tile_shape``.
      auto: ``implementation=None`` may pick it.
      computes_in_float32: it computes in float32 whatever the inputs, so 16-bit inputs given
        as float32 cost it nothing and its result arrives unrounded (`run_inputs`).
    """

    name: str
    platform: str | None
    why_not: Callable[..., str | None]
    backward_why_not: Callable[..., str | None]
    run: Callable[..., tuple[jax.Array, jax.Array]]
    takes_views: bool = False
    has_tiles: bool = False
    auto: bool = True
    computes_in_float32: bool = False

    def tiles_refusal(self, params: GnaParams) -> str | None:
        """Why it cannot take the tile shapes of `params` (None: it can, or there are none)."""
        if params.has_tiles and not self.has_tiles:
            return (
                "`q_tile_shape`/`kv_tile_shape` choose the tiles of the 'cuda' kernels and "
                f"{self.name!r} has none (leave them unset, or use implementation='cuda' or None)"
            )
        return None

    def platform_refusal(self, platform: str) -> str | None:
        """Why it cannot run on `platform` (None: it can)."""
        if self.platform is None or platform == self.platform:
            return None
        return f"it runs on {self.platform.upper()} and this call runs on {platform.upper()}"

    def refusal(self, query, key, value, params: GnaParams) -> str | None:
        """None if it can run this call (on the query's platform), else the reason."""
        tiles = self.tiles_refusal(params)
        if tiles is not None:
            return tiles
        platform = self.platform_refusal(array_platform(query))
        if platform is not None:
            return (
                f"{platform} (a traced call runs on jax's default device: trace it inside "
                f"`with jax.default_device(jax.devices({self.platform!r})[0])` to run there)"
            )
        return self.why_not(query, key, value, params)


def _runs_all(query, key, value, params: GnaParams) -> None:
    """The verdict of an implementation that runs every valid call."""
    return None


def _with_extra_tokens(neighborhood: Callable) -> Callable:
    """A `run` from a function of the neighborhood part ``(q, k, v, params) -> (out, lse)``:
    the extra tokens are attended apart and merged by their log-sum-exps
    (`jax_gna._additional_kv`). The merge rounds once, at the end (to the inputs' dtype, which
    `run_inputs` makes float32 for the implementations that compute in it)."""

    def run(query, key, value, params: GnaParams, extra_keys, extra_values):
        out, lse = neighborhood(query, key, value, params)
        if extra_keys is None:
            return out, lse
        n_batch = query.ndim - params.rank - 2
        return _additional_kv.attend_and_merge(
            query, out, lse, extra_keys, extra_values, params.scale, n_batch
        )

    return run


def _run_cuda(query, key, value, params: GnaParams):
    return _ffi_op.gna_ffi(query, key, value, _ffi_call.cuda_tiles(query, key, value, params))


def _run_xla(query, key, value, params: GnaParams):
    mesh = explicit_mesh(query)
    if mesh is None:
        return gna_xla(query, key, value, params)
    # Its reshapes cannot re-type sharded dims: run it per batch/head shard.
    attend = lambda q, k, v: gna_xla(q, k, v, params)  # noqa: E731
    kv_heads = key.shape[-2]
    run = per_shard(attend, mesh, jax.typeof(query), params.rank, kv_heads, "ttt", "tl")
    return run(query, key, value)


# Why each FFI implementation refuses float8 inputs (`jax_gna._fp8`) it has no kernel for: then
# "xla" runs them. (The CUDA forward takes `_ffi_call.CUDA_FP8_DTYPES`, where it says itself.)
_FP8_REFUSALS = {
    "cuda": (
        f"the FP8 kernels take {', '.join(_ffi_call.CUDA_FP8_DTYPES)} only (other float8 inputs "
        "run on implementation='xla', dequantised)"
    ),
    "cpu": (
        f"the CPU kernel takes {', '.join(_ffi_call.CPU_DTYPES)}, not float8 (float8 inputs "
        "run on implementation='xla', dequantised)"
    ),
}


def _ffi_why_not(name: str, query, key, value, params: GnaParams) -> str | None:
    if is_fp8(query.dtype) and not (
        name == "cuda" and str(query.dtype) in _ffi_call.CUDA_FP8_DTYPES
    ):
        return _FP8_REFUSALS[name]
    return _ffi_call.why_not(name, query, key, value, params)


def _ffi(name: str, run: Callable, **kwargs) -> Implementation:
    return Implementation(
        name,
        platform=_ffi_call.PLATFORM[name],
        why_not=functools.partial(_ffi_why_not, name),
        backward_why_not=functools.partial(_ffi_call.backward_why_not, name),
        run=run,
        takes_views=True,
        **kwargs,
    )


CUDA = _ffi("cuda", _with_extra_tokens(_run_cuda), has_tiles=True)
CPU = _ffi("cpu", _with_extra_tokens(_ffi_op.gna_ffi), computes_in_float32=True)
XLA = Implementation(
    "xla", None, _runs_all, _runs_all, _with_extra_tokens(_run_xla), computes_in_float32=True
)
# The dense softmax takes the extra tokens into the same softmax itself.
REFERENCE = Implementation(
    "reference",
    None,
    _runs_all,
    _runs_all,
    reference.attention,
    auto=False,
    computes_in_float32=True,
)

IMPLEMENTATIONS: tuple[Implementation, ...] = (CUDA, CPU, XLA, REFERENCE)
NAMES: tuple[str, ...] = tuple(impl.name for impl in IMPLEMENTATIONS)


def get(name: str) -> Implementation:
    """The implementation called `name`; ValueError for an unknown one."""
    for impl in IMPLEMENTATIONS:
        if impl.name == name:
            return impl
    raise ValueError(f"Unknown `implementation` {name!r}; expected None or one of {NAMES}.")


def supported(
    query: jax.Array, key: jax.Array, value: jax.Array, params: GnaParams
) -> dict[str, str | None]:
    """Every implementation mapped to None (usable) or the reason it is not."""
    return {impl.name: impl.refusal(query, key, value, params) for impl in IMPLEMENTATIONS}


def select(
    implementation: str | None,
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    params: GnaParams,
) -> Implementation:
    """The implementation to run: the first usable one for None; the requested one otherwise,
    or NotImplementedError saying why it cannot run and what would. With tile shapes, None
    picks as without them and raises if it picks ``"cuda"`` and the kernels lack those tiles
    (see the module docstring)."""
    untiled = params.without_tiles()
    if implementation is None:
        for impl in IMPLEMENTATIONS:
            if impl.auto and impl.refusal(query, key, value, untiled) is None:
                if impl.has_tiles and params.has_tiles:
                    reason = impl.refusal(query, key, value, params)
                    if reason is not None:
                        raise NotImplementedError(
                            f"implementation=None picked {impl.name!r} for this call, and it "
                            f"refuses the tile shapes: {reason}."
                        )
                return impl
        raise AssertionError("unreachable: the xla implementation always runs")
    if not isinstance(implementation, str):
        raise ValueError(
            f"Unknown `implementation` {implementation!r}; expected None or one of {NAMES}."
        )
    impl = get(implementation)
    reason = impl.refusal(query, key, value, params)
    if reason is not None:
        usable = [i.name for i in IMPLEMENTATIONS if i.refusal(query, key, value, untiled) is None]
        tiles = " without `q_tile_shape`/`kv_tile_shape`" if params.has_tiles else ""
        raise NotImplementedError(
            f"implementation={implementation!r} cannot run this call: {reason}. "
            f"Usable here{tiles}: {usable} (or implementation=None to pick the best)."
        )
    return impl


def for_fp8(
    implementation: str | None, query, key, value, params: GnaParams
) -> tuple[str, GnaParams]:
    """The implementation that runs a call with float8 inputs, chosen (or refused) on those
    inputs as any call, and the params it takes; the call then runs it on the dequantised
    float32 values (`jax_gna._fp8.dequantize`), which every implementation would take."""
    impl = select(implementation, query, key, value, params)
    return impl.name, params if impl.has_tiles else params.without_tiles()


def attend_fp8(
    query, key, value, params: GnaParams, extra_keys, extra_values, scales, out_dtype
) -> tuple[jax.Array, jax.Array]:
    """``(out, lse)`` of a float8_e4m3fn call that ``"cuda"`` runs (`for_fp8` chose it): the FP8
    forward kernel on the float8 arrays and their descales (`scales`, from
    `jax_gna._fp8.descales`), the extra tokens (dequantised) merged in float32 by their
    log-sum-exps; ``out`` in `out_dtype`. Differentiating through it raises."""
    query, key, value, extra_keys, extra_values, scales = _fp8.forward_only(
        (query, key, value, extra_keys, extra_values, scales)
    )
    if math.prod(query.shape[:-1]) == 0:
        out = jnp.zeros((*query.shape[:-1], value.shape[-1]), out_dtype)
        return out, jnp.zeros(query.shape[:-1], jnp.float32)
    descale = _fp8.descale_rows(scales, query.shape[-2], key.shape[-2])
    params = _ffi_call.cuda_tiles(query, key, value, params)
    out, lse = _ffi_call.forward_fp8(params, query, key, value, descale)
    if extra_keys is not None:
        q, _, _, extra_k, extra_v = _fp8.dequantize(
            scales, query, key, value, extra_keys, extra_values
        )
        n_batch = query.ndim - params.rank - 2
        out, lse = _additional_kv.attend_and_merge(
            q, out.astype(jnp.float32), lse, extra_k, extra_v, params.scale, n_batch
        )
    return out.astype(out_dtype), lse


def run_inputs(impl: Implementation, out_dtype, query, key, value, extra_keys, extra_values):
    """``(query, key, value, extra_keys, extra_values)`` as `impl` takes them for an ``out`` in
    `out_dtype`: an implementation that computes in float32 takes 16-bit inputs as float32
    where its result would be rounded twice (merged with extra tokens, or cast to another
    `out_dtype`), so that it is rounded once; the others take them as they are (the kernels
    write their own dtype and the caller casts)."""
    arrays = (query, key, value, extra_keys, extra_values)
    rounded_again = extra_keys is not None or out_dtype != query.dtype
    if impl.computes_in_float32 and rounded_again and query.dtype in (jnp.bfloat16, jnp.float16):
        return tuple(None if x is None else x.astype(jnp.float32) for x in arrays)
    return arrays


def attend(
    query,
    key,
    value,
    params: GnaParams,
    extra_keys,
    extra_values,
    implementation: str | None,
    out_dtype=None,
) -> tuple[jax.Array, jax.Array]:
    """``(out, lse)`` of validated arrays on one device (or per batch/head shard), extra tokens
    (or None) merged in, by `implementation` (None: the best usable); ``out`` in `out_dtype`
    (None: the query's)."""
    out_dtype = query.dtype if out_dtype is None else out_dtype
    impl = select(implementation, query, key, value, params)
    if math.prod(query.shape[:-1]) == 0:
        # No (query, head) row (a batch or head count of 0): nothing to compute, and no kernel
        # to launch over an empty grid. The gradients are zeros of the inputs' shapes.
        out = jnp.zeros((*query.shape[:-1], value.shape[-1]), out_dtype)
        return out, jnp.zeros(query.shape[:-1], jnp.float32)
    if not impl.has_tiles:
        params = params.without_tiles()  # `select` allows them only for None: ignored here
    inputs = run_inputs(impl, out_dtype, query, key, value, extra_keys, extra_values)
    out, lse = impl.run(*inputs[:3], params, *inputs[3:])
    return out.astype(out_dtype), lse
