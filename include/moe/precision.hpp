// SPDX-License-Identifier: Apache-2.0
// Storage types for activations and weights: `bf16`, `fp16`, `fp8_e4m3` and `fp8_e5m2`, plus the
// generic `to_float` / `from_float` that templated code uses to stay agnostic of the storage type.
// Each type is a struct holding only its bit pattern, with the size and alignment of CUDA's
// `__nv_bfloat16`, `__half`, `__nv_fp8_e4m3` and `__nv_fp8_e5m2`, so a device buffer can be
// reinterpreted as either. The header needs no CUDA headers on the host: the conversions are
// written with integer operations there, and are bit-identical to CUDA's own host conversions
// (`__float2bfloat16_rn`, `__float2half_rn`, the saturating `__nv_fp8_e4m3(float)` /
// `__nv_fp8_e5m2(float)` constructors and the widening operators), NaN patterns included, which
// tests/host/test_precision_vs_cuda.cpp checks over every input. In device code the conversions
// call CUDA's intrinsics, so kernels get the hardware `cvt` instructions; the two sides can then
// differ only in which NaN pattern they produce, exactly as CUDA's own host and device code do.
#pragma once

#include <cstdint>      // std::uint8_t, std::uint16_t, std::uint32_t
#include <type_traits>  // std::is_same_v

#include "moe/detail/macros.hpp"  // MOE_HOST_DEVICE, MOE_DEVICE_PASS

#if defined(__CUDACC__)
#include <cuda_bf16.h>  // __nv_bfloat16, __float2bfloat16_rn, __bfloat162float
#include <cuda_fp16.h>  // __half, __float2half_rn, __half2float
#include <cuda_fp8.h>   // __nv_fp8_e4m3, __nv_fp8_e5m2, __nv_cvt_float_to_fp8
#endif

namespace moe {

namespace detail {

// `std::bit_cast` and `std::is_constant_evaluated` are host-only constexpr functions to nvcc
// (calling them from device code needs --expt-relaxed-constexpr); the builtins behind them work
// in g++, clang and nvcc on both sides.
template <class To, class From>
MOE_HOST_DEVICE constexpr To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs types of the same size");
  return __builtin_bit_cast(To, from);
}

// The small binary formats that are not a truncated float: fp16 and both fp8 flavours. All
// three round the same way; only these constants differ.
struct minifloat_format {
  int man_bits;  // stored mantissa bits
  int bias;      // exponent bias
  bool has_inf;  // E5M2 and fp16: all-ones exponent is inf/NaN; E4M3: only S.1111.111 is NaN
  std::uint32_t overflow_f32;   // float magnitude bits from which the result is `overflow_bits`
  std::uint32_t overflow_bits;  // fp16: inf; fp8 (CUDA's __NV_SATFINITE): largest finite
  std::uint32_t nan_bits;       // what CUDA writes for any NaN input; the sign is dropped
};

// 65520 = 65504 + half an ulp is a tie between 65504 (odd mantissa) and 2^16, so it already
// rounds to inf.
inline constexpr minifloat_format fp16_format{10, 15, true, 0x477ff000u, 0x7c00u, 0x7fffu};
// 464 = 448 + half an ulp is a tie that rounds down to 448 (even mantissa); CUDA saturates only
// strictly above it, and everything from 448 up ends at 448.
inline constexpr minifloat_format e4m3_format{3, 7, false, 0x43e80001u, 0x7eu, 0x7fu};
// 61440 = 57344 + half an ulp would round (to even) to 2^16 = inf, which saturates to 57344.
inline constexpr minifloat_format e5m2_format{2, 15, true, 0x47700000u, 0x7bu, 0x7fu};

// float -> minifloat, round to nearest even. Working on the float's bits rounds once, from the
// exact input: rounding to float precision first and then to the subnormal grid would round
// twice and get the ties of fp16 subnormals wrong.
template <minifloat_format F>
MOE_HOST_DEVICE constexpr std::uint32_t minifloat_from_float(float x) {
  std::uint32_t const u = bit_cast<std::uint32_t>(x);
  std::uint32_t const sign = (u >> 31) << (F.man_bits + (F.has_inf ? 5 : 4));
  std::uint32_t const mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u) return F.nan_bits;
  if (mag >= F.overflow_f32) return sign | F.overflow_bits;
  int const shift_normal = 23 - F.man_bits;
  std::uint32_t const min_normal_f32 = static_cast<std::uint32_t>(128 - F.bias) << 23;
  if (mag >= min_normal_f32) {
    // Rebias the exponent in place; adding half an ulp minus one plus the kept lsb rounds to
    // nearest even and lets a mantissa carry step the exponent up, as it should.
    std::uint32_t const rebiased = mag - (static_cast<std::uint32_t>(127 - F.bias) << 23);
    std::uint32_t const lsb = (rebiased >> shift_normal) & 1u;
    return sign | ((rebiased + (1u << (shift_normal - 1)) - 1u + lsb) >> shift_normal);
  }
  // At or below half the smallest subnormal: zero (the tie goes to the even zero), sign kept.
  std::uint32_t const to_zero_f32 = static_cast<std::uint32_t>(127 - F.bias - F.man_bits) << 23;
  if (mag <= to_zero_f32) return sign;
  // Subnormal result: the significand 1.m * 2^e counted in units of the smallest subnormal.
  std::uint32_t const exponent = mag >> 23;
  std::uint32_t const significand = (mag & 0x7fffffu) | 0x800000u;
  std::uint32_t const shift = static_cast<std::uint32_t>(151 - F.bias - F.man_bits) - exponent;
  std::uint32_t const kept = significand >> shift;
  std::uint32_t const rest = significand & ((1u << shift) - 1u);
  std::uint32_t const half = 1u << (shift - 1u);
  bool const up = rest > half || (rest == half && (kept & 1u) != 0u);
  return sign | (kept + (up ? 1u : 0u));
}

