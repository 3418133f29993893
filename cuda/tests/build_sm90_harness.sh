#!/usr/bin/env bash
# Builds the standalone sm90 forward harness (cuda/tests/sm90_fwd_harness.cu)
# with nvcc, outside CMake: ./cuda/tests/build_sm90_harness.sh [build_dir] [smoke|full]
# CUTLASS headers: $CUTLASS_INCLUDE_DIR, else the nvidia-cutlass wheel of python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-build/sm90}"
set_="${2:-full}"
mkdir -p "$out"
if [ -z "${CUTLASS_INCLUDE_DIR:-}" ]; then
  CUTLASS_INCLUDE_DIR="$(${PYTHON:-python3} -c "import importlib.util,os;s=importlib.util.find_spec('cutlass_library');print(os.path.join(s.submodule_search_locations[0],'source','include') if s else '')")"
  if [ -z "$CUTLASS_INCLUDE_DIR" ]; then
    echo "CUTLASS headers not found: set CUTLASS_INCLUDE_DIR, or pip install nvidia-cutlass" \
      "into ${PYTHON:-python3}'s environment" >&2
    exit 1
  fi
fi
flags=(-std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a
       -Icuda/include -I"$CUTLASS_INCLUDE_DIR" -Xptxas=-warn-spills)
[ "$set_" = smoke ] && flags+=(-DGNA_KERNEL_SET_SMOKE)
# shellcheck disable=SC2206
flags+=(${EXTRA_NVCC_FLAGS:-})
jobs="${JOBS:-2}"
# One object per forward kernel of the kernel table (jax_gna/_kernel_table.py), as CMake builds
# them: lines of <file stem> <defines...>.
mapfile -t kernels < <("${PYTHON:-python3}" cuda/generate_kernel_table.py --list sm90 fwd "$set_")
((${#kernels[@]})) || { echo "build_sm90_harness.sh: no kernels listed for '$set_'" >&2; exit 1; }
stale() { [ -n "${FORCE:-}" ] || [ ! -e "$1" ] || find cuda/sm90 cuda/include -newer "$1" | grep -q .; }
objs=()
pids=()
compile() {  # compile <object> <nvcc args...>, in the background, at most $jobs at a time
  local obj="$1"
  shift
  objs+=("$obj")
  stale "$obj" || return 0
  ( /usr/bin/time -f "$obj: %e s, %M KB" nvcc "${flags[@]}" "$@" -o "$obj" ) &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
}
for k in "${kernels[@]}"; do
  read -r stem defines <<<"$k"
  # shellcheck disable=SC2086
  compile "$out/$stem.o" $(printf -- '-D%s ' $defines) -c cuda/sm90/fwd_instance.cu
done
compile "$out/fwd_dispatch.o" -c cuda/sm90/fwd_dispatch.cu
for p in "${pids[@]}"; do wait "$p"; done
nvcc "${flags[@]}" -Xcompiler -fopenmp cuda/tests/sm90_fwd_harness.cu "${objs[@]}" -o "$out/sm90_fwd_harness" -lgomp
echo "built $out/sm90_fwd_harness ($set_)"
