// SPDX-License-Identifier: Apache-2.0
// Bitwise determinism on the host backend: every op — router GEMM forward and backward, route
// and route_backward, plan, permute, combine, combine_backward, permute_backward, grouped GEMM
// forward, dgrad and wgrad, expert FFN forward and backward — and the whole layer give the same
// bits on repeated runs and with 1 and 2 OpenMP threads (and OpenMP's default). Each op reads
// inputs fixed once (the previous op's outputs from a single-threaded run), so a difference is
// the op's own. This executable is built with OpenMP when CMake finds it; without OpenMP the
// thread count is not used and only the repeated runs are compared (the test says so).
#include <doctest/doctest.h>

#include "common.hpp"  // moe::test helpers

#include <cstdint>      // std::int32_t, std::int64_t
#include <cstring>      // std::memcpy
#include <random>       // std::mt19937_64
#include <type_traits>  // std::is_same_v
#include <vector>       // std::vector

#include "moe/configs.hpp"  // moe::configs
#include "moe/layer.hpp"    // every op and moe::layer

#if defined(_OPENMP)
#include <omp.h>  // omp_get_max_threads
#endif

namespace {

using moe::test::at;

/// The bytes of an op's outputs.
struct snapshot {
  std::vector<unsigned char> bytes;
  template <class T>
  snapshot& add(std::vector<T> const& v) {
    auto const* p = reinterpret_cast<unsigned char const*>(v.data());
    bytes.insert(bytes.end(), p, p + v.size() * sizeof(T));
    return *this;
  }
  template <class T>
  snapshot& add(T const& v) {
    auto const* p = reinterpret_cast<unsigned char const*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof(T));
    return *this;
  }
};

/// The policies compared: 1 thread (the reference), again, 2 threads twice, the default.
std::vector<moe::host_policy> policies() {
  return {moe::host.with_threads(1), moe::host.with_threads(1), moe::host.with_threads(2),
          moe::host.with_threads(2), moe::host};
}

/// run(policy) -> snapshot, the same bytes for every policy (and a successful status).
template <class Run>
void same_bits_everywhere(char const* op, Run const& run) {
  CAPTURE(op);
  snapshot const ref = run(moe::host.with_threads(1));
  REQUIRE(!ref.bytes.empty());
  for (moe::host_policy pol : policies()) {
    CAPTURE(pol.threads);
    CHECK(run(pol).bytes == ref.bytes);
  }
}

#define REQUIRE_OK(expr)                      \
  do {                                        \
    moe::status const st_ = (expr);           \
    REQUIRE_MESSAGE(st_.ok(), st_.message()); \
  } while (false)