// minifloat -> float, exact. NaN widens to 0x7fffffff whatever its sign and payload, as CUDA's
// host code does (`__internal_half2float`; the fp8 operators go through fp16 the same way).
template <minifloat_format F>
MOE_HOST_DEVICE constexpr float minifloat_to_float(std::uint32_t bits) {
  int const exp_bits = F.has_inf ? 5 : 4;
  std::uint32_t const man_mask = (1u << F.man_bits) - 1u;
  std::uint32_t const exp_max = (1u << exp_bits) - 1u;
  std::uint32_t const sign = (bits >> (F.man_bits + exp_bits)) & 1u;
  std::uint32_t const exponent = (bits >> F.man_bits) & exp_max;
  std::uint32_t const mantissa = bits & man_mask;
  if (exponent == exp_max && (F.has_inf ? mantissa != 0u : mantissa == man_mask)) {
    return bit_cast<float>(0x7fffffffu);
  }
  if (F.has_inf && exponent == exp_max) return bit_cast<float>((sign << 31) | 0x7f800000u);
  if (exponent == 0u) {
    // Subnormal or zero: mantissa * 2^(1 - bias - man_bits) is exact in float, and a normal
    // float, so this does not depend on flush-to-zero settings.
    float const unit = bit_cast<float>(static_cast<std::uint32_t>(128 - F.bias - F.man_bits) << 23);
    float const magnitude = static_cast<float>(mantissa) * unit;
    return sign != 0u ? -magnitude : magnitude;
  }
  std::uint32_t const f32_exponent = exponent + static_cast<std::uint32_t>(127 - F.bias);
  return bit_cast<float>((sign << 31) | (f32_exponent << 23) | (mantissa << (23 - F.man_bits)));
}

}  // namespace detail

/// bfloat16: 1 sign, 8 exponent, 7 mantissa bits; the top half of a float. Layout-compatible
/// with CUDA's `__nv_bfloat16`.
struct alignas(2) bf16 {
  std::uint16_t bits;  ///< raw IEEE-style bit pattern

  bf16() = default;
  /// Rounds to nearest even; NaN becomes 0x7fff, overflow becomes inf (`__float2bfloat16_rn`).
  MOE_HOST_DEVICE constexpr explicit bf16(float x);
  /// Exact widening, a 16-bit shift: NaN keeps its sign and payload.
  MOE_HOST_DEVICE constexpr explicit operator float() const;
  /// The value whose bit pattern is `b`.
  MOE_HOST_DEVICE static constexpr bf16 from_bits(std::uint16_t b) {
    bf16 r{};
    r.bits = b;
    return r;
  }
};

/// IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits. Layout-compatible with `__half`.
struct alignas(2) fp16 {
  std::uint16_t bits;  ///< raw IEEE bit pattern

