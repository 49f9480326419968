// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the host tests: fresh seeds (printed by each test on failure), random
// tensors of any storage type, bitwise comparison of tensors, and the rounding facts of the
// storage types that the tests' error bounds are built from (the unit roundoff u of each type,
// half an ulp at 1, and the absolute error floor of values that underflow to fp16 subnormals).
#pragma once

#include <cstddef>      // std::size_t
#include <cstdint>      // std::int64_t, std::uint64_t
#include <cstring>      // std::memcmp
#include <random>       // std::random_device, std::mt19937_64, std::uniform_real_distribution
#include <type_traits>  // std::is_same_v
#include <vector>       // std::vector

#include "moe/precision.hpp"  // moe::fp16, moe::bf16, moe::from_float

namespace moe::test {

/// A seed from the system's entropy source: every run tests new inputs.
inline std::uint64_t fresh_seed() {
  std::random_device rd;
  return (std::uint64_t{rd()} << 32) ^ rd();
}

/// An index as a vector subscript.
inline std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

/// `v` rounded once to storage type T.
template <class T>
T stored(double v) {
  if constexpr (std::is_same_v<T, double>)
    return v;
  else
    return moe::from_float<T>(static_cast<float>(v));
}

/// n values uniform in [lo, hi), each rounded to T.
template <class T>
std::vector<T> random_tensor(std::mt19937_64& gen, std::int64_t n, double lo = -1.0,
                             double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> out(at(n));
  for (T& v : out) v = stored<T>(dist(gen));
  return out;
}

/// Bitwise equality of two tensors.
template <class T>
bool same_bits(std::vector<T> const& a, std::vector<T> const& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// Unit roundoff of storage type T: fp64 2^-53, fp32 2^-24, fp16 2^-11, bf16 2^-8.
template <class T>
constexpr double unit_roundoff() {
  if constexpr (std::is_same_v<T, double>)
    return 0x1p-53;
  else if constexpr (std::is_same_v<T, float>)
    return 0x1p-24;
  else if constexpr (std::is_same_v<T, moe::fp16>)
    return 0x1p-11;
  else
    return 0x1p-8;  // bf16
}

/// Absolute error of rounding a tiny value to T: half the smallest fp16 subnormal, else 0.
template <class T>
constexpr double underflow_floor() {
  return std::is_same_v<T, moe::fp16> ? 0x1p-25 : 0.0;
}

}  // namespace moe::test
