#!/usr/bin/env bash
# The Bazel build in CI (called by .ci/run): every target of the workspace built and the host-side
# tests run, offline, with Debian's Bazel 4. With nvcc on PATH the extension includes the sm90
# and sm100 kernels (JAX_GNA_KERNEL_SET, default smoke here: bf16, head dim 128; sm100: one
# forward and one backward kernel).
#
# Usage: bazel/ci.sh   (the Python with jax and nanobind: $JAX_GNA_PYTHON, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

packages=(bazel-bootstrap bazel-platforms bazel-skylib)
if ! command -v bazel >/dev/null || [ ! -d /usr/share/bazel/tools/platforms ] ||
  [ ! -d /usr/share/bazel/tools/skylib ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "bazel/ci.sh: Bazel is missing; install Debian's ${packages[*]} (as root: apt-get" \
      "install -y ${packages[*]}) and run this again" >&2
    exit 1
  fi
  echo "== apt-get install ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${packages[@]}" >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q "${packages[@]}" >/dev/null; }
fi

export JAX_GNA_PYTHON="${JAX_GNA_PYTHON:-$(command -v python3)}"
export JAX_GNA_KERNEL_SET="${JAX_GNA_KERNEL_SET:-smoke}"
# nanobind and the CUTLASS headers: `pip install -e .` keeps them in its isolated build env.
if command -v nvcc >/dev/null; then
  cuda="nvcc found: _ext includes the sm_90a and sm_100a kernels (kernel set $JAX_GNA_KERNEL_SET)"
  "$JAX_GNA_PYTHON" -c "import importlib.util as u; exit(u.find_spec('cutlass_library') is None)" ||
    "$JAX_GNA_PYTHON" -m pip install -q --no-deps "nvidia-cutlass==4.2.0.0"
else
  cuda="no nvcc: CPU handlers only"
fi
"$JAX_GNA_PYTHON" -c "import nanobind" 2>/dev/null ||
  "$JAX_GNA_PYTHON" -m pip install -q "nanobind>=2.4"
version="$(dpkg-query -W -f '${Version}' bazel-bootstrap 2>/dev/null || echo '?')"
echo "== bazel test //... (bazel-bootstrap $version; $JAX_GNA_PYTHON; $cuda)"

# Bazel's install and output bases in a temporary folder: nothing outside it, nothing kept.
root="$(mktemp -d)"
bazel=(bazel --batch "--output_user_root=$root")
cleanup() { chmod -R u+w "$root" 2>/dev/null || true; rm -rf "$root"; }
trap cleanup EXIT

set +e
"${bazel[@]}" test //... --color=no --curses=no --show_progress_rate_limit=30
rc=$?
set -e
logs="$("${bazel[@]}" info bazel-testlogs 2>/dev/null)"
for test in geometry_test extension_test; do
  summary="$(grep -E '[0-9]+ checks|[0-9]+ (passed|failed)' "$logs/$test/test.log" 2>/dev/null |
    tail -n 1 | tr -s '=' ' ')"
  echo "   $test: ${summary:-no summary (see the log above)}"
done
echo "   Bazel took $((SECONDS - start)) s"
exit "$rc"
