// SPDX-License-Identifier: Apache-2.0
// The MoE layer on the host backend (moe/layer.hpp): forward against a float64 composition
// written here (router GEMM, softmax, top-K weights, expert FFNs, combine, shared experts,
// PR-MoE residual, aux and z losses) that takes only the layer's integer decisions (experts,
// slots, counts); backward against central finite differences of that float64 composition
// (decisions held fixed, as the layer's backward holds them); dropless and capacity modes,
// gated and plain activations, shared experts and the residual each on and off; determinism;
// gradient accumulation; T = 0; every bad-input status. Fresh seed per run, printed.
//
// Tolerances. The router decides in fp32 (docs/routing.md): its weights are fp32 values of the
// float64 softmax, relative error ≤ 2^-22 or so, and d_logits is computed in double from fp32
// logits. So even the fp64 configs agree with the float64 composition to about 1e-6 relative,
// not 1e-15: forward |y − y_ref| ≤ 1e-6 (1 + |y_ref|); gradients |g − g_fd| ≤ 1e-5 (1 + |g_fd|)
// with central differences of step η = 1e-6 (1 + |θ|) (truncation ≈ η² ≈ 1e-12, rounding noise
// ≈ 1e-16/η ≈ 1e-10, both far below). fp32 configs: forward 2e-5 (1 + |y|) (a few hundred fp32
// operations per output at u = 6e-8); their gradients against float64 finite differences of the
// reference: 2e-3 (1 + |g|) (the fp32 intermediates rounded to act_t and summed in fp32).
// bf16: forward 5e-2 (1 + |y|) (each stored intermediate is rounded at u = 2^-8 = 3.9e-3, about
// six roundings in a row plus sums).
#include <doctest/doctest.h>

#include "common.hpp"  // moe::test helpers

#include <algorithm>  // std::max
#include <cmath>      // std::abs, std::exp, std::log
#include <cstdint>    // std::int64_t
#include <cstdlib>    // std::aligned_alloc, std::free
#include <cstring>    // std::memcmp, std::strstr
#include <memory>     // std::unique_ptr
#include <random>     // std::mt19937_64
#include <string>     // std::string
#include <vector>     // std::vector

#include "moe/configs.hpp"  // moe::configs
#include "moe/layer.hpp"    // the layer under test

namespace {

using moe::activation;
using moe::test::at;

/// A dropless fp64 SwiGLU config (not in the compiled list): gated activation, cf = 0.
constexpr moe::config dropless_swiglu_fp64{.experts = 4,
                                           .top_k = 2,
                                           .capacity_factor = {0, 1},
                                           .eval_capacity_factor = {0, 1},
                                           .act = moe::precision::fp64,
                                           .weight = moe::precision::fp64,
                                           .accum = moe::precision::fp64,
                                           .norm = moe::normalization::renormalize,
                                           .ffn_activation = activation::swiglu};
/// Top-1 without renormalisation, fp64 (weights are the raw probabilities).
constexpr moe::config switch_fp64{.experts = 4,
                                  .top_k = 1,
                                  .capacity_factor = {1, 1},
                                  .act = moe::precision::fp64,
                                  .weight = moe::precision::fp64,
                                  .accum = moe::precision::fp64,
                                  .ffn_activation = activation::relu};

/// A 64-byte aligned byte buffer.
struct workspace {
  std::unique_ptr<void, decltype(&std::free)> p{nullptr, &std::free};
  std::size_t bytes = 0;
  explicit workspace(std::size_t n) : bytes(n) {
    p.reset(std::aligned_alloc(64, (n + 63) / 64 * 64 + 64));
  }
  void* get() const { return p.get(); }
};

double to_d(double v) { return v; }
double to_d(float v) { return v; }
template <class T>
double to_d(T v) {
  return static_cast<double>(moe::to_float(v));
}

/// f(x) of a plain activation (the gate's for gated ones), in double.
double act_value(activation a, double x) {
  switch (moe::gate_function(a)) {
    case activation::relu: return moe::activation_value<activation::relu>(x);
    case activation::gelu: return moe::activation_value<activation::gelu>(x);
    case activation::gelu_tanh: return moe::activation_value<activation::gelu_tanh>(x);
    case activation::silu: return moe::activation_value<activation::silu>(x);
    default: return x;
  }
}

/// Offsets of each tensor in the flat buffer, from the bound layer's pointers.
template <class L>
struct flat_index {
  std::int64_t of[15] = {};
  explicit flat_index(L const& l) {
    auto const& p = l.params();
    auto* base = l.flat_params();
    auto const* ptrs = &p.w_gate;  // layer_tensors is 15 pointers in a row
    for (int i = 0; i < 15; ++i) of[i] = ptrs[i] == nullptr ? -1 : ptrs[i] - base;
  }
};

/// The layer's decisions (held fixed by the reference and by backward).
struct decisions {
  std::vector<std::int32_t> expert, slot, counts;
};

/// The float64 composition: objective J = Σ y·r + aux_coef·aux + z_coef·z and y itself.
template <moe::config C>
struct reference {
  moe::layer_shape shape;
  std::int64_t T = 0;
  double aux_coef = 0, z_coef = 0;
  decisions dec;
  flat_index<moe::layer<C>> idx;

