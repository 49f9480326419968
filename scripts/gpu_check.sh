#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The one-command GPU check, for a machine with a GPU, CUDA, CMake and Ninja but possibly no
# network (docs/gpu-check.md):
#   1. builds the CUDA targets for this GPU's architecture (nvidia-smi's compute capability;
#      sm_90 is built as sm_90a so that Hopper-only paths are included),
#   2. runs the ctest tests labelled gpu, kernels and cuda (the CPU-only tests run in CI),
#   3. runs the gpu test binary under compute-sanitizer memcheck, racecheck and synccheck, and
#      the CUDA layer over NCCL under memcheck,
#   4. runs the CUDA benchmarks (short repetitions; in `all` and `extra` before racecheck and
#      synccheck, so that a cap cuts the sanitizers rather than the figures),
#   5. writes one report: GPU, driver, date, and every result above.
# Device time is scarce, so every step after the build has a wall-clock cap (seconds, from the
# environment): MOE_CHECK_CTEST_S (180), MOE_CHECK_SANITIZER_S (100 per tool),
# MOE_CHECK_RACECHECK_S (300), MOE_CHECK_SANITIZER_NCCL_S (60), MOE_CHECK_BENCH_S (150); a
# step that hits its cap is reported as such. MOE_CHECK_BENCH_FILTER (a Google Benchmark
# regex, default all) narrows the benchmarks to those a run needs. On an H200 (2026-11-26) the build took 100 s on
# 16 cores, ctest 94 s, the benchmarks 30 s, memcheck 42 s, synccheck 32 s, the NCCL memcheck
# 22 s, racecheck about 4 minutes: `all` fits 10 minutes with MOE_CHECK_RACECHECK_S=200 or
# less; `tests` and `extra` each fit on their own.
# doctest and Google Benchmark come from the system, or from .deps/ (scripts/bring_deps.sh).
#
#   bash scripts/gpu_check.sh [REPORT_DIR [PHASE]]   (REPORT_DIR: $OUT if set, else ./gpu-report)
#
# PHASE splits the check over two calls of at most 10 minutes on one warm machine (the build
# directory stays there between calls): `tests` builds and runs ctest and memcheck (the gpu
# tests, the NCCL layer); `extra` runs racecheck, synccheck and the benchmarks on that build;
# `all` (the default) does both in one call; `bench` builds and runs only the benchmarks
# (with MOE_CHECK_BENCH_FILTER, a short call for figures). Caps' defaults per phase are in the script.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-report}}"
phase="${2:-all}"
case "$phase" in all|tests|extra|bench) ;; *) echo "gpu_check: PHASE is all, tests, extra or bench" >&2; exit 2;; esac
mkdir -p "$out"
report="$out/gpu-report.md"
want() { [[ "$phase" == all || "$phase" == "$1" ]]; }
bench_only() { [[ "$phase" == bench ]]; }
build=build/gpu
jobs="$(nproc)"
export PATH="/usr/local/cuda/bin:$PATH"

smi() { nvidia-smi --query-gpu="$1" --format=csv,noheader 2>/dev/null | head -n 1; }
gpu_name="$(smi name)"; driver="$(smi driver_version)"; cc="$(smi compute_cap)"
if [[ -z "$cc" ]]; then echo "gpu_check: no GPU visible to nvidia-smi" | tee "$report"; exit 1; fi
arch="${cc/./}"
[[ "$arch" == 90 ]] && arch=90a

{
  echo "# moe GPU check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- GPU: $gpu_name (compute capability $cc), driver $driver; built for sm_$arch; phase $phase"
  echo "- nvcc: $(nvcc --version | tail -n 1)"
  echo "- cmake: $(cmake --version | head -n 1)"
} > "$report"

cfg=(-S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_ENABLE_CUDA=ON
     -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DCMAKE_CUDA_ARCHITECTURES="${arch}-real")
[[ -f .deps/doctest/doctest/doctest.h ]] && cfg+=(-DMOE_DOCTEST_DIR="$PWD/.deps/doctest")
[[ -d .deps/benchmark ]] && cfg+=(-DMOE_BENCHMARK_DIR="$PWD/.deps/benchmark")
cfg+=(-DMOE_BENCH_GEMM_TILES=ON)  # the tile-shape sweep (benchmarks/cuda/gemm_tiles.cu)
if command -v ccache >/dev/null; then
  cfg+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
# NCCL: the CUDA toolkit's, else the one PyTorch's environment ships (pip nvidia-nccl-cu13:
# include/nccl.h and lib/libnccl.so.2), found through python3.
if [[ ! -f /usr/local/cuda/include/nccl.h && -z "${NCCL_ROOT:-}" ]]; then
  NCCL_ROOT="$(python3 -c 'import os, nvidia.nccl as n; print(os.path.dirname(n.__file__))' \
               2>/dev/null || true)"
fi
if [[ -n "${NCCL_ROOT:-}" ]]; then
  cfg+=(-DNCCL_ROOT="$NCCL_ROOT")
  export LD_LIBRARY_PATH="$NCCL_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "- NCCL: $NCCL_ROOT" >> "$report"
fi

section() { printf '\n## %s\n\n```\n' "$1" >> "$report"; }
end_section() { printf '```\n' >> "$report"; }
failed=0

section "build"
start=$SECONDS
# One parallel build of every target there is (the NCCL, MPI and benchmark targets exist only
# where their libraries were found); -k 0 builds what it can, and only the gpu test binary and
# the example are required to go on.
targets=(moe_cuda_tests moe_cuda_nodevice_tests moe_cuda_layer_example)
required=(tests/moe_cuda_tests examples/moe_cuda_layer_example)
if bench_only; then targets=(); required=(benchmarks/moe_bench_cuda); fi
if ! cmake "${cfg[@]}" > "$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log" >> "$report"; end_section
  echo "BUILD FAILED (configure)" >> "$report"; cat "$report"; exit 1
