// SPDX-License-Identifier: Apache-2.0
// The router GEMM on the host backend (moe/router_gemm.hpp): forward logits and backward dx,
// dW_g against an extended-precision reference on random inputs, for fp32, bf16, fp16 and fp64
// configs, with and without jitter; a finite-difference check of the backward in fp64;
// accumulation of dW_g across calls; determinism; and every bad-input message.
//
// Tolerances. Every output is one running sum of n terms (n = H for logits, E for dx, T for
// dW_g) carried in the accumulation type A, whose unit roundoff is u_A (2^-24 for float, 2^-53
// for double). With S = Σ|term| (for the logits S = Σ_h |x̃||w|), the classic bound for
// recursive summation of rounded products is |error| <= γ_n · S ≈ n · u_A · S; forming x̃ = x·u
// in A adds one more u_A per term, and dx's product with u one more. So the checks are
//   logits: (H + 2) u_A S      dx: ((E + 3) u_A + u_X) S + floor_X      dW_g: (T + 3) u_A S
// where u_X is the unit roundoff of the activation storage type that dx is rounded to once
// (2^-8 bf16, 2^-11 fp16, 2^-24 fp32, 2^-53 fp64) and floor_X half its smallest subnormal
// (2^-25 for fp16, where a tiny dx underflows; negligible for the others). Storage precision
// does not enter the logits bound: the inputs are drawn already rounded to their storage type
// and the reference reads those exact values. The reference sums in long double (64-bit
// significand on x86-64), and its own bound, with u_ref = LDBL_EPSILON / 2, is added, so the
// fp64 configs are checked at their own rounding level (a double reference could not do that).
#include <doctest/doctest.h>

#include "common.hpp"  // moe::test helpers: seeds, random tensors, rounding facts

#include <algorithm>  // std::min, std::max
#include <cfloat>     // LDBL_EPSILON
#include <cmath>      // std::abs, std::ldexp, std::nan
#include <cstdint>    // std::int64_t, std::uint64_t
#include <cstring>    // std::memcmp
#include <limits>     // std::numeric_limits
#include <random>     // std::random_device, std::mt19937_64
#include <string>     // std::string
#include <vector>     // std::vector

#include "moe/configs.hpp"      // moe::configs::top2_fp32, top2_bf16, top2_fp64
#include "moe/router_gemm.hpp"  // moe::router_gemm, router_gemm_backward, jitter_multiplier

namespace {

/// The fp16 twin of configs::top2_bf16 (not in the project's compiled list).
constexpr moe::config top2_fp16{.experts = 8,
                                .top_k = 2,
                                .capacity_factor = {5, 4},
                                .act = moe::precision::fp16,
                                .weight = moe::precision::fp16,
                                .norm = moe::normalization::renormalize};

/// C with E experts (top_k clamped to E).
template <moe::config C, int E>
constexpr moe::config with_experts = [] {
  moe::config c = C;
  c.experts = E;
  c.top_k = std::min(c.top_k, E);
  return c;
}();

using moe::test::unit_roundoff;
using moe::test::fresh_seed;
using moe::test::stored;
using moe::test::random_tensor;
using moe::test::same_bits;
using moe::test::underflow_floor;
constexpr long double reference_roundoff = LDBL_EPSILON / 2;


template <class T>
long double value(T v) {
  return static_cast<long double>(moe::to_float(v));
}


enum class jitter_mode { none, caller, philox };
constexpr char const* to_string(jitter_mode m) {
  return m == jitter_mode::none ? "none" : m == jitter_mode::caller ? "caller" : "philox";
}

/// One random problem of config C: inputs, the jitter the op is given, and the multipliers it
/// must apply (all 1 without jitter).
template <moe::config C>
struct router_case {
  using X = moe::act_t<C>;
  using W = moe::weight_t<C>;
  using A = moe::accum_t<C>;
  static constexpr std::int64_t E = C.experts;

  std::int64_t T, H;
  moe::problem problem;
  std::vector<X> x;          // [T, H]
  std::vector<W> w;          // [H, E]
  std::vector<A> d_logits;   // [T, E]
  std::vector<A> d_w0;       // [H, E] the gradient buffer's prior contents
  std::vector<float> u_in;   // [T, H] caller's multipliers (caller mode)
  std::vector<float> u_eff;  // [T, H] what the op must multiply by
  moe::router_jitter jitter{};

