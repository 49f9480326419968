// SPDX-License-Identifier: Apache-2.0
// CUDA benchmarks of the router's backward and of the router GEMM, timed with CUDA events on
// one stream (manual time); inputs are drawn on the device and workspaces allocated once,
// outside the timed loop. Without a GPU every benchmark reports an error.
//
//   BM_route_backward_cuda<E, K>   route_backward on the decisions of a CUDA route forward
//       (native softmax, renormalised over the K, cf 5/4 so some routes drop; aux 0.01 and
//       z-loss 0.001 coefficients). Bytes: logits read and d_logits written ([T, E] fp32 each)
//       plus expert, slot and d_weight read ([T, K], 12 bytes a route); bytes/s, tokens/s and
//       the fraction of the d2d copy bandwidth. Args: T.
//   BM_router_gemm_cuda<C>, BM_router_gemm_backward_cuda<C>   bf16 activations and weights,
//       fp32 accumulation, H = 4096; FLOP/s (forward 2·T·H·E, backward 4·T·H·E), bytes/s (x,
//       W_g, logits; backward also d_logits, dx and dW_g read + written) and the copy-roofline
//       fraction (small E is memory-bound). Args: T, jitter (0 off, 1 Philox).
//
// Run:  ./build/bench/benchmarks/moe_bench_cuda
// --benchmark_filter='BM_route_backward|BM_router_gemm'
#include <cstdint>      // std::int32_t, std::int64_t
#include <type_traits>  // std::is_same_v

#include "common.cuh"  // have_device, time_on_device, roofline

