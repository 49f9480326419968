// SPDX-License-Identifier: Apache-2.0
// CUDA benchmarks of the grouped GEMM (moe/cuda/grouped_gemm.cuh), bf16 with fp32
// accumulation, timed with CUDA events on one stream (manual time); inputs drawn on the device
// and every buffer allocated once, outside the timed loop. Without a GPU every benchmark
// reports an error.
//
//   BM_grouped_gemm_cuda<op>   the FFN's first layer (N = F, K = H, identity epilogue) over E
//       experts with M = E · rows-per-expert rows: forward y = x·W_eᵀ, dgrad dx = dy·W_e,
//       wgrad dW_e = dy_eᵀ·x_e. 2·M·F·H FLOP each. Args: E, H, F, rows per expert (≈16 few,
//       128 medium, 1024 many), skewed (0: every expert gets the same rows; 1: expert e gets
//       M/2^(e+1) rows and the last one the rest — most experts empty at E ≥ 64, the host
//       benchmark's skew). Shapes, from the models they stand for:
//         Mixtral 8x7B           E = 8,   H = 4096, F = 14336 (top-2)
//         DeepSeek-V2-Lite       E = 64,  H = 2048, F = 1408  (top-6)
//         DeepSeek-V3            E = 256, H = 7168, F = 2048  (top-8)
//         DeepSpeed-MoE 1.3B     E = 128, H = 2048, F = 8192  (top-1)
//       (top-k sets how many tokens give those rows: T = M / k; it does not change the GEMM.)
// Counters: flop_per_second; dense_fraction, of one cuBLAS bf16 GEMM (cublasGemmEx, fp32
// compute) of the same M × F × H measured once per shape in the same run (a grouped GEMM
// cannot beat the dense GEMM of its FLOPs on a balanced split); peak_fraction, of the
// tensor-core peak SMs × clock × FLOP/clk/SM with the clock cudaDevAttrClockRate (the boost
// clock: 1.98 GHz on an H100 SXM, which makes this peak 1070 TFLOP/s, above the 989 of the
// datasheet at 1.83 GHz) and dense bf16 FLOP/clk/SM = 4096 on sm_90 (2048 FMA), 2048 on
// sm_80 (A100: 108 × 1.41 GHz × 2048 = 312 TFLOP/s), 1024 on other sm_8x.
//
// Run:  ./build/bench/benchmarks/moe_bench_cuda --benchmark_filter=BM_grouped_gemm
#include <cublas_v2.h>  // the dense yardstick

#include <cstdint>  // std::int64_t
#include <map>      // std::map (dense rate per shape)
#include <tuple>    // std::tuple
#include <vector>   // std::vector

#include "common.cuh"  // have_device, time_on_device
#include "../expert_rows.hpp"  // moe_bench::expert_row_offsets

