// SPDX-License-Identifier: Apache-2.0
// Op: the router GEMM, the gate's linear layer, forward and backward:
//   forward   logits[T, E]  = x̃ · W_g                 x̃ = x ⊙ u (multiplicative jitter) or x
//   backward  dx[T, H]      = (d_logits · W_gᵀ) ⊙ u    (overwritten)
//             dW_g[H, E]   += x̃ᵀ · d_logits           (accumulated into the caller's buffer)
// x and dx are stored in the config's activation type, W_g in its weight type; logits,
// d_logits and dW_g in its accumulation type `accum_t<C>` (float, or double for fp64 configs),
// which is also what every sum is carried in. Each output element is one running sum in a
// fixed order, so results are bitwise reproducible whatever the thread count (see
// moe/host/router_gemm.hpp).
//
// This header holds the argument structs, their checks and the host overloads; the host
// implementation lives in moe/host/router_gemm.hpp.
#pragma once

#include <cmath>    // std::isfinite
#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t, std::uint64_t, std::uintptr_t
#include <cstring>  // std::memcpy

#include "moe/config.hpp"             // moe::config, check<C>()
#include "moe/detail/float_math.hpp"  // detail::add_rn, sub_rn, mul_rn
#include "moe/detail/macros.hpp"      // MOE_HOST_DEVICE
#include "moe/host/router_gemm.hpp"   // backend::host::router_gemm_forward, _dgrad, _wgrad
#include "moe/philox.hpp"             // philox4x32_10, uniform_from_word
#include "moe/policy.hpp"             // moe::host_policy
#include "moe/precision.hpp"          // storage_name
#include "moe/problem.hpp"            // moe::problem, max_tokens
#include "moe/status.hpp"             // moe::status, MOE_TRY
#include "moe/storage.hpp"            // act_t, weight_t, accum_t

namespace moe {

/// The jitter multiplier for a uniform draw r in (0, 1): u = lo + r · (hi − lo) with
/// lo = 1 − ε and hi = 1 + ε, every step rounded to fp32 — torch's
/// `Uniform(1 - ε, 1 + ε).rsample()` in fp32, as DeepSpeed's multiplicative_jitter draws it.
MOE_HOST_DEVICE float jitter_multiplier(float eps, float r) {
  float const lo = detail::sub_rn(1.0f, eps);
  float const hi = detail::add_rn(1.0f, eps);
  return detail::add_rn(lo, detail::mul_rn(r, detail::sub_rn(hi, lo)));
}

/// Multiplicative jitter on the router input (DeepSpeed's `multiplicative_jitter`): while
/// problem.training is true and eps > 0, the GEMM reads x̃ = x ⊙ u instead of x, with u[T, H]
/// either supplied by the caller (`u`) or u[t, h] = jitter_multiplier(eps, uniform(problem.seed,
/// offset + t·H + h)) — T·H words of the Philox stream from `offset` on. x̃ is formed in the
/// accumulation type (fl32(x · u) for fp32 accumulation, as DeepSpeed jitters the fp32 copy of
/// the input). Backward must be given the same jitter (and problem) as its forward.
struct router_jitter {
  float eps = 0.0f;          ///< ε in [0, 1); 0 = no jitter
  float const* u = nullptr;  ///< [T, H] the caller's multipliers (used as given), or null = Philox
  std::uint64_t offset = 0;  ///< first Philox word when u is null
};

/// Arguments of router_gemm (forward). All pointers caller-owned; host memory for moe::host.
template <config C>
struct router_gemm_args {
  act_t<C> const* x = nullptr;          ///< [T, H] router input
  weight_t<C> const* w_gate = nullptr;  ///< [H, E] gate weight W_g, row-major
  accum_t<C>* logits = nullptr;         ///< [T, E] out, overwritten
  router_jitter jitter{};               ///< training-only multiplicative jitter
};

/// Arguments of router_gemm_backward.
template <config C>
struct router_gemm_backward_args {
  act_t<C> const* x = nullptr;           ///< [T, H] the forward's input
  weight_t<C> const* w_gate = nullptr;   ///< [H, E] the forward's W_g
  accum_t<C> const* d_logits = nullptr;  ///< [T, E] gradient of the loss w.r.t. logits
  act_t<C>* dx = nullptr;                ///< [T, H] out, overwritten: (d_logits · W_gᵀ) ⊙ u
  accum_t<C>* d_w_gate = nullptr;        ///< [H, E] in/out: x̃ᵀ · d_logits is ADDED to it
  router_jitter jitter{};                ///< the forward's jitter
};

namespace detail {

/// What the host loops read the jitter through: `on` and fill(t, h0, n, u) = u[t, h0 .. h0+n).
struct router_jitter_source {
  bool on = false;
  float eps = 0.0f;
  float const* u = nullptr;  // [T, H] or null = Philox
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;
  std::int64_t hidden = 0;

