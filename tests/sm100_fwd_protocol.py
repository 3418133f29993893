"""A CPU model of the barrier protocol of `cuda/sm100/kernel/fwd_kernel_ws.cuh`.

The sm100 forward kernel has never run (no Blackwell GPU); a phase or arrival count that is
off hangs it, or lets a role read a buffer before it is written. This model runs the kernel's
roles as generators (the load thread, the MMA warp and the four softmax warps, which also
rescale O: the kernel has no separate correction role) over mbarriers with the kernel's arrival
counts and phase parities, with the two asynchronous agents the roles drive: the TMA unit
(loads complete in any order and complete their barrier's transaction bytes) and the tensor
core (UMMAs and `tcgen05.commit` arrivals, in issue order). A scheduler steps one runnable
actor at a time, in an order given by a policy (random, round-robin, or a fixed
priority), and reports:

- ``deadlock``: no actor can step and not every role has finished (a wait on a phase that is
  never signalled);
- ``race``: a wait passed before the phase the kernel means had completed (a parity that
  aliases an earlier phase), a buffer read while it holds another tile than the kernel means,
  or written while an issued UMMA still has to read it;
- ``unreleased``: at the end, a barrier with a partial phase (arrivals or transaction bytes
  missing) or a ring stage, S buffer or P tile whose phases do not match its loads/writes
  (every stage is released), or an UMMA still in flight when the roles return (the kernel then
  frees tensor memory).

Every modelled wait names the kernel's barrier and carries the kernel's parity expression next
to the phase index the kernel means by it (the specification); mutations (`MUTATIONS`) change
one arrival or one parity to show that the checks catch the resulting hang or race.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Callable, Generator

SOFTMAX_WARPS = 4  # warps 0-3: 128 threads, 32 arrivals per warp
SOFTMAX_THREADS = 32 * SOFTMAX_WARPS

# One arrival or parity changed: each must be caught (tests/test_sm100_fwd_protocol.py).
MUTATIONS = (
    "none",
    "softmax warp 3 skips one p_full arrive",  # drop one arrive (31 of warp 3's 32)
    "mma never commits k_empty",  # the K ring never frees a stage
    "mma waits s_empty with the flipped parity",  # flip one parity
    "softmax waits o_done with the flipped parity",
    "load waits v_empty with the flipped parity",
)


class ProtocolError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclasses.dataclass
class MBarrier:
    """An mbarrier: `count` arrivals (and every expected transaction byte) complete a phase.
    `completed` counts completed phases; the current phase has parity completed & 1."""

    name: str
    count: int
    pending: int = 0
    tx: int = 0
    completed: int = 0

    def __post_init__(self):
        self.pending = self.count

    def arrive(self, n: int = 1, expect_tx: int = 0):
        self.tx += expect_tx
        self.pending -= n
        if self.pending < 0:
            raise ProtocolError("race", f"{self.name}: more arrivals than its count in a phase")
        self._maybe_complete()

    def complete_tx(self, n: int):
        self.tx -= n
        self._maybe_complete()

    def _maybe_complete(self):
        if self.pending == 0 and self.tx == 0:
            self.completed += 1
            self.pending = self.count

    def passes(self, parity: int) -> bool:
        # mbarrier.try_wait.parity: done once the current phase's parity differs from `parity`.
        return (self.completed & 1) != parity


@dataclasses.dataclass
class Wait:
    barrier: MBarrier
    parity: int  # the kernel's expression
    phase: int  # the phase the kernel means: complete when completed > phase
    where: str


@dataclasses.dataclass
class Op:
    """A non-blocking action of a role: `run()` performs it (and may raise ProtocolError)."""

    run: Callable[[], None]


Step = Wait | Op


@dataclasses.dataclass
class Buffer:
    """A tile of shared or tensor memory: what it holds and how many issued UMMAs still read it."""

    name: str
    holds: object = None
    readers: int = 0

    def write(self, what, by: str):
        if self.readers:
            raise ProtocolError("race", f"{by} writes {self.name} while an issued UMMA reads it")
        self.holds = what

    def expect(self, what, by: str):
        if self.holds != what:
            raise ProtocolError("race", f"{by} reads {self.name}: holds {self.holds}, not {what}")


class ForwardModel:
    """The roles of one CTA (one work item) that visits `n` KV tiles with `stages` K/V stages."""

    def __init__(self, n: int, stages: int, mutation: str = "none"):
        assert mutation in MUTATIONS, mutation
        self.n, self.stages, self.mutation = n, stages, mutation
        B = MBarrier
        # SharedStorage's barriers and their init counts (FwdKernel::run).
        self.q_full = B("q_full", 1)
        self.k_full = [B(f"k_full[{s}]", 1) for s in range(stages)]
        self.v_full = [B(f"v_full[{s}]", 1) for s in range(stages)]
        self.k_empty = [B(f"k_empty[{s}]", 1) for s in range(stages)]
        self.v_empty = [B(f"v_empty[{s}]", 1) for s in range(stages)]
        self.s_full = [B(f"s_full[{b}]", 1) for b in range(2)]
        self.s_empty = [B(f"s_empty[{b}]", SOFTMAX_THREADS) for b in range(2)]
        self.p_full = B("p_full", SOFTMAX_THREADS)
        self.o_done = B("o_done", 1)
        # Shared memory (Q, K/V stages, P rows per softmax warp) and tensor memory (S buffers
        # with the warps that read them, O rows per softmax warp).
        self.q = Buffer("Q")
        self.k = [Buffer(f"K[{s}]") for s in range(stages)]
        self.v = [Buffer(f"V[{s}]") for s in range(stages)]
        self.s = [Buffer(f"S[{b}]") for b in range(2)]
        self.s_read: list[set[int]] = [set(range(SOFTMAX_WARPS)) for _ in range(2)]
        self.p = [Buffer(f"P rows of warp {w}") for w in range(SOFTMAX_WARPS)]
        self.o = [Buffer(f"O rows of warp {w}") for w in range(SOFTMAX_WARPS)]
        self.tma: list[tuple] = []  # issued loads (complete in any order)
        self.tensor: deque = deque()  # issued UMMAs and commits (complete in order)
        self.roles: dict[str, Generator] = {"load": self.load(), "mma": self.mma()}
        for w in range(SOFTMAX_WARPS):
            self.roles[f"softmax warp {w}"] = self.softmax(w)
        self.current: dict[str, Step | None] = {name: next(g) for name, g in self.roles.items()}

    # -- asynchronous agents ---------------------------------------------------------------

    def _tma_load(self, buffer: Buffer, what, barrier: MBarrier, nbytes: int = 1) -> Op:
        """TMA: cp.async.bulk.tensor into `buffer`, completing `nbytes` on `barrier`."""
        return Op(lambda: self.tma.append((buffer, what, barrier, nbytes)))

    def _umma(self, name: str, reads: list[tuple[Buffer, object]], writes: list[Buffer], result):
        """The MMA warp issues an UMMA (it reads its operands when the tensor core runs it)."""

        def issue():
            for buffer, _ in reads:
                buffer.readers += 1
            self.tensor.append(("umma", name, reads, writes, result))

        return Op(issue)

    def _commit(self, barrier: MBarrier) -> Op:
        """tcgen05.commit: `barrier` gets an arrival once every UMMA issued before it is done."""
        return Op(lambda: self.tensor.append(("commit", barrier)))

    def step_tma(self, rng: random.Random):
        buffer, what, barrier, nbytes = self.tma.pop(rng.randrange(len(self.tma)))
        buffer.write(what, "TMA")
        barrier.complete_tx(nbytes)

    def step_tensor(self):
        op = self.tensor.popleft()
        if op[0] == "commit":
            op[1].arrive()
            return
        _, name, reads, writes, result = op
        for buffer, what in reads:
            buffer.readers -= 1
            buffer.expect(what, name)
        for buffer in writes:
            buffer.write(result(buffer) if callable(result) else result, name)

    # -- the roles (FwdKernel::load, ::mma, ::softmax) ---------------------------------------

    def load(self):
        """Warp 5, one thread."""
        n, S = self.n, self.stages
        yield Op(lambda: self.q_full.arrive(expect_tx=1))  # arrive_and_expect_tx(q_full)
        yield self._tma_load(self.q, "Q", self.q_full)
        for j in range(n):
            stage, rnd = j % S, j // S
            if rnd > 0:  # GNA_FWD_WAIT(&ss.k_empty[stage], (round - 1) & 1)
                yield Wait(self.k_empty[stage], (rnd - 1) & 1, rnd - 1, f"load, tile {j}")
            yield Op(lambda s=stage: self.k_full[s].arrive(expect_tx=1))
            yield self._tma_load(self.k[stage], ("K", j), self.k_full[stage])
            if rnd > 0:  # GNA_FWD_WAIT(&ss.v_empty[stage], (round - 1) & 1)
                parity = (rnd - 1) & 1
                if self.mutation == "load waits v_empty with the flipped parity":
                    parity ^= 1
                yield Wait(self.v_empty[stage], parity, rnd - 1, f"load, tile {j}")
            yield Op(lambda s=stage: self.v_full[s].arrive(expect_tx=1))
            yield self._tma_load(self.v[stage], ("V", j), self.v_full[stage])

    def mma(self):
        """Warp 4 (one elected thread issues)."""
        n, S = self.n, self.stages
        yield Wait(self.q_full, 0, 0, "mma")  # GNA_FWD_WAIT(&ss.q_full, 0)

        def issue_s(j):
            stage, b = j % S, j & 1
            # GNA_FWD_WAIT(&ss.k_full[stage], (j / kStages) & 1)
            yield Wait(self.k_full[stage], (j // S) & 1, j // S, f"mma, S_{j}")
            if j >= 2:  # GNA_FWD_WAIT(&ss.s_empty[j & 1], ((j >> 1) + 1) & 1): S_{j-2} read
                parity = ((j >> 1) + 1) & 1
                if self.mutation == "mma waits s_empty with the flipped parity":
                    parity ^= 1
                yield Wait(self.s_empty[b], parity, (j >> 1) - 1, f"mma, S_{j}")
            yield Op(lambda: self._check_s_read(b, j))
            yield self._umma(
                f"S_{j} = Q K_{j}^T",
                [(self.q, "Q"), (self.k[stage], ("K", j))],
                [self.s[b]],
                ("S", j),
            )
            yield self._commit(self.s_full[b])  # umma_arrive(&ss.s_full[j & 1])
            if self.mutation != "mma never commits k_empty":
                yield self._commit(self.k_empty[stage])  # umma_arrive(&ss.k_empty[stage])

        yield from issue_s(0)
        for j in range(n):
            if j + 1 < n:
                yield from issue_s(j + 1)
            stage = j % S
            # GNA_FWD_WAIT(&ss.v_full[stage], (j / kStages) & 1)
            yield Wait(self.v_full[stage], (j // S) & 1, j // S, f"mma, P_{j} V_{j}")
            # GNA_FWD_WAIT(&ss.p_full, j & 1)
            yield Wait(self.p_full, j & 1, j, f"mma, P_{j} V_{j}")
            o_before = ("O", j - 1, "rescaled") if j > 0 else None  # j == 0: ScaleOut::Zero
            reads = [(p, ("P", j)) for p in self.p] + [(self.v[stage], ("V", j))]
            if o_before is not None:
                reads += [(o, o_before) for o in self.o]
            yield self._umma(f"O += P_{j} V_{j}", reads, self.o, ("O", j))
            yield self._commit(self.o_done)  # umma_arrive(&ss.o_done)
            yield self._commit(self.v_empty[stage])  # umma_arrive(&ss.v_empty[stage])

    def _check_s_read(self, b: int, j: int):
        """Before S_j is issued into buffer b, every softmax warp has read S_{j-2} from it."""
        if self.s_read[b] != set(range(SOFTMAX_WARPS)):
            raise ProtocolError("race", f"S_{j} issued before every warp read S[{b}]")
        self.s_read[b] = set()

    def softmax(self, warp: int):
        """Warp `warp` of warps 0-3 (32 threads, converged at every wait)."""
        n = self.n
        for j in range(n):
            b = j & 1
            # GNA_FWD_WAIT(&ss.s_full[j & 1], (j >> 1) & 1), then tcgen05.ld of S_j
            yield Wait(self.s_full[b], (j >> 1) & 1, j >> 1, f"softmax warp {warp}, S_{j}")
            yield Op(lambda b=b, j=j: self._read_s(warp, b, j))
            yield Op(lambda b=b: self.s_empty[b].arrive(32))  # Barrier::arrive(&ss.s_empty[..])
            if j > 0:
                # GNA_FWD_WAIT(&ss.o_done, (j - 1) & 1): P_{j-1} V_{j-1} done
                parity = (j - 1) & 1
                if self.mutation == "softmax waits o_done with the flipped parity":
                    parity ^= 1
                yield Wait(self.o_done, parity, j - 1, f"softmax warp {warp}, tile {j}")
                # O rows rescaled in TMEM (tcgen05.ld/st; a warp may skip it: then no access)
                yield Op(lambda j=j: self._rescale_o(warp, j))
            # P_j rows into shared memory, then Barrier::arrive(&ss.p_full)
            yield Op(lambda j=j: self.p[warp].write(("P", j), f"softmax warp {warp}"))
            arrivals = 32
            if self.mutation == "softmax warp 3 skips one p_full arrive" and warp == 3:
                arrivals = 31
            yield Op(lambda a=arrivals: self.p_full.arrive(a))
        # Epilogue: GNA_FWD_WAIT(&ss.o_done, (n - 1) & 1), then O from TMEM.
        yield Wait(self.o_done, (n - 1) & 1, n - 1, f"softmax warp {warp}, epilogue")
        yield Op(lambda: self.o[warp].expect(("O", n - 1), f"softmax warp {warp}, epilogue"))

    def _read_s(self, warp: int, b: int, j: int):
        self.s[b].expect(("S", j), f"softmax warp {warp}")
        self.s_read[b].add(warp)

    def _rescale_o(self, warp: int, j: int):
        by = f"softmax warp {warp} (rescale before P_{j})"
        self.o[warp].expect(("O", j - 1), by)
        self.o[warp].write(("O", j - 1, "rescaled"), by)

    # -- the run ------------------------------------------------------------------------------

    def runnable(self) -> list[str]:
        """Actors that can step now: roles at an op or a passing wait, and busy agents."""
        ready = []
        for name, step in self.current.items():
            if step is None:
                continue
            if isinstance(step, Op) or step.barrier.passes(step.parity):
                ready.append(name)
        if self.tma:
            ready.append("tma")
        if self.tensor:
            ready.append("tensor core")
        return ready

    def step(self, actor: str, rng: random.Random):
        if actor == "tma":
            self.step_tma(rng)
            return
        if actor == "tensor core":
            self.step_tensor()
            return
        step = self.current[actor]
        if isinstance(step, Wait):
            if step.barrier.completed <= step.phase:
                raise ProtocolError(
                    "race",
                    f"{step.where}: the wait on {step.barrier.name} for parity {step.parity} "
                    f"passed with {step.barrier.completed} phase(s) complete; phase {step.phase} "
                    "is meant",
                )
        else:
            step.run()
        self.current[actor] = next(self.roles[actor], None)

    def check_released(self, roles_returned_with: deque):
        """The end of the item: no UMMA in flight when the roles returned (tensor memory is
        freed then), no partial phase, and every stage and buffer released once per use."""
        if any(op[0] == "umma" for op in roles_returned_with):
            raise ProtocolError("unreleased", "an UMMA is in flight when the roles return")
        n, S = self.n, self.stages
        uses = [len(range(s, n, S)) for s in range(S)]
        s_uses = [len(range(b, n, 2)) for b in range(2)]
        want = {self.q_full.name: 1, self.p_full.name: n, self.o_done.name: n}
        for s in range(S):
            for bar in (self.k_full, self.k_empty, self.v_full, self.v_empty):
                want[bar[s].name] = uses[s]
        for b in range(2):
            want[self.s_full[b].name] = want[self.s_empty[b].name] = s_uses[b]
        bars = [self.q_full, self.p_full, self.o_done, *self.s_full, *self.s_empty]
        bars += [*self.k_full, *self.k_empty, *self.v_full, *self.v_empty]
        for bar in bars:
            if bar.pending != bar.count or bar.tx != 0:
                raise ProtocolError("unreleased", f"{bar.name}: a partial phase at the end")
            if bar.completed != want[bar.name]:
                raise ProtocolError(
                    "unreleased",
                    f"{bar.name}: {bar.completed} phases at the end, {want[bar.name]} uses",
                )


def run(n: int, stages: int, policy: str, seed: int = 0, mutation: str = "none") -> int:
    """Runs one CTA's protocol under a scheduling policy; returns the number of steps, or
    raises ProtocolError. Policies: "random" (seeded), "round robin", "producers first" (the
    load thread, TMA and tensor core whenever they can), "consumers first" (the softmax warps,
    then the MMA warp)."""
    rng = random.Random(seed)
    model = ForwardModel(n, stages, mutation)
    order = list(model.current) + ["tma", "tensor core"]
    priority = {
        "producers first": ["load", "tma", "tensor core", "mma"],
        "consumers first": [f"softmax warp {w}" for w in range(SOFTMAX_WARPS)] + ["mma"],
    }.get(policy)
    turn, steps = 0, 0
    roles_returned_with = None
    while True:
        if roles_returned_with is None and all(s is None for s in model.current.values()):
            roles_returned_with = deque(model.tensor)  # what is in flight at with_tmem's barrier
        ready = model.runnable()
        if not ready:
            break
        if policy == "random":
            actor = rng.choice(ready)
        elif policy == "round robin":
            while order[turn % len(order)] not in ready:
                turn += 1
            actor = order[turn % len(order)]
            turn += 1
        else:
            first = [a for a in priority if a in ready]
            actor = first[0] if first else rng.choice(ready)
        model.step(actor, rng)
        steps += 1
    blocked = {name: step for name, step in model.current.items() if step is not None}
    if blocked:
        waits = "; ".join(
            f"{name} on {s.barrier.name} parity {s.parity} ({s.barrier.completed} phases done)"
            for name, s in blocked.items()
        )
        raise ProtocolError("deadlock", f"n={n}, stages={stages}: {waits}")
    model.check_released(roles_returned_with)
    return steps