  double operator()(std::vector<double> const& th, std::vector<double> const& x,
                    std::vector<double> const& r, std::vector<double>* y_out) const {
    std::int64_t const H = shape.hidden, E = C.experts, K = C.top_k;
    bool const gated = moe::is_gated(C.ffn_activation);
    auto W = [&](int i) { return th.data() + idx.of[i]; };
    auto ffn = [&](double const* w1, double const* b1, double const* w2, double const* b2,
                   std::int64_t F, double const* xt, double* out) {
      std::vector<double> h(at(F));
      for (std::int64_t f = 0; f < F; ++f) {
        double g = b1[f], u = 0;
        for (std::int64_t k = 0; k < H; ++k) g += w1[f * H + k] * xt[k];
        if (gated) {
          u = b1[F + f];
          for (std::int64_t k = 0; k < H; ++k) u += w1[(F + f) * H + k] * xt[k];
          h[at(f)] = act_value(C.ffn_activation, g) * u;
        } else {
          h[at(f)] = act_value(C.ffn_activation, g);
        }
      }
      for (std::int64_t o = 0; o < H; ++o) {
        double s = b2[o];
        for (std::int64_t f = 0; f < F; ++f) s += w2[o * F + f] * h[at(f)];
        out[o] = s;
      }
    };
    std::int64_t const F = shape.ffn, Fw = gated ? 2 * F : F;
    std::vector<double> P(at(E), 0.0), y(at(T * H), 0.0), tmp(at(H));
    double z = 0, J = 0;
    for (std::int64_t t = 0; t < T; ++t) {
      double const* xt = x.data() + t * H;
      std::vector<double> l(at(E));
      double m = -1e300;
      for (std::int64_t e = 0; e < E; ++e) {
        double s = 0;
        for (std::int64_t k = 0; k < H; ++k) s += xt[k] * W(0)[k * E + e];
        l[at(e)] = s;
        m = std::max(m, s);
      }
      double sum = 0;
      for (double v : l) sum += std::exp(v - m);
      double const lse = m + std::log(sum);
      z += lse * lse;
      std::vector<double> p(at(E));
      for (std::int64_t e = 0; e < E; ++e) P[at(e)] += p[at(e)] = std::exp(l[at(e)] - lse);
      double denom = 0;
      for (std::int64_t k = 0; k < K; ++k) denom += p[at(dec.expert[at(t * K + k)])];
      double* yt = y.data() + t * H;
      for (std::int64_t k = 0; k < K; ++k) {
        std::int32_t const e = dec.expert[at(t * K + k)];
        if (dec.slot[at(t * K + k)] < 0) continue;
        double const w = C.norm == moe::normalization::renormalize ? p[at(e)] / denom : p[at(e)];
        ffn(W(1) + e * Fw * H, W(2) + e * Fw, W(3) + e * H * F, W(4) + e * H, F, xt, tmp.data());
        for (std::int64_t o = 0; o < H; ++o) yt[o] += w * tmp[at(o)];
      }
      if (shape.shared_ffn > 0) {
        ffn(W(5), W(6), W(7), W(8), shape.shared_ffn, xt, tmp.data());
        for (std::int64_t o = 0; o < H; ++o) yt[o] += tmp[at(o)];
      }
      if (shape.residual_ffn > 0) {
        double c[2];
        for (int j = 0; j < 2; ++j) {
          c[j] = W(14)[j];
          for (std::int64_t k = 0; k < H; ++k) c[j] += W(13)[j * H + k] * xt[k];
        }
        double const mm = std::max(c[0], c[1]);
        double const e0 = std::exp(c[0] - mm), e1 = std::exp(c[1] - mm);
        ffn(W(9), W(10), W(11), W(12), shape.residual_ffn, xt, tmp.data());
        for (std::int64_t o = 0; o < H; ++o)
          yt[o] = e0 / (e0 + e1) * yt[o] + e1 / (e0 + e1) * tmp[at(o)];
      }
      for (std::int64_t o = 0; o < H; ++o) J += yt[o] * r[at(t * H + o)];
    }
    double aux = 0;
    for (std::int64_t e = 0; e < E; ++e)
      aux += static_cast<double>(dec.counts[at(e)]) / static_cast<double>(T * K) *
             (P[at(e)] / static_cast<double>(T));
    aux *= static_cast<double>(E);
    J += aux_coef * aux + z_coef * z / static_cast<double>(T);
    if (y_out != nullptr) *y_out = y;
    return J;
  }
};

/// One layer set up with random parameters and a run of forward + backward.
template <moe::config C>
struct fixture {
  using A = moe::act_t<C>;
  using Wt = moe::weight_t<C>;
  using G = moe::accum_t<C>;
  moe::layer<C> layer;
  moe::problem p;
  std::vector<A> x, y, dy, dx;
  std::vector<double> xd, rd;
  moe::layer_stats stats{};
  std::vector<std::int32_t> counts;
  workspace ws;

