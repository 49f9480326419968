// SPDX-License-Identifier: Apache-2.0
// Op: the grouped GEMM over the local experts — the expert FFN's two linear layers, forward and
// backward — on the expert-grouped buffers that token dispatch produces. Rows of expert e are
// [offsets[e], offsets[e + 1]) of a buffer of M rows (`offsets` as the plan writes them: device
// memory on the CUDA backend, read there by the kernel, so nothing waits for the host):
//
//   forward  pre_e = X_e · W_eᵀ + b_e                     [M_e, N_w]
//            Y_e   = act(pre_e)                            [M_e, N]   (fused epilogue)
//   dgrad    dX_e  = dY_e · W_e                            [M_e, K]
//            (fused activation backward: dX_e = act'(pre_e) ⊙ (dY_e · W_e), see below)
//   wgrad    dW_e (+)= dY_eᵀ · X_e,   db_e (+)= Σ_rows dY_e   (reduction over M_e rows)
//   grouped_activation  h = act(pre), the forward's epilogue alone (to recompute h from pre)
//
// Layouts (row-major, 64-bit index math):
//   X, Y, dX, dY, pre   [M, ·] act_t<C>, one row per routed token slot
//   W                   [E_l, N_w, K] weight_t<C>: row n of expert e is output column n, and
//                       is contiguous in K ("K-major", torch's nn.Linear weight [out, in]), so
//                       the forward is an NT GEMM with both operands K-contiguous — the layout
//                       mma.sync's A and B fragments want (docs/grouped_gemm.md)
//   b                   [E_l, N_w] weight_t<C>
//   dW, db              [E_l, N_w, K], [E_l, N_w] accum_t<C> (fp32; fp64 for fp64 configs)
// Gated activations (swiglu, geglu) have N_w = 2N: rows [0, N) of W_e are the gate, rows
// [N, 2N) the up projection, Y = f(gate) · up. That is vLLM's fused w13 = [w1; w3] of Mixtral
// (w1 = gate, w3 = up) and Megatron-LM's fc1 of a gated linear unit (chunk 0 is activated);
// DeepSeek's gate_proj / up_proj concatenate the same way. Plain activations have N_w = N.
//
// Sums are carried in accum_t<C>, in a fixed order, each output element by one thread: results
// are bitwise reproducible and independent of the thread count (moe/host/grouped_gemm.hpp).
// The host backend never calls a BLAS (MOE_HAVE_CBLAS only adds cblas_sgemm to the benchmark):
// see docs/grouped_gemm.md for why.
// Experts with zero rows are valid; rows outside every expert's range are not touched.
//
// This header holds the argument structs, their checks, can_implement, workspace_bytes and the
// host overloads; the host implementation lives in moe/host/grouped_gemm.hpp, the CUDA one will
// live in moe/cuda/grouped_gemm.cuh with the same argument structs.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t, std::uintptr_t

#include "moe/activation.hpp"         // activation_forward/backward, with_activation
#include "moe/config.hpp"             // moe::config, activation, is_gated, check<C>()
#include "moe/host/grouped_gemm.hpp"  // backend::host::grouped_gemm_forward, _dgrad, _wgrad
#include "moe/policy.hpp"             // moe::host_policy, cuda_policy, execution_policy
#include "moe/precision.hpp"          // storage_name
#include "moe/problem.hpp"            // moe::problem
#include "moe/status.hpp"             // moe::status, MOE_TRY
#include "moe/storage.hpp"            // act_t, weight_t, accum_t

