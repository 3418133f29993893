"""The CUDA kernels' tile configurations: one table, the pick per call, and user overrides.

- The extension's own table (`cuda/sm90/fwd_config.h`) equals `jax_gna._tiles.SM90_FORWARD`.
- The C++ launcher refuses tile shapes it has no kernel for and names the compiled ones.
- Without tile shapes, ``implementation="cuda"`` runs the compiled configuration with the best
  bound: checked against tile counts brute-forced from the per-element mask of `tests/oracle.py`
  (never from `jax_gna.sim`), and read back from the lowered custom call's attributes. The
  gradient's backward call picks among the backward's configurations the same way, whatever
  tiles its forward ran.

Lowering needs no GPU: `pretend_hopper` makes the call look like it runs on a compute capability
9.0 device, so the whole ``"cuda"`` path down to `jax.ffi.ffi_call` is traced on the CPU (nothing
is compiled or run). Needs a build with CUDA kernels (nvcc; CI builds the smoke set: bf16, head
dim 128), else those tests skip.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_gna
from jax_gna import _extension, _ffi_call, _implementations, _tiles, sim
from jax_gna._params import make_params
from tests import hlo_attrs, oracle

ext = _extension.ext
needs_cuda_build = pytest.mark.skipif(
    ext is None or not ext.cuda_targets(), reason="this build has no CUDA kernels"
)
D = 128  # in every kernel set (smoke: bf16, head dim 128)


def _qkv(shape, heads=2, dim=D):
    x = jnp.zeros((1, *shape, heads, dim), jnp.bfloat16)
    return x, x, x


@pytest.fixture
def pretend_hopper(monkeypatch):
    monkeypatch.setattr(_implementations, "array_platform", lambda query: "gpu")
    monkeypatch.setattr(_ffi_call, "_compute_capability", lambda query: (9, 0))


def _lowered_tiles(q, k, v, kernel_size, **kwargs) -> tuple[tuple[int, ...], tuple[int, ...]]:
    f = jax.jit(lambda q, k, v: jax_gna.gna(q, k, v, kernel_size, implementation="cuda", **kwargs))
    return hlo_attrs.tiles(f.lower(q, k, v).as_text(), "jax_gna_fwd")


# -- one table ----------------------------------------------------------------------------------


@needs_cuda_build
def test_extension_reports_the_python_table():
    reported = _extension.build_info()["cuda_forward_tiles"]
    as_configs = {
        rank: {dim: tuple(_tiles.TileConfig(q, kv) for q, kv in cfgs) for dim, cfgs in d.items()}
        for rank, d in reported.items()
    }
    assert as_configs == _tiles.SM90_FORWARD


def test_table_follows_the_kernel_rules():
    for rank, by_dim in _tiles.SM90_FORWARD.items():
        for dim, configs in by_dim.items():
            assert len(set(configs)) == len(configs) >= 1
            for cfg in configs:
                assert cfg.rank == rank
                assert math.prod(cfg.q) == 128, cfg  # two consumer warpgroups of 64 rows
                kv = math.prod(cfg.kv)
                assert kv % 16 == 0 and kv <= (64 if dim == 256 else 256), cfg
                assert cfg.kv[-1] % 8 == 0, cfg  # S column blocks never straddle a KV row


# -- the launcher's verdict ---------------------------------------------------------------------


def _can(shape, kernel_size, dilation=None, q_tile=(), kv_tile=()):
    rank = len(shape)
    s = [1, *shape, 2, D]
    return ext.cuda_fwd_can_implement(
        s, s, s, "bfloat16", list(kernel_size), [1] * rank, list(dilation or [1] * rank),
        [0] * rank, q_tile=list(q_tile), kv_tile=list(kv_tile),
    )  # fmt: skip


@needs_cuda_build
def test_launcher_runs_every_compiled_configuration_and_refuses_others():
    for rank, shape, window in [(2, (32, 48), (8, 16)), (3, (8, 16, 16), (4, 4, 8))]:
        for cfg in _tiles.SM90_FORWARD[rank][D]:
            assert _can(shape, window, q_tile=cfg.q, kv_tile=cfg.kv) is None, cfg
        default, other = _tiles.SM90_FORWARD[rank][D]
        for q, kv in [(default.q, other.kv), ((4,) * rank, (4,) * rank)]:
            why = _can(shape, window, q_tile=q, kv_tile=kv)
            assert why is not None and "not a compiled sm90 configuration" in why, (q, kv)
            assert f"{default} (the default), {other}" in why
    with pytest.raises(ValueError, match="one entry per spatial axis"):
        _can((32, 48), (8, 16), q_tile=(16, 8, 1), kv_tile=(16, 8, 1))
    with pytest.raises(ValueError, match="positive"):
        _can((32, 48), (8, 16), q_tile=(16, 0), kv_tile=(16, 8))


@needs_cuda_build
@pytest.mark.parametrize(
    ("shape", "window", "dilation"),
    [
        ((40, 8), (2, 2), (20, 1)),  # 16 x 20 positions: past one TMA box
        ((4, 80, 8), (2, 2, 2), (1, 40, 1)),
        ((4, 140, 8), (2, 2, 2), (1, 70, 1)),
        ((2048,), (16,), (128,)),  # 1-D: 128-token tiles, any dilation
        ((300,), (37,), (3,)),
        ((300, 301), (13, 13), (16, 9)),
        ((19, 50, 80), (2, 5, 3), (9, 9, 26)),  # every axis past the element-stride limit
    ],
)
def test_every_dilation_runs_on_every_configuration(shape, window, dilation):
    for cfg in _tiles.SM90_FORWARD[len(shape)][D]:
        assert _can(shape, window, dilation, cfg.q, cfg.kv) is None, cfg
    q, k, v = _qkv(shape)
    params = make_params(q, k, v, window, dilation=dilation)
    picked = _ffi_call.cuda_tiles(q, k, v, params)
    best = sim.choose_tiles(sim.Problem(shape, window, (1,) * len(shape), dilation), D, "bfloat16")
    assert (picked.q_tile_shape, picked.kv_tile_shape) == (best.tiles.q, best.tiles.kv)


# -- the pick: best bound, then fewest partial tiles, then the table's order --------------------


def _brute_force_best(shape, window, stride, dilation, causal, table=None) -> _tiles.TileConfig:
    """The compiled configuration a kernel should run, by counting tiles on the element mask:
    fewest token pairs on the critical path (Q tiles x the worst Q tile's visited KV tiles x
    tile sizes: the best bound against dense attention over the N real tokens), then fewest
    partially visible (masked) tile pairs, then the table's order (`table`: the forward's by
    default)."""
    visible = oracle.visible(shape, window, stride, dilation, causal)
    ranked = []
    for i, cfg in enumerate((table or _tiles.SM90_FORWARD)[len(shape)][D]):
        visited, full = oracle.tile_pairs(
            visible,
            oracle.tile_ids(shape, dilation, cfg.q),
            oracle.tile_ids(shape, dilation, cfg.kv),
            math.prod(cfg.kv),
        )
        work = len(visited) * int(visited.max()) * math.prod(cfg.q) * math.prod(cfg.kv)
        ranked.append((work, int(visited.sum() - full.sum()), i, cfg))
    return min(ranked)[-1]


SELECTION = {  # name -> (shape, window, stride, dilation, causal)
    "2d-blocked-8x16": ((32, 48), (8, 16), (8, 16), (1, 1), (False, False)),
    "2d-blocked-16x8": ((48, 32), (16, 8), (16, 8), (1, 1), (False, False)),
    "2d-na-7x21": ((24, 48), (7, 21), (1, 1), (1, 1), (False, False)),
    "2d-tie-na-13x13": ((40, 40), (13, 13), (1, 1), (1, 1), (False, False)),
    "2d-dilated-causal": ((30, 44), (5, 9), (1, 2), (2, 2), (True, False)),
    "3d-blocked-4x4x8": ((8, 16, 16), (4, 4, 8), (4, 4, 8), (1, 1, 1), (False,) * 3),
    "3d-blocked-2x8x8": ((4, 16, 16), (2, 8, 8), (2, 8, 8), (1, 1, 1), (False,) * 3),
    "3d-na-5x5x5": ((8, 12, 16), (5, 5, 5), (1, 1, 1), (1, 1, 1), (False,) * 3),
}


@needs_cuda_build
@pytest.mark.usefixtures("pretend_hopper")
def test_cuda_path_runs_the_best_compiled_configuration():
    picked = {}
    for name, (shape, window, stride, dilation, causal) in SELECTION.items():
        best = _brute_force_best(shape, window, stride, dilation, causal)
        q, k, v = _qkv(shape)
        lowered = _lowered_tiles(q, k, v, window, stride=stride, dilation=dilation,
                                 is_causal=causal)  # fmt: skip
        assert lowered == (best.q, best.kv), name
        picked[name] = best
    # The problems exercise both configurations of each rank, so the pick is not a constant.
    for rank in (2, 3):
        chosen = {c for n, c in picked.items() if n.startswith(f"{rank}d")}
        assert chosen == set(_tiles.SM90_FORWARD[rank][D]), rank


@needs_cuda_build
@pytest.mark.usefixtures("pretend_hopper")
def test_requested_tiles_reach_the_custom_call():
    q, k, v = _qkv((32, 48))
    # The best pick here is (8, 16); asking for the default runs the default.
    assert _lowered_tiles(q, k, v, (8, 16), stride=(8, 16)) == ((8, 16), (8, 16))
    tiles = _lowered_tiles(q, k, v, (8, 16), stride=(8, 16), q_tile_shape=(16, 8),
                           kv_tile_shape=(16, 8))  # fmt: skip
    assert tiles == ((16, 8), (16, 8))
    # The forward's tiles do not reach the backward, which runs its own pick (jax.grad traces
    # both): here the (8, 16) KV tiles, against the forward's requested (16, 8).
    grad = jax.jit(
        jax.grad(
            lambda q: jax_gna.gna(q, k, v, (8, 16), stride=(8, 16), implementation="cuda",
                                  q_tile_shape=(16, 8), kv_tile_shape=(16, 8))
            .astype(jnp.float32).sum()
        )
    )  # fmt: skip
    text = grad.lower(q).as_text()
    assert hlo_attrs.int64_attr(text, "jax_gna_fwd", "q_tile") == (16, 8)
    assert hlo_attrs.tiles(text, "jax_gna_bwd") == ((4, 16), (8, 16))


BACKWARD_SELECTION = {  # ranks with two backward configurations: name -> as SELECTION
    "2d-blocked-8x16": SELECTION["2d-blocked-8x16"],
    "2d-blocked-16x8": SELECTION["2d-blocked-16x8"],
    "2d-na-7x21": SELECTION["2d-na-7x21"],
    "3d-blocked-4x4x8": SELECTION["3d-blocked-4x4x8"],
    "3d-blocked-2x8x8": SELECTION["3d-blocked-2x8x8"],
    "3d-na-5x5x5": SELECTION["3d-na-5x5x5"],
    # Cosmos-like: 12 rows (a multiple of 4, not of 8), windows stepping by 4 rows.
    "3d-rows-of-4": ((4, 12, 16), (4, 6, 8), (1, 2, 8), (1, 1, 1), (False,) * 3),
}


@needs_cuda_build
@pytest.mark.usefixtures("pretend_hopper")
def test_cuda_backward_runs_the_best_compiled_configuration():
    picked = {}
    for name, (shape, window, stride, dilation, causal) in BACKWARD_SELECTION.items():
        best = _brute_force_best(shape, window, stride, dilation, causal, _tiles.SM90_BACKWARD)
        q, k, v = _qkv(shape)
        # The forward runs its default tiles, whichever backward configuration is best.
        default = _tiles.SM90_FORWARD[len(shape)][D][0]
        attend = functools.partial(
            jax_gna.gna, kernel_size=window, stride=stride, dilation=dilation, is_causal=causal,
            implementation="cuda", q_tile_shape=default.q, kv_tile_shape=default.kv,
        )  # fmt: skip
        loss = lambda q, k=k, v=v, attend=attend: attend(q, k, v).astype(jnp.float32).sum()  # noqa: E731
        text = jax.jit(jax.grad(loss)).lower(q).as_text()
        assert hlo_attrs.tiles(text, "jax_gna_bwd") == (best.q, best.kv), name
        picked[name] = best
    for rank in (2, 3):
        chosen = {c for n, c in picked.items() if n.startswith(f"{rank}d")}
        assert chosen == set(_tiles.SM90_BACKWARD[rank][D]), rank


@needs_cuda_build
def test_a_gradient_traced_without_a_gpu_leaves_the_backward_tiles_unset(monkeypatch):
    """No GPU to pick for (e.g. tracing for jax.export on a CPU machine): the launcher of
    whichever GPU runs the call takes its default."""
    monkeypatch.setattr(_ffi_call, "_compute_capability", lambda query: None)
    shape, window, stride, _, _ = BACKWARD_SELECTION["3d-rows-of-4"]
    q, k, v = _qkv(shape)
    params = make_params(q, k, v, window, stride=stride)
    assert _ffi_call.cuda_backward_tiles(q, k, v, params) == ((), ())


@pytest.mark.skipif(
    ext is None or "100a" not in ext.built_cuda_archs(), reason="this build has no sm_100a kernels"
)
def test_a_blackwell_gradient_keeps_its_own_backward_tiles(monkeypatch):
    """The backward's pick comes from the sm90 table; on a compute capability 10.0 GPU the sm100
    launcher (one configuration per rank, of other shapes) refuses those, so the call leaves
    the tiles unset and that launcher runs its own."""
    monkeypatch.setattr(_implementations, "array_platform", lambda query: "gpu")
    monkeypatch.setattr(_ffi_call, "_compute_capability", lambda query: (10, 0))
    shape, window, stride, dilation, causal = BACKWARD_SELECTION["3d-rows-of-4"]
    q, k, v = _qkv(shape)
    params = make_params(q, k, v, window, stride=stride)
    assert _ffi_call.cuda_backward_reason(q, k, v, params) is None
    assert _ffi_call.cuda_backward_tiles(q, k, v, params) == ((), ())
    if "90a" in ext.built_cuda_archs():  # the same call on Hopper picks (4, 4, 8) KV tiles
        monkeypatch.setattr(_ffi_call, "_compute_capability", lambda query: (9, 0))
        assert _ffi_call.cuda_backward_tiles(q, k, v, params) == ((2, 4, 8), (4, 4, 8))


@needs_cuda_build
@pytest.mark.usefixtures("pretend_hopper")
def test_tiles_the_kernels_lack_raise_and_are_reported():
    q, k, v = _qkv((32, 48))
    kw = dict(q_tile_shape=8, kv_tile_shape=8)  # (8, 8): 64-token Q tiles, not compiled
    why = jax_gna.supported_implementations(q, k, v, (8, 16), **kw)
    assert re.search(r"q_tile_shape=\(8, 8\), kv_tile_shape=\(8, 8\): these tile shapes are "
                     r"not a compiled.*Q\(16,8\)/KV\(16,8\) \(the default\), Q\(8,16\)",
                     why["cuda"])  # fmt: skip
    assert all("'cuda' kernels" in why[i] for i in ("cpu", "xla", "reference"))
    usable = r"Usable here without `q_tile_shape`/`kv_tile_shape`: \['cuda'"
    with pytest.raises(NotImplementedError, match=f"cannot run this call: q_tile_shape=.*{usable}"):
        jax_gna.gna(q, k, v, (8, 16), implementation="cuda", **kw)
    with pytest.raises(NotImplementedError, match="None picked 'cuda'.*not a compiled"):
        jax_gna.gna(q, k, v, (8, 16), **kw)
    # Without the override the same call is fine.
    assert jax_gna.supported_implementations(q, k, v, (8, 16))["cuda"] is None


# -- without a GPU ------------------------------------------------------------------------------


def test_other_implementations_refuse_tiles_and_none_ignores_them_off_the_gpu():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 12, 10, 2, 16)), jnp.float32) for _ in "qkv")
    kw = dict(q_tile_shape=(16, 8), kv_tile_shape=(16, 8))
    for impl in ("xla", "reference") + (("cpu",) if ext is not None else ()):
        with pytest.raises(NotImplementedError, match=r"`q_tile_shape`/`kv_tile_shape`.*'cuda'"):
            jax_gna.gna(q, k, v, (3, 5), implementation=impl, **kw)
    # implementation=None on the CPU picks as without them, and the result is the same.
    want = jax_gna.gna(q, k, v, (3, 5))
    np.testing.assert_array_equal(jax_gna.gna(q, k, v, (3, 5), **kw), want)
    np.testing.assert_array_equal(jax.jit(lambda q: jax_gna.gna(q, k, v, (3, 5), **kw))(q), want)