  fixture(moe::layer_shape shape, std::int64_t T, std::uint64_t seed, double gate_skew)
      : layer(shape), ws(0) {
    REQUIRE(layer.allocate().ok());
    REQUIRE(layer.init({.seed = seed, .std = 0.5f}).ok());
    std::mt19937_64 gen(seed);
    // Biases random too, so the reference checks them; a skewed gate makes expert 0 popular.
    auto const* ptrs = &layer.params().w_gate;
    moe::detail::layer_impl::tensor_sizes<C> const sizes(shape);
    for (int i : {2, 4, 6, 8, 10, 12, 14})
      if (ptrs[i] != nullptr) {
        auto const b = moe::test::random_tensor<Wt>(gen, sizes.n[i], -0.5, 0.5);
        std::copy(b.begin(), b.end(), ptrs[i]);
      }
    // Feature 0 of every token is the constant 2, so W_g[0, e] acts as a gate bias: adding the
    // skew there raises expert 0's logit by 2·skew for every token (it overflows, routes drop).
    ptrs[0][0] = moe::test::stored<Wt>(to_d(ptrs[0][0]) + gate_skew);
    p = layer.make_problem(T);
    p.min_capacity = 1;
    p.aux_loss_coef = 0.3f;
    p.z_loss_coef = 0.2f;
    x = moe::test::random_tensor<A>(gen, T * shape.hidden);
    for (std::int64_t t = 0; t < T; ++t) x[at(t * shape.hidden)] = moe::test::stored<A>(2.0);
    dy = moe::test::random_tensor<A>(gen, T * shape.hidden);
    for (auto v : x) xd.push_back(to_d(v));
    for (auto v : dy) rd.push_back(to_d(v));
    y.assign(x.size(), A{});
    dx.assign(x.size(), A{});
    counts.assign(at(C.experts), -1);
    ws = workspace(layer.workspace_bytes(p));
  }

  moe::status run(moe::host_policy pol = moe::host) {
    MOE_TRY(layer.zero_grad());
    MOE_TRY(layer.forward(pol, p, {x.data(), y.data(), &stats, counts.data()}, ws.get(), ws.bytes));
    return layer.backward(pol, p, {x.data(), dy.data(), dx.data()}, ws.get(), ws.bytes);
  }

  reference<C> make_reference() const {
    auto const r = layer.routing(p, ws.get());
    std::int64_t const TK = p.tokens * C.top_k;
    decisions d{{r.expert, r.expert + TK}, {r.slot, r.slot + TK}, {r.counts, r.counts + C.experts}};
    return {layer.shape(), p.tokens, p.aux_loss_coef, p.z_loss_coef, d,
            flat_index<moe::layer<C>>(layer)};
  }

