// SPDX-License-Identifier: Apache-2.0
// The MoE layer's composition, written once for every backend: the ops are overloaded on the
// execution policy, so these function templates call moe::host's ops with a host_policy and
// the CUDA ops with a cuda_policy. What differs between backends is only the glue around the
// ops — mixing the branches, summing dx, converting the fp64 configs' logits, writing the
// statistics — which each backend provides as the static members of its specialisation of
// layer_glue<Policy> (moe/host/layer.hpp, moe/cuda/layer.cuh):
//
//   ops(policy, ws, L)                  the policy the ops run with (CUDA: their scratch region)
//   convert(policy, in, out, n)         out[i] = in[i] (fp64 ↔ fp32 logits)
//   publish / empty                     dense offsets {0, T}, stats and loss, counts
//   mix_forward / mix_backward          the branches' mix and its backward
//   add_dx / coef_backward / round_dx   dx summed in accum_t, rounded once
//
// Sizes the launches need are host values bounded by the compile-time config: the plan gets
// the static capacity bound and the permuted buffers have plan_rows_bound rows, so no backend
// reads a count back (the CUDA layer never synchronises).
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // std::int32_t, std::int64_t
#include <type_traits>  // std::is_same_v

#include "moe/layer.hpp"  // layer_state, workspace_layout, args, the op headers

