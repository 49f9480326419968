// SPDX-License-Identifier: Apache-2.0
// `moe::problem`: the run-time side of an MoE layer call — sizes, expert-parallel placement,
// loss coefficients and the RNG seed. Nothing here changes generated code, so one compiled
// config serves every problem size. Also the capacity formula, in 64-bit integer arithmetic so
// that it is exact and identical on every backend.
#pragma once

#include <cmath>    // std::isfinite
#include <cstdint>  // fixed-width integers

#include "moe/config.hpp"  // moe::config, moe::ratio
#include "moe/status.hpp"  // moe::status

namespace moe {

/// Run-time sizes and coefficients of one MoE layer call.
struct problem {
  std::int64_t tokens = 0;        ///< T, tokens on this rank (0 is a valid no-op)
  std::int64_t hidden = 0;        ///< H, model width
  std::int64_t ffn = 0;           ///< F, expert FFN width (gated activations use 2F in W1)
  std::int32_t ep_rank = 0;       ///< this rank in the expert-parallel group
  std::int32_t ep_size = 1;       ///< R, ranks in the expert-parallel group
  std::int64_t group_tokens = 0;  ///< Σ T over the expert-parallel group; 0 = T·R (equal shares)
  std::int32_t min_capacity = 4;  ///< lower bound of C (DeepSpeed's min_capacity, default 4)
  bool training = true;           ///< selects capacity_factor (true) or eval_capacity_factor
  float aux_loss_coef = 0.01f;    ///< load-balancing loss coefficient (Switch: 0.01)
  float z_loss_coef = 0.0f;       ///< router z-loss coefficient (ST-MoE: 0.001)
  std::uint64_t seed = 0;         ///< Philox key for every noise draw of this call
};

/// The capacity factor in force for `p` (training or evaluation).
template <config C>
constexpr ratio active_capacity_factor(problem const& p) noexcept {
  return p.training ? C.capacity_factor : C.eval_capacity_factor;
}

/// True when no route is ever dropped for `p` (capacity factor 0).
template <config C>
constexpr bool is_dropless(problem const& p) noexcept {
  return active_capacity_factor<C>(p).is_zero();
}

/// Capacity per expert, C = max(min_capacity, ceil(cf * T * K / E)), exactly, in integers.
/// Dropless problems return T: an upper bound, since a token's K experts are distinct (the
/// router reports the real C, the largest expert count).
template <config C>
constexpr std::int64_t capacity(problem const& p) noexcept {
  static_assert(check<C>());
  ratio const cf = active_capacity_factor<C>(p);
  if (cf.is_zero()) return p.tokens;
  // T < 2^47 (validate) and K <= 32 keep T*K < 2^52; times num < 2^31 needs 128 bits.
  __extension__ using u128 = unsigned __int128;
  u128 const numer = static_cast<u128>(p.tokens) * static_cast<u128>(C.top_k) *
                     static_cast<u128>(cf.num);
  u128 const denom = static_cast<u128>(C.experts) * static_cast<u128>(cf.den);
  auto const c = static_cast<std::int64_t>((numer + denom - 1) / denom);
  return c > p.min_capacity ? c : static_cast<std::int64_t>(p.min_capacity);
}

/// Tokens of the whole expert-parallel group: group_tokens, or T·R when it is 0.
constexpr std::int64_t group_tokens(problem const& p) noexcept {
  return p.group_tokens > 0 ? p.group_tokens : p.tokens * p.ep_size;
}

/// Experts held by one rank, E_l = E / R.
template <config C>
constexpr std::int32_t local_experts(problem const& p) noexcept {
  return C.experts / p.ep_size;
}

/// The largest T accepted: keeps T*K*H-style products of 64-bit index math far from overflow.
inline constexpr std::int64_t max_tokens = std::int64_t{1} << 47;

/// Checks a problem against config C; the message names the field and the expected range.
template <config C>
status validate(problem const& p) noexcept {
  static_assert(check<C>());
  if (p.tokens < 0 || p.tokens > max_tokens)
    return status::error(errc::invalid_argument, "problem.tokens: expected 0 <= T <= 2^47, got %lld",
                         static_cast<long long>(p.tokens));
  if (p.hidden < 1)
    return status::error(errc::invalid_argument, "problem.hidden: expected H >= 1, got %lld",
                         static_cast<long long>(p.hidden));
  if (p.ffn < 1)
    return status::error(errc::invalid_argument, "problem.ffn: expected F >= 1, got %lld",
                         static_cast<long long>(p.ffn));
  if (p.ep_size < 1 || C.experts % p.ep_size != 0)
    return status::error(errc::invalid_argument,
                         "problem.ep_size: expected R >= 1 dividing experts = %d, got %d",
                         C.experts, p.ep_size);
  if (p.ep_rank < 0 || p.ep_rank >= p.ep_size)
    return status::error(errc::invalid_argument, "problem.ep_rank: expected 0 <= rank < %d, got %d",
                         p.ep_size, p.ep_rank);
  if (p.group_tokens < 0 || (p.group_tokens > 0 && p.group_tokens < p.tokens) ||
      p.group_tokens > max_tokens)
    return status::error(errc::invalid_argument,
                         "problem.group_tokens: expected 0 or T <= value <= 2^47 (T = %lld), got "
                         "%lld",
                         static_cast<long long>(p.tokens), static_cast<long long>(p.group_tokens));
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

}  // namespace moe
