// SPDX-License-Identifier: Apache-2.0
// CUDA benchmarks of the whole MoE layer, moe::layer<C, moe::cuda_policy> (moe/cuda/layer.cuh):
// T tokens, H and F given, no shared experts and no residual MLP, in training mode (cf 5/4
// applies, so routes can drop); parameters N(0, 0.02²), x and dy N(0, 1), drawn on the device.
// Parameters, gradients, workspace and every tensor are allocated once, outside the timed loop.
// Timed with CUDA events on the default stream (manual time). Without a GPU every benchmark
// reports an error.
//
//   BM_layer_forward_cuda<C>   layer.forward (router GEMM, route, plan, permute, expert FFN,
//       combine)
//   BM_layer_step_cuda<C>      zero_grad + forward + backward, all three timed (the step a
//       training loop runs; zero_grad is a cudaMemsetAsync of the gradients)
//
// Counters: flop_per_second counts the GEMMs the layer runs: the router GEMM 2·T·H·E (backward
// 4·T·H·E: dx and dW_g) and the routed experts' two grouped GEMMs on the kept rows M = T·K −
// dropped (from the forward's layer_stats, read back after the timed loop; the inputs are the
// same every call, so every call routes alike): 2·M·H·F_w + 2·M·F·H forward (F_w = 2F for gated
// activations), twice that backward (dgrad and wgrad of each), plus the first GEMM again when
// options().recompute is fc1. Element-wise work (route, permute, activation, combine) is not
// counted. peak_fraction: of the tensor-core peak for bf16 (SMs × clock × dense bf16
// FLOP/clk/SM, as grouped_gemm.cu: 4096 on sm_90, 2048 on sm_80, 1024 on other sm_8x), of the
// FFMA peak for fp32 (the fp32 grouped GEMM is a SIMT kernel, no TF32: 256 FLOP/clk/SM, 128 on
// sm_80). bytes_per_second (time_on_device's) counts only the compulsory traffic: x and y
// (step: also dy and dx) once, the parameters read once per pass, the gradients (step)
// written once — a lower bound, not a roofline. tokens_per_second = T per call; kept_rows = M.
// Args: H, F, T.
//
// Run:  ./build/bench/benchmarks/moe_bench_cuda --benchmark_filter=BM_layer
#include <cstdint>      // std::int64_t, std::uint64_t
#include <type_traits>  // std::is_same_v

#include "../layer_flops.hpp"  // moe_bench::layer_flops (shared with the host benchmark)
#include "common.cuh"          // have_device, time_on_device
#include "moe/configs.hpp"     // moe::configs::top2_bf16, top2_fp32 (E = 8, K = 2)
#include "moe/cuda/layer.cuh"  // moe::layer<C, moe::cuda_policy>

