"""Context parallelism (`jax_gna.parallel`) on 8 fake CPU devices (tests/conftest.py).

Results and gradients of `gna_sharded` equal the single-device reference for 1-D/2-D/3-D
windows with strides, dilation, causal axes, GQA, extra tokens and uneven shards; the compiled
programs exchange halo-sized blocks (collective-permute) and never gather the sharded axis;
`jax_gna.gna` takes that route for spatially sharded inputs: eagerly, under jit on Explicit
meshes, and under jit on Auto meshes through the FFI op's partitioning rule."""

import importlib.util
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_gna
from jax_gna import _extension, parallel, reference

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")

TOL = dict(atol=2e-5, rtol=2e-5)

# name: (q shape, kv heads, window, devices, sharded spatial axis, extra tokens)
CASES = {
    "1d": ((1, 32, 4, 8), 4, dict(kernel_size=(5,)), 8, 0, 0),
    "1d-stride-dilation-uneven": (
        (2, 35, 2, 8),
        1,
        dict(kernel_size=(4,), stride=3, dilation=2),
        4,
        0,
        0,
    ),
    "1d-causal-stride": (
        (1, 24, 2, 8),
        2,
        dict(kernel_size=(6,), stride=2, is_causal=True),
        4,
        0,
        0,
    ),
    "1d-8-devices-uneven": ((1, 61, 2, 8), 2, dict(kernel_size=(7,), stride=2), 8, 0, 0),
    "2d-gqa-causal-dilated-axis1": (
        (2, 6, 33, 4, 8),
        2,
        dict(kernel_size=(3, 4), stride=(1, 2), dilation=(1, 3), is_causal=(False, True)),
        4,
        1,
        0,
    ),
    "2d-extra-tokens": ((1, 20, 5, 4, 8), 2, dict(kernel_size=(5, 3), stride=(2, 1)), 4, 0, 3),
    "3d-hunyuan-like": (
        (1, 30, 4, 5, 2, 8),
        2,
        dict(kernel_size=(18, 3, 3), stride=(16, 2, 1)),
        2,
        0,
        0,
    ),
    "3d-axis2-dilated-uneven": (
        (1, 3, 4, 22, 2, 8),
        1,
        dict(kernel_size=(2, 3, 4), stride=(1, 3, 2), dilation=(1, 1, 2)),
        4,
        2,
        2,
    ),
}


def _arrays(q_shape, kv_heads, extra, seed=0):
    rng = np.random.default_rng(seed)  # not jax.random: it compiles per shape (slow on CPU)
    kv_shape = (*q_shape[:-2], kv_heads, q_shape[-1])
    v_shape = (*q_shape[:-2], kv_heads, 6)
    shapes = [q_shape, kv_shape, v_shape]
    if extra:
        batch = q_shape[:1]
        shapes += [(*batch, extra, kv_heads, q_shape[-1]), (*batch, extra, kv_heads, 6)]
    arrays = [jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes]
    return arrays + [None] * (5 - len(arrays))


def _loss(fn):
    def loss(*args):
        out, lse = fn(*args)
        return jnp.sum(out * jnp.cos(out)) + jnp.sum(jnp.sin(lse))

    return loss


def _compare(fn, reference_fn, args):
    argnums = tuple(i for i, x in enumerate(args) if x is not None)
    got = jax.jit(fn)(*args), jax.jit(jax.grad(_loss(fn), argnums))(*args)
    want = jax.jit(reference_fn)(*args), jax.jit(jax.grad(_loss(reference_fn), argnums))(*args)
    chex.assert_trees_all_close(got, want, **TOL)
    return got


def _mesh(devices, mode=AxisType.Auto):
    return jax.make_mesh((devices,), ("x",), axis_types=(mode,))


def _sharded_and_single(mesh, window, axis, implementation, **kw):
    """`gna_sharded` over mesh axis "x" and the one-device reference, both of
    (q, k, v, extra keys, extra values) returning (out, lse)."""

    def sharded(q, k, v, ek, ev):
        return parallel.gna_sharded(
            q, k, v, **window, mesh=mesh, axis_name="x", spatial_axis=axis,
            additional_keys=ek, additional_values=ev, return_lse=True,
            implementation=implementation, **kw,
        )  # fmt: skip

    def single(q, k, v, ek, ev):
        return reference.gna(
            q, k, v, **window, additional_keys=ek, additional_values=ev, return_lse=True
        )

    return sharded, single


