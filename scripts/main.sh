#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job: installs what is missing, builds the CPU backend and runs the main example.
# Today that is the quickstart; it becomes the GPT-MoE training example when that lands.
# Extra arguments go to the example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset host >/dev/null
cmake --build --preset host --target moe_quickstart
./build/host/examples/moe_quickstart "$@"