namespace moe {

/// Arguments of grouped_gemm (forward). Every pointer is caller-owned memory of the backend
/// (host memory for moe::host, device memory for the CUDA backend); sizes are host values.
template <config C>
struct grouped_gemm_args {
  std::int64_t experts = 0;  ///< E_l, local experts (1 <= E_l <= C.experts)
  std::int64_t rows = 0;     ///< M, rows of the buffers (>= offsets[E_l])
  std::int64_t n = 0;        ///< N, output columns (W_e has N_w = 2N when gated)
  std::int64_t k = 0;        ///< K, reduction length
  std::int64_t const* offsets =
      nullptr;                        ///< [E_l + 1] rows of expert e: [offsets[e], offsets[e+1])
  act_t<C> const* x = nullptr;        ///< [M, K]
  weight_t<C> const* w = nullptr;     ///< [E_l, N_w, K]
  weight_t<C> const* bias = nullptr;  ///< [E_l, N_w] or null (no bias)
  activation act = activation::identity;  ///< the epilogue's activation
  act_t<C>* y = nullptr;                  ///< [M, N] out: act(pre)
  act_t<C>* pre = nullptr;  ///< [M, N_w] out, optional: the pre-activation (for backward)
};

/// Arguments of grouped_gemm_dgrad: dX_e = dY_e · W_e, or with `act` the fused activation
/// backward of the layer whose output was this GEMM's input: dX_e = d pre_e.
template <config C>
struct grouped_gemm_dgrad_args {
  std::int64_t experts = 0;               ///< E_l
  std::int64_t rows = 0;                  ///< M
  std::int64_t n = 0;                     ///< N, the forward's output columns (the reduction here)
  std::int64_t k = 0;                     ///< K, the forward's reduction length
  std::int64_t const* offsets = nullptr;  ///< [E_l + 1]
  act_t<C> const* dy = nullptr;           ///< [M, N] gradient of the forward's output Y
  weight_t<C> const* w = nullptr;         ///< [E_l, N, K] the forward's weight
  /// Activation backward fused into the epilogue. identity: dx = dY·W_e ([M, K]). Otherwise
  /// `pre` [M, K_w] is the pre-activation whose act(·) was the forward's X (K_w = 2K gated) and
  /// dx [M, K_w] = d pre: act'(pre) ⊙ (dY·W_e); gated: [s·up·f'(gate) | s·f(gate)].
  activation act = activation::identity;
  act_t<C> const* pre = nullptr;  ///< [M, K_w]; null for identity
  act_t<C>* dx = nullptr;         ///< [M, K_w] out (K_w = K for identity)
};

/// Arguments of grouped_gemm_wgrad: dW_e (+)= dY_eᵀ · X_e and db_e (+)= Σ dY_e over the rows of
/// expert e. For a gated layer pass N = N_w (= 2N of the forward) and dY = d pre.
template <config C>
struct grouped_gemm_wgrad_args {
  std::int64_t experts = 0;               ///< E_l
  std::int64_t rows = 0;                  ///< M
  std::int64_t n = 0;                     ///< N, rows of each W_e
  std::int64_t k = 0;                     ///< K
  std::int64_t const* offsets = nullptr;  ///< [E_l + 1]
  act_t<C> const* x = nullptr;            ///< [M, K] the forward's input
  act_t<C> const* dy = nullptr;           ///< [M, N] gradient of the forward's pre-activation
  accum_t<C>* dw = nullptr;               ///< [E_l, N, K] out (or in/out with accumulate)
  accum_t<C>* d_bias = nullptr;           ///< [E_l, N] out (or in/out), optional
  /// false: dw and d_bias are overwritten (experts without rows get zeros); true: each sum
  /// continues from the caller's value (gradient accumulation over micro-batches).
  bool accumulate = false;
};

/// Arguments of grouped_activation: h = act(pre) on the rows of the experts, exactly as the
/// forward epilogue computes y from its rounded pre-activation (the expert FFN's recompute of h
/// from a saved pre).
template <config C>
struct grouped_activation_args {
  std::int64_t experts = 0;               ///< E_l
  std::int64_t rows = 0;                  ///< M
  std::int64_t n = 0;                     ///< N, columns of h (pre has N_w = 2N when gated)
  std::int64_t const* offsets = nullptr;  ///< [E_l + 1]
  activation act = activation::identity;
  act_t<C> const* pre = nullptr;  ///< [M, N_w]
  act_t<C>* h = nullptr;          ///< [M, N] out
};

namespace detail::grouped {

/// Sizes up to 2^62 keep every product of 64-bit index math below 2^63.
inline constexpr std::int64_t max_elements = std::int64_t{1} << 62;

inline bool product_fits(std::int64_t a, std::int64_t b) noexcept {
  return a == 0 || b <= max_elements / a;
}

template <class T>
constexpr char const* type_name() {
  if constexpr (storage_type<T>)
    return storage_name<T>();
  else
    return "int64";
}

template <class T>
status check_pointer(T const* p, char const* who, char const* name) noexcept {
  if (p == nullptr)
    return status::error(errc::invalid_argument, "%s.%s: expected non-null", who, name);
  if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0)
    return status::error(errc::invalid_argument, "%s.%s: expected %zu-byte alignment for %s", who,
                         name, alignof(T), type_name<T>());
  return {};
}
template <class T>
status check_optional(T const* p, char const* who, char const* name) noexcept {
  return p == nullptr ? status{} : check_pointer(p, who, name);
}

/// True when [p, p + n) and [q, q + m) share a byte (false when either is null).
template <class P, class Q>
bool overlaps(P const* p, std::int64_t n, Q const* q, std::int64_t m) noexcept {
  if (p == nullptr || q == nullptr) return false;
  auto const a = reinterpret_cast<std::uintptr_t>(p);
  auto const b = reinterpret_cast<std::uintptr_t>(q);
  std::uintptr_t const a_end = a + static_cast<std::uintptr_t>(n) * sizeof(P);
  std::uintptr_t const b_end = b + static_cast<std::uintptr_t>(m) * sizeof(Q);
  return a < b_end && b < a_end;
}

/// The shape rules every backend shares (the host has no others): sizes in range and every
/// tensor below 2^62 elements. `nw` and `kw` are the gated widths.
template <config C>
status check_shape(char const* who, std::int64_t experts, std::int64_t rows, std::int64_t n,
                   std::int64_t k, bool gated, char const* n_name = "n",
                   char const* k_name = "k") noexcept {
  if (experts < 1 || experts > C.experts)
    return status::error(errc::invalid_argument, "%s.experts: expected 1 <= E_l <= %d, got %lld",
                         who, C.experts, static_cast<long long>(experts));
  if (rows < 0)
    return status::error(errc::invalid_argument, "%s.rows: expected >= 0, got %lld", who,
                         static_cast<long long>(rows));
  if (n < 1)
    return status::error(errc::invalid_argument, "%s.%s: expected >= 1, got %lld", who, n_name,
                         static_cast<long long>(n));
  if (k < 1)
    return status::error(errc::invalid_argument, "%s.%s: expected >= 1, got %lld", who, k_name,
                         static_cast<long long>(k));
  std::int64_t const g = gated ? 2 : 1;
  if (n > max_elements / 2 || k > max_elements / 2 || !product_fits(rows, g * n) ||
      !product_fits(rows, g * k) || !product_fits(experts, g * n) ||
      !product_fits(experts * g * n, k))
    return status::error(errc::invalid_argument,
                         "%s: expected every tensor below 2^62 elements, got E_l = %lld, M = %lld, "
                         "N = %lld, K = %lld",
                         who, static_cast<long long>(experts), static_cast<long long>(rows),
                         static_cast<long long>(n), static_cast<long long>(k));
  return {};
}

/// offsets: non-null and 0 <= offsets[0] <= ... <= offsets[E_l] <= rows. Host memory only (the
/// CUDA backend cannot read device offsets without a synchronisation and trusts them).
inline status check_offsets(char const* who, std::int64_t const* offsets, std::int64_t experts,
                            std::int64_t rows) noexcept {
  MOE_TRY(check_pointer(offsets, who, "offsets"));
  std::int64_t prev = 0;
  for (std::int64_t e = 0; e <= experts; ++e) {
    if (offsets[e] < prev || offsets[e] > rows)
      return status::error(errc::invalid_argument,
                           "%s.offsets: expected 0 <= offsets[0] <= ... <= offsets[%lld] <= rows = "
                           "%lld, got offsets[%lld] = %lld",
                           who, static_cast<long long>(experts), static_cast<long long>(rows),
                           static_cast<long long>(e), static_cast<long long>(offsets[e]));
    prev = offsets[e];
  }
  return {};
}

/// The offsets rule per backend: the host reads and checks them; the CUDA backend cannot read
/// device offsets without a synchronisation, so it checks the pointer only and trusts the values.
inline status check_offsets(host_policy, char const* who, std::int64_t const* offsets,
                            std::int64_t experts, std::int64_t rows) noexcept {
  return check_offsets(who, offsets, experts, rows);
}
inline status check_offsets(cuda_policy, char const* who, std::int64_t const* offsets,
                            std::int64_t, std::int64_t) noexcept {
  return check_pointer(offsets, who, "offsets");
}

inline status check_common(cuda_policy, char const* who, activation act) noexcept {
  if (!is_valid_activation(act))
    return status::error(errc::invalid_argument,
                         "%s.act: expected an enumerator of moe::activation, got %d", who,
                         static_cast<int>(act));
  return {};
}

inline status check_common(host_policy policy, char const* who, activation act) noexcept {
  if (policy.threads < 0)
    return status::error(errc::invalid_argument, "host_policy.threads: expected >= 0, got %d",
                         policy.threads);
  if (!is_valid_activation(act))
    return status::error(errc::invalid_argument,
                         "%s.act: expected an enumerator of moe::activation, got %d", who,
                         static_cast<int>(act));
  return {};
}

template <config C, execution_policy P>
status check(P policy, grouped_gemm_args<C> const& a) noexcept {
  char const* const who = "grouped_gemm_args";
  MOE_TRY(check_common(policy, who, a.act));
  bool const gated = is_gated(a.act);
  MOE_TRY(check_shape<C>(who, a.experts, a.rows, a.n, a.k, gated));
  MOE_TRY(check_offsets(policy, who, a.offsets, a.experts, a.rows));
  std::int64_t const M = a.rows, N = a.n, K = a.k, nw = gated ? 2 * N : N;
  MOE_TRY(check_pointer(a.w, who, "w"));
  MOE_TRY(check_optional(a.bias, who, "bias"));
  MOE_TRY(check_optional(a.pre, who, "pre"));
  if (M > 0) {
    MOE_TRY(check_pointer(a.x, who, "x"));
    MOE_TRY(check_pointer(a.y, who, "y"));
  }
  std::int64_t const nwk = a.experts * nw * K, nb = a.experts * nw;
  auto const any_input = [&](auto const* out, std::int64_t size) {
    return overlaps(out, size, a.x, M * K) || overlaps(out, size, a.w, nwk) ||
           overlaps(out, size, a.bias, nb) || overlaps(out, size, a.offsets, a.experts + 1);
  };
  if (any_input(a.y, M * N) || overlaps(a.y, M * N, a.pre, M * nw))
    return status::error(errc::invalid_argument,
                         "%s.y: expected no overlap with x, w, bias, offsets or pre", who);
  if (any_input(a.pre, M * nw))
    return status::error(errc::invalid_argument,
                         "%s.pre: expected no overlap with x, w, bias or offsets", who);
  return {};
}

template <config C, execution_policy P>
status check(P policy, grouped_gemm_dgrad_args<C> const& a) noexcept {
  char const* const who = "grouped_gemm_dgrad_args";
  MOE_TRY(check_common(policy, who, a.act));
  bool const gated = is_gated(a.act);
  MOE_TRY(check_shape<C>(who, a.experts, a.rows, a.n, a.k, gated));
  MOE_TRY(check_offsets(policy, who, a.offsets, a.experts, a.rows));
  std::int64_t const M = a.rows, N = a.n, K = a.k, kw = gated ? 2 * K : K;
  MOE_TRY(check_pointer(a.w, who, "w"));
  if (a.act == activation::identity && a.pre != nullptr)
    return status::error(errc::invalid_argument,
                         "%s.pre: expected null with act = identity (nothing to differentiate)",
                         who);
  if (M > 0) {
    MOE_TRY(check_pointer(a.dy, who, "dy"));
    MOE_TRY(check_pointer(a.dx, who, "dx"));
    if (a.act != activation::identity) MOE_TRY(check_pointer(a.pre, who, "pre"));
  }
  if (overlaps(a.dx, M * kw, a.dy, M * N) || overlaps(a.dx, M * kw, a.w, a.experts * N * K) ||
      overlaps(a.dx, M * kw, a.pre, M * kw) || overlaps(a.dx, M * kw, a.offsets, a.experts + 1))
    return status::error(errc::invalid_argument,
                         "%s.dx: expected no overlap with dy, w, pre or offsets", who);
  return {};
}

template <config C, execution_policy P>
status check(P policy, grouped_gemm_wgrad_args<C> const& a) noexcept {
  char const* const who = "grouped_gemm_wgrad_args";
  MOE_TRY(check_common(policy, who, activation::identity));
  MOE_TRY(check_shape<C>(who, a.experts, a.rows, a.n, a.k, false));
  MOE_TRY(check_offsets(policy, who, a.offsets, a.experts, a.rows));
  std::int64_t const M = a.rows, N = a.n, K = a.k, nk = a.experts * N * K;
  MOE_TRY(check_pointer(a.dw, who, "dw"));
  MOE_TRY(check_optional(a.d_bias, who, "d_bias"));
  if (M > 0) {
    MOE_TRY(check_pointer(a.x, who, "x"));
    MOE_TRY(check_pointer(a.dy, who, "dy"));
  }
  auto const any_input = [&](auto const* out, std::int64_t size) {
    return overlaps(out, size, a.x, M * K) || overlaps(out, size, a.dy, M * N) ||
           overlaps(out, size, a.offsets, a.experts + 1);
  };
  if (any_input(a.dw, nk) || overlaps(a.dw, nk, a.d_bias, a.experts * N))
    return status::error(errc::invalid_argument,
                         "%s.dw: expected no overlap with x, dy, offsets or d_bias", who);
  if (any_input(a.d_bias, a.experts * N))
    return status::error(errc::invalid_argument,
                         "%s.d_bias: expected no overlap with x, dy or offsets", who);
  return {};
}

template <config C, execution_policy P>
status check(P policy, grouped_activation_args<C> const& a) noexcept {
  char const* const who = "grouped_activation_args";
  MOE_TRY(check_common(policy, who, a.act));
  bool const gated = is_gated(a.act);
  MOE_TRY(check_shape<C>(who, a.experts, a.rows, a.n, 1, gated));
  MOE_TRY(check_offsets(policy, who, a.offsets, a.experts, a.rows));
  std::int64_t const M = a.rows, N = a.n, nw = gated ? 2 * N : N;
  if (M > 0) {
    MOE_TRY(check_pointer(a.pre, who, "pre"));
    MOE_TRY(check_pointer(a.h, who, "h"));
  }
  if (overlaps(a.h, M * N, a.pre, M * nw) || overlaps(a.h, M * N, a.offsets, a.experts + 1))
    return status::error(errc::invalid_argument, "%s.h: expected no overlap with pre or offsets",
                         who);
  return {};
}

}  // namespace detail::grouped

