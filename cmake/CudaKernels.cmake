# Optional CUDA part: one object library per kernel family, each compiled for its own arch only,
# plus the host-side CUDA FFI handlers. Sets JAX_GNA_BUILT_CUDA_ARCHS (empty without CUDA).
#
#   JAX_GNA_CUDA           AUTO (build when a CUDA compiler is found) | ON (require one) | OFF
#   JAX_GNA_CUDA_ARCHS     auto | all | e.g. "90a;100a" (cmake/CudaArchs.cmake); a family is
#                          built only when its arch is listed
#   JAX_GNA_KERNEL_SET     full | smoke: the kernels of cuda/kernel_table.cmake (generated from
#                          the kernel table, jax_gna/_kernel_table.py) this build compiles;
#                          GNA_KERNEL_SET_SMOKE=1 is defined for the smoke set
#   JAX_GNA_CUDA_FROM_PIP  ON: compile with pip's NVIDIA compiler packages (cmake/find_pip_cuda.py)
#                          even where a system nvcc exists; with AUTO/ON they are the fallback
#                          when no system nvcc is found
#   CUTLASS_INCLUDE_DIR    CUTLASS/CuTe headers; default: the nvidia-cutlass wheel's headers

include(cmake/CudaArchs.cmake)

set(JAX_GNA_BUILT_CUDA_ARCHS "")
set(JAX_GNA_BUILT_CUDA_KERNELS "")

string(TOUPPER "${JAX_GNA_CUDA}" _cuda_mode)
if(_cuda_mode MATCHES "^(OFF|0|FALSE|NO)$")
  return()
elseif(NOT _cuda_mode MATCHES "^(AUTO|ON|1|TRUE|YES)$")
  message(FATAL_ERROR "JAX_GNA_CUDA must be AUTO, ON or OFF, got '${JAX_GNA_CUDA}'")
endif()

jax_gna_resolve_cuda_archs("${JAX_GNA_CUDA_ARCHS}" _archs)
if(NOT _archs)
  return()
endif()

# The CUDA compiler: the system's (CUDACXX, PATH), else pip's NVIDIA packages.
set(_pip_cuda_root "")
if(NOT JAX_GNA_CUDA_FROM_PIP)
  include(CheckLanguage)
  check_language(CUDA)
endif()
if(NOT CMAKE_CUDA_COMPILER)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" "${PROJECT_SOURCE_DIR}/cmake/find_pip_cuda.py"
    OUTPUT_VARIABLE _pip_cuda_root OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
if(_pip_cuda_root)
  message(STATUS "jax_gna: CUDA compiler from pip's NVIDIA packages: ${_pip_cuda_root}")
  set(CMAKE_CUDA_COMPILER "${_pip_cuda_root}/bin/nvcc")
  set(CUDAToolkit_ROOT "${_pip_cuda_root}")
  # The wheels put the libraries in lib/ (nvcc looks in lib64/) and ship no unversioned
  # libcudart.so, which FindCUDAToolkit requires; we link cudart statically anyway.
  string(APPEND CMAKE_CUDA_FLAGS " -L${_pip_cuda_root}/lib")
  file(GLOB _cudart "${_pip_cuda_root}/lib/libcudart.so*")
  if(_cudart)
    list(GET _cudart 0 _cudart)
    set(CUDA_CUDART "${_cudart}" CACHE FILEPATH "")
  endif()
elseif(NOT CMAKE_CUDA_COMPILER)
  if(JAX_GNA_CUDA_FROM_PIP OR NOT _cuda_mode STREQUAL "AUTO")
    message(FATAL_ERROR
      "jax_gna: no CUDA compiler found: install the CUDA toolkit (nvcc), or build with pip's "
      "NVIDIA compiler packages (JAX_GNA_CUDA_FROM_PIP=1), or without CUDA (JAX_GNA_CUDA=OFF)")
  endif()
  message(STATUS "jax_gna: nvcc not found, building without CUDA kernels (JAX_GNA_CUDA=AUTO)")
  return()
endif()

enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

if(NOT CUTLASS_INCLUDE_DIR)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import importlib.util, os; s = importlib.util.find_spec('cutlass_library'); print(os.path.join(os.path.dirname(s.origin), 'source', 'include') if s else '')"
    OUTPUT_VARIABLE CUTLASS_INCLUDE_DIR
    OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
