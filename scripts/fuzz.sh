#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan) and runs them.
#   scripts/fuzz.sh smoke            each target for FUZZ_SECONDS (default 10) seconds: CI
#   scripts/fuzz.sh long [SECONDS]   each target for SECONDS (default 3600), both cores,
#                                    corpus kept in fuzz-corpus/<target>/ between runs
# Seeds come from tests/data/malformed/<format>/. A crash leaves its input in
# fuzz-corpus/crashes/ and fails the script.
set -euo pipefail
mode=${1:-smoke}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${FUZZ_BUILD_DIR:-build-fuzz}
case "$mode" in
  smoke) seconds=${FUZZ_SECONDS:-10} ;;
  long) seconds=${2:-3600} ;;
  *) echo "fuzz.sh: unknown mode '$mode' (smoke or long)" >&2; exit 2 ;;
esac
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ is missing (scripts/setup.sh deps)" >&2; exit 2; }

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DLOCKSTEP_FUZZ=ON -DLOCKSTEP_TESTS=OFF -DLOCKSTEP_BENCH=OFF -DLOCKSTEP_CUDA=OFF -DLOCKSTEP_GUI=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null

mkdir -p fuzz-corpus/crashes
status=0
for exe in "$build"/tests/fuzz/*_fuzz; do
  name=$(basename "$exe")
  format=${name%_fuzz}
  corpus=fuzz-corpus/$name
  mkdir -p "$corpus"
  seeds=()
  [ -d "tests/data/malformed/$format" ] && seeds=("tests/data/malformed/$format")
  jobs=1
  [ "$mode" = long ] && jobs=$(nproc)
  log=$(mktemp)
  if ASAN_OPTIONS=allocator_may_return_null=0 "$exe" "$corpus" "${seeds[@]}" \
      -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536 \
      -timeout=10 -workers="$jobs" -jobs="$jobs" -artifact_prefix=fuzz-corpus/crashes/"$name"- \
      -print_final_stats=1 >"$log" 2>&1; then
    # With -jobs, each worker's statistics land in fuzz-<N>.log in the current directory.
    runs=$(cat "$log" fuzz-*.log 2>/dev/null | grep -h 'stat::number_of_executed_units' |
      awk '{s+=$2} END {print s+0}')
    echo "fuzz: $name ok, $runs executions in ${seconds}s, corpus $(ls "$corpus" | wc -l) inputs"
  else
    echo "fuzz: $name FAILED; input kept in fuzz-corpus/crashes/; log:"
    cat "$log" fuzz-*.log 2>/dev/null | grep -v '^#' | tail -n 40
    status=1
  fi
  rm -f "$log" fuzz-*.log
done
exit $status
