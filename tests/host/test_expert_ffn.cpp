// SPDX-License-Identifier: Apache-2.0
// The expert FFN on the host backend (moe/expert_ffn.hpp): the whole backward (dX, dW1, db1,
// dW2, db2) against central finite differences of the forward in fp64 for every activation;
// every stored intermediate and output against a step-by-step reference written here in fp32,
// fp64, bf16 and fp16; the three recompute modes bitwise equal; determinism across thread
// counts; gradient accumulation; and every bad-input status. Inputs are random with a fresh
// seed per run (printed on failure), ragged experts, an expert without rows and rows outside
// every expert.
//
// Tolerances of the step-by-step check (why: see test_grouped_gemm.cpp, whose bounds these
// are). Each step is compared with a reference computed from the op's own previous stored
// step (the exact values it read), so each bound is that of one grouped-GEMM call: a sum of n
// products in accumulation type A, (n + 2) u_A Σ|a||b| (+ the reference's own (n + 1) u_ref
// Σ|a||b|), then one rounding to the storage type, u_X |value| (+ 2^-25 for fp16 underflow);
// activations add |f'| <= 1.2 times their input's error and 16 u_A (1 + |g|)(1 + |u|) for
// evaluating f or f' in A. The whole-chain accuracy is what the fp64 finite-difference test
// checks: central differences with step η = 1e-5 (1 + |θ|) have truncation error O(η²) ≈ 1e-10
// and rounding noise ≈ 1e-16 / η ≈ 1e-11, both far below the 1e-6 (1 + |∂L/∂θ|) asked for.
#include <doctest/doctest.h>

#include "common.hpp"  // moe::test helpers: seeds, random tensors, rounding facts

#include <algorithm>    // std::max, std::min, std::fill, std::fill_n
#include <cmath>        // std::abs, std::erf, std::exp, std::tanh, std::sqrt
#include <cstdint>      // std::int64_t, std::uint64_t
#include <cstring>      // std::memcmp, std::strstr
#include <random>       // std::random_device, std::mt19937_64
#include <string>       // std::string, std::to_string
#include <type_traits>  // std::is_same_v, std::conditional_t
#include <vector>       // std::vector

#include "moe/configs.hpp"     // moe::configs::top2_fp32, top2_fp64, top2_bf16, fine_bf16
#include "moe/expert_ffn.hpp"  // the op under test

namespace {

using moe::activation;
using moe::ffn_recompute;

/// The fp16 twin of configs::top2_bf16 (not in the project's compiled list).
constexpr moe::config top2_fp16{.experts = 8,
                                .top_k = 2,
                                .capacity_factor = {5, 4},
                                .act = moe::precision::fp16,
                                .weight = moe::precision::fp16,
                                .norm = moe::normalization::renormalize};

constexpr activation all_activations[] = {
    activation::identity, activation::relu,   activation::gelu, activation::gelu_tanh,
    activation::silu,     activation::swiglu, activation::geglu};
constexpr ffn_recompute all_modes[] = {ffn_recompute::none, ffn_recompute::activation,
                                       ffn_recompute::fc1};

using moe::test::unit_roundoff;
using moe::test::fresh_seed;
using moe::test::at;
using moe::test::stored;
using moe::test::random_tensor;
using moe::test::same_bits;






template <class T>
long double lv(T v) {
  return static_cast<long double>(moe::to_float(v));
}

/// The reference's activations in long double (the textbook formulas).
long double ref_f(activation a, long double x) {
  long double const pi = 3.14159265358979323846264338327950288L;
  if (a == activation::swiglu) a = activation::silu;
  if (a == activation::geglu) a = activation::gelu;
  switch (a) {
    case activation::relu:
      return x > 0 ? x : 0;
    case activation::gelu:
      return 0.5L * x * (1 + std::erf(x / std::sqrt(2.0L)));
    case activation::gelu_tanh:
      return 0.5L * x * (1 + std::tanh(std::sqrt(2 / pi) * (x + 0.044715L * x * x * x)));
    case activation::silu:
      return x / (1 + std::exp(-x));
    default:
      return x;
  }
}
long double ref_df(activation a, long double x) {
  long double const pi = 3.14159265358979323846264338327950288L;
  if (a == activation::swiglu) a = activation::silu;
  if (a == activation::geglu) a = activation::gelu;
  switch (a) {
    case activation::relu:
      return x > 0 ? 1 : 0;
    case activation::gelu:
      return 0.5L * (1 + std::erf(x / std::sqrt(2.0L))) +
             x * std::exp(-x * x / 2) / std::sqrt(2 * pi);
    case activation::gelu_tanh: {
      long double const c = std::sqrt(2 / pi);
      long double const t = std::tanh(c * (x + 0.044715L * x * x * x));
      return 0.5L * (1 + t) + 0.5L * x * (1 - t * t) * c * (1 + 3 * 0.044715L * x * x);
    }
    case activation::silu: {
      long double const s = 1 / (1 + std::exp(-x));
      return s + x * s * (1 - s);
    }
    default:
      return 1;
  }
}

/// One random expert-FFN problem of config C, with every buffer the op needs.
template <moe::config C>
struct ffn_case {
  using X = moe::act_t<C>;
  using W = moe::weight_t<C>;
  using A = moe::accum_t<C>;

