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

#include "moe/detail/layer_compose.hpp"     // the generic composition
#include "moe/detail/layer_ep_compose.hpp"  // the expert-parallel composition
#include "moe/layer.hpp"                    // moe::layer and its argument structs

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

  /// T = 0: zero statistics and counts (the caller's and the workspace's that routing()
  /// reports: `counts`, `kept`, E each), no bad logit.
  template <config C>
  static status empty(host_policy, layer_forward_args<C> const& a, std::int32_t* counts,
                      std::int32_t* kept) noexcept {
    for (std::int32_t* c : {counts, kept})
      std::memset(c, 0, static_cast<std::size_t>(C.experts) * sizeof(std::int32_t));
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

// ---- expert parallelism on the CPU (moe/detail/layer_ep_compose.hpp has the composition) ----

namespace moe::detail::layer_impl {

/// Every rank's T, expected group T and problem fingerprint, gathered (host buffers) into tok.
template <class Comm>
status exchange_tokens(Comm const& comm, problem const& p, router_options const& o,
                       workspace_layout const& L, void* ws) noexcept {
  auto* const tok = at<std::int64_t>(ws, L.tok);  // [R][3]: T_r, expected group T, fingerprint
  std::int64_t const mine[3] = {p.tokens, L.group_tokens, problem_fingerprint(p, o)};
  return comm.all_gather(mine, 3, tok);
}

/// This rank's routes out of the group's routing; within an expert, local slots follow the
/// group's slot order (a sort by (expert, group slot)).
template <config C>
void local_slots(std::int64_t T, std::int64_t tokens_before, void* ws,
                 workspace_layout const& L) noexcept {
  constexpr std::int64_t K = C.top_k;
  auto const* const g_expert = at<std::int32_t>(ws, L.g_expert);
  auto const* const g_slot = at<std::int32_t>(ws, L.g_slot);
  auto const* const g_weight = at<float>(ws, L.g_weight);
  auto* const expert = at<std::int32_t>(ws, L.expert);
  auto* const slot = at<std::int32_t>(ws, L.slot);
  auto* const weight = at<float>(ws, L.weight);
  struct pair {
    std::int64_t key, route;
  };
  auto* const pairs = at<pair>(ws, L.sort_keys);  // T·K of them
  std::int64_t const slots = at<route_stats>(ws, L.stats)->capacity + 1;
  std::int64_t n = 0;
  for (std::int64_t i = 0; i < T * K; ++i) {
    std::int64_t const gi = tokens_before * K + i;
    expert[i] = g_expert[gi];
    weight[i] = g_weight[gi];
    slot[i] = -1;
    if (g_slot[gi] >= 0) pairs[n++] = {g_expert[gi] * slots + g_slot[gi], i};
  }
  std::sort(pairs, pairs + n, [](pair const& x, pair const& y) { return x.key < y.key; });
  std::int32_t prev = -1, next = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::int32_t const e = expert[pairs[i].route];
    if (e != prev) next = 0, prev = e;
    slot[pairs[i].route] = next++;
  }
}

/// The counts per (rank, local expert), exchanged; then ep_rows' host values, with the
/// regrouping maps order (grouped row → received row) and inverse written directly.
template <config C, class Comm>
status exchange_counts(Comm const& comm, workspace_layout const& L, void* ws,
                       std::int64_t& rows_in) noexcept {
  std::int32_t const R = comm.size();
  std::int64_t const El = C.experts / R;
  auto const* const offsets = at<std::int64_t>(ws, L.offsets);
  auto* const send_counts = at<std::int64_t>(ws, L.send_counts);
  auto* const recv_counts = at<std::int64_t>(ws, L.recv_counts);
  auto* const ones = at<std::int64_t>(ws, L.send_rows) + R;
  for (std::int64_t e = 0; e < C.experts; ++e) send_counts[e] = offsets[e + 1] - offsets[e];
  for (std::int32_t r = 0; r < R; ++r) ones[r] = 1;
  MOE_TRY(comm.all_to_all_v(send_counts, ones, recv_counts, ones,
                            static_cast<std::size_t>(El) * sizeof(std::int64_t)));
  auto* const order = at<std::int32_t>(ws, L.order);
  auto* const inverse = at<std::int32_t>(ws, L.inverse);
  return ep_rows(offsets, recv_counts, R, El, L, at<std::int64_t>(ws, L.send_rows),
                 at<std::int64_t>(ws, L.recv_rows), at<std::int64_t>(ws, L.e_offsets), rows_in,
                 [&](std::int64_t first, std::int64_t g, std::int64_t rows) {
                   for (std::int64_t i = 0; i < rows; ++i) {
                     order[g + i] = static_cast<std::int32_t>(first + i);
                     inverse[first + i] = static_cast<std::int32_t>(g + i);
                   }
                 });
}

/// The host counts of an exchange (send_rows [3R]: rows sent, ones, every rank's T), with
/// this rank's plan rows M and its experts' rows M_r, after checking the gathered tokens
/// (check_group_tokens, which fills every rank's T).
template <class Comm>
status host_counts(Comm const& comm, void* ws, workspace_layout const& L, std::int64_t M,
                   std::int64_t Mr, ep_counts& n) noexcept {
  auto* const rows_of = at<std::int64_t>(ws, L.send_rows) + 2 * comm.size();
  n = {at<std::int64_t>(ws, L.send_rows), at<std::int64_t>(ws, L.recv_rows), rows_of, M, Mr, 0};
  return check_group_tokens(at<std::int64_t>(ws, L.tok), comm.size(), comm.rank(),
                            n.tokens_before, rows_of);
}

/// Forward of an expert-parallel layer on the CPU.
template <config C, class Comm>
status layer_forward_ep(host_policy policy, layer_state<C> const& self, Comm const& comm,
                        problem const& p, layer_forward_args<C> const& a, void* ws,
                        workspace_layout const& L) noexcept {
  std::int64_t const T = p.tokens;
  if (T > 0 && (a.x == nullptr || a.y == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_forward_args.x/y: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  phase_timer clock{self.options.profile};
  MOE_TRY(exchange_tokens(comm, p, self.options.router, L, ws));
  ep_counts n{};
  MOE_TRY(host_counts(comm, ws, L, 0, 0, n));
  if (group_problem(p).tokens == 0)
    return layer_glue<host_policy>::empty(policy, a, at<std::int32_t>(ws, L.g_counts),
                                          at<std::int32_t>(ws, L.g_kept));
  host_policy const ops = layer_glue<host_policy>::ops(policy, ws, L);  // the router's scratch
  MOE_TRY(ep_route_group(policy, ops, self, comm, p, a, ws, L, n));
  clock.mark(&layer_profile::route);
  local_slots<C>(T, n.tokens_before, ws, L);
  MOE_TRY(ep_plan_permute(ops, self, p, a.x, ws, L));
  clock.mark(&layer_profile::plan);
  MOE_TRY(exchange_counts<C>(comm, L, ws, n.Mr));
  n.M = at<std::int64_t>(ws, L.offsets)[C.experts];
  return ep_forward_tail(policy, ops, self, comm, p, a, ws, L, n, clock);
}

/// Backward of an expert-parallel layer on the CPU.
template <config C, class Comm>
status layer_backward_ep(host_policy policy, layer_state<C> const& self, Comm const& comm,
                         problem const& p, layer_backward_args<C> const& a, void* ws,
                         workspace_layout const& L) noexcept {
  std::int64_t const T = p.tokens;
  if (T > 0 && (a.x == nullptr || a.dy == nullptr || a.dx == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_backward_args.x/dy/dx: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  if (group_problem(p).tokens == 0) return {};  // forward checked that every rank agrees
  phase_timer clock{self.options.profile};
  std::int64_t const M = at<std::int64_t>(ws, L.offsets)[C.experts];
  std::int64_t const Mr = at<std::int64_t>(ws, L.e_offsets)[C.experts / comm.size()];
  ep_counts n{};
  MOE_TRY(host_counts(comm, ws, L, M, Mr, n));
  return ep_backward_steps(policy, layer_glue<host_policy>::ops(policy, ws, L), self, comm, p, a,
                           ws, L, n, clock);
}

}  // namespace moe::detail::layer_impl
