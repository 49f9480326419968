// SPDX-License-Identifier: Apache-2.0
// `moe::config`: everything about an MoE layer that changes generated code, as one C++20
// structural aggregate usable as a template argument (`moe::layer<moe::config{...}>`). What only
// changes sizes or coefficients lives in `moe::problem` instead. Each rule a config must obey is
// written once, in MOE_CONFIG_RULES, and checked twice: by `check<C>()` at compile time (a
// static_assert whose message is the rule's sentence) and by `validate(config)` at run time (a
// status carrying the same sentence).
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // fixed-width integers
#include <cstdio>   // std::snprintf for describe()

#include "moe/status.hpp"  // moe::status, moe::errc

namespace moe {

/// A non-negative rational, e.g. a capacity factor of 1.25 is {5, 4}; {0, 1} means dropless.
struct ratio {
  std::int32_t num = 1;
  std::int32_t den = 1;
  [[nodiscard]] constexpr bool is_zero() const noexcept { return num == 0; }
  friend constexpr bool operator==(ratio const&, ratio const&) = default;
};

/// Number formats. fp8 formats are storage formats (conversions, future fp8 GEMMs); the ops
/// compute in fp32 or fp64.
enum class precision : std::uint8_t { fp64, fp32, fp16, bf16, fp8_e4m3, fp8_e5m2 };

/// How router logits become scores.
enum class score_function : std::uint8_t { softmax, sigmoid };

/// score_then_topk: scores over all E experts, then the K best (GShard, Switch, DeepSpeed).
/// topk_then_score: the K best logits, then the score function over those K only (Mixtral).
enum class topk_order : std::uint8_t { score_then_topk, topk_then_score };

/// Whether the K selected weights are divided by their sum.
enum class normalization : std::uint8_t { none, renormalize };

/// Who survives when an expert receives more than C routes.
/// position: earlier tokens first (all first choices before second choices, as GShard and
/// DeepSpeed do); probability: highest scores first; random_token: uniform random priorities
/// (DeepSpeed's random token selection).
enum class drop_policy : std::uint8_t { position, probability, random_token };

/// Which system's routing rules to reproduce exactly. native: this project's rules (exact
/// integer capacity, weights renormalised over the K selected routes); deepspeed: DeepSpeed
/// 0.19's top1gating / top2gating / topkgating (float32 capacity, weights renormalised over the
/// routes that survived, its slot order and aux loss) — see docs/routing.md.
enum class router_compat : std::uint8_t { native, deepspeed };

/// The expert FFN's activation. swiglu and geglu are gated: W1 has 2F columns.
enum class activation : std::uint8_t { identity, relu, gelu, gelu_tanh, silu, swiglu, geglu };

/// Upper bounds the kernels are written for (compile-time register and shared-memory budgets).
inline constexpr std::int32_t max_experts = 1024;
inline constexpr std::int32_t max_top_k = 32;

/// The compile-time description of an MoE layer. Every field has a default except `experts`.
struct config {
  std::int32_t experts = 0;                  ///< E, experts in total (over all EP ranks)
  std::int32_t top_k = 1;                    ///< K, experts per token
  ratio capacity_factor{1, 1};               ///< training capacity factor; {0, 1} = dropless
  ratio eval_capacity_factor{1, 1};          ///< evaluation capacity factor; {0, 1} = dropless
  precision act = precision::bf16;           ///< activations (x, y, expert buffers)
  precision weight = precision::bf16;        ///< expert and router weights
  precision accum = precision::fp32;         ///< accumulation and router logits
  score_function score = score_function::softmax;
  topk_order order = topk_order::score_then_topk;
  normalization norm = normalization::none;
  drop_policy drop = drop_policy::position;
  activation ffn_activation = activation::gelu;
  std::int32_t expert_groups = 1;            ///< G: group-limited routing (DeepSeek-V3); 1 = off
  std::int32_t topk_groups = 1;              ///< M: groups kept per token, 1 <= M <= G
  router_compat compat = router_compat::native;

