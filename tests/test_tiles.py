"""The CUDA forward's tile configurations: one table, and the launcher's verdict on a request.

- The extension's own table (`cuda/sm90/fwd_config.h`) equals `jax_gna._tiles.SM90_FORWARD`.
- The C++ launcher refuses tile shapes it has no kernel for and names the compiled ones.

Needs a build with CUDA kernels (nvcc; CI builds the smoke set: bf16, head dim 128), else those
tests skip.
"""

from __future__ import annotations

import math

import pytest

from jax_gna import _extension, _tiles

ext = _extension.ext
needs_cuda_build = pytest.mark.skipif(
    ext is None or not ext.cuda_targets(), reason="this build has no CUDA kernels"
)
D = 128  # in every kernel set (smoke: bf16, head dim 128)


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
