// SPDX-License-Identifier: Apache-2.0
// CUDA overloads of grouped_gemm, grouped_gemm_dgrad, grouped_gemm_wgrad and grouped_activation
// (moe/grouped_gemm.hpp), with the same argument structs, plus can_implement and
// workspace_bytes for the CUDA policy. Each op checks its arguments (the host backend's rules,
// except that `offsets` is device memory and is not read here, plus the alignment rules of the
// tensor-core path), then enqueues one kernel on the policy's stream (wgrad: two, with d_bias).
// No workspace, no allocation, no synchronisation: the per-expert row counts are read by the
// kernels from `offsets`, so a step can be captured in a CUDA graph.
//
// Precisions: bf16 and fp16 configs run the tensor-core kernel (mma.sync, fp32 accumulators,
// sm_80 or newer); fp32 configs a SIMT kernel with FFMA (fp32 products, no TF32); fp64 configs
// the same SIMT kernel with DFMA. Kernels: moe/cuda/kernels/grouped_gemm.cuh.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t, std::uintptr_t

#include "moe/cuda/kernels/grouped_gemm.cuh"  // grouped_gemm_kernel, problems, tuning
#include "moe/cuda/runtime.cuh"               // check_launch, grid_for, MOE_CUDA_TRY
#include "moe/grouped_gemm.hpp"               // the args structs, detail::grouped::check

namespace moe {

namespace detail::grouped {

/// Whether config C runs the tensor-core kernel (16-bit activations and weights).
template <config C>
inline constexpr bool uses_mma = sizeof(act_t<C>) == 2;

/// The tensor-core kernel copies 16-byte chunks of operand rows: row lengths a multiple of 8
/// elements and operand pointers 16-byte aligned. The SIMT kernels have no extra rule.
template <config C>
status check_cuda_extent(char const* who, char const* name, std::int64_t v) noexcept {
  if (uses_mma<C> && v % 8 != 0)
    return status::error(errc::invalid_argument,
                         "%s.%s: expected a multiple of 8 for %s on CUDA (16-byte rows for "
                         "cp.async), got %lld",
                         who, name, storage_name<act_t<C>>(), static_cast<long long>(v));
  return {};
}
template <config C, class T>
status check_cuda_operand(char const* who, char const* name, T const* p) noexcept {
  if (uses_mma<C> && p != nullptr && reinterpret_cast<std::uintptr_t>(p) % 16 != 0)
    return status::error(errc::invalid_argument,
                         "%s.%s: expected 16-byte alignment for the tensor-core kernel", who,
                         name);
  return {};
}

/// SM count and compute capability of the current device.
struct cuda_device_info {
  int sms = 0;
  int major = 0;
};
inline status query_device(cuda_device_info& info) noexcept {
  int device = 0;
  MOE_CUDA_TRY(cudaGetDevice(&device));
  MOE_CUDA_TRY(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, device));
  MOE_CUDA_TRY(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device));
  return {};
}

/// Tile ids are 32-bit in the scheduler's smem prefix.
/// The kernel walks tile ids t, t + grid, ... in int32 with a grid of at most a few thousand
/// CTAs: a bound 2^20 below 2^31 keeps t + grid from overflowing.
inline status check_tile_count(char const* who, std::int64_t tiles) noexcept {
  if (tiles >= (std::int64_t{1} << 31) - (std::int64_t{1} << 20))
    return status::error(errc::invalid_argument,
                         "%s: expected fewer than 2^31 - 2^20 tiles (upper bound from rows), got "
                         "%lld",
                         who, static_cast<long long>(tiles));
  return {};
}

/// Launches the persistent grouped-GEMM kernel of problem P: min(SMs × resident CTAs, bound)
/// CTAs, bound = p.tile_bound(), the tiles' upper bound known without reading the offsets.
/// `who` names the op's arguments in the status when the bound is too large.
template <class P>
status launch_grouped_gemm(cuda_policy policy, P const& p, char const* who,
                           char const* name) noexcept {
  std::int64_t const bound = p.tile_bound();
  MOE_TRY(check_tile_count(who, bound));
  if (bound <= 0) return {};
  cuda_device_info dev;
  MOE_TRY(query_device(dev));
  if (sizeof(typename P::mainloop::value_type) == 2 && dev.major < 8)
    return status::error(errc::unsupported_config,
                         "%s: the bf16/fp16 tensor-core kernel needs sm_80 or newer, the device "
                         "is sm_%d",
                         name, dev.major * 10);
  auto const kernel = backend::cuda::grouped_gemm_kernel<P>;
  constexpr int threads = P::mainloop::threads;
  constexpr std::size_t smem = P::mainloop::smem_bytes;
  // The opt-in above 48 KiB counts the kernel's static smem too (the scheduler's prefix,
  // 4 KiB): a 48 KiB pipeline without it fails to launch (cudaErrorInvalidValue).
  if constexpr (smem + backend::cuda::grouped_gemm_static_smem > 48 * 1024)
    MOE_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  int resident = 0;
  MOE_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, threads, smem));
  std::int64_t grid = static_cast<std::int64_t>(dev.sms) * (resident > 0 ? resident : 1);
  if (grid > bound) grid = bound;
  kernel<<<static_cast<unsigned>(grid), threads, smem, policy.stream>>>(p);
  return backend::cuda::check_launch(policy.stream, name);
}

}  // namespace detail::grouped

