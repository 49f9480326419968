// SPDX-License-Identifier: Apache-2.0
// moe::layer on the CPU: the host backend's glue for the composition written once in
// moe/detail/layer_compose.hpp (layer_glue<host_policy>), and the expert-parallel path over a
// communicator (below). moe/layer.hpp includes this file at its end. Branch outputs and dx
// parts are summed in accum_t<C> in a fixed order and rounded once, so results do not depend
// on the thread count.
#pragma once

#include <algorithm>  // std::sort
#include <chrono>     // std::chrono::steady_clock (layer_profile)
#include <cmath>      // std::exp
#include <cstddef>    // std::size_t
#include <cstdint>    // std::int32_t, std::int64_t
#include <cstring>    // std::memcpy, std::memset

#include "moe/detail/layer_compose.hpp"  // the generic composition
#include "moe/layer.hpp"                 // moe::layer and its argument structs

namespace moe::detail::layer_impl {

template <>
struct layer_glue<host_policy> {
  /// The host ops take the caller's policy with the workspace's op_scratch region as theirs
  /// (the router's scratch), so that they allocate nothing.
  static host_policy ops(host_policy policy, void* ws, workspace_layout const& L) noexcept {
    return policy.with_workspace(at<char>(ws, L.op_scratch), L.op_scratch_bytes);
  }

  template <class From, class To>
  static status convert(host_policy, From const* in, To* out, std::int64_t n) noexcept {
    for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<To>(in[i]);
    return {};
  }

  /// After route: the dense branches' offsets {0, T}, the statistics and the loss, counts.
  template <config C>
  static status publish(host_policy, layer_state<C> const& self, problem const& p,
                        layer_forward_args<C> const& a, route_stats const* st,
                        std::int32_t const* counts, std::int64_t* dense_offsets) noexcept {
    dense_offsets[0] = 0;
    dense_offsets[1] = p.tokens;
    if (a.counts != nullptr)
      std::memcpy(a.counts, counts, static_cast<std::size_t>(C.experts) * sizeof(std::int32_t));
    if (a.stats != nullptr) {
      a.stats->route = *st;
      a.stats->loss = static_cast<double>(p.aux_loss_coef) * st->aux_loss +
                      static_cast<double>(p.z_loss_coef) * st->z_loss +
                      static_cast<double>(self.options.router.seq_aux_loss_coef) * st->seq_aux_loss;
    }
    return {};
  }

  /// T = 0: zero statistics and counts, no bad logit.
  template <config C>
  static status empty(host_policy, layer_forward_args<C> const& a) noexcept {
    if (a.stats != nullptr) *a.stats = layer_stats{};
    if (a.counts != nullptr)
      std::memset(a.counts, 0, static_cast<std::size_t>(C.experts) * sizeof(std::int32_t));
    if (a.bad_logit != nullptr) *a.bad_logit = -1;
    return {};
  }

  /// y = c0 · (y_moe + shared_y) + c1 · res_y with c = softmax(x·W_cᵀ + b_c) (coef ← c) when
  /// res_y is given, else y_moe + shared_y; in accum_t, rounded once.
  template <config C>
  static status mix_forward(host_policy policy, layer_state<C> const& self, std::int64_t T,
                            act_t<C> const* x, act_t<C> const* y_moe, act_t<C> const* shared_y,
                            act_t<C> const* res_y, accum_t<C>* coef, act_t<C>* y) noexcept {
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
    return {};
  }

  /// The mix's backward: d_moe = c0·dy, d_res = c1·dy, dcoef = c ⊙ (g − <c, g>) with
  /// g_j = <dy, branch_j>.
  template <config C>
  static status mix_backward(host_policy policy, layer_state<C> const& self, std::int64_t T,
                             act_t<C> const* dy, act_t<C> const* y_moe, act_t<C> const* shared_y,
                             act_t<C> const* res_y, accum_t<C> const* coef, act_t<C>* dm,
                             act_t<C>* dr, accum_t<C>* dcoef) noexcept {
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
    return {};
  }

