// SPDX-License-Identifier: Apache-2.0
// The grouped GEMM's tile-shape sweep (built with -DMOE_BENCH_GEMM_TILES=ON; scripts/gpu_check.sh
// turns it on): the bf16 forward and wgrad products of moe/cuda/grouped_gemm.cuh with the tile
// shape replaced by one of `candidates` below, to measure what grouped_gemm_tuning should return.
// This file is compiled once per candidate (MOE_GEMM_TILE = its index, so the kernels build in
// parallel) and registers
//
//   BM_gemm_tile_cuda<op>/<index>/E/H/F/rows_per_expert   forward y = x·W_eᵀ (identity
//       epilogue) or wgrad dW_e = dy_eᵀ·x_e, rows split evenly over the experts. Counters:
//       flop_per_second, peak_fraction (of the tensor-core peak, as in grouped_gemm.cu), regs and
//       local_bytes (cudaFuncGetAttributes: local memory means spills), resident (CTAs an SM), and
//       the shape.
//
// Every run first checks, on the device, that the candidate's output equals the default
// kernel's bit for bit: each output element sums its k16 products in the same order whatever
// the tile, so a difference is a bug, reported as an error rather than timed.
//
// Run:  ./build/gpu/benchmarks/moe_bench_cuda --benchmark_filter=BM_gemm_tile
#include <cstdint>      // std::int64_t, std::uint16_t, std::uint32_t
#include <string>       // std::string
#include <type_traits>  // std::conditional_t
#include <vector>       // std::vector

#include "../expert_rows.hpp"  // moe_bench::expert_row_offsets
#include "common.cuh"          // have_device, time_on_device, device_buffer, device_peak

#ifndef MOE_GEMM_TILE
#error "gemm_tiles.cu: compile with -DMOE_GEMM_TILE=<candidate index>"
#endif

