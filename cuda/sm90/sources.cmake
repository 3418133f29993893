# sm90 translation units: the host-side dispatchers and the backward's element-wise passes, plus
# one generated TU per forward kernel (dtype x head dim x rank x tile configuration) that includes
# fwd_instance.cu and one per backward kernel (dtype x head dim <= 128 x rank, bwd_instance.cu),
# so the kernels
# compile in parallel. The kernel set must agree with fwd_kernel_set.h (smoke: bf16, head dim
# 128) and the configurations with fwd_config.h's table (fwd_tile_table: two for ranks 2 and 3
# at head dims up to 128, one otherwise; a wrong index fails to compile, a missing one to link).
set(_sm90 "${PROJECT_SOURCE_DIR}/cuda/sm90")
set(GNA_FAMILY_SOURCES "${_sm90}/fwd_dispatch.cu" "${_sm90}/bwd_dispatch.cu" "${_sm90}/bwd_passes.cu")
if(JAX_GNA_KERNEL_SET STREQUAL "smoke")
  set(_dtypes kBF16)
  set(_head_dims 128)
else()
  set(_dtypes kF16 kBF16)
  set(_head_dims 32 64 128 256)
endif()
foreach(_dtype IN LISTS _dtypes)
  foreach(_head_dim IN LISTS _head_dims)
    foreach(_rank 1 2 3)
      if(_rank EQUAL 1 OR _head_dim GREATER 128)
        set(_configs 0)
      else()
        set(_configs 0 1)
      endif()
      foreach(_config IN LISTS _configs)
        set(_tu "${CMAKE_CURRENT_BINARY_DIR}/sm90/fwd_${_dtype}_d${_head_dim}_r${_rank}_c${_config}.cu")
        # CONFIGURE rewrites the file only when its content changes: no needless rebuilds.
        file(CONFIGURE OUTPUT "${_tu}" CONTENT
"#define GNA_FWD_DTYPE ${_dtype}
#define GNA_FWD_HEAD_DIM ${_head_dim}
#define GNA_FWD_RANK ${_rank}
#define GNA_FWD_CONFIG ${_config}
#include \"${_sm90}/fwd_instance.cu\"
")
        list(APPEND GNA_FAMILY_SOURCES "${_tu}")
      endforeach()
      # The backward: one kernel per (dtype, head dim <= 128, rank) (bwd_config.h).
      if(_head_dim LESS_EQUAL 128)
        set(_tu "${CMAKE_CURRENT_BINARY_DIR}/sm90/bwd_${_dtype}_d${_head_dim}_r${_rank}.cu")
        file(CONFIGURE OUTPUT "${_tu}" CONTENT
"#define GNA_BWD_DTYPE ${_dtype}
#define GNA_BWD_HEAD_DIM ${_head_dim}
#define GNA_BWD_RANK ${_rank}
#include \"${_sm90}/bwd_instance.cu\"
")
        list(APPEND GNA_FAMILY_SOURCES "${_tu}")
      endif()
    endforeach()
  endforeach()
endforeach()
