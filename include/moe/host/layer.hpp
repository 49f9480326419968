// SPDX-License-Identifier: Apache-2.0
// moe::layer's forward and backward on the CPU (moe/layer.hpp, which includes this file at
// its end, calls them): the host ops in sequence, on regions of the caller's workspace. The dense
// branches (shared experts, the PR-MoE residual MLP) are the expert FFN with one expert whose
// rows are all T tokens. Branch outputs and dx parts are summed in accum_t<C> in a fixed
// order and rounded once, so results do not depend on the thread count.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t, std::uintptr_t
#include <algorithm>  // std::sort
#include <cmath>    // std::exp
#include <cstring>  // std::memcpy

#include "moe/layer.hpp"  // moe::layer and its argument structs

namespace moe::detail::layer_impl {

/// y = c0 · (y_moe + shared_y) + c1 · res_y with c = softmax(x·W_cᵀ + b_c) (coef ← c) when
/// res_y is given, else y_moe + shared_y; in accum_t, rounded once. shared_y, res_y may be null.
template <config C>
void mix_forward(host_policy policy, layer_state<C> const& self, std::int64_t T,
                 act_t<C> const* x, act_t<C> const* y_moe, act_t<C> const* shared_y,
                 act_t<C> const* res_y, accum_t<C>* coef, act_t<C>* y) {
  using act = act_t<C>;
  using accum = accum_t<C>;
  std::int64_t const H = self.shape.hidden;
  backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
    accum c0 = 1, c1 = 0;
    if (res_y != nullptr) {
      accum z[2];
      for (int j = 0; j < 2; ++j) {
        accum s = static_cast<accum>(to_float(self.params.coef_b[j]));
        for (std::int64_t h = 0; h < H; ++h)
          s += static_cast<accum>(to_float(x[t * H + h])) *
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
      y[i] = from_float<act>(v);
    }
  });
}

/// The mix's backward: d_moe = c0·dy, d_res = c1·dy, dcoef = c ⊙ (g − <c, g>) with
/// g_j = <dy, branch_j>.
template <config C>
void mix_backward(host_policy policy, layer_state<C> const& self, std::int64_t T,
                  act_t<C> const* dy, act_t<C> const* y_moe, act_t<C> const* shared_y,
                  act_t<C> const* res_y, accum_t<C> const* coef, act_t<C>* dm, act_t<C>* dr,
                  accum_t<C>* dcoef) {
  using act = act_t<C>;
  using accum = accum_t<C>;
  std::int64_t const H = self.shape.hidden;
  backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
    accum const c0 = coef[2 * t], c1 = coef[2 * t + 1];
    accum g0 = 0, g1 = 0;
    for (std::int64_t h = t * H; h < (t + 1) * H; ++h) {
      accum const d = static_cast<accum>(to_float(dy[h]));
      accum v = static_cast<accum>(to_float(y_moe[h]));
      if (shared_y != nullptr) v += static_cast<accum>(to_float(shared_y[h]));
      g0 += d * v;
      g1 += d * static_cast<accum>(to_float(res_y[h]));
      dm[h] = from_float<act>(c0 * d);
      dr[h] = from_float<act>(c1 * d);
    }
    accum const sum = c0 * g0 + c1 * g1;
    dcoef[2 * t] = c0 * (g0 - sum);
    dcoef[2 * t + 1] = c1 * (g1 - sum);
  });
}

/// dx_sum (= or +=) part, in accum_t.
template <config C>
void add_dx(host_policy policy, std::int64_t T, std::int64_t H, act_t<C> const* part, bool first,
            accum_t<C>* dx_sum) {
  using accum = accum_t<C>;
  backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
    for (std::int64_t h = t * H; h < (t + 1) * H; ++h)
      dx_sum[h] = (first ? accum{0} : dx_sum[h]) + static_cast<accum>(to_float(part[h]));
  });
}