  router_case(std::mt19937_64& gen, std::int64_t tokens, std::int64_t hidden, jitter_mode mode,
              std::uint64_t seed)
      : T(tokens), H(hidden) {
    problem = moe::problem{.tokens = T, .hidden = H, .ffn = 1, .training = true, .seed = seed};
    x = random_tensor<X>(gen, T * H, -2.0, 2.0);
    w = random_tensor<W>(gen, H * E, -1.0, 1.0);
    d_logits = random_tensor<A>(gen, T * E, -1.0, 1.0);
    d_w0 = random_tensor<A>(gen, H * E, -1.0, 1.0);
    u_eff.assign(static_cast<std::size_t>(T * H), 1.0f);
    if (mode == jitter_mode::caller) {
      jitter.eps = 0.25f;
      u_in = random_tensor<float>(gen, T * H, 0.75, 1.25);
      u_eff = u_in;
      jitter.u = u_in.data();
    } else if (mode == jitter_mode::philox) {
      jitter.eps = 0.1f;
      jitter.offset = 12345;
      for (std::int64_t i = 0; i < T * H; ++i)
        u_eff[static_cast<std::size_t>(i)] = moe::jitter_multiplier(
            jitter.eps, moe::uniform(seed, jitter.offset + static_cast<std::uint64_t>(i)));
    }
  }

  long double xt(std::int64_t t, std::int64_t h) const {  // x̃, exactly
    auto const i = static_cast<std::size_t>(t * H + h);
    return value(x[i]) * static_cast<long double>(u_eff[i]);
  }
};

/// Largest error / tolerance over a tensor; <= 1 passes.
struct worst {
  double ratio = 0;
  std::int64_t at = -1;
  void add(long double got, long double want, long double tol, std::int64_t i) {
    long double const err = std::abs(got - want);
    double const r = tol > 0 ? static_cast<double>(err / tol) : (err == 0 ? 0.0 : 1e300);
    if (r > ratio || !(r == r)) {
      ratio = r == r ? r : 1e300;
      at = i;
    }
  }
};

/// Runs the forward on `c` and compares it with the reference.
template <moe::config C>
worst check_forward(router_case<C> const& c) {
  using A = moe::accum_t<C>;
  std::int64_t const T = c.T, H = c.H, E = C.experts;
  std::vector<A> logits(static_cast<std::size_t>(T * E), A{-7});
  moe::status const s =
      moe::router_gemm(moe::host, c.problem,
                       moe::router_gemm_args<C>{c.x.data(), c.w.data(), logits.data(), c.jitter});
  REQUIRE_MESSAGE(s.ok(), s.message());
  worst r;
  double const ua = unit_roundoff<A>();
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t e = 0; e < E; ++e) {
      long double sum = 0, bound = 0;
      for (std::int64_t h = 0; h < H; ++h) {
        long double const term = c.xt(t, h) * value(c.w[static_cast<std::size_t>(h * E + e)]);
        sum += term;
        bound += std::abs(term);
      }
      long double const tol = static_cast<long double>(H + 2) * (ua + reference_roundoff) * bound;
      r.add(logits[static_cast<std::size_t>(t * E + e)], sum, tol, t * E + e);
    }
  return r;
}

/// Runs the backward on `c` and compares dx and dW_g with the reference.
template <moe::config C>
std::pair<worst, worst> check_backward(router_case<C> const& c) {
  using X = moe::act_t<C>;
  using A = moe::accum_t<C>;
  std::int64_t const T = c.T, H = c.H, E = C.experts;
  std::vector<X> dx(static_cast<std::size_t>(T * H), stored<X>(-7.0));
  std::vector<A> dw = c.d_w0;
  moe::status const s = moe::router_gemm_backward(
      moe::host, c.problem,
      moe::router_gemm_backward_args<C>{c.x.data(), c.w.data(), c.d_logits.data(), dx.data(),
                                        dw.data(), c.jitter});
  REQUIRE_MESSAGE(s.ok(), s.message());
  double const ua = unit_roundoff<A>(), ux = unit_roundoff<X>();
  worst rx, rw;
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < H; ++h) {
      long double sum = 0, bound = 0;
      for (std::int64_t e = 0; e < E; ++e) {
        long double const term = value(c.d_logits[static_cast<std::size_t>(t * E + e)]) *
                                 value(c.w[static_cast<std::size_t>(h * E + e)]);
        sum += term;
        bound += std::abs(term);
      }
      long double const u = c.u_eff[static_cast<std::size_t>(t * H + h)];
      long double const tol =
          (static_cast<long double>(E + 3) * (ua + reference_roundoff) + ux) * u * bound +
          underflow_floor<X>();
      rx.add(value(dx[static_cast<std::size_t>(t * H + h)]), u * sum, tol, t * H + h);
    }
  for (std::int64_t h = 0; h < H; ++h)
    for (std::int64_t e = 0; e < E; ++e) {
      long double const w0 = c.d_w0[static_cast<std::size_t>(h * E + e)];
      long double sum = w0, bound = std::abs(w0);
      for (std::int64_t t = 0; t < T; ++t) {
        long double const term =
            c.xt(t, h) * value(c.d_logits[static_cast<std::size_t>(t * E + e)]);
        sum += term;
        bound += std::abs(term);
      }
      long double const tol = static_cast<long double>(T + 3) * (ua + reference_roundoff) * bound;
      rw.add(dw[static_cast<std::size_t>(h * E + e)], sum, tol, h * E + e);
    }
  return {rx, rw};
}