/// Every op of config C on one random problem (T tokens, H, F), in the layer's order.
template <moe::config C>
void check_ops(std::int64_t T, std::int64_t H, std::int64_t F) {
  using A = moe::act_t<C>;
  using W = moe::weight_t<C>;
  using Acc = moe::accum_t<C>;
  constexpr std::int32_t E = C.experts, K = C.top_k;
  std::int64_t const fw = moe::is_gated(C.ffn_activation) ? 2 * F : F;
  std::uint64_t const seed = moe::test::fresh_seed();
  CAPTURE(seed);
  std::mt19937_64 gen(seed);
  moe::problem p{.tokens = T, .hidden = H, .ffn = F};
  p.z_loss_coef = 0.01f;
  p.seed = seed;
  auto const x = moe::test::random_tensor<A>(gen, T * H);
  auto const w_gate = moe::test::random_tensor<W>(gen, H * E, -0.5, 0.5);
  auto const d_logits_in = moe::test::random_tensor<Acc>(gen, T * E);
  auto const w1 = moe::test::random_tensor<W>(gen, E * fw * H, -0.3, 0.3);
  auto const b1 = moe::test::random_tensor<W>(gen, E * fw, -0.1, 0.1);
  auto const w2 = moe::test::random_tensor<W>(gen, E * H * F, -0.3, 0.3);
  auto const b2 = moe::test::random_tensor<W>(gen, E * H, -0.1, 0.1);
  auto const dy_t = moe::test::random_tensor<A>(gen, T * H);

  // Router GEMM forward and backward.
  std::vector<Acc> logits_acc(at(T * E));
  auto gemm = [&](moe::host_policy pol) {
    std::vector<Acc> out(at(T * E));
    REQUIRE_OK(moe::router_gemm(
        pol, p,
        moe::router_gemm_args<C>{.x = x.data(), .w_gate = w_gate.data(), .logits = out.data()}));
    return snapshot{}.add(out);
  };
  same_bits_everywhere("router_gemm", gemm);
  REQUIRE_OK(
      moe::router_gemm(moe::host.with_threads(1), p,
                       moe::router_gemm_args<C>{
                           .x = x.data(), .w_gate = w_gate.data(), .logits = logits_acc.data()}));
  same_bits_everywhere("router_gemm_backward", [&](moe::host_policy pol) {
    std::vector<A> dx(at(T * H));
    std::vector<Acc> dw(at(H * E), Acc{0});
    REQUIRE_OK(
        moe::router_gemm_backward(pol, p,
                                  moe::router_gemm_backward_args<C>{.x = x.data(),
                                                                    .w_gate = w_gate.data(),
                                                                    .d_logits = d_logits_in.data(),
                                                                    .dx = dx.data(),
                                                                    .d_w_gate = dw.data()}));
    return snapshot{}.add(dx).add(dw);
  });

  // Route and route backward (fp32 logits; fp64 configs narrow them as the layer does).
  std::vector<float> logits(at(T * E));
  for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(logits_acc[i]);
  std::vector<std::int32_t> expert(at(T * K)), slot(at(T * K)), counts(E), kept(E);
  std::vector<float> weight(at(T * K));
  auto route = [&](moe::host_policy pol, std::vector<std::int32_t>& ex, std::vector<float>& w,
                   std::vector<std::int32_t>& sl, std::vector<std::int32_t>& c,
                   std::vector<std::int32_t>& k, moe::route_stats& st) {
    return moe::route<C>(pol, p, {},
                         {.logits = logits.data(),
                          .expert = ex.data(),
                          .weight = w.data(),
                          .slot = sl.data(),
                          .counts = c.data(),
                          .kept = k.data(),
                          .stats = &st});
  };
  same_bits_everywhere("route", [&](moe::host_policy pol) {
    std::vector<std::int32_t> ex(at(T * K)), sl(at(T * K)), c(E), k(E);
    std::vector<float> w(at(T * K));
    moe::route_stats st{};
    REQUIRE_OK(route(pol, ex, w, sl, c, k, st));
    return snapshot{}.add(ex).add(w).add(sl).add(c).add(k).add(st);
  });
  moe::route_stats stats{};
  REQUIRE_OK(route(moe::host.with_threads(1), expert, weight, slot, counts, kept, stats));
  auto const d_weight_in = moe::test::random_tensor<float>(gen, T * K);
  same_bits_everywhere("route_backward", [&](moe::host_policy pol) {
    std::vector<float> dl(at(T * E));
    REQUIRE_OK(moe::route_backward<C>(pol, p, {},
                                      {.logits = logits.data(),
                                       .expert = expert.data(),
                                       .slot = slot.data(),
                                       .d_weight = d_weight_in.data(),
                                       .d_logits = dl.data()}));
    return snapshot{}.add(dl);
  });

  // Plan (compact, the static capacity bound as the layer gives it).
  std::int64_t const cap = moe::detail::layer_impl::static_capacity<C>(p);
  std::int64_t const M = moe::plan_rows_bound(T, K, E, cap, moe::plan_layout::compact, 1);
  std::vector<std::int64_t> offsets(E + 1);
  std::vector<std::int32_t> row_of(at(T * K)), source_of(at(M));
  auto plan = [&](moe::host_policy pol, std::vector<std::int64_t>& o, std::vector<std::int32_t>& r,
                  std::vector<std::int32_t>& s) {
    return moe::plan(pol, {.layout = moe::plan_layout::compact,
                           .tokens = T,
                           .top_k = K,
                           .experts = E,
                           .capacity = cap,
                           .tile_rows = 1,
                           .expert = expert.data(),
                           .slot = slot.data(),
                           .offsets = o.data(),
                           .row_of = r.data(),
                           .source_of = s.data(),
                           .source_rows = M});
  };
  same_bits_everywhere("plan", [&](moe::host_policy pol) {
    std::vector<std::int64_t> o(E + 1);
    std::vector<std::int32_t> r(at(T * K)), s(at(M));
    REQUIRE_OK(plan(pol, o, r, s));
    return snapshot{}.add(o).add(r).add(s);
  });
  REQUIRE_OK(plan(moe::host.with_threads(1), offsets, row_of, source_of));

  // Permute, combine and their backward.
  std::vector<A> xp(at(M * H));
  same_bits_everywhere("permute", [&](moe::host_policy pol) {
    std::vector<A> out(at(M * H));
    REQUIRE_OK(moe::permute(pol, moe::permute_args<A>{.x = x.data(),
                                                      .source_of = source_of.data(),
                                                      .out = out.data(),
                                                      .tokens = T,
                                                      .hidden = H,
                                                      .rows = M,
                                                      .top_k = K}));
    return snapshot{}.add(out);
  });
  REQUIRE_OK(moe::permute(moe::host, moe::permute_args<A>{.x = x.data(),
                                                          .source_of = source_of.data(),
                                                          .out = xp.data(),
                                                          .tokens = T,
                                                          .hidden = H,
                                                          .rows = M,
                                                          .top_k = K}));
  auto const o_rows = moe::test::random_tensor<A>(gen, M * H);
  same_bits_everywhere("combine", [&](moe::host_policy pol) {
    std::vector<A> y(at(T * H));
    REQUIRE_OK(moe::combine(pol, moe::combine_args<A>{.o = o_rows.data(),
                                                      .row_of = row_of.data(),
                                                      .weight = weight.data(),
                                                      .y = y.data(),
                                                      .tokens = T,
                                                      .hidden = H,
                                                      .rows = M,
                                                      .top_k = K}));
    return snapshot{}.add(y);
  });
  same_bits_everywhere("combine_backward", [&](moe::host_policy pol) {
    std::vector<A> d_o(at(M * H));
    std::vector<float> dw(at(T * K));
    REQUIRE_OK(
        moe::combine_backward(pol, moe::combine_backward_args<A>{.dy = dy_t.data(),
                                                                 .o = o_rows.data(),
                                                                 .row_of = row_of.data(),
                                                                 .source_of = source_of.data(),
                                                                 .weight = weight.data(),
                                                                 .d_o = d_o.data(),
                                                                 .d_weight = dw.data(),
                                                                 .tokens = T,
                                                                 .hidden = H,
                                                                 .rows = M,
                                                                 .top_k = K}));
    return snapshot{}.add(d_o).add(dw);
  });
  same_bits_everywhere("permute_backward", [&](moe::host_policy pol) {
    std::vector<A> dx(at(T * H));
    REQUIRE_OK(moe::permute_backward(pol, moe::permute_backward_args<A>{.d_out = o_rows.data(),
                                                                        .row_of = row_of.data(),
                                                                        .dx = dx.data(),
                                                                        .tokens = T,
                                                                        .hidden = H,
                                                                        .rows = M,
                                                                        .top_k = K}));
    return snapshot{}.add(dx);
  });

  // Grouped GEMM: forward with the FFN's first layer and activation, dgrad, wgrad.
  same_bits_everywhere("grouped_gemm", [&](moe::host_policy pol) {
    std::vector<A> y(at(M * F)), pre(at(M * fw));
    REQUIRE_OK(moe::grouped_gemm(pol, moe::grouped_gemm_args<C>{.experts = E,
                                                                .rows = M,
                                                                .n = F,
                                                                .k = H,
                                                                .offsets = offsets.data(),
                                                                .x = xp.data(),
                                                                .w = w1.data(),
                                                                .bias = b1.data(),
                                                                .act = C.ffn_activation,
                                                                .y = y.data(),
                                                                .pre = pre.data()}));
    return snapshot{}.add(y).add(pre);
  });
  auto const dy_rows = moe::test::random_tensor<A>(gen, M * fw);
  same_bits_everywhere("grouped_gemm_dgrad", [&](moe::host_policy pol) {
    std::vector<A> dx(at(M * H));
    REQUIRE_OK(
        moe::grouped_gemm_dgrad(pol, moe::grouped_gemm_dgrad_args<C>{.experts = E,
                                                                     .rows = M,
                                                                     .n = fw,
                                                                     .k = H,
                                                                     .offsets = offsets.data(),
                                                                     .dy = dy_rows.data(),
                                                                     .w = w1.data(),
                                                                     .dx = dx.data()}));
    return snapshot{}.add(dx);
  });
  same_bits_everywhere("grouped_gemm_wgrad", [&](moe::host_policy pol) {
    std::vector<Acc> dw(at(E * fw * H), Acc{0}), db(at(E * fw), Acc{0});
    REQUIRE_OK(
        moe::grouped_gemm_wgrad(pol, moe::grouped_gemm_wgrad_args<C>{.experts = E,
                                                                     .rows = M,
                                                                     .n = fw,
                                                                     .k = H,
                                                                     .offsets = offsets.data(),
                                                                     .x = xp.data(),
                                                                     .dy = dy_rows.data(),
                                                                     .dw = dw.data(),
                                                                     .d_bias = db.data(),
                                                                     .accumulate = true}));
    return snapshot{}.add(dw).add(db);
  });

  // Expert FFN forward and backward.
  std::vector<A> pre(at(M * fw)), h(at(M * F)), yp(at(M * H));
  auto ffn = [&](moe::host_policy pol, std::vector<A>& pr, std::vector<A>& hh, std::vector<A>& y) {
    return moe::expert_ffn(pol, moe::expert_ffn_args<C>{.experts = E,
                                                        .rows = M,
                                                        .hidden = H,
                                                        .ffn = F,
                                                        .offsets = offsets.data(),
                                                        .x = xp.data(),
                                                        .w1 = w1.data(),
                                                        .b1 = b1.data(),
                                                        .w2 = w2.data(),
                                                        .b2 = b2.data(),
                                                        .y = y.data(),
                                                        .pre = pr.data(),
                                                        .h = hh.data()});
  };
  same_bits_everywhere("expert_ffn", [&](moe::host_policy pol) {
    std::vector<A> pr(at(M * fw)), hh(at(M * F)), y(at(M * H));
    REQUIRE_OK(ffn(pol, pr, hh, y));
    return snapshot{}.add(pr).add(hh).add(y);
  });
  REQUIRE_OK(ffn(moe::host.with_threads(1), pre, h, yp));
  auto const dyp = moe::test::random_tensor<A>(gen, M * H);
  same_bits_everywhere("expert_ffn_backward", [&](moe::host_policy pol) {
    std::vector<A> pr = pre, hh = h, d_pre(at(M * fw)), dx(at(M * H));
    std::vector<Acc> dw1(at(E * fw * H), Acc{0}), db1(at(E * fw), Acc{0}),
        dw2(at(E * H * F), Acc{0}), db2(at(E * H), Acc{0});
    REQUIRE_OK(
        moe::expert_ffn_backward(pol, moe::expert_ffn_backward_args<C>{.experts = E,
                                                                       .rows = M,
                                                                       .hidden = H,
                                                                       .ffn = F,
                                                                       .offsets = offsets.data(),
                                                                       .x = xp.data(),
                                                                       .w1 = w1.data(),
                                                                       .b1 = b1.data(),
                                                                       .w2 = w2.data(),
                                                                       .dy = dyp.data(),
                                                                       .pre = pr.data(),
                                                                       .h = hh.data(),
                                                                       .d_pre = d_pre.data(),
                                                                       .dx = dx.data(),
                                                                       .dw1 = dw1.data(),
                                                                       .db1 = db1.data(),
                                                                       .dw2 = dw2.data(),
                                                                       .db2 = db2.data()}));
    return snapshot{}.add(dx).add(dw1).add(db1).add(dw2).add(db2);
  });
}

