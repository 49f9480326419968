// SPDX-License-Identifier: Apache-2.0
// Op: the expert FFN on the expert-grouped buffers, forward and backward, composed only of the
// grouped GEMM pieces (moe/grouped_gemm.hpp):
//
//   forward   pre = X · W1_eᵀ + b1_e     [M, F_w]   grouped_gemm, epilogue act → h [M, F]
//             Y   = h · W2_eᵀ + b2_e     [M, H]     grouped_gemm, identity epilogue
//   backward  (h, pre as the recompute mode says: kept, h = act(pre), or the first GEMM again)
//             d pre = act'(pre) ⊙ (dY · W2_e)       grouped_gemm_dgrad, activation backward fused
//             dW2_e (+)= dY_eᵀ · h_e,  db2 (+)= Σ dY   grouped_gemm_wgrad
//             dW1_e (+)= d pre_eᵀ · X_e, db1 (+)= Σ d pre   grouped_gemm_wgrad
//             dX  = d pre · W1_e                     grouped_gemm_dgrad
//
// F_w = 2F for swiglu/geglu (W1_e rows [0, F) gate, [F, 2F) up, see grouped_gemm.hpp), else F.
// The activation reads the pre-activation as stored (rounded to act_t<C>), so the three
// recompute modes give bitwise-identical outputs and gradients; they differ only in memory
// kept between forward and backward and in the work the backward repeats.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t, std::uint8_t

#include "moe/config.hpp"        // moe::config, activation, is_gated, check<C>()
#include "moe/grouped_gemm.hpp"  // grouped_gemm, _dgrad, _wgrad, grouped_activation, checks
#include "moe/policy.hpp"        // moe::host_policy
#include "moe/status.hpp"        // moe::status, MOE_TRY
#include "moe/storage.hpp"       // act_t, weight_t, accum_t