/// Whether the host backend can run the expert FFN's grouped GEMMs for problem `p`: the first
/// layer (K = H, N = F, N_w = 2F when `act` is gated) and the second (K = F, N = H). The host
/// needs only H >= 1 and F >= 1 (and tensors below 2^62 elements); the CUDA overload adds its
/// alignment rules. The per-call checks apply the same rules to each args struct.
/// @param p    H = p.hidden, F = p.ffn; E_l = C.experts / p.ep_size
/// @param act  the FFN's activation (the config's by default)
template <config C>
status can_implement(host_policy, problem const& p, activation act = C.ffn_activation) noexcept {
  static_assert(check<C>());
  if (!is_valid_activation(act))
    return status::error(errc::invalid_argument,
                         "can_implement: act: expected an enumerator of moe::activation, got %d",
                         static_cast<int>(act));
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
  std::int64_t const experts = C.experts / p.ep_size;
  MOE_TRY(detail::grouped::check_shape<C>("problem", experts, 0, p.ffn, p.hidden, is_gated(act),
                                          "ffn", "hidden"));
  MOE_TRY(detail::grouped::check_shape<C>("problem", experts, 0, p.hidden, p.ffn, false, "hidden",
                                          "ffn"));
  return {};
}

/// Scratch bytes the host backend needs beyond the arguments: none (its panels live on each
/// thread's stack, 244 KiB). The CUDA overloads will size their tile-scheduler workspace.
template <config C>
constexpr std::size_t workspace_bytes(host_policy, grouped_gemm_args<C> const&) noexcept {
  return 0;
}
template <config C>
constexpr std::size_t workspace_bytes(host_policy, grouped_gemm_dgrad_args<C> const&) noexcept {
  return 0;
}
template <config C>
constexpr std::size_t workspace_bytes(host_policy, grouped_gemm_wgrad_args<C> const&) noexcept {
  return 0;
}
template <config C>
constexpr std::size_t workspace_bytes(host_policy, grouped_activation_args<C> const&) noexcept {
  return 0;
}

