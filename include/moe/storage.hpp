// SPDX-License-Identifier: Apache-2.0
// From a `moe::precision` to the C++ type a tensor of that precision is stored in, and the three
// types a config implies: `act_t<C>` (x, y, expert buffers), `weight_t<C>` (expert and router
// weights) and `accum_t<C>` (accumulators, router logits and the gradient buffers of weights).
// Ops name their pointer types through these, so one template serves every config.
#pragma once

#include "moe/config.hpp"     // moe::config, moe::precision
#include "moe/precision.hpp"  // moe::bf16, fp16, fp8_e4m3, fp8_e5m2

namespace moe {

/// The storage type of precision `P` (`storage_of<P>::type`); use `storage_t<P>`.
template <precision P>
struct storage_of {
  static_assert(P == precision::fp64, "moe::storage_of: not a precision enumerator");
};
template <>
struct storage_of<precision::fp64> {
  using type = double;
};
template <>
struct storage_of<precision::fp32> {
  using type = float;
};
template <>
struct storage_of<precision::fp16> {
  using type = fp16;
};
template <>
struct storage_of<precision::bf16> {
  using type = bf16;
};
template <>
struct storage_of<precision::fp8_e4m3> {
  using type = fp8_e4m3;
};
template <>
struct storage_of<precision::fp8_e5m2> {
  using type = fp8_e5m2;
};

/// fp64 → double, fp32 → float, fp16 → moe::fp16, bf16 → moe::bf16, fp8_* → moe::fp8_*.
template <precision P>
using storage_t = typename storage_of<P>::type;

/// Activations of config C (x, y and the expert buffers).
template <config C>
using act_t = storage_t<C.act>;

/// Weights of config C (router and expert weights).
template <config C>
using weight_t = storage_t<C.weight>;

/// Accumulation type of config C: float, or double for fp64 configs (check<C>() allows only
/// these two). Router logits and weight-gradient buffers are stored in it.
template <config C>
using accum_t = storage_t<C.accum>;

}  // namespace moe