  fp16() = default;
  /// Rounds to nearest even, subnormals included; NaN becomes 0x7fff, values from 65520 up
  /// become inf (`__float2half_rn`).
  MOE_HOST_DEVICE constexpr explicit fp16(float x);
  /// Exact widening; on the host every NaN becomes the float 0x7fffffff, as in CUDA.
  MOE_HOST_DEVICE constexpr explicit operator float() const;
  /// The value whose bit pattern is `b`.
  MOE_HOST_DEVICE static constexpr fp16 from_bits(std::uint16_t b) {
    fp16 r{};
    r.bits = b;
    return r;
  }
};

/// OCP FP8 E4M3: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, NaN is S.1111.111,
/// largest finite 448. Layout-compatible with `__nv_fp8_e4m3`.
struct alignas(1) fp8_e4m3 {
  std::uint8_t bits;  ///< raw bit pattern

  fp8_e4m3() = default;
  /// Rounds to nearest even and saturates (`__NV_SATFINITE`): |x| > 448 and ±inf give ±448,
  /// NaN gives 0x7f.
  MOE_HOST_DEVICE constexpr explicit fp8_e4m3(float x);
  /// Exact widening; on the host every NaN becomes the float 0x7fffffff, as in CUDA.
  MOE_HOST_DEVICE constexpr explicit operator float() const;
  /// The value whose bit pattern is `b`.
  MOE_HOST_DEVICE static constexpr fp8_e4m3 from_bits(std::uint8_t b) {
    fp8_e4m3 r{};
    r.bits = b;
    return r;
  }
};

/// OCP FP8 E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits; the top byte of an fp16, with
/// inf and NaN, largest finite 57344. Layout-compatible with `__nv_fp8_e5m2`.
struct alignas(1) fp8_e5m2 {
  std::uint8_t bits;  ///< raw bit pattern

  fp8_e5m2() = default;
  /// Rounds to nearest even and saturates (`__NV_SATFINITE`): |x| > 57344 and ±inf give
  /// ±57344, NaN gives 0x7f.
  MOE_HOST_DEVICE constexpr explicit fp8_e5m2(float x);
  /// Exact widening; on the host every NaN becomes the float 0x7fffffff, as in CUDA.
  MOE_HOST_DEVICE constexpr explicit operator float() const;
  /// The value whose bit pattern is `b`.
  MOE_HOST_DEVICE static constexpr fp8_e5m2 from_bits(std::uint8_t b) {
    fp8_e5m2 r{};
    r.bits = b;
    return r;
  }
};

// The point of these types is that `reinterpret_cast` between our buffers and CUDA's works.
static_assert(sizeof(bf16) == 2 && alignof(bf16) == 2);
static_assert(sizeof(fp16) == 2 && alignof(fp16) == 2);
static_assert(sizeof(fp8_e4m3) == 1 && alignof(fp8_e4m3) == 1);
static_assert(sizeof(fp8_e5m2) == 1 && alignof(fp8_e5m2) == 1);
#if defined(__CUDACC__)
static_assert(sizeof(bf16) == sizeof(__nv_bfloat16) && alignof(bf16) == alignof(__nv_bfloat16));
static_assert(sizeof(fp16) == sizeof(__half) && alignof(fp16) == alignof(__half));
static_assert(sizeof(fp8_e4m3) == sizeof(__nv_fp8_e4m3) &&
              alignof(fp8_e4m3) == alignof(__nv_fp8_e4m3));
static_assert(sizeof(fp8_e5m2) == sizeof(__nv_fp8_e5m2) &&
              alignof(fp8_e5m2) == alignof(__nv_fp8_e5m2));
#endif

// The device branches below are taken only outside constant evaluation, since CUDA's intrinsics
// are not constexpr; constant evaluation uses the portable code, which gives the same bits.

MOE_HOST_DEVICE constexpr bf16::bf16(float x) : bits{} {
#if MOE_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) {
    bits = static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(x)).x;
    return;
  }
#endif
  std::uint32_t const u = detail::bit_cast<std::uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    bits = 0x7fff;  // any NaN: CUDA's canonical NaN, sign dropped
    return;
  }
  // Adding 0x7fff plus the kept lsb carries into bit 16 exactly when the dropped half is above
  // one half, or is one half and the kept lsb is odd; a carry out of the largest finite value
  // gives inf, as round-to-nearest should.
  bits = static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

MOE_HOST_DEVICE constexpr bf16::operator float() const {
#if MOE_DEVICE_PASS
  // sm_90 widens with cvt.f32.bf16 rather than a shift; follow CUDA there too.
  if (!__builtin_is_constant_evaluated()) return __bfloat162float(__nv_bfloat16_raw{bits});
#endif
  return detail::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

MOE_HOST_DEVICE constexpr fp16::fp16(float x) : bits{} {
#if MOE_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) {
    bits = static_cast<__half_raw>(__float2half_rn(x)).x;
    return;
  }
#endif
  bits = static_cast<std::uint16_t>(detail::minifloat_from_float<detail::fp16_format>(x));
}

