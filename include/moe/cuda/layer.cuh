// SPDX-License-Identifier: Apache-2.0
// moe::layer on the CUDA backend: `moe::layer<C, moe::cuda_policy>` (the class is in
// moe/layer.hpp). The composition is the host backend's, written once in
// moe/detail/layer_compose.hpp; this file gives it the CUDA glue (layer_glue<cuda_policy>, the
// kernels in kernels/layer.cuh) and the device memory, so every step is enqueued on the
// policy's stream:
//
//   router_gemm → route → plan → permute → expert_ffn → combine (+ shared, residual FFNs)
//   → mix;  backward in reverse.
//
// Nothing waits for the host and nothing is allocated inside a step: every size the launches
// need is a host value bounded by the compile-time E, K and cf — the plan gets the static
// capacity bound (the native or DeepSpeed formula, T when dropless) and the permuted buffers
// have plan_rows_bound rows; the per-expert row counts stay on the device (the grouped GEMM
// reads the offsets there). So a dropless step, like every other, can be captured in a CUDA
// graph. The ops' own scratch (route, route backward, plan, router GEMM backward) is one region
// of the layer's workspace, reused by each op in turn (they run in stream order).
//
// Differences from the host backend: a non-finite logit cannot come back as a status (that
// would need a synchronisation) — pass layer_forward_args::bad_logit to learn of it; and
// `stats` and `counts` are device memory.
#pragma once

#include <cuda_runtime.h>  // cudaMalloc, cudaFree, cudaMemsetAsync, cudaMemcpy

#include <cub/device/device_radix_sort.cuh>  // cub::DeviceRadixSort (expert parallelism)

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t

#include "moe/cuda/expert_ffn.cuh"     // expert_ffn, expert_ffn_backward (CUDA)
#include "moe/cuda/kernels/layer.cuh"  // the layer's glue kernels
#include "moe/cuda/permute.cuh"        // permute, combine, combine_backward, permute_backward
#include "moe/cuda/plan.cuh"           // plan, plan_workspace_bytes
#include "moe/cuda/router.cuh"         // route, route_backward and their workspace sizes
#include "moe/cuda/router_gemm.cuh"    // router_gemm, router_gemm_backward
#include "moe/cuda/runtime.cuh"        // from_cuda, check_launch, grid_for, MOE_CUDA_TRY
#include "moe/layer.hpp"               // moe::layer, its args, workspace layout

