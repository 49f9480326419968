// SPDX-License-Identifier: Apache-2.0
// CUDA overloads of expert_ffn and expert_ffn_backward (moe/expert_ffn.hpp), composed of the
// CUDA grouped GEMM ops exactly as the host overloads compose the host ones:
//
//   forward   grouped_gemm (act epilogue, pre kept unless recompute = fc1) → h;
//             grouped_gemm (identity) → y
//   backward  recompute (fc1: the first GEMM again; activation: grouped_activation);
//             dgrad of W2 with the activation backward fused → d pre; wgrad of W2 (+ db2);
//             wgrad of W1 (+ db1); dgrad of W1 → dx
//
// Every step is enqueued on the policy's stream; nothing is allocated (h, pre and d_pre are
// arguments) and nothing waits for the host. The three recompute modes run the same kernels
// on the same values, so they give bitwise-identical results on one device.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t

#include "moe/cuda/grouped_gemm.cuh"  // grouped_gemm, _dgrad, _wgrad, grouped_activation (CUDA)
#include "moe/expert_ffn.hpp"         // the args structs, detail::grouped::check

namespace moe {

namespace detail::grouped {
/// The tensor-core kernel's rules for the FFN's sizes and operands (see grouped_gemm.cuh).
template <config C, class Args>
status check_ffn_cuda(Args const& a) noexcept {
  char const* const who = "expert_ffn_args";
  MOE_TRY(check_cuda_extent<C>(who, "hidden", a.hidden));
  MOE_TRY(check_cuda_extent<C>(who, "ffn", a.ffn));
  MOE_TRY(check_cuda_operand<C>(who, "x", a.x));
  MOE_TRY(check_cuda_operand<C>(who, "w1", a.w1));
  return check_cuda_operand<C>(who, "w2", a.w2);
}
}  // namespace detail::grouped

/// Scratch bytes beyond the arguments: none (h, pre and d_pre are arguments).
template <config C>
constexpr std::size_t workspace_bytes(cuda_policy, expert_ffn_args<C> const&) noexcept {
  return 0;
}
template <config C>
constexpr std::size_t workspace_bytes(cuda_policy, expert_ffn_backward_args<C> const&) noexcept {
  return 0;
}

template <config C>
status expert_ffn(cuda_policy policy, expert_ffn_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::grouped::check(policy, a));
  MOE_TRY(detail::grouped::check_ffn_cuda<C>(a));
  return detail::grouped::expert_ffn_steps(policy, a);
}

/// The expert FFN backward on the device (enqueued on policy.stream): dx (overwritten, rows of the experts), and dW1, db1, dW2,
/// db2 (overwritten, or added to with a.accumulate; db1/db2 skipped when null). Every sum is
/// in accum_t<C> in a fixed order; intermediates (h, d pre) are rounded to act_t<C> as the
/// CUDA backend stores them.
/// @param a  see expert_ffn_backward_args; pre, h are read or recomputed per a.recompute,
///           d_pre is scratch
template <config C>
status expert_ffn_backward(cuda_policy policy, expert_ffn_backward_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::grouped::check(policy, a));
  MOE_TRY(detail::grouped::check_ffn_cuda<C>(a));
  return detail::grouped::expert_ffn_backward_steps(policy, a);
}

}  // namespace moe