namespace moe {

/// What the forward keeps for the backward, and so what the backward recomputes.
enum class ffn_recompute : std::uint8_t {
  none,        ///< forward keeps pre [M, F_w] and h [M, F]; backward recomputes nothing
  activation,  ///< forward keeps pre; backward recomputes h = act(pre) (element-wise)
  fc1,         ///< forward keeps neither; backward recomputes pre and h with the first GEMM
};

constexpr char const* to_string(ffn_recompute r) noexcept {
  return r == ffn_recompute::none ? "none" : r == ffn_recompute::activation ? "activation" : "fc1";
}

/// Arguments of expert_ffn (forward). Caller-owned memory of the backend; sizes are host values.
template <config C>
struct expert_ffn_args {
  std::int64_t experts = 0;  ///< E_l, local experts
  std::int64_t rows = 0;     ///< M, rows of the expert-grouped buffers
  std::int64_t hidden = 0;   ///< H
  std::int64_t ffn = 0;      ///< F
  std::int64_t const* offsets =
      nullptr;                      ///< [E_l + 1] rows of expert e: [offsets[e], offsets[e+1])
  act_t<C> const* x = nullptr;      ///< [M, H]
  weight_t<C> const* w1 = nullptr;  ///< [E_l, F_w, H]
  weight_t<C> const* b1 = nullptr;  ///< [E_l, F_w] or null
  weight_t<C> const* w2 = nullptr;  ///< [E_l, H, F]
  weight_t<C> const* b2 = nullptr;  ///< [E_l, H] or null
  activation act = C.ffn_activation;
  ffn_recompute recompute = ffn_recompute::none;
  act_t<C>* y = nullptr;    ///< [M, H] out
  act_t<C>* pre = nullptr;  ///< [M, F_w] out, kept for backward (none, activation); unused with fc1
  act_t<C>* h = nullptr;    ///< [M, F] out: act(pre), kept for backward with none, else scratch
};

/// Arguments of expert_ffn_backward. The forward's inputs, act and recompute mode, plus:
template <config C>
struct expert_ffn_backward_args {
  std::int64_t experts = 0;               ///< E_l
  std::int64_t rows = 0;                  ///< M
  std::int64_t hidden = 0;                ///< H
  std::int64_t ffn = 0;                   ///< F
  std::int64_t const* offsets = nullptr;  ///< [E_l + 1]
  act_t<C> const* x = nullptr;            ///< [M, H]
  weight_t<C> const* w1 = nullptr;        ///< [E_l, F_w, H]
  weight_t<C> const* b1 = nullptr;        ///< [E_l, F_w] or null (read with fc1 only)
  weight_t<C> const* w2 = nullptr;        ///< [E_l, H, F]
  activation act = C.ffn_activation;
  ffn_recompute recompute = ffn_recompute::none;
  act_t<C> const* dy = nullptr;  ///< [M, H] gradient of Y
  act_t<C>* pre = nullptr;       ///< [M, F_w] the forward's (none, activation) or scratch (fc1)
  act_t<C>* h = nullptr;         ///< [M, F] the forward's (none) or scratch (activation, fc1)
  act_t<C>* d_pre = nullptr;     ///< [M, F_w] scratch: gradient of pre
  act_t<C>* dx = nullptr;        ///< [M, H] out
  accum_t<C>* dw1 = nullptr;     ///< [E_l, F_w, H] out (in/out with accumulate)
  accum_t<C>* db1 = nullptr;     ///< [E_l, F_w] out, or null
  accum_t<C>* dw2 = nullptr;     ///< [E_l, H, F] out (in/out with accumulate)
  accum_t<C>* db2 = nullptr;     ///< [E_l, H] out, or null
  bool accumulate = false;       ///< weight and bias gradients add to the caller's values
};

namespace detail::grouped {

/// One buffer of an op, for the overlap checks: outputs must not share a byte with any other.
struct region {
  void const* p;
  std::int64_t bytes;
  char const* name;
  bool output;
};

template <class T>
region make_region(T const* p, std::int64_t elements, char const* name, bool output) noexcept {
  return {p, elements * static_cast<std::int64_t>(sizeof(T)), name, output};
}

template <std::size_t N>
status check_regions(char const* who, region const (&r)[N]) noexcept {
  for (std::size_t i = 0; i < N; ++i) {
    if (!r[i].output || r[i].p == nullptr) continue;
    for (std::size_t j = 0; j < N; ++j)
      if (j != i && overlaps(static_cast<char const*>(r[i].p), r[i].bytes,
                             static_cast<char const*>(r[j].p), r[j].bytes))
        return status::error(errc::invalid_argument, "%s.%s: expected no overlap with %s", who,
                             r[i].name, r[j].name);
  }
  return {};
}

inline status check_recompute(char const* who, ffn_recompute r) noexcept {
  if (static_cast<unsigned>(r) > static_cast<unsigned>(ffn_recompute::fc1))
    return status::error(errc::invalid_argument,
                         "%s.recompute: expected none, activation or fc1, got %d", who,
                         static_cast<int>(r));
  return {};
}

template <config C, execution_policy P>
status check(P policy, expert_ffn_args<C> const& a) noexcept {
  char const* const who = "expert_ffn_args";
  MOE_TRY(check_common(policy, who, a.act));
  MOE_TRY(check_recompute(who, a.recompute));
  bool const gated = is_gated(a.act);
  MOE_TRY(check_shape<C>(who, a.experts, a.rows, a.ffn, a.hidden, gated, "ffn", "hidden"));
  MOE_TRY(check_shape<C>(who, a.experts, a.rows, a.hidden, a.ffn, false, "hidden", "ffn"));
  MOE_TRY(check_offsets(policy, who, a.offsets, a.experts, a.rows));
  std::int64_t const E = a.experts, M = a.rows, H = a.hidden, F = a.ffn, fw = gated ? 2 * F : F;
  MOE_TRY(check_pointer(a.w1, who, "w1"));
  MOE_TRY(check_pointer(a.w2, who, "w2"));
  MOE_TRY(check_optional(a.b1, who, "b1"));
  MOE_TRY(check_optional(a.b2, who, "b2"));
  MOE_TRY(check_optional(a.pre, who, "pre"));
  if (M > 0) {
    MOE_TRY(check_pointer(a.x, who, "x"));
    MOE_TRY(check_pointer(a.y, who, "y"));
    MOE_TRY(check_pointer(a.h, who, "h"));
    if (a.recompute != ffn_recompute::fc1) MOE_TRY(check_pointer(a.pre, who, "pre"));
  }
  bool const writes_pre = a.recompute != ffn_recompute::fc1;
  region const r[] = {
      make_region(a.x, M * H, "x", false),    make_region(a.w1, E * fw * H, "w1", false),
      make_region(a.b1, E * fw, "b1", false), make_region(a.w2, E * H * F, "w2", false),
      make_region(a.b2, E * H, "b2", false),  make_region(a.offsets, E + 1, "offsets", false),
      make_region(a.y, M * H, "y", true),     make_region(a.pre, M * fw, "pre", writes_pre),
      make_region(a.h, M * F, "h", true)};
  return check_regions(who, r);
}

template <config C, execution_policy P>
status check(P policy, expert_ffn_backward_args<C> const& a) noexcept {
  char const* const who = "expert_ffn_backward_args";
  MOE_TRY(check_common(policy, who, a.act));
  MOE_TRY(check_recompute(who, a.recompute));
  bool const gated = is_gated(a.act);
  MOE_TRY(check_shape<C>(who, a.experts, a.rows, a.ffn, a.hidden, gated, "ffn", "hidden"));
  MOE_TRY(check_shape<C>(who, a.experts, a.rows, a.hidden, a.ffn, false, "hidden", "ffn"));
  MOE_TRY(check_offsets(policy, who, a.offsets, a.experts, a.rows));
  std::int64_t const E = a.experts, M = a.rows, H = a.hidden, F = a.ffn, fw = gated ? 2 * F : F;
  MOE_TRY(check_pointer(a.w1, who, "w1"));
  MOE_TRY(check_pointer(a.w2, who, "w2"));
  MOE_TRY(check_optional(a.b1, who, "b1"));
  MOE_TRY(check_pointer(a.dw1, who, "dw1"));
  MOE_TRY(check_pointer(a.dw2, who, "dw2"));
  MOE_TRY(check_optional(a.db1, who, "db1"));
  MOE_TRY(check_optional(a.db2, who, "db2"));
  if (M > 0) {
    MOE_TRY(check_pointer(a.x, who, "x"));
    MOE_TRY(check_pointer(a.dy, who, "dy"));
    MOE_TRY(check_pointer(a.pre, who, "pre"));
    MOE_TRY(check_pointer(a.h, who, "h"));
    MOE_TRY(check_pointer(a.d_pre, who, "d_pre"));
    MOE_TRY(check_pointer(a.dx, who, "dx"));
  }
  bool const pre_out = a.recompute == ffn_recompute::fc1;
  bool const h_out = a.recompute != ffn_recompute::none;
  region const r[] = {make_region(a.x, M * H, "x", false),
                      make_region(a.w1, E * fw * H, "w1", false),
                      make_region(a.b1, E * fw, "b1", false),
                      make_region(a.w2, E * H * F, "w2", false),
                      make_region(a.offsets, E + 1, "offsets", false),
                      make_region(a.dy, M * H, "dy", false),
                      make_region(a.pre, M * fw, "pre", pre_out),
                      make_region(a.h, M * F, "h", h_out),
                      make_region(a.d_pre, M * fw, "d_pre", true),
                      make_region(a.dx, M * H, "dx", true),
                      make_region(a.dw1, E * fw * H, "dw1", true),
                      make_region(a.db1, E * fw, "db1", true),
                      make_region(a.dw2, E * H * F, "dw2", true),
                      make_region(a.db2, E * H, "db2", true)};
  return check_regions(who, r);
}

}  // namespace detail::grouped

/// Scratch bytes beyond the arguments: none on the host (h, pre and d_pre are arguments).
template <config C>
constexpr std::size_t workspace_bytes(host_policy, expert_ffn_args<C> const&) noexcept {
  return 0;
}
template <config C>
constexpr std::size_t workspace_bytes(host_policy, expert_ffn_backward_args<C> const&) noexcept {
  return 0;
}

namespace detail::grouped {

/// The expert FFN forward as grouped-GEMM calls on policy P, after the checks: written once
/// for every backend (the CUDA overload in moe/cuda/expert_ffn.cuh calls it too).
template <config C, class P>
status expert_ffn_steps(P policy, expert_ffn_args<C> const& a) noexcept {
  MOE_TRY(grouped_gemm(
      policy, grouped_gemm_args<C>{.experts = a.experts,
                                   .rows = a.rows,
                                   .n = a.ffn,
                                   .k = a.hidden,
                                   .offsets = a.offsets,
                                   .x = a.x,
                                   .w = a.w1,
                                   .bias = a.b1,
                                   .act = a.act,
                                   .y = a.h,
                                   .pre = a.recompute == ffn_recompute::fc1 ? nullptr : a.pre}));
  return grouped_gemm(policy, grouped_gemm_args<C>{.experts = a.experts,
                                                   .rows = a.rows,
                                                   .n = a.hidden,
                                                   .k = a.ffn,
                                                   .offsets = a.offsets,
                                                   .x = a.h,
                                                   .w = a.w2,
                                                   .bias = a.b2,
                                                   .act = activation::identity,
                                                   .y = a.y,
                                                   .pre = nullptr});
}

/// The expert FFN backward as grouped-GEMM calls on policy P, after the checks.
template <config C, class P>
status expert_ffn_backward_steps(P policy, expert_ffn_backward_args<C> const& a) noexcept {
  bool const gated = is_gated(a.act);
  std::int64_t const fw = gated ? 2 * a.ffn : a.ffn;
  if (a.recompute == ffn_recompute::fc1) {
    MOE_TRY(grouped_gemm(policy, grouped_gemm_args<C>{.experts = a.experts,
                                                      .rows = a.rows,
                                                      .n = a.ffn,
                                                      .k = a.hidden,
                                                      .offsets = a.offsets,
                                                      .x = a.x,
                                                      .w = a.w1,
                                                      .bias = a.b1,
                                                      .act = a.act,
                                                      .y = a.h,
                                                      .pre = a.pre}));
  } else if (a.recompute == ffn_recompute::activation) {
    MOE_TRY(grouped_activation(policy, grouped_activation_args<C>{.experts = a.experts,
                                                                  .rows = a.rows,
                                                                  .n = a.ffn,
                                                                  .offsets = a.offsets,
                                                                  .act = a.act,
                                                                  .pre = a.pre,
                                                                  .h = a.h}));
  }
  // d pre = act'(pre) ⊙ (dY · W2_e): the second layer's dgrad with the activation backward fused.
  MOE_TRY(grouped_gemm_dgrad(
      policy, grouped_gemm_dgrad_args<C>{.experts = a.experts,
                                         .rows = a.rows,
                                         .n = a.hidden,
                                         .k = a.ffn,
                                         .offsets = a.offsets,
                                         .dy = a.dy,
                                         .w = a.w2,
                                         .act = a.act,
                                         .pre = a.act == activation::identity ? nullptr : a.pre,
                                         .dx = a.d_pre}));
  MOE_TRY(grouped_gemm_wgrad(policy, grouped_gemm_wgrad_args<C>{.experts = a.experts,
                                                                .rows = a.rows,
                                                                .n = a.hidden,
                                                                .k = a.ffn,
                                                                .offsets = a.offsets,
                                                                .x = a.h,
                                                                .dy = a.dy,
                                                                .dw = a.dw2,
                                                                .d_bias = a.db2,
                                                                .accumulate = a.accumulate}));
  MOE_TRY(grouped_gemm_wgrad(policy, grouped_gemm_wgrad_args<C>{.experts = a.experts,
                                                                .rows = a.rows,
                                                                .n = fw,
                                                                .k = a.hidden,
                                                                .offsets = a.offsets,
                                                                .x = a.x,
                                                                .dy = a.d_pre,
                                                                .dw = a.dw1,
                                                                .d_bias = a.db1,
                                                                .accumulate = a.accumulate}));
  return grouped_gemm_dgrad(policy, grouped_gemm_dgrad_args<C>{.experts = a.experts,
                                                               .rows = a.rows,
                                                               .n = fw,
                                                               .k = a.hidden,
                                                               .offsets = a.offsets,
                                                               .dy = a.d_pre,
                                                               .w = a.w1,
                                                               .act = activation::identity,
                                                               .pre = nullptr,
                                                               .dx = a.dx});
}

}  // namespace detail::grouped

/// The expert FFN forward on the CPU: h = act(X · W1_eᵀ + b1_e), Y = h · W2_eᵀ + b2_e per
/// expert, for the rows of each expert (other rows untouched). Keeps pre unless
/// recompute = fc1 (then `pre` is not written, and may be null).
/// @param policy  moe::host, or moe::host.with_threads(n)
/// @param a       x [M, H], w1 [E_l, F_w, H], b1 [E_l, F_w] or null, w2 [E_l, H, F],
///                b2 [E_l, H] or null, y [M, H] out, pre [M, F_w] out, h [M, F] out
template <config C>
status expert_ffn(host_policy policy, expert_ffn_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::grouped::check(policy, a));
  return detail::grouped::expert_ffn_steps(policy, a);
}

/// The expert FFN backward on the CPU: dx (overwritten, rows of the experts), and dW1, db1, dW2,
/// db2 (overwritten, or added to with a.accumulate; db1/db2 skipped when null). Every sum is
/// in accum_t<C> in a fixed order; intermediates (h, d pre) are rounded to act_t<C> as the
/// CUDA backend stores them.
/// @param a  see expert_ffn_backward_args; pre, h are read or recomputed per a.recompute,
///           d_pre is scratch
template <config C>
status expert_ffn_backward(host_policy policy, expert_ffn_backward_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::grouped::check(policy, a));
  return detail::grouped::expert_ffn_backward_steps(policy, a);
}

}  // namespace moe