/// Every shape of the sweep and every jitter mode, forward and backward, for config C.
template <moe::config C>
void sweep(std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  for (std::int64_t T : {0, 1, 7, 130})
    for (std::int64_t H : {1, 3, 64, 129})
      for (jitter_mode mode : {jitter_mode::none, jitter_mode::caller, jitter_mode::philox}) {
        router_case<C> const c(gen, T, H, mode, seed);
        INFO("seed ", seed, ", ", std::string(moe::storage_name<moe::act_t<C>>()), ", T ", T, " H ",
             H, " E ", C.experts, ", jitter ", std::string(to_string(mode)));
        worst const f = check_forward(c);
        auto const backward = check_backward(c);
        worst const bx = backward.first, bw = backward.second;  // (clang 14: no bindings in INFO)
        INFO("worst error/tolerance: logits ", f.ratio, " at ", f.at, ", dx ", bx.ratio, " at ",
             bx.at, ", dW_g ", bw.ratio, " at ", bw.at);
        CHECK(f.ratio <= 1.0);
        CHECK(bx.ratio <= 1.0);
        CHECK(bw.ratio <= 1.0);
      }
}

template <moe::config C>
void sweep_experts(std::uint64_t seed) {
  sweep<with_experts<C, 1>>(seed);
  sweep<with_experts<C, 8>>(seed + 1);
  sweep<with_experts<C, 64>>(seed + 2);
}

/// Bitwise equality of two tensors.

/// Forward logits and backward (dx, dW_g from c.d_w0) of `c` under `policy`.
template <moe::config C>
struct outputs {
  std::vector<moe::accum_t<C>> logits;
  std::vector<moe::act_t<C>> dx;
  std::vector<moe::accum_t<C>> dw;
};
template <moe::config C>
outputs<C> run(router_case<C> const& c, moe::host_policy policy) {
  std::int64_t const E = C.experts;
  outputs<C> o;
  o.logits.assign(static_cast<std::size_t>(c.T * E), {});
  o.dx.assign(static_cast<std::size_t>(c.T * c.H), {});
  o.dw = c.d_w0;
  REQUIRE(
      moe::router_gemm(policy, c.problem,
                       moe::router_gemm_args<C>{c.x.data(), c.w.data(), o.logits.data(), c.jitter})
          .ok());
  REQUIRE(moe::router_gemm_backward(
              policy, c.problem,
              moe::router_gemm_backward_args<C>{c.x.data(), c.w.data(), c.d_logits.data(),
                                                o.dx.data(), o.dw.data(), c.jitter})
              .ok());
  return o;
}

}  // namespace

TEST_CASE("router_gemm(host): forward and backward match the reference, fp32") {
  sweep_experts<moe::configs::top2_fp32>(fresh_seed());
}
TEST_CASE("router_gemm(host): forward and backward match the reference, bf16") {
  sweep_experts<moe::configs::top2_bf16>(fresh_seed());
}
TEST_CASE("router_gemm(host): forward and backward match the reference, fp16") {
  sweep_experts<top2_fp16>(fresh_seed());
}
TEST_CASE("router_gemm(host): forward and backward match the reference, fp64") {
  sweep_experts<moe::configs::top2_fp64>(fresh_seed());
}

