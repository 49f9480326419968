// SPDX-License-Identifier: Apache-2.0
// Ops: permute, unpermute (= combine) and their backward passes — moving token rows into the
// plan's permuted buffer (moe/plan.hpp) and back. With a plan's row_of [T, K] and
// source_of [rows]:
//   permute           out[row] = x[source_of[row] / K]                  (padding rows: 0)
//   unpermute/combine y[t]     = Σ_k w[t,k] · o[row_of[t,k]]            (dropped routes add 0)
//   combine_backward  d_o[row] = w[t,k] · dy[t],  d_w[t,k] = <dy[t], o[row_of[t,k]]>
//   permute_backward  dx[t]    = Σ_k d_out[row_of[t,k]]
// Sums run over k in order 0..K-1, in float (double for double tensors), each a gather — no
// atomics — so every output is the same bits run after run. All four are memory-bound: the
// CUDA kernels (moe/cuda/permute.cuh) aim at the copy bandwidth.
//
// This header holds the argument structs, their checks and the index math both backends
// share; the host loops are in moe/host/permute.hpp (included at the end).
#pragma once

#include <cstdint>      // std::int32_t, std::int64_t, std::uintptr_t
#include <type_traits>  // std::is_same_v

#include "moe/config.hpp"         // moe::max_top_k
#include "moe/detail/macros.hpp"  // MOE_HOST_DEVICE
#include "moe/policy.hpp"         // moe::host_policy
#include "moe/precision.hpp"      // moe::bf16, fp16, to_float, from_float
#include "moe/status.hpp"         // moe::status, MOE_TRY

