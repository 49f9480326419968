// SPDX-License-Identifier: Apache-2.0
// The convert op on the host backend: argument checks, and every element equals the scalar
// conversion (the conversions themselves are tested exhaustively in test_precision.cpp).
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "moe/convert.hpp"

namespace {
template <class From, class To>
void check_pair(std::vector<float> const& source) {
  std::vector<From> in(source.size());
  for (std::size_t i = 0; i < source.size(); ++i) in[i] = moe::from_float<From>(source[i]);
  std::vector<To> out(source.size());
  moe::convert_args<From, To> const a{in.data(), out.data(), static_cast<std::int64_t>(in.size())};
  REQUIRE(moe::convert(moe::host, a).ok());
  for (std::size_t i = 0; i < in.size(); ++i) {
    To const want = moe::from_float<To>(moe::to_float(in[i]));
    CHECK(std::memcmp(&out[i], &want, sizeof want) == 0);
  }
}
}  // namespace

TEST_CASE("convert(host): each element equals the scalar conversion, for every pair") {
  std::mt19937 rng(7);
  std::vector<float> source(777);
  for (float& v : source) {
    std::uint32_t bits = static_cast<std::uint32_t>(rng());
    std::memcpy(&v, &bits, sizeof v);  // every class: NaN, Inf, subnormal, huge
  }
  check_pair<float, moe::bf16>(source);
  check_pair<float, moe::fp16>(source);
  check_pair<float, moe::fp8_e4m3>(source);
  check_pair<float, moe::fp8_e5m2>(source);
  check_pair<moe::bf16, float>(source);
  check_pair<moe::fp16, moe::bf16>(source);
  check_pair<moe::bf16, moe::fp8_e4m3>(source);
  check_pair<moe::fp8_e5m2, moe::fp16>(source);
}

TEST_CASE("convert(host): bad arguments get a status naming them; n = 0 is a no-op") {
  float in = 1.0f;
  moe::bf16 out{};
  moe::status s = moe::convert(moe::host, moe::convert_args<float, moe::bf16>{&in, &out, -2});
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::string(s.message()) == "convert_args.n: expected >= 0, got -2");
  s = moe::convert(moe::host, moe::convert_args<float, moe::bf16>{nullptr, &out, 1});
  CHECK(std::string(s.message()) == "convert_args.in/out: expected non-null pointers for n = 1");
  CHECK(moe::convert(moe::host, moe::convert_args<float, moe::bf16>{nullptr, nullptr, 0}).ok());
}