TEST_CASE("router_gemm(host): every block boundary (T, H, E past two blocks, ragged)") {
  // 300 tokens: 9 forward/dgrad blocks + 12, a wgrad panel + 44; 260 hidden: two forward
  // panels + 4, four wgrad/dgrad blocks + 4; 136 experts: two forward panels + 8 and a dgrad
  // panel + 8 (72: one forward panel + 8). Sizes kept small enough for an -O0 build.
  std::uint64_t const seed = fresh_seed();
  std::mt19937_64 gen(seed);
  auto one = [&]<moe::config C>(jitter_mode mode) {
    router_case<C> const c(gen, 300, 260, mode, seed);
    INFO("seed ", seed, ", ", std::string(moe::storage_name<moe::act_t<C>>()), " E ", C.experts,
         ", jitter ", std::string(to_string(mode)));
    worst const f = check_forward(c);
    auto const backward = check_backward(c);
    worst const bx = backward.first, bw = backward.second;  // (clang 14: no bindings in INFO)
    INFO("worst error/tolerance: logits ", f.ratio, ", dx ", bx.ratio, ", dW_g ", bw.ratio);
    CHECK(f.ratio <= 1.0);
    CHECK(bx.ratio <= 1.0);
    CHECK(bw.ratio <= 1.0);
  };
  one.operator()<with_experts<moe::configs::top2_fp32, 136>>(jitter_mode::philox);
  one.operator()<with_experts<moe::configs::top2_bf16, 72>>(jitter_mode::none);
  one.operator()<with_experts<moe::configs::top2_fp64, 9>>(jitter_mode::caller);
}

TEST_CASE("router_gemm(host): backward equals central finite differences, fp64") {
  constexpr moe::config C = moe::configs::top2_fp64;
  std::uint64_t const seed = fresh_seed();
  INFO("seed ", seed);
  std::mt19937_64 gen(seed);
  for (jitter_mode mode : {jitter_mode::none, jitter_mode::caller, jitter_mode::philox}) {
    CAPTURE(std::string(to_string(mode)));
    router_case<C> c(gen, 5, 7, mode, seed);
    std::int64_t const T = c.T, H = c.H, E = C.experts;
    std::vector<double> const g = random_tensor<double>(gen, T * E, -1.0, 1.0);  // dL/dlogits
    // L(x, W) = Σ g ⊙ logits(x, W)
    auto loss = [&](std::vector<double> const& x, std::vector<double> const& w) {
      std::vector<double> logits(static_cast<std::size_t>(T * E));
      REQUIRE(
          moe::router_gemm(moe::host, c.problem,
                           moe::router_gemm_args<C>{x.data(), w.data(), logits.data(), c.jitter})
              .ok());
      long double l = 0;
      for (std::size_t i = 0; i < logits.size(); ++i)
        l += static_cast<long double>(g[i]) * logits[i];
      return static_cast<double>(l);
    };
    std::vector<double> dx(static_cast<std::size_t>(T * H));
    std::vector<double> dw(static_cast<std::size_t>(H * E), 0.0);
    REQUIRE(moe::router_gemm_backward(
                moe::host, c.problem,
                moe::router_gemm_backward_args<C>{c.x.data(), c.w.data(), g.data(), dx.data(),
                                                  dw.data(), c.jitter})
                .ok());
    // L is linear in each input, so the central difference is exact but for rounding: about
    // u_64 · Σ|terms| / δ ≈ 1e-16 · 100 / 2^-10 ≈ 1e-11; the check allows 1e-8.
    double const delta = 0x1p-10;
    auto fd = [&](std::vector<double>& v, std::size_t i, auto const& eval) {
      double const v0 = v[i];
      v[i] = v0 + delta;
      double const up = eval();
      v[i] = v0 - delta;
      double const down = eval();
      v[i] = v0;
      return (up - down) / (2 * delta);
    };
    std::vector<double> x = c.x, w = c.w;
    for (std::size_t i = 0; i < x.size(); ++i) {
      double const want = fd(x, i, [&] { return loss(x, c.w); });
      CHECK(dx[i] == doctest::Approx(want).epsilon(1e-8).scale(1.0));
    }
    for (std::size_t i = 0; i < w.size(); ++i) {
      double const want = fd(w, i, [&] { return loss(c.x, w); });
      CHECK(dw[i] == doctest::Approx(want).epsilon(1e-8).scale(1.0));
    }
  }
}

