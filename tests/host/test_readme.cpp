// SPDX-License-Identifier: Apache-2.0
// The README's first-screen example, compiled and run. The docs.snippets test checks that the
// README shows exactly the lines between the markers.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <vector>

// [snippet readme]
#include <moe/moe.hpp>  // host API; <moe/cuda.cuh> adds the CUDA overloads

// A run-time model description, looked up in the compiled list (moe/configs.hpp):
moe::config const wanted{.experts = 8, .top_k = 2, .capacity_factor = {5, 4},
                         .act = moe::precision::fp32, .weight = moe::precision::fp32,
                         .norm = moe::normalization::renormalize};
moe::problem const prob{.tokens = 4096, .hidden = 512, .ffn = 2048, .seed = 42};
// [end snippet]

TEST_CASE("readme: the first-screen example runs and computes what it says") {
  // [snippet readme]

std::int64_t rows = 0;
std::vector<float> noise(static_cast<std::size_t>(prob.tokens));  // reproducible router noise
moe::status s = moe::dispatch(wanted, [&]<moe::config C>() -> moe::status {
  MOE_TRY(moe::validate<C>(prob));
  rows = moe::capacity<C>(prob);  // 1280 rows per expert
  return moe::fill_random(moe::host, {.dist = moe::distribution::gumbel, .seed = prob.seed,
                                      .out = noise.data(), .n = prob.tokens});
});
if (!s.ok()) std::puts(s.message());  // the library never throws, exits or aborts
  // [end snippet]
  CHECK(s.ok());
  CHECK(rows == 1280);
  CHECK(noise[0] == moe::draw(moe::distribution::gumbel, 42, 0, 0));
  CHECK(noise[4095] == moe::draw(moe::distribution::gumbel, 42, 4095, 0));
}