MOE_HOST_DEVICE constexpr fp16::operator float() const {
#if MOE_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) return __half2float(__half_raw{bits});
#endif
  return detail::minifloat_to_float<detail::fp16_format>(bits);
}

MOE_HOST_DEVICE constexpr fp8_e4m3::fp8_e4m3(float x) : bits{} {
#if MOE_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) {
    bits = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
    return;
  }
#endif
  bits = static_cast<std::uint8_t>(detail::minifloat_from_float<detail::e4m3_format>(x));
}

MOE_HOST_DEVICE constexpr fp8_e4m3::operator float() const {
#if MOE_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) {
    __nv_fp8_e4m3 v;
    v.__x = bits;
    return static_cast<float>(v);
  }
#endif
  return detail::minifloat_to_float<detail::e4m3_format>(bits);
}

MOE_HOST_DEVICE constexpr fp8_e5m2::fp8_e5m2(float x) : bits{} {
#if MOE_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) {
    bits = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E5M2);
    return;
  }
#endif
  bits = static_cast<std::uint8_t>(detail::minifloat_from_float<detail::e5m2_format>(x));
}

MOE_HOST_DEVICE constexpr fp8_e5m2::operator float() const {
#if MOE_DEVICE_PASS
  if (!__builtin_is_constant_evaluated()) {
    __nv_fp8_e5m2 v;
    v.__x = bits;
    return static_cast<float>(v);
  }
#endif
  return detail::minifloat_to_float<detail::e5m2_format>(bits);
}

/// True for the types a tensor may be stored in: the four above, `float` and `double`.
template <class T>
inline constexpr bool is_storage_type_v = false;
template <>
inline constexpr bool is_storage_type_v<double> = true;
template <>
inline constexpr bool is_storage_type_v<float> = true;
template <>
inline constexpr bool is_storage_type_v<fp16> = true;
template <>
inline constexpr bool is_storage_type_v<bf16> = true;
template <>
inline constexpr bool is_storage_type_v<fp8_e4m3> = true;
template <>
inline constexpr bool is_storage_type_v<fp8_e5m2> = true;

/// A type a tensor may be stored in; see `is_storage_type_v`.
template <class T>
concept storage_type = is_storage_type_v<T>;

/// Short name of a storage type, spelt like the `moe::precision` enumerators: "fp64", "fp32",
/// "fp16", "bf16", "fp8_e4m3", "fp8_e5m2". For test names, logs and benchmark labels.
template <storage_type T>
MOE_HOST_DEVICE constexpr char const* storage_name() {
  if constexpr (std::is_same_v<T, double>)
    return "fp64";
  else if constexpr (std::is_same_v<T, float>)
    return "fp32";
  else if constexpr (std::is_same_v<T, fp16>)
    return "fp16";
  else if constexpr (std::is_same_v<T, bf16>)
    return "bf16";
  else if constexpr (std::is_same_v<T, fp8_e4m3>)
    return "fp8_e4m3";
  else
    return "fp8_e5m2";
}

/// Widens a stored value to the type arithmetic is done in: `float` for the 16- and 8-bit
/// types and for `float`, `double` for `double` (so an fp64 path keeps its precision).
/// @param x  one stored element
template <storage_type T>
MOE_HOST_DEVICE constexpr auto to_float(T x) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)
    return x;
  else
    return static_cast<float>(x);
}

/// Rounds a float to storage type `T` with CUDA's rounding (see each type); `float` is the
/// identity and `double` an exact widening.
/// @param x  the value to store
template <storage_type T>
MOE_HOST_DEVICE constexpr T from_float(float x) {
  return static_cast<T>(x);
}

/// Stores a double (what `to_float` gives for `double`) as `double` or `float`. The 16- and
/// 8-bit types refuse: going through float would round twice, which can differ from rounding
/// the double once, and without this overload the call would narrow to float silently.
/// @param x  the value to store
template <storage_type T>
MOE_HOST_DEVICE constexpr T from_float(double x) {
  static_assert(std::is_same_v<T, double> || std::is_same_v<T, float>,
                "from_float<T>(double) stores only to double or float; for a 16- or 8-bit type "
                "pass a float (static_cast<float> first if rounding twice is acceptable)");
  return static_cast<T>(x);
}

}  // namespace moe
