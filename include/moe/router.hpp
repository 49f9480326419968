// SPDX-License-Identifier: Apache-2.0
// Op: the router. From fp32 logits [T, E] it decides, for every token, its K experts, their
// weights and — under a capacity — which routes survive and in which slot of their expert, and
// it computes the load-balancing losses and statistics; its backward turns d_weight (and the
// loss coefficients) into d_logits. The router GEMM (logits = x · W_g, and its backward) is a
// separate op (moe/router_gemm.hpp), so that callers who compute logits themselves can route
// them. Semantics of every variant, and the DeepSpeed rules the `deepspeed` configs reproduce,
// are in docs/routing.md.
//
// This header holds the argument structs, their checks, the fp32 arithmetic every backend must
// reproduce bit for bit (so that the CUDA kernel's integer outputs equal the host's), and the
// declarations of the host overloads; moe/host/router.hpp (included at the end) implements them.
//
// Determinism contract (what a second backend mirrors to get the same experts, slots and
// weights): every decision is taken on fp32 values computed by the functions in
// `detail::routing` below — exp_det, sigmoid_det, softmax_row (its sum in `lane_order_sum`
// order), then add_rn/div_rn/mul_rn as documented at each step in moe/host/router.hpp — with
// ties always resolved to the lower expert, group or token index. Losses and statistics are
// computed in double and are not part of the bitwise contract.
#pragma once

#include <cmath>    // std::ceil, std::isfinite
#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t, std::uint64_t, std::uintptr_t

#include "moe/config.hpp"             // moe::config, check<C>()
#include "moe/detail/float_math.hpp"  // detail::add_rn, sub_rn, mul_rn, fma_rn, div_rn, bits
#include "moe/detail/macros.hpp"      // MOE_HOST_DEVICE
#include "moe/policy.hpp"             // moe::host_policy
#include "moe/problem.hpp"            // moe::problem, capacity<C>(), is_dropless<C>()
#include "moe/status.hpp"             // moe::status, MOE_TRY

