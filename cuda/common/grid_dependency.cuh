// Programmatic dependent launch (PDL), the device side: every kernel entry point calls
// wait_for_prior_grids() and then allow_next_grid() before anything else. Launched with
// programmatic stream serialization (the development knob GNA_PDL, kernel_launch.h), a kernel's
// CTAs may start while the kernel before it on the stream still runs: they wait here until it
// has completed and its writes are visible, so no global memory access of theirs (read or
// write) comes before that. Launched without it (the default), the wait returns at once.
#pragma once

namespace gna {

// Waits for the grids this one depends on (the previous kernel on the stream, under PDL).
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel on the stream (launched under PDL) be scheduled before this one ends:
// its CTAs take the SMs this grid frees and wait in wait_for_prior_grids.
__device__ __forceinline__ void allow_next_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// The two, as an entry point's first statement.
__device__ __forceinline__ void enter_after_prior_grids() {
  wait_for_prior_grids();
  allow_next_grid();
}

}  // namespace gna
