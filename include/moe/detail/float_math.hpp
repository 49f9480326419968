// SPDX-License-Identifier: Apache-2.0
// Deterministic float functions for the random draws: `log_det` and `cos_2pi_det` give the
// same bits under g++ on the host and under nvcc on the device, so a tensor of normal or
// Gumbel noise drawn by a kernel can be reproduced exactly by the CPU backend. They are
// built only from IEEE-754 basic operations (add, sub, mul, fma, div, sqrt), each correctly
// rounded to nearest-even on both sides, and from exact integer bit manipulation. Library
// `logf`/`cosf` are avoided because CUDA's and glibc's differ in their last bits, and plain
// `a * b + c` is avoided because nvcc (always) and g++ (with -ffp-contract=fast and an FMA
// target) may fuse it into one fma, changing the rounding on one side only.
// Measured against a float64 reference over every float of their domains (all positive
// floats; all of [0, 1]): log_det <= 0.649 ulp, cos_2pi_det <= 0.714 ulp; the host tests
// assert 0.65 and 0.72 on dense sweeps. Results are the same bits with g++ -O0 to
// -O3 -march=native -ffp-contract=fast, clang++, and (by construction) nvcc.
// Host requirements: FLT_EVAL_METHOD == 0 (SSE/NEON, not x87) and no -ffast-math.
#pragma once

#include <cfloat>   // FLT_EVAL_METHOD
#include <cstdint>  // std::uint32_t, std::int32_t

#include "moe/detail/macros.hpp"  // MOE_HOST_DEVICE, MOE_DEVICE_PASS

#if !MOE_DEVICE_PASS
#include <bit>    // std::bit_cast
#include <cmath>  // std::fma, std::sqrt
#endif

// -ffast-math reassociates and flushes subnormals; x87 evaluates floats in extended precision.
// Either would make the host draws differ from the device draws.
#if !MOE_DEVICE_PASS && defined(__FAST_MATH__)
#error "moe/detail/float_math.hpp needs IEEE float semantics on the host: drop -ffast-math"
#endif
#if !MOE_DEVICE_PASS && defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "moe/detail/float_math.hpp needs FLT_EVAL_METHOD == 0 (SSE or NEON float math, not x87)"
#endif

