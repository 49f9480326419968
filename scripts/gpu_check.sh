#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The one-command GPU check, for a machine with a GPU, CUDA, CMake and Ninja but possibly no
# network (docs/gpu-check.md):
#   1. builds every target for this GPU's architecture (nvidia-smi's compute capability;
#      sm_90 is built as sm_90a so that Hopper-only paths are included),
#   2. runs every ctest test, gpu ones included,
#   3. runs the gpu test binary under compute-sanitizer memcheck, racecheck and synccheck,
#   4. runs the CUDA benchmarks,
#   5. writes one report: GPU, driver, date, and every result above.
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
if ! { cmake "${cfg[@]}" && cmake --build "$build" -j "$jobs"; } > "$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log" >> "$report"; end_section
  echo "BUILD FAILED" >> "$report"; cat "$report"; exit 1
fi
echo "built in $((SECONDS - start)) s" >> "$report"; end_section

section "ctest (all tests, gpu included)"
start=$SECONDS
ctest --test-dir "$build" -j 4 --output-on-failure --timeout 900 > "$out/ctest.log" 2>&1 || failed=1
grep -E "tests passed|tests failed|\*\*\*|Skipped|Failed" "$out/ctest.log" >> "$report"
echo "ctest took $((SECONDS - start)) s" >> "$report"; end_section

sanitizer="$(command -v compute-sanitizer || true)"
for tool in memcheck racecheck synccheck; do
  section "compute-sanitizer --tool $tool (gpu tests)"
  if [[ -z "$sanitizer" ]]; then echo "compute-sanitizer not found" >> "$report"; end_section; continue; fi
  # The exhaustive conversion sweeps would take hours under the sanitizer: stride them.
  MOE_TEST_FLOAT_STRIDE=65521 "$sanitizer" --tool "$tool" --error-exitcode 99 \
    "$build/tests/moe_cuda_tests" > "$out/sanitizer-$tool.log" 2>&1 || failed=1
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test cases|assertions" "$out/sanitizer-$tool.log" \
    >> "$report"
  end_section
done

section "CUDA benchmarks"
if [[ -x "$build/benchmarks/moe_bench_cuda" ]]; then
  "$build/benchmarks/moe_bench_cuda" --benchmark_out="$out/bench-cuda.json" \
    --benchmark_out_format=json > "$out/bench-cuda.txt" 2>&1 || failed=1
  cat "$out/bench-cuda.txt" >> "$report"
else
  echo "moe_bench_cuda not built (Google Benchmark missing: run scripts/bring_deps.sh)" >> "$report"
fi
end_section

echo >> "$report"
[[ $failed == 0 ]] && echo "RESULT: PASS" >> "$report" || echo "RESULT: FAIL" >> "$report"
cat "$report"
exit "$failed"