  activation act;
  std::int64_t E, M, H, F, FW;
  std::vector<std::int64_t> off;
  std::vector<X> x, dy;                 // [M, H]
  std::vector<W> w1, b1, w2, b2;        // [E, FW, H], [E, FW], [E, H, F], [E, H]
  std::vector<X> y, pre, h, d_pre, dx;  // outputs and intermediates
  std::vector<A> dw1, db1, dw2, db2;    // gradients
  bool bias = true;

  ffn_case(std::mt19937_64& gen, activation a, std::int64_t experts, std::int64_t hidden,
           std::int64_t ffn, bool with_bias)
      : act(a),
        E(experts),
        H(hidden),
        F(ffn),
        FW(moe::is_gated(a) ? 2 * ffn : ffn),
        bias(with_bias) {
    // Ragged rows: 2 rows before the first expert, expert 1 empty, 3 rows after the last.
    std::uniform_int_distribution<std::int64_t> count(1, 9);
    off.push_back(2);
    for (std::int64_t e = 0; e < E; ++e) off.push_back(off.back() + (e == 1 ? 0 : count(gen)));
    M = off.back() + 3;
    x = random_tensor<X>(gen, M * H);
    dy = random_tensor<X>(gen, M * H);
    w1 = random_tensor<W>(gen, E * FW * H);
    b1 = random_tensor<W>(gen, E * FW);
    w2 = random_tensor<W>(gen, E * H * F);
    b2 = random_tensor<W>(gen, E * H);
    y.assign(at(M * H), X{});
    pre.assign(at(M * FW), X{});
    h.assign(at(M * F), X{});
    d_pre.assign(at(M * FW), X{});
    dx.assign(at(M * H), X{});
    dw1.assign(at(E * FW * H), A{});
    db1.assign(at(E * FW), A{});
    dw2.assign(at(E * H * F), A{});
    db2.assign(at(E * H), A{});
  }