  friend constexpr bool operator==(config const&, config const&) = default;
};

/// True for the formats the ops compute in.
constexpr bool is_compute_precision(precision p) noexcept {
  return p == precision::fp64 || p == precision::fp32 || p == precision::fp16 ||
         p == precision::bf16;
}

constexpr char const* to_string(precision p) noexcept {
  switch (p) {
    case precision::fp64: return "fp64";
    case precision::fp32: return "fp32";
    case precision::fp16: return "fp16";
    case precision::bf16: return "bf16";
    case precision::fp8_e4m3: return "fp8_e4m3";
    case precision::fp8_e5m2: return "fp8_e5m2";
  }
  return "?";
}
constexpr char const* to_string(score_function s) noexcept {
  return s == score_function::softmax ? "softmax" : "sigmoid";
}
constexpr char const* to_string(topk_order o) noexcept {
  return o == topk_order::score_then_topk ? "score_then_topk" : "topk_then_score";
}
constexpr char const* to_string(normalization n) noexcept {
  return n == normalization::none ? "none" : "renormalize";
}
constexpr char const* to_string(drop_policy d) noexcept {
  switch (d) {
    case drop_policy::position: return "position";
    case drop_policy::probability: return "probability";
    case drop_policy::random_token: return "random_token";
  }
  return "?";
}
constexpr char const* to_string(activation a) noexcept {
  switch (a) {
    case activation::identity: return "identity";
    case activation::relu: return "relu";
    case activation::gelu: return "gelu";
    case activation::gelu_tanh: return "gelu_tanh";
    case activation::silu: return "silu";
    case activation::swiglu: return "swiglu";
    case activation::geglu: return "geglu";
  }
  return "?";
}

constexpr char const* to_string(router_compat c) noexcept {
  return c == router_compat::native ? "native" : "deepspeed";
}

/// Gated activations read 2F columns of W1.
constexpr bool is_gated(activation a) noexcept {
  return a == activation::swiglu || a == activation::geglu;
}

// Every rule a config must obey: (condition on `c`, the sentence shown when it fails). The
// conditions are ordered so that each may assume the ones before it (no division by zero).
#define MOE_CONFIG_RULES(RULE, c)                                                              \
  RULE((c).experts >= 1, "moe::config: experts must be at least 1")                           \
  RULE((c).experts <= ::moe::max_experts, "moe::config: experts must be at most 1024")        \
  RULE((c).top_k >= 1 && (c).top_k <= (c).experts, "moe::config: top_k must be in [1, experts]") \
  RULE((c).top_k <= ::moe::max_top_k, "moe::config: top_k must be at most 32")                 \
  RULE((c).capacity_factor.num >= 0 && (c).capacity_factor.den >= 1,                          \
       "moe::config: capacity_factor must be a ratio {num >= 0, den >= 1}")                   \
  RULE((c).eval_capacity_factor.num >= 0 && (c).eval_capacity_factor.den >= 1,                \
       "moe::config: eval_capacity_factor must be a ratio {num >= 0, den >= 1}")              \
  RULE(::moe::is_compute_precision((c).act),                                                  \
       "moe::config: act must be fp64, fp32, fp16 or bf16 (fp8 is a storage format only)")    \
  RULE((c).weight == (c).act,                                                                 \
       "moe::config: weight precision must equal act precision (mixed pairs are not compiled)") \
  RULE((c).accum == ::moe::precision::fp32 || (c).accum == ::moe::precision::fp64,            \
       "moe::config: accum must be fp32 or fp64")                                             \
  RULE(((c).act == ::moe::precision::fp64) == ((c).accum == ::moe::precision::fp64),          \
       "moe::config: accum must be fp64 exactly when act is fp64")                            \
  RULE((c).expert_groups >= 1 && (c).experts % (c).expert_groups == 0,                        \
       "moe::config: expert_groups must be >= 1 and divide experts")                          \
  RULE((c).topk_groups >= 1 && (c).topk_groups <= (c).expert_groups,                          \
       "moe::config: topk_groups must be in [1, expert_groups]")                              \
  RULE((c).expert_groups < 1 ||                                                               \
           (c).top_k <= (c).topk_groups * ((c).experts / (c).expert_groups),                  \
       "moe::config: top_k must be at most topk_groups * (experts / expert_groups)")          \
  RULE((c).compat != ::moe::router_compat::deepspeed ||                                       \
           ((c).score == ::moe::score_function::softmax &&                                    \
            (c).order == ::moe::topk_order::score_then_topk && (c).expert_groups == 1),       \
       "moe::config: deepspeed routing needs softmax scores, score_then_topk and no expert groups") \
  RULE((c).compat != ::moe::router_compat::deepspeed ||                                       \
           (c).drop == ::moe::drop_policy::position ||                                        \
           ((c).drop == ::moe::drop_policy::random_token && (c).top_k == 1) ||                \
           ((c).drop == ::moe::drop_policy::probability && (c).top_k > 2),                    \
       "moe::config: deepspeed drop policies are position, random_token (top-1) or probability (top-k, K > 2)")

/// Compile-time check of a config: every broken rule fails with its sentence. Call it at the
/// top of anything templated on a config; it returns true so it can sit in a requires-clause.
template <config C>
consteval bool check() {
#define MOE_STATIC_RULE(cond, sentence) static_assert(cond, sentence);
  MOE_CONFIG_RULES(MOE_STATIC_RULE, C)
#undef MOE_STATIC_RULE
  return true;
}

/// True when `c` obeys every rule (usable in constant expressions).
constexpr bool is_valid(config const& c) noexcept {
#define MOE_VALID_RULE(cond, sentence) \
  if (!(cond)) return false;
  MOE_CONFIG_RULES(MOE_VALID_RULE, c)
#undef MOE_VALID_RULE
  return true;
}

/// Run-time check of a config: the first broken rule's sentence, as a status.
inline status validate(config const& c) noexcept {
#define MOE_RUNTIME_RULE(cond, sentence) \
  if (!(cond)) return status::error(errc::unsupported_config, "%s", sentence);
  MOE_CONFIG_RULES(MOE_RUNTIME_RULE, c)
#undef MOE_RUNTIME_RULE
  return {};
}

/// Writes a compact one-line description of `c` into `out` (truncated, NUL-terminated): E and
/// K always, every other field only where it differs from its default, e.g.
/// "{E=8 K=2 cf=5/4 fp32/fp32/fp32 renormalize}". Returns the length written.
inline int describe(config const& c, char* out, std::size_t size) noexcept {
  if (size == 0) return 0;
  config const d{};
  std::size_t used = 0;
  auto put = [&](char const* format, auto... args) {
    if (used + 1 >= size) return;
    int const n = std::snprintf(out + used, size - used, format, args...);
    if (n > 0) used += static_cast<std::size_t>(n) < size - used ? static_cast<std::size_t>(n)
                                                                 : size - used - 1;
  };
  put("{E=%d K=%d", c.experts, c.top_k);
  if (c.capacity_factor != d.capacity_factor)
    put(" cf=%d/%d", c.capacity_factor.num, c.capacity_factor.den);
  if (c.eval_capacity_factor != d.eval_capacity_factor)
    put(" eval_cf=%d/%d", c.eval_capacity_factor.num, c.eval_capacity_factor.den);
  if (c.act != d.act || c.weight != d.weight || c.accum != d.accum)
    put(" %s/%s/%s", to_string(c.act), to_string(c.weight), to_string(c.accum));
  if (c.score != d.score) put(" %s", to_string(c.score));
  if (c.order != d.order) put(" %s", to_string(c.order));
  if (c.norm != d.norm) put(" %s", to_string(c.norm));
  if (c.drop != d.drop) put(" %s", to_string(c.drop));
  if (c.ffn_activation != d.ffn_activation) put(" %s", to_string(c.ffn_activation));
  if (c.expert_groups != d.expert_groups || c.topk_groups != d.topk_groups)
    put(" groups=%d/%d", c.topk_groups, c.expert_groups);
  if (c.compat != d.compat) put(" %s", to_string(c.compat));
  put("%s", "}");
  return static_cast<int>(used);
}

}  // namespace moe
