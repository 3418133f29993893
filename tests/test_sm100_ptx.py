"""The PTX of the kernels, checked on the CPU (nvcc, no GPU; skips without nvcc or CUTLASS).

Every shared-memory access of the kernels must be a shared-memory instruction. A generic
access (``st.v4.u32``, ``ld.v4.u32``: no state space) to shared memory is correct but goes
through the global path and waits on the long scoreboard (the sm90 backward's profile in
`docs/history.md`, "Backward v4"); cute's swizzled smem tensors compute addresses as integers,
so a plain store through one is generic, which is why the kernels stage P, P^T and dS^T through
`store_shared_16b` / `store_shared_pair` (`cuda/common/shared_storage.cuh`). The kernels' only
global accesses are explicit (``.global``), so the check is simply: no ``ld``/``st`` without a
state space in the whole kernel.

Each kernel is compiled as the build compiles it: the TU the build generates from the kernel
table (#defines, then the family's ``*_instance.cu``), the flags of `cmake/CudaKernels.cmake`,
PTX for the family's architecture. The sm100 kernels have never run (no Blackwell GPU); this is
one of the checks that stand in (`docs/blackwell.md`).
"""

from __future__ import annotations

import collections
import re

import pytest

from tests import nvcc_build

# State spaces of ld/st; an access naming none is generic.
_STATE_SPACES = {"global", "shared", "local", "param", "const"}
_OPCODE = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.:]*)")


def memory_accesses(ptx: str) -> list[str]:
    """The opcodes of the ld/st instructions of `ptx`, any state space, in order (tcgen05.ld/st
    are tensor-memory instructions, not these)."""
    ops = []
    for line in ptx.splitlines():
        m = _OPCODE.match(line)
        if m and m.group(1).split(".")[0] in ("ld", "st"):
            ops.append(m.group(1))
    return ops


def generic_accesses(ptx: str) -> list[str]:
    """The ld/st opcodes of `ptx` that name no state space."""
    return [
        op
        for op in memory_accesses(ptx)
        if not any(part.split("::")[0] in _STATE_SPACES for part in op.split(".")[1:])
    ]


def test_generic_access_parser_on_known_lines():
    ptx = "\n".join(
        [
            "\tst.v4.u32 \t[%rd5], {%r1, %r2, %r3, %r4};",
            "\t@%p3 ld.v4.u32 \t{%r1, %r2, %r3, %r4}, [%rd7];",
            "\tst.shared.v4.b32 [%r9], {%r1, %r2, %r3, %r4};",
            "\tld.shared::cta.u32 %r1, [%r2];",
            "\tld.acquire.gpu.global.s32 %r1, [%rd1];",
            "\ttcgen05.ld.sync.aligned.32x32b.x32.b32 {%r1}, [%r2];",
            "\tld.param.u64 %rd1, [param_0];",
        ]
    )
    assert generic_accesses(ptx) == ["st.v4.u32", "ld.v4.u32"]
    assert len(memory_accesses(ptx)) == 6


# (family, direction, the defines of the kernel's generated TU): bf16 d128 rank 3 (the
# smoke kernels) and the other end of the tables (f16, d32: SW64 tiles, rank 1).
KERNELS = {
    "sm100 fwd bf16 d128 r3": ("sm100", "fwd", ("kBF16", 128, 3, 0)),
    "sm100 fwd f16 d32 r1": ("sm100", "fwd", ("kF16", 32, 1, 0)),
    "sm100 bwd bf16 d128 r3": ("sm100", "bwd", ("kBF16", 128, 3, 0)),
    "sm100 bwd f16 d32 r1": ("sm100", "bwd", ("kF16", 32, 1, 0)),
    "sm90 fwd bf16 d128 r3": ("sm90", "fwd", ("kBF16", 128, 3, 0)),
    "sm90 bwd bf16 d128 r3": ("sm90", "bwd", ("kBF16", 128, 3, 0)),
}
_NAMES = ("DTYPE", "HEAD_DIM", "RANK", "CONFIG")


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    """ptx(name, extra flags): the kernel's PTX, each compiled once per test process."""
    cache: dict = {}

    def get(name: str, extra: tuple = ()) -> str:
        if (name, extra) not in cache:
            family, direction, values = KERNELS[name]
            prefix = f"GNA_{direction.upper()}_"
            defines = {prefix + n: v for n, v in zip(_NAMES, values)}
            folder = tmp_path_factory.mktemp("ptx")
            cache[name, extra] = nvcc_build.kernel_ptx(folder, family, direction, defines, extra)
        return cache[name, extra]

    return get