if(NOT EXISTS "${CUTLASS_INCLUDE_DIR}/cutlass/cutlass.h")
  message(FATAL_ERROR
    "CUTLASS headers not found (looked in '${CUTLASS_INCLUDE_DIR}'). Install the headers wheel "
    "(pip install --no-deps nvidia-cutlass==4.2.0.0), set CUTLASS_INCLUDE_DIR, or build "
    "without CUDA (JAX_GNA_CUDA=OFF).")
endif()
message(STATUS "jax_gna: CUTLASS headers: ${CUTLASS_INCLUDE_DIR}")

# JAX_GNA_DEBUG_KERNELS=ON: the sm100 kernels bound every barrier wait, report a hang (printf,
# then trap) and check their tensor memory (cuda/sm100/kernel/debug_checks.cuh,
# docs/blackwell.md); release builds are unchanged.
option(JAX_GNA_DEBUG_KERNELS "Kernels that report a hang instead of hanging" OFF)

# Kernel families: <arch>:<folder under cuda/>. Each compiles its host-side units (the
# dispatchers, the backward's element-wise passes) and one generated translation unit per kernel
# of cuda/kernel_table.cmake, so the kernels compile in parallel: <direction>_instance.cu with
# the kernel's defines, named by its configuration (fwd_sm90_bf16_d128_r3_q2x8x8_kv2x8x8.cu).
include("${PROJECT_SOURCE_DIR}/cuda/kernel_table.cmake")
set(_kernel_libs "")
set(_total_units 0)
foreach(_family "90a:sm90" "100a:sm100")
  string(REPLACE ":" ";" _family "${_family}")
  list(GET _family 0 _arch)
  list(GET _family 1 _dir)
  if(NOT _arch IN_LIST _archs)
    continue()
  endif()
  set(_src "${PROJECT_SOURCE_DIR}/cuda/${_dir}")
  set(GNA_FAMILY_SOURCES "")
  set(_family_kernels "")
  foreach(_unit fwd_dispatch bwd_dispatch bwd_passes)
    if(EXISTS "${_src}/${_unit}.cu")
      list(APPEND GNA_FAMILY_SOURCES "${_src}/${_unit}.cu")
    endif()
  endforeach()
  foreach(_row IN LISTS GNA_KERNELS_${_dir})
    # <direction> <file stem> <build_info name> <in the smoke set> <defines...>
    string(REPLACE " " ";" _row "${_row}")
    list(POP_FRONT _row _direction _stem _name _smoke)
    if(JAX_GNA_KERNEL_SET STREQUAL "smoke" AND NOT _smoke)
      continue()
    endif()
    set(_content "")
    foreach(_define IN LISTS _row)
      string(REPLACE "=" " " _define "${_define}")
      string(APPEND _content "#define ${_define}\n")
    endforeach()
    string(APPEND _content "#include \"${_src}/${_direction}_instance.cu\"\n")
    set(_tu "${CMAKE_CURRENT_BINARY_DIR}/${_dir}/${_stem}.cu")
    # CONFIGURE rewrites the file only when its content changes: no needless rebuilds.
    file(CONFIGURE OUTPUT "${_tu}" CONTENT "${_content}")
    list(APPEND GNA_FAMILY_SOURCES "${_tu}")
    list(APPEND _family_kernels "${_dir}:${_name}")
  endforeach()
  if(NOT _family_kernels)
    message(STATUS "jax_gna: no ${_dir} kernels, skipping arch ${_arch}")
    continue()
  endif()
  set(_lib "gna_${_dir}")
  add_library(${_lib} OBJECT ${GNA_FAMILY_SOURCES})
  set_target_properties(${_lib} PROPERTIES
    CUDA_ARCHITECTURES "${_arch}"
    CUDA_RUNTIME_LIBRARY Static
    POSITION_INDEPENDENT_CODE ON)
  target_compile_options(${_lib} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-O3 -DNDEBUG --expt-relaxed-constexpr>)
  target_include_directories(${_lib} PRIVATE "${PROJECT_SOURCE_DIR}/cuda/include")
  target_include_directories(${_lib} SYSTEM PRIVATE "${CUTLASS_INCLUDE_DIR}")
  if(JAX_GNA_KERNEL_SET STREQUAL "smoke")
    target_compile_definitions(${_lib} PRIVATE GNA_KERNEL_SET_SMOKE=1)
  endif()
  if(JAX_GNA_DEBUG_KERNELS)
    target_compile_definitions(${_lib} PRIVATE JAX_GNA_DEBUG_KERNELS=1)
    target_compile_options(${_lib} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>)
  endif()
  string(TOUPPER "${_dir}" _dir_upper)
  target_link_libraries(_ext PRIVATE ${_lib})
  target_compile_definitions(_ext PRIVATE JAX_GNA_HAS_${_dir_upper}=1)
  list(APPEND JAX_GNA_BUILT_CUDA_ARCHS "${_arch}")
  list(APPEND _kernel_libs ${_lib})
  # The kernels this family compiles, for build_info() (jax_gna._extension parses the names:
  # fwd_<dtype>_d<head dim>_r<rank>_c<config> and bwd_<dtype>_d<head dim>_r<rank>).
  list(APPEND JAX_GNA_BUILT_CUDA_KERNELS ${_family_kernels})
  list(LENGTH GNA_FAMILY_SOURCES _count)
  math(EXPR _total_units "${_total_units} + ${_count}")
  message(STATUS "jax_gna: ${_dir} kernels for ${_arch}: ${_count} translation unit(s), "
                 "kernel set '${JAX_GNA_KERNEL_SET}'")