namespace moe {

/// Run-time options of the router (none changes generated code).
///
/// Noise. Every noise tensor is either supplied by the caller (a non-null pointer, used as
/// given) or drawn from Philox with problem.seed, in this fixed word layout from `noise_offset`:
///   Gumbel noise on logits   g[t, e] = gumbel (seed, noise_offset + t·E + e)          [T, E]
///   RTS priorities           u[t, e] = uniform(seed, noise_offset + T·E + t·E + e)    [T, E]
/// (router_noise_words<C>(T) = 2·T·E words in all), so that a run can be reproduced exactly,
/// or matched against another implementation by injecting that implementation's noise (the
/// shapes are DeepSpeed's: `gumbel_rsample(logits.shape)`, `uniform(mask1.shape)`).
/// Native configs use noise only while problem.training is true. `deepspeed` configs follow
/// DeepSpeed: RSample only in training, but top-2 second-expert sampling and random token
/// selection in evaluation too (DeepSpeed passes those flags whatever `self.training` is).
struct router_options {
  float weight_scale = 1.0f;  ///< multiplies the final weights (DeepSeek-V3's routed scaling)
  float const* expert_bias = nullptr;  ///< [E] aux-loss-free balancing: added to the selection
                                       ///< scores only; weights come from unbiased scores
  bool gumbel_top1 = false;       ///< RSample: choice 0 = argmax(logits + g); weight stays clean
  bool sample_second = false;     ///< choice 1 = argmax(logits + g) over the rest (K >= 2);
                                  ///< DeepSpeed's top2_2nd_expert_sampling (default True there)
  float const* gumbel = nullptr;  ///< [T, E] caller's Gumbel noise, or null = Philox
  float const* rts_priority = nullptr;  ///< [T, E] caller's priorities for random_token, or null
  std::uint64_t noise_offset = 0;       ///< first Philox word of this call's noise
  std::int64_t seq_len = 0;  ///< > 0: also the sequence-level balance loss over sequences
                             ///< of seq_len consecutive tokens (DeepSeek-V2); T % seq_len == 0
  float seq_aux_loss_coef = 0.0f;  ///< coefficient of the sequence-level loss in route_backward
};

/// Scalars a route call reports (written to `route_args::stats`). Losses are reported without
/// their coefficients (problem.aux_loss_coef, problem.z_loss_coef, options.seq_aux_loss_coef).
struct route_stats {
  std::int64_t capacity = 0;  ///< C used: the formula's value, or the largest count when dropless
  std::int64_t routes = 0;    ///< T * K
  std::int64_t dropped = 0;   ///< routes with slot -1
  std::int32_t max_load = 0;  ///< largest pre-drop expert count
  float mean_load = 0.0f;     ///< T * K / E
  float aux_loss = 0.0f;  ///< load-balancing loss (Switch/GShard; DeepSpeed's l_aux in its mode)
  float z_loss = 0.0f;    ///< router z-loss mean_t logsumexp(logits_t)^2
  float seq_aux_loss = 0.0f;  ///< sequence-level balance loss (0 unless seq_len > 0)
};

/// Arguments of route. All pointers are caller-owned; host memory for moe::host, device memory
/// for moe::cuda_on (including `stats`). The [T, ...] pointers may be null when T = 0.
struct route_args {
  float const* logits = nullptr;   ///< [T, E] fp32 router logits
  std::int32_t* expert = nullptr;  ///< [T, K] out: chosen experts, in choice order (kept for
                                   ///< dropped routes too)
  float* weight = nullptr;         ///< [T, K] out: combine weights (0 for dropped routes)
  std::int32_t* slot = nullptr;    ///< [T, K] out: slot inside the expert, -1 = dropped
  std::int32_t* counts = nullptr;  ///< [E] out: routes per expert before drops
  std::int32_t* kept = nullptr;    ///< [E] out: routes per expert after drops
  float* scores = nullptr;         ///< [T, E] out, optional (may be null): softmax or sigmoid
                                   ///< over all E experts (what the balance losses average)
  route_stats* stats = nullptr;    ///< [1] out
  /// [1] out, optional (may be null): the lowest flat index t·E + e of a non-finite logit, or
  /// -1 if every logit is finite. The CUDA backend cannot return that as a status without
  /// synchronising, so it writes it here (device memory; read it back when convenient); the
  /// host backend writes it too and also returns the status naming (t, e). Encoding (as
  /// plan_args::bad_route): the CUDA backend sets the word to all ones (-1) and lowers it with
  /// an unsigned atomicMin, so -1 (the largest unsigned value) means none. With a non-finite
  /// logit the other outputs are unspecified, but nothing is written out of bounds.
  std::int64_t* bad_logit = nullptr;
};

/// Arguments of route_backward: d_logits from the gradient of the weights and the losses
///   L = Σ d_weight · weight + aux_loss_coef · aux + z_loss_coef · z + seq_aux_loss_coef · seq,
/// with every decision (experts, drops, counts) held fixed. Scores are recomputed from the
/// logits in double, so nothing but the forward's integer outputs needs to be kept.
struct route_backward_args {
  float const* logits = nullptr;         ///< [T, E] the forward's input
  std::int32_t const* expert = nullptr;  ///< [T, K] the forward's experts
  std::int32_t const* slot = nullptr;    ///< [T, K] the forward's slots (-1 = dropped)
  float const* d_weight = nullptr;       ///< [T, K] gradient of the loss w.r.t. weight
  float* d_logits = nullptr;             ///< [T, E] out (overwritten)
};

/// Words of the Philox stream one route call may use from options.noise_offset (to advance an
/// offset past them): the Gumbel tensor and the RTS priorities, T·E words each.
template <config C>
constexpr std::uint64_t router_noise_words(std::int64_t tokens) noexcept {
  return 2u * static_cast<std::uint64_t>(tokens) * static_cast<std::uint64_t>(C.experts);
}

/// Bytes of host scratch route<C>(policy, p, ...) needs: O(T·K + E). Pass them as
/// policy.with_workspace(ptr, bytes) (any alignment) and route allocates nothing; without a
/// workspace it allocates this much itself, inside the call (0 for an invalid T).
template <config C>
[[nodiscard]] std::size_t route_workspace_bytes(host_policy policy, problem const& p) noexcept;

/// Bytes of host scratch route_backward<C> needs: O(E) (see route_workspace_bytes).
template <config C>
[[nodiscard]] std::size_t route_backward_workspace_bytes(host_policy policy, problem const& p,
                                                         router_options const& opt = {}) noexcept;

/// Routes T tokens on the CPU: experts, weights, slots, counts, losses and statistics. Runs on
/// one thread (policy.threads is not used yet); outputs are untouched when an argument is rejected.
/// Scratch comes from policy.workspace (errc::workspace_too_small when it is smaller than
/// route_workspace_bytes), or is allocated inside the call when the policy has none.
/// @param p      tokens T, training flag (capacity factor, noise), min_capacity, seed
/// @param opt    weight scale, selection bias, noise, sequence length
/// @param a      logits [T, E] in; expert, weight, slot [T, K], counts, kept [E], stats out
template <config C>
[[nodiscard]] status route(host_policy policy, problem const& p, router_options const& opt,
                           route_args const& a) noexcept;

/// d_logits [T, E] of route on the CPU (see route_backward_args for the loss differentiated).
/// @param p      the forward's problem (T, loss coefficients)
/// @param opt    the forward's options (weight_scale, seq_len, seq_aux_loss_coef are read)
template <config C>
[[nodiscard]] status route_backward(host_policy policy, problem const& p, router_options const& opt,
                                    route_backward_args const& a) noexcept;

/// Aux-loss-free balancing (DeepSeek-V3): bias[e] += rate · sign(mean − counts[e]), with mean
/// the average count, so under-loaded experts become more attractive. sign(0) = 0.
/// @param counts [E] routes per expert of the last step(s), e.g. route_args::counts
/// @param bias   [E] in/out: router_options::expert_bias
template <config C>
[[nodiscard]] status update_expert_bias(host_policy policy, float rate, std::int32_t const* counts,
                                        float* bias) noexcept;

namespace detail::routing {

// ---- fp32 arithmetic shared by every backend ------------------------------------------------

/// e^x from correctly rounded IEEE operations only, so host and device give the same bits
/// (library expf differs between glibc and CUDA). x = k·ln2 + r with |r| <= ln2/2 (Cody-Waite,
/// ln2 in two parts), e^r by its degree-7 Taylor polynomial in Horner form with fmas, then
/// scaled by 2^k in two exact steps so that subnormal results are rounded once. Max error
/// 1 ulp (the tests measure it over a dense sweep). exp(x) = 0 for x < -104 (below half the
/// smallest subnormal), +inf above ln(FLT_MAX); NaN in, NaN out.
MOE_HOST_DEVICE float exp_det(float x) {
  if (x != x) return x;
  if (x < -104.0f) return 0.0f;
  if (x > 88.75f) return bits_float(0x7f800000u);  // ln(FLT_MAX) = 88.7228: k <= 128 below
  float const t = mul_rn(x, 0x1.715476p+0f);       // x / ln 2
  int const k = static_cast<int>(add_rn(t, t >= 0.0f ? 0.5f : -0.5f));  // round half away
  float const kf = static_cast<float>(k);
  float r = fma_rn(kf, -0x1.62e400p-1f, x);  // ln2_hi ends in 10 zero bits: k·ln2_hi exact
  r = fma_rn(kf, -0x1.7f7d1cp-20f, r);       // ln2_lo = ln2 - ln2_hi
  float q = 0x1.a01a02p-13f;                 // 1/7!
  q = fma_rn(q, r, 0x1.6c16c2p-10f);         // 1/6!
  q = fma_rn(q, r, 0x1.111112p-7f);          // 1/5!
  q = fma_rn(q, r, 0x1.555556p-5f);          // 1/4!
  q = fma_rn(q, r, 0x1.555556p-3f);          // 1/3!
  q = fma_rn(q, r, 0.5f);
  q = fma_rn(q, r, 1.0f);
  q = fma_rn(q, r, 1.0f);
  int const k1 = k / 2;  // k in [-150, 128]: both halves in [-75, 64], normal powers of two
  int const k2 = k - k1;
  float const s1 = bits_float(static_cast<std::uint32_t>(k1 + 127) << 23);
  float const s2 = bits_float(static_cast<std::uint32_t>(k2 + 127) << 23);
  return mul_rn(mul_rn(q, s1), s2);
}

/// The logistic function 1 / (1 + e^-x), bitwise identical on every backend.
MOE_HOST_DEVICE float sigmoid_det(float x) {
  return div_rn(1.0f, add_rn(1.0f, exp_det(-x)));
}

/// Σ x[i] for i in [0, n) in the order one warp sums it: "lane" j adds x[j], x[j+32], x[j+64],
/// ... in turn (from 0), then the 32 partial sums are folded by halves — part[j] += part[j+16]
/// for j < 16, then 8, 4, 2, 1 — which is what an xor-butterfly of __shfl_xor_sync leaves in
/// every lane (float addition is commutative). `get(i)` returns x[i].
template <class Get>
MOE_HOST_DEVICE float lane_order_sum(int n, Get const& get) {
  float part[32];
  for (int j = 0; j < 32; ++j) part[j] = 0.0f;
  for (int i = 0; i < n; ++i) part[i % 32] = add_rn(part[i % 32], get(i));
  for (int m = 16; m >= 1; m /= 2)
    for (int j = 0; j < m; ++j) part[j] = add_rn(part[j], part[j + m]);
  return part[0];
}

/// The max and the sum of exp(x - max) of a row: logsumexp = max + log(sum).
struct softmax_stats {
  float max;
  float sum;
};

/// Softmax of one row of n logits: m = max, d[i] = exp_det(x[i] - m), out[i] = d[i] / Σ d
/// (sum in lane_order_sum order, one correctly rounded division per element).
MOE_HOST_DEVICE softmax_stats softmax_row(float const* x, int n, float* out) {
  float m = x[0];
  for (int i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (int i = 0; i < n; ++i) out[i] = exp_det(sub_rn(x[i], m));
  float const sum = lane_order_sum(n, [out](int i) { return out[i]; });
  for (int i = 0; i < n; ++i) out[i] = div_rn(out[i], sum);
  return {m, sum};
}

/// DeepSpeed's capacity in float32: fl32(fl32(T/E) · fl32(f)), ceil, then max with
/// min_capacity, where T/E and f = cf·mult are formed in double (as Python forms them) and
/// mult is 1 (top-1), 2 (top-2) or K (top-k). The product is a single fp32 multiply, never
/// fused (with double arithmetic T = 70, E = 3, cf = 0.3 would give 7; DeepSpeed gives 8).
inline std::int64_t deepspeed_capacity(std::int64_t tokens, std::int32_t experts, ratio cf,
                                       std::int32_t mult, std::int32_t min_capacity) noexcept {
  double const f = static_cast<double>(cf.num) / static_cast<double>(cf.den) * mult;
  float const te = static_cast<float>(static_cast<double>(tokens) / static_cast<double>(experts));
  float const c = std::ceil(mul_rn(te, static_cast<float>(f)));
  auto const cap = c < 0x1p62f ? static_cast<std::int64_t>(c) : std::int64_t{1} << 62;
  return cap < min_capacity ? static_cast<std::int64_t>(min_capacity) : cap;
}

// ---- argument checks ------------------------------------------------------------------------

/// A pointer the op reads or writes: non-null (when required) and aligned for its type.
template <class T>
status check_ptr(T const* ptr, bool required, char const* name) noexcept {
  if (ptr == nullptr) {
    if (required) return status::error(errc::invalid_argument, "%s: expected non-null", name);
    return {};
  }
  if (reinterpret_cast<std::uintptr_t>(ptr) % alignof(T) != 0)
    return status::error(errc::invalid_argument, "%s: expected %zu-byte alignment", name,
                         alignof(T));
  return {};
}

/// The problem fields the router reads (it needs neither H nor F).
template <config C>
status check_problem(problem const& p) noexcept {
  if (p.tokens < 0 || p.tokens > INT32_MAX)  // counts and slots are int32
    return status::error(errc::invalid_argument,
                         "problem.tokens: expected 0 <= T <= 2^31 - 1, got %lld",
                         static_cast<long long>(p.tokens));
  if (p.min_capacity < 0)
    return status::error(errc::invalid_argument, "problem.min_capacity: expected >= 0, got %d",
                         p.min_capacity);
  if (!std::isfinite(p.aux_loss_coef) || p.aux_loss_coef < 0.0f)
    return status::error(errc::invalid_argument,
                         "problem.aux_loss_coef: expected a finite value >= 0, got %g",
                         static_cast<double>(p.aux_loss_coef));
  if (!std::isfinite(p.z_loss_coef) || p.z_loss_coef < 0.0f)
    return status::error(errc::invalid_argument,
                         "problem.z_loss_coef: expected a finite value >= 0, got %g",
                         static_cast<double>(p.z_loss_coef));
  return {};
}

/// The options, for config C and T tokens (values only; the arrays are scanned by the backend).
template <config C>
status check_options(problem const& p, router_options const& o) noexcept {
  constexpr bool ds = C.compat == router_compat::deepspeed;
  if (!std::isfinite(o.weight_scale))
    return status::error(errc::invalid_argument,
                         "router_options.weight_scale: expected a finite value, got %g",
                         static_cast<double>(o.weight_scale));
  if (o.seq_len < 0 || (o.seq_len > 0 && p.tokens % o.seq_len != 0))
    return status::error(errc::invalid_argument,
                         "router_options.seq_len: expected 0 or a divisor of T = %lld, got %lld",
                         static_cast<long long>(p.tokens), static_cast<long long>(o.seq_len));
  if (!std::isfinite(o.seq_aux_loss_coef) || o.seq_aux_loss_coef < 0.0f)
    return status::error(errc::invalid_argument,
                         "router_options.seq_aux_loss_coef: expected a finite value >= 0, got %g",
                         static_cast<double>(o.seq_aux_loss_coef));
  if (ds && o.expert_bias != nullptr)
    return status::error(errc::invalid_argument,
                         "router_options.expert_bias: expected null for deepspeed routing "
                         "(DeepSpeed has no selection bias)");
  if (ds && o.gumbel_top1 && C.top_k != 1)
    return status::error(errc::invalid_argument,
                         "router_options.gumbel_top1: deepspeed RSample exists for K = 1 only, "
                         "got K = %d",
                         C.top_k);
  if (o.sample_second && (ds ? C.top_k != 2 : C.top_k < 2))
    return status::error(errc::invalid_argument,
                         "router_options.sample_second: expected K %s 2, got K = %d",
                         ds ? "==" : ">=", C.top_k);
  MOE_TRY(check_ptr(o.expert_bias, false, "router_options.expert_bias"));
  MOE_TRY(check_ptr(o.gumbel, false, "router_options.gumbel"));
  MOE_TRY(check_ptr(o.rts_priority, false, "router_options.rts_priority"));
  return {};
}

template <config C>
status check(problem const& p, router_options const& o, route_args const& a) noexcept {
  MOE_TRY(check_problem<C>(p));
  MOE_TRY(check_options<C>(p, o));
  bool const rows = p.tokens > 0;  // [T, ...] arrays may be null for T = 0
  MOE_TRY(check_ptr(a.logits, rows, "route_args.logits"));
  MOE_TRY(check_ptr(a.expert, rows, "route_args.expert"));
  MOE_TRY(check_ptr(a.weight, rows, "route_args.weight"));
  MOE_TRY(check_ptr(a.slot, rows, "route_args.slot"));
  MOE_TRY(check_ptr(a.counts, true, "route_args.counts"));
  MOE_TRY(check_ptr(a.kept, true, "route_args.kept"));
  MOE_TRY(check_ptr(a.scores, false, "route_args.scores"));
  MOE_TRY(check_ptr(a.stats, true, "route_args.stats"));
  MOE_TRY(check_ptr(a.bad_logit, false, "route_args.bad_logit"));
  return {};
}

template <config C>
status check(problem const& p, router_options const& o, route_backward_args const& a) noexcept {
  MOE_TRY(check_problem<C>(p));
  MOE_TRY(check_options<C>(p, o));
  bool const rows = p.tokens > 0;
  MOE_TRY(check_ptr(a.logits, rows, "route_backward_args.logits"));
  MOE_TRY(check_ptr(a.expert, rows, "route_backward_args.expert"));
  MOE_TRY(check_ptr(a.slot, rows, "route_backward_args.slot"));
  MOE_TRY(check_ptr(a.d_weight, rows, "route_backward_args.d_weight"));
  MOE_TRY(check_ptr(a.d_logits, rows, "route_backward_args.d_logits"));
  return {};
}

}  // namespace detail::routing
}  // namespace moe

#include "moe/host/router.hpp"  // the definitions of route, route_backward, update_expert_bias
