// SPDX-License-Identifier: Apache-2.0
// moe_emu's stand-in for the cuBLAS calls moe's cuBLAS baseline makes: cublasGemmEx (column
// major, op N or T, bf16/fp16/fp32/fp64 operands, bf16/fp32/fp64 output, fp32 or fp64
// compute), on the host.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_NOT_SUPPORTED = 15
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_64F = 70 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
struct cublasContext {
  cudaStream_t stream;
};
using cublasHandle_t = cublasContext*;

inline cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext{nullptr};
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}

namespace moe_emu {
inline double half_bits_to_double(std::uint16_t b) {
  std::uint32_t const exp = (b >> 10) & 31u, man = b & 1023u;
  double const v = exp == 0 ? std::ldexp(static_cast<double>(man), -24)
                   : exp == 31
                       ? (man != 0 ? NAN : INFINITY)
                       : std::ldexp(static_cast<double>(man | 1024u), static_cast<int>(exp) - 25);
  return (b >> 15) != 0 ? -v : v;
}

inline double load_as_double(void const* p, cudaDataType_t t, long long i) {
  std::uint16_t b;
  switch (t) {
    case CUDA_R_64F:
      return static_cast<double const*>(p)[i];
    case CUDA_R_32F:
      return static_cast<float const*>(p)[i];
    case CUDA_R_16BF:
      std::memcpy(&b, static_cast<unsigned char const*>(p) + 2 * i, 2);
      return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
    default:  // CUDA_R_16F
      std::memcpy(&b, static_cast<unsigned char const*>(p) + 2 * i, 2);
      return half_bits_to_double(b);
  }
}

/// Stores v in type t (fp64, fp32, or bf16 rounded to nearest even from the float value).
inline void store_from_double(void* p, cudaDataType_t t, long long i, double v) {
  float const f = static_cast<float>(v);
  if (t == CUDA_R_64F) {
    static_cast<double*>(p)[i] = v;
  } else if (t == CUDA_R_32F) {
    static_cast<float*>(p)[i] = f;
  } else {  // CUDA_R_16BF (fp16 output is refused by cublasGemmEx below)
    std::uint32_t const u = std::bit_cast<std::uint32_t>(f);
    auto const bits = std::isnan(f)
                          ? static_cast<std::uint16_t>((u >> 16) | 0x40u)
                          : static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    std::memcpy(static_cast<unsigned char*>(p) + 2 * i, &bits, 2);
  }
}
}  // namespace moe_emu

/// C = alpha·op(A)·op(B) + beta·C, column major; the sum in the compute type, k ascending.
inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb,
                                   int m, int n, int k, void const* alpha, void const* a,
                                   cudaDataType_t at, int lda, void const* b, cudaDataType_t bt,
                                   int ldb, void const* beta, void* c, cudaDataType_t ct, int ldc,
                                   cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (ct == CUDA_R_16F) return CUBLAS_STATUS_NOT_SUPPORTED;  // moe's baseline never writes fp16
  if (lda < std::max(1, ta == CUBLAS_OP_N ? m : k) ||
      ldb < std::max(1, tb == CUBLAS_OP_N ? k : n) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  bool const f64 = compute == CUBLAS_COMPUTE_64F;
  double const al = f64 ? *static_cast<double const*>(alpha) : *static_cast<float const*>(alpha);
  double const be = f64 ? *static_cast<double const*>(beta) : *static_cast<float const*>(beta);
  for (long long j = 0; j < n; ++j)
    for (long long i = 0; i < m; ++i) {
      double s64 = 0;
      float s32 = 0;
      for (long long p = 0; p < k; ++p) {
        double const x =
            moe_emu::load_as_double(a, at, ta == CUBLAS_OP_N ? i + p * lda : p + i * lda);
        double const y =
            moe_emu::load_as_double(b, bt, tb == CUBLAS_OP_N ? p + j * ldb : j + p * ldb);
        if (f64)
          s64 += x * y;
        else
          s32 = std::fma(static_cast<float>(x), static_cast<float>(y), s32);
      }
      long long const at_c = i + j * ldc;
      double const old = be != 0 ? moe_emu::load_as_double(c, ct, at_c) : 0.0;
      if (f64)
        moe_emu::store_from_double(c, ct, at_c, al * s64 + be * old);
      else
        moe_emu::store_from_double(
            c, ct, at_c,
            static_cast<float>(al) * s32 + static_cast<float>(be) * static_cast<float>(old));
    }
  return CUBLAS_STATUS_SUCCESS;
}
