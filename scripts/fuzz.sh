#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the libFuzzer targets of tests/fuzz with clang++-14 (-fsanitize=fuzzer,address,undefined;
# the main build uses g++, so they are compiled here directly) and runs each for a bounded time
# from its seed corpus tests/fuzz/corpus/<target> (which holds the inputs that found bugs: every
# run replays them first). New inputs go to a scratch corpus, never into the repository. Any
# crash, sanitizer report or failed FUZZ_CHECK fails the script; its input is kept under
# <out>/artifacts. docs/reliability.md.
#
#   scripts/fuzz.sh [--time SECONDS] [--runs N] [--out DIR] [--jobs N] [target ...]
#     --time  seconds per target (default 20)     --runs  inputs per target instead of a time
#     --out   build directory (default build/fuzz) --jobs  parallel compiles (default 2)
#     targets: route plan grouped_gemm layer_args (default: all)
# Exit 77 (skipped) when clang++-14 with libFuzzer is not available.
set -euo pipefail
cd "$(dirname "$0")/.."
time_s=20 runs="" out=build/fuzz jobs=2 targets=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --time) time_s=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=(route plan grouped_gemm layer_args)

cxx=${MOE_FUZZ_CXX:-clang++-14}
if ! command -v "$cxx" >/dev/null; then
  echo "fuzz: $cxx not found (Debian: apt-get install clang-14): skipped"; exit 77
fi
mkdir -p "$out/artifacts"
probe="$out/probe.cpp"
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' >"$probe"
if ! "$cxx" -fsanitize=fuzzer "$probe" -o "$out/probe" 2>/dev/null; then
  echo "fuzz: $cxx cannot link libFuzzer (-fsanitize=fuzzer): skipped"; exit 77
fi
launcher=""
if command -v ccache >/dev/null; then launcher=ccache; fi
flags=(-std=c++20 -Iinclude -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -fno-omit-frame-pointer)

start=$SECONDS
echo "== fuzz: building ${targets[*]} with $cxx"
pids=()
for t in "${targets[@]}"; do
  $launcher "$cxx" "${flags[@]}" "tests/fuzz/fuzz_$t.cpp" -o "$out/fuzz_$t" &
  pids+=($!)
  if [[ ${#pids[@]} -ge $jobs ]]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
echo "== fuzz: built in $((SECONDS - start)) s"

status=0
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  seeds=tests/fuzz/corpus/$t
  mkdir -p "$seeds"
  bound=(-max_total_time="$time_s")
  [[ -n $runs ]] && bound=(-runs="$runs")
  log="$out/$t.log"
  t0=$SECONDS
  if ASAN_OPTIONS=detect_leaks=1 "$out/fuzz_$t" "$work" "$seeds" "${bound[@]}" -timeout=20 \
       -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED; status=1
    grep -E "FUZZ_CHECK|ERROR|runtime error|SUMMARY|Test unit written" "$log" | head -n 20 || true
  fi
  units=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  echo "fuzz_$t: $result, ${units:-?} inputs in $((SECONDS - t0)) s ($(ls "$seeds" | wc -l) seeds, log $log)"
  rm -rf "$work"
done
echo "== fuzz: done in $((SECONDS - start)) s"
exit "$status"