# Views on the FFI kernels need the extension; "xla" runs everywhere.
SHARD_IMPLEMENTATIONS = ["cpu", "xla"] if _extension.ext is not None else ["xla"]


@pytest.mark.parametrize("implementation", SHARD_IMPLEMENTATIONS)
@pytest.mark.parametrize("name", CASES)
def test_sharded_results_and_gradients_match_one_device(name, implementation):
    q_shape, kv_heads, window, devices, axis, extra = CASES[name]
    mesh = _mesh(devices)
    sharded, single = _sharded_and_single(mesh, window, axis, implementation)
    (out, lse), grads = _compare(sharded, single, _arrays(q_shape, kv_heads, extra))
    if q_shape[1 + axis] % devices == 0:  # uneven extents are padded, then sliced back
        assert out.sharding.spec[1 + axis] == "x"
    assert lse.shape == q_shape[:-1]


@pytest.mark.parametrize("name", [name for name in CASES if "uneven" in name])
def test_uneven_extents_on_explicit_meshes(name):
    """An Explicit mesh types every sharding, and JAX refuses to cut a split axis unevenly: an
    extent the devices do not divide comes back gathered along its axis."""
    q_shape, kv_heads, window, devices, axis, extra = CASES[name]
    mesh = _mesh(devices, AxisType.Explicit)
    sharded, single = _sharded_and_single(mesh, window, axis, "xla")
    (out, lse), _ = _compare(sharded, single, _arrays(q_shape, kv_heads, extra))
    assert out.shape[:-1] == lse.shape == q_shape[:-1]


def test_reference_implementation_per_shard():
    q_shape, kv_heads, window, devices, axis, extra = CASES["2d-gqa-causal-dilated-axis1"]
    mesh = _mesh(devices)
    q, k, v, _, _ = _arrays(q_shape, kv_heads, extra)

    def sharded(q, k, v):
        return parallel.gna_sharded(
            q, k, v, **window, mesh=mesh, axis_name="x", spatial_axis=axis,
            return_lse=True, implementation="reference",
        )  # fmt: skip

    _compare(sharded, lambda q, k, v: reference.gna(q, k, v, **window, return_lse=True), (q, k, v))


def test_halo_of_hunyuan_video_time_axis_over_two_devices():
    # Stride groups [0, 16) and [16, 30) see frames [0, 18) and [12, 30). Frame 15 belongs to
    # the first group, so the first device computes it (its shard is frames 0-14): each device
    # computes whole stride groups and needs 3 frames of keys from its neighbour, not 15.
    h = parallel.halo(30, 2, 18, stride=16)
    assert (h.shard, h.left, h.right, h.shifts, h.queries) == (15, 3, 3, (0, 1), 1)
    assert [h.computed(p) for p in range(2)] == [(0, 16), (16, 30)]


def test_boundaries_move_to_stride_groups_only_when_close():
    # Boundary 26 is 10 positions before the group starting at 36: more than an eighth of a
    # 26-position shard, so it stays (one device would compute 20 more rows than the other).
    h = parallel.halo(52, 2, 12, stride=12)
    assert h.shifts == () and h.computed(1) == (26, 52)
    assert parallel.halo(64, 2, 12, stride=12).shifts == (0, 4)  # 4 <= 32 // 8
    assert parallel.halo(30, 2, 18, stride=16, dilation=2).shifts == ()  # dilation: no shifts
    assert parallel.halo(32, 4, 5, stride=2).shifts == ()  # boundaries on group starts


