// SPDX-License-Identifier: Apache-2.0
// moe::problem: validation messages and the capacity formula
// C = max(min_capacity, ceil(cf * T * K / E)) against a float64/long-double-free reference.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>

#include "moe/configs.hpp"
#include "moe/problem.hpp"

namespace {
constexpr moe::config top2{.experts = 8, .top_k = 2, .capacity_factor = {5, 4},
                           .eval_capacity_factor = {2, 1}};
constexpr moe::config dropless{.experts = 8, .top_k = 2, .capacity_factor = {0, 1}};
constexpr moe::config odd{.experts = 7, .top_k = 3, .capacity_factor = {1000003, 999983}};

// Reference in double: exact while cf*T*K/E stays far below 2^53 (as in every case below).
std::int64_t reference_capacity(std::int64_t t, int k, int e, moe::ratio cf, int min_c) {
  double const c = std::ceil(static_cast<double>(cf.num) * static_cast<double>(t) * k /
                             (static_cast<double>(cf.den) * e));
  return std::max<std::int64_t>(static_cast<std::int64_t>(c), min_c);
}
}  // namespace

TEST_CASE("problem: capacity formula, training and evaluation factors") {
  moe::problem p{.tokens = 1024, .hidden = 16, .ffn = 32};
  CHECK(moe::capacity<top2>(p) == 320);  // ceil(1.25 * 1024 * 2 / 8)
  p.training = false;
  CHECK(moe::capacity<top2>(p) == 512);  // eval factor 2
  p = {.tokens = 3, .hidden = 1, .ffn = 1};
  CHECK(moe::capacity<top2>(p) == 4);  // min_capacity wins
  p.min_capacity = 0;
  CHECK(moe::capacity<top2>(p) == 1);  // ceil(1.25 * 3 * 2 / 8) = ceil(0.9375)
  p.tokens = 0;
  CHECK(moe::capacity<top2>(p) == 0);
}

TEST_CASE("problem: capacity equals the reference on random sizes") {
  std::mt19937_64 rng(20261125);
  for (int i = 0; i < 10000; ++i) {
    moe::problem p{.tokens = static_cast<std::int64_t>(rng() % (1u << 24)), .hidden = 1, .ffn = 1,
                   .min_capacity = static_cast<std::int32_t>(rng() % 8)};
    CHECK(moe::capacity<top2>(p) ==
          reference_capacity(p.tokens, 2, 8, top2.capacity_factor, p.min_capacity));
    CHECK(moe::capacity<odd>(p) ==
          reference_capacity(p.tokens, 3, 7, odd.capacity_factor, p.min_capacity));
  }
}

TEST_CASE("problem: capacity stays exact where cf * T * K overflows 64 bits") {
  constexpr moe::config big{.experts = 96, .top_k = 32, .capacity_factor = {2147483647, 1}};
  moe::problem const p{.tokens = moe::max_tokens, .hidden = 1, .ffn = 1};
  // cf * T * K = (2^31 - 1) * 2^47 * 2^5 needs 83 bits; divided by E = 96 = 3 * 2^5 it is
  // (2^31 - 1) * 2^47 / 3, not an integer, so the ceiling rounds up.
  __extension__ using u128 = unsigned __int128;
  u128 const numer = static_cast<u128>(2147483647) << 47;
  auto const expected = static_cast<std::int64_t>((numer + 2) / 3);
  REQUIRE(numer % 3 != 0);
  CHECK(moe::capacity<big>(p) == expected);
}

TEST_CASE("problem: dropless capacity is the bound T") {
  moe::problem const p{.tokens = 777, .hidden = 1, .ffn = 1};
  CHECK(moe::is_dropless<dropless>(p));
  CHECK_FALSE(moe::is_dropless<top2>(p));
  CHECK(moe::capacity<dropless>(p) == 777);
}

TEST_CASE("problem: validate names the field and the expected range") {
  moe::problem const good{.tokens = 16, .hidden = 8, .ffn = 8, .ep_rank = 1, .ep_size = 2};
  REQUIRE(moe::validate<top2>(good).ok());
  CHECK(moe::local_experts<top2>(good) == 4);
  auto msg = [](moe::problem const& p) {
    moe::status const s = moe::validate<top2>(p);
    CHECK(s.code() == moe::errc::invalid_argument);
    return std::string(s.message());
  };
  moe::problem p = good;
  p.tokens = -1;
  CHECK(msg(p) == "problem.tokens: expected 0 <= T <= 2^47, got -1");
  p = good;
  p.hidden = 0;
  CHECK(msg(p) == "problem.hidden: expected H >= 1, got 0");
  p = good;
  p.ffn = -3;
  CHECK(msg(p) == "problem.ffn: expected F >= 1, got -3");
  p = good;
  p.ep_size = 3;
  p.ep_rank = 0;
  CHECK(msg(p) == "problem.ep_size: expected R >= 1 dividing experts = 8, got 3");
  p = good;
  p.ep_rank = 2;
  CHECK(msg(p) == "problem.ep_rank: expected 0 <= rank < 2, got 2");
  p = good;
  p.min_capacity = -1;
  CHECK(msg(p) == "problem.min_capacity: expected >= 0, got -1");
  p = good;
  p.aux_loss_coef = std::nanf("");
  CHECK(msg(p) == "problem.aux_loss_coef: expected a finite value >= 0, got nan");
  p = good;
  p.z_loss_coef = -1.0f;
  CHECK(msg(p) == "problem.z_loss_coef: expected a finite value >= 0, got -1");
  p = good;
  p.tokens = 0;
  CHECK(moe::validate<top2>(p).ok());  // T = 0 is a valid no-op
}