namespace moe::detail::layer_impl {

/// Router logits of this rank's T tokens as fp32: the router GEMM in accum_t<C>, narrowed for
/// fp64 configs (the router decides in fp32, docs/routing.md).
template <config C, class Policy, class Ops>
status router_logits(Policy policy, Ops ops, layer_state<C> const& self, problem const& p,
                     act_t<C> const* x, router_jitter const& jitter, void* ws,
                     workspace_layout const& L) noexcept {
  using accum = accum_t<C>;
  auto* const logits = at<float>(ws, L.logits);
  if constexpr (std::is_same_v<accum, float>) {
    return router_gemm(ops, p,
                       router_gemm_args<C>{
                           .x = x, .w_gate = self.params.w_gate, .logits = logits, .jitter = jitter});
  } else {
    auto* const wide = at<accum>(ws, L.logits_acc);
    MOE_TRY(router_gemm(ops, p,
                        router_gemm_args<C>{
                            .x = x, .w_gate = self.params.w_gate, .logits = wide, .jitter = jitter}));
    return layer_glue<Policy>::convert(policy, wide, logits, p.tokens * C.experts);
  }
}

/// The router GEMM's backward from fp32 d_logits of this rank's tokens (widened for fp64
/// configs): dx into dx_a, d_w_gate accumulated, then dx_a added to dx_sum.
template <config C, class Policy, class Ops>
status router_backward_tail(Policy policy, Ops ops, layer_state<C> const& self, problem const& p,
                            act_t<C> const* x, float const* d_logits, router_jitter const& jitter,
                            void* ws, workspace_layout const& L) noexcept {
  using accum = accum_t<C>;
  accum const* d_logits_acc = nullptr;
  if constexpr (std::is_same_v<accum, float>) {
    d_logits_acc = d_logits;
  } else {
    auto* const wide = at<accum>(ws, L.d_logits_acc);
    MOE_TRY(layer_glue<Policy>::convert(policy, d_logits, wide, p.tokens * C.experts));
    d_logits_acc = wide;
  }
  auto* const dx_a = at<act_t<C>>(ws, L.dx_a);
  MOE_TRY(router_gemm_backward(ops, p,
                               router_gemm_backward_args<C>{.x = x,
                                                            .w_gate = self.params.w_gate,
                                                            .d_logits = d_logits_acc,
                                                            .dx = dx_a,
                                                            .d_w_gate = self.grads.w_gate,
                                                            .jitter = jitter}));
  return layer_glue<Policy>::add_dx(policy, self, p.tokens, dx_a, false, at<accum>(ws, L.dx_sum));
}

/// The dense branches' forward (shared experts, the residual MLP) and the mix into y.
template <config C, class Policy, class Ops>
status dense_forward_and_mix(Policy policy, Ops ops, layer_state<C> const& self, std::int64_t T,
                             act_t<C> const* x, act_t<C>* y, void* ws,
                             workspace_layout const& L) noexcept {
  using act = act_t<C>;
  using weight = weight_t<C>;
  std::int64_t const H = self.shape.hidden;
  std::int64_t const Fs = self.shape.shared_ffn, Fr = self.shape.residual_ffn;
  auto dense = [&](std::int64_t width, weight const* w1, weight const* b1, weight const* w2,
                   weight const* b2, std::size_t pre, std::size_t h, std::size_t out) {
    return expert_ffn(ops, expert_ffn_args<C>{.experts = 1,
                                              .rows = T,
                                              .hidden = H,
                                              .ffn = width,
                                              .offsets = at<std::int64_t>(ws, L.dense_offsets),
                                              .x = x,
                                              .w1 = w1,
                                              .b1 = b1,
                                              .w2 = w2,
                                              .b2 = b2,
                                              .recompute = self.options.recompute,
                                              .y = at<act>(ws, out),
                                              .pre = at<act>(ws, pre),
                                              .h = at<act>(ws, h)});
  };
  if (Fs > 0)
    MOE_TRY(dense(Fs, self.params.shared_w1, self.params.shared_b1, self.params.shared_w2,
                  self.params.shared_b2, L.shared_pre, L.shared_h, L.shared_y));
  if (Fr > 0)
    MOE_TRY(dense(Fr, self.params.residual_w1, self.params.residual_b1, self.params.residual_w2,
                  self.params.residual_b2, L.res_pre, L.res_h, L.res_y));
  return layer_glue<Policy>::mix_forward(policy, self, T, x, at<act>(ws, L.y_moe),
                     Fs > 0 ? at<act>(ws, L.shared_y) : nullptr,
                     Fr > 0 ? at<act>(ws, L.res_y) : nullptr, at<accum_t<C>>(ws, L.coef), y);
}

/// The mix's backward when there is a residual: the gradient the MoE branch sees (dy itself
/// without a residual).
template <config C, class Policy>
status mix_backward_of(Policy policy, layer_state<C> const& self, std::int64_t T,
                       act_t<C> const* dy, void* ws, workspace_layout const& L,
                       act_t<C> const*& d_moe) noexcept {
  using act = act_t<C>;
  d_moe = dy;
  if (self.shape.residual_ffn == 0) return {};
  MOE_TRY(layer_glue<Policy>::mix_backward(policy, self, T, dy, at<act>(ws, L.y_moe),
                       self.shape.shared_ffn > 0 ? at<act>(ws, L.shared_y) : nullptr,
                       at<act>(ws, L.res_y), at<accum_t<C>>(ws, L.coef), at<act>(ws, L.d_moe),
                       at<act>(ws, L.d_res), at<accum_t<C>>(ws, L.d_coef)));
  d_moe = at<act>(ws, L.d_moe);
  return {};
}

/// The dense branches' backward (shared experts on d_moe, the residual MLP on d_res, the
/// mixing coefficients' linear layer), each dx added to dx_sum in that order; then dx rounded.
template <config C, class Policy, class Ops>
status dense_backward(Policy policy, Ops ops, layer_state<C> const& self, std::int64_t T,
                      act_t<C> const* x, act_t<C> const* d_moe, act_t<C>* dx, void* ws,
                      workspace_layout const& L) noexcept {
  using act = act_t<C>;
  using weight = weight_t<C>;
  using accum = accum_t<C>;
  std::int64_t const H = self.shape.hidden;
  std::int64_t const Fs = self.shape.shared_ffn, Fr = self.shape.residual_ffn;
  auto* const dx_a = at<act>(ws, L.dx_a);
  auto* const dx_sum = at<accum>(ws, L.dx_sum);
  auto dense = [&](std::int64_t width, weight const* w1, weight const* b1, weight const* w2,
                   act const* dy, std::size_t pre, std::size_t h, accum* dw1, accum* db1,
                   accum* dw2, accum* db2) {
    return expert_ffn_backward(ops, expert_ffn_backward_args<C>{
                                        .experts = 1,
                                        .rows = T,
                                        .hidden = H,
                                        .ffn = width,
                                        .offsets = at<std::int64_t>(ws, L.dense_offsets),
                                        .x = x,
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
  if (T > 0 && Fs > 0) {
    MOE_TRY(dense(Fs, self.params.shared_w1, self.params.shared_b1, self.params.shared_w2, d_moe,
                  L.shared_pre, L.shared_h, self.grads.shared_w1, self.grads.shared_b1,
                  self.grads.shared_w2, self.grads.shared_b2));
    MOE_TRY(layer_glue<Policy>::add_dx(policy, self, T, dx_a, false, dx_sum));
  }
  if (T > 0 && Fr > 0) {
    MOE_TRY(dense(Fr, self.params.residual_w1, self.params.residual_b1, self.params.residual_w2,
                  at<act>(ws, L.d_res), L.res_pre, L.res_h, self.grads.residual_w1,
                  self.grads.residual_b1, self.grads.residual_w2, self.grads.residual_b2));
    MOE_TRY(layer_glue<Policy>::add_dx(policy, self, T, dx_a, false, dx_sum));
    MOE_TRY(layer_glue<Policy>::coef_backward(policy, self, T, x, at<accum>(ws, L.d_coef), dx_sum));
  }
  return layer_glue<Policy>::round_dx(policy, self, T, dx_sum, dx);
}

/// The layer's forward on one rank (layer::forward has checked the problem and workspace).
template <config C, class Policy>
status layer_forward(Policy policy, layer_state<C> const& self, problem const& p,
                     layer_forward_args<C> const& a, void* ws, workspace_layout const& L) noexcept {
  using act = act_t<C>;
  std::int64_t const T = p.tokens, H = self.shape.hidden, E = C.experts;
  constexpr std::int32_t K = C.top_k;
  if (T > 0 && (a.x == nullptr || a.y == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_forward_args.x/y: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  if (T == 0)
    return layer_glue<Policy>::empty(policy, a, at<std::int32_t>(ws, L.counts),
                                     at<std::int32_t>(ws, L.kept));
  auto const ops = layer_glue<Policy>::ops(policy, ws, L);
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
  std::int64_t const M = L.rows;

  // 1. Router GEMM, 2. route.
  MOE_TRY(router_logits(policy, ops, self, p, a.x, self.options.jitter, ws, L));
  MOE_TRY(route<C>(ops, p, self.options.router,
                   route_args{.logits = at<float>(ws, L.logits),
                              .expert = expert,
                              .weight = weight_k,
                              .slot = slot,
                              .counts = counts,
                              .kept = at<std::int32_t>(ws, L.kept),
                              .scores = nullptr,
                              .stats = st,
                              .bad_logit = a.bad_logit}));
  MOE_TRY(layer_glue<Policy>::publish(policy, self, p, a, st, counts,
                                         at<std::int64_t>(ws, L.dense_offsets)));
  // 3. Plan with the static capacity bound, 4. permute into M = plan_rows_bound rows.
  MOE_TRY(plan(ops, plan_args{.layout = plan_layout::compact,
                              .tokens = T,
                              .top_k = K,
                              .experts = C.experts,
                              .capacity = static_capacity<C>(p),
                              .tile_rows = 1,
                              .expert = expert,
                              .slot = slot,
                              .offsets = offsets,
                              .row_of = row_of,
                              .source_of = source_of,
                              .source_rows = M,
                              .bad_route = nullptr}));
  MOE_TRY(permute(ops, permute_args<act>{.x = a.x,
                                         .source_of = source_of,
                                         .out = xp,
                                         .tokens = T,
                                         .hidden = H,
                                         .rows = M,
                                         .top_k = K}));
  // 5. Routed experts (each expert's rows from the offsets), 6. combine.
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
  MOE_TRY(combine(ops, combine_args<act>{.o = yp,
                                         .row_of = row_of,
                                         .weight = weight_k,
                                         .y = at<act>(ws, L.y_moe),
                                         .tokens = T,
                                         .hidden = H,
                                         .rows = M,
                                         .top_k = K}));
  // 7. Dense branches and the mix.
  return dense_forward_and_mix(policy, ops, self, T, a.x, a.y, ws, L);
}

/// The layer's backward on one rank.
template <config C, class Policy>
status layer_backward(Policy policy, layer_state<C> const& self, problem const& p,
                      layer_backward_args<C> const& a, void* ws,
                      workspace_layout const& L) noexcept {
  using act = act_t<C>;
  std::int64_t const T = p.tokens, H = self.shape.hidden, E = C.experts;
  constexpr std::int32_t K = C.top_k;
  if (T > 0 && (a.x == nullptr || a.dy == nullptr || a.dx == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_backward_args.x/dy/dx: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  if (T == 0) return {};
  auto const ops = layer_glue<Policy>::ops(policy, ws, L);
  auto* const row_of = at<std::int32_t>(ws, L.row_of);
  auto* const dx_a = at<act>(ws, L.dx_a);
  auto* const dxp = at<act>(ws, L.dxp);
  auto* const d_o = at<act>(ws, L.d_o);
  auto* const d_weight = at<float>(ws, L.d_weight);
  std::int64_t const M = L.rows;

  act const* d_moe = nullptr;
  MOE_TRY(mix_backward_of(policy, self, T, a.dy, ws, L, d_moe));
  // Routed experts: combine backward → expert FFN backward → permute backward.
  MOE_TRY(combine_backward(ops, combine_backward_args<act>{.dy = d_moe,
                                                           .o = at<act>(ws, L.yp),
                                                           .row_of = row_of,
                                                           .source_of =
                                                               at<std::int32_t>(ws, L.source_of),
                                                           .weight = at<float>(ws, L.weight),
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
                                                               .offsets =
                                                                   at<std::int64_t>(ws, L.offsets),
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
  MOE_TRY(layer_glue<Policy>::add_dx(policy, self, T, dx_a, true, at<accum_t<C>>(ws, L.dx_sum)));
  // Router: route backward (the weights' gradient plus the losses') → router GEMM backward.
  auto* const d_logits = at<float>(ws, L.d_logits);
  MOE_TRY(route_backward<C>(ops, p, self.options.router,
                            route_backward_args{.logits = at<float>(ws, L.logits),
                                                .expert = at<std::int32_t>(ws, L.expert),
                                                .slot = at<std::int32_t>(ws, L.slot),
                                                .d_weight = d_weight,
                                                .d_logits = d_logits}));
  MOE_TRY(router_backward_tail(policy, ops, self, p, a.x, d_logits, self.options.jitter, ws, L));
  // Dense branches, then dx rounded once.
  return dense_backward(policy, ops, self, T, a.x, d_moe, a.dx, ws, L);
}

}  // namespace moe::detail::layer_impl