def test_boundaries_move_only_where_fewer_rows_travel():
    from jax_gna import _window

    rng = np.random.default_rng(1)
    moved = 0
    for _ in range(400):
        k = int(rng.integers(2, 30))
        s, devices = int(rng.integers(2, k + 1)), int(rng.integers(2, 9))
        length, causal = int(rng.integers(k, 12 * k)), bool(rng.random() < 0.3)
        h = parallel.halo(length, devices, k, s, 1, causal)
        # The halo of plain shards, from the visibility mask.
        visible = _window.axis_mask(length, k, s, 1, causal)
        left = right = 0
        for p in range(devices):
            lo, hi = p * h.shard, min((p + 1) * h.shard, length)
            if lo < hi:
                keys = np.nonzero(visible[lo:hi].any(axis=0))[0]
                left, right = (
                    max(left, lo - keys.min()),
                    max(right, keys.max() + 1 - p * h.shard - h.shard),
                )
        if h.shifts:
            assert h.left + h.right + h.queries <= left + right
            moved += 1
        else:
            assert (h.left, h.right) == (left, right)
    assert moved > 20


def test_shifted_split_covers_every_query_once():
    for args in [(30, 2, 18, 16), (20, 4, 5, 2), (61, 8, 7, 3), (100, 3, 13, 5, 1, True)]:
        h = parallel.halo(*args)
        ranges = [h.computed(p) for p in range(h.devices)]
        assert ranges[0][0] == 0 and ranges[-1][1] == h.length
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), ranges


def test_each_call_reads_every_key_its_queries_see():
    """The FFI calls (`ShardPlan.calls`): each device's query rows are its computed queries, and
    its key slice covers their windows and starts at their dilation phase."""
    from jax_gna import _window
    from jax_gna._halo.plan import shard_plan
    from jax_gna._params import GnaParams

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        k, s, d = int(rng.integers(2, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 4))
        s = min(s, k)
        causal = bool(rng.random() < 0.3)
        devices = int(rng.integers(2, 6))
        length = int(rng.integers(k * d, 6 * k * d + 2))
        plan = shard_plan((length,), GnaParams((k,), (s,), (d,), (causal,), 1.0), 0, devices)
        if plan.halo.min_shard > plan.halo.shard:
            continue
        visible = _window.axis_mask(length, k, s, d, causal)
        for p, call in enumerate(plan.calls):
            lo, hi = plan.halo.computed(p)
            assert (call is None) == (lo >= hi)
            if call is None:
                continue
            queries, (ks, ke), view = call
            first, last = plan.key_origin(p) + ks, plan.key_origin(p) + ke
            assert queries == (lo - p * plan.halo.shard, hi - p * plan.halo.shard)
            assert view == ((length, lo, first),) and (lo - first) % d == 0
            assert 0 <= ks < ke <= plan.key_block_length
            keys = np.nonzero(visible[lo:hi].any(axis=0))[0]
            assert first <= keys.min() and keys.max() < last, (p, call, keys)
        checked += 1
    assert checked > 100


def test_causal_axis_needs_no_right_halo():
    h = parallel.halo(64, 8, 7, stride=3, dilation=2, is_causal=True)
    assert h.right == 0 and h.left > 0


def test_neighborhood_halo_is_the_window_reach():
    assert parallel.halo(64, 4, 7).left == parallel.halo(64, 4, 7).right == 3
    assert parallel.halo(64, 4, 7, dilation=3).left == 9


def test_shard_smaller_than_halo_names_the_minimum_shard_size():
    q, k, v, _, _ = _arrays((1, 16, 2, 8), 2, 0)
    with pytest.raises(ValueError, match="minimum shard size is 6"):
        parallel.gna_sharded(q, k, v, (5,), dilation=2, mesh=_mesh(4), axis_name="x")


def test_invalid_axis_and_implementation_are_refused():
    q, k, v, _, _ = _arrays((1, 16, 2, 8), 2, 0)
    with pytest.raises(ValueError, match="not an axis of the mesh"):
        parallel.gna_sharded(q, k, v, (3,), mesh=_mesh(4), axis_name="y")
    with pytest.raises(ValueError, match="spatial_axis"):
        parallel.gna_sharded(q, k, v, (3,), mesh=_mesh(4), axis_name="x", spatial_axis=1)
    with pytest.raises(ValueError, match="Unknown `implementation`"):
        parallel.gna_sharded(q, k, v, (3,), mesh=_mesh(4), axis_name="x", implementation="tpu")
    with pytest.raises(NotImplementedError, match="'cuda' cannot run the shards.*runs on GPU"):
        parallel.gna_sharded(q, k, v, (3,), mesh=_mesh(4), axis_name="x", implementation="cuda")