/// Forward grouped GEMM with its fused epilogue on the CPU: for each expert e and each row m in
/// [offsets[e], offsets[e+1]): pre[m] = x[m] · W_eᵀ + b_e (rounded to act_t<C>; stored when
/// a.pre is given) and y[m] = act(pre[m]) (gated: f(pre[m, :N]) · pre[m, N:]), sums over k
/// ascending in accum_t<C>. Rows outside the experts' ranges are not touched.
/// @param policy  moe::host, or moe::host.with_threads(n) to cap OpenMP threads
/// @param a       x [M, K], w [E_l, N_w, K], bias [E_l, N_w] or null, y [M, N] out,
///                pre [M, N_w] out or null; N_w = 2N for swiglu/geglu, else N
template <config C>
status grouped_gemm(host_policy policy, grouped_gemm_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::grouped::check(policy, a));
  if (a.offsets[a.experts] == a.offsets[0]) return {};
  with_activation(a.act, [&]<activation Act>() {
    backend::host::grouped_gemm_forward<Act, accum_t<C>>(policy.threads, a.experts, a.n, a.k,
                                                         a.offsets, a.x, a.w, a.bias, a.y, a.pre);
  });
  return {};
}

/// dgrad on the CPU: per expert, s = dy[m] · W_e (sum over n ascending in accum_t<C>); dx[m] = s
/// for act = identity, else dx[m] = d pre[m] = act'(pre[m]) ⊙ s (gated: [s·up·f'(gate) |
/// s·f(gate)]), rounded once to act_t<C>. Rows outside the experts' ranges are not touched.
/// @param a  dy [M, N], w [E_l, N, K], pre [M, K_w] (non-identity act), dx [M, K_w] out;
///           K_w = 2K for swiglu/geglu, else K
template <config C>
status grouped_gemm_dgrad(host_policy policy, grouped_gemm_dgrad_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::grouped::check(policy, a));
  if (a.offsets[a.experts] == a.offsets[0]) return {};
  with_activation(a.act, [&]<activation Act>() {
    backend::host::grouped_gemm_dgrad<Act, accum_t<C>>(policy.threads, a.experts, a.n, a.k,
                                                       a.offsets, a.dy, a.w, a.pre, a.dx);
  });
  return {};
}