/// The dense branches' backward (shared experts on d_moe, the residual MLP on d_res, the
/// mixing coefficients' linear layer), each dx added to dx_sum in that order, then dx rounded.
template <config C>
status dense_backward(host_policy policy, layer_state<C> const& self, std::int64_t T,
                      act_t<C> const* x, act_t<C> const* d_moe, void* ws,
                      workspace_layout const& L, accum_t<C>* dx_sum, act_t<C>* dx) noexcept {
  using act = act_t<C>;
  using weight = weight_t<C>;
  using accum = accum_t<C>;
  std::int64_t const H = self.shape.hidden;
  std::int64_t const Fs = self.shape.shared_ffn, Fr = self.shape.residual_ffn;
  auto* const dx_a = at<act>(ws, L.dx_a);
  auto* const dense_offsets = at<std::int64_t>(ws, L.dense_offsets);
  auto dense = [&](std::int64_t width, weight const* w1, weight const* b1, weight const* w2,
                   act const* dy, std::size_t pre, std::size_t h, accum* dw1, accum* db1,
                   accum* dw2, accum* db2) {
    return expert_ffn_backward(policy, expert_ffn_backward_args<C>{.experts = 1,
                                                                   .rows = T,
                                                                   .hidden = H,
                                                                   .ffn = width,
                                                                   .offsets = dense_offsets,
                                                                   .x = x,
                                                                   .w1 = w1,
                                                                   .b1 = b1,
                                                                   .w2 = w2,
                                                                   .recompute =
                                                                       self.options.recompute,
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
  if (T > 0 && Fs > 0) {
    MOE_TRY(dense(Fs, self.params.shared_w1, self.params.shared_b1, self.params.shared_w2, d_moe,
                  L.shared_pre, L.shared_h, self.grads.shared_w1, self.grads.shared_b1,
                  self.grads.shared_w2, self.grads.shared_b2));
    add_dx<C>(policy, T, H, dx_a, false, dx_sum);
  }
  if (T > 0 && Fr > 0) {
    MOE_TRY(dense(Fr, self.params.residual_w1, self.params.residual_b1, self.params.residual_w2,
                  at<act>(ws, L.d_res), L.res_pre, L.res_h, self.grads.residual_w1,
                  self.grads.residual_b1, self.grads.residual_w2, self.grads.residual_b2));
    add_dx<C>(policy, T, H, dx_a, false, dx_sum);
    // The coefficients' linear layer: dW_c[j] += Σ_t dz[t, j] x[t], db_c += Σ_t dz, dx += dz·W_c.
    auto* const dcoef = at<accum>(ws, L.d_coef);
    backend::host::for_each_row(policy.threads, 2 * H + 2, [&](std::int64_t i) {
      if (i < 2 * H) {
        std::int64_t const j = i / H, h = i % H;
        accum sum = self.grads.coef_w[i];
        for (std::int64_t t = 0; t < T; ++t)
          sum += dcoef[2 * t + j] * static_cast<accum>(to_float(x[t * H + h]));
        self.grads.coef_w[i] = sum;
      } else {
        std::int64_t const j = i - 2 * H;
        accum sum = self.grads.coef_b[j];
        for (std::int64_t t = 0; t < T; ++t) sum += dcoef[2 * t + j];
        self.grads.coef_b[j] = sum;
      }
    });
    backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
      for (std::int64_t h = 0; h < H; ++h)
        dx_sum[t * H + h] +=
            dcoef[2 * t] * static_cast<accum>(to_float(self.params.coef_w[h])) +
            dcoef[2 * t + 1] * static_cast<accum>(to_float(self.params.coef_w[H + h]));
    });
  }
  backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
    for (std::int64_t h = t * H; h < (t + 1) * H; ++h) dx[h] = from_float<act>(dx_sum[h]);
  });
  return {};
}


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
  mix_forward<C>(policy, self, T, a.x, y_moe, Fs > 0 ? at<act>(ws, L.shared_y) : nullptr,
                 Fr > 0 ? at<act>(ws, L.res_y) : nullptr, at<accum>(ws, L.coef), a.y);
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
  auto* const dx_a = at<act>(ws, L.dx_a);
  auto* const dx_sum = at<accum>(ws, L.dx_sum);
  std::int64_t const M = offsets[E];

  // Residual mixing: d(moe branch) = c0·dy, d(mlp) = c1·dy, and the coefficients' softmax.
  act const* d_moe = a.dy;
  if (Fr > 0) {
    mix_backward<C>(policy, self, T, a.dy, at<act>(ws, L.y_moe),
                    Fs > 0 ? at<act>(ws, L.shared_y) : nullptr, at<act>(ws, L.res_y),
                    at<accum>(ws, L.coef), at<act>(ws, L.d_moe), at<act>(ws, L.d_res),
                    at<accum>(ws, L.d_coef));
    d_moe = at<act>(ws, L.d_moe);
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
  add_dx<C>(policy, T, H, dx_a, true, dx_sum);

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
  add_dx<C>(policy, T, H, dx_a, false, dx_sum);

  // Dense branches, then dx rounded once.
  return dense_backward<C>(policy, self, T, a.x, d_moe, ws, L, dx_sum, a.dx);
}

}  // namespace moe::detail::layer_impl

