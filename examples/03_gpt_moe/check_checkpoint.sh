#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The examples.gpt_checkpoint and examples.gpt_mpi_checkpoint tests: a run interrupted at step
# 10 of 20 and resumed from its checkpoint must end bitwise equal to the uninterrupted run —
# the same final checkpoint (parameters, AdamW moments, step, data-generator state; one file a
# rank under mpirun) and the same per-step losses.
# Usage: check_checkpoint.sh WORKDIR COMMAND...   (COMMAND: path/to/moe_gpt, or
#        mpirun -np 2 ... path/to/moe_gpt_mpi)
set -euo pipefail
dir=$1
shift
gpt=("$@")
rm -rf "$dir"
mkdir -p "$dir"
# A tiny model with MoE on every layer and an untied head, so every kind of tensor is covered.
args=(--layers 2 --hidden 32 --heads 2 --seq 32 --batch 4 --steps 20 --warmup 4 --lr 1e-2
      --moe-every 1 --untied --eval-every 5 --log-every 5 --seed 7)
"${gpt[@]}" "${args[@]}" --csv "$dir/full.csv" --save "$dir/full.ckpt"
"${gpt[@]}" "${args[@]}" --stop-after 10 --save "$dir/half.ckpt"
"${gpt[@]}" "${args[@]}" --load "$dir/half.ckpt" --csv "$dir/resumed.csv" --save "$dir/resumed.ckpt"
files=0
for f in "$dir"/full.ckpt*; do
  b=$(basename "$f")
  cmp "$f" "$dir/resumed${b#full}"
  files=$((files + 1))
done
# Steps 11-20: every column but the timing (tokens_per_s, column 10) must match.
tail -n 10 "$dir/full.csv" | cut -d, -f1-9,11- >"$dir/full.losses"
tail -n 10 "$dir/resumed.csv" | cut -d, -f1-9,11- >"$dir/resumed.losses"
cmp "$dir/full.losses" "$dir/resumed.losses"
echo "checkpoint resume: bitwise equal ($files final checkpoint file(s) and steps 11-20)"