  std::vector<double> theta() const {
    std::vector<double> th;
    for (std::int64_t i = 0; i < layer.parameter_count(); ++i)
      th.push_back(to_d(layer.flat_params()[i]));
    return th;
  }
};

/// Forward vs the float64 composition, and backward vs its finite differences.
template <moe::config C>
void check_against_reference(moe::layer_shape shape, std::int64_t T, double gate_skew,
                             double fwd_tol, double grad_tol, bool expect_drops) {
  std::uint64_t const seed = moe::test::fresh_seed();
  CAPTURE(seed);
  fixture<C> f(shape, T, seed, gate_skew);
  moe::status const s = f.run();
  REQUIRE_MESSAGE(s.ok(), s.message());
  CHECK(f.stats.route.routes == T * C.top_k);
  if (expect_drops) CHECK(f.stats.route.dropped > 0);
  if (moe::is_dropless<C>(f.p)) CHECK(f.stats.route.dropped == 0);
  std::int64_t total = 0;
  for (auto c : f.counts) total += c;
  CHECK(total == T * C.top_k);
  double const aux = f.stats.route.aux_loss, z = f.stats.route.z_loss;
  CHECK(f.stats.loss == doctest::Approx(0.3f * aux + 0.2f * z).epsilon(1e-6));

  reference<C> const ref = f.make_reference();
  std::vector<double> th = f.theta(), yref;
  ref(th, f.xd, f.rd, &yref);
  double worst = 0;
  for (std::size_t i = 0; i < yref.size(); ++i)
    worst = std::max(worst, std::abs(to_d(f.y[i]) - yref[i]) / (1 + std::abs(yref[i])));
  CHECK_MESSAGE(worst <= fwd_tol, "forward: worst scaled error " << worst);

  // Gradients: every parameter and every x, by central differences of the reference.
  auto fd = [&](std::vector<double>& v, std::size_t i, std::vector<double> const& xx,
                bool param) {
    double const keep = v[i];
    double const eta = 1e-6 * (1 + std::abs(keep));
    v[i] = keep + eta;
    double const jp = param ? ref(v, xx, f.rd, nullptr) : ref(th, v, f.rd, nullptr);
    v[i] = keep - eta;
    double const jm = param ? ref(v, xx, f.rd, nullptr) : ref(th, v, f.rd, nullptr);
    v[i] = keep;
    return (jp - jm) / (2 * eta);
  };
  double worst_g = 0;
  std::int64_t worst_i = -1;
  for (std::size_t i = 0; i < th.size(); ++i) {
    double const g = to_d(f.layer.flat_grads()[i]);
    double const e = std::abs(g - fd(th, i, f.xd, true)) / (1 + std::abs(g));
    if (e > worst_g) worst_g = e, worst_i = static_cast<std::int64_t>(i);
  }
  CHECK_MESSAGE(worst_g <= grad_tol, "parameter gradients: worst scaled error " << worst_g
                                                                               << " at " << worst_i);
  std::vector<double> xv = f.xd;
  double worst_x = 0;
  for (std::size_t i = 0; i < xv.size(); ++i) {
    double const g = to_d(f.dx[i]);
    worst_x = std::max(worst_x, std::abs(g - fd(xv, i, xv, false)) / (1 + std::abs(g)));
  }
  CHECK_MESSAGE(worst_x <= grad_tol, "dx: worst scaled error " << worst_x);
}

}  // namespace

TEST_CASE("layer: fp64 forward and backward vs the float64 composition (capacity, drops)") {
  // top2_fp64: E = 8, K = 2, cf 5/4, gelu, renormalised. T = 16: C = 5; the skew overflows e0.
  for (auto shape : {moe::layer_shape{.hidden = 6, .ffn = 5},
                     moe::layer_shape{.hidden = 6, .ffn = 5, .shared_ffn = 4},
                     moe::layer_shape{.hidden = 6, .ffn = 5, .residual_ffn = 3},
                     moe::layer_shape{.hidden = 5, .ffn = 3, .shared_ffn = 2, .residual_ffn = 4}}) {
    CAPTURE(shape.shared_ffn);
    CAPTURE(shape.residual_ffn);
    check_against_reference<moe::configs::top2_fp64>(shape, 16, 1.5, 1e-6, 1e-5, true);
  }
}

