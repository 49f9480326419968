// SPDX-License-Identifier: Apache-2.0
// What every CUDA benchmark file shares: the device check, event timing (manual time), the
// copy-bandwidth roofline of memory-bound kernels, device buffers, random fills and the peak. Each benchmark .cu file of moe_bench_cuda
// includes it; main.cu holds BENCHMARK_MAIN.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t, std::uint64_t

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

/// A device buffer of n elements (cudaMalloc, null when that fails; freed by the destructor).
template <class T>
struct device_buffer {
  T* p = nullptr;
  explicit device_buffer(std::int64_t n) {
    if (cudaMalloc(&p, static_cast<std::size_t>(n > 0 ? n : 1) * sizeof(T)) != cudaSuccess)
      p = nullptr;
  }
  device_buffer(device_buffer const&) = delete;
  device_buffer& operator=(device_buffer const&) = delete;
  ~device_buffer() { cudaFree(p); }
};

/// Fills out[0, n) with uniform [-1, 1) values of type T, drawn as floats by moe::fill_random
/// (Philox, seed + the chunk's start) in chunks of `chunk` through `scratch` and converted.
template <class T>
bool fill_uniform(T* out, std::int64_t n, std::uint64_t seed, float* scratch, std::int64_t chunk) {
  for (std::int64_t i = 0; i < n; i += chunk) {
    std::int64_t const len = n - i < chunk ? n - i : chunk;
    if (!moe::fill_random(moe::cuda_on(nullptr), {.dist = moe::distribution::uniform,
                                                  .seed = seed + static_cast<std::uint64_t>(i),
                                                  .out = scratch, .n = len})
             .ok() ||
        !moe::convert(moe::cuda_on(nullptr), moe::convert_args<float, T>{scratch, out + i, len})
             .ok())
      return false;
  }
  return true;
}

/// Dense peak FLOP/s of the current device: SMs × clock (cudaDevAttrClockRate, the boost
/// clock) × FLOP/clk/SM — of the bf16 tensor cores (4096 on sm_90, 2048 on sm_80, 1024 on
/// others), or of fp32 FFMA on the CUDA cores (256; 128 on sm_80 and older).
inline double device_peak(bool tensor_cores) {
  int dev = 0, sms = 0, khz = 0, major = 0, minor = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  bool const sm80 = major == 8 && minor == 0;
  double const per_clock = tensor_cores ? (major >= 9 ? 4096 : (sm80 ? 2048 : 1024))
                                        : (sm80 || major < 8 ? 128 : 256);
  return static_cast<double>(sms) * static_cast<double>(khz) * 1e3 * per_clock;
}

}  // namespace moe_bench
