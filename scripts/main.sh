#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job: installs what is missing, builds the CPU backend and runs the GPT-MoE training
# example (examples/03_gpt_moe, docs/gpt_moe.md): a small byte-level GPT with MoE FFNs trained
# on the CPU, about 3 minutes on 2 cores. Extra arguments go to the example (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset host >/dev/null
cmake --build --preset host --target moe_gpt
# OpenMP threads sleep instead of spinning while they wait: on a machine that is also running
# other work, spinning threads steal the cores the busy ones need (3x slower measured).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
./build/host/examples/moe_gpt "$@"
