#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A miniature of DeepSpeed-MoE's headline result (docs/gpt_moe.md): at equal active parameters
# per token and equal steps, the MoE model reaches a lower validation loss than its dense base;
# larger dense models show roughly how large a dense model the MoE matches. Every run uses the
# same data, seed, steps and batch; only the FFNs (or the width) differ. The model is smaller
# and trained longer than moe_gpt's default (H = 64, 1600 steps of 1024 tokens): at the
# default's 400 steps every model is still limited by steps, not parameters (docs/gpt_moe.md).
#   moe        MoE (top-2 of 8 experts, F = 128 each) on every 2nd of 4 layers
#   dense      dense FFN F = 256: the same active parameters per token as moe (its base)
#   dense-2x   dense FFN F = 512
#   dense-4x   dense FFN F = 1024 (per layer as many FFN parameters as one MoE layer's experts)
#   moe-all    MoE on all 4 layers                                  (only when named in RUNS)
#   dense-wide dense, H = 96 (F = 384)                              (only when named in RUNS)
# Usage: bash scripts/miniature.sh [OUTDIR (build/miniature)] [extra moe_gpt flags...]
# Environment: THREADS (0 = all cores), RUNS (names to run, default "moe dense dense-2x
# dense-4x"), BUILD (build dir, default build/host). A run whose log already ends with its
# summary is not run again (delete OUTDIR/<run>.log to redo it). Writes OUTDIR/<run>.csv,
# <run>_load.csv, <run>.log, summary.md and, when matplotlib is installed, the plots
# (scripts/plot_gpt.py). Each run takes 3-6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/miniature}
shift || true
build=${BUILD:-build/host}
threads=${THREADS:-0}
runs=${RUNS:-"moe dense dense-2x dense-4x"}
if [[ ! -x $build/examples/moe_gpt ]]; then
  cmake --preset host >/dev/null
  cmake --build --preset host --target moe_gpt
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
mkdir -p "$out"
common=(--hidden 64 --steps 1600 --eval-every 200 --val-batches 12 --threads "$threads"
        --log-every 50)
declare -A flags=(
  [moe]=""
  [dense]="--dense"
  [dense-2x]="--dense --ffn 512"
  [dense-4x]="--dense --ffn 1024"
  [moe-all]="--moe-every 1"
  [dense-wide]="--dense --hidden 96"
)
for run in $runs; do
  if [[ -f $out/$run.log ]] && grep -q '^done:' "$out/$run.log"; then
    echo "== $run: done before (delete $out/$run.log to run it again)"
    continue
  fi
  echo "== $run: moe_gpt ${common[*]} ${flags[$run]} $*"
  # shellcheck disable=SC2086  # the flags are words
  "$build/examples/moe_gpt" "${common[@]}" ${flags[$run]} "$@" --csv "$out/$run.csv" \
    | tee "$out/$run.log"
done

# One line per run: final validation loss, parameters, speed (from the logs).
{
  echo "| run | flags | params total | params active / token | val loss | tokens/s | wall (s) |"
  echo "|---|---|---|---|---|---|---|"
  for run in $runs; do
    log=$out/$run.log
    [[ -f $log ]] || continue
    val=$(grep -o 'val loss [0-9.]*' "$log" | tail -1 | awk '{print $3}')
    total=$(grep -o 'parameters [0-9]* total' "$log" | awk '{print $2}')
    active=$(grep -o '[0-9]* active per token' "$log" | awk '{print $1}')
    speed=$(grep -o '[0-9]* tok/s); loss' "$log" | awk '{print $1}')
    secs=$(grep -o 'steps in [0-9.]* s' "$log" | awk '{print $3}')
    echo "| $run | ${flags[$run]:-(moe_gpt default)} | $total | $active | $val | $speed | $secs |"
  done
} | tee "$out/summary.md"

if python3 -c "import matplotlib" 2>/dev/null; then
  csvs=()
  for run in $runs; do [[ -f $out/$run.csv ]] && csvs+=("$out/$run.csv"); done
  python3 scripts/plot_gpt.py --out "$out" --load "$out/moe_load.csv" \
    --labels "$(echo $runs | tr ' ' ',')" "${csvs[@]}"
else
  echo "miniature: matplotlib not installed, no plots (see scripts/plot_gpt.py)"
fi
