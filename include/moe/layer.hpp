// SPDX-License-Identifier: Apache-2.0
// `moe::layer`: a whole MoE layer, forward and backward, composed of the ops —
//
//   router GEMM → route → plan → permute → expert FFN → unpermute/combine      (routed experts)
//   + shared experts: one dense FFN applied to every token, added          (DeepSeek, Megatron)
//   PR-MoE residual: y = c0 · y_moe + c1 · mlp(x), c = softmax(x · W_cᵀ + b_c)  (DeepSpeed)
//
// and backward in reverse: combine backward → expert FFN backward → permute backward → route
// backward (with the aux-, z- and sequence-loss gradients) → router GEMM backward, plus the
// shared and residual branches; dx is the sum of every branch's dx, taken in float in a fixed
// order and rounded once. Parameter gradients ACCUMULATE (zero them with zero_grad()).
//
// Memory: parameters and gradients are either caller-owned (bind) or layer-owned (allocate,
// once, outside any step). Everything a step needs besides them lives in one caller-owned
// workspace of workspace_bytes(problem) bytes; forward leaves there what backward reads, so the
// same workspace goes to both. Nothing is allocated inside forward or backward: the ops' own
// scratch (the host router's, the CUDA ops') is a region of that workspace.
//
// This header is the host backend's layer (moe::host_policy). Its CUDA twin takes the same
// argument structs (docs/layer.md).
#pragma once

#include <chrono>    // std::chrono::steady_clock (layer_profile)
#include <cmath>     // std::exp
#include <cstddef>   // std::size_t
#include <cstdint>   // std::int32_t, std::int64_t, std::uint64_t, std::uintptr_t
#include <cstdlib>   // std::aligned_alloc, std::free
#include <cstring>   // std::memcpy, std::memset
#include <new>       // std::bad_alloc
#include <type_traits>  // std::is_same_v
#include <memory>    // std::unique_ptr (layer-owned memory)
#include <vector>    // init's host scratch

#include "moe/comm/local.hpp"   // moe::comm::local
#include "moe/config.hpp"       // moe::config, check<C>(), is_gated
#include "moe/expert_ffn.hpp"   // expert_ffn, expert_ffn_backward, ffn_recompute
#include "moe/permute.hpp"      // permute, combine, combine_backward, permute_backward
#include "moe/plan.hpp"         // plan, plan_rows_bound
#include "moe/policy.hpp"       // moe::host_policy
#include "moe/precision.hpp"    // to_float, from_float
#include "moe/problem.hpp"      // moe::problem, capacity<C>(), validate<C>()
#include "moe/random.hpp"       // fill_random (init)
#include "moe/router.hpp"       // route, route_backward, router_options, route_stats
#include "moe/router_gemm.hpp"  // router_gemm, router_gemm_backward, router_jitter
#include "moe/status.hpp"       // moe::status, MOE_TRY
#include "moe/storage.hpp"      // act_t, weight_t, accum_t

