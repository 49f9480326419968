// SPDX-License-Identifier: Apache-2.0
// A cuBLAS baseline of the grouped GEMM, for tests and benchmarks only: one cublasGemmEx per
// expert (fp32 compute for bf16/fp16/fp32 — cuBLAS's default math mode, no TF32 — and fp64 for
// fp64), plain products only (no bias, no activation: identity forward, identity dgrad, wgrad
// without d_bias). It copies `offsets` to the host and waits for the stream first: a device to
// host synchronisation per call, so it is neither graph-capturable nor the performance target
// (the moe kernels read the offsets on the device). Link CUDA::cublas to use it; the library
// itself does not depend on cuBLAS.
#pragma once

#include <cublas_v2.h>  // cublasGemmEx, cublasSetStream

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t
#include <type_traits>  // std::is_same_v
#include <vector>   // std::vector (the host copy of offsets)

#include "moe/cuda/runtime.cuh"  // from_cuda, MOE_CUDA_TRY
#include "moe/grouped_gemm.hpp"  // the args structs

namespace moe::backend::cuda {

namespace detail {
inline status from_cublas(cublasStatus_t s, char const* what) noexcept {
  if (s == CUBLAS_STATUS_SUCCESS) return {};
  return status::native_error(errc::cuda_error, static_cast<int>(s), "%s: cuBLAS status %d", what,
                              static_cast<int>(s));
}

template <class T>
constexpr cudaDataType_t cublas_type() {
  if constexpr (std::is_same_v<T, double>)
    return CUDA_R_64F;
  else if constexpr (std::is_same_v<T, float>)
    return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, fp16>)
    return CUDA_R_16F;
  else
    return CUDA_R_16BF;
}

/// Column-major C[m, n] = alpha·op(A)·op(B) + beta·C with the config's compute type.
template <class In, class Out>
status gemm_ex(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, std::int64_t m,
               std::int64_t n, std::int64_t k, In const* a, std::int64_t lda, In const* b,
               std::int64_t ldb, Out* c, std::int64_t ldc, bool accumulate) {
  constexpr bool f64 = std::is_same_v<Out, double>;
  double const alpha64 = 1, beta64 = accumulate ? 1 : 0;
  float const alpha32 = 1, beta32 = accumulate ? 1 : 0;
  void const* alpha = f64 ? static_cast<void const*>(&alpha64) : &alpha32;
  void const* beta = f64 ? static_cast<void const*>(&beta64) : &beta32;
  return from_cublas(
      cublasGemmEx(handle, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                   alpha, a, cublas_type<In>(), static_cast<int>(lda), b, cublas_type<In>(),
                   static_cast<int>(ldb), beta, c, cublas_type<Out>(), static_cast<int>(ldc),
                   f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

inline status host_offsets(cudaStream_t stream, std::int64_t const* offsets, std::int64_t experts,
                           std::vector<std::int64_t>& out) {
  out.resize(static_cast<std::size_t>(experts + 1));
  MOE_CUDA_TRY(cudaMemcpyAsync(out.data(), offsets,
                               static_cast<std::size_t>(experts + 1) * sizeof(std::int64_t),
                               cudaMemcpyDeviceToHost, stream));
  return from_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}
}  // namespace detail

/// Baseline forward: y_e = x_e · W_eᵀ per expert (act must be identity, bias and pre null).
template <config C>
status grouped_gemm_cublas(cublasHandle_t handle, cuda_policy policy,
                           grouped_gemm_args<C> const& a) {
  if (a.act != activation::identity || a.bias != nullptr || a.pre != nullptr)
    return status::error(errc::invalid_argument,
                         "grouped_gemm_cublas: expected act = identity, bias = pre = null");
  std::vector<std::int64_t> off;
  MOE_TRY(detail::host_offsets(policy.stream, a.offsets, a.experts, off));
  MOE_TRY(detail::from_cublas(cublasSetStream(handle, policy.stream), "cublasSetStream"));
  for (std::int64_t e = 0; e < a.experts; ++e) {
    std::int64_t const rows = off[static_cast<std::size_t>(e + 1)] - off[static_cast<std::size_t>(e)];
    if (rows <= 0) continue;
    // Row-major y[M_e, N] is column-major N × M_e: W_e (K × N column-major) transposed times x.
    MOE_TRY(detail::gemm_ex(handle, CUBLAS_OP_T, CUBLAS_OP_N, a.n, rows, a.k, a.w + e * a.n * a.k,
                            a.k, a.x + off[static_cast<std::size_t>(e)] * a.k, a.k,
                            a.y + off[static_cast<std::size_t>(e)] * a.n, a.n, false));
  }
  return {};
}

/// Baseline dgrad: dx_e = dy_e · W_e per expert (act must be identity).
template <config C>
status grouped_gemm_dgrad_cublas(cublasHandle_t handle, cuda_policy policy,
                                 grouped_gemm_dgrad_args<C> const& a) {
  if (a.act != activation::identity)
    return status::error(errc::invalid_argument, "grouped_gemm_dgrad_cublas: expected identity");
  std::vector<std::int64_t> off;
  MOE_TRY(detail::host_offsets(policy.stream, a.offsets, a.experts, off));
  MOE_TRY(detail::from_cublas(cublasSetStream(handle, policy.stream), "cublasSetStream"));
  for (std::int64_t e = 0; e < a.experts; ++e) {
    std::int64_t const rows = off[static_cast<std::size_t>(e + 1)] - off[static_cast<std::size_t>(e)];
    if (rows <= 0) continue;
    // Column-major dxᵀ (K × M_e) = W_e viewed as K × N, times dyᵀ (N × M_e).
    MOE_TRY(detail::gemm_ex(handle, CUBLAS_OP_N, CUBLAS_OP_N, a.k, rows, a.n, a.w + e * a.n * a.k,
                            a.k, a.dy + off[static_cast<std::size_t>(e)] * a.n, a.n,
                            a.dx + off[static_cast<std::size_t>(e)] * a.k, a.k, false));
  }
  return {};
}

/// Baseline wgrad: dW_e (+)= dy_eᵀ · x_e per expert (d_bias must be null); experts without
/// rows get zeros (or keep dW with accumulate).
template <config C>
status grouped_gemm_wgrad_cublas(cublasHandle_t handle, cuda_policy policy,
                                 grouped_gemm_wgrad_args<C> const& a) {
  if (a.d_bias != nullptr)
    return status::error(errc::invalid_argument, "grouped_gemm_wgrad_cublas: expected no d_bias");
  std::vector<std::int64_t> off;
  MOE_TRY(detail::host_offsets(policy.stream, a.offsets, a.experts, off));
  MOE_TRY(detail::from_cublas(cublasSetStream(handle, policy.stream), "cublasSetStream"));
  for (std::int64_t e = 0; e < a.experts; ++e) {
    std::int64_t const rows = off[static_cast<std::size_t>(e + 1)] - off[static_cast<std::size_t>(e)];
    accum_t<C>* const dw = a.dw + e * a.n * a.k;
    if (rows <= 0) {
      if (!a.accumulate)
        MOE_CUDA_TRY(cudaMemsetAsync(dw, 0, static_cast<std::size_t>(a.n * a.k) * sizeof(*dw),
                                     policy.stream));
      continue;
    }
    // Column-major dWᵀ (K × N) = xᵀ (K × M_e, x as stored) times dy (M_e × N, dy transposed).
    MOE_TRY(detail::gemm_ex(handle, CUBLAS_OP_N, CUBLAS_OP_T, a.k, a.n, rows,
                            a.x + off[static_cast<std::size_t>(e)] * a.k, a.k,
                            a.dy + off[static_cast<std::size_t>(e)] * a.n, a.n, dw, a.k,
                            a.accumulate));
  }
  return {};
}

}  // namespace moe::backend::cuda
