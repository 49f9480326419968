// SPDX-License-Identifier: Apache-2.0
// moe::dispatch: a run-time config reaches the matching compiled config; anything else gets a
// status naming the compiled configs (or the broken rule).
#include <doctest/doctest.h>

#include <string>
#include <utility>

#include "moe/configs.hpp"
#include "moe/dispatch.hpp"

namespace {
constexpr moe::config extra{.experts = 16, .top_k = 4, .act = moe::precision::fp32,
                            .weight = moe::precision::fp32};
using extended = moe::compiled_configs::append<extra>;
}  // namespace

TEST_CASE("dispatch: every compiled config reaches itself, exactly once") {
  moe::compiled_configs::for_each([]<moe::config Wanted>() {
    int calls = 0;
    bool same = false;
    moe::status const s = moe::dispatch(Wanted, [&]<moe::config C>() {
      ++calls;
      same = (C == Wanted);
      return moe::status{};
    });
    CHECK(s.ok());
    CHECK(calls == 1);
    CHECK(same);
  });
}

TEST_CASE("dispatch: the lambda's status comes back; void lambdas give ok") {
  moe::status const s = moe::dispatch(moe::configs::top2_fp32, []<moe::config C>() {
    return moe::status::error(moe::errc::internal, "from E=%d", C.experts);
  });
  CHECK(s.code() == moe::errc::internal);
  CHECK(std::string(s.message()) == "from E=8");
  int seen = 0;
  CHECK(moe::dispatch(moe::configs::switch_fp32, [&]<moe::config C>() { seen = C.experts; }).ok());
  CHECK(seen == 4);
}

TEST_CASE("dispatch: a valid config that is not compiled in names every compiled config") {
  moe::config const missing{.experts = 16, .top_k = 2};
  bool called = false;
  moe::status const s = moe::dispatch(missing, [&]<moe::config C>() { called = true; });
  CHECK_FALSE(called);
  CHECK(s.code() == moe::errc::unsupported_config);
  std::string const m = s.message();
  CHECK(m.rfind("config {E=16 K=2} is not compiled in; compiled: ", 0) == 0);
  moe::compiled_configs::for_each([&]<moe::config C>() {
    char d[160];
    moe::describe(C, d, sizeof d);
    CHECK_MESSAGE(m.find(d) != std::string::npos, "missing " << d << " in: " << m);
  });
  CHECK(m.find("more)") == std::string::npos);  // the whole list fits
}

TEST_CASE("dispatch: a broken config gets its rule's sentence") {
  moe::status const s = moe::dispatch(moe::config{.experts = 4, .top_k = 5}, []<moe::config>() {});
  CHECK(s.code() == moe::errc::unsupported_config);
  CHECK(std::string(s.message()) == "moe::config: top_k must be in [1, experts]");
}

TEST_CASE("dispatch: a user list extends the project's list") {
  static_assert(extended::size == moe::compiled_configs::size + 1);
  static_assert(extended::contains(extra) && !moe::compiled_configs::contains(extra));
  int k = 0;
  CHECK(moe::dispatch<extended>(extra, [&]<moe::config C>() { k = C.top_k; }).ok());
  CHECK(k == 4);
  CHECK(moe::dispatch(extra, []<moe::config>() {}).code() == moe::errc::unsupported_config);
}

namespace {
// A config whose description is long: every field differs from its default.
constexpr moe::config verbose(int experts) {
  return {.experts = experts, .top_k = 1, .capacity_factor = {0, 1}, .eval_capacity_factor = {0, 1},
          .act = moe::precision::fp16, .weight = moe::precision::fp16,
          .score = moe::score_function::sigmoid, .order = moe::topk_order::topk_then_score,
          .norm = moe::normalization::renormalize, .drop = moe::drop_policy::random_token,
          .ffn_activation = moe::activation::geglu};
}
template <int... I>
moe::config_list<verbose(100 + I)...> verbose_list(std::integer_sequence<int, I...>);
using many = decltype(verbose_list(std::make_integer_sequence<int, 12>{}));
}  // namespace

TEST_CASE("dispatch: a long list is cut with a count of the configs left out") {
  moe::status const s = moe::dispatch<many>(moe::config{.experts = 2}, []<moe::config>() {});
  std::string const m = s.message();
  CHECK(m.find("{E=100 K=1 cf=0/1") != std::string::npos);
  CHECK(m.find("{E=111 K=1") == std::string::npos);  // the last does not fit...
  CHECK(m.find(" more)") != std::string::npos);       // ...and is counted instead
  CHECK(m.size() < moe::status::message_capacity);
}
