// SPDX-License-Identifier: Apache-2.0
// What every CUDA benchmark file shares: the device check, event timing (manual time), and the
// copy-bandwidth roofline of memory-bound kernels. Each benchmark .cu file of moe_bench_cuda
// includes it; main.cu holds BENCHMARK_MAIN.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>  // std::size_t

#include "moe/cuda.cuh"

namespace moe_bench {

inline bool have_device(benchmark::State& state) {
  if (moe::backend::cuda::device_count() > 0) return true;
  state.SkipWithError("no CUDA device");
  return false;
}

// Runs `launch` once per iteration, timing each with events; `bytes` moved per launch.
template <class Launch>
void time_on_device(benchmark::State& state, double bytes, Launch&& launch) {
  cudaEvent_t start{}, stop{};
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  launch();  // warm-up
  cudaDeviceSynchronize();
  for (auto _ : state) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(static_cast<double>(ms) / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (cudaGetLastError() != cudaSuccess) state.SkipWithError("CUDA error");
  state.counters["bytes_per_second"] =
      benchmark::Counter(bytes * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

inline double copy_bandwidth() {
  static double cached = 0;
  if (cached > 0) return cached;
  std::size_t const bytes = std::size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return 0;
  cudaEvent_t start{}, stop{};
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  float best = 1e30f;
  for (int r = 0; r < 10; ++r) {
    cudaEventRecord(start);
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    best = ms < best ? ms : best;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  return cached = 2.0 * static_cast<double>(bytes) / (static_cast<double>(best) / 1e3);
}

inline void roofline(benchmark::State& state, double bytes) {
  double const roof = copy_bandwidth();
  state.counters["copy_bytes_per_second"] = roof;
  if (roof > 0)
    state.counters["roofline_fraction"] =
        benchmark::Counter(bytes * static_cast<double>(state.iterations()) / roof,
                           benchmark::Counter::kIsRate);
}

}  // namespace moe_bench
