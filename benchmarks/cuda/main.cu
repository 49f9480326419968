// SPDX-License-Identifier: Apache-2.0
// CUDA benchmarks of the foundation ops: fill_random and convert, timed with CUDA events on
// one stream (manual time), reported as bytes/s and as a fraction of the device-to-device copy
// bandwidth measured by BM_d2d_copy in the same run — the practical roofline of a
// memory-bound kernel (about 3.0 TB/s on an H100 SXM, of a 3.35 TB/s datasheet peak).
// Without a GPU every benchmark reports an error and the program exits 0.
//
// Run:  cmake --preset bench -DMOE_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real &&
//       cmake --build --preset bench --target moe_bench_cuda && ./build/bench/benchmarks/moe_bench_cuda
#include <benchmark/benchmark.h>

#include <cstdint>  // std::int64_t

#include "moe/cuda.cuh"

namespace {

bool have_device(benchmark::State& state) {
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

double copy_bandwidth() {
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

void roofline(benchmark::State& state, double bytes) {
  double const roof = copy_bandwidth();
  state.counters["copy_bytes_per_second"] = roof;
  if (roof > 0)
    state.counters["roofline_fraction"] =
        benchmark::Counter(bytes * static_cast<double>(state.iterations()) / roof,
                           benchmark::Counter::kIsRate);
}

void BM_d2d_copy(benchmark::State& state) {
  if (!have_device(state)) return;
  auto const bytes = static_cast<std::size_t>(state.range(0)) * sizeof(float);
  void *a = nullptr, *b = nullptr;
  cudaMalloc(&a, bytes);
  cudaMalloc(&b, bytes);
  time_on_device(state, 2.0 * static_cast<double>(bytes),
                 [&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice); });
  roofline(state, 2.0 * static_cast<double>(bytes));
  cudaFree(a);
  cudaFree(b);
}

void BM_fill_random(benchmark::State& state, moe::distribution d) {
  if (!have_device(state)) return;
  auto const n = state.range(0);
  float* out = nullptr;
  cudaMalloc(&out, static_cast<std::size_t>(n) * sizeof(float));
  double const bytes = static_cast<double>(n) * sizeof(float);
  time_on_device(state, bytes, [&] {
    (void)moe::fill_random(moe::cuda_on(nullptr), {.dist = d, .seed = 3, .out = out, .n = n});
  });
  roofline(state, bytes);
  state.counters["draws_per_second"] =
      benchmark::Counter(static_cast<double>(n * state.iterations()), benchmark::Counter::kIsRate);
  cudaFree(out);
}

template <class From, class To>
void BM_convert(benchmark::State& state) {
  if (!have_device(state)) return;
  auto const n = state.range(0);
  From* in = nullptr;
  To* out = nullptr;
  cudaMalloc(&in, static_cast<std::size_t>(n) * sizeof(From));
  cudaMalloc(&out, static_cast<std::size_t>(n) * sizeof(To));
  cudaMemset(in, 0x3c, static_cast<std::size_t>(n) * sizeof(From));
  double const bytes = static_cast<double>(n) * static_cast<double>(sizeof(From) + sizeof(To));
  time_on_device(state, bytes, [&] {
    (void)moe::convert(moe::cuda_on(nullptr), moe::convert_args<From, To>{in, out, n});
  });
  roofline(state, bytes);
  cudaFree(in);
  cudaFree(out);
}

}  // namespace

BENCHMARK(BM_d2d_copy)->Arg(1 << 26)->UseManualTime();
BENCHMARK_CAPTURE(BM_fill_random, uniform, moe::distribution::uniform)->Arg(1 << 26)->UseManualTime();
BENCHMARK_CAPTURE(BM_fill_random, normal, moe::distribution::normal)->Arg(1 << 26)->UseManualTime();
BENCHMARK_CAPTURE(BM_fill_random, gumbel, moe::distribution::gumbel)->Arg(1 << 26)->UseManualTime();
BENCHMARK(BM_convert<float, moe::bf16>)->Arg(1 << 26)->UseManualTime();
BENCHMARK(BM_convert<moe::bf16, float>)->Arg(1 << 26)->UseManualTime();
BENCHMARK(BM_convert<float, moe::fp8_e4m3>)->Arg(1 << 26)->UseManualTime();

BENCHMARK_MAIN();
