"""The sm100 forward's barrier protocol, run on the CPU (`tests/sm100_fwd_protocol.py`).

The model runs one CTA's roles (load thread, MMA warp, four softmax warps) and the TMA unit and
tensor core over the kernel's mbarriers, for the KV-tile counts the kernel really visits (every
work item's KV box of a set of problems: `cuda/sm100/tests/fwd_work_cases.cc`, as in
`tests/test_sm100_host.py`: one tile, two, odd counts, long boxes) and every stage count of the
tile table (d128: 2, d64: 3, d32: 6), under random, round-robin and producer-first /
consumer-first schedules. It expects no deadlock, no premature wait or buffer race, and every
barrier, ring stage and buffer released at the end. The forward has no persistent grid: a CTA
runs one work item, so one item's loop is the whole protocol. Each mutation of one arrival or
one parity must be caught.
"""

from __future__ import annotations

import pytest

from tests import sm100_fwd_protocol as protocol
from tests import test_sm100_host as host

# Problems whose work items visit 1, 2, odd and many KV tiles: 1-D short and long windows,
# causal, strided, dilated, 2-D and 3-D, both tile configurations.
PROBLEMS = [
    dict(rank=1, batch=1, heads=1, kv_heads=1, config=0, extent=(100,), kernel_size=(3,),
         stride=(1,), dilation=(1,), causal=(False,)),
    dict(rank=1, batch=1, heads=1, kv_heads=1, config=0, extent=(1000,), kernel_size=(301,),
         stride=(1,), dilation=(1,), causal=(False,)),
    dict(rank=1, batch=2, heads=2, kv_heads=1, config=0, extent=(777,), kernel_size=(200,),
         stride=(3,), dilation=(2,), causal=(True,)),
    dict(rank=2, batch=1, heads=1, kv_heads=1, config=1, extent=(45, 37), kernel_size=(13, 9),
         stride=(1, 2), dilation=(1, 1), causal=(False, True)),
    dict(rank=3, batch=1, heads=1, kv_heads=1, config=0, extent=(9, 30, 21),
         kernel_size=(5, 11, 7), stride=(1, 1, 1), dilation=(1, 2, 1),
         causal=(True, False, False)),
]  # fmt: skip


@pytest.fixture(scope="module")
def configurations(tmp_path_factory) -> list[tuple[int, int]]:
    """(KV tiles of a work item, stages) over the problems' valid items and the table's stages."""
    program = host._build(tmp_path_factory, "fwd_work_cases")
    table, cases = host._run(program, PROBLEMS)
    counts = set()
    for case in cases:
        for item in case["items"]:
            if item["valid"]:
                sizes = [end - begin for begin, end in item["box"]]
                counts.add(sizes[0] * sizes[1] * sizes[2])
    stages = {row[-1] for row in table}
    assert {1, 2, 3} <= counts and max(counts) >= 9, sorted(counts)
    assert min(counts) >= 1, "a valid item visits at least its own KV tile"
    assert stages == {2, 3, 6}, stages
    return sorted((n, s) for n in counts for s in stages)


POLICIES = ["round robin", "producers first", "consumers first"]
RANDOM_SEEDS = 12


def _every_schedule(n: int, stages: int, mutation: str = "none"):
    """Every policy, and RANDOM_SEEDS random schedules, of one configuration."""
    for policy in POLICIES:
        yield policy, lambda policy=policy: protocol.run(n, stages, policy, 0, mutation)
    for seed in range(RANDOM_SEEDS):
        yield f"random {seed}", lambda seed=seed: protocol.run(n, stages, "random", seed, mutation)


def test_protocol_completes_and_releases_every_stage(configurations):
    for n, stages in configurations:
        for name, run in _every_schedule(n, stages):
            try:
                run()
            except protocol.ProtocolError as e:
                pytest.fail(f"n={n} stages={stages} schedule {name}: {e}")


# What each mutation must produce somewhere (a hang where an arrival is lost; a premature wait,
# i.e. a race, or a hang where a parity is flipped; an unreleased stage or a hang where a
# release is never committed).
EXPECTED = {
    "softmax warp 3 skips one p_full arrive": {"deadlock"},
    "mma never commits k_empty": {"deadlock", "unreleased"},
    "mma waits s_empty with the flipped parity": {"deadlock", "race"},
    "softmax waits o_done with the flipped parity": {"deadlock", "race"},
    "load waits v_empty with the flipped parity": {"deadlock", "race"},
}


@pytest.mark.parametrize("mutation", [m for m in protocol.MUTATIONS if m != "none"])
def test_a_mutated_protocol_is_caught(configurations, mutation):
    caught = set()
    for n, stages in configurations:
        for _, run in _every_schedule(n, stages, mutation):
            try:
                run()
            except protocol.ProtocolError as e:
                caught.add(e.kind)
    assert caught, f"{mutation}: every schedule of every configuration completed"
    assert caught <= EXPECTED[mutation], caught
    if mutation == "softmax warp 3 skips one p_full arrive":
        assert caught == {"deadlock"}


def test_the_model_reports_a_hang_with_the_blocked_waits():
    with pytest.raises(protocol.ProtocolError, match="mma on p_full parity 0") as e:
        protocol.run(3, 2, "round robin", mutation="softmax warp 3 skips one p_full arrive")
    assert e.value.kind == "deadlock"