# strategy="heads": (q shape, kv heads, window, devices, sharded spatial axis, extra tokens);
# the heads on a device divide by the devices.
HEAD_CASES = {
    "3d-hunyuan-like": CASES["3d-hunyuan-like"],
    "1d-8-devices-uneven": ((1, 61, 8, 8), 8, dict(kernel_size=(7,), stride=2), 8, 0, 0),
    "2d-gqa-causal-dilated-uneven-extra-tokens": (
        (2, 11, 7, 8, 8),
        4,
        dict(kernel_size=(3, 4), stride=(2, 1), dilation=(2, 1), is_causal=(True, False)),
        2,
        0,
        3,
    ),
    "2d-axis1": ((1, 6, 12, 4, 8), 2, dict(kernel_size=(3, 5), stride=(1, 2)), 2, 1, 0),
}


@pytest.mark.parametrize("implementation", SHARD_IMPLEMENTATIONS)
@pytest.mark.parametrize("name", HEAD_CASES)
def test_heads_strategy_matches_one_device_and_exchanges_heads(name, implementation):
    """strategy="heads": all-to-all of heads, the whole axis per device; results and gradients
    against the reference, all-to-alls in the compiled programs and no all-gather."""
    q_shape, kv_heads, window, devices, axis, extra = HEAD_CASES[name]
    mesh = _mesh(devices)
    sharded, single = _sharded_and_single(mesh, window, axis, implementation, strategy="heads")
    args = _arrays(q_shape, kv_heads, extra, seed=3)
    _compare(sharded, single, args)
    argnums = tuple(i for i, x in enumerate(args) if x is not None)
    even = q_shape[1 + axis] % devices == 0  # (uneven: the padded results are sliced)
    for fn in (sharded, jax.grad(_loss(sharded), argnums)):
        hlo = jax.jit(fn).lower(*args).compile().as_text()
        assert "all-to-all" in hlo and ("all-gather" not in hlo or not even)


def test_heads_strategy_refuses_heads_that_do_not_divide():
    q, k, v, _, _ = _arrays((1, 16, 4, 8), 2, 0)
    with pytest.raises(ValueError, match=r"kv heads \(2\) on a device must both divide by 4"):
        parallel.gna_sharded(q, k, v, (3,), mesh=_mesh(4), axis_name="x", strategy="heads")
    with pytest.raises(ValueError, match="Unknown `strategy`"):
        parallel.gna_sharded(q, k, v, (3,), mesh=_mesh(4), axis_name="x", strategy="ring")


@pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))
@pytest.mark.parametrize("strategy", ["halo", "heads"])
@pytest.mark.parametrize("deterministic", [True, False])
def test_deterministic_reaches_the_backward_call_of_every_shard(deterministic, strategy):
    """`deterministic` as in `jax_gna.gna`: every backward custom call of the shards (one per
    device's view for the halo strategy, the whole axis for the heads one) carries it."""
    q, k, v, _, _ = _arrays((1, 32, 4, 8), 4, 0)
    mesh = _mesh(4)

    def loss(q, k, v):
        out = parallel.gna_sharded(
            q, k, v, (5,), stride=2, mesh=mesh, axis_name="x", implementation="cpu",
            deterministic=deterministic, strategy=strategy,
        )  # fmt: skip
        return jnp.sum(jnp.sin(out))

    text = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, v).as_text()
    calls = [line for line in text.splitlines() if "stablehlo.custom_call @jax_gna_bwd(" in line]
    assert len(calls) == (4 if strategy == "halo" else 1)
    assert all(f"deterministic = {int(deterministic)} : i64" in call for call in calls)