namespace moe::detail::layer_impl {

template <>
struct layer_memory<cuda_policy> {
  static void* allocate(std::size_t bytes) noexcept {
    void* p = nullptr;
    if (bytes == 0) bytes = 1;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    // cudaMemset runs on the legacy stream: wait for it, so that a step on a non-blocking
    // stream never sees the memory before it is zero.
    if (cudaMemset(p, 0, bytes) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
      cudaFree(p);
      return nullptr;
    }
    return p;
  }
  static void release(void* p) noexcept { cudaFree(p); }
  static status zero(cuda_policy policy, void* p, std::size_t bytes) noexcept {
    MOE_CUDA_TRY(cudaMemsetAsync(p, 0, bytes, policy.stream));
    return {};
  }
  static status upload(void* dst, void const* src, std::size_t bytes) noexcept {
    // From pageable memory cudaMemcpy may return before the DMA lands: wait for it, so that a
    // step on a non-blocking stream reads the values (init runs outside the steps).
    MOE_CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    MOE_CUDA_TRY(cudaDeviceSynchronize());
    return {};
  }
  static constexpr std::size_t base_alignment = 256;
  /// Host int64s the layer keeps: with expert parallelism, the row counts NCCL needs on the
  /// host (moe/cuda/layer_ep.cuh; R <= E, so 20·E + 16 bound them).
  template <config C>
  static constexpr std::int64_t host_scratch(bool expert_parallel) noexcept {
    return expert_parallel ? 20 * static_cast<std::int64_t>(C.experts) + 16 : 0;
  }
  /// CUB's temporary bytes for the expert-parallel path's sort of T·K (int64 key, int32 value)
  /// pairs in double buffers (0 when CUB cannot be queried; the sort then reports it).
  static std::size_t local_slot_sort_bytes(std::int64_t routes) noexcept {
    std::size_t bytes = 0;
    cub::DoubleBuffer<std::uint64_t> keys(nullptr, nullptr);
    cub::DoubleBuffer<std::int32_t> values(nullptr, nullptr);
    if (cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys, values, routes) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return bytes;
  }
  /// The ops' scratch: the largest any of them needs (they run one after another), for this
  /// rank's problem and the expert-parallel group's.
  template <config C>
  static std::size_t op_scratch(layer_shape const& s, layer_options const& o,
                                problem const& p) noexcept {
    problem const g = group_problem(p);
    std::size_t need = route_workspace_bytes<C>(p);
    auto more = [&need](std::size_t n) { need = n > need ? n : need; };
    more(route_workspace_bytes<C>(g));
    more(route_backward_workspace_bytes<C>(g, o.router));
    more(local_slot_sort_bytes(p.tokens * C.top_k));
    more(route_backward_workspace_bytes<C>(p, o.router));
    more(router_gemm_workspace_bytes<C>(p));
    more(router_gemm_backward_workspace_bytes<C>(p));
    more(plan_workspace_bytes(plan_args{.layout = plan_layout::compact,
                                        .tokens = p.tokens,
                                        .top_k = C.top_k,
                                        .experts = C.experts,
                                        .capacity = static_capacity<C>(p),
                                        .tile_rows = 1,
                                        .source_rows = make_layout<C>(s, p).rows}));
    return need;
  }
};

template <>
struct layer_glue<cuda_policy> {
  /// The ops run on the same stream with the layer workspace's scratch region.
  static cuda_policy ops(cuda_policy policy, void* ws, workspace_layout const& L) noexcept {
    return cuda_on(policy.stream, at<char>(ws, L.op_scratch), L.op_scratch_bytes);
  }

  template <class From, class To>
  static status convert(cuda_policy policy, From const* in, To* out, std::int64_t n) noexcept {
    using namespace backend::cuda;
    if (n == 0) return {};
    layer_convert_kernel<To, From><<<grid_for(n, 256), 256, 0, policy.stream>>>(n, in, out);
    return check_launch(policy.stream, "layer_convert_kernel");
  }

  /// After route: the dense branches' offsets {0, T}, the statistics and loss (device), counts.
  template <config C>
  static status publish(cuda_policy policy, layer_state<C> const& self, problem const& p,
                        layer_forward_args<C> const& a, route_stats const* st,
                        std::int32_t const* counts, std::int64_t* dense_offsets) noexcept {
    using namespace backend::cuda;
    layer_small_kernel<><<<1, 1, 0, policy.stream>>>(
        p.tokens, dense_offsets, st, a.stats, static_cast<double>(p.aux_loss_coef),
        static_cast<double>(p.z_loss_coef),
        static_cast<double>(self.options.router.seq_aux_loss_coef));
    MOE_TRY(check_launch(policy.stream, "layer_small_kernel"));
    if (a.counts != nullptr)
      MOE_CUDA_TRY(cudaMemcpyAsync(a.counts, counts,
                                   static_cast<std::size_t>(C.experts) * sizeof(std::int32_t),
                                   cudaMemcpyDeviceToDevice, policy.stream));
    return {};
  }

  /// T = 0: zero statistics and counts (the caller's and the workspace's that routing()
  /// reports: `counts`, `kept`, E each), no bad logit (all device memory).
  template <config C>
  static status empty(cuda_policy policy, layer_forward_args<C> const& a, std::int32_t* counts,
                      std::int32_t* kept) noexcept {
    std::size_t const count_bytes = static_cast<std::size_t>(C.experts) * sizeof(std::int32_t);
    MOE_CUDA_TRY(cudaMemsetAsync(counts, 0, count_bytes, policy.stream));
    MOE_CUDA_TRY(cudaMemsetAsync(kept, 0, count_bytes, policy.stream));
    if (a.stats != nullptr)
      MOE_CUDA_TRY(cudaMemsetAsync(a.stats, 0, sizeof(layer_stats), policy.stream));
    if (a.counts != nullptr)
      MOE_CUDA_TRY(cudaMemsetAsync(a.counts, 0,
                                   static_cast<std::size_t>(C.experts) * sizeof(std::int32_t),
                                   policy.stream));
    if (a.bad_logit != nullptr)
      MOE_CUDA_TRY(cudaMemsetAsync(a.bad_logit, 0xff, sizeof(std::int64_t), policy.stream));
    return {};
  }