  void fill(std::int64_t t, std::int64_t h0, std::int64_t n, float* out) const {
    std::int64_t const first = t * hidden + h0;
    if (u != nullptr) {
      std::memcpy(out, u + first, static_cast<std::size_t>(n) * sizeof(float));
      return;
    }
    // One Philox block per four words (as philox_stream). Philox bounds the jittered forward:
    // about 1.7 ns a word on the 2-core Xeon it was measured on, against about 0.6 ns of
    // multiply-adds per element of x at E = 8.
    std::uint64_t word = offset + static_cast<std::uint64_t>(first);
    auto const key0 = static_cast<std::uint32_t>(seed);
    auto const key1 = static_cast<std::uint32_t>(seed >> 32);
    std::int64_t k = 0;
    while (k < n) {
      philox_block const block = philox4x32_10(stream_counter(word), key0, key1);
      for (unsigned lane = static_cast<unsigned>(word & 3u); lane < 4u && k < n;
           ++lane, ++k, ++word)
        out[k] = jitter_multiplier(eps, uniform_from_word(block.x[lane]));
    }
  }
};

inline router_jitter_source jitter_source(problem const& p, router_jitter const& j) {
  return {p.training && j.eps > 0.0f, j.eps, j.u, p.seed, j.offset, p.hidden};
}

/// Checks a pointer to `n` elements of T: non-null and aligned to alignof(T).
template <class T>
status check_pointer(T const* p, char const* name) noexcept {
  if (p == nullptr) return status::error(errc::invalid_argument, "%s: expected non-null", name);
  if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0)
    return status::error(errc::invalid_argument, "%s: expected %zu-byte alignment for %s", name,
                         alignof(T), storage_name<T>());
  return {};
}

/// True when [p, p + n) and [q, q + m) share a byte (by address; both non-null).
template <class P, class Q>
bool overlaps(P const* p, std::int64_t n, Q const* q, std::int64_t m) noexcept {
  auto const a = reinterpret_cast<std::uintptr_t>(p);
  auto const b = reinterpret_cast<std::uintptr_t>(q);
  std::uintptr_t const a_end = a + static_cast<std::uintptr_t>(n) * sizeof(P);
  std::uintptr_t const b_end = b + static_cast<std::uintptr_t>(m) * sizeof(Q);
  return a < b_end && b < a_end;
}

/// The checks forward and backward share: the policy, T and H, and the jitter (its pointer
/// only when T > 0). `who` is the args struct's name for messages.
inline status check_router_gemm_common(host_policy policy, problem const& p, router_jitter const& j,
                                       char const* who) noexcept {
  if (policy.threads < 0)
    return status::error(errc::invalid_argument, "host_policy.threads: expected >= 0, got %d",
                         policy.threads);
  if (p.tokens < 0 || p.tokens > max_tokens)
    return status::error(errc::invalid_argument,
                         "problem.tokens: expected 0 <= T <= 2^47, got %lld",
                         static_cast<long long>(p.tokens));
  if (p.hidden < 1)
    return status::error(errc::invalid_argument, "problem.hidden: expected H >= 1, got %lld",
                         static_cast<long long>(p.hidden));
  if (p.tokens > 0 && p.hidden > ((std::int64_t{1} << 62) - 1) / p.tokens)
    return status::error(errc::invalid_argument,
                         "problem.hidden: expected T * H < 2^62, got T = %lld, H = %lld",
                         static_cast<long long>(p.tokens), static_cast<long long>(p.hidden));
  if (!std::isfinite(j.eps) || j.eps < 0.0f || j.eps >= 1.0f)
    return status::error(errc::invalid_argument,
                         "%s.jitter.eps: expected a finite value in [0, 1), got %g", who,
                         static_cast<double>(j.eps));
  if (j.u != nullptr && j.eps == 0.0f)
    return status::error(errc::invalid_argument,
                         "%s.jitter.u: given, but jitter.eps = 0 turns jitter off", who);
  if (j.u != nullptr && reinterpret_cast<std::uintptr_t>(j.u) % alignof(float) != 0)
    return status::error(errc::invalid_argument,
                         "%s.jitter.u: expected %zu-byte alignment for fp32", who, alignof(float));
  return {};
}

template <config C>
status check(host_policy policy, problem const& p, router_gemm_args<C> const& a) noexcept {
  MOE_TRY(check_router_gemm_common(policy, p, a.jitter, "router_gemm_args"));
  if (p.tokens == 0) return {};
  MOE_TRY(check_pointer(a.x, "router_gemm_args.x"));
  MOE_TRY(check_pointer(a.w_gate, "router_gemm_args.w_gate"));
  MOE_TRY(check_pointer(a.logits, "router_gemm_args.logits"));
  std::int64_t const T = p.tokens, H = p.hidden, E = C.experts;
  if (overlaps(a.logits, T * E, a.x, T * H) || overlaps(a.logits, T * E, a.w_gate, H * E) ||
      (a.jitter.u != nullptr && overlaps(a.logits, T * E, a.jitter.u, T * H)))
    return status::error(errc::invalid_argument,
                         "router_gemm_args.logits: expected no overlap with x, w_gate or jitter.u");
  return {};
}

template <config C>
status check(host_policy policy, problem const& p, router_gemm_backward_args<C> const& a) noexcept {
  MOE_TRY(check_router_gemm_common(policy, p, a.jitter, "router_gemm_backward_args"));
  if (p.tokens == 0) return {};
  MOE_TRY(check_pointer(a.x, "router_gemm_backward_args.x"));
  MOE_TRY(check_pointer(a.w_gate, "router_gemm_backward_args.w_gate"));
  MOE_TRY(check_pointer(a.d_logits, "router_gemm_backward_args.d_logits"));
  MOE_TRY(check_pointer(a.dx, "router_gemm_backward_args.dx"));
  MOE_TRY(check_pointer(a.d_w_gate, "router_gemm_backward_args.d_w_gate"));
  std::int64_t const T = p.tokens, H = p.hidden, E = C.experts;
  auto const any_input = [&](auto const* out, std::int64_t n) {
    return overlaps(out, n, a.x, T * H) || overlaps(out, n, a.w_gate, H * E) ||
           overlaps(out, n, a.d_logits, T * E) ||
           (a.jitter.u != nullptr && overlaps(out, n, a.jitter.u, T * H));
  };
  if (any_input(a.dx, T * H) || overlaps(a.dx, T * H, a.d_w_gate, H * E))
    return status::error(errc::invalid_argument,
                         "router_gemm_backward_args.dx: expected no overlap with x, w_gate, "
                         "d_logits, jitter.u or d_w_gate");
  if (any_input(a.d_w_gate, H * E))
    return status::error(errc::invalid_argument,
                         "router_gemm_backward_args.d_w_gate: expected no overlap with x, w_gate, "
                         "d_logits or jitter.u");
  return {};
}

}  // namespace detail