endforeach()

if(NOT JAX_GNA_BUILT_CUDA_ARCHS)
  set(_note "no kernel family was built (arch list '${_archs}')")
  if(_cuda_mode STREQUAL "AUTO")
    message(STATUS "jax_gna: ${_note}; building without CUDA handlers")
    return()
  endif()
  message(WARNING "jax_gna: JAX_GNA_CUDA=ON but ${_note}; the CUDA handlers will refuse every call")
endif()

# Progress of the long kernel build, one line per finished CUDA unit (cmake/compile_progress.py);
# the count restarts with every build. Its interpreter is the first configure's: a build
# directory that another Python reuses (scripts/build_wheels) keeps the kernels' compile
# commands, so ninja does not compile them again.
set(JAX_GNA_PROGRESS_PYTHON "${Python_EXECUTABLE}" CACHE FILEPATH
    "Python that runs the CUDA compile progress launcher")
mark_as_advanced(JAX_GNA_PROGRESS_PYTHON)
set(_progress_state "${CMAKE_CURRENT_BINARY_DIR}/cuda_compile_progress.json")
add_custom_target(jax_gna_progress_reset
  COMMAND "${CMAKE_COMMAND}" -E rm -f "${_progress_state}"
  COMMENT "jax_gna: ${_total_units} CUDA units in this build (kernel set ${JAX_GNA_KERNEL_SET})")
foreach(_lib IN LISTS _kernel_libs)
  set_target_properties(${_lib} PROPERTIES CUDA_COMPILER_LAUNCHER
    "${JAX_GNA_PROGRESS_PYTHON};${PROJECT_SOURCE_DIR}/cmake/compile_progress.py;${_progress_state};${_total_units};--")
  add_dependencies(${_lib} jax_gna_progress_reset)
endforeach()
message(STATUS "jax_gna: ${_total_units} CUDA translation units to compile "
               "(see the README for the build times)")

# Host-side handlers (plain C++ with the CUDA runtime headers); static cudart so the module
# imports on machines without a GPU driver.
target_sources(_ext PRIVATE "${PROJECT_SOURCE_DIR}/cuda/ffi/cuda_handlers.cc")
string(REPLACE ";" "," _archs_csv "${JAX_GNA_BUILT_CUDA_ARCHS}")
string(REPLACE ";" "," _kernels_csv "${JAX_GNA_BUILT_CUDA_KERNELS}")
target_compile_definitions(_ext PRIVATE JAX_GNA_WITH_CUDA=1 JAX_GNA_CUDA_ARCHS="${_archs_csv}"
                                        JAX_GNA_CUDA_KERNELS="${_kernels_csv}")
# _ext has no device code of its own (the kernels are in the object libraries above).
set_target_properties(_ext PROPERTIES CUDA_RUNTIME_LIBRARY Static CUDA_ARCHITECTURES OFF)
target_link_libraries(_ext PRIVATE CUDA::cudart_static)
