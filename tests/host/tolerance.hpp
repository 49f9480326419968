// SPDX-License-Identifier: Apache-2.0
// Rounding facts of the storage types, shared by the host tests' error bounds: the unit
// roundoff u of each type (half an ulp at 1) and the absolute error floor of values that
// underflow to fp16 subnormals.
#pragma once

#include <type_traits>  // std::is_same_v

#include "moe/precision.hpp"  // moe::fp16, moe::bf16

namespace moe::test {

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
