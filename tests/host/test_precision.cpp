// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/precision.hpp with no CUDA at all: every 16- and 8-bit pattern widens
// exactly and narrows back to itself, hand-picked rounding cases (ties, NaN, inf, zeros,
// subnormals, overflow) pin down CUDA's semantics, and a reference rounder written from the
// format specifications alone (decode every representable value, pick the nearer neighbour in
// double, ties to the even pattern) is compared with the implementation over a strided sweep of
// all 2^32 float bit patterns. MOE_TEST_FLOAT_STRIDE sets the sweep step: 1 visits every float;
// the default, an odd number, still visits every residue of the low mantissa bits, where the
// ties live; sanitizer builds pass a larger odd stride.
#include <doctest/doctest.h>

#include <algorithm>    // std::upper_bound
#include <bit>          // std::bit_cast
#include <cmath>        // std::ldexp, std::isnan, std::signbit, std::fabs
#include <cstddef>      // std::size_t
#include <cstdint>      // std::uint32_t, std::uint64_t
#include <limits>       // std::numeric_limits
#include <sstream>      // std::ostringstream
#include <string>       // std::string
#include <type_traits>  // std::is_trivially_copyable_v
#include <vector>       // std::vector

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

constexpr float f32(std::uint32_t bits) {
  return std::bit_cast<float>(bits);
}
constexpr std::uint32_t bits_of(float x) {
  return std::bit_cast<std::uint32_t>(x);
}

// The formats as their specifications describe them, deliberately not shared with the header.
template <class T>
struct format;
template <>
struct format<moe::bf16> {
  static constexpr int exp_bits = 8, man_bits = 7, bias = 127;
  static constexpr bool has_inf = true, saturates = false;
  static constexpr std::uint32_t canonical_nan = 0x7fff;
};
template <>
struct format<moe::fp16> {
  static constexpr int exp_bits = 5, man_bits = 10, bias = 15;
  static constexpr bool has_inf = true, saturates = false;
  static constexpr std::uint32_t canonical_nan = 0x7fff;
};
template <>
struct format<moe::fp8_e4m3> {
  static constexpr int exp_bits = 4, man_bits = 3, bias = 7;
  static constexpr bool has_inf = false, saturates = true;
  static constexpr std::uint32_t canonical_nan = 0x7f;
};
template <>
struct format<moe::fp8_e5m2> {
  static constexpr int exp_bits = 5, man_bits = 2, bias = 15;
  static constexpr bool has_inf = true, saturates = true;
  static constexpr std::uint32_t canonical_nan = 0x7f;
};

template <class T>
constexpr std::uint32_t sign_bit = 1u << (format<T>::exp_bits + format<T>::man_bits);
template <class T>
constexpr std::uint32_t pattern_count = sign_bit<T> << 1;

template <class T>
constexpr bool is_nan_pattern(std::uint32_t b) {
  using F = format<T>;
  std::uint32_t const e = (b >> F::man_bits) & ((1u << F::exp_bits) - 1u);
  std::uint32_t const m = b & ((1u << F::man_bits) - 1u);
  bool const top = e == (1u << F::exp_bits) - 1u;
  return top && (F::has_inf ? m != 0u : m == (1u << F::man_bits) - 1u);
}
template <class T>
constexpr bool is_inf_pattern(std::uint32_t b) {
  using F = format<T>;
  return F::has_inf && (b & (sign_bit<T> - 1u)) == ((1u << F::exp_bits) - 1u) << F::man_bits;
}

// Value of a finite pattern, from the textbook formula.
template <class T>
double decode(std::uint32_t b) {
  using F = format<T>;
  int const e = static_cast<int>((b >> F::man_bits) & ((1u << F::exp_bits) - 1u));
  double const m = static_cast<double>(b & ((1u << F::man_bits) - 1u));
  double const magnitude =
      e == 0 ? std::ldexp(m, 1 - F::bias - F::man_bits)
             : std::ldexp(m + std::ldexp(1.0, F::man_bits), e - F::bias - F::man_bits);
  return (b & sign_bit<T>) != 0u ? -magnitude : magnitude;
}

template <class T>
T from_bits(std::uint32_t b) {
  return T::from_bits(static_cast<decltype(T{}.bits)>(b));
}

