// SPDX-License-Identifier: Apache-2.0
// No hidden allocation: a layer step (forward + backward) on the host backend allocates
// nothing — every op's scratch, the router's included, is a region of the caller's workspace
// (docs/layer.md, "Memory"). Counted with the replaced operator new/delete and the wrapped
// malloc family of alloc_count.cpp, after one warm-up step (which must allocate nothing either;
// only OpenMP's runtime may set its thread pool up then, inside libgomp, where it is not
// counted). Also: route with a workspace allocates nothing and gives the same bits as route
// without one (which allocates its scratch itself — the counter sees that, so it works), and a
// workspace smaller than route_workspace_bytes gets errc::workspace_too_small.
#include <doctest/doctest.h>

#include "alloc_count.hpp"  // moe::test::count_allocations
#include "common.hpp"       // moe::test helpers

#include <algorithm>  // std::max
#include <cstdint>    // std::int32_t, std::int64_t
#include <cstdlib>    // std::aligned_alloc, std::free, std::malloc
#include <cstring>    // std::strstr
#include <memory>     // std::unique_ptr
#include <random>     // std::mt19937_64
#include <vector>     // std::vector

#include "moe/configs.hpp"  // moe::configs
#include "moe/layer.hpp"    // moe::layer

namespace {

using moe::test::at;

struct aligned_free {
  void operator()(void* p) const noexcept { std::free(p); }
};

/// One layer step's inputs and workspace, allocated up front.
template <moe::config C>
struct step {
  using A = moe::act_t<C>;
  moe::layer<C> layer;
  moe::problem p;
  std::vector<A> x, dy, y, dx;
  std::vector<std::int32_t> counts;
  moe::layer_stats stats{};
  std::size_t bytes = 0;
  std::unique_ptr<void, aligned_free> ws;

  step(moe::layer_shape shape, std::int64_t T, std::uint64_t seed) : layer(shape) {
    REQUIRE(layer.allocate().ok());
    REQUIRE(layer.init({.seed = seed}).ok());
    p = layer.make_problem(T);
    p.z_loss_coef = 0.01f;
    std::mt19937_64 gen(seed);
    x = moe::test::random_tensor<A>(gen, T * shape.hidden);
    dy = moe::test::random_tensor<A>(gen, T * shape.hidden);
    y.assign(x.size(), A{});
    dx.assign(x.size(), A{});
    counts.assign(at(C.experts), 0);
    bytes = layer.workspace_bytes(p);
    ws.reset(std::aligned_alloc(256, (bytes + 255) / 256 * 256));
    REQUIRE(ws != nullptr);
  }

  moe::status run(moe::host_policy pol) {
    MOE_TRY(layer.forward(pol, p, {x.data(), y.data(), &stats, counts.data()}, ws.get(), bytes));
    return layer.backward(pol, p, {x.data(), dy.data(), dx.data()}, ws.get(), bytes);
  }
};

/// Allocations of the second of two steps (and of the first), for each thread setting.
template <moe::config C>
void expect_no_allocation(moe::layer_shape shape, std::int64_t T) {
  std::uint64_t const seed = moe::test::fresh_seed();
  CAPTURE(seed);
  step<C> s(shape, T, seed);
  for (moe::host_policy pol : {moe::host.with_threads(1), moe::host.with_threads(2), moe::host}) {
    CAPTURE(pol.threads);
    // No doctest assertion inside a counted scope: doctest allocates for its own bookkeeping.
    std::int64_t first = 0, second = 0;
    moe::status st1, st2;
    {
      moe::test::count_allocations n;
      st1 = s.run(pol);
      first = n.count();
    }
    REQUIRE_MESSAGE(st1.ok(), st1.message());
    {
      moe::test::count_allocations n;
      st2 = s.run(pol);
      second = n.count();
    }
    REQUIRE_MESSAGE(st2.ok(), st2.message());
    MESSAGE("allocations per step (first, second): " << first << ", " << second);
    CHECK(first == 0);
    CHECK(second == 0);
  }
}

}  // namespace

TEST_CASE("no_alloc: the counter sees operator new and the malloc family") {
  std::int64_t after_new = 0, after_malloc = 0;
  {
    moe::test::count_allocations n;
    void* volatile p = ::operator new(8);  // volatile: the call may not be elided
    ::operator delete(p);
    after_new = n.count();
    void* volatile q = std::malloc(16);
    std::free(q);
    after_malloc = n.count();
  }
  CHECK(after_new == 1);
  if (moe::test::counts_malloc()) {
    CHECK(after_malloc == 2);
  } else {
    MESSAGE("malloc is not counted on this platform (operator new only)");
  }
}

