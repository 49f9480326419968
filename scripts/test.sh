#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The whole test suite, as CI runs it: installs what is missing, then
#   1. the `cuda` preset when nvcc exists (else `host`): host tests, header tests for .hpp (g++)
#      and .cuh (nvcc, sm_80/sm_90/sm_90a), compile-fail tests, package tests, the static kernel
#      gates, and the gpu tests (Skipped without a GPU);
#   2. the `asan` preset: the host tests again, and the CUDA backend's gpu tests run on the CPU
#      by moe_emu (label emu, docs/emulation.md), under AddressSanitizer + UBSan, without CUDA.
# Ends with one line "N passed, N failed, N skipped" over both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

main_preset=host
if [[ -x "${CUDACXX:-/usr/local/cuda/bin/nvcc}" ]]; then main_preset=cuda; fi
jobs="$(nproc)"

passed=0 failed=0 skipped=0 status=0
run_preset() {
  local preset=$1 log
  log="$(mktemp)"
  echo "== preset $preset: configure and build"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  echo "== preset $preset: ctest"
  if ! ctest --preset "$preset" -j "$jobs" --timeout 1500 2>&1 | tee "$log"; then status=1; fi
  # ctest's summary: "100% tests passed, 0 tests failed out of 42"; skips are listed as "Not Run".
  local total fail skip
  total=$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -n 1)
  fail=$(sed -n 's/.* \([0-9]*\) tests failed out of.*/\1/p' "$log" | tail -n 1)
  skip=$(grep -c '(Skipped)' "$log" || true)
  if [[ -z "$total" ]]; then status=1; total=0; fail=1; fi
  passed=$((passed + total - fail - skip)); failed=$((failed + fail)); skipped=$((skipped + skip))
  rm -f "$log"
}

start=$SECONDS
run_preset "$main_preset"
run_preset asan
echo "== done in $((SECONDS - start)) s"
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
exit "$status"
