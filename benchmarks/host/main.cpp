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

// ---- router GEMM (moe/router_gemm.hpp) ------------------------------------------------------
// Forward logits[T, E] = x[T, H] · W_g[H, E] with fp32 sums: FLOP/s counts 2·T·H·E per call;
// bytes/s counts x, W_g and the logits once (the GEMM is compute-bound on the CPU; the byte
// rate shows how far from the copy roofline it sits). Args: T, H. Included here, with its
// section, because the umbrella moe/moe.hpp does not list the op yet.
#include "moe/router_gemm.hpp"  // moe::router_gemm, router_gemm_args, act_t/weight_t/accum_t

namespace {

template <moe::config C>
void BM_router_gemm(benchmark::State& state) {
  using X = moe::act_t<C>;
  using W = moe::weight_t<C>;
  using A = moe::accum_t<C>;
  std::int64_t const T = state.range(0), H = state.range(1), E = C.experts;
  std::vector<X> x(static_cast<std::size_t>(T * H));
  std::vector<W> w(static_cast<std::size_t>(H * E));
  std::vector<A> logits(static_cast<std::size_t>(T * E));
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = moe::from_float<X>(static_cast<float>(i % 977) * 0.002f - 1.0f);
  for (std::size_t i = 0; i < w.size(); ++i)
    w[i] = moe::from_float<W>(static_cast<float>(i % 31) * 0.001f - 0.015f);
  moe::problem const p{.tokens = T, .hidden = H, .ffn = 1};
  moe::router_gemm_args<C> const a{x.data(), w.data(), logits.data()};
  for (auto _ : state) {
    moe::status const s = moe::router_gemm(moe::host, p, a);
    if (!s.ok()) state.SkipWithError(s.message());
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  report(state, static_cast<double>(T * H) * sizeof(X) + static_cast<double>(H * E) * sizeof(W) +
                    static_cast<double>(T * E) * sizeof(A));
  state.counters["flop_per_second"] = benchmark::Counter(
      2.0 * static_cast<double>(T * H * E) * static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
}

constexpr moe::config router_fp32_e8{
    .experts = 8, .top_k = 2, .act = moe::precision::fp32, .weight = moe::precision::fp32};
constexpr moe::config router_fp32_e64{
    .experts = 64, .top_k = 2, .act = moe::precision::fp32, .weight = moe::precision::fp32};
constexpr moe::config router_bf16_e8{.experts = 8, .top_k = 2};
constexpr moe::config router_bf16_e64{.experts = 64, .top_k = 2};

void router_gemm_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "H"})->Unit(benchmark::kMillisecond);
  for (std::int64_t T : {4096, 16384})
    for (std::int64_t H : {1024, 4096}) b->Args({T, H});
}

}  // namespace

BENCHMARK(BM_router_gemm<router_fp32_e8>)->Apply(router_gemm_shapes);
BENCHMARK(BM_router_gemm<router_fp32_e64>)->Apply(router_gemm_shapes);
BENCHMARK(BM_router_gemm<router_bf16_e8>)->Apply(router_gemm_shapes);
BENCHMARK(BM_router_gemm<router_bf16_e64>)->Apply(router_gemm_shapes);
// Small unnamed rows for the smoke test's /1024$ filter (the rows above, "H:1024", escape it:
// at -O0 they would take seconds).
BENCHMARK(BM_router_gemm<router_fp32_e64>)->Args({64, 1024});
BENCHMARK(BM_router_gemm<router_bf16_e8>)->Args({64, 1024});
// ---- end router GEMM -------------------------------------------------------------------------

// ---- token dispatch (moe/plan.hpp, moe/permute.hpp) --------------------------------------------
// permute and combine over a dropless compact plan of T tokens routed to K of E = 64 experts
// (synthetic, balanced routes), and the scaling comparison against DeepSpeed's original dense
// dispatch. bytes/s counts what an op must move: permute reads and writes T·K rows of H
// elements (plus source_of); combine reads T·K rows (plus row_of and weights) and writes T.
// Args: T, K, H. Included here, with its section, because the umbrella moe/moe.hpp does not
// list the ops yet.
#include "moe/permute.hpp"  // moe::permute, moe::combine, permute_args, combine_args
#include "moe/plan.hpp"     // moe::plan, plan_args, plan_rows_bound

