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
#include "common.cuh"  // have_device, time_on_device, copy_bandwidth, roofline

namespace {

using namespace moe_bench;

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

// ---- token dispatch (moe/cuda/plan.cuh, moe/cuda/permute.cuh) ------------------------------
// plan, permute and combine on the device over a dropless compact plan of T tokens routed to K
// of E = 64 experts (synthetic, balanced routes), reported as bytes/s and as a fraction of the
// d2d copy bandwidth: permute moves 2·T·K·H elements (plus source_of), combine T·K·H + T·H
// (plus row_of and weights). Args: T, K, H. The scaling pair compares plan + permute into the
// [E, C, H] layout with DeepSpeed's original dense one-hot dispatch ("sec,sm->ecm" with
// C = ⌈1.25·T·K/E⌉, E = 8, K = 2, H = 128), written here as an fp32 tiled CUDA-core GEMM over
// a [T, E·C] mask — cuBLAS would be faster by a constant factor, but its work still grows as
// T². Included here, with its section, because the umbrella moe/cuda.cuh does not list the
// ops yet.
#include <algorithm>  // std::fill
#include <vector>     // std::vector

#include "moe/cuda/permute.cuh"  // moe::permute, moe::combine (CUDA overloads)
#include "moe/cuda/plan.cuh"     // moe::plan (CUDA overload), plan_workspace_bytes

namespace {

// Routes of T tokens to K distinct experts of E, spread evenly, slots by position.
void make_dispatch_routes(std::int64_t T, std::int32_t K, std::int32_t E, std::int64_t C,
                          std::vector<std::int32_t>& expert, std::vector<std::int32_t>& slot,
                          std::vector<float>& weight) {
  auto const n = static_cast<std::size_t>(T * K);
  expert.resize(n);
  slot.resize(n);
  weight.assign(n, 1.0f / static_cast<float>(K));
  std::vector<std::int64_t> count(static_cast<std::size_t>(E), 0);
  for (std::int64_t t = 0; t < T; ++t) {
    auto const first = static_cast<std::int32_t>((t * 2654435761LL) % E);
    for (std::int32_t k = 0; k < K; ++k) {
      auto const i = static_cast<std::size_t>(t * K + k);
      expert[i] = (first + k * (E / K)) % E;
      std::int64_t& c = count[static_cast<std::size_t>(expert[i])];
      slot[i] = c < C ? static_cast<std::int32_t>(c++) : -1;
    }
  }
}

// A device plan of routes, built by the CUDA plan (which the benchmark also times).
struct device_dispatch {
  std::int64_t T = 0, C = 0, rows = 0;
  std::int32_t K = 1, E = 1;
  moe::plan_layout layout = moe::plan_layout::compact;
  std::int32_t *expert = nullptr, *slot = nullptr, *row_of = nullptr, *source_of = nullptr;
  std::int64_t* offsets = nullptr;
  float* weight = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;

