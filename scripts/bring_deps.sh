#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Copies the test and benchmark libraries into .deps/ (git-ignored) so that they can travel to
# a GPU machine that has CUDA, CMake and Ninja but no network (see docs/gpu-check.md):
#   .deps/doctest/doctest/doctest.h          doctest (single header)
#   .deps/benchmark/{include,lib/...}        Google Benchmark 1.7.1 (x86-64 shared library)
# Symlinks are copied as files, since a carried tree may not keep them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf .deps && mkdir -p .deps/doctest/doctest .deps/benchmark/include
cp -L /usr/include/doctest/doctest.h .deps/doctest/doctest/
cp -rL /usr/include/benchmark .deps/benchmark/include/
lib=lib/x86_64-linux-gnu
mkdir -p ".deps/benchmark/$lib/cmake"
cp -L /usr/$lib/libbenchmark.so /usr/$lib/libbenchmark.so.1debian /usr/$lib/libbenchmark.so.1.7.1 \
      /usr/$lib/libbenchmark_main.a ".deps/benchmark/$lib/"
cp -rL /usr/$lib/cmake/benchmark ".deps/benchmark/$lib/cmake/"
du -sh .deps