// Round to nearest, ties to the even pattern, by looking the input up among every representable
// non-negative value. For formats with inf the pattern after the largest finite stands for
// 2^(emax+1), so overflow rounds to inf exactly where round-to-nearest says; the saturating fp8
// conversions clamp everything from the largest finite value up to it. The lookup keeps a
// cursor, so a sweep in increasing magnitude costs O(1) per input.
template <class T>
class reference_rounder {
 public:
  reference_rounder() {
    using F = format<T>;
    for (std::uint32_t b = 0; b < sign_bit<T>; ++b) {
      if (!is_nan_pattern<T>(b) && !is_inf_pattern<T>(b)) table_.push_back({decode<T>(b), b});
    }
    max_finite_ = table_.back();
    if constexpr (!F::saturates) {
      int const emax = (1 << F::exp_bits) - 2 - F::bias;
      table_.push_back({std::ldexp(1.0, emax + 1), ((1u << F::exp_bits) - 1u) << F::man_bits});
    }
  }

  std::uint32_t operator()(float x) {
    if (std::isnan(x)) return format<T>::canonical_nan;
    std::uint32_t const sign = std::signbit(x) ? sign_bit<T> : 0u;
    double const a = std::fabs(static_cast<double>(x));
    if (format<T>::saturates && a >= max_finite_.value) return sign | max_finite_.bits;
    if (a >= table_.back().value) return sign | table_.back().bits;  // inf, non-saturating
    if (table_[cursor_].value > a) {
      auto const above = std::upper_bound(table_.begin(), table_.end(), a,
                                          [](double v, entry const& e) { return v < e.value; });
      cursor_ = static_cast<std::size_t>(above - table_.begin()) - 1;
    }
    while (table_[cursor_ + 1].value <= a) ++cursor_;
    entry const lo = table_[cursor_];
    entry const hi = table_[cursor_ + 1];
    double const below = a - lo.value;  // exact: both are short multiples of the float's ulp
    double const above = hi.value - a;
    bool const take_hi = above < below || (above == below && (lo.bits & 1u) != 0u);
    return sign | (take_hi ? hi.bits : lo.bits);
  }

 private:
  struct entry {
    double value;
    std::uint32_t bits;
  };
  std::vector<entry> table_;
  entry max_finite_{};
  std::size_t cursor_ = 0;
};

template <class T>
std::uint32_t narrow(float x) {
  return moe::from_float<T>(x).bits;
}

}  // namespace

TEST_CASE("storage types are plain bits with CUDA's layout") {
  static_assert(std::is_trivially_copyable_v<moe::bf16> && std::is_trivially_copyable_v<moe::fp16>);
  static_assert(std::is_trivially_copyable_v<moe::fp8_e4m3> &&
                std::is_trivially_copyable_v<moe::fp8_e5m2>);
  static_assert(std::is_trivially_default_constructible_v<moe::bf16>);
  static_assert(sizeof(moe::bf16) == 2 && alignof(moe::bf16) == 2);
  static_assert(sizeof(moe::fp16) == 2 && alignof(moe::fp16) == 2);
  static_assert(sizeof(moe::fp8_e4m3) == 1 && alignof(moe::fp8_e4m3) == 1);
  static_assert(sizeof(moe::fp8_e5m2) == 1 && alignof(moe::fp8_e5m2) == 1);

  static_assert(moe::is_storage_type_v<float> && moe::is_storage_type_v<double>);
  static_assert(moe::is_storage_type_v<moe::bf16> && moe::is_storage_type_v<moe::fp8_e5m2>);
  static_assert(!moe::is_storage_type_v<int> && !moe::is_storage_type_v<moe::bf16 const>);
  CHECK(std::string(moe::storage_name<double>()) == "fp64");
  CHECK(std::string(moe::storage_name<float>()) == "fp32");
  CHECK(std::string(moe::storage_name<moe::fp16>()) == "fp16");
  CHECK(std::string(moe::storage_name<moe::bf16>()) == "bf16");
  CHECK(std::string(moe::storage_name<moe::fp8_e4m3>()) == "fp8_e4m3");
  CHECK(std::string(moe::storage_name<moe::fp8_e5m2>()) == "fp8_e5m2");

  // Generic code: float and double pass through, double keeps its precision.
  static_assert(std::is_same_v<decltype(moe::to_float(1.0)), double>);
  static_assert(std::is_same_v<decltype(moe::to_float(moe::bf16{})), float>);
  static_assert(moe::to_float(0.1) == 0.1 && moe::to_float(0.1f) == 0.1f);
  static_assert(moe::from_float<float>(0.1f) == 0.1f &&
                moe::from_float<double>(0.1f) == double(0.1f));
  static_assert(moe::from_float<double>(moe::to_float(0.1)) == 0.1);  // no detour through float
  static_assert(moe::from_float<float>(0.1) == 0.1f);

  // Everything is usable in constant expressions.
  static_assert(moe::bf16(1.0f).bits == 0x3f80 && moe::fp16(1.0f).bits == 0x3c00);
  static_assert(moe::fp8_e4m3(1.0f).bits == 0x38 && moe::fp8_e5m2(1.0f).bits == 0x3c);
  static_assert(moe::to_float(moe::fp8_e4m3::from_bits(0x7e)) == 448.0f);
  static_assert(moe::to_float(moe::fp16::from_bits(0x0001)) == 0x1p-24f);
}

