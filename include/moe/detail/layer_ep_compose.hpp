// SPDX-License-Identifier: Apache-2.0
// The expert-parallel layer's composition (R ranks, each holding E_l = E / R experts), written
// once for both backends like moe/detail/layer_compose.hpp; the host path (moe/host/layer.hpp,
// any host communicator) and the GPU path (moe/cuda/layer_ep.cuh, comm::nccl) differ only in how
// the small host values reach the host — every rank's token count, the plan's per-expert rows,
// the counts each rank receives — and in how this rank's local slots are computed.
//
// Routing is the GROUP's: every rank gathers all ranks' logits (rank order = the group's token
// order) and routes the whole group's batch itself — the same deterministic computation on
// every rank, so every decision, the capacity, the drops, the aux and z losses are exactly
// those of one rank routing the concatenated batch. Each rank then dispatches its own tokens:
// its plan orders its kept routes by expert and, within an expert, by the group's slot; rows for
// rank r's experts go to rank r (all-to-all-v, counts exchanged first), arrive ordered by source
// rank, are regrouped by local expert for the grouped GEMM, and go back the same way. Backward
// mirrors it; route backward runs on the gathered d_weight, again identically on every rank.
// docs/expert_parallel.md. The non-template pieces both paths use (the problem fingerprint and
// its check, the host counts, the profile's timer) are in moe/layer.hpp, so that the backends'
// files can use them whatever the order the headers are included in.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t, std::uint64_t

#include "moe/detail/layer_compose.hpp"  // router_logits, dense_*, mix_backward_of, the glue
#include "moe/layer.hpp"                 // layer_state, workspace_layout, args