namespace {

using namespace moe_bench;

template <class X>
X* alloc(std::int64_t n) {
  X* p = nullptr;
  if (cudaMalloc(&p, static_cast<std::size_t>(n > 0 ? n : 1) * sizeof(X)) != cudaSuccess)
    return nullptr;
  return p;
}

/// N(0, 1) floats (then converted to X) in device memory; false on any failure.
template <class X>
bool fill_normal(X* out, std::int64_t n, std::uint64_t seed, float* scratch) {
  if (!moe::fill_random(moe::cuda_on(nullptr),
                        {.dist = moe::distribution::normal, .seed = seed, .out = scratch, .n = n})
           .ok())
    return false;
  if constexpr (std::is_same_v<X, float>) {
    return cudaMemcpy(out, scratch, static_cast<std::size_t>(n) * sizeof(float),
                      cudaMemcpyDeviceToDevice) == cudaSuccess;
  } else {
    return moe::convert(moe::cuda_on(nullptr), moe::convert_args<float, X>{scratch, out, n}).ok();
  }
}

// ---- route_backward ----------------------------------------------------------------------------

template <std::int32_t E, std::int32_t K>
constexpr moe::config route_bwd_config{.experts = E,
                                       .top_k = K,
                                       .capacity_factor = {5, 4},
                                       .eval_capacity_factor = {5, 4},
                                       .score = moe::score_function::softmax,
                                       .norm = moe::normalization::renormalize};

template <moe::config C>
void BM_route_backward_cuda(benchmark::State& state) {
  if (!have_device(state)) return;
  constexpr std::int32_t E = C.experts;
  constexpr std::int32_t K = C.top_k;
  std::int64_t const T = state.range(0);
  moe::problem p;
  p.tokens = T;
  p.training = true;
  p.min_capacity = 0;
  p.aux_loss_coef = 0.01f;
  p.z_loss_coef = 0.001f;
  std::size_t const fwd_bytes = moe::route_workspace_bytes<C>(p);
  std::size_t const bwd_bytes = moe::route_backward_workspace_bytes<C>(p);
  if (fwd_bytes == 0 || bwd_bytes == 0) return state.SkipWithError("workspace query failed");
  float* const logits = alloc<float>(T * E);
  float* const d_logits = alloc<float>(T * E);
  float* const weight = alloc<float>(T * K);
  float* const d_weight = alloc<float>(T * K);
  auto* const expert = alloc<std::int32_t>(T * K);
  auto* const slot = alloc<std::int32_t>(T * K);
  auto* const counts = alloc<std::int32_t>(E);
  auto* const kept = alloc<std::int32_t>(E);
  auto* const stats = alloc<moe::route_stats>(1);
  auto* const fws = alloc<unsigned char>(static_cast<std::int64_t>(fwd_bytes));
  auto* const bws = alloc<unsigned char>(static_cast<std::int64_t>(bwd_bytes));
  bool ok = logits && d_logits && weight && d_weight && expert && slot && counts && kept && stats &&
            fws && bws;
  ok = ok &&
       moe::fill_random(moe::cuda_on(nullptr),
                        {.dist = moe::distribution::normal, .seed = 11, .out = logits, .n = T * E})
           .ok();
  ok = ok && moe::fill_random(
                 moe::cuda_on(nullptr),
                 {.dist = moe::distribution::normal, .seed = 12, .out = d_weight, .n = T * K})
                 .ok();
  ok = ok && moe::route<C>(moe::cuda_on(nullptr, fws, fwd_bytes), p, {},
                           {.logits = logits,
                            .expert = expert,
                            .weight = weight,
                            .slot = slot,
                            .counts = counts,
                            .kept = kept,
                            .stats = stats})
                 .ok();
  moe::route_backward_args const a{
      .logits = logits, .expert = expert, .slot = slot, .d_weight = d_weight, .d_logits = d_logits};
  moe::cuda_policy const pol = moe::cuda_on(nullptr, bws, bwd_bytes);
  if (ok && moe::route_backward<C>(pol, p, {}, a).ok()) {
    double const bytes =
        2.0 * static_cast<double>(T * E) * sizeof(float) + static_cast<double>(T * K) * 12.0;
    time_on_device(state, bytes, [&] { (void)moe::route_backward<C>(pol, p, {}, a); });
    roofline(state, bytes);
    state.counters["tokens_per_second"] = benchmark::Counter(
        static_cast<double>(T * state.iterations()), benchmark::Counter::kIsRate);
  } else {
    state.SkipWithError("setup or route_backward failed");
  }
  for (void* q :
       {static_cast<void*>(logits), static_cast<void*>(d_logits), static_cast<void*>(weight),
        static_cast<void*>(d_weight), static_cast<void*>(expert), static_cast<void*>(slot),
        static_cast<void*>(counts), static_cast<void*>(kept), static_cast<void*>(stats),
        static_cast<void*>(fws), static_cast<void*>(bws)})
    cudaFree(q);
}

void route_tokens(benchmark::internal::Benchmark* b) {
  for (std::int64_t T : {4096, 16384, 65536}) b->Arg(T);
  b->UseManualTime();
}

// ---- router GEMM -------------------------------------------------------------------------------

constexpr std::int64_t gemm_hidden = 4096;

template <std::int32_t E>
constexpr moe::config router_gemm_config{.experts = E, .top_k = E >= 2 ? 2 : 1};

/// forward = false: router_gemm_backward. Args: T, jitter.
template <moe::config C, bool Forward>
void BM_router_gemm(benchmark::State& state) {
  if (!have_device(state)) return;
  using X = moe::act_t<C>;
  using A = moe::accum_t<C>;
  constexpr std::int64_t E = C.experts;
  std::int64_t const T = state.range(0);
  std::int64_t const H = gemm_hidden;
  moe::problem p;
  p.tokens = T;
  p.hidden = H;
  p.training = true;
  p.seed = 5;
  moe::router_jitter const jitter{.eps = state.range(1) != 0 ? 0.01f : 0.0f};
  std::size_t const ws_bytes = Forward ? moe::router_gemm_workspace_bytes<C>(p)
                                       : moe::router_gemm_backward_workspace_bytes<C>(p);
  X* const x = alloc<X>(T * H);
  X* const dx = Forward ? nullptr : alloc<X>(T * H);
  X* const w = alloc<X>(H * E);
  A* const logits = alloc<A>(T * E);
  A* const dw = alloc<A>(H * E);
  float* const scratch = alloc<float>(T * H);
  auto* const ws = alloc<unsigned char>(static_cast<std::int64_t>(ws_bytes));
  bool ok = x && (Forward || dx) && w && logits && dw && scratch && ws;
  ok = ok && fill_normal(x, T * H, 1, scratch) && fill_normal(w, H * E, 2, scratch) &&
       fill_normal(logits, T * E, 3, scratch) &&
       cudaMemset(dw, 0, static_cast<std::size_t>(H * E) * sizeof(A)) == cudaSuccess;
  moe::cuda_policy const pol = moe::cuda_on(nullptr, ws, ws_bytes);
  auto const run = [&] {
    if constexpr (Forward)
      return moe::router_gemm(pol, p, moe::router_gemm_args<C>{x, w, logits, jitter});
    else
      return moe::router_gemm_backward(
          pol, p, moe::router_gemm_backward_args<C>{x, w, logits, dx, dw, jitter});
  };
  if (ok && run().ok()) {
    double const xb = static_cast<double>(T * H) * sizeof(X);
    double const wb = static_cast<double>(H * E) * sizeof(X);
    double const lb = static_cast<double>(T * E) * sizeof(A);
    double const dwb = static_cast<double>(H * E) * sizeof(A);
    double const bytes = Forward ? xb + wb + lb : 2.0 * xb + 2.0 * wb + 2.0 * lb + 2.0 * dwb;
    double const flops = (Forward ? 2.0 : 4.0) * static_cast<double>(T * H * E);
    time_on_device(state, bytes, [&] { (void)run(); });
    roofline(state, bytes);
    state.counters["flop_per_second"] = benchmark::Counter(
        flops * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  } else {
    state.SkipWithError(ok ? "router GEMM failed" : "out of device memory or fill failed");
  }
  for (void* q : {static_cast<void*>(x), static_cast<void*>(dx), static_cast<void*>(w),
                  static_cast<void*>(logits), static_cast<void*>(dw), static_cast<void*>(scratch),
                  static_cast<void*>(ws)})
    cudaFree(q);
}

template <moe::config C>
void BM_router_gemm_cuda(benchmark::State& state) {
  BM_router_gemm<C, true>(state);
}
template <moe::config C>
void BM_router_gemm_backward_cuda(benchmark::State& state) {
  BM_router_gemm<C, false>(state);
}

void gemm_args(benchmark::internal::Benchmark* b) {
  for (std::int64_t T : {4096, 16384, 65536})
    for (std::int64_t jitter : {0, 1}) b->Args({T, jitter});
  b->UseManualTime();
}

}  // namespace

BENCHMARK(BM_route_backward_cuda<route_bwd_config<8, 1>>)->Apply(route_tokens);
BENCHMARK(BM_route_backward_cuda<route_bwd_config<8, 2>>)->Apply(route_tokens);
BENCHMARK(BM_route_backward_cuda<route_bwd_config<8, 8>>)->Apply(route_tokens);
BENCHMARK(BM_route_backward_cuda<route_bwd_config<64, 1>>)->Apply(route_tokens);
BENCHMARK(BM_route_backward_cuda<route_bwd_config<64, 2>>)->Apply(route_tokens);
BENCHMARK(BM_route_backward_cuda<route_bwd_config<64, 8>>)->Apply(route_tokens);
BENCHMARK(BM_route_backward_cuda<route_bwd_config<256, 1>>)->Apply(route_tokens);
BENCHMARK(BM_route_backward_cuda<route_bwd_config<256, 2>>)->Apply(route_tokens);
BENCHMARK(BM_route_backward_cuda<route_bwd_config<256, 8>>)->Apply(route_tokens);
BENCHMARK(BM_router_gemm_cuda<router_gemm_config<8>>)->Apply(gemm_args);
BENCHMARK(BM_router_gemm_cuda<router_gemm_config<64>>)->Apply(gemm_args);
BENCHMARK(BM_router_gemm_cuda<router_gemm_config<256>>)->Apply(gemm_args);
BENCHMARK(BM_router_gemm_backward_cuda<router_gemm_config<8>>)->Apply(gemm_args);
BENCHMARK(BM_router_gemm_backward_cuda<router_gemm_config<64>>)->Apply(gemm_args);
BENCHMARK(BM_router_gemm_backward_cuda<router_gemm_config<256>>)->Apply(gemm_args);