// CUDA's NaN rule, which the round trips below check: narrowing turns every NaN, whatever its
// sign and payload, into one positive canonical pattern (0x7fff for bf16 and fp16, 0x7f for both
// fp8 types); widening an fp16 or fp8 NaN gives the float 0x7fffffff (sign and payload
// dropped), while widening bf16 is a 16-bit shift and keeps them. So a NaN round trips to the
// canonical NaN, not to itself.
TEST_CASE_TEMPLATE("every pattern widens exactly and narrows back", T, moe::bf16, moe::fp16,
                   moe::fp8_e4m3, moe::fp8_e5m2) {
  int wrong = 0;
  for (std::uint32_t b = 0; b < pattern_count<T>; ++b) {
    float const wide = moe::to_float(from_bits<T>(b));
    std::uint32_t const back = narrow<T>(wide);
    bool ok = false;
    if (is_nan_pattern<T>(b)) {
      std::uint32_t const expected_wide =
          std::is_same_v<T, moe::bf16> ? b << 16 : 0x7fffffffu;  // see the rule above
      ok = std::isnan(wide) && bits_of(wide) == expected_wide && back == format<T>::canonical_nan;
    } else if (is_inf_pattern<T>(b)) {
      bool const negative = (b & sign_bit<T>) != 0u;
      ok = wide == (negative ? -1.0f : 1.0f) * std::numeric_limits<float>::infinity() &&
           back == (format<T>::saturates ? (b - 1u) : b);  // satfinite: inf -> largest finite
    } else {
      // Compared as doubles and as signs, so -0 must widen to -0.0f.
      ok = static_cast<double>(wide) == decode<T>(b) &&
           std::signbit(wide) == ((b & sign_bit<T>) != 0u) && back == b;
    }
    if (!ok && ++wrong <= 5) {
      FAIL_CHECK((std::string(moe::storage_name<T>()) + " pattern " + hex(b) + " widens to " +
                  hex(bits_of(wide)) + " and narrows to " + hex(back)));
    }
  }
  CHECK(wrong == 0);
}

