// SPDX-License-Identifier: Apache-2.0
// moe::layer on the CUDA backend: `moe::layer<C, moe::cuda_policy>` (the class is in
// moe/layer.hpp). The same composition as the host backend (moe/host/layer.hpp) with the CUDA
// ops, every step enqueued on the policy's stream:
//
//   router_gemm → route → plan → permute → expert_ffn → combine (+ shared, residual FFNs)
//   → mix (kernels/layer.cuh);  backward in reverse.
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

template <config C>
plan_args cuda_plan_args(problem const& p, std::int64_t rows) noexcept {
  return plan_args{.layout = plan_layout::compact,
                   .tokens = p.tokens,
                   .top_k = C.top_k,
                   .experts = C.experts,
                   .capacity = static_capacity<C>(p),
                   .tile_rows = 1,
                   .source_rows = rows};
}

/// The layer's own memory on the device: cudaMalloc'd (zeroed), cleared on the stream,
/// filled by a synchronous copy (init runs outside the steps).
template <>
struct layer_memory<cuda_policy> {
  static void* allocate(std::size_t bytes) noexcept {
    void* p = nullptr;
    if (bytes == 0) bytes = 1;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    if (cudaMemset(p, 0, bytes) != cudaSuccess) {
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
    MOE_CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return {};
  }
  static constexpr std::size_t base_alignment = 256;
  /// The ops' scratch: the largest any of them needs (they run one after another).
  template <config C>
  static std::size_t op_scratch(layer_shape const& s, layer_options const& o,
                                problem const& p) noexcept {
    std::size_t need = route_workspace_bytes<C>(p);
    auto more = [&need](std::size_t n) { need = n > need ? n : need; };
    more(route_backward_workspace_bytes<C>(p, o.router));
    more(router_gemm_workspace_bytes<C>(p));
    more(router_gemm_backward_workspace_bytes<C>(p));
    std::int64_t const rows = make_layout<C>(s, p).rows;
    more(plan_workspace_bytes(cuda_plan_args<C>(p, rows)));
    return need;
  }
};

/// The layer's forward on the device (layer::forward has checked the problem and workspace).
template <config C>
status layer_forward(cuda_policy policy, layer_state<C> const& self, problem const& p,
                     layer_forward_args<C> const& a, void* ws, workspace_layout const& L) noexcept {
  using namespace backend::cuda;
  using act = act_t<C>;
  using weight = weight_t<C>;
  using accum = accum_t<C>;
  std::int64_t const T = p.tokens, H = self.shape.hidden, E = C.experts;
  constexpr std::int32_t K = C.top_k;
  std::int64_t const Fs = self.shape.shared_ffn, Fr = self.shape.residual_ffn;
  if (T > 0 && (a.x == nullptr || a.y == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_forward_args.x/y: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  cudaStream_t const stream = policy.stream;
  if (T == 0) {  // nothing routed: zero statistics and counts, no bad logit
    if (a.stats != nullptr) MOE_CUDA_TRY(cudaMemsetAsync(a.stats, 0, sizeof(layer_stats), stream));
    if (a.counts != nullptr)
      MOE_CUDA_TRY(cudaMemsetAsync(a.counts, 0, static_cast<std::size_t>(E) * 4, stream));
    if (a.bad_logit != nullptr)
      MOE_CUDA_TRY(cudaMemsetAsync(a.bad_logit, 0xff, sizeof(std::int64_t), stream));
    return {};
  }
  cuda_policy const ops = cuda_on(stream, at<char>(ws, L.op_scratch), L.bytes - L.op_scratch);
  auto* const logits = at<float>(ws, L.logits);
  auto* const expert = at<std::int32_t>(ws, L.expert);
  auto* const slot = at<std::int32_t>(ws, L.slot);
  auto* const weight_k = at<float>(ws, L.weight);
  auto* const counts = at<std::int32_t>(ws, L.counts);
  auto* const st = at<route_stats>(ws, L.stats);
  auto* const offsets = at<std::int64_t>(ws, L.offsets);
  auto* const row_of = at<std::int32_t>(ws, L.row_of);
  auto* const source_of = at<std::int32_t>(ws, L.source_of);
  auto* const xp = at<act>(ws, L.xp);
  auto* const yp = at<act>(ws, L.yp);
  auto* const y_moe = at<act>(ws, L.y_moe);
  auto* const dense_offsets = at<std::int64_t>(ws, L.dense_offsets);
  std::int64_t const M = L.rows;

  // 1. Router GEMM; the router decides in fp32.
  if constexpr (std::is_same_v<accum, float>) {
    MOE_TRY(router_gemm(ops, p,
                        router_gemm_args<C>{.x = a.x,
                                            .w_gate = self.params.w_gate,
                                            .logits = logits,
                                            .jitter = self.options.jitter}));
  } else {
    auto* const wide = at<accum>(ws, L.logits_acc);
    MOE_TRY(router_gemm(ops, p,
                        router_gemm_args<C>{.x = a.x,
                                            .w_gate = self.params.w_gate,
                                            .logits = wide,
                                            .jitter = self.options.jitter}));
    layer_convert_kernel<float, accum><<<grid_for(T * E, 256), 256, 0, stream>>>(T * E, wide,
                                                                                   logits);
    MOE_TRY(check_launch(stream, "layer_convert_kernel (logits)"));
  }
  // 2. Route (writes the statistics on the device).
  MOE_TRY(route<C>(ops, p, self.options.router,
                   route_args{.logits = logits,
                              .expert = expert,
                              .weight = weight_k,
                              .slot = slot,
                              .counts = counts,
                              .kept = at<std::int32_t>(ws, L.kept),
                              .scores = nullptr,
                              .stats = st,
                              .bad_logit = a.bad_logit}));
  layer_small_kernel<><<<1, 1, 0, stream>>>(
      T, dense_offsets, st, a.stats, static_cast<double>(p.aux_loss_coef),
      static_cast<double>(p.z_loss_coef), static_cast<double>(self.options.router.seq_aux_loss_coef));
  MOE_TRY(check_launch(stream, "layer_small_kernel"));
  if (a.counts != nullptr)
    MOE_CUDA_TRY(cudaMemcpyAsync(a.counts, counts, static_cast<std::size_t>(E) * sizeof(std::int32_t),
                                 cudaMemcpyDeviceToDevice, stream));
  // 3. Plan with the static capacity bound, 4. permute into M = plan_rows_bound rows.
  plan_args pa = cuda_plan_args<C>(p, M);
  pa.expert = expert;
  pa.slot = slot;
  pa.offsets = offsets;
  pa.row_of = row_of;
  pa.source_of = source_of;
  MOE_TRY(plan(ops, pa));
  MOE_TRY(permute(ops, permute_args<act>{.x = a.x,
                                         .source_of = source_of,
                                         .out = xp,
                                         .tokens = T,
                                         .hidden = H,
                                         .rows = M,
                                         .top_k = K}));
  // 5. Routed experts (row counts read on the device from the offsets).
  MOE_TRY(expert_ffn(ops, expert_ffn_args<C>{.experts = E,
                                             .rows = M,
                                             .hidden = H,
                                             .ffn = self.shape.ffn,
                                             .offsets = offsets,
                                             .x = xp,
                                             .w1 = self.params.w1,
                                             .b1 = self.params.b1,
                                             .w2 = self.params.w2,
                                             .b2 = self.params.b2,
                                             .recompute = self.options.recompute,
                                             .y = yp,
                                             .pre = at<act>(ws, L.pre),
                                             .h = at<act>(ws, L.h)}));
  // 6. Combine.
  MOE_TRY(combine(ops, combine_args<act>{.o = yp,
                                         .row_of = row_of,
                                         .weight = weight_k,
                                         .y = y_moe,
                                         .tokens = T,
                                         .hidden = H,
                                         .rows = M,
                                         .top_k = K}));
  // 7. Dense branches: one expert over all T rows.
  auto dense = [&](std::int64_t width, weight const* w1, weight const* b1, weight const* w2,
                   weight const* b2, std::size_t pre, std::size_t h, std::size_t y) {
    return expert_ffn(ops, expert_ffn_args<C>{.experts = 1,
                                              .rows = T,
                                              .hidden = H,
                                              .ffn = width,
                                              .offsets = dense_offsets,
                                              .x = a.x,
                                              .w1 = w1,
                                              .b1 = b1,
                                              .w2 = w2,
                                              .b2 = b2,
                                              .recompute = self.options.recompute,
                                              .y = at<act>(ws, y),
                                              .pre = at<act>(ws, pre),
                                              .h = at<act>(ws, h)});
  };
  if (Fs > 0)
    MOE_TRY(dense(Fs, self.params.shared_w1, self.params.shared_b1, self.params.shared_w2,
                  self.params.shared_b2, L.shared_pre, L.shared_h, L.shared_y));
  if (Fr > 0)
    MOE_TRY(dense(Fr, self.params.residual_w1, self.params.residual_b1, self.params.residual_w2,
                  self.params.residual_b2, L.res_pre, L.res_h, L.res_y));
  // 8. Mix the branches into y.
  layer_mix_forward_kernel<act, weight, accum><<<grid_for(T, 1), layer_block, 0, stream>>>(
      T, H, a.x, y_moe, Fs > 0 ? at<act>(ws, L.shared_y) : nullptr,
      Fr > 0 ? at<act>(ws, L.res_y) : nullptr, self.params.coef_w, self.params.coef_b,
      at<accum>(ws, L.coef), a.y);
  return check_launch(stream, "layer_mix_forward_kernel");
}

/// The layer's backward on the device.
template <config C>
status layer_backward(cuda_policy policy, layer_state<C> const& self, problem const& p,
                      layer_backward_args<C> const& a, void* ws,
                      workspace_layout const& L) noexcept {
  using namespace backend::cuda;
  using act = act_t<C>;
  using weight = weight_t<C>;
  using accum = accum_t<C>;
  std::int64_t const T = p.tokens, H = self.shape.hidden, E = C.experts;
  constexpr std::int32_t K = C.top_k;
  std::int64_t const Fs = self.shape.shared_ffn, Fr = self.shape.residual_ffn;
  if (T > 0 && (a.x == nullptr || a.dy == nullptr || a.dx == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_backward_args.x/dy/dx: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  if (T == 0) return {};
  cudaStream_t const stream = policy.stream;
  cuda_policy const ops = cuda_on(stream, at<char>(ws, L.op_scratch), L.bytes - L.op_scratch);
  auto* const offsets = at<std::int64_t>(ws, L.offsets);
  auto* const row_of = at<std::int32_t>(ws, L.row_of);
  auto* const source_of = at<std::int32_t>(ws, L.source_of);
  auto* const weight_k = at<float>(ws, L.weight);
  auto* const dense_offsets = at<std::int64_t>(ws, L.dense_offsets);
  auto* const dx_a = at<act>(ws, L.dx_a);
  auto* const dx_sum = at<accum>(ws, L.dx_sum);
  std::int64_t const M = L.rows;
  std::int64_t const n = T * H;
  auto add_dx = [&](act const* part, bool first, accum const* dcoef) {
    layer_dx_add_kernel<act, weight, accum><<<grid_for(n, 256), 256, 0, stream>>>(
        n, H, part, first, dcoef, self.params.coef_w, dx_sum);
    return check_launch(stream, "layer_dx_add_kernel");
  };

  // Residual mixing backward.
  act const* d_moe = a.dy;
  auto* const dcoef = at<accum>(ws, L.d_coef);
  if (Fr > 0) {
    layer_mix_backward_kernel<act, accum><<<grid_for(T, 1), layer_block, 0, stream>>>(
        T, H, a.dy, at<act>(ws, L.y_moe), Fs > 0 ? at<act>(ws, L.shared_y) : nullptr,
        at<act>(ws, L.res_y), at<accum>(ws, L.coef), at<act>(ws, L.d_moe), at<act>(ws, L.d_res),
        dcoef);
    MOE_TRY(check_launch(stream, "layer_mix_backward_kernel"));
    d_moe = at<act>(ws, L.d_moe);
  }

  // Routed experts.
  auto* const d_o = at<act>(ws, L.d_o);
  auto* const dxp = at<act>(ws, L.dxp);
  auto* const d_weight = at<float>(ws, L.d_weight);
  MOE_TRY(combine_backward(ops, combine_backward_args<act>{.dy = d_moe,
                                                           .o = at<act>(ws, L.yp),
                                                           .row_of = row_of,
                                                           .source_of = source_of,
                                                           .weight = weight_k,
                                                           .d_o = d_o,
                                                           .d_weight = d_weight,
                                                           .tokens = T,
                                                           .hidden = H,
                                                           .rows = M,
                                                           .top_k = K}));
  MOE_TRY(expert_ffn_backward(ops, expert_ffn_backward_args<C>{.experts = E,
                                                               .rows = M,
                                                               .hidden = H,
                                                               .ffn = self.shape.ffn,
                                                               .offsets = offsets,
                                                               .x = at<act>(ws, L.xp),
                                                               .w1 = self.params.w1,
                                                               .b1 = self.params.b1,
                                                               .w2 = self.params.w2,
                                                               .recompute = self.options.recompute,
                                                               .dy = d_o,
                                                               .pre = at<act>(ws, L.pre),
                                                               .h = at<act>(ws, L.h),
                                                               .d_pre = at<act>(ws, L.d_pre),
                                                               .dx = dxp,
                                                               .dw1 = self.grads.w1,
                                                               .db1 = self.grads.b1,
                                                               .dw2 = self.grads.w2,
                                                               .db2 = self.grads.b2,
                                                               .accumulate = true}));
  MOE_TRY(permute_backward(ops, permute_backward_args<act>{.d_out = dxp,
                                                           .row_of = row_of,
                                                           .dx = dx_a,
                                                           .tokens = T,
                                                           .hidden = H,
                                                           .rows = M,
                                                           .top_k = K}));
  MOE_TRY(add_dx(dx_a, true, nullptr));

  // Router.
  auto* const d_logits = at<float>(ws, L.d_logits);
  MOE_TRY(route_backward<C>(ops, p, self.options.router,
                            route_backward_args{.logits = at<float>(ws, L.logits),
                                                .expert = at<std::int32_t>(ws, L.expert),
                                                .slot = at<std::int32_t>(ws, L.slot),
                                                .d_weight = d_weight,
                                                .d_logits = d_logits}));
  accum const* d_logits_acc = nullptr;
  if constexpr (std::is_same_v<accum, float>) {
    d_logits_acc = d_logits;
  } else {
    auto* const wide = at<accum>(ws, L.d_logits_acc);
    layer_convert_kernel<accum, float><<<grid_for(T * E, 256), 256, 0, stream>>>(T * E, d_logits,
                                                                                   wide);
    MOE_TRY(check_launch(stream, "layer_convert_kernel (d_logits)"));
    d_logits_acc = wide;
  }
  MOE_TRY(router_gemm_backward(ops, p,
                               router_gemm_backward_args<C>{.x = a.x,
                                                            .w_gate = self.params.w_gate,
                                                            .d_logits = d_logits_acc,
                                                            .dx = dx_a,
                                                            .d_w_gate = self.grads.w_gate,
                                                            .jitter = self.options.jitter}));
  MOE_TRY(add_dx(dx_a, false, nullptr));

  // Dense branches.
  auto dense = [&](std::int64_t width, weight const* w1, weight const* b1, weight const* w2,
                   act const* dy, std::size_t pre, std::size_t h, accum* dw1, accum* db1,
                   accum* dw2, accum* db2) {
    return expert_ffn_backward(ops, expert_ffn_backward_args<C>{.experts = 1,
                                                                .rows = T,
                                                                .hidden = H,
                                                                .ffn = width,
                                                                .offsets = dense_offsets,
                                                                .x = a.x,
                                                                .w1 = w1,
                                                                .b1 = b1,
                                                                .w2 = w2,
                                                                .recompute = self.options.recompute,
                                                                .dy = dy,
                                                                .pre = at<act>(ws, pre),
                                                                .h = at<act>(ws, h),
                                                                .d_pre = at<act>(ws, L.dense_d_pre),
                                                                .dx = dx_a,
                                                                .dw1 = dw1,
                                                                .db1 = db1,
                                                                .dw2 = dw2,
                                                                .db2 = db2,
                                                                .accumulate = true});
  };
  if (Fs > 0) {
    MOE_TRY(dense(Fs, self.params.shared_w1, self.params.shared_b1, self.params.shared_w2, d_moe,
                  L.shared_pre, L.shared_h, self.grads.shared_w1, self.grads.shared_b1,
                  self.grads.shared_w2, self.grads.shared_b2));
    MOE_TRY(add_dx(dx_a, false, nullptr));
  }
  if (Fr > 0) {
    MOE_TRY(dense(Fr, self.params.residual_w1, self.params.residual_b1, self.params.residual_w2,
                  at<act>(ws, L.d_res), L.res_pre, L.res_h, self.grads.residual_w1,
                  self.grads.residual_b1, self.grads.residual_w2, self.grads.residual_b2));
    MOE_TRY(add_dx(dx_a, false, nullptr));
    layer_coef_wgrad_kernel<act, accum><<<grid_for(2 * H + 2, 128), 128, 0, stream>>>(
        T, H, a.x, dcoef, self.grads.coef_w, self.grads.coef_b);
    MOE_TRY(check_launch(stream, "layer_coef_wgrad_kernel"));
    MOE_TRY(add_dx(nullptr, false, dcoef));
  }
  layer_round_kernel<act, accum><<<grid_for(n, 256), 256, 0, stream>>>(n, dx_sum, a.dx);
  return check_launch(stream, "layer_round_kernel");
}

}  // namespace moe::detail::layer_impl