  moe::status forward(ffn_recompute mode, moe::host_policy policy = moe::host) {
    return moe::expert_ffn(policy, moe::expert_ffn_args<C>{.experts = E,
                                                           .rows = M,
                                                           .hidden = H,
                                                           .ffn = F,
                                                           .offsets = off.data(),
                                                           .x = x.data(),
                                                           .w1 = w1.data(),
                                                           .b1 = bias ? b1.data() : nullptr,
                                                           .w2 = w2.data(),
                                                           .b2 = bias ? b2.data() : nullptr,
                                                           .act = act,
                                                           .recompute = mode,
                                                           .y = y.data(),
                                                           .pre = pre.data(),
                                                           .h = h.data()});
  }
  moe::status backward(ffn_recompute mode, moe::host_policy policy = moe::host,
                       bool accumulate = false) {
    return moe::expert_ffn_backward(
        policy, moe::expert_ffn_backward_args<C>{.experts = E,
                                                 .rows = M,
                                                 .hidden = H,
                                                 .ffn = F,
                                                 .offsets = off.data(),
                                                 .x = x.data(),
                                                 .w1 = w1.data(),
                                                 .b1 = bias ? b1.data() : nullptr,
                                                 .w2 = w2.data(),
                                                 .act = act,
                                                 .recompute = mode,
                                                 .dy = dy.data(),
                                                 .pre = pre.data(),
                                                 .h = h.data(),
                                                 .d_pre = d_pre.data(),
                                                 .dx = dx.data(),
                                                 .dw1 = dw1.data(),
                                                 .db1 = bias ? db1.data() : nullptr,
                                                 .dw2 = dw2.data(),
                                                 .db2 = bias ? db2.data() : nullptr,
                                                 .accumulate = accumulate});
  }
  std::int64_t expert_of(std::int64_t m) const {
    for (std::int64_t e = 0; e < E; ++e)
      if (m >= off[at(e)] && m < off[at(e + 1)]) return e;
    return -1;
  }
};

/// Overwrites what a forward writes (rows of the experts of y, pre, h) with 7s.
template <moe::config C>
void scramble_forward(ffn_case<C>& c, bool pre, bool h, bool y) {
  using X = moe::act_t<C>;
  X const seven = stored<X>(7.0);
  for (std::int64_t m = c.off[0]; m < c.off.back(); ++m) {
    if (y) std::fill_n(c.y.begin() + m * c.H, c.H, seven);
    if (pre) std::fill_n(c.pre.begin() + m * c.FW, c.FW, seven);
    if (h) std::fill_n(c.h.begin() + m * c.F, c.F, seven);
  }
}
/// Overwrites what a backward writes (rows of the experts of dx, d_pre; all gradients) with 7s.
template <moe::config C>
void scramble_backward(ffn_case<C>& c) {
  using X = moe::act_t<C>;
  using A = moe::accum_t<C>;
  X const seven = stored<X>(7.0);
  for (std::int64_t m = c.off[0]; m < c.off.back(); ++m) {
    std::fill_n(c.dx.begin() + m * c.H, c.H, seven);
    std::fill_n(c.d_pre.begin() + m * c.FW, c.FW, seven);
  }
  for (auto* g : {&c.dw1, &c.db1, &c.dw2, &c.db2}) std::fill(g->begin(), g->end(), A{7});
}

/// The largest error/tolerance ratio seen, and where.
struct worst {
  double ratio = 0;
  std::string where;
  void see(long double err, double tol, std::string const& w) {
    double const r = static_cast<double>(std::abs(err)) / tol;
    if (!(r <= ratio)) {
      ratio = r != r ? 1e300 : r;
      where = w;
    }
  }
};

/// Every stored intermediate and output of forward + backward against a reference that reads
/// the op's own previous step (so each comparison is one grouped-GEMM bound).
template <moe::config C>
worst check_steps(ffn_case<C> const& c) {
  using A = moe::accum_t<C>;
  using X = moe::act_t<C>;
  double const ua = unit_roundoff<A>(), ux = unit_roundoff<X>();
  double const uref = 0x1p-64, fl = std::is_same_v<X, moe::fp16> ? 0x1p-25 : 0.0;
  bool const gated = moe::is_gated(c.act);
  std::int64_t const E = c.E, H = c.H, F = c.F, FW = c.FW;
  worst w;
  auto const sum_tol = [&](double n, long double abs_sum) {
    return (n + 2) * (ua + uref) * static_cast<double>(abs_sum);
  };
  for (std::int64_t m = 0; m < c.M; ++m) {
    std::int64_t const e = c.expert_of(m);
    if (e < 0) continue;
    std::string const row = "m " + std::to_string(m);
    // pre = x · W1ᵀ + b1
    for (std::int64_t j = 0; j < FW; ++j) {
      long double s = c.bias ? lv(c.b1[at(e * FW + j)]) : 0, a = std::abs(s);
      for (std::int64_t i = 0; i < H; ++i) {
        long double const p = lv(c.x[at(m * H + i)]) * lv(c.w1[at((e * FW + j) * H + i)]);
        s += p;
        a += std::abs(p);
      }
      w.see(lv(c.pre[at(m * FW + j)]) - s,
            sum_tol(static_cast<double>(H), a) + ux * static_cast<double>(std::abs(s)) + fl,
            "pre " + row);
    }
    // h = act(pre) from the stored pre
    for (std::int64_t j = 0; j < F; ++j) {
      long double const g = lv(c.pre[at(m * FW + j)]);
      long double const u = gated ? lv(c.pre[at(m * FW + F + j)]) : 1.0L;
      long double const want = ref_f(c.act, g) * u;
      w.see(lv(c.h[at(m * F + j)]) - want,
            16 * ua * static_cast<double>((1 + std::abs(g)) * (1 + std::abs(u))) +
                ux * static_cast<double>(std::abs(want)) + fl,
            "h " + row);
    }
    // y = h · W2ᵀ + b2
    for (std::int64_t j = 0; j < H; ++j) {
      long double s = c.bias ? lv(c.b2[at(e * H + j)]) : 0, a = std::abs(s);
      for (std::int64_t i = 0; i < F; ++i) {
        long double const p = lv(c.h[at(m * F + i)]) * lv(c.w2[at((e * H + j) * F + i)]);
        s += p;
        a += std::abs(p);
      }
      w.see(lv(c.y[at(m * H + j)]) - s,
            sum_tol(static_cast<double>(F), a) + ux * static_cast<double>(std::abs(s)) + fl,
            "y " + row);
    }
    // d pre = act'(pre) ⊙ (dy · W2)
    for (std::int64_t j = 0; j < F; ++j) {
      long double s = 0, a = 0;
      for (std::int64_t i = 0; i < H; ++i) {
        long double const p = lv(c.dy[at(m * H + i)]) * lv(c.w2[at((e * H + i) * F + j)]);
        s += p;
        a += std::abs(p);
      }
      double const ds = sum_tol(static_cast<double>(H), a);
      long double const g = lv(c.pre[at(m * FW + j)]);
      long double const u = gated ? lv(c.pre[at(m * FW + F + j)]) : 1.0L;
      double const ag = static_cast<double>(std::abs(g)), au = static_cast<double>(std::abs(u));
      double const as = static_cast<double>(std::abs(s));
      long double const want_g = s * u * ref_df(c.act, g);
      w.see(lv(c.d_pre[at(m * FW + j)]) - want_g,
            1.2 * ds * au + 16 * ua * (1 + ag) * as * au +
                ux * static_cast<double>(std::abs(want_g)) + fl,
            "d_pre(gate) " + row);
      if (gated) {
        long double const fg = ref_f(c.act, g);
        long double const want_u = s * fg;
        w.see(lv(c.d_pre[at(m * FW + F + j)]) - want_u,
              ds * static_cast<double>(std::abs(fg)) + 16 * ua * (1 + ag) * as +
                  ux * static_cast<double>(std::abs(want_u)) + fl,
              "d_pre(up) " + row);
      }
    }
    // dx = d pre · W1
    for (std::int64_t i = 0; i < H; ++i) {
      long double s = 0, a = 0;
      for (std::int64_t j = 0; j < FW; ++j) {
        long double const p = lv(c.d_pre[at(m * FW + j)]) * lv(c.w1[at((e * FW + j) * H + i)]);
        s += p;
        a += std::abs(p);
      }
      w.see(lv(c.dx[at(m * H + i)]) - s,
            sum_tol(static_cast<double>(FW), a) + ux * static_cast<double>(std::abs(s)) + fl,
            "dx " + row);
    }
  }
  // Weight and bias gradients: sums over each expert's rows.
  for (std::int64_t e = 0; e < E; ++e) {
    double const n = static_cast<double>(c.off[at(e + 1)] - c.off[at(e)]);
    std::string const ex = "e " + std::to_string(e);
    for (std::int64_t j = 0; j < H; ++j) {
      for (std::int64_t i = 0; i < F; ++i) {
        long double s = 0, a = 0;
        for (std::int64_t m = c.off[at(e)]; m < c.off[at(e + 1)]; ++m) {
          long double const p = lv(c.dy[at(m * H + j)]) * lv(c.h[at(m * F + i)]);
          s += p;
          a += std::abs(p);
        }
        w.see(static_cast<long double>(c.dw2[at((e * H + j) * F + i)]) - s, sum_tol(n, a) + 1e-300,
              "dw2 " + ex);
      }
      if (c.bias) {
        long double s = 0, a = 0;
        for (std::int64_t m = c.off[at(e)]; m < c.off[at(e + 1)]; ++m) {
          s += lv(c.dy[at(m * H + j)]);
          a += std::abs(lv(c.dy[at(m * H + j)]));
        }
        w.see(static_cast<long double>(c.db2[at(e * H + j)]) - s, sum_tol(n, a) + 1e-300,
              "db2 " + ex);
      }
    }
    for (std::int64_t j = 0; j < FW; ++j) {
      for (std::int64_t i = 0; i < H; ++i) {
        long double s = 0, a = 0;
        for (std::int64_t m = c.off[at(e)]; m < c.off[at(e + 1)]; ++m) {
          long double const p = lv(c.d_pre[at(m * FW + j)]) * lv(c.x[at(m * H + i)]);
          s += p;
          a += std::abs(p);
        }
        w.see(static_cast<long double>(c.dw1[at((e * FW + j) * H + i)]) - s, sum_tol(n, a) + 1e-300,
              "dw1 " + ex);
      }
      if (c.bias) {
        long double s = 0, a = 0;
        for (std::int64_t m = c.off[at(e)]; m < c.off[at(e + 1)]; ++m) {
          s += lv(c.d_pre[at(m * FW + j)]);
          a += std::abs(lv(c.d_pre[at(m * FW + j)]));
        }
        w.see(static_cast<long double>(c.db1[at(e * FW + j)]) - s, sum_tol(n, a) + 1e-300,
              "db1 " + ex);
      }
    }
  }
  return w;
}

template <moe::config C>
void run_steps(std::int64_t experts) {
  std::uint64_t const seed = fresh_seed();
  std::mt19937_64 gen(seed);
  for (activation act : all_activations)
    for (bool bias : {true, false}) {
      std::int64_t const H = std::uniform_int_distribution<std::int64_t>(20, 45)(gen);
      std::int64_t const F = std::uniform_int_distribution<std::int64_t>(15, 40)(gen);
      ffn_case<C> c(gen, act, experts, H, F, bias);
      INFO("seed ", seed, ", ", std::string(moe::storage_name<moe::act_t<C>>()), ", ",
           std::string(moe::to_string(act)), ", bias ", bias, ", E_l ", c.E, " M ", c.M, " H ", H,
           " F ", F);
      REQUIRE(c.forward(ffn_recompute::none).ok());
      REQUIRE(c.backward(ffn_recompute::none).ok());
      worst const w = check_steps(c);
      INFO("worst error/tolerance ", w.ratio, " at ", w.where);
      CHECK(w.ratio <= 1.0);
    }
}

}  // namespace