TEST_CASE("router_gemm(host): dW_g accumulates; two calls equal one over the joined tokens") {
  // Each dW_g element continues its running sum in token order, so two micro-batches give the
  // bits of one call over their concatenation — with Philox jitter too, when the second call's
  // offset skips the first call's T1·H words.
  std::uint64_t const seed = fresh_seed();
  INFO("seed ", seed);
  std::mt19937_64 gen(seed);
  auto one = [&]<moe::config C>() {
    using A = moe::accum_t<C>;
    using X = moe::act_t<C>;
    std::int64_t const T1 = 37, T2 = 300, H = 70, E = C.experts;
    for (jitter_mode mode : {jitter_mode::none, jitter_mode::philox}) {
      router_case<C> const whole(gen, T1 + T2, H, mode, seed);
      auto part = [&](std::int64_t t0, std::int64_t n, std::vector<A>& dw, X* dx) {
        moe::problem p = whole.problem;
        p.tokens = n;
        moe::router_jitter j = whole.jitter;
        j.offset += static_cast<std::uint64_t>(t0 * H);
        return moe::router_gemm_backward(
            moe::host, p,
            moe::router_gemm_backward_args<C>{whole.x.data() + t0 * H, whole.w.data(),
                                              whole.d_logits.data() + t0 * E, dx, dw.data(), j});
      };
      std::vector<A> dw_split = whole.d_w0, dw_joined = whole.d_w0;
      std::vector<X> dx_split(static_cast<std::size_t>((T1 + T2) * H));
      std::vector<X> dx_joined(dx_split.size());
      REQUIRE(part(0, T1, dw_split, dx_split.data()).ok());
      REQUIRE(part(T1, T2, dw_split, dx_split.data() + T1 * H).ok());
      REQUIRE(part(0, T1 + T2, dw_joined, dx_joined.data()).ok());
      CHECK(same_bits(dw_split, dw_joined));
      CHECK(same_bits(dx_split, dx_joined));
      // and it did accumulate: a third call adds the same gradient again
      std::vector<A> const once = dw_joined;
      REQUIRE(part(0, T1 + T2, dw_joined, dx_joined.data()).ok());
      for (std::size_t i = 0; i < once.size(); ++i) {
        A const grad = once[i] - whole.d_w0[i];
        CHECK(std::abs(dw_joined[i] - (once[i] + grad)) <= 1e-3 * (1 + std::abs(grad)));
      }
      // T = 0 leaves the buffer alone
      std::vector<A> const before = dw_joined;
      REQUIRE(part(0, 0, dw_joined, nullptr).ok());
      CHECK(same_bits(before, dw_joined));
    }
  };
  one.operator()<moe::configs::top2_fp32>();
  one.operator()<moe::configs::top2_bf16>();
  one.operator()<with_experts<moe::configs::top2_fp64, 5>>();
}

TEST_CASE("router_gemm(host): deterministic — repeated runs and thread counts give the same bits") {
  std::uint64_t const seed = fresh_seed();
  INFO("seed ", seed);
  std::mt19937_64 gen(seed);
  auto one = [&]<moe::config C>() {
    for (jitter_mode mode : {jitter_mode::none, jitter_mode::philox}) {
      router_case<C> const c(gen, 300, 129, mode, seed);
      outputs<C> const a = run(c, moe::host);
      outputs<C> const b = run(c, moe::host);
      outputs<C> const one_thread = run(c, moe::host.with_threads(1));
      outputs<C> const two_threads = run(c, moe::host.with_threads(2));
      outputs<C> const three_threads = run(c, moe::host.with_threads(3));
      for (outputs<C> const* o : {&b, &one_thread, &two_threads, &three_threads}) {
        CHECK(same_bits(a.logits, o->logits));
        CHECK(same_bits(a.dx, o->dx));
        CHECK(same_bits(a.dw, o->dw));
      }
    }
  };
  one.operator()<with_experts<moe::configs::top2_fp32, 64>>();
  one.operator()<with_experts<moe::configs::top2_bf16, 64>>();
  one.operator()<top2_fp16>();
}