/// The whole layer: y, dx, every gradient and the statistics.
template <moe::config C>
void check_layer(moe::layer_shape shape, std::int64_t T) {
  using A = moe::act_t<C>;
  std::uint64_t const seed = moe::test::fresh_seed();
  CAPTURE(seed);
  moe::layer<C> l(shape);
  REQUIRE_OK(l.allocate());
  REQUIRE_OK(l.init({.seed = seed}));
  moe::problem p = l.make_problem(T);
  p.z_loss_coef = 0.01f;
  p.seed = seed;
  std::mt19937_64 gen(seed);
  auto const x = moe::test::random_tensor<A>(gen, T * shape.hidden);
  auto const dy = moe::test::random_tensor<A>(gen, T * shape.hidden);
  std::vector<unsigned char> ws(l.workspace_bytes(p) + 64);
  void* base = ws.data() + (64 - reinterpret_cast<std::uintptr_t>(ws.data()) % 64) % 64;
  std::int64_t const n = l.parameter_count();
  same_bits_everywhere("layer", [&](moe::host_policy pol) {
    std::vector<A> y(x.size()), dx(x.size());
    moe::layer_stats st{};
    REQUIRE_OK(l.zero_grad());
    REQUIRE_OK(l.forward(pol, p, {x.data(), y.data(), &st}, base, ws.size() - 64));
    REQUIRE_OK(l.backward(pol, p, {x.data(), dy.data(), dx.data()}, base, ws.size() - 64));
    std::vector<moe::accum_t<C>> g(l.flat_grads(), l.flat_grads() + n);
    return snapshot{}.add(y).add(dx).add(g).add(st);
  });
}

}  // namespace