namespace moe::detail::layer_impl {

/// dst[g] = src[map[g]] for g in [0, rows): the regrouping, as a permute with K = 1.
template <class Policy, class A>
status gather_rows(Policy policy, A const* src, std::int32_t const* map, A* dst, std::int64_t rows,
                   std::int64_t hidden) noexcept {
  return permute(policy, permute_args<A>{.x = src,
                                         .source_of = map,
                                         .out = dst,
                                         .tokens = rows,
                                         .hidden = hidden,
                                         .rows = rows,
                                         .top_k = 1});
}

/// The forward's steps 1-2: this rank's router logits (jitter drawn by the group's token
/// index), the group's logits gathered on every rank (n.rows_of: every rank's T), and the
/// group's routing — the same computation on every rank.
template <config C, class Policy, class Ops, class Comm>
status ep_route_group(Policy policy, Ops ops, layer_state<C> const& self, Comm const& comm,
                      problem const& p, layer_forward_args<C> const& a, void* ws,
                      workspace_layout const& L, ep_counts const& n) noexcept {
  std::int64_t const T = p.tokens;
  router_jitter jit = self.options.jitter;
  jit.offset +=
      static_cast<std::uint64_t>(n.tokens_before) * static_cast<std::uint64_t>(self.shape.hidden);
  if (T > 0) MOE_TRY(router_logits(policy, ops, self, p, a.x, jit, ws, L));
  auto* const g_logits = at<float>(ws, L.g_logits);
  MOE_TRY(comm.all_gather_v(at<float>(ws, L.logits), T, g_logits, n.rows_of,
                            static_cast<std::size_t>(C.experts) * sizeof(float)));
  return route<C>(ops, group_problem(p), self.options.router,
                  route_args{.logits = g_logits,
                             .expert = at<std::int32_t>(ws, L.g_expert),
                             .weight = at<float>(ws, L.g_weight),
                             .slot = at<std::int32_t>(ws, L.g_slot),
                             .counts = at<std::int32_t>(ws, L.g_counts),
                             .kept = at<std::int32_t>(ws, L.g_kept),
                             .scores = nullptr,
                             .stats = at<route_stats>(ws, L.stats),
                             .bad_logit = a.bad_logit});
}

/// The forward's step 4, once this rank's routes have their local slots: the plan (compact,
/// rows ordered by expert, so rank r's rows are contiguous; the group's capacity bound) and
/// the permute into L.rows rows.
template <config C, class Ops>
status ep_plan_permute(Ops ops, layer_state<C> const& self, problem const& p, act_t<C> const* x,
                       void* ws, workspace_layout const& L) noexcept {
  std::int64_t const cap = static_capacity<C>(group_problem(p));
  auto* const source_of = at<std::int32_t>(ws, L.source_of);
  MOE_TRY(plan(ops, plan_args{.layout = plan_layout::compact,
                              .tokens = p.tokens,
                              .top_k = C.top_k,
                              .experts = C.experts,
                              .capacity = cap > 0 ? cap : 1,
                              .tile_rows = 1,
                              .expert = at<std::int32_t>(ws, L.expert),
                              .slot = at<std::int32_t>(ws, L.slot),
                              .offsets = at<std::int64_t>(ws, L.offsets),
                              .row_of = at<std::int32_t>(ws, L.row_of),
                              .source_of = source_of,
                              .source_rows = L.rows,
                              .bad_route = nullptr}));
  return permute(ops, permute_args<act_t<C>>{.x = x,
                                             .source_of = source_of,
                                             .out = at<act_t<C>>(ws, L.xp),
                                             .tokens = p.tokens,
                                             .hidden = self.shape.hidden,
                                             .rows = L.rows,
                                             .top_k = C.top_k});
}

/// The forward after routing, planning, permuting and the count exchange (e_offsets, order and
/// inverse in the workspace): rows to the experts' ranks, regrouped; this rank's experts; back
/// to the sources and combined there; the group's statistics; the dense branches and the mix.
template <config C, class Policy, class Ops, class Comm>
status ep_forward_tail(Policy policy, Ops ops, layer_state<C> const& self, Comm const& comm,
                       problem const& p, layer_forward_args<C> const& a, void* ws,
                       workspace_layout const& L, ep_counts const& n, phase_timer& clock) noexcept {
  using act = act_t<C>;
  std::int64_t const T = p.tokens, H = self.shape.hidden;
  std::int32_t const R = comm.size();
  std::size_t const row_bytes = static_cast<std::size_t>(H) * sizeof(act);
  auto* const xr = at<act>(ws, L.xr);
  auto* const xe = at<act>(ws, L.xe);
  MOE_TRY(comm.all_to_all_v(at<act>(ws, L.xp), n.send_rows, xr, n.recv_rows, row_bytes));
  MOE_TRY(gather_rows(ops, xr, at<std::int32_t>(ws, L.order), xe, n.Mr, H));
  clock.sent(n.send_rows, R, row_bytes);
  clock.mark(&layer_profile::exchange);
  auto* const ye = at<act>(ws, L.ye);
  MOE_TRY(expert_ffn(ops, expert_ffn_args<C>{.experts = C.experts / R,
                                             .rows = n.Mr,
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
  clock.mark(&layer_profile::ffn);
  auto* const yr = at<act>(ws, L.yr);
  auto* const yp = at<act>(ws, L.yp);
  MOE_TRY(gather_rows(ops, ye, at<std::int32_t>(ws, L.inverse), yr, n.Mr, H));
  MOE_TRY(comm.all_to_all_v(yr, n.recv_rows, yp, n.send_rows, row_bytes));
  clock.sent(n.recv_rows, R, row_bytes);
  clock.mark(&layer_profile::exchange);
  MOE_TRY(combine(ops, combine_args<act>{.o = yp,
                                         .row_of = at<std::int32_t>(ws, L.row_of),
                                         .weight = at<float>(ws, L.weight),
                                         .y = at<act>(ws, L.y_moe),
                                         .tokens = T,
                                         .hidden = H,
                                         .rows = n.M,
                                         .top_k = C.top_k}));
  MOE_TRY(layer_glue<Policy>::publish(policy, self, p, a, at<route_stats>(ws, L.stats),
                                      at<std::int32_t>(ws, L.g_counts),
                                      at<std::int64_t>(ws, L.dense_offsets)));
  if (T > 0) MOE_TRY(dense_forward_and_mix(policy, ops, self, T, a.x, a.y, ws, L));
  clock.mark(&layer_profile::rest);
  return {};
}

/// The whole backward of an expert-parallel step, given the host counts of its forward.
template <config C, class Policy, class Ops, class Comm>
status ep_backward_steps(Policy policy, Ops ops, layer_state<C> const& self, Comm const& comm,
                         problem const& p, layer_backward_args<C> const& a, void* ws,
                         workspace_layout const& L, ep_counts const& n,
                         phase_timer& clock) noexcept {
  using act = act_t<C>;
  using accum = accum_t<C>;
  std::int64_t const T = p.tokens, H = self.shape.hidden, E = C.experts;
  constexpr std::int32_t K = C.top_k;
  std::int32_t const R = comm.size();
  std::size_t const row_bytes = static_cast<std::size_t>(H) * sizeof(act);
  auto* const row_of = at<std::int32_t>(ws, L.row_of);
  auto* const dx_a = at<act>(ws, L.dx_a);

  act const* d_moe = nullptr;
  MOE_TRY(mix_backward_of(policy, self, T, a.dy, ws, L, d_moe));
  // Combine backward here; the rows' gradients travel to the experts' ranks.
  auto* const d_o = at<act>(ws, L.d_o);
  auto* const d_weight = at<float>(ws, L.d_weight);
  MOE_TRY(combine_backward(
      ops, combine_backward_args<act>{.dy = d_moe,
                                      .o = at<act>(ws, L.yp),
                                      .row_of = row_of,
                                      .source_of = at<std::int32_t>(ws, L.source_of),
                                      .weight = at<float>(ws, L.weight),
                                      .d_o = d_o,
                                      .d_weight = d_weight,
                                      .tokens = T,
                                      .hidden = H,
                                      .rows = n.M,
                                      .top_k = K}));
  clock.mark(&layer_profile::rest);
  auto* const d_or = at<act>(ws, L.d_or);
  auto* const d_oe = at<act>(ws, L.d_oe);
  MOE_TRY(comm.all_to_all_v(d_o, n.send_rows, d_or, n.recv_rows, row_bytes));
  MOE_TRY(gather_rows(ops, d_or, at<std::int32_t>(ws, L.order), d_oe, n.Mr, H));
  clock.sent(n.send_rows, R, row_bytes);
  clock.mark(&layer_profile::exchange);
  auto* const dxe = at<act>(ws, L.dxe);
  MOE_TRY(expert_ffn_backward(
      ops, expert_ffn_backward_args<C>{.experts = E / R,
                                       .rows = n.Mr,
                                       .hidden = H,
                                       .ffn = self.shape.ffn,
                                       .offsets = at<std::int64_t>(ws, L.e_offsets),
                                       .x = at<act>(ws, L.xe),
                                       .w1 = self.params.w1,
                                       .b1 = self.params.b1,
                                       .w2 = self.params.w2,
                                       .recompute = self.options.recompute,
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
  clock.mark(&layer_profile::ffn);
  auto* const dxr = at<act>(ws, L.dxr);
  auto* const dxp = at<act>(ws, L.dxp);
  MOE_TRY(gather_rows(ops, dxe, at<std::int32_t>(ws, L.inverse), dxr, n.Mr, H));
  MOE_TRY(comm.all_to_all_v(dxr, n.recv_rows, dxp, n.send_rows, row_bytes));
  clock.sent(n.recv_rows, R, row_bytes);
  clock.mark(&layer_profile::exchange);
  if (T > 0) {
    MOE_TRY(permute_backward(ops, permute_backward_args<act>{.d_out = dxp,
                                                             .row_of = row_of,
                                                             .dx = dx_a,
                                                             .tokens = T,
                                                             .hidden = H,
                                                             .rows = n.M,
                                                             .top_k = K}));
    MOE_TRY(layer_glue<Policy>::add_dx(policy, self, T, dx_a, true, at<accum>(ws, L.dx_sum)));
  }
  clock.mark(&layer_profile::plan);
  // Route backward on the group's d_weight, identically on every rank; this rank's rows of it.
  auto* const g_d_weight = at<float>(ws, L.g_d_weight);
  auto* const g_d_logits = at<float>(ws, L.g_d_logits);
  MOE_TRY(comm.all_gather_v(d_weight, T, g_d_weight, n.rows_of,
                            static_cast<std::size_t>(K) * sizeof(float)));
  MOE_TRY(route_backward<C>(ops, group_problem(p), self.options.router,
                            route_backward_args{.logits = at<float>(ws, L.g_logits),
                                                .expert = at<std::int32_t>(ws, L.g_expert),
                                                .slot = at<std::int32_t>(ws, L.g_slot),
                                                .d_weight = g_d_weight,
                                                .d_logits = g_d_logits}));
  if (T > 0) {
    router_jitter jit = self.options.jitter;
    jit.offset += static_cast<std::uint64_t>(n.tokens_before) * static_cast<std::uint64_t>(H);
    MOE_TRY(router_backward_tail(policy, ops, self, p, a.x, g_d_logits + n.tokens_before * E, jit,
                                 ws, L));
  }
  clock.mark(&layer_profile::route);
  if (T > 0) MOE_TRY(dense_backward(policy, ops, self, T, a.x, d_moe, a.dx, ws, L));
  clock.mark(&layer_profile::rest);
  return {};
}

}  // namespace moe::detail::layer_impl