@pytest.mark.parametrize("strategy", ["halo", "heads"])
def test_tile_shapes_go_to_the_cuda_kernels_only(strategy):
    """`q_tile_shape`/`kv_tile_shape` as in `jax_gna.gna`: an explicit implementation without
    tiles refuses them, and None ignores them where the shards do not run "cuda"."""
    q, k, v, _, _ = _arrays((1, 32, 4, 8), 4, 0)
    mesh = _mesh(4)
    tiles = dict(q_tile_shape=(8,), kv_tile_shape=(8,))

    def run(**kw):
        return parallel.gna_sharded(
            q, k, v, (5,), stride=2, mesh=mesh, axis_name="x", strategy=strategy, **kw
        )

    for implementation in [*SHARD_IMPLEMENTATIONS, "reference"]:
        with pytest.raises(NotImplementedError, match=r"`q_tile_shape`/`kv_tile_shape`.*'cuda'"):
            run(implementation=implementation, **tiles)
    np.testing.assert_array_equal(run(**tiles), run())


def test_mask_and_bias_are_refused_as_by_gna():
    q, k, v, _, _ = _arrays((1, 16, 2, 8), 2, 0)
    for option in ("mask", "bias"):
        with pytest.raises(NotImplementedError, match=f"`{option}`"):
            parallel.gna_sharded(q, k, v, (3,), mesh=_mesh(4), axis_name="x", **{option: q})


def _view_calls(hlo: str, target: str = "jax_gna_fwd") -> list[str]:
    """The `target` custom calls of a compiled program that carry a view (a shard's FFI call)."""
    calls = [line for line in hlo.splitlines() if f'custom_call_target="{target}"' in line]
    return [c for c in calls if re.search(r"view_kv_offset = dense<[^>]+> : tensor<\d+xi64>", c)]


@pytest.mark.skipif(_extension.ext is None, reason=str(_extension.missing))
def test_default_implementation_runs_the_cpu_kernel_on_each_shards_view():
    q, k, v, _, _ = _arrays((1, 32, 2, 8), 2, 0)
    mesh = _mesh(4)
    h = parallel.halo(32, 4, 5, stride=2)

    def fn(q, k, v):
        return parallel.gna_sharded(q, k, v, (5,), stride=2, mesh=mesh, axis_name="x")

    forward = jax.jit(fn)
    backward = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), (0, 1, 2)))
    hlo_fwd = forward.lower(q, k, v).compile().as_text()
    hlo_bwd = backward.lower(q, k, v).compile().as_text()
    # One branch per device, each the kernel on that device's view of the whole axis.
    assert len(_view_calls(hlo_fwd)) == 4
    assert len(_view_calls(hlo_bwd, "jax_gna_bwd")) == 4
    for hlo in (hlo_fwd, hlo_bwd):
        assert "all-gather" not in hlo and "all-to-all" not in hlo
        assert {s[1] for s in _permutes(hlo)} <= {h.left, h.right, h.queries}
    chex.assert_trees_all_close(forward(q, k, v), reference.gna(q, k, v, (5,), stride=2), **TOL)


def _permutes(hlo: str) -> list[tuple[int, ...]]:
    """Shapes of the compiled program's collective-permutes."""
    shapes = re.findall(r"= \w+\[([\d,]*)\]\{[^}]*\} collective-permute\(", hlo)
    return [tuple(int(x) for x in s.split(",")) for s in shapes]


@pytest.mark.parametrize("mode", [AxisType.Explicit, AxisType.Auto], ids=lambda m: m.name)
def test_jit_of_spatially_sharded_inputs_exchanges_halos_not_the_axis(mode):
    """`jax_gna.gna` under jit: Explicit meshes route by the input's type; on Auto meshes
    types carry no sharding under jit, so `gna_sharded` is called directly here (`gna` there
    goes through the FFI op's partitioning rule: the Auto-mesh tests below)."""
    window = dict(kernel_size=(5, 3), stride=(2, 1))
    q, k, v, _, _ = _arrays((2, 32, 5, 4, 8), 2, 0)
    h = parallel.halo(32, 4, 5, stride=2)
    mesh = _mesh(4, mode)
    if mode == AxisType.Explicit:
        fn = lambda q, k, v: jax_gna.gna(q, k, v, **window, return_lse=True)  # noqa: E731
    else:

        def fn(q, k, v):
            return parallel.gna_sharded(q, k, v, **window, axis_name="x", return_lse=True)

    with jax.set_mesh(mesh):
        args = [jax.device_put(x, NamedSharding(mesh, P(None, "x"))) for x in (q, k, v)]
        forward = jax.jit(fn)
        backward = jax.jit(jax.grad(_loss(fn), (0, 1, 2)))
        got = forward(*args), backward(*args)
        hlo_fwd = forward.lower(*args).compile().as_text()
        hlo_bwd = backward.lower(*args).compile().as_text()
    single = lambda q, k, v: reference.gna(q, k, v, **window, return_lse=True)  # noqa: E731
    want = single(q, k, v), jax.grad(_loss(single), (0, 1, 2))(q, k, v)
    chex.assert_trees_all_close(got, want, **TOL)
    assert got[0][0].sharding.spec[1] == "x"
    for hlo in (hlo_fwd, hlo_bwd):
        assert "all-gather" not in hlo and "all-to-all" not in hlo
        shapes = _permutes(hlo)
        assert shapes, "no collective-permute in the compiled program"
        # [B, halo, 5, heads, dim]: only halo rows of the sharded axis move.
        assert {s[1] for s in shapes} <= {h.left, h.right, h.queries}, shapes
        assert all(s[0] == 2 and s[2] == 5 for s in shapes), shapes
    assert h.left < 32 // 4 and h.right < 32 // 4  # strictly less than a shard