TEST_CASE("expert_ffn(host): each step matches the reference, fp32") {
  run_steps<moe::configs::top2_fp32>(4);
}
TEST_CASE("expert_ffn(host): each step matches the reference, fp64") {
  run_steps<moe::configs::top2_fp64>(3);
}
TEST_CASE("expert_ffn(host): each step matches the reference, bf16") {
  run_steps<moe::configs::top2_bf16>(5);
}
TEST_CASE("expert_ffn(host): each step matches the reference, fp16") {
  run_steps<top2_fp16>(3);
}
TEST_CASE("expert_ffn(host): each step matches the reference, fine-grained bf16 (swiglu)") {
  run_steps<moe::configs::fine_bf16>(9);
}

TEST_CASE("expert_ffn_backward(host): equals central finite differences, fp64") {
  constexpr moe::config C = moe::configs::top2_fp64;
  std::uint64_t const seed = fresh_seed();
  std::mt19937_64 gen(seed);
  for (activation act : all_activations) {
    INFO("seed ", seed, ", ", std::string(moe::to_string(act)));
    // Redraw until every pre-activation is at least 1e-3 from 0, so that no difference step
    // crosses relu's kink (or one of another activation's fast-changing spots).
    ffn_case<C> c(gen, act, 3, 5, 4, true);
    for (int tries = 0;; ++tries) {
      REQUIRE(tries < 100);
      REQUIRE(c.forward(ffn_recompute::none).ok());
      bool near_zero = false;
      for (std::int64_t m = c.off[0]; m < c.off.back(); ++m)
        for (std::int64_t j = 0; j < c.FW; ++j)
          near_zero = near_zero || std::abs(c.pre[at(m * c.FW + j)]) < 1e-3;
      if (!near_zero) break;
      c = ffn_case<C>(gen, act, 3, 5, 4, true);
    }
    REQUIRE(c.backward(ffn_recompute::none).ok());
    // L = Σ_{rows of experts} dy ⊙ y, so ∂L/∂y = dy.
    auto const loss = [&]() {
      REQUIRE(c.forward(ffn_recompute::none).ok());
      long double l = 0;
      for (std::int64_t m = c.off[0]; m < c.off.back(); ++m)
        for (std::int64_t j = 0; j < c.H; ++j) l += c.dy[at(m * c.H + j)] * c.y[at(m * c.H + j)];
      return static_cast<double>(l);
    };
    auto const fd_check = [&](std::vector<double>& param, std::vector<double> const& grad,
                              char const* name, auto skip) {
      for (std::size_t i = 0; i < param.size(); ++i) {
        if (skip(static_cast<std::int64_t>(i))) continue;
        double const keep = param[i];
        double const step = 1e-5 * (1 + std::abs(keep));
        param[i] = keep + step;
        double const up = loss();
        param[i] = keep - step;
        double const down = loss();
        param[i] = keep;
        double const want = (up - down) / (2 * step);
        INFO(std::string(name), "[", i, "]");
        CHECK(grad[i] == doctest::Approx(want).epsilon(1e-6).scale(1.0));
      }
    };
    std::vector<double> const dx = c.dx, dw1 = c.dw1, db1 = c.db1, dw2 = c.dw2, db2 = c.db2;
    auto const none = [](std::int64_t) { return false; };
    auto const outside = [&](std::int64_t i) { return c.expert_of(i / c.H) < 0; };
    fd_check(c.x, dx, "dx", outside);
    fd_check(c.w1, dw1, "dw1", none);
    fd_check(c.b1, db1, "db1", none);
    fd_check(c.w2, dw2, "dw2", none);
    fd_check(c.b2, db2, "db2", none);
    // The empty expert's gradients are zero.
    bool zeros = true;
    for (std::int64_t i = c.FW * c.H; i < 2 * c.FW * c.H; ++i) zeros = zeros && dw1[at(i)] == 0;
    for (std::int64_t i = c.H * c.F; i < 2 * c.H * c.F; ++i) zeros = zeros && dw2[at(i)] == 0;
    CHECK(zeros);
  }
}

