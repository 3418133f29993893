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
# One object per kernel, as cuda/sm90/sources.cmake builds them (smoke: bf16, head dim 128;
# tile configurations as in fwd_config.h: two for ranks 2 and 3 at head dims <= 128, else one).
configs() { if [ "$2" = 1 ] || [ "$1" -gt 128 ]; then echo 0; else echo 0 1; fi; }
kernels=()
if [ "$set_" = smoke ]; then
  types=(kBF16) dims=(128)
else
  types=(kF16 kBF16) dims=(32 64 128 256)
fi
for t in "${types[@]}"; do for d in "${dims[@]}"; do for r in 1 2 3; do
  for c in $(configs "$d" "$r"); do kernels+=("$t $d $r $c"); done
done; done; done
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
  read -r t d r c <<<"$k"
  compile "$out/fwd_${t}_d${d}_r${r}_c${c}.o" -DGNA_FWD_DTYPE="$t" -DGNA_FWD_HEAD_DIM="$d" \
    -DGNA_FWD_RANK="$r" -DGNA_FWD_CONFIG="$c" -c cuda/sm90/fwd_instance.cu
done
compile "$out/fwd_dispatch.o" -c cuda/sm90/fwd_dispatch.cu
for p in "${pids[@]}"; do wait "$p"; done
nvcc "${flags[@]}" -Xcompiler -fopenmp cuda/tests/sm90_fwd_harness.cu "${objs[@]}" -o "$out/sm90_fwd_harness" -lgomp
echo "built $out/sm90_fwd_harness ($set_)"
