# Which CUDA architectures get kernel families: jax_gna_resolve_cuda_archs(<requested> <out_var>).
#
#   auto (default)  the architectures of the GPUs nvidia-smi reports (compute capability 9.0:
#                   90a, 10.0: 100a); every supported one when no GPU is visible (a build
#                   machine without a GPU, a container); none when the GPUs have no kernels
#   all             every supported architecture (release wheels)
#   90a;100a, 90a   exactly these
#
# The kernels use arch-specific features (wgmma, tcgen05), so sm_90a code runs on compute
# capability 9.0 only and sm_100a code on 10.0 only.

set(JAX_GNA_SUPPORTED_CUDA_ARCHS "90a;100a")

# The kernel architecture for a compute capability like "9.0", or "" when there is none.
function(_jax_gna_arch_of_compute_capability capability out)
  set(_arch "")
  if(capability STREQUAL "9.0")
    set(_arch "90a")
  elseif(capability STREQUAL "10.0")
    set(_arch "100a")
  endif()
  set(${out} "${_arch}" PARENT_SCOPE)
endfunction()

# The compute capabilities nvidia-smi reports, e.g. "9.0;9.0"; empty when no GPU is visible.
function(_jax_gna_visible_compute_capabilities out)
  set(_caps "")
  find_program(_nvidia_smi nvidia-smi NO_CACHE)
  if(_nvidia_smi)
    execute_process(
      COMMAND "${_nvidia_smi}" --query-gpu=compute_cap --format=csv,noheader
      OUTPUT_VARIABLE _output
      RESULT_VARIABLE _result
      ERROR_QUIET TIMEOUT 30)
    if(_result EQUAL 0)
      string(REGEX MATCHALL "[0-9]+\\.[0-9]+" _caps "${_output}")
    endif()
  endif()
  set(${out} "${_caps}" PARENT_SCOPE)
endfunction()

function(jax_gna_resolve_cuda_archs requested out)
  string(TOLOWER "${requested}" _requested)
  if(_requested STREQUAL "all")
    set(${out} "${JAX_GNA_SUPPORTED_CUDA_ARCHS}" PARENT_SCOPE)
    return()
  endif()
  if(NOT _requested STREQUAL "auto" AND NOT _requested STREQUAL "")
    foreach(_arch IN LISTS requested)
      if(NOT _arch IN_LIST JAX_GNA_SUPPORTED_CUDA_ARCHS)
        message(FATAL_ERROR
          "JAX_GNA_CUDA_ARCHS: unknown architecture '${_arch}' in '${requested}'; use auto, "
          "all, or a list of: ${JAX_GNA_SUPPORTED_CUDA_ARCHS}")
      endif()
    endforeach()
    set(${out} "${requested}" PARENT_SCOPE)
    return()
  endif()

  _jax_gna_visible_compute_capabilities(_caps)
  if(NOT _caps)
    message(STATUS "jax_gna: no GPU visible (nvidia-smi): building kernels for every supported "
                   "architecture (${JAX_GNA_SUPPORTED_CUDA_ARCHS})")
    set(${out} "${JAX_GNA_SUPPORTED_CUDA_ARCHS}" PARENT_SCOPE)
    return()
  endif()
  list(REMOVE_DUPLICATES _caps)
  set(_archs "")
  foreach(_cap IN LISTS _caps)
    _jax_gna_arch_of_compute_capability("${_cap}" _arch)
    if(_arch)
      list(APPEND _archs "${_arch}")
    endif()
  endforeach()
  list(JOIN _caps ", " _caps_text)
  if(_archs)
    message(STATUS "jax_gna: GPU compute capability ${_caps_text}: building kernels for "
                   "${_archs} only (JAX_GNA_CUDA_ARCHS=all builds every architecture)")
  else()
    message(STATUS "jax_gna: the visible GPUs (compute capability ${_caps_text}) have no "
                   "jax_gna CUDA kernels (they need 9.0 or 10.0); building without them")
  endif()
  set(${out} "${_archs}" PARENT_SCOPE)
endfunction()
