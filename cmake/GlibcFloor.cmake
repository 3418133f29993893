# JAX_GNA_GLIBC_FLOOR (e.g. 2.28; empty: off): link the extension so that it loads with that
# glibc and a libstdc++ of any age, whatever the build machine's glibc and g++ are; release
# wheels use 2.28 (manylinux_2_28, the floor of jax's own CUDA plugins) without a manylinux image.
#
# The objects are compiled as usual (g++, nvcc); only the final link differs:
# - libstdc++ is linked statically (g++'s libstdc++.a), with every symbol but PyInit_* kept
#   local (glibc_floor/exports.map), so the module neither needs a newer libstdc++.so.6 than
#   the system has nor clashes with another module's C++ runtime. The unwinder stays the
#   system's libgcc_s.so.1 (its symbol versions are old): the static libgcc_eh of a recent g++
#   calls glibc functions a 2.28 system lacks.
# - glibc symbols bind to the floor's versions: zig (the `ziglang` package in the build
#   environment) links against stub libraries of that glibc release, where pthread_create, dlopen
#   and others still have their pre-2.34 versions (they moved into libc.so.6 with new versions in
#   2.34; the static CUDA runtime calls many of them).
# - __libc_single_threaded (glibc 2.32+, read by libstdc++'s inline code when the build
#   machine's headers declare it) gets a local stand-in (glibc_floor/single_threaded.cc).
# A symbol the floor lacks stays unversioned in the module: scripts/build_wheels rejects such
# wheels (scripts/unversioned_imports.py), as auditwheel does not see them.
set(JAX_GNA_GLIBC_FLOOR "" CACHE STRING "Link the extension for this glibc release (e.g. 2.28)")
if(NOT JAX_GNA_GLIBC_FLOOR)
  return()
endif()
if(NOT JAX_GNA_GLIBC_FLOOR MATCHES "^2\\.[0-9]+$")
  message(FATAL_ERROR "JAX_GNA_GLIBC_FLOOR must be a glibc release such as 2.28, got "
                      "'${JAX_GNA_GLIBC_FLOOR}'")
endif()
if(NOT CMAKE_SYSTEM_NAME STREQUAL "Linux" OR NOT CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  message(FATAL_ERROR "JAX_GNA_GLIBC_FLOOR needs Linux and g++ (found ${CMAKE_SYSTEM_NAME}, "
                      "${CMAKE_CXX_COMPILER_ID})")
endif()

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))"
  OUTPUT_VARIABLE _zig OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT EXISTS "${_zig}")
  message(FATAL_ERROR "JAX_GNA_GLIBC_FLOOR needs zig: pip install ziglang (into the build "
                      "environment)")
endif()
foreach(_name libstdc++.a libgcc_s.so.1)
  execute_process(
    COMMAND "${CMAKE_CXX_COMPILER}" -print-file-name=${_name}
    OUTPUT_VARIABLE _path OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT IS_ABSOLUTE "${_path}" OR NOT EXISTS "${_path}")
    message(FATAL_ERROR "JAX_GNA_GLIBC_FLOOR: ${CMAKE_CXX_COMPILER} has no ${_name}")
  endif()
  list(APPEND _runtime "${_path}")
endforeach()

set(_target "${CMAKE_SYSTEM_PROCESSOR}-linux-gnu.${JAX_GNA_GLIBC_FLOOR}")
list(JOIN _runtime " " _runtime)
# The module link rule (the extension is the project's only MODULE library): CMake's own, with
# zig cc in place of g++ and the C++ runtime named explicitly.
set(CMAKE_CXX_CREATE_SHARED_MODULE
    "\"${_zig}\" cc -target ${_target} <CMAKE_SHARED_MODULE_CXX_FLAGS> <LANGUAGE_COMPILE_FLAGS> <LINK_FLAGS> <CMAKE_SHARED_MODULE_CREATE_CXX_FLAGS> -o <TARGET> <OBJECTS> <LINK_LIBRARIES> ${_runtime}")
target_sources(_ext PRIVATE "${CMAKE_CURRENT_LIST_DIR}/glibc_floor/single_threaded.cc")
target_link_options(_ext PRIVATE
  "-Wl,--version-script=${CMAKE_CURRENT_LIST_DIR}/glibc_floor/exports.map")
set_property(TARGET _ext APPEND PROPERTY LINK_DEPENDS
  "${CMAKE_CURRENT_LIST_DIR}/glibc_floor/exports.map")
message(STATUS "jax_gna: extension linked for glibc ${JAX_GNA_GLIBC_FLOOR} (zig cc -target "
               "${_target}), libstdc++ static")
