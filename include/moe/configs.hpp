// SPDX-License-Identifier: Apache-2.0
// The project's ONE list of compiled configs. Tests, benchmarks, examples and the docs iterate
// it, and `moe::dispatch(cfg, f)` looks run-time configs up in it. Keep it lean: every entry is
// compiled into every op that is dispatched. A user program that needs other configs names its
// own list, e.g. `using my_configs = moe::compiled_configs::append<moe::config{...}>;` and calls
// `moe::dispatch<my_configs>(cfg, f)`.
#pragma once

#include "moe/config.hpp"    // moe::config
#include "moe/dispatch.hpp"  // moe::config_list, moe::dispatch

namespace moe {

namespace configs {
/// Switch-style top-1 in fp32: the host workhorse of the tests.
inline constexpr config switch_fp32{.experts = 4, .top_k = 1, .capacity_factor = {5, 4},
                                    .act = precision::fp32, .weight = precision::fp32};
/// GShard/DeepSpeed-style top-2 in fp32 with renormalised weights.
inline constexpr config top2_fp32{.experts = 8, .top_k = 2, .capacity_factor = {5, 4},
                                  .act = precision::fp32, .weight = precision::fp32,
                                  .norm = normalization::renormalize};
/// The same in fp64 accumulate/storage: finite-difference checks of backward passes.
inline constexpr config top2_fp64{.experts = 8, .top_k = 2, .capacity_factor = {5, 4},
                                  .act = precision::fp64, .weight = precision::fp64,
                                  .accum = precision::fp64, .norm = normalization::renormalize};
/// The GPU training precision: top-2 in bf16 with fp32 accumulation.
inline constexpr config top2_bf16{.experts = 8, .top_k = 2, .capacity_factor = {5, 4},
                                  .norm = normalization::renormalize};
/// Fine-grained dropless routing (DeepSeek-style): 64 experts, top-8, sigmoid scores, SwiGLU.
inline constexpr config fine_bf16{.experts = 64, .top_k = 8, .capacity_factor = {0, 1},
                                  .eval_capacity_factor = {0, 1},
                                  .score = score_function::sigmoid,
                                  .norm = normalization::renormalize,
                                  .ffn_activation = activation::swiglu};
}  // namespace configs

/// The configs compiled into this project's tests, benchmarks and examples.
using compiled_configs = config_list<configs::switch_fp32, configs::top2_fp32, configs::top2_fp64,
                                     configs::top2_bf16, configs::fine_bf16>;

/// `moe::dispatch<compiled_configs>(cfg, f)`.
template <class F>
status dispatch(config const& cfg, F&& f) {
  return dispatch<compiled_configs>(cfg, std::forward<F>(f));
}

}  // namespace moe
