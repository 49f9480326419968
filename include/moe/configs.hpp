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

// ---- DeepSpeed router presets (router owner; docs/routing.md) --------------------------------
// Configs whose route() reproduces DeepSpeed 0.19's gating functions exactly (TopKGate with
// k = 1, 2, > 2). A {0, 1} factor is DeepSpeed's drop_tokens=False. DeepSpeed's own defaults are
// cf = eval cf = 1.0, use_rts=True (top-1) and min_capacity=8 (set problem.min_capacity = 8;
// moe::problem defaults to 4). `act` is the activation (and weight) precision of the layer;
// DeepSpeed gates in fp32 whatever it is.

/// The accumulation precision a layer of activation precision `act` uses.
constexpr precision deepspeed_accum(precision act) {
  return act == precision::fp64 ? precision::fp64 : precision::fp32;
}

/// top1gating; `rts` is use_rts (random token selection among an expert's overflow).
constexpr config deepspeed_top1(std::int32_t experts, ratio cf = {1, 1}, ratio eval_cf = {1, 1},
                                bool rts = true, precision act = precision::bf16) {
  return {.experts = experts, .top_k = 1, .capacity_factor = cf, .eval_capacity_factor = eval_cf,
          .act = act, .weight = act, .accum = deepspeed_accum(act),
          .drop = rts ? drop_policy::random_token : drop_policy::position,
          .compat = router_compat::deepspeed};
}

/// top2gating (its 2nd-expert sampling is router_options::sample_second, True in DeepSpeed).
constexpr config deepspeed_top2(std::int32_t experts, ratio cf = {1, 1}, ratio eval_cf = {1, 1},
                                precision act = precision::bf16) {
  return {.experts = experts, .top_k = 2, .capacity_factor = cf, .eval_capacity_factor = eval_cf,
          .act = act, .weight = act, .accum = deepspeed_accum(act),
          .compat = router_compat::deepspeed};
}

/// topkgating for k > 2; `drop` is its drop_policy: probability ("probs", the default) or
/// position ("position").
constexpr config deepspeed_topk(std::int32_t experts, std::int32_t k, ratio cf = {1, 1},
                                ratio eval_cf = {1, 1},
                                drop_policy drop = drop_policy::probability,
                                precision act = precision::bf16) {
  return {.experts = experts, .top_k = k, .capacity_factor = cf, .eval_capacity_factor = eval_cf,
          .act = act, .weight = act, .accum = deepspeed_accum(act), .drop = drop,
          .compat = router_compat::deepspeed};
}
// ---- end of the DeepSpeed router presets -------------------------------------------------------
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
