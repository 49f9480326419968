// SPDX-License-Identifier: Apache-2.0
// Bit-for-bit comparison of include/moe/precision.hpp with CUDA's own conversions, on the host
// and without a GPU: cuda_bf16.h, cuda_fp16.h and cuda_fp8.h carry host implementations of
// `__float2bfloat16_rn`, `__float2half_rn`, the `__nv_fp8_e4m3(float)` / `__nv_fp8_e5m2(float)`
// constructors (`__nv_cvt_float_to_fp8` with `__NV_SATFINITE`) and the widening operators. Built
// with plain g++ plus `-I<cuda>/include`; no define is needed (checked with CUDA 13.0 and g++ 12:
// without __CUDACC__ the headers pick their memcpy-based host branches and need no runtime
// library). Covers every 16- and 8-bit pattern for widening and a strided sweep of all 2^32
// float patterns for narrowing; MOE_TEST_FLOAT_STRIDE sets the step as in test_precision.cpp.
#include <doctest/doctest.h>

// CUDA 13.0's cuda_fp8.hpp does `ures <<= 8U` on an unsigned short, which -Wconversion reports
// once -fsanitize=undefined keeps g++ from folding the promotion away. Not our code to fix, and
// -isystem would hide it too, but the build passes these headers with a plain -I.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#include <cuda_bf16.h>  // __nv_bfloat16, __float2bfloat16_rn, __bfloat162float
#include <cuda_fp16.h>  // __half, __float2half_rn, __half2float
#include <cuda_fp8.h>   // __nv_fp8_e4m3, __nv_fp8_e5m2
#pragma GCC diagnostic pop

#include <bit>          // std::bit_cast
#include <cstdint>      // std::uint32_t, std::uint64_t
#include <cstring>      // std::memcpy
#include <sstream>      // std::ostringstream
#include <string>       // std::string
#include <type_traits>  // std::is_trivially_copyable_v

#include "moe/precision.hpp"

#ifndef MOE_TEST_FLOAT_STRIDE
#define MOE_TEST_FLOAT_STRIDE 3
#endif

namespace {

// doctest's message builder prints neither stream manipulators nor `char const*` from a
// function as text, so failure messages are assembled as one std::string (in parentheses:
// FAIL_CHECK applies `operator*` to its argument).
std::string hex(std::uint64_t v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

// CUDA's side of each conversion, as raw bits.
std::uint32_t cuda_narrow(moe::bf16, float x) {
  return static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(x)).x;
}
std::uint32_t cuda_narrow(moe::fp16, float x) {
  return static_cast<__half_raw>(__float2half_rn(x)).x;
}
std::uint32_t cuda_narrow(moe::fp8_e4m3, float x) {
  return __nv_fp8_e4m3(x).__x;
}
std::uint32_t cuda_narrow(moe::fp8_e5m2, float x) {
  return __nv_fp8_e5m2(x).__x;
}

float cuda_widen(moe::bf16 v) {
  __nv_bfloat16_raw raw;
  raw.x = v.bits;
  return __bfloat162float(raw);
}
float cuda_widen(moe::fp16 v) {
  __half_raw raw;
  raw.x = v.bits;
  return __half2float(raw);
}
float cuda_widen(moe::fp8_e4m3 v) {
  __nv_fp8_e4m3 c;
  c.__x = v.bits;
  return static_cast<float>(c);
}
float cuda_widen(moe::fp8_e5m2 v) {
  __nv_fp8_e5m2 c;
  c.__x = v.bits;
  return static_cast<float>(c);
}

template <class T>
constexpr std::uint32_t pattern_count = 1u << (8 * sizeof(T));

}  // namespace

TEST_CASE("storage types have the size and alignment of CUDA's") {
  static_assert(sizeof(moe::bf16) == sizeof(__nv_bfloat16) &&
                alignof(moe::bf16) == alignof(__nv_bfloat16));
  static_assert(sizeof(moe::fp16) == sizeof(__half) && alignof(moe::fp16) == alignof(__half));
  static_assert(sizeof(moe::fp8_e4m3) == sizeof(__nv_fp8_e4m3) &&
                alignof(moe::fp8_e4m3) == alignof(__nv_fp8_e4m3));
  static_assert(sizeof(moe::fp8_e5m2) == sizeof(__nv_fp8_e5m2) &&
                alignof(moe::fp8_e5m2) == alignof(__nv_fp8_e5m2));
  // A buffer of CUDA values read as ours: the same bits mean the same number.
  __half const cuda_values[2] = {__float2half_rn(1.5f), __float2half_rn(-0.25f)};
  moe::fp16 ours[2];
  std::memcpy(ours, cuda_values, sizeof(ours));
  CHECK(moe::to_float(ours[0]) == 1.5f);
  CHECK(moe::to_float(ours[1]) == -0.25f);
}

TEST_CASE_TEMPLATE("widening matches CUDA on every pattern, NaN payloads included", T, moe::bf16,
                   moe::fp16, moe::fp8_e4m3, moe::fp8_e5m2) {
  int wrong = 0;
  for (std::uint32_t b = 0; b < pattern_count<T>; ++b) {
    T const v = T::from_bits(static_cast<decltype(T{}.bits)>(b));
    std::uint32_t const ours = std::bit_cast<std::uint32_t>(moe::to_float(v));
    std::uint32_t const cuda = std::bit_cast<std::uint32_t>(cuda_widen(v));
    if (ours != cuda && ++wrong <= 5) {
      FAIL_CHECK((std::string(moe::storage_name<T>()) + " pattern " + hex(b) + ": ours " +
                  hex(ours) + ", CUDA " + hex(cuda)));
    }
  }
  CHECK(wrong == 0);
}

TEST_CASE_TEMPLATE("narrowing matches CUDA over all floats", T, moe::bf16, moe::fp16, moe::fp8_e4m3,
                   moe::fp8_e5m2) {
  constexpr std::uint64_t stride = MOE_TEST_FLOAT_STRIDE;
  static_assert(stride % 2 == 1, "an odd stride visits every residue of the low mantissa bits");
  std::uint64_t wrong = 0;
  for (std::uint64_t i = 0; i <= 0xffffffffu; i += stride) {
    float const x = std::bit_cast<float>(static_cast<std::uint32_t>(i));
    std::uint32_t const ours = moe::from_float<T>(x).bits;
    std::uint32_t const cuda = cuda_narrow(T{}, x);
    if (ours != cuda && ++wrong <= 5) {
      FAIL_CHECK((std::string(moe::storage_name<T>()) + " of float " + hex(i) + ": ours " +
                  hex(ours) + ", CUDA " + hex(cuda)));
    }
  }
  CHECK(wrong == 0);
}