TEST_CASE("expert_ffn(host): the recompute modes give bitwise-equal outputs and gradients") {
  std::uint64_t const seed = fresh_seed();
  std::mt19937_64 gen(seed);
  auto const run = [&]<moe::config C>(activation act) {
    INFO("seed ", seed, ", ", std::string(moe::storage_name<moe::act_t<C>>()), ", ",
         std::string(moe::to_string(act)));
    ffn_case<C> c(gen, act, 4, 33, 21, true);
    REQUIRE(c.forward(ffn_recompute::none).ok());
    REQUIRE(c.backward(ffn_recompute::none).ok());
    ffn_case<C> const ref = c;
    for (ffn_recompute mode : {ffn_recompute::activation, ffn_recompute::fc1}) {
      INFO("mode ", std::string(moe::to_string(mode)));
      ffn_case<C> d = ref;
      scramble_forward(d, true, true, true);
      REQUIRE(d.forward(mode).ok());
      // What the mode does not keep is gone before the backward.
      scramble_forward(d, mode == ffn_recompute::fc1, true, false);
      scramble_backward(d);
      REQUIRE(d.backward(mode).ok());
      CHECK(same_bits(d.y, ref.y));
      CHECK(same_bits(d.dx, ref.dx));
      CHECK(same_bits(d.dw1, ref.dw1));
      CHECK(same_bits(d.db1, ref.db1));
      CHECK(same_bits(d.dw2, ref.dw2));
      CHECK(same_bits(d.db2, ref.db2));
    }
  };
  for (activation act : {activation::gelu, activation::swiglu, activation::relu})
    run.template operator()<moe::configs::top2_bf16>(act);
  run.template operator()<moe::configs::top2_fp32>(activation::geglu);
}

