// SPDX-License-Identifier: Apache-2.0
// Host benchmarks of the foundation ops: fill_random (Philox draws) and convert. Both are
// reported as bytes written (and read) per second, and as a fraction of this machine's copy
// bandwidth measured by BM_memcpy in the same run (memcpy of the same bytes: the practical
// roofline for a streaming op on the CPU).
//
// Run:  cmake --preset bench && cmake --build --preset bench --target moe_bench_host &&
//       ./build/bench/benchmarks/moe_bench_host
#include <benchmark/benchmark.h>

#include <algorithm>  // std::max
#include <chrono>     // std::chrono::steady_clock
#include <cstdint>    // std::int64_t
#include <cstring>    // std::memcpy
#include <vector>     // std::vector

#include "moe/moe.hpp"

namespace {

// Bytes/s of memcpy on buffers of `bytes` (read + write counted), best of a few runs.
double copy_bandwidth(std::size_t bytes) {
  static double cached = 0;
  if (cached > 0) return cached;
  std::vector<char> a(bytes, 1), b(bytes, 2);  // touched once here: no page faults when timed
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    auto const t0 = std::chrono::steady_clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::DoNotOptimize(b.data());
    auto const t1 = std::chrono::steady_clock::now();
    best = std::max(best, 2.0 * static_cast<double>(bytes) /
                              std::chrono::duration<double>(t1 - t0).count());
  }
  return cached = best;
}

void report(benchmark::State& state, double bytes_per_iteration) {
  double const bytes = bytes_per_iteration * static_cast<double>(state.iterations());
  double const roof = copy_bandwidth(std::size_t{64} << 20);
  state.counters["bytes_per_second"] = benchmark::Counter(bytes, benchmark::Counter::kIsRate);
  // kIsRate divides by the measured time: (bytes / s) / (copy bytes / s).
  state.counters["roofline_fraction"] = benchmark::Counter(bytes / roof, benchmark::Counter::kIsRate);
  state.counters["copy_bytes_per_second"] = roof;
}

void BM_memcpy(benchmark::State& state) {
  auto const n = static_cast<std::size_t>(state.range(0));
  std::vector<float> a(n, 1.0f), b(n, 0.0f);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), n * sizeof(float));
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
  }
  report(state, 2.0 * static_cast<double>(n * sizeof(float)));
}

void BM_fill_random(benchmark::State& state, moe::distribution d) {
  auto const n = state.range(0);
  std::vector<float> out(static_cast<std::size_t>(n), 0.0f);
  std::uint64_t offset = 0;
  for (auto _ : state) {
    moe::status const s =
        moe::fill_random(moe::host, {.dist = d, .seed = 1, .offset = offset, .out = out.data(), .n = n});
    if (!s.ok()) state.SkipWithError(s.message());
    offset += moe::words_used(d, n);
    benchmark::DoNotOptimize(out.data());
  }
  report(state, static_cast<double>(n) * sizeof(float));
  state.counters["draws_per_second"] =
      benchmark::Counter(static_cast<double>(n * state.iterations()), benchmark::Counter::kIsRate);
}

template <class From, class To>
void BM_convert(benchmark::State& state) {
  auto const n = state.range(0);
  std::vector<From> in(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    in[static_cast<std::size_t>(i)] = moe::from_float<From>(static_cast<float>(i % 977) * 0.37f);
  std::vector<To> out(static_cast<std::size_t>(n));
  for (auto _ : state) {
    moe::status const s = moe::convert(moe::host, moe::convert_args<From, To>{in.data(), out.data(), n});
    if (!s.ok()) state.SkipWithError(s.message());
    benchmark::DoNotOptimize(out.data());
  }
  report(state, static_cast<double>(n) * static_cast<double>(sizeof(From) + sizeof(To)));
}

}  // namespace

BENCHMARK(BM_memcpy)->Arg(1024)->Arg(1 << 24);
BENCHMARK_CAPTURE(BM_fill_random, uniform, moe::distribution::uniform)->Arg(1024)->Arg(1 << 22);
BENCHMARK_CAPTURE(BM_fill_random, normal, moe::distribution::normal)->Arg(1024)->Arg(1 << 22);
BENCHMARK_CAPTURE(BM_fill_random, gumbel, moe::distribution::gumbel)->Arg(1024)->Arg(1 << 22);
BENCHMARK(BM_convert<float, moe::bf16>)->Arg(1024)->Arg(1 << 24);
BENCHMARK(BM_convert<moe::bf16, float>)->Arg(1024)->Arg(1 << 24);
BENCHMARK(BM_convert<float, moe::fp16>)->Arg(1024)->Arg(1 << 24);
BENCHMARK(BM_convert<float, moe::fp8_e4m3>)->Arg(1024)->Arg(1 << 24);

BENCHMARK_MAIN();