namespace {

using namespace moe_bench;
using i64 = std::int64_t;


/// out[i] = from_float(sd · N(0, 1)), draw i of Philox stream `seed`. The layer's parameters
/// are drawn here rather than by layer.init, which draws on the host: seconds per benchmark
/// instance at these sizes, which would eat a short GPU lease.
template <class X>
__global__ void normal_fill_kernel(i64 n, std::uint64_t seed, float sd, X* out) {
  i64 const stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = moe::from_float<X>(sd * moe::normal(seed, 2 * static_cast<std::uint64_t>(i)));
}

template <class X>
moe::status normal_fill(X* out, i64 n, std::uint64_t seed, float sd) {
  normal_fill_kernel<X><<<1024, 256>>>(n, seed, sd, out);
  MOE_CUDA_TRY(cudaGetLastError());
  MOE_CUDA_TRY(cudaDeviceSynchronize());
  return {};
}

/// Peak FLOP/s of the units the layer's GEMMs run on: bf16 tensor cores, or FFMA for fp32
/// (see the file comment).
template <moe::config C>
double gemm_peak() {
  return device_peak(!std::is_same_v<moe::act_t<C>, float>);
}

/// Step = false: forward only; true: zero_grad + forward + backward.
template <moe::config C, bool Step>
void BM_layer_cuda(benchmark::State& state) {
  if (!have_device(state)) return;
  using A = moe::act_t<C>;
  i64 const H = state.range(0), F = state.range(1), T = state.range(2);
  moe::layer<C, moe::cuda_policy> layer({.hidden = H, .ffn = F});
  moe::status s = layer.allocate();
  // Every parameter N(0, 0.02²), biases included (the values only steer the routing).
  if (s.ok()) s = normal_fill(layer.flat_params(), layer.parameter_count(), 1, 0.02f);
  if (!s.ok()) return state.SkipWithError(s.message());
  moe::problem const p = layer.make_problem(T);
  std::size_t const bytes = layer.workspace_bytes(p);
  device_buffer<char> ws(static_cast<i64>(bytes));
  device_buffer<A> x(T * H), y(T * H), dy(T * H), dx(T * H);
  device_buffer<moe::layer_stats> stats(1);
  if (ws.p == nullptr || x.p == nullptr || y.p == nullptr || dy.p == nullptr || dx.p == nullptr ||
      stats.p == nullptr)
    return state.SkipWithError("cudaMalloc failed");
  s = normal_fill(x.p, T * H, 3, 1.0f);
  if (s.ok()) s = normal_fill(dy.p, T * H, 4, 1.0f);
  if (!s.ok()) return state.SkipWithError(s.message());

  auto const policy = moe::cuda_on(nullptr);
  auto const run = [&] {  // keeps the first error: later calls enqueue nothing
    if constexpr (Step)
      if (s.ok()) s = layer.zero_grad(policy);
    if (s.ok()) s = layer.forward(policy, p, {.x = x.p, .y = y.p, .stats = stats.p}, ws.p, bytes);
    if constexpr (Step)
      if (s.ok()) s = layer.backward(policy, p, {.x = x.p, .dy = dy.p, .dx = dx.p}, ws.p, bytes);
  };
  double const act_bytes = static_cast<double>(T * H) * sizeof(A);
  double const params = static_cast<double>(layer.parameter_count());
  double const io_bytes = Step ? 4.0 * act_bytes + 2.0 * params * sizeof(moe::weight_t<C>) +
                                     params * sizeof(moe::accum_t<C>)
                               : 2.0 * act_bytes + params * sizeof(moe::weight_t<C>);
  time_on_device(state, io_bytes, run);
  if (!s.ok()) return state.SkipWithError(s.message());
  if (state.error_occurred()) return;  // time_on_device saw a CUDA error
  moe::layer_stats host_stats{};
  if (cudaMemcpy(&host_stats, stats.p, sizeof host_stats, cudaMemcpyDeviceToHost) != cudaSuccess)
    return state.SkipWithError("reading layer_stats back failed");
  i64 const kept = host_stats.route.routes - host_stats.route.dropped;
  moe_bench::layer_flop_count const f = moe_bench::layer_flops<C>(layer.shape(), layer.options(), T, kept);
  double const total =
      (Step ? f.forward + f.backward : f.forward) * static_cast<double>(state.iterations());
  state.counters["flop_per_second"] = benchmark::Counter(total, benchmark::Counter::kIsRate);
  state.counters["peak_fraction"] =
      benchmark::Counter(total / gemm_peak<C>(), benchmark::Counter::kIsRate);
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(T) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.counters["kept_rows"] = static_cast<double>(kept);
}

template <moe::config C>
void BM_layer_forward_cuda(benchmark::State& state) {
  BM_layer_cuda<C, false>(state);
}
template <moe::config C>
void BM_layer_step_cuda(benchmark::State& state) {
  BM_layer_cuda<C, true>(state);
}

/// H ∈ {1024, 2048}, F = 4096, T ∈ {4096, 16384} (M = T·K = 8k to 32k rows over E = 8).
void layer_shapes(benchmark::internal::Benchmark* b) {
  for (i64 H : {1024, 2048})
    for (i64 T : {4096, 16384}) b->Args({H, 4096, T});
  b->ArgNames({"H", "F", "T"})->UseManualTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_layer_forward_cuda<moe::configs::top2_bf16>)->Apply(layer_shapes);
BENCHMARK(BM_layer_step_cuda<moe::configs::top2_bf16>)->Apply(layer_shapes);
BENCHMARK(BM_layer_forward_cuda<moe::configs::top2_fp32>)->Apply(layer_shapes);
BENCHMARK(BM_layer_step_cuda<moe::configs::top2_fp32>)->Apply(layer_shapes);