  device_dispatch(std::int64_t tokens, std::int32_t top_k, std::int32_t experts,
                  std::int64_t capacity, moe::plan_layout l)
      : T(tokens), C(capacity), K(top_k), E(experts), layout(l) {
    std::vector<std::int32_t> e, s;
    std::vector<float> w;
    make_dispatch_routes(T, K, E, C, e, s, w);
    rows = moe::plan_rows_bound(T, K, E, C, layout);
    auto const n = e.size();
    cudaMalloc(&expert, n * sizeof(std::int32_t));
    cudaMalloc(&slot, n * sizeof(std::int32_t));
    cudaMalloc(&row_of, n * sizeof(std::int32_t));
    cudaMalloc(&weight, n * sizeof(float));
    cudaMalloc(&source_of, static_cast<std::size_t>(rows) * sizeof(std::int32_t));
    cudaMalloc(&offsets, static_cast<std::size_t>(E + 1) * sizeof(std::int64_t));
    cudaMemcpy(expert, e.data(), n * sizeof(std::int32_t), cudaMemcpyHostToDevice);
    cudaMemcpy(slot, s.data(), n * sizeof(std::int32_t), cudaMemcpyHostToDevice);
    cudaMemcpy(weight, w.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    workspace_bytes = moe::plan_workspace_bytes(args());
    cudaMalloc(&workspace, workspace_bytes);
  }
  device_dispatch(device_dispatch const&) = delete;
  device_dispatch& operator=(device_dispatch const&) = delete;
  ~device_dispatch() {
    for (void* p : {static_cast<void*>(expert), static_cast<void*>(slot),
                    static_cast<void*>(row_of), static_cast<void*>(source_of),
                    static_cast<void*>(offsets), static_cast<void*>(weight), workspace})
      cudaFree(p);
  }
  moe::plan_args args() const {
    return {.layout = layout, .tokens = T, .top_k = K, .experts = E, .capacity = C,
            .expert = expert, .slot = slot, .offsets = offsets, .row_of = row_of,
            .source_of = source_of, .source_rows = rows};
  }
  moe::status plan() const {
    return moe::plan(moe::cuda_on(nullptr, workspace, workspace_bytes), args());
  }
};

constexpr std::int32_t dispatch_experts = 64;

template <class X>
X* device_tensor(std::int64_t n) {
  X* p = nullptr;
  if (cudaMalloc(&p, static_cast<std::size_t>(n) * sizeof(X)) != cudaSuccess) return nullptr;
  cudaMemset(p, 0x3c, static_cast<std::size_t>(n) * sizeof(X));  // finite values in every format
  return p;
}

template <class X>
void BM_permute(benchmark::State& state) {
  if (!have_device(state)) return;
  std::int64_t const T = state.range(0), H = state.range(2);
  auto const K = static_cast<std::int32_t>(state.range(1));
  device_dispatch const d(T, K, dispatch_experts, T, moe::plan_layout::compact);
  if (!d.plan().ok()) return state.SkipWithError("plan failed");
  X* const x = device_tensor<X>(T * H);
  X* const out = device_tensor<X>(d.rows * H);
  if (x == nullptr || out == nullptr) return state.SkipWithError("out of device memory");
  double const bytes = 2.0 * static_cast<double>(d.rows * H) * sizeof(X) +
                       static_cast<double>(d.rows) * sizeof(std::int32_t);
  moe::permute_args<X> const a{x, d.source_of, out, T, H, d.rows, K};
  time_on_device(state, bytes, [&] { (void)moe::permute(moe::cuda_on(nullptr), a); });
  roofline(state, bytes);
  cudaFree(x);
  cudaFree(out);
}

template <class X>
void BM_combine(benchmark::State& state) {
  if (!have_device(state)) return;
  std::int64_t const T = state.range(0), H = state.range(2);
  auto const K = static_cast<std::int32_t>(state.range(1));
  device_dispatch const d(T, K, dispatch_experts, T, moe::plan_layout::compact);
  if (!d.plan().ok()) return state.SkipWithError("plan failed");
  X* const o = device_tensor<X>(d.rows * H);
  X* const y = device_tensor<X>(T * H);
  if (o == nullptr || y == nullptr) return state.SkipWithError("out of device memory");
  double const bytes = static_cast<double>(T * K * H + T * H) * sizeof(X) +
                       static_cast<double>(T * K) * (sizeof(std::int32_t) + sizeof(float));
  moe::combine_args<X> const a{o, d.row_of, d.weight, y, T, H, d.rows, K};
  time_on_device(state, bytes, [&] { (void)moe::combine(moe::cuda_on(nullptr), a); });
  roofline(state, bytes);
  cudaFree(o);
  cudaFree(y);
}

// The plan itself: histogram, scan and scatter over T·K routes (bytes: expert and slot read,
// row_of and source_of written).
void BM_plan(benchmark::State& state) {
  if (!have_device(state)) return;
  std::int64_t const T = state.range(0);
  auto const K = static_cast<std::int32_t>(state.range(1));
  device_dispatch const d(T, K, dispatch_experts, T, moe::plan_layout::compact);
  double const bytes = static_cast<double>(T * K) * 3 * sizeof(std::int32_t) +
                       static_cast<double>(d.rows) * sizeof(std::int32_t);
  time_on_device(state, bytes, [&] { (void)d.plan(); });
  roofline(state, bytes);
}

void dispatch_shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t T : {4096, 16384, 65536})
    for (std::int64_t K : {1, 2, 8})
      for (std::int64_t H : {1024, 4096, 7168}) b->Args({T, K, H});
  b->UseManualTime();
}

constexpr std::int32_t scaling_experts = 8, scaling_top_k = 2;
constexpr std::int64_t scaling_hidden = 128;

std::int64_t scaling_capacity(std::int64_t T) {
  return (5 * T * scaling_top_k + 4 * scaling_experts - 1) / (4 * scaling_experts);
}

// dispatch_mask[t, e·C + slot] = 1 for every kept route (the mask was zeroed before).
__global__ void dense_mask_kernel(std::int32_t const* expert, std::int32_t const* slot,
                                  float* mask, std::int64_t routes, std::int64_t ec,
                                  std::int64_t capacity) {
  std::int64_t const i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < routes && slot[i] >= 0)
    mask[i / scaling_top_k * ec + expert[i] * capacity + slot[i]] = 1.0f;
}