TEST_CASE("expert_ffn(host): bitwise deterministic across thread counts; accumulation adds") {
  constexpr moe::config C = moe::configs::fine_bf16;
  std::uint64_t const seed = fresh_seed();
  INFO("seed ", seed);
  std::mt19937_64 gen(seed);
  ffn_case<C> c(gen, activation::swiglu, 12, 150, 90, true);
  REQUIRE(c.forward(ffn_recompute::activation).ok());
  REQUIRE(c.backward(ffn_recompute::activation).ok());
  ffn_case<C> const ref = c;
  for (int threads : {1, 2, 3}) {
    INFO("threads ", threads);
    ffn_case<C> d = ref;
    scramble_forward(d, true, true, true);
    scramble_backward(d);
    REQUIRE(d.forward(ffn_recompute::activation, moe::host.with_threads(threads)).ok());
    REQUIRE(d.backward(ffn_recompute::activation, moe::host.with_threads(threads)).ok());
    CHECK(same_bits(d.y, ref.y));
    CHECK(same_bits(d.dx, ref.dx));
    CHECK(same_bits(d.dw1, ref.dw1));
    CHECK(same_bits(d.db1, ref.db1));
    CHECK(same_bits(d.dw2, ref.dw2));
    CHECK(same_bits(d.db2, ref.db2));
  }
  // accumulate: from buffers of 7s, each gradient is 7 + its fresh value (up to the rounding
  // of sums that now start at 7: a few float ulps of 7 per row, far below the 7 that ignoring
  // the flag would miss by).
  ffn_case<C> d = ref;
  scramble_backward(d);
  REQUIRE(d.backward(ffn_recompute::activation, moe::host, true).ok());
  double off_by = 0;
  auto const compare = [&](std::vector<float> const& got, std::vector<float> const& fresh) {
    for (std::size_t i = 0; i < got.size(); ++i)
      off_by = std::max(off_by, std::abs(static_cast<double>(got[i]) - (7.0 + fresh[i])));
  };
  compare(d.dw1, ref.dw1);
  compare(d.db1, ref.db1);
  compare(d.dw2, ref.dw2);
  compare(d.db2, ref.db2);
  CHECK(off_by < 1e-3);
}

namespace {
void expect_error(moe::status const& s, char const* text) {
  INFO("message: ", std::string(s.message()), "; expected to contain: ", std::string(text));
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::strstr(s.message(), text) != nullptr);
}
}  // namespace