namespace moe {

/// The sizes of a layer that do not change from step to step.
struct layer_shape {
  std::int64_t hidden = 0;        ///< H
  std::int64_t ffn = 0;           ///< F of each routed expert (W1 has 2F rows when gated)
  std::int64_t shared_ffn = 0;    ///< width of the shared-expert FFN, 0 = none. S shared experts
                                  ///< of width F_s are one FFN of width S·F_s (DeepSeek's
                                  ///< n_shared_experts · moe_intermediate_size)
  std::int64_t residual_ffn = 0;  ///< width of the PR-MoE residual MLP, 0 = none
  std::int32_t ep_size = 1;       ///< R: experts are spread over R ranks (E_l = E / R here)
};

/// Every tensor of a layer, as pointers of one element type: weight_t<C> for parameters,
/// accum_t<C> for gradients. Shapes (E_l = E / R; F_w = 2F when gated, else F):
template <class W>
struct layer_tensors {
  W* w_gate = nullptr;      ///< [H, E] router weight W_g (no bias, as DeepSpeed's gate)
  W* w1 = nullptr;          ///< [E_l, F_w, H] routed experts' first layer
  W* b1 = nullptr;          ///< [E_l, F_w]
  W* w2 = nullptr;          ///< [E_l, H, F] second layer
  W* b2 = nullptr;          ///< [E_l, H]
  W* shared_w1 = nullptr;   ///< [F_sw, H] shared-expert FFN (null without shared experts)
  W* shared_b1 = nullptr;   ///< [F_sw]
  W* shared_w2 = nullptr;   ///< [H, F_s]
  W* shared_b2 = nullptr;   ///< [H]
  W* residual_w1 = nullptr; ///< [F_rw, H] PR-MoE residual MLP (null without residual)
  W* residual_b1 = nullptr; ///< [F_rw]
  W* residual_w2 = nullptr; ///< [H, F_r]
  W* residual_b2 = nullptr; ///< [H]
  W* coef_w = nullptr;      ///< [2, H] the residual's mixing coefficients' linear layer
  W* coef_b = nullptr;      ///< [2]
};

template <config C>
using layer_params = layer_tensors<weight_t<C>>;
template <config C>
using layer_grads = layer_tensors<accum_t<C>>;

/// Options read by forward and backward (none changes generated code).
/// Wall-clock seconds per phase, accumulated over calls (host backend's expert-parallel path):
/// route = router GEMM + logits gather + route (+ route backward), plan = local slots + plan +
/// permute (+ permute backward), exchange = counts and rows all-to-all (both directions),
/// ffn = the local experts' FFN, rest = combine, dense branches, mix and dx sums.
struct layer_profile {
  double route = 0, plan = 0, exchange = 0, ffn = 0, rest = 0;
  std::int64_t bytes_sent = 0;  ///< rows sent by this rank's all-to-alls, in bytes
};

struct layer_options {
  router_options router{};  ///< selection bias, noise, weight scale, sequence loss
  router_jitter jitter{};   ///< multiplicative jitter on the router input (training only)
  ffn_recompute recompute = ffn_recompute::activation;  ///< what backward recomputes
  layer_profile* profile = nullptr;  ///< optional: phase times (host expert-parallel path)
};

/// What a forward reports.
struct layer_stats {
  route_stats route{};  ///< C, dropped routes, max/mean load, aux, z and sequence losses
  /// The loss the layer adds to the training objective: aux_loss_coef·aux + z_loss_coef·z +
  /// seq_aux_loss_coef·seq. backward() adds its gradient; callers only report it.
  double loss = 0.0;
};

/// Arguments of layer::forward (memory of the policy's backend).
template <config C>
struct layer_forward_args {
  act_t<C> const* x = nullptr;        ///< [T, H]
  act_t<C>* y = nullptr;              ///< [T, H] out
  layer_stats* stats = nullptr;       ///< [1] out, optional
  std::int32_t* counts = nullptr;     ///< [E] out, optional: routes per expert before drops
  /// [1] out, optional: the router's lowest flat index t·E + e of a non-finite logit, or -1
  /// (route_args::bad_logit). The host also returns a status naming it; the CUDA backend
  /// cannot without synchronising, so this word is how it tells.
  std::int64_t* bad_logit = nullptr;
};

/// Arguments of layer::backward: the forward's input again, and the gradient of its output.
template <config C>
struct layer_backward_args {
  act_t<C> const* x = nullptr;   ///< [T, H] the forward's x
  act_t<C> const* dy = nullptr;  ///< [T, H] gradient of y
  act_t<C>* dx = nullptr;        ///< [T, H] out
};

/// The routing of the last forward, read from its workspace (host memory on the host backend).
struct layer_routing {
  std::int32_t const* expert = nullptr;  ///< [T, K]
  std::int32_t const* slot = nullptr;    ///< [T, K], -1 = dropped (expert parallel: the slot
                                         ///< in this rank's rows for the expert)
  float const* weight = nullptr;         ///< [T, K]
  std::int32_t const* counts = nullptr;  ///< [E] before drops (expert parallel: the group's)
  std::int32_t const* kept = nullptr;    ///< [E] after drops (expert parallel: the group's)
};

/// How a layer's parameters start.
struct layer_init {
  std::uint64_t seed = 0;
  float std = 0.02f;              ///< weights ~ N(0, std²) (GPT-2's 0.02); biases 0
  float output_std = 0.0f;        ///< > 0: the std of W2, shared W2 and residual W2 instead
  bool replicate_experts = false; ///< every routed expert a copy of expert 0 (DeepSpeed's
                                  ///< "copy of one template expert" initialisation)
};

namespace detail::layer_impl {

/// Elements of every tensor of a layer (0 for an absent one), in the fixed order of
/// layer_tensors; the flat layout puts them one after another in this order.
template <config C>
struct tensor_sizes {
  std::int64_t n[15] = {};
  constexpr explicit tensor_sizes(layer_shape const& s) noexcept {
    std::int64_t const H = s.hidden, E = C.experts;
    std::int64_t const El = s.ep_size > 0 ? E / s.ep_size : 0;
    std::int64_t const gate = is_gated(C.ffn_activation) ? 2 : 1;
    std::int64_t const F = s.ffn, Fs = s.shared_ffn, Fr = s.residual_ffn;
    std::int64_t const v[15] = {H * E,       El * gate * F * H, El * gate * F, El * H * F,
                                El * H,      gate * Fs * H,     gate * Fs,     H * Fs,
                                Fs > 0 ? H : 0, gate * Fr * H,  gate * Fr,     H * Fr,
                                Fr > 0 ? H : 0, Fr > 0 ? 2 * H : 0, Fr > 0 ? 2 : 0};
    for (int i = 0; i < 15; ++i) n[i] = v[i];
  }
  [[nodiscard]] constexpr std::int64_t total() const noexcept {
    std::int64_t t = 0;
    for (auto v : n) t += v;
    return t;
  }
};

template <class W>
constexpr W** member(layer_tensors<W>& t, int i) noexcept {
  W** const m[15] = {&t.w_gate,      &t.w1,          &t.b1,          &t.w2,
                     &t.b2,          &t.shared_w1,   &t.shared_b1,   &t.shared_w2,
                     &t.shared_b2,   &t.residual_w1, &t.residual_b1, &t.residual_w2,
                     &t.residual_b2, &t.coef_w,      &t.coef_b};
  return m[i];
}

inline constexpr char const* tensor_names[15] = {
    "w_gate",      "w1",          "b1",          "w2",          "b2",
    "shared_w1",   "shared_b1",   "shared_w2",   "shared_b2",   "residual_w1",
    "residual_b1", "residual_w2", "residual_b2", "coef_w",      "coef_b"};

/// Byte offsets of the workspace regions for one problem. Saved: written by forward, read by
/// backward. Scratch: backward only (it may reuse nothing of the saved part).
struct workspace_layout {
  std::int64_t rows = 0;  // bound of the permuted buffer's rows
  std::size_t logits = 0, logits_acc = 0, expert = 0, slot = 0, weight = 0, counts = 0, kept = 0,
              stats = 0, offsets = 0, row_of = 0, source_of = 0, xp = 0, pre = 0, h = 0, yp = 0,
              y_moe = 0, dense_offsets = 0, shared_pre = 0, shared_h = 0, shared_y = 0,
              res_pre = 0, res_h = 0, res_y = 0, coef = 0;
  std::size_t d_weight = 0, d_logits = 0, d_logits_acc = 0, d_o = 0, d_pre = 0, dxp = 0,
              d_moe = 0, d_res = 0, d_coef = 0, dx_a = 0, dx_sum = 0, dense_d_pre = 0;
  std::size_t op_scratch = 0;  // workspace of the backend's ops (route, plan, ...), if any
  std::size_t op_scratch_bytes = 0;  // its size
  // Expert parallelism (R > 1): the group's routing, replicated on every rank, and the rows
  // this rank's experts receive (rows_recv bounds them).
  std::int64_t group_tokens = 0, rows_recv = 0;
  std::size_t tok = 0, g_logits = 0, g_expert = 0, g_slot = 0, g_weight = 0, g_counts = 0,
              g_kept = 0, sort_keys = 0, send_counts = 0, recv_counts = 0, send_rows = 0,
              recv_rows = 0, e_offsets = 0, order = 0, inverse = 0, xr = 0, xe = 0, pre_e = 0,
              h_e = 0, ye = 0, yr = 0, g_d_weight = 0, g_d_logits = 0, d_or = 0, d_oe = 0,
              d_pre_e = 0, dxe = 0, dxr = 0;
  // The CUDA expert-parallel path's device copies of host values: this rank's (T, T_g,
  // fingerprint), the sort's values, the regrouping table and the counts backward reads.
  std::size_t tok_mine = 0, sort_vals = 0, regroup = 0, ep_record = 0;
  std::size_t bytes = 0;
};

/// Every region starts at a multiple of 256 bytes (cudaMalloc's alignment, which the CUDA ops'
/// scratch asks for) from the workspace's base.
inline std::size_t take(std::size_t& at, std::int64_t elements, std::size_t elem) noexcept {
  std::size_t const start = (at + 255) / 256 * 256;
  at = start + static_cast<std::size_t>(elements) * elem;
  return start;
}

/// The largest slot count a route of problem p can hand out: the native or DeepSpeed capacity
/// formula (DeepSpeed's float32 one can exceed the exact one by one), T when dropless.
template <config C>
std::int64_t static_capacity(problem const& p) noexcept {
  std::int64_t cap = capacity<C>(p);
  if (C.compat == router_compat::deepspeed && !is_dropless<C>(p)) {
    std::int64_t const ds = routing::deepspeed_capacity(p.tokens, C.experts,
                                                        active_capacity_factor<C>(p), C.top_k,
                                                        p.min_capacity);
    cap = ds > cap ? ds : cap;
  }
  return cap;
}

/// The problem of the whole expert-parallel group: T = group_tokens(p).
inline problem group_problem(problem const& p) noexcept {
  problem g = p;
  g.tokens = group_tokens(p);
  g.group_tokens = 0;
  g.ep_rank = 0;
  g.ep_size = 1;
  return g;
}

/// int64s of the record an expert-parallel forward leaves for backward on the CUDA backend:
/// [R][3] tokens, [R] rows sent, [R] rows received, M, M_r.
constexpr std::int64_t ep_record_size(std::int64_t ranks) noexcept { return 5 * ranks + 2; }

template <config C>
workspace_layout make_layout(layer_shape const& s, problem const& p, std::size_t op_scratch = 0,
                             bool expert_parallel = false) noexcept {
  using A = act_t<C>;
  workspace_layout w{};
  std::int64_t const T = p.tokens, H = s.hidden, E = C.experts, K = C.top_k;
  std::int64_t const gate = is_gated(C.ffn_activation) ? 2 : 1;
  std::int64_t const F = s.ffn, Fs = s.shared_ffn, Fr = s.residual_ffn;
  // The most slots an expert can have (with expert parallelism, the group's capacity).
  problem const g = group_problem(p);
  std::int64_t const cap = static_capacity<C>(expert_parallel ? g : p);
  w.rows = plan_rows_bound(T, C.top_k, C.experts, cap, plan_layout::compact, 1);
  std::int64_t const M = w.rows;
  std::size_t at = 0;
  w.logits = take(at, T * E, sizeof(float));
  w.logits_acc = take(at, std::is_same_v<accum_t<C>, float> ? 0 : T * E, sizeof(accum_t<C>));
  w.expert = take(at, T * K, sizeof(std::int32_t));
  w.slot = take(at, T * K, sizeof(std::int32_t));
  w.weight = take(at, T * K, sizeof(float));
  w.counts = take(at, E, sizeof(std::int32_t));
  w.kept = take(at, E, sizeof(std::int32_t));
  w.stats = take(at, 1, sizeof(route_stats));
  w.offsets = take(at, E + 1, sizeof(std::int64_t));
  w.row_of = take(at, T * K, sizeof(std::int32_t));
  w.source_of = take(at, M, sizeof(std::int32_t));
  w.xp = take(at, M * H, sizeof(A));
  w.pre = take(at, M * gate * F, sizeof(A));
  w.h = take(at, M * F, sizeof(A));
  w.yp = take(at, M * H, sizeof(A));
  w.y_moe = take(at, T * H, sizeof(A));
  w.dense_offsets = take(at, 2, sizeof(std::int64_t));
  w.shared_pre = take(at, T * gate * Fs, sizeof(A));
  w.shared_h = take(at, T * Fs, sizeof(A));
  w.shared_y = take(at, Fs > 0 ? T * H : 0, sizeof(A));
  w.res_pre = take(at, T * gate * Fr, sizeof(A));
  w.res_h = take(at, T * Fr, sizeof(A));
  w.res_y = take(at, Fr > 0 ? T * H : 0, sizeof(A));
  w.coef = take(at, Fr > 0 ? 2 * T : 0, sizeof(accum_t<C>));
  // backward scratch
  w.d_weight = take(at, T * K, sizeof(float));
  w.d_logits = take(at, T * E, sizeof(float));
  w.d_logits_acc = take(at, std::is_same_v<accum_t<C>, float> ? 0 : T * E, sizeof(accum_t<C>));
  w.d_o = take(at, M * H, sizeof(A));
  w.d_pre = take(at, M * gate * F, sizeof(A));
  w.dxp = take(at, M * H, sizeof(A));
  w.d_moe = take(at, T * H, sizeof(A));
  w.d_res = take(at, Fr > 0 ? T * H : 0, sizeof(A));
  w.d_coef = take(at, Fr > 0 ? 2 * T : 0, sizeof(accum_t<C>));
  w.dx_a = take(at, T * H, sizeof(A));
  w.dx_sum = take(at, T * H, sizeof(accum_t<C>));
  std::int64_t const Fd = Fs > Fr ? Fs : Fr;  // the dense FFNs' backward scratch, shared
  w.dense_d_pre = take(at, T * gate * Fd, sizeof(A));
  w.op_scratch = take(at, static_cast<std::int64_t>(op_scratch), 1);  // the backend ops' own
  w.op_scratch_bytes = op_scratch;
  if (expert_parallel) {
    std::int64_t const Tg = g.tokens, R = p.ep_size, El = E / R;
    std::int64_t const Mr = plan_rows_bound(Tg, C.top_k, static_cast<std::int32_t>(El), cap,
                                            plan_layout::compact, 1);
    w.group_tokens = Tg;
    w.rows_recv = Mr;
    w.tok = take(at, 3 * R, sizeof(std::int64_t));  // [R][3]: T, group T, problem fingerprint
    w.g_logits = take(at, Tg * E, sizeof(float));
    w.g_expert = take(at, Tg * K, sizeof(std::int32_t));
    w.g_slot = take(at, Tg * K, sizeof(std::int32_t));
    w.g_weight = take(at, Tg * K, sizeof(float));
    w.g_counts = take(at, E, sizeof(std::int32_t));
    w.g_kept = take(at, E, sizeof(std::int32_t));
    w.sort_keys = take(at, 2 * T * K, sizeof(std::int64_t));
    w.send_counts = take(at, R * El, sizeof(std::int64_t));
    w.recv_counts = take(at, R * El, sizeof(std::int64_t));
    w.send_rows = take(at, 3 * R, sizeof(std::int64_t));  // rows sent, ones, T of each rank
    w.recv_rows = take(at, R, sizeof(std::int64_t));
    w.e_offsets = take(at, El + 1, sizeof(std::int64_t));
    w.order = take(at, Mr, sizeof(std::int32_t));
    w.inverse = take(at, Mr, sizeof(std::int32_t));
    w.xr = take(at, Mr * H, sizeof(A));
    w.xe = take(at, Mr * H, sizeof(A));
    w.pre_e = take(at, Mr * gate * F, sizeof(A));
    w.h_e = take(at, Mr * F, sizeof(A));
    w.ye = take(at, Mr * H, sizeof(A));
    w.yr = take(at, Mr * H, sizeof(A));
    w.g_d_weight = take(at, Tg * K, sizeof(float));
    w.g_d_logits = take(at, Tg * E, sizeof(float));
    w.d_or = take(at, Mr * H, sizeof(A));
    w.d_oe = take(at, Mr * H, sizeof(A));
    w.d_pre_e = take(at, Mr * gate * F, sizeof(A));
    w.dxe = take(at, Mr * H, sizeof(A));
    w.dxr = take(at, Mr * H, sizeof(A));
    w.tok_mine = take(at, 3, sizeof(std::int64_t));
    w.sort_vals = take(at, 2 * T * K, sizeof(std::int32_t));
    w.regroup = take(at, 3 * E, sizeof(std::int64_t));
    w.ep_record = take(at, ep_record_size(R), sizeof(std::int64_t));
  }
  w.bytes = (at + 255) / 256 * 256;
  return w;
}

template <class T>
T* at(void* base, std::size_t offset) noexcept {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

// ---- pieces of the expert-parallel path (moe/detail/layer_ep_compose.hpp) -----------------

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

/// Checks every rank's (T, expected group T, problem fingerprint) — tok [R][3], the same array
/// on every rank — the same way on every rank (so that a problem that disagrees between ranks
/// gives the same error everywhere instead of a hang or a silently different routing later);
/// tokens_before = the tokens of the ranks before `rank`, rows_of [R] = every rank's T (the
/// row counts of the gathers).
inline status check_group_tokens(std::int64_t const* tok, std::int32_t R, std::int32_t rank,
                                 std::int64_t& tokens_before, std::int64_t* rows_of) noexcept {
  std::int64_t sum = 0;
  tokens_before = 0;
  for (std::int32_t r = 0; r < R; ++r) {
    if (r < rank) tokens_before += tok[3 * r];
    sum += tok[3 * r];
    rows_of[r] = tok[3 * r];
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

/// The host values of an exchange, from this rank's plan offsets [E + 1] and the counts it
/// received, recv_counts [R][E_l] (host arrays): rows sent to each rank (send_rows [R]) and
/// received from each (recv_rows [R]), M_r = their sum, checked against the workspace's bounds,
/// and the regrouping [source][expert] → [expert][source]: e_offsets [E_l + 1] of the grouped
/// rows, and block(first received row, first grouped row, rows) for each (local expert, source)
/// in that order.
template <class Block>
status ep_rows(std::int64_t const* offsets, std::int64_t const* recv_counts, std::int32_t R,
               std::int64_t El, workspace_layout const& L, std::int64_t* send_rows,
               std::int64_t* recv_rows, std::int64_t* e_offsets, std::int64_t& rows_in,
               Block&& block) noexcept {
  rows_in = 0;
  for (std::int32_t r = 0; r < R; ++r) {
    send_rows[r] = offsets[(r + 1) * El] - offsets[r * El];
    recv_rows[r] = 0;
    for (std::int64_t j = 0; j < El; ++j) {
      if (recv_counts[r * El + j] < 0)
        return status::error(errc::internal, "expert parallel: rank %d sent a negative count", r);
      recv_rows[r] += recv_counts[r * El + j];
    }
    rows_in += recv_rows[r];
  }
  std::int64_t const M = offsets[R * El];
  if (M > L.rows || rows_in > L.rows_recv)
    return status::error(errc::internal,
                         "expert parallel: %lld rows to send and %lld received, above the bounds "
                         "%lld and %lld (ranks disagree on the routing?)",
                         static_cast<long long>(M), static_cast<long long>(rows_in),
                         static_cast<long long>(L.rows), static_cast<long long>(L.rows_recv));
  e_offsets[0] = 0;
  std::int64_t g = 0;
  for (std::int64_t j = 0; j < El; ++j) {
    std::int64_t base = 0;  // first received row of source s
    for (std::int32_t s = 0; s < R; ++s) {
      std::int64_t first = base;
      for (std::int64_t jj = 0; jj < j; ++jj) first += recv_counts[s * El + jj];
      block(first, g, recv_counts[s * El + j]);
      g += recv_counts[s * El + j];
      base += recv_rows[s];
    }
    e_offsets[j + 1] = g;
  }
  return {};
}

/// What both passes of a step need to know on the host: rows sent to and received from each
/// rank ([R] each), every rank's token count ([R]), this rank's plan rows M, the rows its
/// experts received M_r, and the tokens of the ranks before it.
struct ep_counts {
  std::int64_t const* send_rows;
  std::int64_t const* recv_rows;
  std::int64_t const* rows_of;
  std::int64_t M, Mr, tokens_before;
};

/// What a backend's forward and backward read of a layer.
template <config C>
struct layer_state {
  layer_shape shape;
  layer_options options;
  layer_params<C> params;
  layer_grads<C> grads;
  std::int32_t rank = 0;
  /// Host memory of layer_memory<Policy>::host_scratch<C>() int64s, owned by the layer (the
  /// CUDA expert-parallel path keeps the row counts NCCL needs there); null when none.
  std::int64_t* host_scratch = nullptr;
};

/// How a backend allocates, clears and fills the layer's own memory, and how much scratch its
/// ops need inside the workspace (host: below; CUDA: moe/cuda/layer.cuh).
template <class Policy>
struct layer_memory;

/// A backend's glue around the ops in the layer's composition (moe/detail/layer_compose.hpp):
/// host in moe/host/layer.hpp, CUDA in moe/cuda/layer.cuh.
template <class Policy>
struct layer_glue;

template <>
struct layer_memory<host_policy> {
  /// Zeroed memory of `bytes` bytes, or null.
  static void* allocate(std::size_t bytes) noexcept {
    void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (p != nullptr) std::memset(p, 0, bytes);
    return p;
  }
  static void release(void* p) noexcept { std::free(p); }
  static status zero(host_policy, void* p, std::size_t bytes) noexcept {
    std::memset(p, 0, bytes);
    return {};
  }
  static status upload(void* dst, void const* src, std::size_t bytes) noexcept {
    std::memcpy(dst, src, bytes);
    return {};
  }
  static constexpr std::size_t base_alignment = 64;
  /// Host int64s the layer keeps for its steps: none (the workspace is host memory).
  template <config C>
  static constexpr std::int64_t host_scratch(bool /*expert_parallel*/) noexcept {
    return 0;
  }
  /// The backend ops' scratch inside the layer's workspace: the host router's (route and
  /// route_backward run one after another, so they share it), for this rank's problem and for
  /// the expert-parallel group's, whichever is larger. The other host ops need none.
  template <config C>
  static std::size_t op_scratch(layer_shape const&, layer_options const& o,
                                problem const& p) noexcept {
    std::size_t need = 0;
    for (problem const& q : {p, group_problem(p)}) {
      std::size_t const f = route_workspace_bytes<C>(host_policy{}, q);
      std::size_t const b = route_backward_workspace_bytes<C>(host_policy{}, q, o.router);
      need = f > need ? f : need;
      need = b > need ? b : need;
    }
    return need;
  }
};

}  // namespace detail::layer_impl

/// A whole MoE layer of config C on backend `Policy` (moe::host_policy here; moe::cuda_policy
/// with moe/cuda/layer.cuh), over the communicator `Comm` (R = 1 with comm::local, the default
/// and, for now, the only one). Parameters, gradients and workspace are memory of the backend.
template <config C, class Policy = host_policy, class Comm = comm::local>
class layer {
  static_assert(check<C>());
  using memory = detail::layer_impl::layer_memory<Policy>;
  /// The expert-parallel path runs for every communicator but comm::local (even with R = 1,
  /// so that one-rank runs exercise it).
  static constexpr bool expert_parallel = !std::is_same_v<Comm, comm::local>;

 public:
  using act = act_t<C>;
  using weight = weight_t<C>;
  using accum = accum_t<C>;

  layer() = default;
  explicit layer(layer_shape const& shape, Comm comm = {}) noexcept
      : shape_(shape), comm_(static_cast<Comm&&>(comm)) {}

  [[nodiscard]] layer_shape const& shape() const noexcept { return shape_; }
  [[nodiscard]] layer_options& options() noexcept { return options_; }
  [[nodiscard]] layer_options const& options() const noexcept { return options_; }
  [[nodiscard]] layer_params<C> const& params() const noexcept { return params_; }
  [[nodiscard]] layer_grads<C> const& grads() const noexcept { return grads_; }

  /// Elements of the flat parameter (and gradient) buffer: the tensors of layer_tensors one
  /// after another in declaration order, absent ones taking no space.
  [[nodiscard]] std::int64_t parameter_count() const noexcept {
    return detail::layer_impl::tensor_sizes<C>(shape_).total();
  }

  /// Checks the shape: H, F >= 1, optional widths >= 0, R dividing E and equal to comm's size.
  [[nodiscard]] status check_shape() const noexcept {
    if (shape_.hidden < 1)
      return status::error(errc::invalid_argument, "layer_shape.hidden: expected H >= 1, got %lld",
                           static_cast<long long>(shape_.hidden));
    if (shape_.ffn < 1)
      return status::error(errc::invalid_argument, "layer_shape.ffn: expected F >= 1, got %lld",
                           static_cast<long long>(shape_.ffn));
    if (shape_.shared_ffn < 0 || shape_.residual_ffn < 0)
      return status::error(errc::invalid_argument,
                           "layer_shape.shared_ffn/residual_ffn: expected >= 0, got %lld/%lld",
                           static_cast<long long>(shape_.shared_ffn),
                           static_cast<long long>(shape_.residual_ffn));
    if (shape_.ep_size != comm_.size() || C.experts % shape_.ep_size != 0)
      return status::error(errc::invalid_argument,
                           "layer_shape.ep_size: expected the communicator's size %d (dividing "
                           "E = %d), got %d",
                           comm_.size(), C.experts, shape_.ep_size);
    return {};
  }

  /// Uses caller-owned parameter and gradient tensors (every tensor the shape needs non-null).
  [[nodiscard]] status bind(layer_params<C> const& params, layer_grads<C> const& grads) noexcept {
    MOE_TRY(check_shape());
    detail::layer_impl::tensor_sizes<C> const sizes(shape_);
    layer_params<C> p = params;
    layer_grads<C> g = grads;
    for (int i = 0; i < 15; ++i) {
      bool const need = sizes.n[i] > 0;
      if (need && (*detail::layer_impl::member(p, i) == nullptr ||
                   *detail::layer_impl::member(g, i) == nullptr))
        return status::error(errc::invalid_argument,
                             "layer bind: %s: expected non-null parameter and gradient (%lld "
                             "elements)",
                             detail::layer_impl::tensor_names[i],
                             static_cast<long long>(sizes.n[i]));
      if (!need) {
        *detail::layer_impl::member(p, i) = nullptr;
        *detail::layer_impl::member(g, i) = nullptr;
      }
    }
    constexpr std::int64_t scratch = memory::template host_scratch<C>(expert_parallel);
    if constexpr (scratch > 0) {
      if (host_scratch_ == nullptr) {
        host_scratch_.reset(new (std::nothrow) std::int64_t[scratch]);
        if (host_scratch_ == nullptr)
          return status::error(errc::out_of_memory,
                               "layer bind: no host memory for %lld int64s of row counts",
                               static_cast<long long>(scratch));
      }
    }
    params_ = p;
    grads_ = g;
    flat_params_ = nullptr;
    flat_grads_ = nullptr;
    return {};
  }

  /// Uses caller-owned flat buffers of parameter_count() elements each (layout above).
  [[nodiscard]] status bind_flat(weight* params, accum* grads) noexcept {
    MOE_TRY(check_shape());
    if (params == nullptr || grads == nullptr)
      return status::error(errc::invalid_argument,
                           "layer bind_flat: params/grads: expected non-null buffers of %lld "
                           "elements",
                           static_cast<long long>(parameter_count()));
    MOE_TRY(bind(carve(params), carve(grads)));
    flat_params_ = params;
    flat_grads_ = grads;
    return {};
  }

  /// Allocates layer-owned parameters and gradients (zeros) in the backend's memory, once,
  /// outside any step; they are freed with the layer.
  [[nodiscard]] status allocate() noexcept {
    MOE_TRY(check_shape());
    auto const n = static_cast<std::size_t>(parameter_count());
    owned_params_.reset(memory::allocate(n * sizeof(weight)));
    owned_grads_.reset(memory::allocate(n * sizeof(accum)));
    if (n > 0 && (owned_params_ == nullptr || owned_grads_ == nullptr))
      return status::error(errc::out_of_memory,
                           "layer allocate: %zu parameters and gradients do not fit in memory", n);
    return bind_flat(static_cast<weight*>(owned_params_.get()),
                     static_cast<accum*>(owned_grads_.get()));
  }

  /// The flat buffers when bound flat or allocated (else null).
  [[nodiscard]] weight* flat_params() const noexcept { return flat_params_; }
  [[nodiscard]] accum* flat_grads() const noexcept { return flat_grads_; }

  /// Sets every gradient to zero (gradients accumulate over backward calls); on the CUDA
  /// backend, enqueued on the policy's stream (no default there: a default-constructed
  /// cuda_policy is the legacy stream, which a non-blocking stream does not wait for).
  [[nodiscard]] status zero_grad() noexcept
    requires std::is_same_v<Policy, host_policy>
  {
    return zero_grad(Policy{});
  }
  [[nodiscard]] status zero_grad(Policy policy) noexcept {
    detail::layer_impl::tensor_sizes<C> const sizes(shape_);
    for (int i = 0; i < 15; ++i) {
      accum* g = *detail::layer_impl::member(grads_, i);
      if (g != nullptr && sizes.n[i] > 0)
        MOE_TRY(memory::zero(policy, g, static_cast<std::size_t>(sizes.n[i]) * sizeof(accum)));
    }
    return {};
  }

  /// Fills the parameters: weights N(0, std²) from Philox (seed, a disjoint word range per
  /// tensor, independent of R), rounded to weight_t<C>; biases 0. Works on the host and copies
  /// each tensor to the backend; allocates host scratch (call it outside the steps).
  [[nodiscard]] status init(layer_init const& in) noexcept {
    MOE_TRY(check_shape());
    if (params_.w_gate == nullptr)
      return status::error(errc::invalid_argument, "layer init: expected bound parameters "
                                                   "(call bind, bind_flat or allocate first)");
    if (!(in.std >= 0.0f) || !(in.output_std >= 0.0f))
      return status::error(errc::invalid_argument,
                           "layer_init.std/output_std: expected finite values >= 0");
    detail::layer_impl::tensor_sizes<C> const sizes(shape_);
    bool const bias[15] = {false, false, true, false, true, false, true, false,
                           true,  false, true, false, true, false, true};
    bool const output[15] = {false, false, false, true, false, false, false, true,
                             false, false, false, true, false, false, false};
    std::int64_t const El = C.experts / shape_.ep_size;
    std::uint64_t offset = 0;
    try {
      std::vector<float> scratch;
      std::vector<weight> values;
      for (int i = 0; i < 15; ++i) {
        weight* dst = *detail::layer_impl::member(params_, i);
        std::int64_t n = sizes.n[i];
        if (dst == nullptr || n == 0) continue;
        values.assign(static_cast<std::size_t>(n), from_float<weight>(0.0f));
        if (!bias[i]) {
          bool const expert_tensor = i == 1 || i == 3;
          // Replicated experts: draw expert 0 and copy it. Otherwise rank r draws the words a
          // single rank would draw for its experts, so every R gives the same global weights.
          std::int64_t const per_expert = expert_tensor ? n / El : n;
          std::int64_t const draw = expert_tensor && in.replicate_experts ? per_expert : n;
          scratch.resize(static_cast<std::size_t>(draw));
          std::uint64_t const first =
              offset + (expert_tensor && !in.replicate_experts
                            ? 2u * static_cast<std::uint64_t>(comm_.rank()) *
                                  static_cast<std::uint64_t>(n)
                            : 0u);
          MOE_TRY(fill_random(host_policy{}, random_args{.dist = distribution::normal,
                                                         .seed = in.seed,
                                                         .offset = first,
                                                         .out = scratch.data(),
                                                         .n = draw}));
          float const sd = output[i] && in.output_std > 0.0f ? in.output_std : in.std;
          for (std::int64_t j = 0; j < n; ++j)
            values[static_cast<std::size_t>(j)] =
                from_float<weight>(sd * scratch[static_cast<std::size_t>(j % draw)]);
          offset += words_used(distribution::normal, expert_tensor ? n * shape_.ep_size : n);
        }
        MOE_TRY(memory::upload(dst, values.data(), static_cast<std::size_t>(n) * sizeof(weight)));
      }
    } catch (std::bad_alloc const&) {
      return status::error(errc::out_of_memory, "layer init: no host memory for the scratch");
    }
    return {};
  }

  /// A problem for T tokens with this layer's H, F and R (coefficients at their defaults).
  [[nodiscard]] problem make_problem(std::int64_t tokens, bool training = true) const noexcept {
    problem p{};
    p.tokens = tokens;
    p.hidden = shape_.hidden;
    p.ffn = shape_.ffn;
    p.ep_rank = comm_.rank();
    p.ep_size = shape_.ep_size;
    p.training = training;
    return p;
  }

  /// Bytes of the workspace forward and backward need for problem p (and the current options).
  [[nodiscard]] std::size_t workspace_bytes(problem const& p) const noexcept {
    return layout(p).bytes;
  }

  /// The routing the last forward left in `workspace` (for statistics, e.g. load per class);
  /// memory of the backend.
  [[nodiscard]] layer_routing routing(problem const& p, void const* workspace) const noexcept {
    auto const w = layout(p);
    void* ws = const_cast<void*>(workspace);
    // With expert parallelism the counts are the group's (every rank routes the whole batch).
    std::size_t const counts = expert_parallel ? w.g_counts : w.counts;
    std::size_t const kept = expert_parallel ? w.g_kept : w.kept;
    return {detail::layer_impl::at<std::int32_t>(ws, w.expert),
            detail::layer_impl::at<std::int32_t>(ws, w.slot),
            detail::layer_impl::at<float>(ws, w.weight),
            detail::layer_impl::at<std::int32_t>(ws, counts),
            detail::layer_impl::at<std::int32_t>(ws, kept)};
  }

  /// Forward: y = the layer of x. Leaves in `workspace` what backward needs. Host: returns
  /// when done. CUDA: enqueued on policy.stream (policy's own workspace is not used: the
  /// layer's workspace holds every op's scratch), no synchronisation.
  [[nodiscard]] status forward(Policy policy, problem const& p, layer_forward_args<C> const& a,
                               void* workspace, std::size_t bytes) noexcept {
    MOE_TRY(check_call(p, workspace, bytes, "layer::forward"));
    if constexpr (expert_parallel)
      return layer_forward_ep(policy, state(), comm_, p, a, workspace, layout(p));
    else
      return layer_forward(policy, state(), p, a, workspace, layout(p));
  }

  /// Backward: dx (overwritten) and every parameter gradient (accumulated), for the loss whose
  /// gradient w.r.t. y is dy plus the layer's own losses (layer_stats::loss). `workspace` must
  /// hold what forward left there, for the same problem and x.
  [[nodiscard]] status backward(Policy policy, problem const& p, layer_backward_args<C> const& a,
                                void* workspace, std::size_t bytes) noexcept {
    MOE_TRY(check_call(p, workspace, bytes, "layer::backward"));
    if constexpr (expert_parallel)
      return layer_backward_ep(policy, state(), comm_, p, a, workspace, layout(p));
    else
      return layer_backward(policy, state(), p, a, workspace, layout(p));
  }

  /// Sums the gradients of the replicated parameters (router, shared experts, residual MLP and
  /// its coefficients) over the expert-parallel group, so that every rank holds the gradient of
  /// the group's whole batch (the routed experts' gradients already are: each rank's experts
  /// saw every token routed to them). Collective: every rank of the group calls it. A no-op
  /// with comm::local. CUDA: enqueued after the work on policy.stream (NCCL sums in its own
  /// fixed order; every rank gets the same bits).
  [[nodiscard]] status all_reduce_replicated_gradients() noexcept
    requires std::is_same_v<Policy, host_policy>
  {
    return all_reduce_replicated_gradients(Policy{});
  }
  [[nodiscard]] status all_reduce_replicated_gradients(Policy policy) noexcept {
    if constexpr (requires(Comm& c, Policy const& q) { c.set_stream(q.stream); })
      comm_.set_stream(policy.stream);
    else
      (void)policy;
    detail::layer_impl::tensor_sizes<C> const sizes(shape_);
    for (int i = 0; i < 15; ++i) {
      if (i >= 1 && i <= 4) continue;  // the routed experts: owned, not replicated
      accum* g = *detail::layer_impl::member(grads_, i);
      if (g != nullptr && sizes.n[i] > 0) MOE_TRY(comm_.all_reduce_sum(g, sizes.n[i]));
    }
    return {};
  }

 private:
  template <class W>
  layer_tensors<W> carve(W* flat) const noexcept {
    layer_tensors<W> t{};
    detail::layer_impl::tensor_sizes<C> const sizes(shape_);
    std::int64_t at = 0;
    for (int i = 0; i < 15; ++i) {
      *detail::layer_impl::member(t, i) = sizes.n[i] > 0 ? flat + at : nullptr;
      at += sizes.n[i];
    }
    return t;
  }

  detail::layer_impl::workspace_layout layout(problem const& p) const noexcept {
    return detail::layer_impl::make_layout<C>(
        shape_, p, memory::template op_scratch<C>(shape_, options_, p), expert_parallel);
  }

  detail::layer_impl::layer_state<C> state() const noexcept {
    return {shape_, options_, params_, grads_, comm_.rank(), host_scratch_.get()};
  }

  status check_call(problem const& p, void const* workspace, std::size_t bytes,
                    char const* who) const noexcept {
    MOE_TRY(check_shape());
    MOE_TRY(validate<C>(p));
    if (p.hidden != shape_.hidden || p.ffn != shape_.ffn)
      return status::error(errc::invalid_argument,
                           "%s: problem.hidden/ffn: expected the layer's H = %lld, F = %lld, got "
                           "%lld, %lld (use layer::make_problem)",
                           who, static_cast<long long>(shape_.hidden),
                           static_cast<long long>(shape_.ffn), static_cast<long long>(p.hidden),
                           static_cast<long long>(p.ffn));
    if (p.ep_size != shape_.ep_size || p.ep_rank != comm_.rank())
      return status::error(errc::invalid_argument,
                           "%s: problem.ep_size/ep_rank: expected %d/%d (the layer's), got %d/%d",
                           who, shape_.ep_size, comm_.rank(), p.ep_size, p.ep_rank);
    if (params_.w_gate == nullptr)
      return status::error(errc::invalid_argument,
                           "%s: the layer has no parameters (call bind, bind_flat or allocate)",
                           who);
    std::size_t const need = workspace_bytes(p);
    if (bytes < need)
      return status::error(errc::workspace_too_small,
                           "%s: workspace: expected >= %zu bytes (layer::workspace_bytes), got %zu",
                           who, need, bytes);
    if (need > 0 && (workspace == nullptr ||
                     reinterpret_cast<std::uintptr_t>(workspace) % memory::base_alignment != 0))
      return status::error(errc::invalid_argument,
                           "%s: workspace: expected a non-null, %zu-byte aligned pointer", who,
                           memory::base_alignment);
    return {};
  }

  struct release {
    void operator()(void* p) const noexcept {
      if (p != nullptr) memory::release(p);
    }
  };

  layer_shape shape_{};
  Comm comm_{};
  layer_options options_{};
  layer_params<C> params_{};
  layer_grads<C> grads_{};
  weight* flat_params_ = nullptr;
  accum* flat_grads_ = nullptr;
  std::unique_ptr<void, release> owned_params_;
  std::unique_ptr<void, release> owned_grads_;
  std::unique_ptr<std::int64_t[]> host_scratch_;
};

}  // namespace moe

#include "moe/detail/layer_compose.hpp"  // forward and backward, written once for every backend
#include "moe/host/layer.hpp"             // the host backend's glue; the expert-parallel path