/// Whether the CUDA backend can run the expert FFN's grouped GEMMs for problem `p`: the host
/// rules, plus, for bf16/fp16 configs (tensor cores), H and F multiples of 8. Pointer alignment
/// (16 bytes for bf16/fp16 operands; what cudaMalloc returns) is checked per call.
/// @param p    H = p.hidden, F = p.ffn; E_l = C.experts / p.ep_size
/// @param act  the FFN's activation (the config's by default)
template <config C>
status can_implement(cuda_policy, problem const& p, activation act = C.ffn_activation) noexcept {
  MOE_TRY(can_implement<C>(host, p, act));
  MOE_TRY(detail::grouped::check_cuda_extent<C>("problem", "hidden", p.hidden));
  return detail::grouped::check_cuda_extent<C>("problem", "ffn", p.ffn);
}

/// Scratch bytes of the CUDA ops: none (the tile scheduler's prefix lives in shared memory).
template <config C>
constexpr std::size_t workspace_bytes(cuda_policy, grouped_gemm_args<C> const&) noexcept {
  return 0;
}
template <config C>
constexpr std::size_t workspace_bytes(cuda_policy, grouped_gemm_dgrad_args<C> const&) noexcept {
  return 0;
}
template <config C>
constexpr std::size_t workspace_bytes(cuda_policy, grouped_gemm_wgrad_args<C> const&) noexcept {
  return 0;
}
template <config C>
constexpr std::size_t workspace_bytes(cuda_policy, grouped_activation_args<C> const&) noexcept {
  return 0;
}

/// Forward grouped GEMM with its fused epilogue on the device: for each expert e and row m in
/// [offsets[e], offsets[e+1]): pre[m] = x[m] · W_eᵀ + b_e (rounded to act_t<C>; stored when
/// a.pre is given), y[m] = act(pre[m]) (gated: f(pre[m, :N]) · pre[m, N:]). Enqueued on
/// policy.stream; offsets are read on the device. Rows outside the experts are not touched.
/// @param policy  moe::cuda_on(stream) (no workspace needed)
/// @param a       x [M, K], w [E_l, N_w, K], bias [E_l, N_w] or null, y [M, N] out,
///                pre [M, N_w] out or null — device memory; bf16/fp16: K % 8 == 0 and x, w
///                16-byte aligned
template <config C>
status grouped_gemm(cuda_policy policy, grouped_gemm_args<C> const& a) noexcept {
  static_assert(check<C>());
  char const* const who = "grouped_gemm_args";
  MOE_TRY(detail::grouped::check(policy, a));
  MOE_TRY(detail::grouped::check_cuda_extent<C>(who, "k", a.k));
  MOE_TRY(detail::grouped::check_cuda_operand<C>(who, "x", a.x));
  MOE_TRY(detail::grouped::check_cuda_operand<C>(who, "w", a.w));
  // The kernel names `offsets` as the (never read) source of its zero-filled cp.async loads.
  MOE_TRY(detail::grouped::check_cuda_operand<C>(who, "offsets", a.offsets));
  if (a.rows == 0) return {};
  using T = act_t<C>;
  return with_activation(a.act, [&]<activation Act>() -> status {
    using mainloop = backend::cuda::gemm_mainloop_for<T, accum_t<C>, is_gated_v<Act>>;
    using P = backend::cuda::gemm_forward<Act, T, mainloop>;
    P const p{static_cast<int>(a.experts), a.rows, a.n, a.k, a.offsets, a.x, a.w, a.bias, a.y,
              a.pre};
    return detail::grouped::launch_grouped_gemm(policy, p, who, "grouped_gemm_kernel<forward>");
  });
}