namespace {

// Routes of T tokens to K distinct experts of E, spread evenly (a fixed pseudo-random walk), and
// slots by position: the router's output for a balanced batch.
struct bench_routes {
  std::vector<std::int32_t> expert, slot;
  std::vector<float> weight;
};

bench_routes make_bench_routes(std::int64_t T, std::int32_t K, std::int32_t E, std::int64_t C) {
  bench_routes r;
  auto const n = static_cast<std::size_t>(T * K);
  r.expert.resize(n);
  r.slot.resize(n);
  r.weight.assign(n, 1.0f / static_cast<float>(K));
  std::vector<std::int64_t> count(static_cast<std::size_t>(E), 0);
  for (std::int64_t t = 0; t < T; ++t) {
    auto const first = static_cast<std::int32_t>((t * 2654435761LL) % E);  // Knuth's multiplier
    for (std::int32_t k = 0; k < K; ++k) {
      auto const i = static_cast<std::size_t>(t * K + k);
      r.expert[i] = (first + k * (E / K)) % E;  // distinct while K <= E
      std::int64_t& c = count[static_cast<std::size_t>(r.expert[i])];
      r.slot[i] = c < C ? static_cast<std::int32_t>(c++) : -1;
    }
  }
  return r;
}

struct bench_plan {
  std::vector<std::int64_t> offsets;
  std::vector<std::int32_t> row_of, source_of;
  std::int64_t rows = 0;
};

bench_plan make_bench_plan(bench_routes const& r, std::int64_t T, std::int32_t K, std::int32_t E,
                           std::int64_t C, moe::plan_layout layout) {
  bench_plan p;
  p.rows = moe::plan_rows_bound(T, K, E, C, layout);
  p.offsets.resize(static_cast<std::size_t>(E) + 1);
  p.row_of.resize(r.expert.size());
  p.source_of.resize(static_cast<std::size_t>(p.rows));
  moe::status const s = moe::plan(
      moe::host, {.layout = layout, .tokens = T, .top_k = K, .experts = E, .capacity = C,
                  .expert = r.expert.data(), .slot = r.slot.data(), .offsets = p.offsets.data(),
                  .row_of = p.row_of.data(), .source_of = p.source_of.data(),
                  .source_rows = p.rows});
  if (!s.ok()) p.rows = -1;
  return p;
}

template <class X>
std::vector<X> bench_tensor(std::int64_t n) {
  std::vector<X> v(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = moe::from_float<X>(static_cast<float>(i % 977) * 0.002f - 1.0f);
  return v;
}

constexpr std::int32_t bench_experts = 64;

template <class X>
void BM_permute(benchmark::State& state) {
  std::int64_t const T = state.range(0), H = state.range(2);
  auto const K = static_cast<std::int32_t>(state.range(1));
  bench_routes const r = make_bench_routes(T, K, bench_experts, T);
  bench_plan const p = make_bench_plan(r, T, K, bench_experts, T, moe::plan_layout::compact);
  if (p.rows < 0) return state.SkipWithError("plan failed");
  auto const x = bench_tensor<X>(T * H);
  std::vector<X> out(static_cast<std::size_t>(p.rows * H));
  moe::permute_args<X> const a{x.data(), p.source_of.data(), out.data(), T, H, p.rows, K};
  for (auto _ : state) {
    moe::status const s = moe::permute(moe::host, a);
    if (!s.ok()) state.SkipWithError(s.message());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report(state, 2.0 * static_cast<double>(p.rows * H) * sizeof(X) +
                    static_cast<double>(p.rows) * sizeof(std::int32_t));
}

template <class X>
void BM_combine(benchmark::State& state) {
  std::int64_t const T = state.range(0), H = state.range(2);
  auto const K = static_cast<std::int32_t>(state.range(1));
  bench_routes const r = make_bench_routes(T, K, bench_experts, T);
  bench_plan const p = make_bench_plan(r, T, K, bench_experts, T, moe::plan_layout::compact);
  if (p.rows < 0) return state.SkipWithError("plan failed");
  auto const o = bench_tensor<X>(p.rows * H);
  std::vector<X> y(static_cast<std::size_t>(T * H));
  moe::combine_args<X> const a{o.data(), p.row_of.data(), r.weight.data(), y.data(), T, H, p.rows, K};
  for (auto _ : state) {
    moe::status const s = moe::combine(moe::host, a);
    if (!s.ok()) state.SkipWithError(s.message());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  report(state, static_cast<double>(T * K * H + T * H) * sizeof(X) +
                    static_cast<double>(T * K) * (sizeof(std::int32_t) + sizeof(float)));
}

void dispatch_shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t T : {4096, 16384})
    for (std::int64_t K : {1, 2, 8})
      for (std::int64_t H : {1024, 4096}) b->Args({T, K, H});
  b->Unit(benchmark::kMillisecond);
}

// Scaling: dispatch of T tokens to the [E, C, H] expert buffer with E = 8, K = 2, H = 128 and
// C = ⌈1.25·T·K/E⌉. The baseline is DeepSpeed's original: a dense one-hot mask [T, E, C] and
// the einsum "sec,sm->ecm" (every (e, c) row is a sum over all T tokens), so its work is
// T·E·C·H = 1.25·K·T²·H multiply-adds; ours is plan + permute into the capacity_padded layout,
// linear in T. Both report the bytes of x read and of the [E, C, H] buffer written.
constexpr std::int32_t scaling_experts = 8, scaling_top_k = 2;
constexpr std::int64_t scaling_hidden = 128;

std::int64_t scaling_capacity(std::int64_t T) {
  return (5 * T * scaling_top_k + 4 * scaling_experts - 1) / (4 * scaling_experts);
}

void BM_dense_dispatch(benchmark::State& state) {
  std::int64_t const T = state.range(0), H = scaling_hidden, C = scaling_capacity(T);
  std::int64_t const EC = scaling_experts * C;
  bench_routes const r = make_bench_routes(T, scaling_top_k, scaling_experts, C);
  auto const x = bench_tensor<float>(T * H);
  std::vector<float> mask(static_cast<std::size_t>(T * EC)), out(static_cast<std::size_t>(EC * H));
  for (auto _ : state) {
    // dispatch_mask[t, e, c] = 1 where route (t, k) went to expert e, slot c
    std::fill(mask.begin(), mask.end(), 0.0f);
    for (std::int64_t i = 0; i < T * scaling_top_k; ++i)
      if (r.slot[static_cast<std::size_t>(i)] >= 0)
        mask[static_cast<std::size_t>(i / scaling_top_k * EC +
                                      r.expert[static_cast<std::size_t>(i)] * C +
                                      r.slot[static_cast<std::size_t>(i)])] = 1.0f;
    // out[ec, :] = Σ_t mask[t, ec] · x[t, :]
    for (std::int64_t ec = 0; ec < EC; ++ec) {
      float* const dst = out.data() + ec * H;
      std::fill(dst, dst + H, 0.0f);
      for (std::int64_t t = 0; t < T; ++t) {
        float const m = mask[static_cast<std::size_t>(t * EC + ec)];
        float const* const src = x.data() + t * H;
        for (std::int64_t h = 0; h < H; ++h) dst[h] += m * src[h];
      }
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report(state, static_cast<double>(T * H + EC * H) * sizeof(float));
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(T * state.iterations()), benchmark::Counter::kIsRate);
}

void BM_plan_permute_dispatch(benchmark::State& state) {
  std::int64_t const T = state.range(0), H = scaling_hidden, C = scaling_capacity(T);
  bench_routes const r = make_bench_routes(T, scaling_top_k, scaling_experts, C);
  auto const layout = moe::plan_layout::capacity_padded;
  std::int64_t const rows = moe::plan_rows_bound(T, scaling_top_k, scaling_experts, C, layout);
  std::vector<std::int64_t> offsets(scaling_experts + 1);
  std::vector<std::int32_t> row_of(r.expert.size()), source_of(static_cast<std::size_t>(rows));
  auto const x = bench_tensor<float>(T * H);
  std::vector<float> out(static_cast<std::size_t>(rows * H));
  for (auto _ : state) {
    moe::status s = moe::plan(
        moe::host, {.layout = layout, .tokens = T, .top_k = scaling_top_k,
                    .experts = scaling_experts, .capacity = C, .expert = r.expert.data(),
                    .slot = r.slot.data(), .offsets = offsets.data(), .row_of = row_of.data(),
                    .source_of = source_of.data(), .source_rows = rows});
    if (s.ok()) s = moe::permute(moe::host, moe::permute_args<float>{x.data(), source_of.data(),
                                                                    out.data(), T, H, rows,
                                                                    scaling_top_k});
    if (!s.ok()) state.SkipWithError(s.message());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report(state, static_cast<double>(T * H + rows * H) * sizeof(float));
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(T * state.iterations()), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_permute<float>)->Apply(dispatch_shapes);
BENCHMARK(BM_permute<moe::bf16>)->Apply(dispatch_shapes);
BENCHMARK(BM_combine<float>)->Apply(dispatch_shapes);
BENCHMARK(BM_combine<moe::bf16>)->Apply(dispatch_shapes);
BENCHMARK(BM_dense_dispatch)->Arg(256)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_plan_permute_dispatch)->Arg(256)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond);
// ---- end token dispatch ------------------------------------------------------------------------

// ---- grouped GEMM (moe/grouped_gemm.hpp) -----------------------------------------------------
// The expert FFN's first layer, Y_e = X_e · W_eᵀ (identity epilogue), over E = 8 experts with
// F = 2816 and H = 1024: FLOP/s counts 2·M·F·H per call (M = 8 × tokens per expert).
// dense_fraction divides it by the FLOP/s of the same host code on one dense GEMM of the same
// FLOPs (one expert holding all M rows), measured once per shape in the same run;
// sgemm_fraction (only when built with -DMOE_HAVE_CBLAS and linked to a CBLAS such as
// OpenBLAS) by cblas_sgemm's on that dense shape. Args: tokens per expert, skewed (0: uniform;
// 1: expert e gets 1/2^(e+1) of the rows, the last one the rest), H. Included here, with its
// section, because the umbrella moe/moe.hpp does not list the op yet.
#include <map>      // std::map: the dense rates, measured once per shape
#include <utility>  // std::pair

#include "moe/configs.hpp"       // moe::configs::top2_fp32, top2_bf16 (E = 8)
#include "moe/grouped_gemm.hpp"  // moe::grouped_gemm, grouped_gemm_args
#include "../expert_rows.hpp"     // moe_bench::expert_row_offsets
#if defined(MOE_HAVE_CBLAS)
#include <cblas.h>  // cblas_sgemm
#endif

namespace {

constexpr std::int64_t gg_experts = 8, gg_ffn = 2816;

std::vector<std::int64_t> gg_offsets(std::int64_t per_expert, bool skewed, std::int64_t experts) {
  return moe_bench::expert_row_offsets(per_expert, skewed, experts);
}

/// Inputs and outputs of one grouped GEMM of config C: x [M, H], w [E, F, H], y [M, F].
template <moe::config C>
struct gg_buffers {
  std::vector<std::int64_t> off;
  std::vector<moe::act_t<C>> x, y;
  std::vector<moe::weight_t<C>> w;
  moe::grouped_gemm_args<C> args;
  gg_buffers(std::vector<std::int64_t> offsets, std::int64_t H) : off(std::move(offsets)) {
    auto const E = static_cast<std::int64_t>(off.size()) - 1, M = off.back();
    x.resize(static_cast<std::size_t>(M * H));
    y.resize(static_cast<std::size_t>(M * gg_ffn));
    w.resize(static_cast<std::size_t>(E * gg_ffn * H));
    for (std::size_t i = 0; i < x.size(); ++i)
      x[i] = moe::from_float<moe::act_t<C>>(static_cast<float>(i % 977) * 0.002f - 1.0f);
    for (std::size_t i = 0; i < w.size(); ++i)
      w[i] = moe::from_float<moe::weight_t<C>>(static_cast<float>(i % 31) * 0.001f - 0.015f);
    args = {.experts = E, .rows = M, .n = gg_ffn, .k = H, .offsets = off.data(), .x = x.data(),
            .w = w.data(), .y = y.data()};
  }
};

/// Best FLOP/s of a few calls of `f` that each do `flops`.
template <class F>
double gg_best_rate(double flops, F const& f) {
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    auto const t0 = std::chrono::steady_clock::now();
    f();
    auto const t1 = std::chrono::steady_clock::now();
    best = std::max(best, flops / std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}

/// FLOP/s of the host grouped GEMM on one dense [M, H] · [H, F] product (one expert).
template <moe::config C>
double gg_dense_rate(std::int64_t M, std::int64_t H) {
  static std::map<std::pair<std::int64_t, std::int64_t>, double> cache;
  auto const key = std::make_pair(M, H);
  if (auto const it = cache.find(key); it != cache.end()) return it->second;
  gg_buffers<C> b({0, M}, H);
  return cache[key] = gg_best_rate(2.0 * static_cast<double>(M * gg_ffn * H), [&] {
           (void)moe::grouped_gemm(moe::host, b.args);
           benchmark::DoNotOptimize(b.y.data());
         });
}

#if defined(MOE_HAVE_CBLAS)
/// FLOP/s of cblas_sgemm on the same dense product, Y = X · Wᵀ (W stored [F, H]).
double gg_sgemm_rate(std::int64_t M, std::int64_t H) {
  static std::map<std::pair<std::int64_t, std::int64_t>, double> cache;
  auto const key = std::make_pair(M, H);
  if (auto const it = cache.find(key); it != cache.end()) return it->second;
  gg_buffers<moe::configs::top2_fp32> b({0, M}, H);
  auto const m = static_cast<int>(M), n = static_cast<int>(gg_ffn), k = static_cast<int>(H);
  return cache[key] = gg_best_rate(2.0 * static_cast<double>(M * gg_ffn * H), [&] {
           cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, b.x.data(), k,
                       b.w.data(), k, 0.0f, b.y.data(), n);
           benchmark::DoNotOptimize(b.y.data());
         });
}
#endif

template <moe::config C>
void BM_grouped_gemm(benchmark::State& state) {
  std::int64_t const H = state.range(2);
  gg_buffers<C> b(gg_offsets(state.range(0), state.range(1) != 0, gg_experts), H);
  std::int64_t const M = b.off.back();
  for (auto _ : state) {
    moe::status const s = moe::grouped_gemm(moe::host, b.args);
    if (!s.ok()) state.SkipWithError(s.message());
    benchmark::DoNotOptimize(b.y.data());
    benchmark::ClobberMemory();
  }
  double const flops =
      2.0 * static_cast<double>(M * gg_ffn * H) * static_cast<double>(state.iterations());
  state.counters["flop_per_second"] = benchmark::Counter(flops, benchmark::Counter::kIsRate);
  state.counters["dense_fraction"] =
      benchmark::Counter(flops / gg_dense_rate<C>(M, H), benchmark::Counter::kIsRate);
#if defined(MOE_HAVE_CBLAS)
  state.counters["sgemm_fraction"] =
      benchmark::Counter(flops / gg_sgemm_rate(M, H), benchmark::Counter::kIsRate);
#endif
}

void grouped_gemm_shapes(benchmark::internal::Benchmark* b) {
  // Real time: with OpenMP the work runs on several threads, and CPU time would count only the
  // calling one.
  b->ArgNames({"tokens_per_expert", "skewed", "H"})->Unit(benchmark::kMillisecond)->UseRealTime();
  for (std::int64_t t : {16, 128, 512})
    for (std::int64_t skewed : {0, 1}) b->Args({t, skewed, 1024});
}

}  // namespace

BENCHMARK(BM_grouped_gemm<moe::configs::top2_fp32>)->Apply(grouped_gemm_shapes);
BENCHMARK(BM_grouped_gemm<moe::configs::top2_bf16>)->Apply(grouped_gemm_shapes);
// A small unnamed row for the smoke test's /1024$ filter (the named rows escape it). CPU time:
// UseRealTime would append "/real_time" to the name, and the filter would miss it.
BENCHMARK(BM_grouped_gemm<moe::configs::top2_bf16>)->Args({4, 1, 1024});
// ---- end grouped GEMM ------------------------------------------------------------------------

// ---- router (moe/router.hpp) ---------------------------------------------------------------------
// route() on fp32 logits: tokens/s and bytes/s (logits and saved scores, [T, E] fp32 each, plus
// expert/weight/slot [T, K]) against the copy roofline. Single-threaded host router.
namespace {

template <int E, int K>
constexpr moe::config route_config{.experts = E, .top_k = K, .capacity_factor = {5, 4},
                                   .act = moe::precision::fp32, .weight = moe::precision::fp32,
                                   .norm = moe::normalization::renormalize};

template <moe::config C>
void BM_route(benchmark::State& state) {
  std::int64_t const t = state.range(0);
  auto const te = static_cast<std::size_t>(t * C.experts);
  auto const tk = static_cast<std::size_t>(t * C.top_k);
  std::vector<float> logits(te), scores(te), weight(tk);
  std::vector<std::int32_t> expert(tk), slot(tk), counts(C.experts), kept(C.experts);
  std::uint64_t seed = 5;
  for (std::size_t i = 0; i < te; ++i) logits[i] = 4.0f * moe::normal(seed, 2 * i);
  moe::route_stats stats{};
  moe::problem const prob{.tokens = t, .hidden = 1, .ffn = 1};
  moe::route_args const args{logits.data(), expert.data(), weight.data(), slot.data(),
                             counts.data(),  kept.data(),   scores.data(), &stats};
  for (auto _ : state) {
    moe::status const s = moe::route<C>(moe::host, prob, moe::router_options{}, args);
    if (!s.ok()) state.SkipWithError(s.message());
    benchmark::DoNotOptimize(stats);
  }
  report(state, static_cast<double>(2 * te * sizeof(float) + tk * 12));
  state.counters["tokens_per_second"] = benchmark::Counter(
      static_cast<double>(t) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

void route_sizes(benchmark::internal::Benchmark* b) {
  for (int t : {4096, 16384, 65536}) b->Arg(t);
  b->Unit(benchmark::kMillisecond);
}

}  // namespace

// E ∈ {8, 64, 256} × K ∈ {1, 2, 8}, T ∈ {4096, 16384, 65536}.
BENCHMARK(BM_route<route_config<8, 1>>)->Apply(route_sizes);
BENCHMARK(BM_route<route_config<8, 2>>)->Apply(route_sizes);
BENCHMARK(BM_route<route_config<8, 8>>)->Apply(route_sizes);
BENCHMARK(BM_route<route_config<64, 1>>)->Apply(route_sizes);
BENCHMARK(BM_route<route_config<64, 2>>)->Apply(route_sizes);
BENCHMARK(BM_route<route_config<64, 8>>)->Apply(route_sizes);
BENCHMARK(BM_route<route_config<256, 1>>)->Apply(route_sizes);
BENCHMARK(BM_route<route_config<256, 2>>)->Apply(route_sizes);
BENCHMARK(BM_route<route_config<256, 8>>)->Apply(route_sizes);
BENCHMARK(BM_route<route_config<8, 2>>)->Arg(1024);  // the smoke test's /1024$ row
// ---- end router ----------------------------------------------------------------------------------

// ---- the whole layer (moe/layer.hpp) ---------------------------------------------------------
// moe::layer<C> on T tokens, H and F given (no shared experts, no residual MLP), in training
// mode (cf 5/4 applies, so routes can drop), layer.init's weights N(0, 0.02²) and zero biases,
// x and dy N(0, 1):
//
//   BM_layer_forward<C>   layer.forward (router GEMM, route, plan, permute, expert FFN, combine)
//   BM_layer_step<C>      zero_grad + forward + backward, all three inside the timed loop (the
//                         step a training loop runs; zero_grad is a memset of the gradients)
//
// Counters: flop_per_second counts the GEMMs the layer runs: the router GEMM 2·T·H·E (backward
// 4·T·H·E: dx and dW_g) and the routed experts' two grouped GEMMs on the kept rows M = T·K −
// dropped (from layer_stats, so dropped routes add nothing): 2·M·H·F_w + 2·M·F·H forward
// (F_w = 2F for gated activations), twice that backward (dgrad and wgrad of each), plus the
// first GEMM again when options().recompute is fc1. Element-wise work (route, permute,
// activation, combine, zero_grad) is not counted. tokens_per_second = T per call; kept_rows is
// M. Real time: the grouped GEMMs run on OpenMP threads. Args: H, F, T.
//
// Run:  ./build/bench/benchmarks/moe_bench_host --benchmark_filter=BM_layer
#include <cstdlib>  // std::aligned_alloc, std::free
#include <memory>   // std::unique_ptr (the workspace)

#include "../layer_flops.hpp"  // moe_bench::layer_flops (shared with the CUDA benchmark)

namespace {

struct free_deleter {
  void operator()(void* q) const noexcept { std::free(q); }
};

/// Step = false: forward only; true: zero_grad + forward + backward.
template <moe::config C, bool Step>
void BM_layer(benchmark::State& state) {
  using A = moe::act_t<C>;
  std::int64_t const H = state.range(0), F = state.range(1), T = state.range(2);
  moe::layer<C> layer({.hidden = H, .ffn = F});
  moe::status s = layer.allocate();
  if (s.ok()) s = layer.init({.seed = 1, .std = 0.02f});
  if (!s.ok()) return state.SkipWithError(s.message());
  moe::problem const p = layer.make_problem(T);
  std::size_t const bytes = (layer.workspace_bytes(p) + 63) / 64 * 64;
  std::unique_ptr<void, free_deleter> const ws(std::aligned_alloc(64, bytes));
  if (ws == nullptr) return state.SkipWithError("no memory for the layer's workspace");
  auto const n = static_cast<std::size_t>(T * H);
  std::vector<A> x(n), y(n), dy(n), dx(n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = moe::from_float<A>(moe::normal(3, 2 * i));
    dy[i] = moe::from_float<A>(moe::normal(4, 2 * i));
  }
  moe::layer_stats stats{};
  for (auto _ : state) {
    if constexpr (Step) s = layer.zero_grad();
    if (s.ok())
      s = layer.forward(moe::host, p, {.x = x.data(), .y = y.data(), .stats = &stats}, ws.get(),
                        bytes);
    if constexpr (Step)
      if (s.ok())
        s = layer.backward(moe::host, p, {.x = x.data(), .dy = dy.data(), .dx = dx.data()},
                           ws.get(), bytes);
    if (!s.ok()) {
      state.SkipWithError(s.message());
      break;
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  if (!s.ok()) return;
  // Same x every call, so every call routes alike: the last call's statistics hold for all.
  std::int64_t const kept = stats.route.routes - stats.route.dropped;
  moe_bench::layer_flop_count const f = moe_bench::layer_flops<C>(layer.shape(), layer.options(), T, kept);
  auto const calls = static_cast<double>(state.iterations());
  state.counters["flop_per_second"] = benchmark::Counter(
      (Step ? f.forward + f.backward : f.forward) * calls, benchmark::Counter::kIsRate);
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(T) * calls, benchmark::Counter::kIsRate);
  state.counters["kept_rows"] = static_cast<double>(kept);
}

template <moe::config C>
void BM_layer_forward(benchmark::State& state) {
  BM_layer<C, false>(state);
}
template <moe::config C>
void BM_layer_step(benchmark::State& state) {
  BM_layer<C, true>(state);
}

void layer_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"H", "F", "T"})->Unit(benchmark::kMillisecond)->UseRealTime();
  for (std::int64_t T : {256, 1024}) b->Args({256, 512, T});
}

}  // namespace

BENCHMARK(BM_layer_forward<moe::configs::top2_fp32>)->Apply(layer_shapes);
BENCHMARK(BM_layer_forward<moe::configs::top2_bf16>)->Apply(layer_shapes);
BENCHMARK(BM_layer_step<moe::configs::top2_fp32>)->Apply(layer_shapes);
BENCHMARK(BM_layer_step<moe::configs::top2_bf16>)->Apply(layer_shapes);
// Small unnamed rows for the smoke test's /1024$ filter (the named rows above escape it):
// H = 32, F = 64, T = 1024. CPU time, because UseRealTime appends "/real_time" to the name.
BENCHMARK(BM_layer_forward<moe::configs::top2_fp32>)->Args({32, 64, 1024});
BENCHMARK(BM_layer_forward<moe::configs::top2_bf16>)->Args({32, 64, 1024});
BENCHMARK(BM_layer_step<moe::configs::top2_fp32>)->Args({32, 64, 1024});
BENCHMARK(BM_layer_step<moe::configs::top2_bf16>)->Args({32, 64, 1024});
// ---- end layer --------------------------------------------------------------------------------

BENCHMARK_MAIN();