namespace moe::detail {

#if !MOE_DEVICE_PASS
/// Returns `v` unchanged, but hides from the optimiser how it was computed.
///
/// GCC forms fmas on its SSA form after inlining, across statements and function
/// boundaries, so neither helper functions nor `#pragma STDC FP_CONTRACT OFF` (ignored by
/// GCC in C++) keep `mul_rn(a, b)` out of a later `add_rn`. An empty asm that claims to
/// modify the register holding the product does: the add then consumes the asm's output,
/// which is not a multiply, so there is nothing to fuse. It costs no instruction. The
/// volatile round trip is the portable fallback (a memory access is never fused either).
/// Checked with g++ 12 and clang++: with -O2 -march=native -ffp-contract=fast,
/// add_rn(mul_rn(a, b), c) compiles to a separate multiply and add with the asm, and to one
/// vfmadd without it. (log_det and cos_2pi_det happen to feed only exact products into
/// adds today, where fusing is harmless; the barrier keeps that from being load-bearing.)
inline float opaque(float v) {
#if defined(__GNUC__) && defined(__x86_64__)
  __asm__("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(v));
#else
  volatile float pinned = v;
  v = pinned;
#endif
  return v;
}
#endif

/// a + b, rounded to nearest-even, never fused with a neighbouring operation.
MOE_HOST_DEVICE float add_rn(float a, float b) {
#if MOE_DEVICE_PASS
  return __fadd_rn(a, b);
#else
  return a + b;  // an add is fused only with the multiply feeding it; see mul_rn
#endif
}

/// a - b, rounded to nearest-even, never fused with a neighbouring operation.
MOE_HOST_DEVICE float sub_rn(float a, float b) {
#if MOE_DEVICE_PASS
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

/// a * b, rounded to nearest-even, never fused into a following add or subtract.
MOE_HOST_DEVICE float mul_rn(float a, float b) {
#if MOE_DEVICE_PASS
  return __fmul_rn(a, b);  // nvcc never contracts the _rn intrinsics
#else
  return opaque(a * b);      // products are the only operands g++ can contract; pin them
#endif
}

/// a * b + c with a single rounding to nearest-even (IEEE fusedMultiplyAdd).
MOE_HOST_DEVICE float fma_rn(float a, float b, float c) {
#if MOE_DEVICE_PASS
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);  // vfmadd with FMA hardware, else glibc's correctly rounded fmaf
#endif
}

/// a / b, correctly rounded to nearest-even (also under nvcc -prec-div=false).
MOE_HOST_DEVICE float div_rn(float a, float b) {
#if MOE_DEVICE_PASS
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

/// sqrt(a), correctly rounded to nearest-even (also under nvcc -prec-sqrt=false).
MOE_HOST_DEVICE float sqrt_rn(float a) {
#if MOE_DEVICE_PASS
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

/// The bits of `x` (`std::bit_cast` is not callable from device code without
/// --expt-relaxed-constexpr, so the device side uses the intrinsic).
MOE_HOST_DEVICE std::uint32_t float_bits(float x) {
#if MOE_DEVICE_PASS
  return __float_as_uint(x);
#else
  return std::bit_cast<std::uint32_t>(x);
#endif
}

/// The float whose bits are `b`.
MOE_HOST_DEVICE float bits_float(std::uint32_t b) {
#if MOE_DEVICE_PASS
  return __uint_as_float(b);
#else
  return std::bit_cast<float>(b);
#endif
}

/// Natural logarithm, bitwise identical on host and device; max error 0.649 ulp.
///
/// x = 2^e * m with m in [sqrt(1/2), sqrt(2)), so f = m - 1 lies in [-0.293, 0.415) and
/// is exact (Sterbenz). log1p(f) = f - f^2/2 + f^3 * P(f) with P a degree-8 Chebyshev fit
/// (error 2.9e-8 in P, under 0.1 ulp in the result). e * ln2 is split so that e * ln2_hi
/// is exact, and the three large terms e * ln2_hi, f and -f^2/2 are added with Fast2Sum,
/// so only the final addition rounds at the result's scale.
/// @param x any float: +0 and -0 give -inf, negatives and NaN give NaN, +inf gives +inf,
///          subnormals are handled (scaled by 2^23 first).
MOE_HOST_DEVICE float log_det(float x) {
  std::uint32_t bits = float_bits(x);
  int e_adjust = 0;
  if (bits < 0x00800000u) {                          // +0 or a positive subnormal
    if (bits == 0u) return bits_float(0xff800000u);  // -inf
    x = mul_rn(x, 0x1p23f);                          // exact: now normal
    bits = float_bits(x);
    e_adjust = -23;
  }
  if (bits >= 0x7f800000u) {                                  // +inf, NaN or sign bit set
    if (bits == 0x7f800000u) return x;                        // log(+inf) = +inf
    if (bits == 0x80000000u) return bits_float(0xff800000u);  // log(-0) = -inf
    return bits_float(0x7fc00000u);                           // NaN
  }
  // Subtracting the bits of sqrt(1/2) (0x3f3504f3) moves the exponent step from 1 to
  // sqrt(1/2), so the arithmetic shift yields e with m = x * 2^-e in [sqrt(1/2), sqrt(2)).
  int const e = static_cast<std::int32_t>(bits - 0x3f3504f3u) >> 23;
  float const m = bits_float(bits - (static_cast<std::uint32_t>(e) << 23));
  float const f = sub_rn(m, 1.0f);  // exact: m in [1/2, 2]
  // f^2 = f2 + f2_lo exactly; f^2/2 is the largest correction and must not be rounded
  // at the result's scale.
  float const f2 = mul_rn(f, f);
  float const f2_lo = fma_rn(f, f, -f2);
  float const half_f2 = mul_rn(f2, 0.5f);  // exact: f2 >= 2^-48, far from underflow

  float p = 0x1.1d8ea6p-4f;  // P(f) ~ 1/3 - f/4 + f^2/5 - ..., highest degree first
  p = fma_rn(p, f, -0x1.d635bcp-4f);
  p = fma_rn(p, f, 0x1.dea282p-4f);
  p = fma_rn(p, f, -0x1.fcf4c6p-4f);
  p = fma_rn(p, f, 0x1.23d21ap-3f);
  p = fma_rn(p, f, -0x1.555b4ap-3f);
  p = fma_rn(p, f, 0x1.999d5ap-3f);
  p = fma_rn(p, f, -0x1.fffffcp-3f);
  p = fma_rn(p, f, 0x1.555554p-2f);
  float const cubic = mul_rn(f2, mul_rn(f, p));  // |cubic| < 0.025: its rounding is noise

  // ln2_hi has 15 significant bits and |e| <= 151 needs 8, so e * ln2_hi is exact.
  float const ef = static_cast<float>(e + e_adjust);
  float const ln2_hi = 0x1.62e4p-1f;     // 0.693145752
  float const ln2_lo = 0x1.7f7d1cp-20f;  // ln(2) - ln2_hi = 1.42860677e-06
  float const small = fma_rn(f2_lo, -0.5f, fma_rn(ef, ln2_lo, cubic));
  float const big = mul_rn(ef, ln2_hi);
  // Two Fast2Sums add the three large terms exactly (|big| >= 0.69 > |f| unless big == 0,
  // and |big + f| > 0.39 > f^2/2 unless big == 0, where |f| >= f^2/2), so the only
  // rounding at the result's scale is the last addition.
  float const sum1 = add_rn(big, f);
  float const err1 = sub_rn(f, sub_rn(sum1, big));
  float const sum2 = sub_rn(sum1, half_f2);
  float const err2 = sub_rn(sub_rn(sum1, sum2), half_f2);
  return add_rn(sum2, add_rn(add_rn(err1, err2), small));
}

/// cos(2*pi*u), bitwise identical on host and device; max error 0.714 ulp on [0, 1].
///
/// t = 4u is exact, and so is its split t = k + r with integer k and r in [-1/2, 1/2]
/// (Sterbenz), so cos(2*pi*u) = cos(pi/2 * (k + r)) is a quadrant sign times sin or cos of
/// pi/2 * r, both polynomials in r of degree 9 and 8. No rounded multiple of pi enters the
/// reduction, so the zeros at u = 1/4 and 3/4 keep full relative accuracy.
/// @param u the draws use [0, 1]; any finite |u| < 2^29 (4u must fit an int) works.
MOE_HOST_DEVICE float cos_2pi_det(float u) {
  float const t = mul_rn(u, 4.0f);
  int k = static_cast<int>(t);                 // truncates toward zero
  float r = sub_rn(t, static_cast<float>(k));  // exact, in (-1, 1)
  if (r > 0.5f) {
    r = sub_rn(r, 1.0f);
    ++k;
  } else if (r < -0.5f) {
    r = add_rn(r, 1.0f);
    --k;
  }
  float const s = mul_rn(r, r);
  float v;
  if (k & 1) {
    // sin(pi/2 r) = r * (pi/2 + s * S(s)); pi/2 is split so r * half_pi_hi is not rounded
    // separately from the rest.
    float p = 0x1.4cb762p-13f;
    p = fma_rn(p, s, -0x1.32ce1ep-8f);
    p = fma_rn(p, s, 0x1.466bc2p-4f);
    p = fma_rn(p, s, -0x1.4abbcep-1f);
    float const tail = fma_rn(p, s, -0x1.777a5cp-25f);  // + (pi/2 - half_pi_hi)
    v = fma_rn(r, 0x1.921fb6p+0f, mul_rn(r, tail));
  } else {
    // cos(pi/2 r) = 1 + c0 * r^2 + s^2 * C(s). c0 * r^2 reaches 0.31, so rounding it (or r^2,
    // or c0) at its own scale would cost up to 0.25 ulp each; instead 1 + c0_hi * s is
    // rounded once and everything it lost is carried in `corr`.
    float const s_lo = fma_rn(r, r, -s);  // r^2 = s + s_lo exactly
    float const c0_hi = -0x1.3bd3ccp+0f;  // c0 ~ -pi^2/8, as fitted
    float const c0_lo = -0x1.313d3p-25f;
    float p = 0x1.db6492p-11f;
    p = fma_rn(p, s, -0x1.55cb98p-6f);
    p = fma_rn(p, s, 0x1.03c1eap-2f);
    float const head = fma_rn(c0_hi, s, 1.0f);
    float const head_err = fma_rn(c0_hi, s, sub_rn(1.0f, head));  // 1 - head is exact
    float const corr = fma_rn(s, fma_rn(s, p, c0_lo), fma_rn(c0_hi, s_lo, head_err));
    v = add_rn(head, corr);
  }
  // Quadrants k = 1, 2 (mod 4) are negative; & works for negative k in two's complement.
  return ((k + 1) & 2) ? -v : v;
}

}  // namespace moe::detail