@pytest.mark.parametrize("name", list(KERNELS))
def test_release_kernel_has_no_generic_access_printf_or_trap(ptx, name):
    text = ptx(name)
    generic = generic_accesses(text)
    wide = [op for op in generic if ".v4." in op]
    counts = dict(collections.Counter(generic))
    assert not generic, f"{name}: {len(generic)} generic ld/st ({len(wide)} of 128 bits): {counts}"
    # The parser sees the kernel's accesses: the sm90 forward moves shared memory by TMA and
    # wgmma only and stores O with st.global; the others stage through ld/st.shared.
    space = ".global" if name.startswith("sm90 fwd") else ".shared"
    assert any(space in op for op in memory_accesses(text)), f"{name}: the parser found no {space}"
    for word in ("vprintf", "__assertfail", "trap;"):
        assert word not in text, f"{name}: {word} in a release build"


@pytest.mark.parametrize("name", [n for n in KERNELS if n.startswith("sm100 bwd")])
def test_sm100_backward_computes_ds_from_fp32_p(ptx, name):
    """dS^T = P^T (dP^T - delta) takes P^T from the compute thread's fp32 registers, as sm90
    does, not read back rounded to 16 bits from shared memory (which adds a rounding of P to
    every dS element): the kernel's shared-memory loads are the fp32 row statistics (lse2,
    delta) and the TMEM address only (any other load from shared or generic memory fails)."""
    ops = memory_accesses(ptx(name))
    loads = [
        op for op in ops if op.startswith("ld.") and not {"global", "param"} & set(op.split("."))
    ]
    assert set(loads) <= {"ld.shared.v4.f32", "ld.shared.u32"}, collections.Counter(loads)
    assert loads.count("ld.shared.u32") == 1


_STRING = re.compile(r"\.b8 \$str[$\w]*\[\d+\] = \{([\d, ]+)\}")


def string_constants(ptx: str) -> set[str]:
    """The C strings `ptx` holds (printf formats and arguments)."""
    return {
        bytes(int(b) for b in m.group(1).split(",")).rstrip(b"\0").decode()
        for m in _STRING.finditer(ptx)
    }


def shared_storage_barriers(direction: str) -> list[str]:
    """The mbarriers (uint64_t members) of the sm100 kernel's SharedStorage."""
    header = nvcc_build.ROOT / "cuda" / "sm100" / "kernel" / f"{direction}_kernel_ws.cuh"
    text = header.read_text()
    storage = text[text.index("struct SharedStorage {") :]
    storage = storage[: storage.index("};")]
    return re.findall(r"uint64_t (\w+)", storage)


# What a debug build names besides the mbarriers: the TMEM address slot (tcgen05.alloc's
# wait) and the backward's deterministic-mode semaphore.
OTHER_WAITS = {"fwd": ["tmem_base"], "bwd": ["tmem_base", "dq_semaphore"]}


@pytest.mark.parametrize("name", ["sm100 fwd bf16 d128 r3", "sm100 bwd bf16 d128 r3"])
def test_debug_build_bounds_every_wait_and_names_every_barrier(ptx, name):
    """JAX_GNA_DEBUG_KERNELS=1 (cmake/CudaKernels.cmake; docs/blackwell.md): no unbounded
    mbarrier wait is left (cutlass's wait loop is the `LAB_WAIT` label), every wait reads the
    global timer, reports with printf and traps, and the reports name every barrier of the
    kernel."""
    release = ptx(name)
    debug = ptx(name, ("-DJAX_GNA_DEBUG_KERNELS=1",))
    assert "LAB_WAIT" in release and "LAB_WAIT" not in debug
    for word in ("%globaltimer", "vprintf", "trap;"):
        assert word in debug, word
    strings = string_constants(debug)
    assert not string_constants(release)
    direction = KERNELS[name][1]
    names = shared_storage_barriers(direction) + OTHER_WAITS[direction]
    assert len(names) >= 10, names
    missing = [b for b in names if b not in strings]
    assert not missing, f"barriers never named in a hang report: {missing}"
    assert any(s.startswith("jax_gna debug: sm100 %s kernel") for s in strings), strings
