#!/usr/bin/env bash
# One-stop set-up for a fresh Debian machine: installs the Debian packages Lockstep
# needs (only those missing), configures and builds, then either opens the workbench
# (`run`, the default) or runs the whole test suite (`test`).
#
#   scripts/setup.sh run     install, build, open the workbench on its demo
#   scripts/setup.sh test    install, build, run every test (what CI runs)
#   scripts/setup.sh deps    install the packages only
#   scripts/setup.sh build   install and build only
#
# Environment: BUILD_DIR (default build), JOBS (default: all cores),
# LOCKSTEP_CUDA / LOCKSTEP_GUI (AUTO|ON|OFF, default AUTO), LOCKSTEP_SANITIZE (default ON:
# `test` also builds and runs the suite under AddressSanitizer+UBSan; OFF skips that).
set -euo pipefail

mode=${1:-run}
case "$mode" in
  run|test|deps|build) ;;
  -h|--help) sed -n '2,/^$/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup.sh: unknown mode '$mode' (expected run, test, deps or build)" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}

packages=(
  build-essential cmake ninja-build pkg-config git
  libimgui-dev libglfw3-dev libgl-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
  libbenchmark-dev libpcre2-dev libstb-dev xvfb xauth xdotool libx11-dev
  clang libfuzzer-14-dev libclang-rt-14-dev
)

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: all ${#packages[@]} Debian packages present"
    return
  fi
  echo "setup: installing ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

configure_and_build() {
  local dir=$1; shift
  local cuda_root=()
  [ -x /usr/local/cuda/bin/nvcc ] && cuda_root=(-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DLOCKSTEP_CUDA="${LOCKSTEP_CUDA:-AUTO}" -DLOCKSTEP_GUI="${LOCKSTEP_GUI:-AUTO}" \
    "${cuda_root[@]}" "$@"
  cmake --build "$dir" -j "$jobs"
}

install_packages
[ "$mode" = deps ] && exit 0
configure_and_build "$build"
[ "$mode" = build ] && exit 0

if [ "$mode" = run ]; then
  exec scripts/open-workbench.sh "$build/app/lockstep"
fi

# test: the whole suite, then a short fuzz smoke run, then (optionally) the sanitizer build.
status=0
ctest --test-dir "$build" --output-on-failure -j "$jobs" || status=1
scripts/fuzz.sh smoke || status=1
if [ "${LOCKSTEP_SANITIZE:-ON}" = ON ]; then
  LOCKSTEP_CUDA=OFF LOCKSTEP_GUI=OFF configure_and_build "$build-asan" -DLOCKSTEP_SANITIZE=ON
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir "$build-asan" --output-on-failure -j "$jobs" || status=1
fi
exit $status