  template <config C>
  static status mix_forward(cuda_policy policy, layer_state<C> const& self, std::int64_t T,
                            act_t<C> const* x, act_t<C> const* y_moe, act_t<C> const* shared_y,
                            act_t<C> const* res_y, accum_t<C>* coef, act_t<C>* y) noexcept {
    using namespace backend::cuda;
    layer_mix_forward_kernel<act_t<C>, weight_t<C>, accum_t<C>>
        <<<grid_for(T, 1), layer_block, 0, policy.stream>>>(T, self.shape.hidden, x, y_moe,
                                                             shared_y, res_y, self.params.coef_w,
                                                             self.params.coef_b, coef, y);
    return check_launch(policy.stream, "layer_mix_forward_kernel");
  }

  template <config C>
  static status mix_backward(cuda_policy policy, layer_state<C> const& self, std::int64_t T,
                             act_t<C> const* dy, act_t<C> const* y_moe, act_t<C> const* shared_y,
                             act_t<C> const* res_y, accum_t<C> const* coef, act_t<C>* dm,
                             act_t<C>* dr, accum_t<C>* dcoef) noexcept {
    using namespace backend::cuda;
    layer_mix_backward_kernel<act_t<C>, accum_t<C>>
        <<<grid_for(T, 1), layer_block, 0, policy.stream>>>(T, self.shape.hidden, dy, y_moe,
                                                             shared_y, res_y, coef, dm, dr, dcoef);
    return check_launch(policy.stream, "layer_mix_backward_kernel");
  }

  template <config C>
  static status add_dx(cuda_policy policy, layer_state<C> const& self, std::int64_t T,
                       act_t<C> const* part, bool first, accum_t<C>* dx_sum) noexcept {
    using namespace backend::cuda;
    std::int64_t const n = T * self.shape.hidden;
    layer_dx_add_kernel<act_t<C>, weight_t<C>, accum_t<C>>
        <<<grid_for(n, 256), 256, 0, policy.stream>>>(n, self.shape.hidden, part, first, nullptr,
                                                      self.params.coef_w, dx_sum);
    return check_launch(policy.stream, "layer_dx_add_kernel");
  }

  template <config C>
  static status coef_backward(cuda_policy policy, layer_state<C> const& self, std::int64_t T,
                              act_t<C> const* x, accum_t<C> const* dcoef,
                              accum_t<C>* dx_sum) noexcept {
    using namespace backend::cuda;
    std::int64_t const H = self.shape.hidden, n = T * H;
    layer_coef_wgrad_kernel<act_t<C>, accum_t<C>>
        <<<column_sum_blocks(2 * H + 2), dim3(column_sum_cols, column_sum_groups), 0,
           policy.stream>>>(T, H, x, dcoef, self.grads.coef_w, self.grads.coef_b);
    MOE_TRY(check_launch(policy.stream, "layer_coef_wgrad_kernel"));
    layer_dx_add_kernel<act_t<C>, weight_t<C>, accum_t<C>>
        <<<grid_for(n, 256), 256, 0, policy.stream>>>(n, H, nullptr, false, dcoef,
                                                      self.params.coef_w, dx_sum);
    return check_launch(policy.stream, "layer_dx_add_kernel (coefficients)");
  }

  template <config C>
  static status round_dx(cuda_policy policy, layer_state<C> const& self, std::int64_t T,
                         accum_t<C> const* dx_sum, act_t<C>* dx) noexcept {
    using namespace backend::cuda;
    std::int64_t const n = T * self.shape.hidden;
    layer_round_kernel<act_t<C>, accum_t<C>>
        <<<grid_for(n, 256), 256, 0, policy.stream>>>(n, dx_sum, dx);
    return check_launch(policy.stream, "layer_round_kernel");
  }
};

}  // namespace moe::detail::layer_impl