// out[ec, h] = Σ_t mask[t, ec] · x[t, h]: a 16×16-tiled fp32 GEMM through shared memory.
__global__ void dense_dispatch_kernel(float const* mask, float const* x, float* out,
                                      std::int64_t tokens, std::int64_t ec_rows,
                                      std::int64_t hidden) {
  __shared__ float sm[16][17], sx[16][17];
  std::int64_t const ec = static_cast<std::int64_t>(blockIdx.y) * 16 + threadIdx.y;
  std::int64_t const h = static_cast<std::int64_t>(blockIdx.x) * 16 + threadIdx.x;
  float acc = 0.0f;
  for (std::int64_t t0 = 0; t0 < tokens; t0 += 16) {
    std::int64_t const ec_load = static_cast<std::int64_t>(blockIdx.y) * 16 + threadIdx.x;
    sm[threadIdx.y][threadIdx.x] =
        t0 + threadIdx.y < tokens && ec_load < ec_rows ? mask[(t0 + threadIdx.y) * ec_rows + ec_load] : 0.0f;
    sx[threadIdx.y][threadIdx.x] =
        t0 + threadIdx.y < tokens && h < hidden ? x[(t0 + threadIdx.y) * hidden + h] : 0.0f;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 16; ++i) acc += sm[i][threadIdx.y] * sx[i][threadIdx.x];
    __syncthreads();
  }
  if (ec < ec_rows && h < hidden) out[ec * hidden + h] = acc;
}

void BM_dense_dispatch(benchmark::State& state) {
  if (!have_device(state)) return;
  std::int64_t const T = state.range(0), H = scaling_hidden, C = scaling_capacity(T);
  std::int64_t const EC = scaling_experts * C;
  device_dispatch const d(T, scaling_top_k, scaling_experts, C, moe::plan_layout::capacity_padded);
  float* const x = device_tensor<float>(T * H);
  float* const mask = device_tensor<float>(T * EC);
  float* const out = device_tensor<float>(EC * H);
  if (x == nullptr || mask == nullptr || out == nullptr)
    return state.SkipWithError("out of device memory");
  double const bytes = static_cast<double>(T * H + EC * H) * sizeof(float);
  time_on_device(state, bytes, [&] {
    cudaMemsetAsync(mask, 0, static_cast<std::size_t>(T * EC) * sizeof(float));
    std::int64_t const routes = T * scaling_top_k;
    dense_mask_kernel<<<static_cast<unsigned>((routes + 255) / 256), 256>>>(d.expert, d.slot, mask,
                                                                           routes, EC, C);
    dense_dispatch_kernel<<<dim3(static_cast<unsigned>((H + 15) / 16),
                                 static_cast<unsigned>((EC + 15) / 16)),
                            dim3(16, 16)>>>(mask, x, out, T, EC, H);
  });
  roofline(state, bytes);
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(T * state.iterations()), benchmark::Counter::kIsRate);
  cudaFree(x);
  cudaFree(mask);
  cudaFree(out);
}