namespace {

using namespace moe_bench;
using i64 = std::int64_t;
// experts: the largest E of the shapes below (the ops take E_l <= C.experts).
constexpr moe::config bf16_cfg{.experts = 256, .top_k = 8, .capacity_factor = {0, 1},
                               .eval_capacity_factor = {0, 1}};
using X = moe::bf16;

template <class T>
using buffer = device_buffer<T>;


/// Best-of-10 FLOP/s of one dense cuBLAS GEMM C[M, N] = A[M, K]·B[N, K]ᵀ (bf16, fp32 compute).
double dense_rate(i64 m, i64 n, i64 k, float* scratch, i64 chunk) {
  static std::map<std::tuple<i64, i64, i64>, double> cache;
  auto const key = std::make_tuple(m, n, k);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  buffer<X> a(m * k), b(n * k), c(m * n);
  cublasHandle_t h = nullptr;
  if (a.p == nullptr || b.p == nullptr || c.p == nullptr ||
      cublasCreate(&h) != CUBLAS_STATUS_SUCCESS)
    return 0;
  float const one = 1, zero = 0;
  auto gemm = [&] {
    cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                 static_cast<int>(k), &one, b.p, CUDA_R_16BF, static_cast<int>(k), a.p,
                 CUDA_R_16BF, static_cast<int>(k), &zero, c.p, CUDA_R_16BF, static_cast<int>(n),
                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  // Random operands: constant ones would flatter the yardstick (METHOD: zeros ran a bf16 GEMM
  // 13 % faster on an H200).
  if (!fill_uniform(a.p, m * k, 7, scratch, chunk) || !fill_uniform(b.p, n * k, 8, scratch, chunk)) {
    cublasDestroy(h);
    return 0;
  }
  gemm();
  cudaEvent_t start{}, stop{};
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  float best = 1e30f;
  for (int r = 0; r < 10; ++r) {
    cudaEventRecord(start);
    gemm();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    best = ms < best ? ms : best;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cublasDestroy(h);
  double const rate = 2.0 * static_cast<double>(m) * static_cast<double>(n) *
                      static_cast<double>(k) / (static_cast<double>(best) / 1e3);
  return cache[key] = rate;
}

/// Dense bf16 tensor-core peak (see the file comment).
double tensor_peak() { return device_peak(true); }

enum class gemm_op { forward, dgrad, wgrad };

template <gemm_op Op>
void BM_grouped_gemm_cuda(benchmark::State& state) {
  if (!have_device(state)) return;
  i64 const E = state.range(0), H = state.range(1), F = state.range(2);
  i64 const M = E * state.range(3);
  bool const skewed = state.range(4) != 0;
  buffer<X> x(M * H), w(E * F * H), dy(M * F), y(M * F), dx(M * H);
  buffer<float> dw(E * F * H), scratch(i64{1} << 24);
  buffer<i64> off(E + 1);
  if (x.p == nullptr || w.p == nullptr || dy.p == nullptr || y.p == nullptr || dx.p == nullptr ||
      dw.p == nullptr || scratch.p == nullptr || off.p == nullptr) {
    state.SkipWithError("cudaMalloc failed");
    return;
  }
  std::vector<i64> const h_off = moe_bench::expert_row_offsets(state.range(3), skewed, E);
  cudaMemcpy(off.p, h_off.data(), h_off.size() * sizeof(i64), cudaMemcpyHostToDevice);
  if (!fill_uniform(x.p, M * H, 1, scratch.p, i64{1} << 24) || !fill_uniform(w.p, E * F * H, 2, scratch.p, i64{1} << 24) ||
      !fill_uniform(dy.p, M * F, 3, scratch.p, i64{1} << 24)) {
    state.SkipWithError("fill failed");
    return;
  }
  auto const policy = moe::cuda_on(nullptr);
  moe::status s;
  auto run = [&] {
    if constexpr (Op == gemm_op::forward)
      s = moe::grouped_gemm(policy, moe::grouped_gemm_args<bf16_cfg>{
                                        .experts = E, .rows = M, .n = F, .k = H,
                                        .offsets = off.p, .x = x.p, .w = w.p, .y = y.p});
    else if constexpr (Op == gemm_op::dgrad)
      s = moe::grouped_gemm_dgrad(policy, moe::grouped_gemm_dgrad_args<bf16_cfg>{
                                              .experts = E, .rows = M, .n = F, .k = H,
                                              .offsets = off.p, .dy = dy.p, .w = w.p, .dx = dx.p});
    else
      s = moe::grouped_gemm_wgrad(policy, moe::grouped_gemm_wgrad_args<bf16_cfg>{
                                              .experts = E, .rows = M, .n = F, .k = H,
                                              .offsets = off.p, .x = x.p, .dy = dy.p,
                                              .dw = dw.p});
  };
  double const flops = 2.0 * static_cast<double>(M) * static_cast<double>(F) * static_cast<double>(H);
  double const dense = dense_rate(M, F, H, scratch.p, i64{1} << 24), peak = tensor_peak();
  double const bytes =  // operands read and the result written once
      Op == gemm_op::wgrad
          ? 2.0 * static_cast<double>(M * H + M * F) + 4.0 * static_cast<double>(E * F * H)
          : 2.0 * static_cast<double>(M * H + E * F * H + M * F);
  time_on_device(state, bytes, run);
  if (!s.ok()) {
    state.SkipWithError(s.message());
    return;
  }
  double const total = flops * static_cast<double>(state.iterations());
  state.counters["flop_per_second"] = benchmark::Counter(total, benchmark::Counter::kIsRate);
  if (dense > 0)
    state.counters["dense_fraction"] = benchmark::Counter(total / dense, benchmark::Counter::kIsRate);
  state.counters["peak_fraction"] = benchmark::Counter(total / peak, benchmark::Counter::kIsRate);
  state.counters["dense_flop_per_second"] = dense;
}

/// The model shapes of the file comment × rows per expert {16, 128, 1024} × {uniform, skewed}.
void shapes(benchmark::internal::Benchmark* b) {
  constexpr i64 models[][3] = {{8, 4096, 14336}, {64, 2048, 1408}, {256, 7168, 2048},
                               {128, 2048, 8192}};
  for (auto const& m : models)
    for (i64 rows : {16, 128, 1024})
      for (i64 skewed : {0, 1}) b->Args({m[0], m[1], m[2], rows, skewed});
  b->ArgNames({"E", "H", "F", "rows_per_expert", "skewed"})->UseManualTime();
}

}  // namespace

BENCHMARK(BM_grouped_gemm_cuda<gemm_op::forward>)->Apply(shapes);
BENCHMARK(BM_grouped_gemm_cuda<gemm_op::dgrad>)->Apply(shapes);
BENCHMARK(BM_grouped_gemm_cuda<gemm_op::wgrad>)->Apply(shapes);
