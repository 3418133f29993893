# Optional CUDA part: one object library per kernel family, each compiled for its own arch only,
# plus the host-side CUDA FFI handlers. Sets JAX_GNA_BUILT_CUDA_ARCHS (empty without CUDA).
#
#   JAX_GNA_CUDA        AUTO (build when nvcc is found) | ON (require nvcc) | OFF
#   JAX_GNA_CUDA_ARCHS  e.g. "90a;100a"; a family is built only when its arch is listed
#   JAX_GNA_KERNEL_SET  full | smoke; a family's cuda/<family>/sources.cmake may use it to pick
#                       its translation units (GNA_FAMILY_SOURCES); otherwise every .cu is built
#                       and GNA_KERNEL_SET_SMOKE=1 is defined for the smoke set
#   CUTLASS_INCLUDE_DIR CUTLASS/CuTe headers; default: the nvidia-cutlass wheel's headers

set(JAX_GNA_BUILT_CUDA_ARCHS "")

set(_with_cuda OFF)
string(TOUPPER "${JAX_GNA_CUDA}" _cuda_mode)
if(_cuda_mode STREQUAL "AUTO")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(_with_cuda ON)
  else()
    message(STATUS "jax_gna: nvcc not found, building without CUDA kernels (JAX_GNA_CUDA=AUTO)")
  endif()
elseif(_cuda_mode MATCHES "^(ON|1|TRUE|YES)$")
  set(_with_cuda ON)
elseif(NOT _cuda_mode MATCHES "^(OFF|0|FALSE|NO)$")
  message(FATAL_ERROR "JAX_GNA_CUDA must be AUTO, ON or OFF, got '${JAX_GNA_CUDA}'")
endif()
if(NOT _with_cuda)
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

# Kernel families: <arch>:<folder under cuda/>.
foreach(_family "90a:sm90" "100a:sm100")
  string(REPLACE ":" ";" _family "${_family}")
  list(GET _family 0 _arch)
  list(GET _family 1 _dir)
  if(NOT _arch IN_LIST JAX_GNA_CUDA_ARCHS)
    continue()
  endif()
  set(GNA_FAMILY_SOURCES "")
  if(EXISTS "${PROJECT_SOURCE_DIR}/cuda/${_dir}/sources.cmake")
    include("${PROJECT_SOURCE_DIR}/cuda/${_dir}/sources.cmake")
  else()
    file(GLOB_RECURSE GNA_FAMILY_SOURCES CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/cuda/${_dir}/*.cu")
  endif()
  if(NOT GNA_FAMILY_SOURCES)
    message(STATUS "jax_gna: no ${_dir} kernel sources, skipping arch ${_arch}")
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
  list(LENGTH GNA_FAMILY_SOURCES _count)
  message(STATUS "jax_gna: ${_dir} kernels for ${_arch}: ${_count} translation unit(s), "
                 "kernel set '${JAX_GNA_KERNEL_SET}'")
endforeach()

if(NOT JAX_GNA_BUILT_CUDA_ARCHS)
  set(_note "no kernel family was built (arch list '${JAX_GNA_CUDA_ARCHS}')")
  if(_cuda_mode STREQUAL "AUTO")
    message(STATUS "jax_gna: ${_note}; building without CUDA handlers")
    return()
  endif()
  message(WARNING "jax_gna: JAX_GNA_CUDA=ON but ${_note}; the CUDA handlers will refuse every call")
endif()

# Host-side handlers (plain C++ with the CUDA runtime headers); static cudart so the module
# imports on machines without a GPU driver.
target_sources(_ext PRIVATE "${PROJECT_SOURCE_DIR}/cuda/ffi/cuda_handlers.cc")
string(REPLACE ";" "," _archs_csv "${JAX_GNA_BUILT_CUDA_ARCHS}")
target_compile_definitions(_ext PRIVATE JAX_GNA_WITH_CUDA=1 JAX_GNA_CUDA_ARCHS="${_archs_csv}")
# _ext has no device code of its own (the kernels are in the object libraries above).
set_target_properties(_ext PROPERTIES CUDA_RUNTIME_LIBRARY Static CUDA_ARCHITECTURES OFF)
target_link_libraries(_ext PRIVATE CUDA::cudart_static)
