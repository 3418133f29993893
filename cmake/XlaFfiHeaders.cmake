# Locates the XLA FFI headers and refuses API versions newer than the oldest runtime we support.
#
# XLA_FFI_INCLUDE_DIR (cache) wins; otherwise the headers of the jax in the build environment
# (jax.ffi.include_dir()). A handler reports the API version of the headers it was built with
# and the XLA runtime refuses newer ones, so build against the jax you run (pip's
# --no-build-isolation does). Seen here: jaxlib 0.10.2 is API 0.3, jaxlib 0.11.2 is 0.4; jaxlib
# 0.12 is 0.5, which we do not support yet.

set(JAX_GNA_MAX_XLA_FFI_API_MINOR 4)

if(NOT XLA_FFI_INCLUDE_DIR)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import jax.ffi; print(jax.ffi.include_dir())"
    OUTPUT_VARIABLE XLA_FFI_INCLUDE_DIR
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _jax_result)
  if(NOT _jax_result EQUAL 0)
    message(FATAL_ERROR
      "Could not import jax to find the XLA FFI headers. Install jax>=0.10,<0.12 in the build "
      "environment (with --no-build-isolation: in the active environment) or set "
      "XLA_FFI_INCLUDE_DIR to a directory holding xla/ffi/api/ffi.h.")
  endif()
endif()

set(_c_api "${XLA_FFI_INCLUDE_DIR}/xla/ffi/api/c_api.h")
if(NOT EXISTS "${_c_api}")
  message(FATAL_ERROR "XLA FFI headers not found: ${_c_api} does not exist.")
endif()
file(STRINGS "${_c_api}" _major_line REGEX "^#define XLA_FFI_API_MAJOR [0-9]+")
file(STRINGS "${_c_api}" _minor_line REGEX "^#define XLA_FFI_API_MINOR [0-9]+")
string(REGEX MATCH "[0-9]+$" XLA_FFI_API_MAJOR "${_major_line}")
string(REGEX MATCH "[0-9]+$" XLA_FFI_API_MINOR "${_minor_line}")
if(NOT XLA_FFI_API_MAJOR STREQUAL "0" OR XLA_FFI_API_MINOR GREATER JAX_GNA_MAX_XLA_FFI_API_MINOR)
  message(FATAL_ERROR
    "The XLA FFI headers in ${XLA_FFI_INCLUDE_DIR} are API ${XLA_FFI_API_MAJOR}."
    "${XLA_FFI_API_MINOR}, newer than jax_gna supports (API <= 0.${JAX_GNA_MAX_XLA_FFI_API_MINOR}: "
    "jaxlib 0.10/0.11). Build against jax/jaxlib "
    ">=0.10,<0.12 (pip install --no-build-isolation with such a jax installed), or point "
    "XLA_FFI_INCLUDE_DIR at headers of API <= 0.${JAX_GNA_MAX_XLA_FFI_API_MINOR}.")
endif()
message(STATUS "XLA FFI headers: ${XLA_FFI_INCLUDE_DIR} (API ${XLA_FFI_API_MAJOR}.${XLA_FFI_API_MINOR})")