@pytest.mark.parametrize("implementation", [None, "xla"])
def test_eager_call_on_auto_mesh_routes_by_the_arrays_sharding(monkeypatch, implementation):
    calls = []
    sharded = parallel.sharded
    monkeypatch.setattr(parallel, "sharded", lambda *a, **kw: calls.append(kw) or sharded(*a, **kw))
    q, k, v, _, _ = _arrays((1, 24, 3, 2, 8), 2, 0)
    mesh = _mesh(4)
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P(None, "x")))  # noqa: E731
    out = jax_gna.gna(put(q), put(k), put(v), (5, 3), implementation=implementation)
    chex.assert_trees_all_close(out, reference.gna(q, k, v, (5, 3)), **TOL)
    assert len(calls) == 1 and calls[0]["axis_name"] == "x" and calls[0]["spatial_axis"] == 0
    assert calls[0]["implementation"] == implementation  # the shards run what was asked for


def test_gna_gathers_when_shards_are_smaller_than_the_halo():
    q, k, v, _, _ = _arrays((1, 16, 2, 8), 2, 0)
    mesh = _mesh(8, AxisType.Explicit)
    with jax.set_mesh(mesh):
        qs, ks, vs = (jax.device_put(x, NamedSharding(mesh, P(None, "x"))) for x in (q, k, v))
        out = jax.jit(lambda q, k, v: jax_gna.gna(q, k, v, (9,)))(qs, ks, vs)
    chex.assert_trees_all_close(out, reference.gna(q, k, v, (9,)), **TOL)


def test_benchmark_small_mode_runs_on_fake_devices(capsys):
    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "context_parallel.py"
    spec = importlib.util.spec_from_file_location("context_parallel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--small", "--iters", "1"])
    assert result["max_abs_error"] < 1e-4
    assert result["speedup"] is None and 0 <= result["halo_share"]  # fake devices: no speedup
    assert "no speedup to read" in capsys.readouterr().out
    assert result["halo"]["left"] > 0
    result = module.main(["--small", "--iters", "1", "--backward", "--per-shard"])
    assert result["max_abs_error"] < 1e-4
    if result["shard_implementation"] == "cpu":  # the FFI kernel: each shard's call timed
        assert len(result["per_shard"]) == 2
        assert all(t["forward"] > 0 and t["backward"] > 0 for t in result["per_shard"])


# ---------------------------------------------------------------------------------------------
# `jax_gna.gna` under jit on an Auto mesh: traced values carry no sharding, so the FFI op's
# custom_partitioning rule sees the operand shardings and takes the halo path itself.

