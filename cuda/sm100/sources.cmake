# sm100 translation units: the host-side dispatchers and the backward's element-wise passes,
# plus one generated TU per forward kernel (dtype x head dim x rank x tile configuration) that
# includes fwd_instance.cu and one per backward kernel (dtype x head dim x rank,
# bwd_instance.cu), so the kernels compile in parallel. The kernel sets must agree with
# fwd_kernel_set.h (smoke: one forward and one backward kernel, bf16, head dim 128, rank 3,
# forward configuration 0) and the configurations with fwd_config.h's table (two for ranks 2
# and 3, one for rank 1; a wrong index fails to compile, a missing one to link).
set(_sm100 "${PROJECT_SOURCE_DIR}/cuda/sm100")
set(GNA_FAMILY_SOURCES "${_sm100}/fwd_dispatch.cu" "${_sm100}/bwd_dispatch.cu"
                       "${_sm100}/bwd_passes.cu")
set(_kernels "")
set(_bwd_kernels "")
if(JAX_GNA_KERNEL_SET STREQUAL "smoke")
  list(APPEND _kernels "kBF16 128 3 0")
  list(APPEND _bwd_kernels "kBF16 128 3")
else()
  foreach(_dtype kF16 kBF16)
    foreach(_head_dim 32 64 128)
      foreach(_rank 1 2 3)
        list(APPEND _bwd_kernels "${_dtype} ${_head_dim} ${_rank}")
        if(_rank EQUAL 1)
          set(_configs 0)
        else()
          set(_configs 0 1)
        endif()
        foreach(_config IN LISTS _configs)
          list(APPEND _kernels "${_dtype} ${_head_dim} ${_rank} ${_config}")
        endforeach()
      endforeach()
    endforeach()
  endforeach()
endif()
foreach(_kernel IN LISTS _kernels)
  string(REPLACE " " ";" _kernel "${_kernel}")
  list(GET _kernel 0 _dtype)
  list(GET _kernel 1 _head_dim)
  list(GET _kernel 2 _rank)
  list(GET _kernel 3 _config)
  set(_tu "${CMAKE_CURRENT_BINARY_DIR}/sm100/fwd_${_dtype}_d${_head_dim}_r${_rank}_c${_config}.cu")
  # CONFIGURE rewrites the file only when its content changes: no needless rebuilds.
  file(CONFIGURE OUTPUT "${_tu}" CONTENT
"#define GNA_FWD_DTYPE ${_dtype}
#define GNA_FWD_HEAD_DIM ${_head_dim}
#define GNA_FWD_RANK ${_rank}
#define GNA_FWD_CONFIG ${_config}
#include \"${_sm100}/fwd_instance.cu\"
")
  list(APPEND GNA_FAMILY_SOURCES "${_tu}")
endforeach()
foreach(_kernel IN LISTS _bwd_kernels)
  string(REPLACE " " ";" _kernel "${_kernel}")
  list(GET _kernel 0 _dtype)
  list(GET _kernel 1 _head_dim)
  list(GET _kernel 2 _rank)
  set(_tu "${CMAKE_CURRENT_BINARY_DIR}/sm100/bwd_${_dtype}_d${_head_dim}_r${_rank}.cu")
  file(CONFIGURE OUTPUT "${_tu}" CONTENT
"#define GNA_BWD_DTYPE ${_dtype}
#define GNA_BWD_HEAD_DIM ${_head_dim}
#define GNA_BWD_RANK ${_rank}
#include \"${_sm100}/bwd_instance.cu\"
")
  list(APPEND GNA_FAMILY_SOURCES "${_tu}")
endforeach()