namespace {

using namespace moe_bench;
using i64 = std::int64_t;
using X = moe::bf16;
using shape_t = moe::backend::cuda::gemm_tile_shape;
constexpr moe::config cfg{
    .experts = 256, .top_k = 8, .capacity_factor = {0, 1}, .eval_capacity_factor = {0, 1}};

/// The candidates: {bm, bn, bk, warps_m, warps_n, stages, min_blocks}. 0 is what
/// grouped_gemm_tuning(bf16, sm, false) returns (the identity forward and wgrad).
constexpr shape_t candidates[] = {
    {128, 128, 32, 2, 4, 4, 2},  // 0: the default, two CTAs an SM (64 KiB pipeline each)
    {128, 128, 32, 2, 4, 4, 1},  // 1: the same at one CTA an SM (the default until 2026-11-26)
    {128, 128, 32, 2, 4, 5, 2},  // 2: five stages, 80 KiB, two CTAs (64-deep k steps spill here)
    {128, 128, 32, 2, 4, 3, 2},  // 3: three stages, two CTAs
    {128, 256, 64, 2, 4, 3, 1},  // 4: warp tiles of 64 × 64, 64-deep k step, 144 KiB
    {64, 128, 32, 2, 4, 4, 2},   // 5: short rows (few tokens an expert), 48 KiB, two CTAs
    {128, 256, 32, 2, 4, 4, 1},  // 6: warp tiles of 64 × 64, 96 KiB
    {128, 128, 32, 4, 2, 4, 2},  // 7: warp tiles of 32 × 64, two CTAs
};
constexpr bool same_shape(shape_t a, shape_t b) {
  return a.bm == b.bm && a.bn == b.bn && a.bk == b.bk && a.warps_m == b.warps_m &&
         a.warps_n == b.warps_n && a.stages == b.stages && a.min_blocks == b.min_blocks;
}
static_assert(same_shape(candidates[0],
                         moe::backend::cuda::grouped_gemm_tuning(moe::precision::bf16, 90, false)),
              "candidate 0 is the library's tile: keep it in step with grouped_gemm_tuning");
constexpr int index = MOE_GEMM_TILE;
static_assert(index >= 0 && index < static_cast<int>(sizeof(candidates) / sizeof(candidates[0])),
              "MOE_GEMM_TILE: an index into candidates");
constexpr shape_t shape = candidates[index];

using mainloop = moe::backend::cuda::mma_mainloop<shape, X>;
enum class gemm_op { forward, wgrad };
template <gemm_op Op>
using problem_t =
    std::conditional_t<Op == gemm_op::forward,
                       moe::backend::cuda::gemm_forward<moe::activation::identity, X, mainloop>,
                       moe::backend::cuda::gemm_wgrad<X, mainloop>>;

/// Adds to *count the positions where a and b differ bitwise.
template <class T>
__global__ void count_differences(T const* a, T const* b, i64 n, unsigned long long* count) {
  using U = std::conditional_t<sizeof(T) == 2, std::uint16_t, std::uint32_t>;
  static_assert(sizeof(U) == sizeof(T));
  auto const* ua = reinterpret_cast<U const*>(a);
  auto const* ub = reinterpret_cast<U const*>(b);
  unsigned long long local = 0;
  for (i64 i = blockIdx.x * i64{blockDim.x} + threadIdx.x; i < n; i += i64{gridDim.x} * blockDim.x)
    local += ua[i] != ub[i] ? 1 : 0;
  if (local != 0) atomicAdd(count, local);
}

template <class T>
bool same_bits(T const* a, T const* b, i64 n) {
  device_buffer<unsigned long long> count(1);
  if (count.p == nullptr) return false;
  cudaMemset(count.p, 0, sizeof(unsigned long long));
  count_differences<<<1024, 256>>>(a, b, n, count.p);
  unsigned long long h = 1;
  cudaMemcpy(&h, count.p, sizeof h, cudaMemcpyDeviceToHost);
  return cudaGetLastError() == cudaSuccess && h == 0;
}

template <gemm_op Op>
void BM_gemm_tile_cuda(benchmark::State& state) {
  if (!have_device(state)) return;
  using problem = problem_t<Op>;
  constexpr bool fwd = Op == gemm_op::forward;
  i64 const E = state.range(1), H = state.range(2), F = state.range(3);
  i64 const M = E * state.range(4);
  i64 constexpr chunk = i64{1} << 24;
  // forward: x [M, H], w [E, F, H] in, y [M, F] out; wgrad: x [M, H], dy [M, F] in, dw out.
  i64 const out_n = fwd ? M * F : E * F * H;
  device_buffer<X> x(M * H), w(fwd ? E * F * H : M * F);
  device_buffer<std::conditional_t<fwd, X, float>> y(out_n), y_ref(out_n);
  device_buffer<float> scratch(chunk);
  device_buffer<i64> off(E + 1);
  if (x.p == nullptr || w.p == nullptr || y.p == nullptr || y_ref.p == nullptr ||
      scratch.p == nullptr || off.p == nullptr) {
    state.SkipWithError("cudaMalloc failed");
    return;
  }
  std::vector<i64> const h_off = expert_row_offsets(state.range(4), false, E);
  cudaMemcpy(off.p, h_off.data(), h_off.size() * sizeof(i64), cudaMemcpyHostToDevice);
  if (!fill_uniform(x.p, M * H, 1, scratch.p, chunk) ||
      !fill_uniform(w.p, fwd ? E * F * H : M * F, 2, scratch.p, chunk)) {
    state.SkipWithError("fill failed");
    return;
  }
  auto const policy = moe::cuda_on(nullptr);
  moe::status s;
  problem p{};
  if constexpr (fwd) {
    s = moe::grouped_gemm(policy, moe::grouped_gemm_args<cfg>{.experts = E,
                                                              .rows = M,
                                                              .n = F,
                                                              .k = H,
                                                              .offsets = off.p,
                                                              .x = x.p,
                                                              .w = w.p,
                                                              .y = y_ref.p});
    p = problem{static_cast<int>(E), M, F, H, off.p, x.p, w.p, nullptr, y.p, nullptr};
  } else {
    s = moe::grouped_gemm_wgrad(policy, moe::grouped_gemm_wgrad_args<cfg>{.experts = E,
                                                                          .rows = M,
                                                                          .n = F,
                                                                          .k = H,
                                                                          .offsets = off.p,
                                                                          .x = x.p,
                                                                          .dy = w.p,
                                                                          .dw = y_ref.p});
    p = problem{static_cast<int>(E), M, F, H, off.p, x.p, w.p, y.p, false};
  }
  auto run = [&] {
    if (s.ok())
      s = moe::detail::grouped::launch_grouped_gemm(policy, p, "gemm_tile", "gemm_tile");
  };
  run();
  if (s.ok() && cudaDeviceSynchronize() != cudaSuccess)
    s = moe::status::error(moe::errc::cuda_error, "gemm_tile: CUDA error");
  if (!s.ok()) {
    state.SkipWithError(s.message());
    return;
  }
  if (!same_bits(y.p, y_ref.p, out_n)) {
    state.SkipWithError("the candidate's output differs from the default tile's");
    return;
  }
  double const flops =
      2.0 * static_cast<double>(M) * static_cast<double>(F) * static_cast<double>(H);
  double const bytes =
      fwd ? 2.0 * static_cast<double>(M * H + E * F * H + M * F)
          : 2.0 * static_cast<double>(M * H + M * F) + 4.0 * static_cast<double>(E * F * H);
  time_on_device(state, bytes, run);
  if (!s.ok()) {
    state.SkipWithError(s.message());
    return;
  }
  cudaFuncAttributes attr{};
  cudaFuncGetAttributes(&attr, moe::backend::cuda::grouped_gemm_kernel<problem>);
  int resident = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident,
                                                moe::backend::cuda::grouped_gemm_kernel<problem>,
                                                mainloop::threads, mainloop::smem_bytes);
  double const total = flops * static_cast<double>(state.iterations());
  state.counters["flop_per_second"] = benchmark::Counter(total, benchmark::Counter::kIsRate);
  state.counters["peak_fraction"] =
      benchmark::Counter(total / device_peak(true), benchmark::Counter::kIsRate);
  state.counters["regs"] = attr.numRegs;
  state.counters["local_bytes"] = static_cast<double>(attr.localSizeBytes);
  state.counters["resident"] = resident;
  state.counters["smem_kib"] = static_cast<double>(mainloop::smem_bytes) / 1024.0;
  state.SetLabel("bm" + std::to_string(shape.bm) + " bn" + std::to_string(shape.bn) + " bk" +
                 std::to_string(shape.bk) + " w" + std::to_string(shape.warps_m) + "x" +
                 std::to_string(shape.warps_n) + " s" + std::to_string(shape.stages) + " mb" +
                 std::to_string(shape.min_blocks));
}

/// Mixtral 8x7B's first layer at 16, 128 and 1024 rows an expert, DeepSeek-V2-Lite's at 128
/// and 1024, DeepSpeed-MoE 1.3B's at 1024 (grouped_gemm.cu's shapes).
void sizes(benchmark::internal::Benchmark* b) {
  constexpr i64 rows[][4] = {{8, 4096, 14336, 16},   {8, 4096, 14336, 128},
                             {8, 4096, 14336, 1024}, {64, 2048, 1408, 128},
                             {64, 2048, 1408, 1024}, {128, 2048, 8192, 1024}};
  for (auto const& r : rows) b->Args({index, r[0], r[1], r[2], r[3]});
  b->ArgNames({"tile", "E", "H", "F", "rows_per_expert"})->UseManualTime();
}

}  // namespace

BENCHMARK(BM_gemm_tile_cuda<gemm_op::forward>)->Apply(sizes);
BENCHMARK(BM_gemm_tile_cuda<gemm_op::wgrad>)->Apply(sizes);