TEST_CASE("expert_ffn(host): every bad input gets its status") {
  constexpr moe::config C = moe::configs::top2_fp32;
  std::mt19937_64 gen(1);
  ffn_case<C> c(gen, activation::swiglu, 3, 8, 5, true);
  using fargs = moe::expert_ffn_args<C>;
  fargs const good{.experts = c.E,
                   .rows = c.M,
                   .hidden = c.H,
                   .ffn = c.F,
                   .offsets = c.off.data(),
                   .x = c.x.data(),
                   .w1 = c.w1.data(),
                   .b1 = c.b1.data(),
                   .w2 = c.w2.data(),
                   .b2 = c.b2.data(),
                   .act = activation::swiglu,
                   .recompute = ffn_recompute::none,
                   .y = c.y.data(),
                   .pre = c.pre.data(),
                   .h = c.h.data()};
  REQUIRE(moe::expert_ffn(moe::host, good).ok());
  auto const bad = [&](auto change, char const* text) {
    fargs a = good;
    change(a);
    expect_error(moe::expert_ffn(moe::host, a), text);
  };
  expect_error(moe::expert_ffn(moe::host.with_threads(-2), good), "host_policy.threads");
  bad([](fargs& a) { a.act = static_cast<activation>(77); }, "expert_ffn_args.act");
  bad([](fargs& a) { a.recompute = static_cast<ffn_recompute>(5); }, "expert_ffn_args.recompute");
  bad([](fargs& a) { a.experts = 9; }, "expert_ffn_args.experts");
  bad([](fargs& a) { a.hidden = 0; }, "expert_ffn_args.hidden: expected >= 1");
  bad([](fargs& a) { a.ffn = 0; }, "expert_ffn_args.ffn: expected >= 1");
  bad([](fargs& a) { a.rows = 3; }, "expert_ffn_args.offsets");
  bad([](fargs& a) { a.x = nullptr; }, "expert_ffn_args.x: expected non-null");
  bad([](fargs& a) { a.w1 = nullptr; }, "expert_ffn_args.w1: expected non-null");
  bad([](fargs& a) { a.w2 = nullptr; }, "expert_ffn_args.w2: expected non-null");
  bad([](fargs& a) { a.y = nullptr; }, "expert_ffn_args.y: expected non-null");
  bad([](fargs& a) { a.h = nullptr; }, "expert_ffn_args.h: expected non-null");
  bad([](fargs& a) { a.pre = nullptr; }, "expert_ffn_args.pre: expected non-null");
  bad([&](fargs& a) { a.h = c.y.data(); }, "expert_ffn_args.y: expected no overlap with h");
  bad([&](fargs& a) { a.h = c.pre.data(); }, "expert_ffn_args.pre: expected no overlap with h");
  bad([&](fargs& a) { a.y = const_cast<float*>(a.x); },
      "expert_ffn_args.y: expected no overlap with x");
  bad([&](fargs& a) { a.h = const_cast<float*>(a.w2) + 1; },
      "expert_ffn_args.h: expected no overlap with w2");
  {  // with fc1 the forward does not need pre
    fargs a = good;
    a.recompute = ffn_recompute::fc1;
    a.pre = nullptr;
    CHECK(moe::expert_ffn(moe::host, a).ok());
  }

  using bargs = moe::expert_ffn_backward_args<C>;
  bargs const bgood{.experts = c.E,
                    .rows = c.M,
                    .hidden = c.H,
                    .ffn = c.F,
                    .offsets = c.off.data(),
                    .x = c.x.data(),
                    .w1 = c.w1.data(),
                    .b1 = c.b1.data(),
                    .w2 = c.w2.data(),
                    .act = activation::swiglu,
                    .recompute = ffn_recompute::none,
                    .dy = c.dy.data(),
                    .pre = c.pre.data(),
                    .h = c.h.data(),
                    .d_pre = c.d_pre.data(),
                    .dx = c.dx.data(),
                    .dw1 = c.dw1.data(),
                    .db1 = c.db1.data(),
                    .dw2 = c.dw2.data(),
                    .db2 = c.db2.data()};
  REQUIRE(moe::expert_ffn_backward(moe::host, bgood).ok());
  auto const bbad = [&](auto change, char const* text) {
    bargs a = bgood;
    change(a);
    expect_error(moe::expert_ffn_backward(moe::host, a), text);
  };
  bbad([](bargs& a) { a.recompute = static_cast<ffn_recompute>(3); },
       "expert_ffn_backward_args.recompute");
  bbad([](bargs& a) { a.offsets = nullptr; }, "expert_ffn_backward_args.offsets");
  bbad([](bargs& a) { a.dy = nullptr; }, "expert_ffn_backward_args.dy: expected non-null");
  bbad([](bargs& a) { a.d_pre = nullptr; }, "expert_ffn_backward_args.d_pre: expected non-null");
  bbad([](bargs& a) { a.dx = nullptr; }, "expert_ffn_backward_args.dx: expected non-null");
  bbad([](bargs& a) { a.dw1 = nullptr; }, "expert_ffn_backward_args.dw1: expected non-null");
  bbad([](bargs& a) { a.dw2 = nullptr; }, "expert_ffn_backward_args.dw2: expected non-null");
  bbad([](bargs& a) { a.pre = nullptr; }, "expert_ffn_backward_args.pre: expected non-null");
  bbad([](bargs& a) { a.h = nullptr; }, "expert_ffn_backward_args.h: expected non-null");
  bbad([&](bargs& a) { a.d_pre = a.pre; },
       "expert_ffn_backward_args.d_pre: expected no overlap with pre");
  bbad(
      [&](bargs& a) {
        a.dx = c.y.data();
        a.dy = c.y.data();
      },
      "expert_ffn_backward_args.dx: expected no overlap with dy");
  bbad([&](bargs& a) { a.db2 = a.dw2 + 2; },
       "expert_ffn_backward_args.dw2: expected no overlap with db2");
  bbad([&](bargs& a) { a.dw1 = const_cast<float*>(reinterpret_cast<float const*>(a.w1)); },
       "expert_ffn_backward_args.dw1: expected no overlap with w1");
  {  // recompute = fc1 writes pre, so it must not alias an input either
    bargs a = bgood;
    a.recompute = ffn_recompute::fc1;
    a.pre = c.dw1.data();  // inside dw1, so it overlaps nothing else
    expect_error(moe::expert_ffn_backward(moe::host, a),
                 "expert_ffn_backward_args.pre: expected no overlap with dw1");
  }
  CHECK(moe::workspace_bytes(moe::host, good) == 0);
  CHECK(moe::workspace_bytes(moe::host, bgood) == 0);
}

