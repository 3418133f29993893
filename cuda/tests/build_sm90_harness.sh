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
  CUTLASS_INCLUDE_DIR="$(${PYTHON:-python3} -c "import importlib.util,os;s=importlib.util.find_spec('cutlass_library');print(os.path.join(s.submodule_search_locations[0],'source','include'))")"
fi
flags=(-std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a
       -Icuda/include -I"$CUTLASS_INCLUDE_DIR" -Xptxas=-warn-spills)
[ "$set_" = smoke ] && flags+=(-DGNA_KERNEL_SET_SMOKE)
# shellcheck disable=SC2206
flags+=(${EXTRA_NVCC_FLAGS:-})
jobs="${JOBS:-2}"
objs=()
pids=()
for src in cuda/sm90/instantiations/*.cu cuda/sm90/fwd_dispatch.cu; do
  obj="$out/$(basename "${src%.cu}").o"
  objs+=("$obj")
  if [ "$obj" -nt "$src" ] && [ -z "${FORCE:-}" ] && ! find cuda/sm90 cuda/include -newer "$obj" | grep -q .; then
    continue
  fi
  ( /usr/bin/time -f "$src: %e s, %M KB" nvcc "${flags[@]}" -c "$src" -o "$obj" ) &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
done
for p in "${pids[@]}"; do wait "$p"; done
nvcc "${flags[@]}" -Xcompiler -fopenmp cuda/tests/sm90_fwd_harness.cu "${objs[@]}" -o "$out/sm90_fwd_harness" -lgomp
echo "built $out/sm90_fwd_harness ($set_)"