/// wgrad and dbias on the CPU: dw[e] (+)= Σ_m dy[m]ᵀ x[m] and d_bias[e] (+)= Σ_m dy[m] over the
/// rows m of expert e in ascending order, in accum_t<C>. Each element is one running sum from 0
/// (or from its current value with a.accumulate), so accumulating two calls equals one call
/// over the joined rows, bit for bit. Every expert's dw is written, also without rows.
/// @param a  x [M, K], dy [M, N], dw [E_l, N, K] out, d_bias [E_l, N] out or null
template <config C>
status grouped_gemm_wgrad(host_policy policy, grouped_gemm_wgrad_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::grouped::check(policy, a));
  backend::host::grouped_gemm_wgrad<accum_t<C>>(policy.threads, a.experts, a.n, a.k, a.offsets, a.x,
                                                a.dy, a.dw, a.d_bias, a.accumulate);
  return {};
}

/// h = act(pre) on the CPU for the rows [offsets[0], offsets[E_l]) (element-wise; gated:
/// f(pre[m, j]) · pre[m, N + j]), bitwise equal to the y that grouped_gemm computed with the
/// same activation from the same (stored) pre-activation.
/// @param a  pre [M, N_w], h [M, N] out
template <config C>
status grouped_activation(host_policy policy, grouped_activation_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::grouped::check(policy, a));
  if (a.offsets[a.experts] == a.offsets[0]) return {};
  with_activation(a.act, [&]<activation Act>() {
    backend::host::grouped_activation<Act, accum_t<C>>(policy.threads, a.offsets[0],
                                                       a.offsets[a.experts], a.n, a.pre, a.h);
  });
  return {};
}

}  // namespace moe