TEST_CASE("bf16 rounding") {
  using T = moe::bf16;
  // Ties: 1 + 2^-8 sits halfway between 0x3f80 (even) and 0x3f81.
  CHECK(narrow<T>(f32(0x3f808000)) == 0x3f80);
  CHECK(narrow<T>(f32(0x3f818000)) == 0x3f82);  // halfway between 0x3f81 and 0x3f82 (even)
  CHECK(narrow<T>(f32(0xbf808000)) == 0xbf80);
  CHECK(narrow<T>(f32(0xbf818000)) == 0xbf82);
  CHECK(narrow<T>(f32(0x3f808001)) == 0x3f81);  // just above a tie
  CHECK(narrow<T>(f32(0x3f807fff)) == 0x3f80);  // just below one
  // NaN of any sign and payload, quiet or signalling.
  CHECK(narrow<T>(f32(0x7fc00000)) == 0x7fff);
  CHECK(narrow<T>(f32(0xffc00001)) == 0x7fff);
  CHECK(narrow<T>(f32(0x7f800001)) == 0x7fff);
  CHECK(narrow<T>(f32(0x7fffffff)) == 0x7fff);
  // Infinities and zeros.
  CHECK(narrow<T>(f32(0x7f800000)) == 0x7f80);
  CHECK(narrow<T>(f32(0xff800000)) == 0xff80);
  CHECK(narrow<T>(0.0f) == 0x0000);
  CHECK(narrow<T>(-0.0f) == 0x8000);
  // Subnormal float inputs share bf16's exponent range, so they round like everything else.
  CHECK(narrow<T>(f32(0x00000001)) == 0x0000);
  CHECK(narrow<T>(f32(0x80000001)) == 0x8000);
  CHECK(narrow<T>(f32(0x00008000)) == 0x0000);  // tie with zero
  CHECK(narrow<T>(f32(0x00008001)) == 0x0001);  // smallest bf16 subnormal
  CHECK(narrow<T>(f32(0x00018000)) == 0x0002);
  CHECK(narrow<T>(f32(0x007fffff)) == 0x0080);  // rounds up into the smallest normal
  // Overflow: 0x7f7f8000 is the tie between the largest finite (odd) and 2^128, so it is inf;
  // one ulp below it is the largest float that still gives the largest finite bf16.
  CHECK(narrow<T>(f32(0x7f7f7fff)) == 0x7f7f);
  CHECK(narrow<T>(f32(0x7f7f8000)) == 0x7f80);
  CHECK(narrow<T>(f32(0x7f7fffff)) == 0x7f80);
  CHECK(narrow<T>(f32(0xff7fffff)) == 0xff80);
  CHECK(moe::to_float(T::from_bits(0x0001)) == 0x1p-133f);
  CHECK(moe::to_float(T::from_bits(0x7f7f)) == 0x1.fep127f);
}

TEST_CASE("fp16 rounding") {
  using T = moe::fp16;
  CHECK(narrow<T>(1.0f) == 0x3c00);
  CHECK(narrow<T>(f32(0x3f801000)) == 0x3c00);  // 1 + 2^-11: tie, down to even
  CHECK(narrow<T>(f32(0x3f803000)) == 0x3c02);  // 1 + 3*2^-11: tie, up to even
  CHECK(narrow<T>(f32(0xbf801000)) == 0xbc00);
  CHECK(narrow<T>(f32(0xbf803000)) == 0xbc02);
  CHECK(narrow<T>(f32(0x3f801001)) == 0x3c01);
  CHECK(narrow<T>(f32(0x7fc00000)) == 0x7fff);
  CHECK(narrow<T>(f32(0xffc00000)) == 0x7fff);
  CHECK(narrow<T>(f32(0x7f800001)) == 0x7fff);
  CHECK(narrow<T>(f32(0x7f800000)) == 0x7c00);
  CHECK(narrow<T>(f32(0xff800000)) == 0xfc00);
  CHECK(narrow<T>(0.0f) == 0x0000);
  CHECK(narrow<T>(-0.0f) == 0x8000);
  // Overflow to inf: 65520 is the tie between 65504 (odd) and 2^16; the float just below it is
  // the largest that still gives 65504.
  CHECK(narrow<T>(65504.0f) == 0x7bff);
  CHECK(narrow<T>(f32(0x477fefff)) == 0x7bff);
  CHECK(narrow<T>(65520.0f) == 0x7c00);
  CHECK(narrow<T>(-65520.0f) == 0xfc00);
  CHECK(narrow<T>(1e9f) == 0x7c00);
  // Subnormal outputs, in units of 2^-24.
  CHECK(narrow<T>(0x1p-24f) == 0x0001);
  CHECK(narrow<T>(-0x1p-24f) == 0x8001);
  CHECK(narrow<T>(0x1p-25f) == 0x0000);  // 0.5 units: tie, to zero
  CHECK(narrow<T>(-0x1p-25f) == 0x8000);
  CHECK(narrow<T>(f32(0x33000001)) == 0x0001);  // just above 0.5 units
  CHECK(narrow<T>(0x1.8p-24f) == 0x0002);       // 1.5 units: tie, up to even
  CHECK(narrow<T>(0x1.4p-23f) == 0x0002);       // 2.5 units: tie, down to even
  // 2.5 units plus 2^-20 units: a float holds it exactly, and a conversion that first rounded
  // it to 12 significant bits would make it a tie and give 2 (double rounding).
  CHECK(narrow<T>(0x1.40002p-23f) == 0x0003);
  CHECK(narrow<T>(0x1.3fffep-23f) == 0x0002);
  CHECK(narrow<T>(1023 * 0x1p-24f) == 0x03ff);  // largest subnormal
  CHECK(narrow<T>(f32(0x387fffff)) == 0x0400);  // just below 2^-14 rounds up to the smallest normal
  CHECK(narrow<T>(0x1p-14f) == 0x0400);
  // Subnormal float inputs are far below fp16's range.
  CHECK(narrow<T>(f32(0x00000001)) == 0x0000);
  CHECK(narrow<T>(f32(0x807fffff)) == 0x8000);
  CHECK(moe::to_float(T::from_bits(0x03ff)) == 1023 * 0x1p-24f);
  CHECK(moe::to_float(T::from_bits(0x7bff)) == 65504.0f);
}