# name: (q shape, kv heads, window, devices); axis 1 (the first spatial axis) is sharded.
AUTO_JIT_CASES = {
    "1d-stride-dilation-2dev": ((2, 32, 2, 8), 1, dict(kernel_size=(4,), stride=3, dilation=2), 2),
    "1d-causal-4dev": ((1, 32, 2, 8), 2, dict(kernel_size=(6,), stride=2, is_causal=True), 4),
    "2d-gqa-causal-dilated-4dev": (
        (2, 32, 6, 4, 8),
        2,
        dict(kernel_size=(4, 3), stride=(2, 1), dilation=(2, 1), is_causal=(True, False)),
        4,
    ),
    "3d-gqa-2dev": ((1, 12, 4, 5, 4, 8), 2, dict(kernel_size=(5, 3, 3), stride=(3, 2, 1)), 2),
    # The boundary moves to the stride group's start (frame 16): query rows travel too.
    "2d-shifted-boundary-2dev": ((1, 30, 3, 2, 8), 1, dict(kernel_size=(18, 3), stride=(16, 1)), 2),
}

needs_ffi = pytest.mark.skipif(
    jax_gna.supported_implementations(*_arrays((1, 8, 1, 8), 1, 0)[:3], (3,))["cpu"] is not None,
    reason="the CPU FFI kernel (implementation=None's pick under jit on CPU) is not built",
)


def _auto_jit(fn, mesh, n=3):
    return jax.jit(fn, in_shardings=(NamedSharding(mesh, P(None, "x")),) * n)