TEST_CASE("router_gemm(host): jitter — Philox equals the caller's tensor; off in evaluation") {
  constexpr moe::config C = moe::configs::top2_bf16;
  std::uint64_t const seed = fresh_seed();
  INFO("seed ", seed);
  std::mt19937_64 gen(seed);
  router_case<C> const philox(gen, 33, 65, jitter_mode::philox, seed);
  // The same multipliers handed in by the caller: the same bits, forward and backward.
  router_case<C> caller = philox;
  caller.u_in = philox.u_eff;
  caller.jitter.u = caller.u_in.data();
  outputs<C> const from_philox = run(philox, moe::host);
  outputs<C> const from_caller = run(caller, moe::host);
  CHECK(same_bits(from_philox.logits, from_caller.logits));
  CHECK(same_bits(from_philox.dx, from_caller.dx));
  CHECK(same_bits(from_philox.dw, from_caller.dw));
  // The multipliers lie in [1 - eps, 1 + eps] and average 1.
  double mean = 0;
  for (float u : philox.u_eff) {
    CHECK(u >= 1.0f - philox.jitter.eps);
    CHECK(u <= 1.0f + philox.jitter.eps);
    mean += u;
  }
  mean /= static_cast<double>(philox.u_eff.size());
  CHECK(std::abs(mean - 1.0) < 0.01);  // sd of the mean: 0.1 / sqrt(3 · 2145) ≈ 0.0012
  // Jitter really changes the logits in training, and is ignored in evaluation.
  router_case<C> plain = philox;
  plain.jitter = {};
  outputs<C> const without = run(plain, moe::host);
  CHECK_FALSE(same_bits(from_philox.logits, without.logits));
  router_case<C> eval = philox;
  eval.problem.training = false;
  router_case<C> eval_caller = caller;
  eval_caller.problem.training = false;
  outputs<C> const evaluated = run(eval, moe::host);
  CHECK(same_bits(evaluated.logits, without.logits));
  CHECK(same_bits(evaluated.dx, without.dx));
  CHECK(same_bits(evaluated.dw, without.dw));
  CHECK(same_bits(run(eval_caller, moe::host).logits, without.logits));
  // A different offset or seed draws different multipliers.
  router_case<C> shifted = philox;
  shifted.jitter.offset += 1;
  CHECK_FALSE(same_bits(run(shifted, moe::host).logits, from_philox.logits));
}

TEST_CASE("jitter_multiplier: torch's Uniform(1 - eps, 1 + eps) in fp32, ends included") {
  for (float eps : {1e-3f, 0.01f, 0.1f, 0.5f, 0.99f}) {
    // Each fp32 step rounded once, spelt in double where the step itself is exact (so no
    // build flag can fuse it): 1 ± eps, hi - lo (Sterbenz or double-exact), r · span, lo + that.
    auto const lo = static_cast<float>(1.0 - static_cast<double>(eps));
    auto const hi = static_cast<float>(1.0 + static_cast<double>(eps));
    auto const span = static_cast<float>(static_cast<double>(hi) - static_cast<double>(lo));
    CHECK(moe::jitter_multiplier(eps, 0.5f) == doctest::Approx(1.0).epsilon(1e-6));
    for (float r : {0x1p-24f, 0.25f, 0.5f, 0.75f, 1.0f - 0x1p-24f}) {
      float const u = moe::jitter_multiplier(eps, r);
      CHECK(u >= lo);
      CHECK(u <= hi);
      auto const scaled = static_cast<float>(static_cast<double>(r) * static_cast<double>(span));
      CHECK(u == static_cast<float>(static_cast<double>(lo) + static_cast<double>(scaled)));
    }
  }
  CHECK(moe::jitter_multiplier(0.0f, 0.3f) == 1.0f);
}

