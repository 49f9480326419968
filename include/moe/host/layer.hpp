// SPDX-License-Identifier: Apache-2.0
// moe::layer's forward and backward on the CPU (moe/layer.hpp, which includes this file at
// its end, calls them): the host ops in sequence, on regions of the caller's workspace. The dense
// branches (shared experts, the PR-MoE residual MLP) are the expert FFN with one expert whose
// rows are all T tokens. Branch outputs and dx parts are summed in accum_t<C> in a fixed
// order and rounded once, so results do not depend on the thread count.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t, std::uintptr_t
#include <cstring>  // std::memcpy

#include "moe/layer.hpp"  // moe::layer and its argument structs

namespace moe::detail::layer_impl {

/// The layer's forward on the CPU (layer::forward has checked the problem and the workspace).
template <config C>
status layer_forward(host_policy policy, layer_state<C> const& self, problem const& p,
                     layer_forward_args<C> const& a, void* ws, workspace_layout const& L) noexcept {
  using act = act_t<C>;
  using weight = weight_t<C>;
  using accum = accum_t<C>;
  std::int64_t const T = p.tokens, H = self.shape.hidden, E = C.experts, K = C.top_k;
  std::int64_t const Fs = self.shape.shared_ffn, Fr = self.shape.residual_ffn;
  if (T > 0 && (a.x == nullptr || a.y == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_forward_args.x/y: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  auto* const logits = at<float>(ws, L.logits);
  auto* const expert = at<std::int32_t>(ws, L.expert);
  auto* const slot = at<std::int32_t>(ws, L.slot);
  auto* const weight_k = at<float>(ws, L.weight);
  auto* const counts = at<std::int32_t>(ws, L.counts);
  auto* const kept = at<std::int32_t>(ws, L.kept);
  auto* const st = at<route_stats>(ws, L.stats);
  auto* const offsets = at<std::int64_t>(ws, L.offsets);
  auto* const row_of = at<std::int32_t>(ws, L.row_of);
  auto* const source_of = at<std::int32_t>(ws, L.source_of);
  auto* const xp = at<act>(ws, L.xp);
  auto* const yp = at<act>(ws, L.yp);
  auto* const y_moe = at<act>(ws, L.y_moe);
  auto* const dense_offsets = at<std::int64_t>(ws, L.dense_offsets);
  dense_offsets[0] = 0;
  dense_offsets[1] = T;

  // 1. Router GEMM: logits in accum_t<C>; the router decides in fp32 (docs/routing.md).
  if constexpr (std::is_same_v<accum, float>) {
    MOE_TRY(router_gemm(policy, p,
                        router_gemm_args<C>{.x = a.x,
                                            .w_gate = self.params.w_gate,
                                            .logits = logits,
                                            .jitter = self.options.jitter}));
  } else {
    auto* const wide = at<accum>(ws, L.logits_acc);
    MOE_TRY(router_gemm(policy, p,
                        router_gemm_args<C>{.x = a.x,
                                            .w_gate = self.params.w_gate,
                                            .logits = wide,
                                            .jitter = self.options.jitter}));
    for (std::int64_t i = 0; i < T * E; ++i) logits[i] = static_cast<float>(wide[i]);
  }
  // 2. Route.
  MOE_TRY(route<C>(policy, p, self.options.router,
                   route_args{.logits = logits,
                              .expert = expert,
                              .weight = weight_k,
                              .slot = slot,
                              .counts = counts,
                              .kept = kept,
                              .scores = nullptr,
                              .stats = st,
                              .bad_logit = a.bad_logit}));
  // 3. Plan (compact layout, no padding), 4. permute.
  MOE_TRY(plan(policy, plan_args{.layout = plan_layout::compact,
                                 .tokens = T,
                                 .top_k = static_cast<std::int32_t>(K),
                                 .experts = static_cast<std::int32_t>(E),
                                 .capacity = st->capacity,
                                 .tile_rows = 1,
                                 .expert = expert,
                                 .slot = slot,
                                 .offsets = offsets,
                                 .row_of = row_of,
                                 .source_of = source_of,
                                 .source_rows = L.rows,
                                 .bad_route = nullptr}));
  std::int64_t const M = offsets[E];
  MOE_TRY(permute(policy, permute_args<act>{.x = a.x,
                                            .source_of = source_of,
                                            .out = xp,
                                            .tokens = T,
                                            .hidden = H,
                                            .rows = M,
                                            .top_k = static_cast<std::int32_t>(K)}));
  // 5. Routed experts.
  MOE_TRY(expert_ffn(policy, expert_ffn_args<C>{.experts = E,
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
  MOE_TRY(combine(policy, combine_args<act>{.o = yp,
                                            .row_of = row_of,
                                            .weight = weight_k,
                                            .y = y_moe,
                                            .tokens = T,
                                            .hidden = H,
                                            .rows = M,
                                            .top_k = static_cast<std::int32_t>(K)}));
  // 7. Dense branches: one expert over all T rows.
  auto dense = [&](std::int64_t width, weight const* w1, weight const* b1, weight const* w2,
                   weight const* b2, std::size_t pre, std::size_t h, std::size_t y) {
    return expert_ffn(policy, expert_ffn_args<C>{.experts = 1,
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
  if (Fs > 0 && T > 0)
    MOE_TRY(dense(Fs, self.params.shared_w1, self.params.shared_b1, self.params.shared_w2, self.params.shared_b2,
                  L.shared_pre, L.shared_h, L.shared_y));
  if (Fr > 0 && T > 0)
    MOE_TRY(dense(Fr, self.params.residual_w1, self.params.residual_b1, self.params.residual_w2,
                  self.params.residual_b2, L.res_pre, L.res_h, L.res_y));
  // 8. y = c0 · (y_moe + shared) + c1 · mlp, or y_moe + shared, in accum_t<C>, rounded once.
  act const* const shared_y = Fs > 0 ? at<act>(ws, L.shared_y) : nullptr;
  act const* const res_y = Fr > 0 ? at<act>(ws, L.res_y) : nullptr;
  auto* const coef = at<accum>(ws, L.coef);
  backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
    accum c0 = 1, c1 = 0;
    if (res_y != nullptr) {
      accum z[2];
      for (int j = 0; j < 2; ++j) {
        accum s = static_cast<accum>(to_float(self.params.coef_b[j]));
        for (std::int64_t h = 0; h < H; ++h)
          s += static_cast<accum>(to_float(a.x[t * H + h])) *
               static_cast<accum>(to_float(self.params.coef_w[j * H + h]));
        z[j] = s;
      }
      accum const m = z[0] > z[1] ? z[0] : z[1];
      accum const e0 = std::exp(z[0] - m), e1 = std::exp(z[1] - m);
      c0 = e0 / (e0 + e1);
      c1 = e1 / (e0 + e1);
      coef[2 * t] = c0;
      coef[2 * t + 1] = c1;
    }
    for (std::int64_t h = 0; h < H; ++h) {
      std::int64_t const i = t * H + h;
      accum v = static_cast<accum>(to_float(y_moe[i]));
      if (shared_y != nullptr) v += static_cast<accum>(to_float(shared_y[i]));
      if (res_y != nullptr) v = c0 * v + c1 * static_cast<accum>(to_float(res_y[i]));
      a.y[i] = from_float<act>(v);
    }
  });
  if (a.counts != nullptr) std::memcpy(a.counts, counts, static_cast<std::size_t>(E) * 4);
  if (a.stats != nullptr) {
    a.stats->route = *st;
    a.stats->loss = static_cast<double>(p.aux_loss_coef) * st->aux_loss +
                    static_cast<double>(p.z_loss_coef) * st->z_loss +
                    static_cast<double>(self.options.router.seq_aux_loss_coef) * st->seq_aux_loss;
  }
  return {};
}

/// The layer's backward on the CPU.
template <config C>
status layer_backward(host_policy policy, layer_state<C> const& self, problem const& p,
                      layer_backward_args<C> const& a, void* ws, workspace_layout const& L) noexcept {
  using act = act_t<C>;
  using weight = weight_t<C>;
  using accum = accum_t<C>;
  std::int64_t const T = p.tokens, H = self.shape.hidden, E = C.experts, K = C.top_k;
  std::int64_t const Fs = self.shape.shared_ffn, Fr = self.shape.residual_ffn;
  if (T > 0 && (a.x == nullptr || a.dy == nullptr || a.dx == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_backward_args.x/dy/dx: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  if (T == 0) return {};
  auto* const offsets = at<std::int64_t>(ws, L.offsets);
  auto* const row_of = at<std::int32_t>(ws, L.row_of);
  auto* const source_of = at<std::int32_t>(ws, L.source_of);
  auto* const weight_k = at<float>(ws, L.weight);
  auto* const dense_offsets = at<std::int64_t>(ws, L.dense_offsets);
  auto* const dx_a = at<act>(ws, L.dx_a);
  auto* const dx_sum = at<accum>(ws, L.dx_sum);
  std::int64_t const M = offsets[E];
  auto add_dx = [&](act const* part, bool first) {
    backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
      for (std::int64_t h = t * H; h < (t + 1) * H; ++h)
        dx_sum[h] = (first ? accum{0} : dx_sum[h]) + static_cast<accum>(to_float(part[h]));
    });
  };

  // Residual mixing: d(moe branch) = c0·dy, d(mlp) = c1·dy, and the coefficients' softmax.
  act const* d_moe = a.dy;
  auto* const dcoef = at<accum>(ws, L.d_coef);
  if (Fr > 0) {
    auto* const coef = at<accum>(ws, L.coef);
    auto* const y_moe = at<act>(ws, L.y_moe);
    act const* const shared_y = Fs > 0 ? at<act>(ws, L.shared_y) : nullptr;
    auto* const res_y = at<act>(ws, L.res_y);
    auto* const dm = at<act>(ws, L.d_moe);
    auto* const dr = at<act>(ws, L.d_res);
    backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
      accum const c0 = coef[2 * t], c1 = coef[2 * t + 1];
      accum g0 = 0, g1 = 0;
      for (std::int64_t h = t * H; h < (t + 1) * H; ++h) {
        accum const d = static_cast<accum>(to_float(a.dy[h]));
        accum v = static_cast<accum>(to_float(y_moe[h]));
        if (shared_y != nullptr) v += static_cast<accum>(to_float(shared_y[h]));
        g0 += d * v;
        g1 += d * static_cast<accum>(to_float(res_y[h]));
        dm[h] = from_float<act>(c0 * d);
        dr[h] = from_float<act>(c1 * d);
      }
      accum const s = c0 * g0 + c1 * g1;
      dcoef[2 * t] = c0 * (g0 - s);
      dcoef[2 * t + 1] = c1 * (g1 - s);
    });
    d_moe = dm;
  }

  // Routed experts: combine backward → expert FFN backward → permute backward.
  auto* const d_o = at<act>(ws, L.d_o);
  auto* const dxp = at<act>(ws, L.dxp);
  auto* const d_weight = at<float>(ws, L.d_weight);
  MOE_TRY(combine_backward(policy, combine_backward_args<act>{.dy = d_moe,
                                                              .o = at<act>(ws, L.yp),
                                                              .row_of = row_of,
                                                              .source_of = source_of,
                                                              .weight = weight_k,
                                                              .d_o = d_o,
                                                              .d_weight = d_weight,
                                                              .tokens = T,
                                                              .hidden = H,
                                                              .rows = M,
                                                              .top_k = static_cast<std::int32_t>(K)}));
  MOE_TRY(expert_ffn_backward(policy, expert_ffn_backward_args<C>{.experts = E,
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
  MOE_TRY(permute_backward(policy, permute_backward_args<act>{.d_out = dxp,
                                                              .row_of = row_of,
                                                              .dx = dx_a,
                                                              .tokens = T,
                                                              .hidden = H,
                                                              .rows = M,
                                                              .top_k = static_cast<std::int32_t>(K)}));
  add_dx(dx_a, true);

  // Router: route backward (weights' gradient plus the losses') → router GEMM backward.
  auto* const d_logits = at<float>(ws, L.d_logits);
  MOE_TRY(route_backward<C>(policy, p, self.options.router,
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
    for (std::int64_t i = 0; i < T * E; ++i) wide[i] = static_cast<accum>(d_logits[i]);
    d_logits_acc = wide;
  }
  MOE_TRY(router_gemm_backward(policy, p,
                               router_gemm_backward_args<C>{.x = a.x,
                                                            .w_gate = self.params.w_gate,
                                                            .d_logits = d_logits_acc,
                                                            .dx = dx_a,
                                                            .d_w_gate = self.grads.w_gate,
                                                            .jitter = self.options.jitter}));
  add_dx(dx_a, false);

  // Dense branches.
  auto dense = [&](std::int64_t width, weight const* w1, weight const* b1, weight const* w2,
                   act const* dy, std::size_t pre, std::size_t h, accum* dw1, accum* db1,
                   accum* dw2, accum* db2) {
    return expert_ffn_backward(policy, expert_ffn_backward_args<C>{.experts = 1,
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
                                                                   .d_pre =
                                                                       at<act>(ws, L.dense_d_pre),
                                                                   .dx = dx_a,
                                                                   .dw1 = dw1,
                                                                   .db1 = db1,
                                                                   .dw2 = dw2,
                                                                   .db2 = db2,
                                                                   .accumulate = true});
  };
  if (Fs > 0) {
    MOE_TRY(dense(Fs, self.params.shared_w1, self.params.shared_b1, self.params.shared_w2, d_moe,
                  L.shared_pre, L.shared_h, self.grads.shared_w1, self.grads.shared_b1, self.grads.shared_w2,
                  self.grads.shared_b2));
    add_dx(dx_a, false);
  }
  if (Fr > 0) {
    MOE_TRY(dense(Fr, self.params.residual_w1, self.params.residual_b1, self.params.residual_w2,
                  at<act>(ws, L.d_res), L.res_pre, L.res_h, self.grads.residual_w1,
                  self.grads.residual_b1, self.grads.residual_w2, self.grads.residual_b2));
    add_dx(dx_a, false);
    // The coefficients' linear layer: dW_c[j] += Σ_t dz[t, j] x[t], db_c += Σ_t dz, dx += dz·W_c.
    backend::host::for_each_row(policy.threads, 2 * H + 2, [&](std::int64_t i) {
      if (i < 2 * H) {
        std::int64_t const j = i / H, h = i % H;
        accum s = self.grads.coef_w[i];
        for (std::int64_t t = 0; t < T; ++t)
          s += dcoef[2 * t + j] * static_cast<accum>(to_float(a.x[t * H + h]));
        self.grads.coef_w[i] = s;
      } else {
        std::int64_t const j = i - 2 * H;
        accum s = self.grads.coef_b[j];
        for (std::int64_t t = 0; t < T; ++t) s += dcoef[2 * t + j];
        self.grads.coef_b[j] = s;
      }
    });
    backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
      for (std::int64_t h = 0; h < H; ++h)
        dx_sum[t * H + h] += dcoef[2 * t] * static_cast<accum>(to_float(self.params.coef_w[h])) +
                             dcoef[2 * t + 1] * static_cast<accum>(to_float(self.params.coef_w[H + h]));
    });
  }
  backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
    for (std::int64_t h = t * H; h < (t + 1) * H; ++h) a.dx[h] = from_float<act>(dx_sum[h]);
  });
  return {};
}

}  // namespace moe::detail::layer_impl