TEST_CASE("fp8_e4m3 rounding (saturating)") {
  using T = moe::fp8_e4m3;
  CHECK(narrow<T>(1.0f) == 0x38);
  CHECK(narrow<T>(1.0625f) == 0x38);  // tie between 1 (even) and 1.125
  CHECK(narrow<T>(1.1875f) == 0x3a);  // tie between 1.125 and 1.25 (even)
  CHECK(narrow<T>(-1.0625f) == 0xb8);
  CHECK(narrow<T>(-1.1875f) == 0xba);
  // NaN: 0x7f, sign dropped. No infinities in E4M3: ±inf saturate like any overflow.
  CHECK(narrow<T>(f32(0x7fc00000)) == 0x7f);
  CHECK(narrow<T>(f32(0xffc00000)) == 0x7f);
  CHECK(narrow<T>(f32(0x7f800001)) == 0x7f);
  CHECK(narrow<T>(f32(0x7f800000)) == 0x7e);
  CHECK(narrow<T>(f32(0xff800000)) == 0xfe);
  CHECK(narrow<T>(0.0f) == 0x00);
  CHECK(narrow<T>(-0.0f) == 0x80);
  // Top of the range: 432 is the tie between 416 (odd) and 448; 464 the tie between 448 (even)
  // and the NaN pattern's would-be 480; everything above saturates to 448.
  CHECK(narrow<T>(432.0f) == 0x7e);
  CHECK(narrow<T>(448.0f) == 0x7e);
  CHECK(narrow<T>(464.0f) == 0x7e);
  CHECK(narrow<T>(f32(0x43e80001)) == 0x7e);
  CHECK(narrow<T>(480.0f) == 0x7e);
  CHECK(narrow<T>(-1e30f) == 0xfe);
  CHECK(narrow<T>(std::numeric_limits<float>::max()) == 0x7e);
  // Subnormals, in units of 2^-9.
  CHECK(narrow<T>(0x1p-9f) == 0x01);
  CHECK(narrow<T>(0x1p-10f) == 0x00);  // tie with zero
  CHECK(narrow<T>(-0x1p-10f) == 0x80);
  CHECK(narrow<T>(f32(0x3a800001)) == 0x01);
  CHECK(narrow<T>(0x1.8p-9f) == 0x02);  // 1.5 units: tie, up to even
  CHECK(narrow<T>(0x1.4p-8f) == 0x02);  // 2.5 units: tie, down to even
  CHECK(narrow<T>(7 * 0x1p-9f) == 0x07);
  CHECK(narrow<T>(7.5f * 0x1p-9f) == 0x08);  // tie into the smallest normal (even)
  CHECK(narrow<T>(0x1p-6f) == 0x08);
  CHECK(narrow<T>(f32(0x00000001)) == 0x00);
  CHECK(narrow<T>(f32(0x80000001)) == 0x80);
  CHECK(moe::to_float(T::from_bits(0x7e)) == 448.0f);
  CHECK(moe::to_float(T::from_bits(0xfe)) == -448.0f);
  CHECK(moe::to_float(T::from_bits(0x01)) == 0x1p-9f);
  CHECK(std::isnan(moe::to_float(T::from_bits(0xff))));
}