TEST_CASE("no_alloc: a layer step allocates nothing") {
  expect_no_allocation<moe::configs::top2_fp32>(
      {.hidden = 16, .ffn = 8, .shared_ffn = 4, .residual_ffn = 4}, 37);
  expect_no_allocation<moe::configs::top2_bf16>({.hidden = 16, .ffn = 8}, 40);
  expect_no_allocation<moe::configs::fine_bf16>({.hidden = 16, .ffn = 8, .shared_ffn = 8}, 50);
  expect_no_allocation<moe::configs::top2_fp64>({.hidden = 8, .ffn = 4}, 20);
}

TEST_CASE("no_alloc: route with a workspace allocates nothing and gives the same bits") {
  constexpr moe::config C = moe::configs::fine_bf16;  // E = 64, K = 8, sigmoid, dropless
  constexpr std::int32_t E = C.experts, K = C.top_k;
  std::uint64_t const seed = moe::test::fresh_seed();
  CAPTURE(seed);
  std::mt19937_64 gen(seed);
  moe::problem p{.tokens = 300, .hidden = 1, .ffn = 1};
  auto const logits = moe::test::random_tensor<float>(gen, p.tokens * E, -4.0, 4.0);
  auto const d_weight = moe::test::random_tensor<float>(gen, p.tokens * K);
  struct outputs {
    std::vector<std::int32_t> expert, slot, counts, kept;
    std::vector<float> weight, d_logits;
    moe::route_stats stats{};
  };
  auto make = [&] {
    outputs o;
    o.expert.assign(at(p.tokens * K), 0);
    o.slot = o.expert;
    o.weight.assign(at(p.tokens * K), 0.0f);
    o.counts.assign(E, 0);
    o.kept = o.counts;
    o.d_logits.assign(at(p.tokens * E), 0.0f);
    return o;
  };
  auto run = [&](moe::host_policy pol, outputs& o) {
    MOE_TRY(moe::route<C>(pol, p, {},
                          {.logits = logits.data(),
                           .expert = o.expert.data(),
                           .weight = o.weight.data(),
                           .slot = o.slot.data(),
                           .counts = o.counts.data(),
                           .kept = o.kept.data(),
                           .stats = &o.stats}));
    return moe::route_backward<C>(pol, p, {},
                                  {.logits = logits.data(),
                                   .expert = o.expert.data(),
                                   .slot = o.slot.data(),
                                   .d_weight = d_weight.data(),
                                   .d_logits = o.d_logits.data()});
  };
  std::size_t const need = std::max(moe::route_workspace_bytes<C>(moe::host, p),
                                    moe::route_backward_workspace_bytes<C>(moe::host, p));
  CHECK(need >= at(p.tokens * K) * 16);  // O(T·K): gate, key, order
  std::vector<char> ws(need + 1);
  outputs a = make(), b = make();
  std::int64_t inside = 0, with_ws = 0;
  moe::status s1, s2;
  {
    moe::test::count_allocations n;
    s1 = run(moe::host, a);
    inside = n.count();
  }
  {
    moe::test::count_allocations n;  // an odd address: any alignment is accepted
    s2 = run(moe::host.with_workspace(ws.data() + 1, need), b);
    with_ws = n.count();
  }
  REQUIRE(s1.ok());
  REQUIRE(s2.ok());
  MESSAGE("route + route_backward allocations: " << inside << " without a workspace, " << with_ws
                                                 << " with one");
  CHECK(inside >= 2);  // the fallback allocates: the counter works
  CHECK(with_ws == 0);
  CHECK(a.expert == b.expert);
  CHECK(a.slot == b.slot);
  CHECK(a.counts == b.counts);
  CHECK(moe::test::same_bits(a.weight, b.weight));
  CHECK(moe::test::same_bits(a.d_logits, b.d_logits));

  // Too small: a status naming the workspace, and nothing written.
  outputs c = make();
  c.counts.assign(E, -7);
  moe::status const s = run(moe::host.with_workspace(ws.data(), need / 2), c);
  CHECK(s.code() == moe::errc::workspace_too_small);
  CHECK(std::strstr(s.message(), "host_policy.workspace") != nullptr);
  CHECK(c.counts == std::vector<std::int32_t>(E, -7));
}