TEST_CASE("determinism: OpenMP is on, so thread counts are really compared") {
#if defined(_OPENMP)
  MESSAGE("OpenMP " << _OPENMP << ", default threads " << omp_get_max_threads());
  CHECK(true);
#else
  MESSAGE("built without OpenMP: thread counts are not compared, only repeated runs");
#endif
}

TEST_CASE("determinism: every op, across runs and thread counts") {
  SUBCASE("top2_bf16") {
    check_ops<moe::configs::top2_bf16>(96, 40, 24);
  }
  SUBCASE("top2_fp64") {
    check_ops<moe::configs::top2_fp64>(64, 24, 16);
  }
  SUBCASE("fine_bf16 (sigmoid, swiglu, dropless)") {
    check_ops<moe::configs::fine_bf16>(80, 32, 16);
  }
  SUBCASE("deepspeed top-1, random token selection") {
    check_ops<moe::configs::deepspeed_top1(8, {1, 1}, {1, 1}, true, moe::precision::fp32)>(64, 16,
                                                                                           12);
  }
}

TEST_CASE("determinism: the layer, across runs and thread counts") {
  check_layer<moe::configs::top2_bf16>({.hidden = 32, .ffn = 16, .shared_ffn = 8}, 70);
  check_layer<moe::configs::top2_fp32>(
      {.hidden = 24, .ffn = 12, .shared_ffn = 4, .residual_ffn = 6}, 50);
  check_layer<moe::configs::fine_bf16>({.hidden = 32, .ffn = 8}, 64);
}
