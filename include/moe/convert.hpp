// SPDX-License-Identifier: Apache-2.0
// Op: convert a tensor between storage formats (fp32, bf16, fp16, fp8 e4m3/e5m2) with
// round-to-nearest-even, element by element through fp32 (every source format widens to fp32
// exactly, so there is exactly one rounding). The CUDA overload (moe/cuda/convert.cuh) uses
// the same MOE_HOST_DEVICE conversions, so both backends give the same bits.
#pragma once

#include <cstdint>      // std::int64_t
#include <type_traits>  // std::is_same_v

#include "moe/policy.hpp"     // moe::host_policy
#include "moe/precision.hpp"  // moe::bf16, fp16, fp8_e4m3, fp8_e5m2, to_float, from_float
#include "moe/status.hpp"     // moe::status

namespace moe {

/// The formats convert accepts: float and the narrow storage types.
template <class T>
concept convertible_storage = std::is_same_v<T, float> || is_storage_type_v<T>;

/// Arguments of convert: out[i] = round_to_nearest_even(in[i]) for i in [0, n).
template <convertible_storage From, convertible_storage To>
struct convert_args {
  From const* in = nullptr;  ///< [n]
  To* out = nullptr;         ///< [n], must not overlap `in` unless it is the same buffer type
  std::int64_t n = 0;
};

namespace detail {
template <class From, class To>
status check(convert_args<From, To> const& a) noexcept {
  if (a.n < 0)
    return status::error(errc::invalid_argument, "convert_args.n: expected >= 0, got %lld",
                         static_cast<long long>(a.n));
  if (a.n > 0 && (a.in == nullptr || a.out == nullptr))
    return status::error(errc::invalid_argument,
                         "convert_args.in/out: expected non-null pointers for n = %lld",
                         static_cast<long long>(a.n));
  return {};
}
}  // namespace detail

/// Converts on the CPU.
template <class From, class To>
status convert(host_policy, convert_args<From, To> const& a) noexcept {
  MOE_TRY(detail::check(a));
  for (std::int64_t i = 0; i < a.n; ++i) a.out[i] = from_float<To>(to_float(a.in[i]));
  return {};
}

}  // namespace moe