  /// dx_sum (= or +=) part, in accum_t.
  template <config C>
  static status add_dx(host_policy policy, layer_state<C> const& self, std::int64_t T,
                       act_t<C> const* part, bool first, accum_t<C>* dx_sum) noexcept {
    using accum = accum_t<C>;
    std::int64_t const H = self.shape.hidden;
    backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
      for (std::int64_t h = t * H; h < (t + 1) * H; ++h)
        dx_sum[h] = (first ? accum{0} : dx_sum[h]) + static_cast<accum>(to_float(part[h]));
    });
    return {};
  }

  /// The mixing coefficients' linear layer: dW_c[j] += Σ_t dz[t, j] x[t], db_c += Σ_t dz (each
  /// element in ascending t), dx_sum += dz · W_c.
  template <config C>
  static status coef_backward(host_policy policy, layer_state<C> const& self, std::int64_t T,
                              act_t<C> const* x, accum_t<C> const* dcoef,
                              accum_t<C>* dx_sum) noexcept {
    using accum = accum_t<C>;
    std::int64_t const H = self.shape.hidden;
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
    return {};
  }

  /// dx = dx_sum rounded once to act_t.
  template <config C>
  static status round_dx(host_policy policy, layer_state<C> const& self, std::int64_t T,
                         accum_t<C> const* dx_sum, act_t<C>* dx) noexcept {
    std::int64_t const H = self.shape.hidden;
    backend::host::for_each_row(policy.threads, T, [&](std::int64_t t) {
      for (std::int64_t h = t * H; h < (t + 1) * H; ++h) dx[h] = from_float<act_t<C>>(dx_sum[h]);
    });
    return {};
  }
};

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

/// Adds the time since the last mark to one phase of the profile (when there is one).
struct phase_timer {
  layer_profile* profile;
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  void mark(double layer_profile::* phase) noexcept {
    auto const now = std::chrono::steady_clock::now();
    if (profile != nullptr) profile->*phase += std::chrono::duration<double>(now - last).count();
    last = now;
  }
  void sent(std::int64_t const* rows, std::int32_t ranks, std::size_t row_bytes) noexcept {
    if (profile == nullptr) return;
    for (std::int32_t r = 0; r < ranks; ++r)
      profile->bytes_sent += rows[r] * static_cast<std::int64_t>(row_bytes);
  }
};

/// A fingerprint of the problem fields every rank of a group must agree on (FNV-1a over them):
/// training, min_capacity, seed, loss coefficients, H, F, R and the router options' scalars.
inline std::int64_t problem_fingerprint(problem const& p, router_options const& o) noexcept {
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&h](void const* data, std::size_t n) {
    auto const* b = static_cast<unsigned char const*>(data);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  std::int64_t const ints[] = {p.training ? 1 : 0, p.min_capacity, p.hidden, p.ffn, p.ep_size,
                               o.seq_len, o.gumbel_top1 ? 1 : 0, o.sample_second ? 1 : 0};
  mix(ints, sizeof ints);
  mix(&p.seed, sizeof p.seed);
  mix(&o.noise_offset, sizeof o.noise_offset);
  float const floats[] = {p.aux_loss_coef, p.z_loss_coef, o.weight_scale, o.seq_aux_loss_coef};
  mix(floats, sizeof floats);
  return static_cast<std::int64_t>(h >> 1);
}