TEST_CASE("layer: fp64 dropless swiglu and top-1 relu vs the float64 composition") {
  check_against_reference<dropless_swiglu_fp64>({.hidden = 7, .ffn = 3, .shared_ffn = 2}, 13, 2.0,
                                                1e-6, 1e-5, false);
  check_against_reference<dropless_swiglu_fp64>({.hidden = 4, .ffn = 2}, 1, 0.0, 1e-6, 1e-5, false);
  check_against_reference<switch_fp64>({.hidden = 5, .ffn = 4, .residual_ffn = 2}, 12, 1.0, 1e-6,
                                       1e-5, true);
}

TEST_CASE("layer: fp32 forward and backward vs the float64 composition") {
  check_against_reference<moe::configs::top2_fp32>({.hidden = 8, .ffn = 6, .shared_ffn = 4}, 24,
                                                   1.0, 2e-5, 2e-3, false);
}

TEST_CASE("layer: bf16 forward vs the float64 composition") {
  constexpr moe::config C = moe::configs::top2_bf16;
  std::uint64_t const seed = moe::test::fresh_seed();
  CAPTURE(seed);
  fixture<C> f({.hidden = 16, .ffn = 8, .residual_ffn = 4}, 20, seed, 0.0);
  moe::status const s = f.run();
  REQUIRE_MESSAGE(s.ok(), s.message());
  auto const ref = f.make_reference();
  std::vector<double> yref;
  ref(f.theta(), f.xd, f.rd, &yref);
  double worst = 0;
  for (std::size_t i = 0; i < yref.size(); ++i)
    worst = std::max(worst, std::abs(to_d(f.y[i]) - yref[i]) / (1 + std::abs(yref[i])));
  CHECK_MESSAGE(worst <= 5e-2, "bf16 forward: worst scaled error " << worst);
}

TEST_CASE("layer: bitwise deterministic, gradients accumulate, recompute modes agree") {
  constexpr moe::config C = moe::configs::top2_fp32;
  std::uint64_t const seed = moe::test::fresh_seed();
  CAPTURE(seed);
  moe::layer_shape const shape{.hidden = 12, .ffn = 7, .shared_ffn = 3, .residual_ffn = 5};
  fixture<C> a(shape, 33, seed, 0.5), b(shape, 33, seed, 0.5);
  REQUIRE(a.run().ok());
  REQUIRE(b.run(moe::host.with_threads(1)).ok());
  std::int64_t const n = a.layer.parameter_count();
  CHECK(moe::test::same_bits(a.y, b.y));
  CHECK(moe::test::same_bits(a.dx, b.dx));
  CHECK(std::memcmp(a.layer.flat_grads(), b.layer.flat_grads(), at(n) * sizeof(float)) == 0);
  // Recompute modes give the same bits.
  for (auto mode : {moe::ffn_recompute::none, moe::ffn_recompute::fc1}) {
    b.layer.options().recompute = mode;
    REQUIRE(b.run().ok());
    CHECK(moe::test::same_bits(a.y, b.y));
    CHECK(moe::test::same_bits(a.dx, b.dx));
    CHECK(std::memcmp(a.layer.flat_grads(), b.layer.flat_grads(), at(n) * sizeof(float)) == 0);
  }
  // A second backward without zero_grad adds the same gradient again: each sum continues from
  // the stored value, so the result is 2g up to the rounding of the second sum (T = 33 terms
  // at u = 6e-8: far below the 1e-5 relative bound used here, with a floor of 1e-7 · max |g|).
  std::vector<float> once(a.layer.flat_grads(), a.layer.flat_grads() + n);
  REQUIRE(a.layer.backward(moe::host, a.p, {a.x.data(), a.dy.data(), a.dx.data()}, a.ws.get(),
                           a.ws.bytes)
              .ok());
  double biggest = 0, worst = 0;
  for (float g : once) biggest = std::max(biggest, std::abs(static_cast<double>(g)));
  for (std::int64_t i = 0; i < n; ++i)
    worst = std::max(worst, std::abs(a.layer.flat_grads()[i] - 2.0 * once[at(i)]) /
                                (1e-5 * std::abs(2.0 * once[at(i)]) + 1e-7 * biggest));
  CHECK_MESSAGE(worst <= 1.0, "accumulated gradients: worst error / bound " << worst);
  CHECK(biggest > 0);
}