namespace moe {

/// The element types the dispatch ops move: the compute precisions' storage types.
template <class T>
concept dispatch_storage = std::is_same_v<T, double> || std::is_same_v<T, float> ||
    std::is_same_v<T, bf16> || std::is_same_v<T, fp16>;

/// Arguments of permute. `out` must not overlap `x`.
template <class T>
struct permute_args {
  T const* x = nullptr;                     ///< [T, H] tokens
  std::int32_t const* source_of = nullptr;  ///< [rows] the plan's route of each row, -1 = padding
  T* out = nullptr;                         ///< [rows, H] out: the permuted buffer
  std::int64_t tokens = 0;                  ///< T
  std::int64_t hidden = 0;                  ///< H >= 1
  std::int64_t rows = 0;                    ///< rows of out (the plan's source_rows)
  std::int32_t top_k = 1;                   ///< K, in [1, 32]
};

/// Arguments of unpermute / combine. `y` must not overlap `o`.
template <class T>
struct combine_args {
  T const* o = nullptr;                  ///< [rows, H] expert outputs, in permuted order
  std::int32_t const* row_of = nullptr;  ///< [T, K] the plan's row of each route, -1 = dropped
  float const* weight = nullptr;         ///< [T, K] combine weights; null = all 1
  T* y = nullptr;                        ///< [T, H] out
  std::int64_t tokens = 0;               ///< T
  std::int64_t hidden = 0;               ///< H >= 1
  std::int64_t rows = 0;                 ///< rows of o
  std::int32_t top_k = 1;                ///< K, in [1, 32]
};

/// Arguments of combine_backward. Outputs must not overlap inputs.
template <class T>
struct combine_backward_args {
  T const* dy = nullptr;                    ///< [T, H] gradient of y
  T const* o = nullptr;                     ///< [rows, H] the forward's expert outputs (read
                                            ///< only when d_weight is non-null)
  std::int32_t const* row_of = nullptr;     ///< [T, K] the plan's row of each route
  std::int32_t const* source_of = nullptr;  ///< [rows] the plan's route of each row
  float const* weight = nullptr;            ///< [T, K] the forward's weights; null = all 1
  T* d_o = nullptr;                         ///< [rows, H] out: w[t,k]·dy[t]; padding rows 0
  float* d_weight = nullptr;                ///< [T, K] out, optional: <dy[t], o[row]>; dropped 0
  std::int64_t tokens = 0;                  ///< T
  std::int64_t hidden = 0;                  ///< H >= 1
  std::int64_t rows = 0;                    ///< rows of o and d_o
  std::int32_t top_k = 1;                   ///< K, in [1, 32]
};

/// Arguments of permute_backward. `dx` must not overlap `d_out`.
template <class T>
struct permute_backward_args {
  T const* d_out = nullptr;              ///< [rows, H] gradient of permute's out
  std::int32_t const* row_of = nullptr;  ///< [T, K] the plan's row of each route
  T* dx = nullptr;                       ///< [T, H] out
  std::int64_t tokens = 0;               ///< T
  std::int64_t hidden = 0;               ///< H >= 1
  std::int64_t rows = 0;                 ///< rows of d_out
  std::int32_t top_k = 1;                ///< K, in [1, 32]
};

namespace detail {

/// What sums and dot products accumulate in: float, or double for double tensors.
template <class T>
using dispatch_accum_t = decltype(to_float(T{}));

/// Elements of T in one 16-byte vector.
template <class T>
inline constexpr int vector_elems = static_cast<int>(16 / sizeof(T));

/// True when rows of `hidden` elements can move as 16-byte vectors: the row length is a
/// multiple of 16 bytes and every (non-null) base pointer is 16-byte aligned, so every row
/// start is aligned too. Otherwise the kernels move one element at a time.
template <class T, class... P>
MOE_HOST_DEVICE bool can_vectorize(std::int64_t hidden, P const*... ptrs) {
  bool const row_ok = (hidden * static_cast<std::int64_t>(sizeof(T))) % 16 == 0;
  return row_ok && ((reinterpret_cast<std::uintptr_t>(ptrs) % 16 == 0) && ...);
}

/// Threads that cooperate on one row of `vectors` vectors: the smallest power of two from 32
/// (a warp) to 256 (a block) that covers the row, so small rows do not idle a block's threads
/// and large rows keep a whole block streaming.
MOE_HOST_DEVICE constexpr int threads_per_row(std::int64_t vectors) {
  int t = 32;
  while (t < 256 && t < vectors) t *= 2;
  return t;
}

/// The token a route index belongs to, or -1 for padding and for indices outside [0, T·K)
/// (which the host backend rejects and the kernels treat as padding, so they stay in bounds).
MOE_HOST_DEVICE constexpr std::int64_t source_token(std::int32_t source, std::int64_t routes,
                                                    std::int32_t top_k) {
  return source >= 0 && source < routes ? source / top_k : -1;
}

/// The row of a route, or -1 when dropped or outside [0, rows) (see source_token).
MOE_HOST_DEVICE constexpr std::int64_t route_row(std::int32_t row, std::int64_t rows) {
  return row >= 0 && row < rows ? row : -1;
}

inline constexpr std::int64_t dispatch_int32_limit = 2147483647;

// The sizes every dispatch op shares; `op` names the args struct in messages.
inline status check_sizes(char const* op, std::int64_t tokens, std::int64_t hidden,
                          std::int64_t rows, std::int32_t top_k) noexcept {
  if (tokens < 0)
    return status::error(errc::invalid_argument, "%s.tokens: expected >= 0, got %lld", op,
                         static_cast<long long>(tokens));
  if (hidden < 1 || hidden > dispatch_int32_limit)
    return status::error(errc::invalid_argument, "%s.hidden: expected 1 <= H < 2^31, got %lld", op,
                         static_cast<long long>(hidden));
  if (rows < 0 || rows > dispatch_int32_limit)
    return status::error(errc::invalid_argument, "%s.rows: expected 0 <= rows < 2^31, got %lld", op,
                         static_cast<long long>(rows));
  if (top_k < 1 || top_k > max_top_k)
    return status::error(errc::invalid_argument, "%s.top_k: expected 1 <= K <= %d, got %d", op,
                         max_top_k, top_k);
  if (tokens > dispatch_int32_limit / top_k)
    return status::error(errc::invalid_argument,
                         "%s.tokens: T*K = %lld routes do not fit the int32 route indices", op,
                         static_cast<long long>(tokens) * top_k);
  return {};
}

inline status need(bool ok, char const* what, char const* op) noexcept {
  if (ok) return {};
  return status::error(errc::invalid_argument, "%s.%s: expected non-null", op, what);
}

template <class T>
status check(permute_args<T> const& a) noexcept {
  char const* op = "permute_args";
  MOE_TRY(check_sizes(op, a.tokens, a.hidden, a.rows, a.top_k));
  MOE_TRY(need(a.tokens == 0 || a.x != nullptr, "x", op));
  MOE_TRY(need(a.rows == 0 || (a.source_of != nullptr && a.out != nullptr), "source_of/out", op));
  return {};
}

template <class T>
status check(combine_args<T> const& a) noexcept {
  char const* op = "combine_args";
  MOE_TRY(check_sizes(op, a.tokens, a.hidden, a.rows, a.top_k));
  MOE_TRY(need(a.tokens == 0 || (a.row_of != nullptr && a.y != nullptr), "row_of/y", op));
  MOE_TRY(need(a.rows == 0 || a.o != nullptr, "o", op));
  return {};
}

template <class T>
status check(combine_backward_args<T> const& a) noexcept {
  char const* op = "combine_backward_args";
  MOE_TRY(check_sizes(op, a.tokens, a.hidden, a.rows, a.top_k));
  MOE_TRY(need(a.rows == 0 || (a.source_of != nullptr && a.d_o != nullptr), "source_of/d_o", op));
  MOE_TRY(need(a.rows == 0 || a.tokens == 0 || a.dy != nullptr, "dy", op));
  bool const dot = a.d_weight != nullptr && a.tokens > 0;
  MOE_TRY(need(!dot || (a.row_of != nullptr && a.dy != nullptr), "row_of/dy", op));
  MOE_TRY(need(!dot || a.rows == 0 || a.o != nullptr, "o", op));
  return {};
}

template <class T>
status check(permute_backward_args<T> const& a) noexcept {
  char const* op = "permute_backward_args";
  MOE_TRY(check_sizes(op, a.tokens, a.hidden, a.rows, a.top_k));
  MOE_TRY(need(a.tokens == 0 || (a.row_of != nullptr && a.dx != nullptr), "row_of/dx", op));
  MOE_TRY(need(a.rows == 0 || a.d_out != nullptr, "d_out", op));
  return {};
}

}  // namespace detail

/// Gathers token rows into the permuted buffer on the CPU (an exact copy; zeros for padding).
/// Returns invalid_argument naming the row if a source_of entry is outside [-1, T·K).
template <dispatch_storage T>
status permute(host_policy policy, permute_args<T> const& a) noexcept;

/// y[t] = Σ_k w[t,k] · o[row_of[t,k]] on the CPU, in float (double for double) in k order,
/// then rounded once to T; a token whose routes are all dropped gets +0. Returns
/// invalid_argument naming the route if a row_of entry is outside [-1, rows).
template <dispatch_storage T>
status unpermute(host_policy policy, combine_args<T> const& a) noexcept;

/// The same op as unpermute, by the name the MoE literature gives it.
template <dispatch_storage T>
status combine(host_policy policy, combine_args<T> const& a) noexcept {
  return unpermute(policy, a);
}

/// Backward of combine on the CPU: d_o[row] = w·dy[t] rounded once to T (0 for padding rows),
/// d_weight[t,k] = <dy[t], o[row]> accumulated in h order in float (double for double), 0 for
/// dropped routes.
template <dispatch_storage T>
status combine_backward(host_policy policy, combine_backward_args<T> const& a) noexcept;

/// Backward of permute on the CPU: dx[t] = Σ_k d_out[row_of[t,k]], a gather-sum in k order.
template <dispatch_storage T>
status permute_backward(host_policy policy, permute_backward_args<T> const& a) noexcept;

}  // namespace moe

#include "moe/host/permute.hpp"  // the host overloads