@needs_ffi
@pytest.mark.parametrize("name", AUTO_JIT_CASES)
def test_jit_on_auto_mesh_exchanges_halos_through_the_partitioning_rule(name):
    q_shape, kv_heads, window, devices = AUTO_JIT_CASES[name]
    q, k, v, _, _ = _arrays(q_shape, kv_heads, 0)
    mesh = _mesh(devices)
    fn = lambda q, k, v: jax_gna.gna(q, k, v, **window, return_lse=True)  # noqa: E731
    single = lambda q, k, v: reference.gna(q, k, v, **window, return_lse=True)  # noqa: E731
    forward = _auto_jit(fn, mesh)
    got = forward(q, k, v), _auto_jit(jax.grad(_loss(fn), (0, 1, 2)), mesh)(q, k, v)
    want = jax.jit(single)(q, k, v), jax.jit(jax.grad(_loss(single), (0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close(got, want, **TOL)
    (out, lse), grads = got
    assert all(x.sharding.spec[1] == "x" for x in (out, lse, *grads))
    hlo = forward.lower(q, k, v).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    h = parallel.halo(q_shape[1], devices, **{n: w[0] for n, w in _per_axis(window).items()})
    shapes = _permutes(hlo)
    assert shapes and {s[1] for s in shapes} <= {h.left, h.right, h.queries}, shapes
    # The shard-local halo lowering calls the kernel on each device's view.
    assert len(_view_calls(hlo)) == devices


def _per_axis(window: dict) -> dict:
    return {n: w if isinstance(w, tuple) else (w,) for n, w in window.items()}


@needs_ffi
def test_jit_on_auto_mesh_backward_exchanges_halo_gradients_not_the_axis():
    q_shape, kv_heads, window, devices = AUTO_JIT_CASES["2d-gqa-causal-dilated-4dev"]
    q, k, v, _, _ = _arrays(q_shape, kv_heads, 0)
    fn = lambda q, k, v: jax_gna.gna(q, k, v, **window, return_lse=True)  # noqa: E731
    hlo = _auto_jit(jax.grad(_loss(fn), (0, 1, 2)), _mesh(devices)).lower(q, k, v)
    hlo = hlo.compile().as_text()
    assert "all-gather" not in hlo and "collective-permute" in hlo


@needs_ffi
def test_jit_on_auto_mesh_gathers_when_shards_are_smaller_than_the_halo():
    q, k, v, _, _ = _arrays((1, 16, 2, 8), 2, 0)  # 4 shards of 4 < the minimum shard of 6
    fn = lambda q, k, v: jax_gna.gna(q, k, v, (5,), dilation=2, return_lse=True)  # noqa: E731
    forward = _auto_jit(fn, _mesh(4))
    got = forward(q, k, v), _auto_jit(jax.grad(_loss(fn), (0, 1, 2)), _mesh(4))(q, k, v)
    single = lambda q, k, v: reference.gna(q, k, v, (5,), dilation=2, return_lse=True)  # noqa: E731
    chex.assert_trees_all_close(
        got, (single(q, k, v), jax.grad(_loss(single), (0, 1, 2))(q, k, v)), **TOL
    )
    hlo = forward.lower(q, k, v).compile().as_text()
    assert "all-gather" in hlo and "jax_gna_fwd" in hlo


@needs_ffi
def test_jit_on_auto_mesh_keeps_batch_sharding_next_to_the_halo_exchange():
    q_shape, kv_heads, window, _ = AUTO_JIT_CASES["2d-gqa-causal-dilated-4dev"]
    q, k, v, _, _ = _arrays(q_shape, kv_heads, 0)
    mesh = jax.make_mesh((2, 2), ("b", "x"), axis_types=(AxisType.Auto,) * 2)
    fn = lambda q, k, v: jax_gna.gna(q, k, v, **window, return_lse=True)  # noqa: E731
    forward = jax.jit(fn, in_shardings=(NamedSharding(mesh, P("b", "x")),) * 3)
    out, lse = forward(q, k, v)
    chex.assert_trees_all_close(
        (out, lse), reference.gna(q, k, v, **window, return_lse=True), **TOL
    )
    assert tuple(out.sharding.spec)[:2] == ("b", "x")
    hlo = forward.lower(q, k, v).compile().as_text()
    assert "all-gather" not in hlo and "collective-permute" in hlo
    assert all(s[0] == 1 for s in _permutes(hlo))  # a batch shard's halo only


@needs_ffi
@pytest.mark.parametrize("name", ["2d-gqa-causal-dilated-4dev", "2d-shifted-boundary-2dev"])
def test_xla_backward_stand_in_exchanges_halo_gradients_on_auto_mesh(name):
    """The backward GPUs use while the build has no CUDA backward kernels (on CPU the FFI
    backward is chosen, so it is called directly): same partitioning rule, same halo path."""
    from jax_gna import _ffi_op
    from jax_gna._params import make_params

    q_shape, kv_heads, window, devices = AUTO_JIT_CASES[name]
    q, k, v, _, _ = _arrays(q_shape, kv_heads, 0)
    params = make_params(q, k, v, **window)
    fn = lambda q, k, v: jax_gna.gna(q, k, v, **window, return_lse=True)  # noqa: E731

    def grads(q, k, v):
        out, lse = fn(q, k, v)
        dout, dlse = jax.grad(lambda o, s: _loss(lambda *_: (o, s))(q, k, v), (0, 1))(out, lse)
        return _ffi_op._xla_backward(params, dout, q, k, v, out, lse, dlse)

    backward = _auto_jit(grads, _mesh(devices))
    single = lambda q, k, v: reference.gna(q, k, v, **window, return_lse=True)  # noqa: E731
    want = jax.grad(_loss(single), (0, 1, 2))(q, k, v)
    chex.assert_trees_all_close(backward(q, k, v), want, **TOL)
    hlo = backward.lower(q, k, v).compile().as_text()
    assert "all-gather" not in hlo and "collective-permute" in hlo


@pytest.mark.parametrize("spec", [P("b", "x"), P(None, "x", None, "b")], ids=["batch", "heads"])
def test_heads_strategy_keeps_batch_or_head_sharding_on_explicit_meshes(spec):
    """strategy="heads" on a 2 x 2 Explicit mesh: time over "x", and batch or heads already
    over "b" (the all-to-all then splits each device's share of the heads further)."""
    mesh = jax.make_mesh((2, 2), ("b", "x"), axis_types=(AxisType.Explicit,) * 2)
    q, k, v, _, _ = _arrays((2, 8, 6, 8, 8), 8, 0)
    window = dict(kernel_size=(5, 3), stride=(2, 1), return_lse=True)

    def sharded(q, k, v):
        return parallel.gna_sharded(q, k, v, **window, axis_name="x", strategy="heads")

    def single(q, k, v):
        return reference.gna(q, k, v, **window)

    want = jax.jit(single)(q, k, v), jax.jit(jax.grad(_loss(single), (0, 1, 2)))(q, k, v)
    with jax.set_mesh(mesh):
        q, k, v = (jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v))
        got = jax.jit(sharded)(q, k, v), jax.jit(jax.grad(_loss(sharded), (0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close(got, want, **TOL)
    assert tuple(got[0][0].sharding.spec)[: len(spec)] == tuple(spec)