TEST_CASE("expert_ffn(host): one training step, as docs/grouped_gemm.md shows it") {
  constexpr moe::config C = moe::configs::fine_bf16;  // E = 64, top-8, swiglu, bf16
  moe::problem const p{.tokens = 32, .hidden = 64, .ffn = 48, .ep_size = 8};
  std::int64_t const E = C.experts / p.ep_size, H = p.hidden, F = p.ffn, FW = 2 * F;
  std::vector<std::int64_t> const offsets{0, 40, 40, 72, 100, 140, 180, 200, 256};  // plan's
  std::int64_t const M = offsets.back();
  std::mt19937_64 gen(7);
  auto const x = random_tensor<moe::bf16>(gen, M * H), dy = random_tensor<moe::bf16>(gen, M * H);
  auto const w1 = random_tensor<moe::bf16>(gen, E * FW * H);
  auto const w2 = random_tensor<moe::bf16>(gen, E * H * F);
  // [snippet expert_ffn_step]
  // W1 [E_l, 2F, H]: rows [0, F) gate, [F, 2F) up; W2 [E_l, H, F]. SwiGLU from the config.
  std::vector<moe::bf16> y(M * H), pre(M * FW), h(M * F), d_pre(M * FW), dx(M * H);
  std::vector<float> dw1(E * FW * H), dw2(E * H * F);  // accum_t<C>: fp32
  moe::status s = moe::can_implement<C>(moe::host, p);
  if (s.ok())
    s = moe::expert_ffn(moe::host, moe::expert_ffn_args<C>{.experts = E,
                                                           .rows = M,
                                                           .hidden = H,
                                                           .ffn = F,
                                                           .offsets = offsets.data(),
                                                           .x = x.data(),
                                                           .w1 = w1.data(),
                                                           .w2 = w2.data(),
                                                           .recompute = ffn_recompute::activation,
                                                           .y = y.data(),
                                                           .pre = pre.data(),  // kept
                                                           .h = h.data()});    // scratch
  // ... combine, loss, combine backward: dy ...
  if (s.ok())
    s = moe::expert_ffn_backward(
        moe::host, moe::expert_ffn_backward_args<C>{.experts = E,
                                                    .rows = M,
                                                    .hidden = H,
                                                    .ffn = F,
                                                    .offsets = offsets.data(),
                                                    .x = x.data(),
                                                    .w1 = w1.data(),
                                                    .w2 = w2.data(),
                                                    .recompute = ffn_recompute::activation,
                                                    .dy = dy.data(),
                                                    .pre = pre.data(),  // from the forward
                                                    .h = h.data(),      // recomputed here
                                                    .d_pre = d_pre.data(),
                                                    .dx = dx.data(),
                                                    .dw1 = dw1.data(),
                                                    .dw2 = dw2.data()});
  // [end snippet]
  CHECK_MESSAGE(s.ok(), s.message());
}