/// Every rank's T, expected group T and problem fingerprint, checked the same way on every rank
/// (so that a problem that disagrees between ranks gives the same error everywhere instead of
/// a hang or a silently different routing later).
template <class Comm>
status exchange_tokens(Comm const& comm, problem const& p, router_options const& o,
                       workspace_layout const& L, void* ws, std::int64_t& tokens_before) noexcept {
  std::int32_t const R = comm.size();
  auto* const tok = at<std::int64_t>(ws, L.tok);  // [R][3]: T_r, expected group T, fingerprint
  std::int64_t const mine[3] = {p.tokens, L.group_tokens, problem_fingerprint(p, o)};
  MOE_TRY(comm.all_gather(mine, 3, tok));
  std::int64_t sum = 0;
  tokens_before = 0;
  for (std::int32_t r = 0; r < R; ++r) {
    if (r < comm.rank()) tokens_before += tok[3 * r];
    sum += tok[3 * r];
  }
  for (std::int32_t r = 0; r < R; ++r) {
    if (tok[3 * r + 1] != sum)
      return status::error(errc::invalid_argument,
                           "problem.group_tokens: the ranks' T sum to %lld, but rank %d expects "
                           "%lld (set group_tokens to the group's total, the same on every rank)",
                           static_cast<long long>(sum), r,
                           static_cast<long long>(tok[3 * r + 1]));
    if (tok[3 * r + 2] != tok[2])
      return status::error(errc::invalid_argument,
                           "problem: rank %d disagrees with rank 0 on training, min_capacity, "
                           "seed, the loss coefficients, H, F or the router options (every rank "
                           "of the group must pass the same values)",
                           r);
  }
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
  std::int64_t const T = p.tokens, H = self.shape.hidden, E = C.experts, K = C.top_k;
  std::int64_t const R = comm.size(), El = E / R;
  if (T > 0 && (a.x == nullptr || a.y == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_forward_args.x/y: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  phase_timer clock{self.options.profile};
  std::int64_t tb = 0;  // tokens of the ranks before this one
  MOE_TRY(exchange_tokens(comm, p, self.options.router, L, ws, tb));
  problem const pg = group_problem(p);

  // 1. Router GEMM on this rank's tokens; jitter drawn by the group's token index.
  router_jitter jit = self.options.jitter;
  jit.offset += static_cast<std::uint64_t>(tb) * static_cast<std::uint64_t>(H);
  MOE_TRY(router_logits(policy, policy, self, p, a.x, jit, ws, L));
  auto* const logits = at<float>(ws, L.logits);
  // 2. The group's logits on every rank, routed identically everywhere.
  auto* const tok = at<std::int64_t>(ws, L.tok);
  auto* const rows_of = at<std::int64_t>(ws, L.send_rows);  // scratch: T of each rank
  for (std::int64_t r = 0; r < R; ++r) rows_of[r] = tok[3 * r];
  auto* const g_logits = at<float>(ws, L.g_logits);
  MOE_TRY(comm.all_gather_v(logits, T, g_logits, rows_of,
                            static_cast<std::size_t>(E) * sizeof(float)));
  auto* const g_expert = at<std::int32_t>(ws, L.g_expert);
  auto* const g_slot = at<std::int32_t>(ws, L.g_slot);
  auto* const g_weight = at<float>(ws, L.g_weight);
  auto* const st = at<route_stats>(ws, L.stats);
  host_policy const ops = layer_glue<host_policy>::ops(policy, ws, L);  // the router's scratch
  MOE_TRY(route<C>(ops, pg, self.options.router,
                   route_args{.logits = g_logits,
                              .expert = g_expert,
                              .weight = g_weight,
                              .slot = g_slot,
                              .counts = at<std::int32_t>(ws, L.g_counts),
                              .kept = at<std::int32_t>(ws, L.g_kept),
                              .scores = nullptr,
                              .stats = st,
                              .bad_logit = a.bad_logit}));
  clock.mark(&layer_profile::route);
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
  clock.mark(&layer_profile::plan);
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
  clock.sent(send_rows, static_cast<std::int32_t>(R), row_bytes);
  clock.mark(&layer_profile::exchange);
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
  clock.mark(&layer_profile::ffn);
  // 6. Back to the sources, then combine there.
  auto* const yr = at<act>(ws, L.yr);
  auto* const yp = at<act>(ws, L.yp);
  MOE_TRY(gather_rows(policy, ye, at<std::int32_t>(ws, L.inverse), yr, Mr, H));
  MOE_TRY(comm.all_to_all_v(yr, recv_rows, yp, send_rows, row_bytes));
  clock.sent(recv_rows, static_cast<std::int32_t>(R), row_bytes);
  clock.mark(&layer_profile::exchange);
  auto* const y_moe = at<act>(ws, L.y_moe);
  MOE_TRY(combine(policy, combine_args<act>{.o = yp,
                                            .row_of = row_of,
                                            .weight = weight_k,
                                            .y = y_moe,
                                            .tokens = T,
                                            .hidden = H,
                                            .rows = M,
                                            .top_k = static_cast<std::int32_t>(K)}));
  // 7. Statistics (the group's), dense branches and the mix: this rank's tokens.
  MOE_TRY(layer_glue<host_policy>::publish(policy, self, p, a, st,
                                           at<std::int32_t>(ws, L.g_counts),
                                           at<std::int64_t>(ws, L.dense_offsets)));
  if (T > 0) MOE_TRY(dense_forward_and_mix(policy, policy, self, T, a.x, a.y, ws, L));
  clock.mark(&layer_profile::rest);
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
  if (T > 0 && (a.x == nullptr || a.dy == nullptr || a.dx == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_backward_args.x/dy/dx: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  problem const pg = group_problem(p);
  auto* const tok = at<std::int64_t>(ws, L.tok);
  std::int64_t tb = 0;
  for (std::int64_t r = 0; r < comm.rank(); ++r) tb += tok[3 * r];
  auto* const offsets = at<std::int64_t>(ws, L.offsets);
  auto* const row_of = at<std::int32_t>(ws, L.row_of);
  auto* const dx_a = at<act>(ws, L.dx_a);
  auto* const dx_sum = at<accum>(ws, L.dx_sum);
  auto* const send_rows = at<std::int64_t>(ws, L.send_rows);
  auto* const recv_rows = at<std::int64_t>(ws, L.recv_rows);
  auto* const e_offsets = at<std::int64_t>(ws, L.e_offsets);
  std::int64_t const M = offsets[E], Mr = e_offsets[El];
  std::size_t const row_bytes = static_cast<std::size_t>(H) * sizeof(act);

  phase_timer clock{self.options.profile};
  act const* d_moe = nullptr;
  MOE_TRY(mix_backward_of(policy, self, T, a.dy, ws, L, d_moe));
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
  clock.mark(&layer_profile::rest);
  MOE_TRY(comm.all_to_all_v(d_o, send_rows, d_or, recv_rows, row_bytes));
  MOE_TRY(gather_rows(policy, d_or, at<std::int32_t>(ws, L.order), d_oe, Mr, H));
  auto* const dxe = at<act>(ws, L.dxe);
  clock.sent(send_rows, static_cast<std::int32_t>(R), row_bytes);
  clock.mark(&layer_profile::exchange);
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
  clock.mark(&layer_profile::ffn);
  auto* const dxr = at<act>(ws, L.dxr);
  auto* const dxp = at<act>(ws, L.dxp);
  MOE_TRY(gather_rows(policy, dxe, at<std::int32_t>(ws, L.inverse), dxr, Mr, H));
  MOE_TRY(comm.all_to_all_v(dxr, recv_rows, dxp, send_rows, row_bytes));
  clock.sent(recv_rows, static_cast<std::int32_t>(R), row_bytes);
  clock.mark(&layer_profile::exchange);
  MOE_TRY(permute_backward(policy, permute_backward_args<act>{.d_out = dxp,
                                                              .row_of = row_of,
                                                              .dx = dx_a,
                                                              .tokens = T,
                                                              .hidden = H,
                                                              .rows = M,
                                                              .top_k = static_cast<std::int32_t>(K)}));
  MOE_TRY(layer_glue<host_policy>::add_dx(policy, self, T, dx_a, true, dx_sum));

  clock.mark(&layer_profile::plan);
  // Route backward on the group's d_weight, identically on every rank; this rank's rows of it.
  auto* const rows_of = at<std::int64_t>(ws, L.send_rows) + R;  // scratch after send_rows
  for (std::int64_t r = 0; r < R; ++r) rows_of[r] = tok[3 * r];
  auto* const g_d_weight = at<float>(ws, L.g_d_weight);
  auto* const g_d_logits = at<float>(ws, L.g_d_logits);
  MOE_TRY(comm.all_gather_v(d_weight, T, g_d_weight, rows_of,
                            static_cast<std::size_t>(K) * sizeof(float)));
  for (std::int64_t r = 0; r < R; ++r) rows_of[r] = 1;  // restore the counts' row sizes
  host_policy const ops = layer_glue<host_policy>::ops(policy, ws, L);  // the router's scratch
  MOE_TRY(route_backward<C>(ops, pg, self.options.router,
                            route_backward_args{.logits = at<float>(ws, L.g_logits),
                                                .expert = at<std::int32_t>(ws, L.g_expert),
                                                .slot = at<std::int32_t>(ws, L.g_slot),
                                                .d_weight = g_d_weight,
                                                .d_logits = g_d_logits}));
  router_jitter jit = self.options.jitter;
  jit.offset += static_cast<std::uint64_t>(tb) * static_cast<std::uint64_t>(H);
  MOE_TRY(router_backward_tail(policy, policy, self, p, a.x, g_d_logits + tb * E, jit, ws, L));
  clock.mark(&layer_profile::route);
  MOE_TRY(dense_backward(policy, policy, self, T, a.x, d_moe, a.dx, ws, L));
  clock.mark(&layer_profile::rest);
  return {};
}

}  // namespace moe::detail::layer_impl