void BM_plan_permute_dispatch(benchmark::State& state) {
  if (!have_device(state)) return;
  std::int64_t const T = state.range(0), H = scaling_hidden, C = scaling_capacity(T);
  device_dispatch const d(T, scaling_top_k, scaling_experts, C, moe::plan_layout::capacity_padded);
  float* const x = device_tensor<float>(T * H);
  float* const out = device_tensor<float>(d.rows * H);
  if (x == nullptr || out == nullptr) return state.SkipWithError("out of device memory");
  double const bytes = static_cast<double>(T * H + d.rows * H) * sizeof(float);
  moe::permute_args<float> const a{x, d.source_of, out, T, H, d.rows, scaling_top_k};
  time_on_device(state, bytes, [&] {
    (void)d.plan();
    (void)moe::permute(moe::cuda_on(nullptr), a);
  });
  roofline(state, bytes);
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(T * state.iterations()), benchmark::Counter::kIsRate);
  cudaFree(x);
  cudaFree(out);
}

}  // namespace

BENCHMARK(BM_permute<float>)->Apply(dispatch_shapes);
BENCHMARK(BM_permute<moe::bf16>)->Apply(dispatch_shapes);
BENCHMARK(BM_combine<float>)->Apply(dispatch_shapes);
BENCHMARK(BM_combine<moe::bf16>)->Apply(dispatch_shapes);
BENCHMARK(BM_plan)->Args({4096, 2})->Args({65536, 8})->UseManualTime();
BENCHMARK(BM_dense_dispatch)->Arg(1024)->Arg(4096)->Arg(16384)->UseManualTime();
BENCHMARK(BM_plan_permute_dispatch)->Arg(1024)->Arg(4096)->Arg(16384)->UseManualTime();
// ---- end token dispatch ------------------------------------------------------------------------

// ---- router (moe/cuda/router.cuh) --------------------------------------------------------------
// route(cuda) forward on T tokens of N(0, 1) logits drawn on the device, for native softmax
// top-K configs renormalised over the K, with capacity factor 5/4 (position drops), so the
// whole pipeline runs: select, capacity, both radix sorts, numbering, weights and losses. The
// workspace is allocated once, outside the timed loop. Bytes per call: the logits read and the
// scores written ([T, E] fp32 each) plus expert, weight and slot ([T, K], 12 bytes a route);
// reported as bytes/s, tokens/s and as a fraction of the d2d copy bandwidth. Args: T.
#include "moe/cuda/router.cuh"  // moe::route (CUDA overload), route_workspace_bytes