// ---- expert parallelism (R ranks, each holding E_l = E / R experts) --------------------------
//
// Routing is the GROUP's: every rank gathers all ranks' logits (rank order = the group's token
// order) and routes the whole group's batch itself — the same deterministic computation on
// every rank, so every decision, the capacity, the drops, the aux and z losses are exactly
// those of one rank routing the concatenated batch. Each rank then dispatches its own tokens:
// its plan orders its kept routes by expert and, within an expert, by the group's slot; rows for
// rank r's experts go to rank r (all-to-all-v, counts exchanged first), arrive ordered by source
// rank, are regrouped by local expert for the grouped GEMM, and go back the same way. Backward
// mirrors it; route backward runs on the gathered d_weight, again identically on every rank.
// docs/expert_parallel.md.

namespace moe::detail::layer_impl {

/// Every rank's T and expected group T, checked the same way on every rank (so that a problem
/// that disagrees between ranks gives the same error everywhere instead of a hang later).
template <class Comm>
status exchange_tokens(Comm const& comm, problem const& p, workspace_layout const& L, void* ws,
                       std::int64_t& tokens_before) noexcept {
  std::int32_t const R = comm.size();
  auto* const tok = at<std::int64_t>(ws, L.tok);  // [R][2]: T_r, expected group T
  std::int64_t const mine[2] = {p.tokens, L.group_tokens};
  MOE_TRY(comm.all_gather(mine, 2, tok));
  std::int64_t sum = 0;
  tokens_before = 0;
  for (std::int32_t r = 0; r < R; ++r) {
    if (r < comm.rank()) tokens_before += tok[2 * r];
    sum += tok[2 * r];
  }
  for (std::int32_t r = 0; r < R; ++r)
    if (tok[2 * r + 1] != sum)
      return status::error(errc::invalid_argument,
                           "problem.group_tokens: the ranks' T sum to %lld, but rank %d expects "
                           "%lld (set group_tokens to the group's total, the same on every rank)",
                           static_cast<long long>(sum), r,
                           static_cast<long long>(tok[2 * r + 1]));
  return {};
}

/// Row counts of the exchange: send_rows[r] = this rank's kept rows for rank r's experts;
/// recv_counts[s][j] = rows from rank s for local expert j (exchanged); recv_rows[s] their sum;
/// e_offsets of the regrouped buffer; order[g] = received row of grouped row g, inverse the
/// reverse map.
template <config C, class Comm>
status exchange_counts(Comm const& comm, workspace_layout const& L, void* ws,
                       std::int64_t const* offsets, std::int64_t& rows_in) noexcept {
  std::int32_t const R = comm.size();
  std::int64_t const El = C.experts / R;
  auto* const send_counts = at<std::int64_t>(ws, L.send_counts);
  auto* const recv_counts = at<std::int64_t>(ws, L.recv_counts);
  auto* const send_rows = at<std::int64_t>(ws, L.send_rows);  // [R] rows, then [R] ones
  auto* const recv_rows = at<std::int64_t>(ws, L.recv_rows);
  auto* const e_offsets = at<std::int64_t>(ws, L.e_offsets);
  for (std::int64_t e = 0; e < C.experts; ++e) send_counts[e] = offsets[e + 1] - offsets[e];
  for (std::int32_t r = 0; r < R; ++r) {
    send_rows[r] = offsets[(r + 1) * El] - offsets[r * El];
    send_rows[R + r] = 1;
  }
  MOE_TRY(comm.all_to_all_v(send_counts, send_rows + R, recv_counts, send_rows + R,
                            static_cast<std::size_t>(El) * sizeof(std::int64_t)));
  rows_in = 0;
  for (std::int32_t s = 0; s < R; ++s) {
    recv_rows[s] = 0;
    for (std::int64_t j = 0; j < El; ++j) {
      if (recv_counts[s * El + j] < 0)
        return status::error(errc::internal, "expert parallel: rank %d sent a negative count", s);
      recv_rows[s] += recv_counts[s * El + j];
    }
    rows_in += recv_rows[s];
  }
  if (rows_in > L.rows_recv)
    return status::error(errc::internal,
                         "expert parallel: %lld rows received, above the bound %lld (ranks "
                         "disagree on the routing?)",
                         static_cast<long long>(rows_in), static_cast<long long>(L.rows_recv));
  // Regroup [source][expert] → [expert][source].
  auto* const order = at<std::int32_t>(ws, L.order);
  auto* const inverse = at<std::int32_t>(ws, L.inverse);
  e_offsets[0] = 0;
  std::int64_t g = 0;
  for (std::int64_t j = 0; j < El; ++j) {
    std::int64_t base = 0;  // first received row of source s
    for (std::int32_t s = 0; s < R; ++s) {
      std::int64_t first = base;
      for (std::int64_t jj = 0; jj < j; ++jj) first += recv_counts[s * El + jj];
      for (std::int64_t i = 0; i < recv_counts[s * El + j]; ++i, ++g) {
        order[g] = static_cast<std::int32_t>(first + i);
        inverse[first + i] = static_cast<std::int32_t>(g);
      }
      base += recv_rows[s];
    }
    e_offsets[j + 1] = g;
  }
  return {};
}

/// dst[g] = src[map[g]] for g in [0, rows): the regrouping, as a permute with K = 1.
template <class A>
status gather_rows(host_policy policy, A const* src, std::int32_t const* map, A* dst,
                   std::int64_t rows, std::int64_t hidden) noexcept {
  return permute(policy, permute_args<A>{.x = src,
                                         .source_of = map,
                                         .out = dst,
                                         .tokens = rows,
                                         .hidden = hidden,
                                         .rows = rows,
                                         .top_k = 1});
}

/// Forward of an expert-parallel layer on the CPU.
template <config C, class Comm>
status layer_forward_ep(host_policy policy, layer_state<C> const& self, Comm const& comm,
                        problem const& p, layer_forward_args<C> const& a, void* ws,
                        workspace_layout const& L) noexcept {
  using act = act_t<C>;
  using weight = weight_t<C>;
  using accum = accum_t<C>;
  std::int64_t const T = p.tokens, H = self.shape.hidden, E = C.experts, K = C.top_k;
  std::int64_t const R = comm.size(), El = E / R, Tg = L.group_tokens;
  std::int64_t const Fs = self.shape.shared_ffn, Fr = self.shape.residual_ffn;
  if (T > 0 && (a.x == nullptr || a.y == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_forward_args.x/y: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  std::int64_t tb = 0;  // tokens of the ranks before this one
  MOE_TRY(exchange_tokens(comm, p, L, ws, tb));
  problem const pg = group_problem(p);

  // 1. Router GEMM on this rank's tokens; jitter drawn by the group's token index.
  router_jitter jit = self.options.jitter;
  jit.offset += static_cast<std::uint64_t>(tb) * static_cast<std::uint64_t>(H);
  auto* const logits = at<float>(ws, L.logits);
  if constexpr (std::is_same_v<accum, float>) {
    MOE_TRY(router_gemm(policy, p,
                        router_gemm_args<C>{
                            .x = a.x, .w_gate = self.params.w_gate, .logits = logits, .jitter = jit}));
  } else {
    auto* const wide = at<accum>(ws, L.logits_acc);
    MOE_TRY(router_gemm(policy, p,
                        router_gemm_args<C>{
                            .x = a.x, .w_gate = self.params.w_gate, .logits = wide, .jitter = jit}));
    for (std::int64_t i = 0; i < T * E; ++i) logits[i] = static_cast<float>(wide[i]);
  }
  // 2. The group's logits on every rank, routed identically everywhere.
  auto* const tok = at<std::int64_t>(ws, L.tok);
  auto* const rows_of = at<std::int64_t>(ws, L.send_rows);  // scratch: T of each rank
  for (std::int64_t r = 0; r < R; ++r) rows_of[r] = tok[2 * r];
  auto* const g_logits = at<float>(ws, L.g_logits);
  MOE_TRY(comm.all_gather_v(logits, T, g_logits, rows_of,
                            static_cast<std::size_t>(E) * sizeof(float)));
  auto* const g_expert = at<std::int32_t>(ws, L.g_expert);
  auto* const g_slot = at<std::int32_t>(ws, L.g_slot);
  auto* const g_weight = at<float>(ws, L.g_weight);
  auto* const st = at<route_stats>(ws, L.stats);
  MOE_TRY(route<C>(policy, pg, self.options.router,
                   route_args{.logits = g_logits,
                              .expert = g_expert,
                              .weight = g_weight,
                              .slot = g_slot,
                              .counts = at<std::int32_t>(ws, L.g_counts),
                              .kept = at<std::int32_t>(ws, L.g_kept),
                              .scores = nullptr,
                              .stats = st,
                              .bad_logit = a.bad_logit}));
  // 3. This rank's routes; within an expert, local slots follow the group's slot order.
  auto* const expert = at<std::int32_t>(ws, L.expert);
  auto* const slot = at<std::int32_t>(ws, L.slot);
  auto* const weight_k = at<float>(ws, L.weight);
  auto* const keys = at<std::int64_t>(ws, L.sort_keys);  // [n][2]: (expert, group slot), route
  std::int64_t n = 0;
  std::int64_t const cap = st->capacity;
  for (std::int64_t i = 0; i < T * K; ++i) {
    std::int64_t const gi = tb * K + i;
    expert[i] = g_expert[gi];
    weight_k[i] = g_weight[gi];
    slot[i] = -1;
    if (g_slot[gi] >= 0) {
      keys[2 * n] = g_expert[gi] * (cap + 1) + g_slot[gi];
      keys[2 * n + 1] = i;
      ++n;
    }
  }
  {
    struct pair {
      std::int64_t key, route;
    };
    auto* const pairs = reinterpret_cast<pair*>(keys);
    std::sort(pairs, pairs + n, [](pair const& x, pair const& y) { return x.key < y.key; });
    std::int32_t prev = -1, next = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      std::int32_t const e = expert[pairs[i].route];
      if (e != prev) next = 0, prev = e;
      slot[pairs[i].route] = next++;
    }
  }
  auto* const offsets = at<std::int64_t>(ws, L.offsets);
  auto* const row_of = at<std::int32_t>(ws, L.row_of);
  auto* const source_of = at<std::int32_t>(ws, L.source_of);
  MOE_TRY(plan(policy, plan_args{.layout = plan_layout::compact,
                                 .tokens = T,
                                 .top_k = static_cast<std::int32_t>(K),
                                 .experts = static_cast<std::int32_t>(E),
                                 .capacity = cap > 0 ? cap : 1,
                                 .tile_rows = 1,
                                 .expert = expert,
                                 .slot = slot,
                                 .offsets = offsets,
                                 .row_of = row_of,
                                 .source_of = source_of,
                                 .source_rows = L.rows,
                                 .bad_route = nullptr}));
  std::int64_t const M = offsets[E];
  auto* const xp = at<act>(ws, L.xp);
  MOE_TRY(permute(policy, permute_args<act>{.x = a.x,
                                            .source_of = source_of,
                                            .out = xp,
                                            .tokens = T,
                                            .hidden = H,
                                            .rows = M,
                                            .top_k = static_cast<std::int32_t>(K)}));
  // 4. Exchange: counts, then rows; regroup by local expert.
  std::int64_t Mr = 0;
  MOE_TRY(exchange_counts<C>(comm, L, ws, offsets, Mr));
  auto* const send_rows = at<std::int64_t>(ws, L.send_rows);
  auto* const recv_rows = at<std::int64_t>(ws, L.recv_rows);
  std::size_t const row_bytes = static_cast<std::size_t>(H) * sizeof(act);
  auto* const xr = at<act>(ws, L.xr);
  auto* const xe = at<act>(ws, L.xe);
  MOE_TRY(comm.all_to_all_v(xp, send_rows, xr, recv_rows, row_bytes));
  MOE_TRY(gather_rows(policy, xr, at<std::int32_t>(ws, L.order), xe, Mr, H));
  // 5. This rank's experts.
  auto* const ye = at<act>(ws, L.ye);
  MOE_TRY(expert_ffn(policy, expert_ffn_args<C>{.experts = El,
                                                .rows = Mr,
                                                .hidden = H,
                                                .ffn = self.shape.ffn,
                                                .offsets = at<std::int64_t>(ws, L.e_offsets),
                                                .x = xe,
                                                .w1 = self.params.w1,
                                                .b1 = self.params.b1,
                                                .w2 = self.params.w2,
                                                .b2 = self.params.b2,
                                                .recompute = self.options.recompute,
                                                .y = ye,
                                                .pre = at<act>(ws, L.pre_e),
                                                .h = at<act>(ws, L.h_e)}));
  // 6. Back to the sources, then combine there.
  auto* const yr = at<act>(ws, L.yr);
  auto* const yp = at<act>(ws, L.yp);
  MOE_TRY(gather_rows(policy, ye, at<std::int32_t>(ws, L.inverse), yr, Mr, H));
  MOE_TRY(comm.all_to_all_v(yr, recv_rows, yp, send_rows, row_bytes));
  auto* const y_moe = at<act>(ws, L.y_moe);
  MOE_TRY(combine(policy, combine_args<act>{.o = yp,
                                            .row_of = row_of,
                                            .weight = weight_k,
                                            .y = y_moe,
                                            .tokens = T,
                                            .hidden = H,
                                            .rows = M,
                                            .top_k = static_cast<std::int32_t>(K)}));
  // 7. Dense branches and the mix: this rank's tokens, as without expert parallelism.
  auto* const dense_offsets = at<std::int64_t>(ws, L.dense_offsets);
  dense_offsets[0] = 0;
  dense_offsets[1] = T;
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
    MOE_TRY(dense(Fs, self.params.shared_w1, self.params.shared_b1, self.params.shared_w2,
                  self.params.shared_b2, L.shared_pre, L.shared_h, L.shared_y));
  if (Fr > 0 && T > 0)
    MOE_TRY(dense(Fr, self.params.residual_w1, self.params.residual_b1, self.params.residual_w2,
                  self.params.residual_b2, L.res_pre, L.res_h, L.res_y));
  mix_forward<C>(policy, self, T, a.x, y_moe, Fs > 0 ? at<act>(ws, L.shared_y) : nullptr,
                 Fr > 0 ? at<act>(ws, L.res_y) : nullptr, at<accum>(ws, L.coef), a.y);
  if (a.counts != nullptr)
    std::memcpy(a.counts, at<std::int32_t>(ws, L.g_counts), static_cast<std::size_t>(E) * 4);
  if (a.stats != nullptr) {
    a.stats->route = *st;
    a.stats->loss = static_cast<double>(p.aux_loss_coef) * st->aux_loss +
                    static_cast<double>(p.z_loss_coef) * st->z_loss +
                    static_cast<double>(self.options.router.seq_aux_loss_coef) * st->seq_aux_loss;
  }
  (void)Tg;
  return {};
}

/// Backward of an expert-parallel layer on the CPU.
template <config C, class Comm>
status layer_backward_ep(host_policy policy, layer_state<C> const& self, Comm const& comm,
                         problem const& p, layer_backward_args<C> const& a, void* ws,
                         workspace_layout const& L) noexcept {
  using act = act_t<C>;
  using accum = accum_t<C>;
  std::int64_t const T = p.tokens, H = self.shape.hidden, E = C.experts, K = C.top_k;
  std::int64_t const R = comm.size(), El = E / R;
  std::int64_t const Fs = self.shape.shared_ffn, Fr = self.shape.residual_ffn;
  if (T > 0 && (a.x == nullptr || a.dy == nullptr || a.dx == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_backward_args.x/dy/dx: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  problem const pg = group_problem(p);
  auto* const tok = at<std::int64_t>(ws, L.tok);
  std::int64_t tb = 0;
  for (std::int64_t r = 0; r < comm.rank(); ++r) tb += tok[2 * r];
  auto* const offsets = at<std::int64_t>(ws, L.offsets);
  auto* const row_of = at<std::int32_t>(ws, L.row_of);
  auto* const dx_a = at<act>(ws, L.dx_a);
  auto* const dx_sum = at<accum>(ws, L.dx_sum);
  auto* const send_rows = at<std::int64_t>(ws, L.send_rows);
  auto* const recv_rows = at<std::int64_t>(ws, L.recv_rows);
  auto* const e_offsets = at<std::int64_t>(ws, L.e_offsets);
  std::int64_t const M = offsets[E], Mr = e_offsets[El];
  std::size_t const row_bytes = static_cast<std::size_t>(H) * sizeof(act);

  act const* d_moe = a.dy;
  if (Fr > 0 && T > 0) {
    mix_backward<C>(policy, self, T, a.dy, at<act>(ws, L.y_moe),
                    Fs > 0 ? at<act>(ws, L.shared_y) : nullptr, at<act>(ws, L.res_y),
                    at<accum>(ws, L.coef), at<act>(ws, L.d_moe), at<act>(ws, L.d_res),
                    at<accum>(ws, L.d_coef));
    d_moe = at<act>(ws, L.d_moe);
  }
  // Combine backward here; the rows' gradients travel to the experts' ranks.
  auto* const d_o = at<act>(ws, L.d_o);
  auto* const d_weight = at<float>(ws, L.d_weight);
  MOE_TRY(combine_backward(policy, combine_backward_args<act>{.dy = d_moe,
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
                                                              .top_k = static_cast<std::int32_t>(K)}));
  auto* const d_or = at<act>(ws, L.d_or);
  auto* const d_oe = at<act>(ws, L.d_oe);
  MOE_TRY(comm.all_to_all_v(d_o, send_rows, d_or, recv_rows, row_bytes));
  MOE_TRY(gather_rows(policy, d_or, at<std::int32_t>(ws, L.order), d_oe, Mr, H));
  auto* const dxe = at<act>(ws, L.dxe);
  MOE_TRY(expert_ffn_backward(policy, expert_ffn_backward_args<C>{.experts = El,
                                                                  .rows = Mr,
                                                                  .hidden = H,
                                                                  .ffn = self.shape.ffn,
                                                                  .offsets = e_offsets,
                                                                  .x = at<act>(ws, L.xe),
                                                                  .w1 = self.params.w1,
                                                                  .b1 = self.params.b1,
                                                                  .w2 = self.params.w2,
                                                                  .recompute =
                                                                      self.options.recompute,
                                                                  .dy = d_oe,
                                                                  .pre = at<act>(ws, L.pre_e),
                                                                  .h = at<act>(ws, L.h_e),
                                                                  .d_pre = at<act>(ws, L.d_pre_e),
                                                                  .dx = dxe,
                                                                  .dw1 = self.grads.w1,
                                                                  .db1 = self.grads.b1,
                                                                  .dw2 = self.grads.w2,
                                                                  .db2 = self.grads.b2,
                                                                  .accumulate = true}));
  auto* const dxr = at<act>(ws, L.dxr);
  auto* const dxp = at<act>(ws, L.dxp);
  MOE_TRY(gather_rows(policy, dxe, at<std::int32_t>(ws, L.inverse), dxr, Mr, H));
  MOE_TRY(comm.all_to_all_v(dxr, recv_rows, dxp, send_rows, row_bytes));
  MOE_TRY(permute_backward(policy, permute_backward_args<act>{.d_out = dxp,
                                                              .row_of = row_of,
                                                              .dx = dx_a,
                                                              .tokens = T,
                                                              .hidden = H,
                                                              .rows = M,
                                                              .top_k = static_cast<std::int32_t>(K)}));
  if (T > 0) add_dx<C>(policy, T, H, dx_a, true, dx_sum);

  // Route backward on the group's d_weight, identically on every rank; this rank's rows of it.
  auto* const rows_of = at<std::int64_t>(ws, L.send_rows) + R;  // scratch after send_rows
  for (std::int64_t r = 0; r < R; ++r) rows_of[r] = tok[2 * r];
  auto* const g_d_weight = at<float>(ws, L.g_d_weight);
  auto* const g_d_logits = at<float>(ws, L.g_d_logits);
  MOE_TRY(comm.all_gather_v(d_weight, T, g_d_weight, rows_of,
                            static_cast<std::size_t>(K) * sizeof(float)));
  for (std::int64_t r = 0; r < R; ++r) rows_of[r] = 1;  // restore the counts' row sizes
  MOE_TRY(route_backward<C>(policy, pg, self.options.router,
                            route_backward_args{.logits = at<float>(ws, L.g_logits),
                                                .expert = at<std::int32_t>(ws, L.g_expert),
                                                .slot = at<std::int32_t>(ws, L.g_slot),
                                                .d_weight = g_d_weight,
                                                .d_logits = g_d_logits}));
  float const* d_logits = g_d_logits + tb * E;
  accum const* d_logits_acc = nullptr;
  if constexpr (std::is_same_v<accum, float>) {
    d_logits_acc = d_logits;
  } else {
    auto* const wide = at<accum>(ws, L.d_logits_acc);
    for (std::int64_t i = 0; i < T * E; ++i) wide[i] = static_cast<accum>(d_logits[i]);
    d_logits_acc = wide;
  }
  router_jitter jit = self.options.jitter;
  jit.offset += static_cast<std::uint64_t>(tb) * static_cast<std::uint64_t>(H);
  MOE_TRY(router_gemm_backward(policy, p,
                               router_gemm_backward_args<C>{.x = a.x,
                                                            .w_gate = self.params.w_gate,
                                                            .d_logits = d_logits_acc,
                                                            .dx = dx_a,
                                                            .d_w_gate = self.grads.w_gate,
                                                            .jitter = jit}));
  if (T > 0) add_dx<C>(policy, T, H, dx_a, false, dx_sum);
  return dense_backward<C>(policy, self, T, a.x, d_moe, ws, L, dx_sum, a.dx);
}

}  // namespace moe::detail::layer_impl
