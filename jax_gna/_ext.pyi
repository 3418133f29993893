"""Type stub of the compiled extension (cuda/ffi/module.cc)."""

from collections.abc import Sequence
from typing import Any

kernel_set: str  # JAX_GNA_KERNEL_SET of the build: "full" or "smoke"
debug_kernels: bool  # built with JAX_GNA_DEBUG_KERNELS=ON (the kernels' debug build)
xla_ffi_api_version: tuple[int, int]  # of the XLA FFI headers the handlers were built with

def cpu_targets() -> dict[str, Any]: ...  # target name -> handler capsule, platform "cpu"
def cuda_targets() -> dict[str, Any]: ...  # platform "CUDA"; empty without CUDA kernels
def built_cuda_archs() -> list[str]: ...
def built_cuda_kernels() -> list[str]: ...  # "<family>:<unit>", e.g. "sm90:fwd_kBF16_d128_r2_c0"
def cuda_has_backward() -> bool: ...
def cuda_fwd_tile_configs() -> dict[
    int, dict[int, list[tuple[tuple[int, ...], tuple[int, ...]]]]
]: ...
def window(
    length: int, kernel_size: int, stride: int = 1, dilation: int = 1, is_causal: bool = False
) -> tuple[list[int], list[int]]: ...
def inverse_window(
    length: int, kernel_size: int, stride: int = 1, dilation: int = 1, is_causal: bool = False
) -> tuple[list[int], list[int]]: ...
def view_keys(
    length: int,
    kernel_size: int,
    stride: int,
    dilation: int,
    is_causal: bool,
    view: Sequence[int],  # (q_offset, q_length, kv_offset, kv_length)
) -> tuple[list[int], list[int]]: ...
def fwd_workspace_bytes(
    q_shape: Sequence[int],
    k_shape: Sequence[int],
    v_shape: Sequence[int],
    dtype: str,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[int],
    view: Sequence[int] = (),  # per axis (extent, q_offset, kv_offset), flattened; () none
) -> int: ...
def bwd_workspace_bytes(
    q_shape: Sequence[int],
    k_shape: Sequence[int],
    v_shape: Sequence[int],
    dtype: str,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[int],
    view: Sequence[int] = (),  # per axis (extent, q_offset, kv_offset), flattened; () none
    deterministic: bool = False,  # the backward's mode (more workspace in deterministic mode)
    q_tile: Sequence[int] = (),  # the backward's tile shapes; () the launcher's choice
    kv_tile: Sequence[int] = (),
) -> int: ...
def cuda_bwd_can_implement(
    q_shape: Sequence[int],
    k_shape: Sequence[int],
    v_shape: Sequence[int],
    dtype: str,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[int],
    cc_major: int = -1,
    cc_minor: int = 0,
    q_tile: Sequence[int] = (),  # the backward's tile shapes; () whichever fits
    kv_tile: Sequence[int] = (),
    view: Sequence[int] = (),
) -> str | None: ...
def cuda_fwd_can_implement(
    q_shape: Sequence[int],
    k_shape: Sequence[int],
    v_shape: Sequence[int],
    dtype: str,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[int],
    cc_major: int = -1,
    cc_minor: int = 0,
    q_tile: Sequence[int] = (),
    kv_tile: Sequence[int] = (),
    view: Sequence[int] = (),
) -> str | None: ...
