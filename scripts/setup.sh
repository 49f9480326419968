#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what moe's builds, tests and examples need on a fresh Debian 12 machine, skipping
# what is already there: Debian packages (apt-get) and NVIDIA's cuobjdump/nvdisasm wheels (pip,
# for the SASS part of the kernel report; only where nvcc exists). Safe to run repeatedly.
set -euo pipefail

debs=(cmake ninja-build ccache g++ python3 python3-pip doctest-dev libbenchmark-dev
      libopenmpi-dev openmpi-bin)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

nvcc_bin="${CUDACXX:-/usr/local/cuda/bin/nvcc}"
if [[ -x "$nvcc_bin" ]] && ! python3 "$(dirname "$0")/kernel_report.py" --find-tools >/dev/null 2>&1; then
  echo "setup: installing NVIDIA's cuobjdump and nvdisasm (PyPI wheels)"
  python3 -m pip install -q --disable-pip-version-check nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm \
    || python3 -m pip install -q --break-system-packages nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm \
    || echo "setup: could not install the SASS tools; the kernel report will be skipped"
fi
