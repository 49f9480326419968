// SPDX-License-Identifier: Apache-2.0
// moe::config: a structural aggregate usable as a template argument; its rules are checked at
// compile time (check<C>, see tests/compile_fail for the failing side) and at run time
// (validate) with the same sentences; describe() prints only what differs from the defaults.
#include <doctest/doctest.h>

#include <string>

#include "moe/config.hpp"
#include "moe/configs.hpp"
#include "moe/policy.hpp"

namespace {
template <moe::config C>
constexpr int experts_of() {
  static_assert(moe::check<C>());
  return C.experts;
}
std::string describe(moe::config const& c) {
  char buf[200];
  moe::describe(c, buf, sizeof buf);
  return buf;
}
}  // namespace

TEST_CASE("config: a structural template argument; equal configs are the same argument") {
  constexpr moe::config a{.experts = 8, .top_k = 2};
  constexpr moe::config b{.experts = 8, .top_k = 2};
  static_assert(experts_of<a>() == 8);
  static_assert(a == b);
  static_assert(!(a == moe::config{.experts = 8, .top_k = 1}));
  CHECK(experts_of<moe::configs::fine_bf16>() == 64);
}

TEST_CASE("config: every compiled config obeys the rules") {
  moe::compiled_configs::for_each([]<moe::config C>() {
    static_assert(moe::check<C>());
    static_assert(moe::is_valid(C));
    CHECK(moe::validate(C).ok());
  });
}

TEST_CASE("config: validate names the broken rule") {
  moe::config const good{.experts = 8, .top_k = 2};
  REQUIRE(moe::validate(good).ok());

  auto with = [&](auto edit) {
    moe::config c = good;
    edit(c);
    CHECK_FALSE(moe::is_valid(c));
    moe::status const s = moe::validate(c);
    CHECK(s.code() == moe::errc::unsupported_config);
    return std::string(s.message());
  };
  CHECK(with([](moe::config& c) { c.experts = 0; }) == "moe::config: experts must be at least 1");
  CHECK(with([](moe::config& c) { c.experts = 2048; }) ==
        "moe::config: experts must be at most 1024");
  CHECK(with([](moe::config& c) { c.top_k = 9; }) == "moe::config: top_k must be in [1, experts]");
  CHECK(with([](moe::config& c) { c.top_k = 0; }) == "moe::config: top_k must be in [1, experts]");
  CHECK(with([](moe::config& c) { c.capacity_factor = {1, 0}; }) ==
        "moe::config: capacity_factor must be a ratio {num >= 0, den >= 1}");
  CHECK(with([](moe::config& c) { c.eval_capacity_factor = {-1, 1}; }) ==
        "moe::config: eval_capacity_factor must be a ratio {num >= 0, den >= 1}");
  CHECK(with([](moe::config& c) {
          c.act = moe::precision::fp8_e4m3;
          c.weight = moe::precision::fp8_e4m3;
        }) == "moe::config: act must be fp64, fp32, fp16 or bf16 (fp8 is a storage format only)");
  CHECK(with([](moe::config& c) { c.weight = moe::precision::fp32; }) ==
        "moe::config: weight precision must equal act precision (mixed pairs are not compiled)");
  CHECK(with([](moe::config& c) { c.accum = moe::precision::bf16; }) ==
        "moe::config: accum must be fp32 or fp64");
  CHECK(with([](moe::config& c) { c.accum = moe::precision::fp64; }) ==
        "moe::config: accum must be fp64 exactly when act is fp64");
  CHECK(with([](moe::config& c) { c.expert_groups = 3; }) ==
        "moe::config: expert_groups must be >= 1 and divide experts");
  CHECK(with([](moe::config& c) { c.expert_groups = 0; }) ==
        "moe::config: expert_groups must be >= 1 and divide experts");
  CHECK(with([](moe::config& c) {
          c.expert_groups = 4;
          c.topk_groups = 5;
        }) == "moe::config: topk_groups must be in [1, expert_groups]");
  CHECK(with([](moe::config& c) {
          c.expert_groups = 8;
          c.topk_groups = 1;
        }) == "moe::config: top_k must be at most topk_groups * (experts / expert_groups)");
  CHECK(with([](moe::config& c) {
          c.compat = moe::router_compat::deepspeed;
          c.score = moe::score_function::sigmoid;
        }) == "moe::config: deepspeed routing needs softmax scores, score_then_topk and no expert groups");
  CHECK(with([](moe::config& c) {
          c.compat = moe::router_compat::deepspeed;
          c.drop = moe::drop_policy::random_token;  // K = 2: DeepSpeed has RTS for top-1 only
        }) == "moe::config: deepspeed drop policies are position, random_token (top-1) or "
              "probability (top-k, K > 2)");
}

TEST_CASE("config: edge configs that are valid") {
  CHECK(moe::validate({.experts = 1, .top_k = 1}).ok());
  CHECK(moe::validate({.experts = 8, .top_k = 8}).ok());  // K = E
  CHECK(moe::validate({.experts = moe::max_experts, .top_k = moe::max_top_k}).ok());
  CHECK(moe::validate({.experts = 4, .top_k = 1, .capacity_factor = {0, 1}}).ok());  // dropless
  CHECK(moe::validate({.experts = 4, .top_k = 1, .act = moe::precision::fp64,
                       .weight = moe::precision::fp64, .accum = moe::precision::fp64})
            .ok());
  CHECK(moe::validate({.experts = 256, .top_k = 8, .expert_groups = 8, .topk_groups = 4}).ok());
  CHECK(moe::validate({.experts = 8, .top_k = 1, .drop = moe::drop_policy::random_token,
                       .compat = moe::router_compat::deepspeed})
            .ok());
  CHECK(moe::validate({.experts = 8, .top_k = 4, .drop = moe::drop_policy::probability,
                       .compat = moe::router_compat::deepspeed})
            .ok());
}

TEST_CASE("config: describe prints E, K and only the non-default fields") {
  CHECK(describe({.experts = 8, .top_k = 2}) == "{E=8 K=2}");
  CHECK(describe(moe::configs::top2_fp32) == "{E=8 K=2 cf=5/4 fp32/fp32/fp32 renormalize}");
  CHECK(describe(moe::configs::fine_bf16) ==
        "{E=64 K=8 cf=0/1 eval_cf=0/1 sigmoid renormalize swiglu}");
  CHECK(describe({.experts = 256, .top_k = 8, .order = moe::topk_order::topk_then_score,
                  .drop = moe::drop_policy::random_token, .expert_groups = 8, .topk_groups = 4}) ==
        "{E=256 K=8 topk_then_score random_token groups=4/8}");
  CHECK(describe({.experts = 8, .top_k = 2, .compat = moe::router_compat::deepspeed}) ==
        "{E=8 K=2 deepspeed}");
  char tiny[8];
  CHECK(moe::describe(moe::configs::top2_fp32, tiny, sizeof tiny) == 7);
  CHECK(std::string(tiny) == "{E=8 K=");
}

TEST_CASE("policy: host and cuda_on are plain values") {
  static_assert(moe::execution_policy<moe::host_policy>);
  static_assert(moe::execution_policy<moe::cuda_policy>);
  static_assert(!moe::execution_policy<int>);
  constexpr moe::cuda_policy p = moe::cuda_on(nullptr, nullptr, 128);
  static_assert(p.workspace_bytes == 128);
  static_assert(moe::host.with_threads(2).threads == 2);
  CHECK(moe::host.threads == 0);
}
