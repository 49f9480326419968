#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The one-command GPU check, for a machine with a GPU, CUDA, CMake and Ninja but possibly no
# network (docs/gpu-check.md):
#   1. builds the CUDA targets for this GPU's architecture (nvidia-smi's compute capability;
#      sm_90 is built as sm_90a so that Hopper-only paths are included),
#   2. runs the ctest tests labelled gpu, kernels and cuda (the CPU-only tests run in CI),
#   3. runs the gpu test binary under compute-sanitizer memcheck, racecheck and synccheck, and
#      the CUDA layer over NCCL under memcheck,
#   4. runs the CUDA benchmarks (short repetitions),
#   5. writes one report: GPU, driver, date, and every result above.
# Device time is scarce, so every step after the build has a wall-clock cap (seconds, from the
# environment): MOE_CHECK_CTEST_S (300), MOE_CHECK_SANITIZER_S (150 per tool),
# MOE_CHECK_SANITIZER_NCCL_S (90), MOE_CHECK_BENCH_S (150); a step that hits its cap is
# reported as such.
# doctest and Google Benchmark come from the system, or from .deps/ (scripts/bring_deps.sh).
#
#   bash scripts/gpu_check.sh [REPORT_DIR]     (default: $OUT if set, else ./gpu-report)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-report}}"
mkdir -p "$out"
report="$out/gpu-report.md"
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
  echo "- GPU: $gpu_name (compute capability $cc), driver $driver; built for sm_$arch"
  echo "- nvcc: $(nvcc --version | tail -n 1)"
  echo "- cmake: $(cmake --version | head -n 1)"
} > "$report"

cfg=(-S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_ENABLE_CUDA=ON
     -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DCMAKE_CUDA_ARCHITECTURES="${arch}-real")
[[ -f .deps/doctest/doctest/doctest.h ]] && cfg+=(-DMOE_DOCTEST_DIR="$PWD/.deps/doctest")
[[ -d .deps/benchmark ]] && cfg+=(-DMOE_BENCHMARK_DIR="$PWD/.deps/benchmark")
if command -v ccache >/dev/null; then
  cfg+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi

section() { printf '\n## %s\n\n```\n' "$1" >> "$report"; }
end_section() { printf '```\n' >> "$report"; }
failed=0

section "build"
start=$SECONDS
targets=(moe_cuda_tests moe_cuda_nodevice_tests moe_cuda_layer_example)
if ! { cmake "${cfg[@]}" && cmake --build "$build" -j "$jobs" --target "${targets[@]}" &&
       { cmake --build "$build" -j "$jobs" --target moe_nccl_tests 2>/dev/null || true; } &&
       { cmake --build "$build" -j "$jobs" --target moe_bench_cuda 2>/dev/null || true; }; } \
     > "$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log" >> "$report"; end_section
  echo "BUILD FAILED" >> "$report"; cat "$report"; exit 1
fi
echo "built in $((SECONDS - start)) s" >> "$report"; end_section

section "ctest (labels gpu, kernels, cuda)"
start=$SECONDS
timeout "${MOE_CHECK_CTEST_S:-300}" ctest --test-dir "$build" -L "gpu|kernels|cuda" -j 2 \
  --output-on-failure --timeout 240 > "$out/ctest.log" 2>&1 || failed=1
grep -E "tests passed|tests failed|\*\*\*|Skipped|Failed" "$out/ctest.log" >> "$report"
echo "ctest took $((SECONDS - start)) s" >> "$report"; end_section

sanitizer="$(command -v compute-sanitizer || true)"
for tool in memcheck racecheck synccheck; do
  section "compute-sanitizer --tool $tool (gpu tests)"
  if [[ -z "$sanitizer" ]]; then echo "compute-sanitizer not found" >> "$report"; end_section; continue; fi
  # The exhaustive conversion sweeps would take hours under the sanitizer: stride them.
  MOE_TEST_FLOAT_STRIDE=65521 timeout "${MOE_CHECK_SANITIZER_S:-150}" "$sanitizer" --tool "$tool" \
    --error-exitcode 99 "$build/tests/moe_cuda_tests" > "$out/sanitizer-$tool.log" 2>&1
  rc=$?
  [[ $rc == 124 ]] && echo "stopped at the ${MOE_CHECK_SANITIZER_S:-150} s cap" >> "$report"
  [[ $rc != 0 && $rc != 124 ]] && failed=1
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test cases|assertions" "$out/sanitizer-$tool.log" \
    >> "$report"
  end_section
done

section "compute-sanitizer --tool memcheck (the CUDA layer over NCCL)"
if [[ -n "$sanitizer" && -x "$build/tests/moe_nccl_tests" ]]; then
  timeout "${MOE_CHECK_SANITIZER_NCCL_S:-90}" "$sanitizer" --tool memcheck --error-exitcode 99 \
    "$build/tests/moe_nccl_tests" --source-file='*test_layer_nccl.cu' \
    > "$out/sanitizer-memcheck-nccl.log" 2>&1
  rc=$?
  [[ $rc == 124 ]] && echo "stopped at the ${MOE_CHECK_SANITIZER_NCCL_S:-90} s cap" >> "$report"
  [[ $rc != 0 && $rc != 124 ]] && failed=1
  grep -E "ERROR SUMMARY|test cases|assertions" "$out/sanitizer-memcheck-nccl.log" >> "$report"
else
  echo "compute-sanitizer or moe_nccl_tests missing" >> "$report"
fi
end_section

section "CUDA benchmarks"
if [[ -x "$build/benchmarks/moe_bench_cuda" ]]; then
  timeout "${MOE_CHECK_BENCH_S:-150}" "$build/benchmarks/moe_bench_cuda" \
    --benchmark_min_time=0.05 --benchmark_out="$out/bench-cuda.json" \
    --benchmark_out_format=json > "$out/bench-cuda.txt" 2>&1
  rc=$?
  [[ $rc == 124 ]] && echo "stopped at the ${MOE_CHECK_BENCH_S:-150} s cap" >> "$out/bench-cuda.txt"
  [[ $rc != 0 && $rc != 124 ]] && failed=1
  cat "$out/bench-cuda.txt" >> "$report"
else
  echo "moe_bench_cuda not built (Google Benchmark missing: run scripts/bring_deps.sh)" >> "$report"
fi
end_section

echo >> "$report"
[[ $failed == 0 ]] && echo "RESULT: PASS" >> "$report" || echo "RESULT: FAIL" >> "$report"
cat "$report"
exit "$failed"