namespace {

template <std::int32_t E, std::int32_t K>
constexpr moe::config route_bench_config{.experts = E,
                                         .top_k = K,
                                         .capacity_factor = {5, 4},
                                         .eval_capacity_factor = {5, 4},
                                         .score = moe::score_function::softmax,
                                         .norm = moe::normalization::renormalize};
constexpr moe::config route_e8_k1 = route_bench_config<8, 1>;
constexpr moe::config route_e8_k2 = route_bench_config<8, 2>;
constexpr moe::config route_e8_k8 = route_bench_config<8, 8>;
constexpr moe::config route_e64_k1 = route_bench_config<64, 1>;
constexpr moe::config route_e64_k2 = route_bench_config<64, 2>;
constexpr moe::config route_e64_k8 = route_bench_config<64, 8>;
constexpr moe::config route_e256_k1 = route_bench_config<256, 1>;
constexpr moe::config route_e256_k2 = route_bench_config<256, 2>;
constexpr moe::config route_e256_k8 = route_bench_config<256, 8>;

template <moe::config C>
void BM_route_cuda(benchmark::State& state) {
  if (!have_device(state)) return;
  constexpr std::int32_t E = C.experts;
  constexpr std::int32_t K = C.top_k;
  std::int64_t const T = state.range(0);
  moe::problem p;
  p.tokens = T;
  p.training = true;
  p.min_capacity = 0;
  std::size_t const ws_bytes = moe::route_workspace_bytes<C>(p);
  if (ws_bytes == 0) return state.SkipWithError("route_workspace_bytes failed");
  float* const logits = device_tensor<float>(T * E);
  float* const scores = device_tensor<float>(T * E);
  float* const weight = device_tensor<float>(T * K);
  auto* const expert = device_tensor<std::int32_t>(T * K);
  auto* const slot = device_tensor<std::int32_t>(T * K);
  auto* const counts = device_tensor<std::int32_t>(E);
  auto* const kept = device_tensor<std::int32_t>(E);
  auto* const stats = device_tensor<moe::route_stats>(1);
  auto* const ws = device_tensor<unsigned char>(static_cast<std::int64_t>(ws_bytes));
  bool const ok = logits != nullptr && scores != nullptr && weight != nullptr &&
                  expert != nullptr && slot != nullptr && counts != nullptr && kept != nullptr &&
                  stats != nullptr && ws != nullptr;
  if (ok && moe::fill_random(moe::cuda_on(nullptr), {.dist = moe::distribution::normal,
                                                     .seed = 11,
                                                     .out = logits,
                                                     .n = T * E})
                .ok()) {
    moe::route_args const a{.logits = logits,
                            .expert = expert,
                            .weight = weight,
                            .slot = slot,
                            .counts = counts,
                            .kept = kept,
                            .scores = scores,
                            .stats = stats};
    moe::cuda_policy const pol = moe::cuda_on(nullptr, ws, ws_bytes);
    if (moe::route<C>(pol, p, {}, a).ok()) {
      double const bytes = 2.0 * static_cast<double>(T * E) * sizeof(float) +
                           static_cast<double>(T * K) * 12.0;
      time_on_device(state, bytes, [&] { (void)moe::route<C>(pol, p, {}, a); });
      roofline(state, bytes);
      state.counters["tokens_per_second"] = benchmark::Counter(
          static_cast<double>(T * state.iterations()), benchmark::Counter::kIsRate);
    } else {
      state.SkipWithError("route failed");
    }
  } else {
    state.SkipWithError(ok ? "fill_random failed" : "out of device memory");
  }
  cudaFree(logits);
  cudaFree(scores);
  cudaFree(weight);
  cudaFree(expert);
  cudaFree(slot);
  cudaFree(counts);
  cudaFree(kept);
  cudaFree(stats);
  cudaFree(ws);
}

void route_tokens(benchmark::internal::Benchmark* b) {
  for (std::int64_t T : {4096, 16384, 65536}) b->Arg(T);
  b->UseManualTime();
}

}  // namespace

// The issue-3 grid: E ∈ {8, 64, 256} × K ∈ {1, 2, 8}, T ∈ {4096, 16384, 65536}.
BENCHMARK(BM_route_cuda<route_e8_k1>)->Apply(route_tokens);
BENCHMARK(BM_route_cuda<route_e8_k2>)->Apply(route_tokens);
BENCHMARK(BM_route_cuda<route_e8_k8>)->Apply(route_tokens);
BENCHMARK(BM_route_cuda<route_e64_k1>)->Apply(route_tokens);
BENCHMARK(BM_route_cuda<route_e64_k2>)->Apply(route_tokens);
BENCHMARK(BM_route_cuda<route_e64_k8>)->Apply(route_tokens);
BENCHMARK(BM_route_cuda<route_e256_k1>)->Apply(route_tokens);
BENCHMARK(BM_route_cuda<route_e256_k2>)->Apply(route_tokens);
BENCHMARK(BM_route_cuda<route_e256_k8>)->Apply(route_tokens);
// ---- end router --------------------------------------------------------------------------------

BENCHMARK_MAIN();
