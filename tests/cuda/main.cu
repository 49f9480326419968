// SPDX-License-Identifier: Apache-2.0
// doctest's main for the CUDA test binary (label gpu). Without a usable GPU it says so and
// exits 77, which ctest reports as Skipped (SKIP_RETURN_CODE) — not passed, not failed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "moe/cuda/runtime.cuh"

int main(int argc, char** argv) {
  int n = 0;
  cudaError_t const e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    std::printf("SKIPPED: no usable CUDA device (cudaGetDeviceCount: %s, %d devices)\n",
                cudaGetErrorName(e), n);
    return 77;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
    std::printf("device 0: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  doctest::Context context(argc, argv);
  return context.run();
}
