#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The examples.gpt_mpi_short test: the expert-parallel run (moe_gpt_mpi under mpirun) against
# moe_gpt on the same global batches (same flags: the R ranks split each batch of --batch
# sequences). Both must lower the loss (--expect-drop), and every step's training loss, MoE
# loss and every validation loss must agree within 1e-4 relative: the runs compute the same
# sums in another order (per-rank partial gradients, summed over ranks), nothing else.
# Usage: check_ep.sh WORKDIR path/to/moe_gpt MPIRUN... path/to/moe_gpt_mpi
set -euo pipefail
dir=$1
single=$2
shift 2
ep=("$@")
rm -rf "$dir"
mkdir -p "$dir"
# A tiny model with MoE on both layers (top-2 of 8: 4 experts a rank), 4 sequences a rank.
args=(--layers 2 --hidden 32 --heads 2 --seq 32 --batch 8 --steps 40 --warmup 5 --lr 1e-2
      --moe-every 1 --eval-every 20 --val-batches 2 --log-every 10 --threads 1 --seed 3
      --expect-drop 1.0)
"$single" "${args[@]}" --csv "$dir/single.csv"
"${ep[@]}" "${args[@]}" --csv "$dir/ep.csv"
# Columns: 1 step, 3 loss, 4 moe_loss, 11.. validation losses (empty between evaluations).
awk -F, -v tol=1e-4 '
  NR == FNR { if (FNR > 1) for (c = 1; c <= NF; ++c) want[FNR, c] = $c; next }
  FNR > 1 {
    n = split("3 4", cols, " ")
    for (c = 11; c <= NF; ++c) cols[++n] = c
    for (i = 1; i <= n; ++i) {
      c = cols[i]; a = want[FNR, c]; b = $c
      if (a == "" && b == "") continue
      d = a - b; if (d < 0) d = -d
      s = a < 0 ? -a : a
      rel = d / (s > 1e-6 ? s : 1e-6)
      if (rel > worst) worst = rel
      if (rel > tol) { printf "step %s column %d: moe_gpt %s, moe_gpt_mpi %s (rel. %.2e)\n", $1, c, a, b, rel; bad = 1 }
    }
    ++rows
  }
  END {
    printf "expert parallel vs one process: %d steps, worst relative difference %.2e (limit %g)\n", rows, worst, tol
    exit bad
  }' "$dir/single.csv" "$dir/ep.csv"