fi
available="$(cmake --build "$build" --target help 2>/dev/null)"
for t in moe_nccl_tests moe_nccl_mpi_tests moe_layer_ep_nccl_tests moe_bench_cuda; do
  bench_only && [[ $t != moe_bench_cuda ]] && continue
  grep -q "^$t:" <<< "$available" && targets+=("$t")
done
if ! cmake --build "$build" -j "$jobs" --target "${targets[@]}" -- -k 0 >> "$out/build.log" 2>&1; then
  grep -E "error|Error" "$out/build.log" | head -n 40 >> "$report"
  echo "some targets failed to build (build.log)" >> "$report"
fi
for t in "${required[@]}"; do
  if [[ ! -x "$build/$t" ]]; then
    end_section; echo "BUILD FAILED: $t" >> "$report"; cat "$report"; exit 1
  fi
done
echo "built in $((SECONDS - start)) s: ${targets[*]}" >> "$report"
for t in tests/moe_nccl_tests benchmarks/moe_bench_cuda; do
  bench_only && [[ $t != benchmarks/moe_bench_cuda ]] && continue
  [[ -x "$build/$t" ]] || echo "not built: $t (NCCL or Google Benchmark missing; see build.log)" >> "$report"
done
end_section

if want tests; then
section "ctest (labels gpu, kernels, cuda)"
start=$SECONDS
timeout "${MOE_CHECK_CTEST_S:-180}" ctest --test-dir "$build" -L "gpu|kernels|cuda" -j 2 \
  --output-on-failure --timeout 240 > "$out/ctest.log" 2>&1 || failed=1
grep -E "tests passed|tests failed|\*\*\*|Skipped|Failed" "$out/ctest.log" >> "$report"
echo "ctest took $((SECONDS - start)) s" >> "$report"; end_section

fi

if want extra || bench_only; then
section "CUDA benchmarks"
if [[ -x "$build/benchmarks/moe_bench_cuda" ]]; then
  timeout "${MOE_CHECK_BENCH_S:-150}" "$build/benchmarks/moe_bench_cuda" \
    --benchmark_min_time=0.05 --benchmark_filter="${MOE_CHECK_BENCH_FILTER:-.}" \
    --benchmark_out="$out/bench-cuda.json" \
    --benchmark_out_format=json > "$out/bench-cuda.txt" 2>&1
  rc=$?
  [[ $rc == 124 ]] && echo "stopped at the ${MOE_CHECK_BENCH_S:-150} s cap" >> "$out/bench-cuda.txt"
  [[ $rc != 0 && $rc != 124 ]] && failed=1
  cat "$out/bench-cuda.txt" >> "$report"
else
  echo "moe_bench_cuda not built (Google Benchmark missing: run scripts/bring_deps.sh)" >> "$report"
fi
end_section
fi

sanitizer="$(command -v compute-sanitizer || true)"
tools=()
want tests && tools+=(memcheck)
want extra && tools+=(racecheck synccheck)
for tool in "${tools[@]}"; do
  section "compute-sanitizer --tool $tool (gpu tests)"
  if [[ -z "$sanitizer" ]]; then echo "compute-sanitizer not found" >> "$report"; end_section; continue; fi
  # The exhaustive conversion sweeps would take hours under the sanitizer: stride them.
  # racecheck is the slow one (about 4 minutes for the whole binary on an H200): its own cap.
  cap="${MOE_CHECK_SANITIZER_S:-100}"
  [[ $tool == racecheck ]] && cap="${MOE_CHECK_RACECHECK_S:-300}"
  MOE_TEST_FLOAT_STRIDE=65521 timeout "$cap" "$sanitizer" --tool "$tool" \
    --error-exitcode 99 "$build/tests/moe_cuda_tests" > "$out/sanitizer-$tool.log" 2>&1
  rc=$?
  [[ $rc == 124 ]] && echo "stopped at the $cap s cap" >> "$report"
  [[ $rc != 0 && $rc != 124 ]] && failed=1
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test cases|assertions" "$out/sanitizer-$tool.log" \
    >> "$report"
  end_section
done

if want tests; then
section "compute-sanitizer --tool memcheck (the CUDA layer over NCCL)"
if [[ -n "$sanitizer" && -x "$build/tests/moe_nccl_tests" ]]; then
  # --report-api-errors no: ncclCommInitRank asks cudaFuncGetAttributes about NCCL's kernels
  # built for other architectures and handles the cudaErrorNoKernelImageForDevice it gets (20
  # such "errors" on an H200, 2026-11-26); moe's own CUDA calls are checked by the tests.
  timeout "${MOE_CHECK_SANITIZER_NCCL_S:-60}" "$sanitizer" --tool memcheck --error-exitcode 99 \
    --report-api-errors no \
    "$build/tests/moe_nccl_tests" --source-file='*test_layer_nccl.cu' \
    > "$out/sanitizer-memcheck-nccl.log" 2>&1
  rc=$?
  [[ $rc == 124 ]] && echo "stopped at the ${MOE_CHECK_SANITIZER_NCCL_S:-60} s cap" >> "$report"
  [[ $rc != 0 && $rc != 124 ]] && failed=1
  grep -E "ERROR SUMMARY|test cases|assertions" "$out/sanitizer-memcheck-nccl.log" >> "$report"
else
  echo "compute-sanitizer or moe_nccl_tests missing" >> "$report"
fi
end_section
fi


echo >> "$report"
[[ $failed == 0 ]] && echo "RESULT: PASS" >> "$report" || echo "RESULT: FAIL" >> "$report"
cat "$report"
exit "$failed"