TEST_CASE("router_gemm(host): T = 0 is a no-op; bad arguments get a status naming them") {
  constexpr moe::config C = moe::configs::top2_bf16;  // x, w: bf16 (2-byte); logits: fp32
  using X = moe::act_t<C>;
  using W = moe::weight_t<C>;
  using A = moe::accum_t<C>;
  std::int64_t const T = 3, H = 4, E = C.experts;
  std::vector<X> x(T * H, X(1.0f)), dx(T * H);
  std::vector<W> w(H * E, W(0.5f));
  std::vector<A> logits(T * E, -1.0f), d_logits(T * E, 1.0f), dw(H * E, 2.0f);
  std::vector<float> u(T * H, 1.0f);
  alignas(8) unsigned char raw[64] = {};
  auto const* x_odd = reinterpret_cast<X const*>(raw + 1);
  auto const* w_odd = reinterpret_cast<W const*>(raw + 1);
  auto* a_odd = reinterpret_cast<A*>(raw + 2);
  auto const* u_odd = reinterpret_cast<float const*>(raw + 2);
  moe::problem const p{.tokens = T, .hidden = H, .ffn = 1};

  auto fwd = [&](moe::router_gemm_args<C> a, moe::problem q = {.tokens = 3, .hidden = 4},
                 moe::host_policy policy = moe::host) {
    return std::string(moe::router_gemm(policy, q, a).message());
  };
  moe::router_gemm_args<C> const good{x.data(), w.data(), logits.data()};
  REQUIRE(fwd(good).empty());

  SUBCASE("T = 0: nothing is read or written, null pointers are fine") {
    moe::problem const empty{.tokens = 0, .hidden = H};
    CHECK(fwd({}, empty).empty());
    CHECK(moe::router_gemm_backward(moe::host, empty, moe::router_gemm_backward_args<C>{}).ok());
    std::vector<A> const before = logits;
    CHECK(fwd({x.data(), w.data(), logits.data(), {.eps = 0.5f}}, empty).empty());
    CHECK(same_bits(before, logits));
    // scalar arguments are still checked
    CHECK(fwd({.jitter = {.eps = 2.0f}}, empty) ==
          "router_gemm_args.jitter.eps: expected a finite value in [0, 1), got 2");
  }

  SUBCASE("forward") {
    moe::status const s = moe::router_gemm(moe::host, p, moe::router_gemm_args<C>{});
    CHECK(s.code() == moe::errc::invalid_argument);
    CHECK(fwd(good, p, moe::host.with_threads(-1)) == "host_policy.threads: expected >= 0, got -1");
    CHECK(fwd(good, {.tokens = -1, .hidden = 4}) ==
          "problem.tokens: expected 0 <= T <= 2^47, got -1");
    CHECK(fwd(good, {.tokens = (std::int64_t{1} << 47) + 1, .hidden = 4}) ==
          "problem.tokens: expected 0 <= T <= 2^47, got 140737488355329");
    CHECK(fwd(good, {.tokens = 3, .hidden = 0}) == "problem.hidden: expected H >= 1, got 0");
    CHECK(fwd(good, {.tokens = std::int64_t{1} << 40, .hidden = std::int64_t{1} << 22}) ==
          "problem.hidden: expected T * H < 2^62, got T = 1099511627776, H = 4194304");
    auto with_jitter = [&](moe::router_jitter j) {
      moe::router_gemm_args<C> a = good;
      a.jitter = j;
      return fwd(a);
    };
    CHECK(with_jitter({.eps = 1.0f}) ==
          "router_gemm_args.jitter.eps: expected a finite value in [0, 1), got 1");
    CHECK(with_jitter({.eps = -0.25f}) ==
          "router_gemm_args.jitter.eps: expected a finite value in [0, 1), got -0.25");
    CHECK(with_jitter({.eps = std::numeric_limits<float>::quiet_NaN()}) ==
          "router_gemm_args.jitter.eps: expected a finite value in [0, 1), got nan");
    CHECK(with_jitter({.eps = std::numeric_limits<float>::infinity()}) ==
          "router_gemm_args.jitter.eps: expected a finite value in [0, 1), got inf");
    CHECK(with_jitter({.eps = 0.0f, .u = u.data()}) ==
          "router_gemm_args.jitter.u: given, but jitter.eps = 0 turns jitter off");
    CHECK(with_jitter({.eps = 0.1f, .u = u_odd}) ==
          "router_gemm_args.jitter.u: expected 4-byte alignment for fp32");
    CHECK(with_jitter({.eps = 0.1f, .u = u.data()}).empty());
    CHECK(fwd({nullptr, w.data(), logits.data()}) == "router_gemm_args.x: expected non-null");
    CHECK(fwd({x_odd, w.data(), logits.data()}) ==
          "router_gemm_args.x: expected 2-byte alignment for bf16");
    CHECK(fwd({x.data(), nullptr, logits.data()}) == "router_gemm_args.w_gate: expected non-null");
    CHECK(fwd({x.data(), w_odd, logits.data()}) ==
          "router_gemm_args.w_gate: expected 2-byte alignment for bf16");
    CHECK(fwd({x.data(), w.data(), nullptr}) == "router_gemm_args.logits: expected non-null");
    CHECK(fwd({x.data(), w.data(), a_odd}) ==
          "router_gemm_args.logits: expected 4-byte alignment for fp32");
    // logits written over an input
    std::vector<A> shared(static_cast<std::size_t>(T * (H + E)));
    auto* x_in_shared = reinterpret_cast<X const*>(shared.data() + T * E - 1);
    CHECK(fwd({x_in_shared, w.data(), shared.data()}) ==
          "router_gemm_args.logits: expected no overlap with x, w_gate or jitter.u");
    CHECK(fwd({x.data(), w.data(), shared.data(), {.eps = 0.1f, .u = shared.data() + 1}}) ==
          "router_gemm_args.logits: expected no overlap with x, w_gate or jitter.u");
  }

  SUBCASE("backward") {
    moe::router_gemm_backward_args<C> const ok{x.data(), w.data(), d_logits.data(), dx.data(),
                                               dw.data()};
    auto bwd = [&](moe::router_gemm_backward_args<C> const& a,
                   moe::problem q = {.tokens = 3, .hidden = 4},
                   moe::host_policy policy = moe::host) {
      return std::string(moe::router_gemm_backward(policy, q, a).message());
    };
    REQUIRE(bwd(ok).empty());
    CHECK(bwd(ok, p, moe::host.with_threads(-2)) == "host_policy.threads: expected >= 0, got -2");
    CHECK(bwd(ok, {.tokens = -5, .hidden = 4}) ==
          "problem.tokens: expected 0 <= T <= 2^47, got -5");
    CHECK(bwd(ok, {.tokens = 3, .hidden = -1}) == "problem.hidden: expected H >= 1, got -1");
    auto with = [&](auto edit) {
      moe::router_gemm_backward_args<C> a = ok;
      edit(a);
      return bwd(a);
    };
    using args = moe::router_gemm_backward_args<C>;
    CHECK(with([](args& a) { a.jitter.eps = 1.5f; }) ==
          "router_gemm_backward_args.jitter.eps: expected a finite value in [0, 1), got 1.5");
    CHECK(with([&](args& a) { a.jitter.u = u.data(); }) ==
          "router_gemm_backward_args.jitter.u: given, but jitter.eps = 0 turns jitter off");
    CHECK(with([&](args& a) { a.jitter = {.eps = 0.5f, .u = u_odd}; }) ==
          "router_gemm_backward_args.jitter.u: expected 4-byte alignment for fp32");
    CHECK(with([](args& a) { a.x = nullptr; }) == "router_gemm_backward_args.x: expected non-null");
    CHECK(with([&](args& a) { a.x = x_odd; }) ==
          "router_gemm_backward_args.x: expected 2-byte alignment for bf16");
    CHECK(with([](args& a) { a.w_gate = nullptr; }) ==
          "router_gemm_backward_args.w_gate: expected non-null");
    CHECK(with([&](args& a) { a.w_gate = w_odd; }) ==
          "router_gemm_backward_args.w_gate: expected 2-byte alignment for bf16");
    CHECK(with([](args& a) { a.d_logits = nullptr; }) ==
          "router_gemm_backward_args.d_logits: expected non-null");
    CHECK(with([&](args& a) { a.d_logits = a_odd; }) ==
          "router_gemm_backward_args.d_logits: expected 4-byte alignment for fp32");
    CHECK(with([](args& a) { a.dx = nullptr; }) ==
          "router_gemm_backward_args.dx: expected non-null");
    CHECK(with([&](args& a) { a.dx = reinterpret_cast<X*>(raw + 3); }) ==
          "router_gemm_backward_args.dx: expected 2-byte alignment for bf16");
    CHECK(with([](args& a) { a.d_w_gate = nullptr; }) ==
          "router_gemm_backward_args.d_w_gate: expected non-null");
    CHECK(with([&](args& a) { a.d_w_gate = a_odd; }) ==
          "router_gemm_backward_args.d_w_gate: expected 4-byte alignment for fp32");
    char const* const dx_overlap =
        "router_gemm_backward_args.dx: expected no overlap with x, w_gate, d_logits, jitter.u or "
        "d_w_gate";
    char const* const dw_overlap =
        "router_gemm_backward_args.d_w_gate: expected no overlap with x, w_gate, d_logits or "
        "jitter.u";
    CHECK(with([&](args& a) { a.dx = x.data() + 1; }) == dx_overlap);
    CHECK(with([&](args& a) { a.dx = reinterpret_cast<X*>(dw.data() + H * E - 1); }) == dx_overlap);
    CHECK(with([&](args& a) { a.d_w_gate = d_logits.data() + 2; }) == dw_overlap);
    CHECK(with([&](args& a) {
            a.jitter = {.eps = 0.5f, .u = u.data()};
            a.d_w_gate = u.data() + T * H - 1;
          }) == dw_overlap);
  }
}