TEST_CASE("layer: DeepSpeed's replicated-expert initialisation") {
  constexpr moe::config C = moe::configs::top2_fp32;
  moe::layer<C> l({.hidden = 4, .ffn = 3});
  REQUIRE(l.allocate().ok());
  REQUIRE(l.init({.seed = 7, .replicate_experts = true}).ok());
  std::int64_t const per = 3 * 4;
  bool same = true, nonzero = false;
  for (std::int64_t e = 1; e < C.experts; ++e)
    for (std::int64_t i = 0; i < per; ++i) {
      same &= l.params().w1[e * per + i] == l.params().w1[i];
      same &= l.params().w2[e * per + i] == l.params().w2[i];
    }
  for (std::int64_t i = 0; i < per; ++i) nonzero |= l.params().w1[i] != 0.0f;
  CHECK(same);
  CHECK(nonzero);
  REQUIRE(l.init({.seed = 7}).ok());
  CHECK(std::memcmp(l.params().w1, l.params().w1 + per, per * sizeof(float)) != 0);
}

TEST_CASE("layer: T = 0 is a no-op; bad input gets a status naming the argument") {
  constexpr moe::config C = moe::configs::top2_fp32;
  moe::layer<C> l({.hidden = 4, .ffn = 3});
  moe::problem p = l.make_problem(0);
  workspace ws(l.workspace_bytes(p) + 64);
  moe::layer_stats st{};
  // Unbound parameters.
  moe::status s = l.forward(moe::host, p, {}, ws.get(), ws.bytes);
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::strstr(s.message(), "no parameters") != nullptr);
  REQUIRE(l.allocate().ok());
  std::memset(ws.get(), 0xa5, ws.bytes);  // what an earlier step may have left
  s = l.forward(moe::host, p, {nullptr, nullptr, &st, nullptr}, ws.get(), ws.bytes);
  CHECK_MESSAGE(s.ok(), s.message());
  CHECK(st.route.dropped == 0);
  moe::layer_routing const r0 = l.routing(p, ws.get());  // zero counts, not stale ones
  for (int e = 0; e < C.experts; ++e) {
    CHECK(r0.counts[e] == 0);
    CHECK(r0.kept[e] == 0);
  }
  CHECK(l.backward(moe::host, p, {}, ws.get(), ws.bytes).ok());

  p = l.make_problem(5);
  std::vector<float> x(20, 0.5f), y(20);
  workspace small(64);
  s = l.forward(moe::host, p, {x.data(), y.data()}, small.get(), 64);
  CHECK(s.code() == moe::errc::workspace_too_small);
  CHECK(std::strstr(s.message(), "workspace_bytes") != nullptr);
  workspace big(l.workspace_bytes(p));
  s = l.forward(moe::host, p, {nullptr, y.data()}, big.get(), big.bytes);
  CHECK(std::strstr(s.message(), "layer_forward_args.x/y") != nullptr);
  moe::problem q = p;
  q.hidden = 5;
  s = l.forward(moe::host, q, {x.data(), y.data()}, big.get(), big.bytes);
  CHECK(std::strstr(s.message(), "problem.hidden/ffn") != nullptr);
  s = l.forward(moe::host, p, {x.data(), y.data()}, static_cast<char*>(big.get()) + 8, big.bytes);
  CHECK(std::strstr(s.message(), "64-byte aligned") != nullptr);
  moe::layer<C> bad({.hidden = 0, .ffn = 3});
  CHECK(std::strstr(bad.allocate().message(), "layer_shape.hidden") != nullptr);
  moe::layer<C> ep({.hidden = 4, .ffn = 3, .ep_size = 2});
  CHECK(std::strstr(ep.allocate().message(), "layer_shape.ep_size") != nullptr);
  std::vector<float> params(at(l.parameter_count())), grads(params.size());
  CHECK(std::strstr(l.bind_flat(nullptr, grads.data()).message(), "bind_flat") != nullptr);
  moe::layer_params<C> pp{};
  moe::layer_grads<C> gg{};
  CHECK(std::strstr(l.bind(pp, gg).message(), "w_gate") != nullptr);
  // A NaN input is named by the router.
  x[6] = std::nanf("");
  s = l.forward(moe::host, p, {x.data(), y.data()}, big.get(), big.bytes);
  CHECK_FALSE(s.ok());
}
