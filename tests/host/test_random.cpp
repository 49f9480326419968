// SPDX-License-Identifier: Apache-2.0
// The fill_random op on the host backend: argument checks, and the tensor equals the element-wise
// draws (the distributions themselves are tested in test_philox.cpp).
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "moe/random.hpp"

TEST_CASE("fill_random(host): draw i of the tensor is draw(dist, seed, i, offset)") {
  for (moe::distribution d :
       {moe::distribution::uniform, moe::distribution::normal, moe::distribution::gumbel}) {
    for (std::uint64_t offset : {std::uint64_t{0}, std::uint64_t{3}, (std::uint64_t{1} << 34) - 5}) {
      std::vector<float> out(1031, -1.0f);
      moe::random_args const a{.dist = d, .seed = 0x1234'5678'9abc'def0ULL, .offset = offset,
                               .out = out.data(), .n = static_cast<std::int64_t>(out.size())};
      REQUIRE(moe::fill_random(moe::host, a).ok());
      for (std::size_t i = 0; i < out.size(); ++i) {
        float const want = moe::draw(d, a.seed, i, offset);
        CHECK(std::memcmp(&out[i], &want, sizeof want) == 0);
      }
    }
  }
}

TEST_CASE("fill_random(host): consecutive fills with words_used offsets continue the stream") {
  std::vector<float> whole(64), first(20), second(44);
  moe::random_args a{.dist = moe::distribution::normal, .seed = 9, .offset = 100,
                     .out = whole.data(), .n = 64};
  REQUIRE(moe::fill_random(moe::host, a).ok());
  a.out = first.data();
  a.n = 20;
  REQUIRE(moe::fill_random(moe::host, a).ok());
  a.out = second.data();
  a.offset += moe::words_used(moe::distribution::normal, 20);
  a.n = 44;
  REQUIRE(moe::fill_random(moe::host, a).ok());
  CHECK(std::memcmp(whole.data(), first.data(), 20 * sizeof(float)) == 0);
  CHECK(std::memcmp(whole.data() + 20, second.data(), 44 * sizeof(float)) == 0);
}

TEST_CASE("fill_random: the kernel's runs tile the tensor exactly, in any order") {
  // The CUDA kernel hands runs of detail::fill_random_run to threads in grid-stride order;
  // here they run in reverse, over sizes and word offsets that are not multiples of four.
  for (moe::distribution d :
       {moe::distribution::uniform, moe::distribution::normal, moe::distribution::gumbel}) {
    for (std::int64_t n : {0, 1, 3, 4, 5, 1031}) {
      for (std::uint64_t offset : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{2},
                                   std::uint64_t{3}, (std::uint64_t{1} << 33) - 1}) {
        std::vector<float> want(static_cast<std::size_t>(n) + 1, -7.0f);
        std::vector<float> got(static_cast<std::size_t>(n) + 1, -7.0f);  // +1: a guard element
        moe::philox_fill(d, 77, offset, want.data(), n);
        for (std::int64_t run = moe::detail::random_runs(n) - 1; run >= 0; --run)
          moe::detail::fill_random_run(d, 77, offset, got.data(), n, run);
        CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);
        CHECK(got.back() == -7.0f);
      }
    }
  }
}

TEST_CASE("fill_random(host): bad arguments get a status naming them; n = 0 is a no-op") {
  float x = 0.0f;
  moe::status s = moe::fill_random(moe::host, {.out = &x, .n = -1});
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::string(s.message()) == "random_args.n: expected >= 0, got -1");
  s = moe::fill_random(moe::host, {.out = nullptr, .n = 3});
  CHECK(std::string(s.message()) == "random_args.out: expected non-null for n = 3");
  s = moe::fill_random(moe::host, {.dist = static_cast<moe::distribution>(9), .out = &x, .n = 1});
  CHECK(std::string(s.message()) == "random_args.dist: expected uniform, normal or gumbel, got 9");
  CHECK(moe::fill_random(moe::host, {.out = nullptr, .n = 0}).ok());
}