TEST_CASE("fp8_e5m2 rounding (saturating)") {
  using T = moe::fp8_e5m2;
  CHECK(narrow<T>(1.0f) == 0x3c);
  CHECK(narrow<T>(1.125f) == 0x3c);  // tie between 1 (even) and 1.25
  CHECK(narrow<T>(1.375f) == 0x3e);  // tie between 1.25 and 1.5 (even)
  CHECK(narrow<T>(-1.125f) == 0xbc);
  CHECK(narrow<T>(-1.375f) == 0xbe);
  CHECK(narrow<T>(f32(0x7fc00000)) == 0x7f);
  CHECK(narrow<T>(f32(0xffc00000)) == 0x7f);
  CHECK(narrow<T>(f32(0x7f800001)) == 0x7f);
  // E5M2 has infinities, but the satfinite conversion never produces them.
  CHECK(narrow<T>(f32(0x7f800000)) == 0x7b);
  CHECK(narrow<T>(f32(0xff800000)) == 0xfb);
  CHECK(narrow<T>(0.0f) == 0x00);
  CHECK(narrow<T>(-0.0f) == 0x80);
  // 53248 is the tie between 49152 (even) and 57344 (odd); 61440 the tie between 57344 and
  // 2^16, which would round to inf and so saturates.
  CHECK(narrow<T>(53248.0f) == 0x7a);
  CHECK(narrow<T>(f32(0x47500001)) == 0x7b);
  CHECK(narrow<T>(57344.0f) == 0x7b);
  CHECK(narrow<T>(f32(0x476fffff)) == 0x7b);
  CHECK(narrow<T>(61440.0f) == 0x7b);
  CHECK(narrow<T>(-1e30f) == 0xfb);
  // Subnormals, in units of 2^-16.
  CHECK(narrow<T>(0x1p-16f) == 0x01);
  CHECK(narrow<T>(0x1p-17f) == 0x00);
  CHECK(narrow<T>(-0x1p-17f) == 0x80);
  CHECK(narrow<T>(f32(0x37000001)) == 0x01);
  CHECK(narrow<T>(0x1.8p-16f) == 0x02);
  CHECK(narrow<T>(3.5f * 0x1p-16f) == 0x04);  // tie into the smallest normal (even)
  CHECK(narrow<T>(0x1p-14f) == 0x04);
  CHECK(moe::to_float(T::from_bits(0x7b)) == 57344.0f);
  CHECK(moe::to_float(T::from_bits(0x7c)) == std::numeric_limits<float>::infinity());
  CHECK(moe::to_float(T::from_bits(0xfc)) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(moe::to_float(T::from_bits(0x7d))));
  // E5M2 is the top byte of fp16, so both agree on every non-NaN pattern.
  for (std::uint32_t b = 0; b < 256; ++b) {
    if (is_nan_pattern<T>(b)) continue;
    CHECK(moe::to_float(from_bits<T>(b)) ==
          moe::to_float(moe::fp16::from_bits(static_cast<std::uint16_t>(b << 8))));
  }
}

TEST_CASE_TEMPLATE("narrowing matches an independent reference over all floats", T, moe::bf16,
                   moe::fp16, moe::fp8_e4m3, moe::fp8_e5m2) {
  constexpr std::uint64_t stride = MOE_TEST_FLOAT_STRIDE;
  static_assert(stride % 2 == 1, "an odd stride visits every residue of the low mantissa bits");
  reference_rounder<T> reference;
  std::uint64_t wrong = 0;
  for (std::uint64_t i = 0; i <= 0xffffffffu; i += stride) {
    float const x = f32(static_cast<std::uint32_t>(i));
    std::uint32_t const got = narrow<T>(x);
    std::uint32_t const want = reference(x);
    if (got != want && ++wrong <= 5) {
      FAIL_CHECK((std::string(moe::storage_name<T>()) + " of float " + hex(i) + ": got " +
                  hex(got) + ", reference " + hex(want)));
    }
  }
  CHECK(wrong == 0);
}