/// Router logits on the CPU: logits = x̃ · W_g, summed in accum_t<C> in ascending h.
/// T = 0 is a no-op (pointers unchecked).
/// @param policy  moe::host, or moe::host.with_threads(n) to cap OpenMP threads
/// @param p       T = p.tokens, H = p.hidden; p.training and p.seed drive the jitter
/// @param a       x [T, H], w_gate [H, E], logits [T, E] out; E = C.experts
template <config C>
status router_gemm(host_policy policy, problem const& p, router_gemm_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::check(policy, p, a));
  if (p.tokens == 0) return {};
  backend::host::router_gemm_forward(policy.threads, p.tokens, p.hidden, C.experts, a.x, a.w_gate,
                                     a.logits, detail::jitter_source(p, a.jitter));
  return {};
}

/// Router GEMM backward on the CPU: dx = (d_logits · W_gᵀ) ⊙ u, rounded once to act_t<C>
/// (overwritten); d_w_gate += x̃ᵀ · d_logits, continuing each element's sum from the caller's
/// value in ascending t, so gradients accumulate across micro-batches (zero it first for a
/// fresh gradient). T = 0 is a no-op (pointers unchecked, d_w_gate untouched).
/// @param policy  moe::host, or moe::host.with_threads(n)
/// @param p       the forward's problem
/// @param a       x [T, H], w_gate [H, E], d_logits [T, E], dx [T, H] out, d_w_gate [H, E] in/out
template <config C>
status router_gemm_backward(host_policy policy, problem const& p,
                            router_gemm_backward_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::check(policy, p, a));
  if (p.tokens == 0) return {};
  detail::router_jitter_source const jitter = detail::jitter_source(p, a.jitter);
  backend::host::router_gemm_dgrad(policy.threads, p.tokens, p.hidden, C.experts, a.w_gate,
                                   a.d_logits, a.dx, jitter);
  backend::host::router_gemm_wgrad(policy.threads, p.tokens, p.hidden, C.experts, a.x, a.d_logits,
                                   a.d_w_gate, jitter);
  return {};
}

}  // namespace moe