/// dgrad on the device: s = dy[m] · W_e (fp32/fp64 sums); dx[m] = s for identity, else the
/// fused activation backward dx[m] = d pre[m] = act'(pre[m]) ⊙ s (gated: [s·up·f'(gate) |
/// s·f(gate)]), rounded once to act_t<C>. Enqueued on policy.stream.
/// @param a  dy [M, N], w [E_l, N, K], pre [M, K_w] (non-identity), dx [M, K_w] out — device
///           memory; bf16/fp16: N % 8 == K % 8 == 0 and dy, w 16-byte aligned
template <config C>
status grouped_gemm_dgrad(cuda_policy policy, grouped_gemm_dgrad_args<C> const& a) noexcept {
  static_assert(check<C>());
  char const* const who = "grouped_gemm_dgrad_args";
  MOE_TRY(detail::grouped::check(policy, a));
  MOE_TRY(detail::grouped::check_cuda_extent<C>(who, "n", a.n));
  MOE_TRY(detail::grouped::check_cuda_extent<C>(who, "k", a.k));
  MOE_TRY(detail::grouped::check_cuda_operand<C>(who, "dy", a.dy));
  MOE_TRY(detail::grouped::check_cuda_operand<C>(who, "w", a.w));
  // The kernel names `offsets` as the (never read) source of its zero-filled cp.async loads.
  MOE_TRY(detail::grouped::check_cuda_operand<C>(who, "offsets", a.offsets));
  if (a.rows == 0) return {};
  using T = act_t<C>;
  return with_activation(a.act, [&]<activation Act>() -> status {
    using mainloop = backend::cuda::gemm_mainloop_for<T, accum_t<C>>;
    using P = backend::cuda::gemm_dgrad<Act, T, mainloop>;
    P const p{static_cast<int>(a.experts), a.rows, a.n, a.k, a.offsets, a.dy, a.w, a.pre, a.dx};
    return detail::grouped::launch_grouped_gemm(policy, p, who, "grouped_gemm_kernel<dgrad>");
  });
}

/// wgrad and dbias on the device: dw[e] (+)= Σ_m dy[m]ᵀ x[m] and d_bias[e] (+)= Σ_m dy[m] over
/// the rows of expert e, in accum_t<C>. One CTA per dW tile sums all rows of its expert (no
/// split-K, no atomics), and d_bias is a column sum in a fixed order (column_sum.cuh): bitwise
/// reproducible. With accumulate the sums start from the caller's values. Every expert's dw is written, also without rows. Enqueued on policy.stream.
/// @param a  x [M, K], dy [M, N], dw [E_l, N, K] out, d_bias [E_l, N] out or null — device
///           memory; bf16/fp16: N % 8 == K % 8 == 0 and x, dy 16-byte aligned
template <config C>
status grouped_gemm_wgrad(cuda_policy policy, grouped_gemm_wgrad_args<C> const& a) noexcept {
  static_assert(check<C>());
  char const* const who = "grouped_gemm_wgrad_args";
  MOE_TRY(detail::grouped::check(policy, a));
  MOE_TRY(detail::grouped::check_cuda_extent<C>(who, "n", a.n));
  MOE_TRY(detail::grouped::check_cuda_extent<C>(who, "k", a.k));
  MOE_TRY(detail::grouped::check_cuda_operand<C>(who, "x", a.x));
  MOE_TRY(detail::grouped::check_cuda_operand<C>(who, "dy", a.dy));
  // The kernel names `offsets` as the (never read) source of its zero-filled cp.async loads.
  MOE_TRY(detail::grouped::check_cuda_operand<C>(who, "offsets", a.offsets));
  using T = act_t<C>;
  using A = accum_t<C>;
  using P = backend::cuda::gemm_wgrad<T, backend::cuda::gemm_mainloop_for<T, A>>;
  P const p{static_cast<int>(a.experts), a.rows, a.n, a.k, a.offsets, a.x, a.dy, a.dw,
            a.accumulate};
  MOE_TRY(detail::grouped::launch_grouped_gemm(policy, p, who, "grouped_gemm_kernel<wgrad>"));
  if (a.d_bias == nullptr) return {};
  dim3 const grid(backend::cuda::column_sum_blocks(a.n), static_cast<unsigned>(a.experts));
  dim3 const block(backend::cuda::column_sum_cols, backend::cuda::column_sum_groups);
  backend::cuda::grouped_bias_grad_kernel<T, A>
      <<<grid, block, 0, policy.stream>>>(a.offsets, a.dy, a.d_bias, a.rows, a.n, a.accumulate);
  return backend::cuda::check_launch(policy.stream, "grouped_bias_grad_kernel");
}

/// h = act(pre) on the device for rows [offsets[0], offsets[E_l]), with the forward epilogue's
/// arithmetic (gated: f(pre[m, j]) · pre[m, N + j]). Enqueued on policy.stream.
/// @param a  pre [M, N_w], h [M, N] out — device memory
template <config C>
status grouped_activation(cuda_policy policy, grouped_activation_args<C> const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::grouped::check(policy, a));
  if (a.rows == 0) return {};
  return with_activation(a.act, [&]<activation Act>() -> status {
    constexpr unsigned block = backend::cuda::grouped_elementwise_block;
    backend::cuda::grouped_activation_kernel<Act, act_t<C>, accum_t<C>>
        <<<backend::cuda::grid_for(a.rows * a.n, block), block, 0, policy.stream>>>(
            a.offsets, a.pre, a.h, static_cast<int>(a.experts), a.rows, a.n);
    return backend::cuda::check_launch(policy.stream, "grouped_activation_kernel");
  });
}

}  // namespace moe
