// SPDX-License-Identifier: Apache-2.0
// The grouped GEMM on the host backend (moe/grouped_gemm.hpp): forward with every epilogue (with
// and without bias, with and without the stored pre-activation), dgrad plain and with every
// fused activation backward, wgrad and dbias (overwriting and accumulating), and the
// element-wise activation, against a reference written here, on random inputs (a fresh seed
// per run, printed on failure) with ragged per-expert counts, experts without rows, rows
// outside every expert, and sizes that are not multiples of any block; for fp32, fp64, bf16
// and fp16 configs. Then determinism (bitwise across runs and thread counts), accumulation
// over two calls equal to one call, and every bad-input status.
//
// Tolerances. Each GEMM output is one running sum of n products (n = K forward, N dgrad, M_e
// wgrad) in the accumulation type A with unit roundoff u_A (2^-24 float, 2^-53 double). With
// S = Σ|a||b| (+ |bias|, + |initial value| when accumulating), recursive summation of
// products rounded once each satisfies |error| <= γ_{n+1} S ≈ (n + 1) u_A S; one more u_A S
// covers the bias add. bf16 and fp16 products are exact in float, fp32 products are not: both
// are inside (n + 2) u_A S. Storing to the activation type X rounds once more: u_X |value|
// (2^-8 bf16, 2^-11 fp16, 2^-24 fp32, 2^-53 fp64), plus half of fp16's smallest subnormal
// (2^-25) where a tiny value underflows. The activation is applied to the stored (rounded)
// pre-activation; its error is |f'| <= 1.2 (the largest slope of relu, silu, gelu, gelu_tanh)
// times the pre-activation's error, plus the evaluation of f, f' in A (erf/exp/tanh and a few
// operations, each within a few ulp): 16 u_A (1 + |g|)(1 + |u|) absolute. Gated outputs
// f(g)·u propagate the errors of both halves. The reference sums in double (long double for
// fp64 configs, u_ref = 2^-64), whose own (n + 1) u_ref S is added. Inputs are drawn already
// rounded to their storage types, so the reference reads exactly what the op reads.
#include <doctest/doctest.h>

#include "common.hpp"  // moe::test helpers: seeds, random tensors, rounding facts

#include <algorithm>    // std::max, std::min, std::copy_n
#include <cmath>        // std::abs, std::erf, std::exp, std::tanh, std::sqrt
#include <cstdint>      // std::int64_t, std::uint64_t
#include <cstring>      // std::memcmp, std::strstr
#include <random>       // std::random_device, std::mt19937_64
#include <string>       // std::string, std::to_string
#include <tuple>        // std::tuple, std::get
#include <type_traits>  // std::is_same_v, std::conditional_t
#include <vector>       // std::vector

#include "moe/configs.hpp"       // moe::configs::top2_fp32, top2_fp64, top2_bf16, fine_bf16
#include "moe/grouped_gemm.hpp"  // the op under test

namespace {

using moe::activation;

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

using moe::test::unit_roundoff;
using moe::test::fresh_seed;
using moe::test::at;
using moe::test::stored;
using moe::test::random_tensor;
using moe::test::same_bits;
using moe::test::underflow_floor;






/// The reference's activations, in long double, written from the textbook formulas.
struct ref_act {
  static activation plain(activation a) {
    return a == activation::swiglu  ? activation::silu
           : a == activation::geglu ? activation::gelu
                                    : a;
  }
  static long double f(activation a, long double x) {
    switch (plain(a)) {
      case activation::relu:
        return x > 0 ? x : 0;
      case activation::gelu:
        return 0.5L * x * (1 + std::erf(x / std::sqrt(2.0L)));
      case activation::gelu_tanh: {
        long double const c = std::sqrt(2.0L / 3.14159265358979323846264338327950288L);
        return 0.5L * x * (1 + std::tanh(c * (x + 0.044715L * x * x * x)));
      }
      case activation::silu:
        return x / (1 + std::exp(-x));
      default:
        return x;
    }
  }
  static long double df(activation a, long double x) {
    long double const pi = 3.14159265358979323846264338327950288L;
    switch (plain(a)) {
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
};

/// Ragged expert offsets: `lead` rows before the first expert, experts with 0 rows, one expert
/// with `big` rows (past every row block), `tail` rows after the last.
std::vector<std::int64_t> ragged_offsets(std::mt19937_64& gen, std::int64_t experts,
                                         std::int64_t big, std::int64_t lead, std::int64_t* rows,
                                         std::int64_t tail) {
  std::vector<std::int64_t> off(at(experts + 1));
  std::uniform_int_distribution<std::int64_t> count(1, 40);
  std::uniform_int_distribution<int> coin(0, 2);
  std::int64_t const big_expert = std::uniform_int_distribution<std::int64_t>(0, experts - 1)(gen);
  off[0] = lead;
  for (std::int64_t e = 0; e < experts; ++e) {
    std::int64_t c = e == big_expert ? big : coin(gen) == 0 ? 0 : count(gen);
    if (e == (big_expert + 1) % experts && experts > 1) c = 0;  // at least one empty expert
    off[at(e + 1)] = off[at(e)] + c;
  }
  *rows = off[at(experts)] + tail;
  return off;
}

/// One random grouped-GEMM problem of config C and its reference products.
template <moe::config C>
struct gemm_case {
  using X = moe::act_t<C>;
  using W = moe::weight_t<C>;
  using A = moe::accum_t<C>;
  using R = std::conditional_t<std::is_same_v<A, double>, long double, double>;
  static constexpr double u_a = unit_roundoff<A>();
  static constexpr double u_x = unit_roundoff<X>();
  static constexpr double u_ref = std::is_same_v<R, double> ? 0x1p-53 : 0x1p-64;
  static constexpr double floor_x = underflow_floor<X>();

  std::int64_t E, M, N, K;  // forward: x [M, K] · W [E, 2N or N, K]
  std::vector<std::int64_t> off;
  std::vector<X> x;       // [M, K]
  std::vector<W> wg;      // [E, 2N, K] gated layout: rows [0, N) gate, [N, 2N) up
  std::vector<W> wp;      // [E, N, K]  the gate rows alone, for plain activations
  std::vector<W> bg;      // [E, 2N]
  std::vector<W> bp;      // [E, N]
  std::vector<X> dy;      // [M, 2N] dgrad/wgrad: the gradient of a [M, 2N] output
  std::vector<X> pin;     // [M, 2K] a pre-activation for the fused dgrad (gated width)
  std::vector<A> dw0;     // [E, 2N, K] prior contents of the gradient buffer
  std::vector<A> db0;     // [E, 2N]
  std::vector<R> fs, fa;  // [M, 2N] forward sums x · wgᵀ (no bias) and Σ|x||w|
  std::vector<R> ds, da;  // [M, K]  dgrad sums dy · wg (W as [E, 2N, K]) and Σ|dy||w|
  std::vector<R> ws, wa;  // [E, 2N, K] wgrad sums dyᵀ x and Σ|dy||x|
  std::vector<R> bs, ba;  // [E, 2N] Σ dy and Σ|dy|

  gemm_case(std::mt19937_64& gen, std::int64_t experts, std::int64_t n, std::int64_t k,
            std::int64_t big, std::int64_t lead, std::int64_t tail)
      : E(experts), N(n), K(k) {
    off = ragged_offsets(gen, E, big, lead, &M, tail);
    x = random_tensor<X>(gen, M * K);
    wg = random_tensor<W>(gen, E * 2 * N * K);
    bg = random_tensor<W>(gen, E * 2 * N);
    dy = random_tensor<X>(gen, M * 2 * N);
    pin = random_tensor<X>(gen, M * 2 * K, -3.0, 3.0);
    dw0 = random_tensor<A>(gen, E * 2 * N * K);
    db0 = random_tensor<A>(gen, E * 2 * N);
    wp.resize(at(E * N * K));
    bp.resize(at(E * N));
    for (std::int64_t e = 0; e < E; ++e)
      for (std::int64_t j = 0; j < N; ++j) {
        bp[at(e * N + j)] = bg[at(e * 2 * N + j)];
        for (std::int64_t i = 0; i < K; ++i)
          wp[at((e * N + j) * K + i)] = wg[at((e * 2 * N + j) * K + i)];
      }
    reference();
  }

  static R v(X a) { return static_cast<R>(moe::to_float(a)); }
  static R vw(W a) { return static_cast<R>(moe::to_float(a)); }

  void reference() {
    std::int64_t const nw = 2 * N;
    fs.assign(at(M * nw), 0);
    fa.assign(at(M * nw), 0);
    ds.assign(at(M * K), 0);
    da.assign(at(M * K), 0);
    ws.assign(at(E * nw * K), 0);
    wa.assign(at(E * nw * K), 0);
    bs.assign(at(E * nw), 0);
    ba.assign(at(E * nw), 0);
    for (std::int64_t e = 0; e < E; ++e)
      for (std::int64_t m = off[at(e)]; m < off[at(e + 1)]; ++m) {
        for (std::int64_t j = 0; j < nw; ++j) {
          R s = 0, a = 0;
          for (std::int64_t i = 0; i < K; ++i) {
            R const p = v(x[at(m * K + i)]) * vw(wg[at((e * nw + j) * K + i)]);
            s += p;
            a += std::abs(p);
          }
          fs[at(m * nw + j)] = s;
          fa[at(m * nw + j)] = a;
          R const g = v(dy[at(m * nw + j)]);
          bs[at(e * nw + j)] += g;
          ba[at(e * nw + j)] += std::abs(g);
          for (std::int64_t i = 0; i < K; ++i) {
            R const p = g * v(x[at(m * K + i)]);
            ws[at((e * nw + j) * K + i)] += p;
            wa[at((e * nw + j) * K + i)] += std::abs(p);
            R const q = g * vw(wg[at((e * nw + j) * K + i)]);
            ds[at(m * K + i)] += q;
            da[at(m * K + i)] += std::abs(q);
          }
        }
      }
  }

  bool in_expert(std::int64_t m) const { return m >= off[0] && m < off[at(E)]; }
  std::int64_t rows_of(std::int64_t e) const { return off[at(e + 1)] - off[at(e)]; }
};

/// The largest error/tolerance ratio seen, and where.
struct worst {
  double ratio = 0;
  std::string at;
  void see(double err, double tol, std::string const& where) {
    double const r = err / tol;
    if (!(r <= ratio)) {  // NaN counts as the worst
      ratio = r != r ? 1e300 : r;
      at = where;
    }
  }
};

template <class T>
T sentinel() {
  return stored<T>(12345.0);
}

/// Forward of `act` against the reference; returns the worst ratio over y and pre.
template <moe::config C>
worst check_forward(gemm_case<C> const& c, activation act, bool with_bias, bool with_pre,
                    moe::host_policy policy) {
  using X = moe::act_t<C>;
  using R = typename gemm_case<C>::R;
  using G = gemm_case<C>;
  bool const gated = moe::is_gated(act);
  std::int64_t const nw = gated ? 2 * c.N : c.N;
  std::vector<X> y(at(c.M * c.N), sentinel<X>()), pre(at(c.M * nw), sentinel<X>());
  moe::grouped_gemm_args<C> a{.experts = c.E,
                              .rows = c.M,
                              .n = c.N,
                              .k = c.K,
                              .offsets = c.off.data(),
                              .x = c.x.data(),
                              .w = gated ? c.wg.data() : c.wp.data(),
                              .bias = with_bias ? (gated ? c.bg.data() : c.bp.data()) : nullptr,
                              .act = act,
                              .y = y.data(),
                              .pre = with_pre ? pre.data() : nullptr};
  moe::status const s = moe::grouped_gemm(policy, a);
  REQUIRE_MESSAGE(s.ok(), s.message());
  worst w;
  double const K = static_cast<double>(c.K);
  for (std::int64_t e = 0; e < c.E; ++e)
    for (std::int64_t m = c.off[at(e)]; m < c.off[at(e + 1)]; ++m)
      for (std::int64_t j = 0; j < c.N; ++j) {
        std::string const where = "m " + std::to_string(m) + " j " + std::to_string(j);
        auto const pre_of = [&](std::int64_t col, double* err_bound) {
          R s_ = c.fs[at(m * 2 * c.N + col)], a_ = c.fa[at(m * 2 * c.N + col)];
          if (with_bias) {
            R const b = G::vw(c.bg[at(e * 2 * c.N + col)]);
            s_ += b;
            a_ += std::abs(b);
          }
          double const sum_err = (K + 2) * G::u_a * static_cast<double>(a_) +
                                 (K + 1) * G::u_ref * static_cast<double>(a_);
          *err_bound = sum_err + G::u_x * std::abs(static_cast<double>(s_)) + G::floor_x;
          return static_cast<long double>(s_);
        };
        double tg = 0, tu = 0;
        long double const g = pre_of(j, &tg);
        long double const u = gated ? pre_of(c.N + j, &tu) : 1.0L;
        if (with_pre) {
          w.see(std::abs(static_cast<double>(G::v(pre[at(m * nw + j)]) - static_cast<R>(g))), tg,
                "pre " + where);
          if (gated)
            w.see(
                std::abs(static_cast<double>(G::v(pre[at(m * nw + c.N + j)]) - static_cast<R>(u))),
                tu, "pre(up) " + where);
        }
        long double const fg = ref_act::f(act, g);
        long double const want = gated ? fg * u : fg;
        double const au = std::abs(static_cast<double>(u));
        double const ag = std::abs(static_cast<double>(g));
        double tol = 1.2 * tg * (au + tu) + (gated ? std::abs(static_cast<double>(fg)) * tu : 0.0) +
                     16 * G::u_a * (1 + ag) * (1 + au) +
                     G::u_x * std::abs(static_cast<double>(want)) + G::floor_x;
        w.see(std::abs(static_cast<double>(G::v(y[at(m * c.N + j)]) - static_cast<R>(want))), tol,
              "y " + where);
      }
  // Rows outside every expert are not touched.
  for (std::int64_t m = 0; m < c.M; ++m) {
    if (c.in_expert(m)) continue;
    for (std::int64_t j = 0; j < c.N; ++j)
      if (!same_bits(std::vector<X>{y[at(m * c.N + j)]}, std::vector<X>{sentinel<X>()}))
        w.see(1, 0.5, "y outside experts, row " + std::to_string(m));
  }
  return w;
}

/// dgrad, plain or with the fused activation backward, against the reference.
template <moe::config C>
worst check_dgrad(gemm_case<C> const& c, activation act, moe::host_policy policy) {
  using X = moe::act_t<C>;
  using G = gemm_case<C>;
  bool const gated = moe::is_gated(act);
  bool const plain = act == activation::identity;
  std::int64_t const n = 2 * c.N, kw = gated ? 2 * c.K : c.K;
  // pre [M, kw] from the case's [M, 2K] tensor (its first kw columns per row).
  std::vector<X> pre(at(c.M * kw));
  for (std::int64_t m = 0; m < c.M; ++m)
    for (std::int64_t i = 0; i < kw; ++i) pre[at(m * kw + i)] = c.pin[at(m * 2 * c.K + i)];
  std::vector<X> dx(at(c.M * kw), sentinel<X>());
  moe::grouped_gemm_dgrad_args<C> a{.experts = c.E,
                                    .rows = c.M,
                                    .n = n,
                                    .k = c.K,
                                    .offsets = c.off.data(),
                                    .dy = c.dy.data(),
                                    .w = c.wg.data(),
                                    .act = act,
                                    .pre = plain ? nullptr : pre.data(),
                                    .dx = dx.data()};
  moe::status const s = moe::grouped_gemm_dgrad(policy, a);
  REQUIRE_MESSAGE(s.ok(), s.message());
  worst w;
  double const N = static_cast<double>(n);
  for (std::int64_t m = 0; m < c.M; ++m)
    for (std::int64_t i = 0; i < c.K; ++i) {
      std::string const where = "m " + std::to_string(m) + " k " + std::to_string(i);
      if (!c.in_expert(m)) {
        if (!same_bits(std::vector<X>{dx[at(m * kw + i)]}, std::vector<X>{sentinel<X>()}))
          w.see(1, 0.5, "dx outside experts " + where);
        continue;
      }
      long double const sv = c.ds[at(m * c.K + i)];
      double const sa = static_cast<double>(c.da[at(m * c.K + i)]);
      double const ds = (N + 1) * (G::u_a + G::u_ref) * sa;
      double const as = std::abs(static_cast<double>(sv));
      if (plain) {
        w.see(std::abs(static_cast<double>(G::v(dx[at(m * kw + i)]) - sv)),
              ds + G::u_x * as + G::floor_x, "dx " + where);
        continue;
      }
      long double const g = G::v(pre[at(m * kw + i)]);
      long double const u = gated ? G::v(pre[at(m * kw + c.K + i)]) : 1.0L;
      double const ag = std::abs(static_cast<double>(g)), au = std::abs(static_cast<double>(u));
      long double const want_g = sv * u * ref_act::df(act, g);
      double const tol_g = ds * au * 1.2 + 16 * G::u_a * (1 + ag) * as * au +
                           G::u_x * std::abs(static_cast<double>(want_g)) + G::floor_x;
      w.see(std::abs(static_cast<double>(G::v(dx[at(m * kw + i)]) - want_g)), tol_g,
            "d_gate " + where);
      if (gated) {
        long double const fg = ref_act::f(act, g);
        long double const want_u = sv * fg;
        double const tol_u = ds * std::abs(static_cast<double>(fg)) + 16 * G::u_a * (1 + ag) * as +
                             G::u_x * std::abs(static_cast<double>(want_u)) + G::floor_x;
        w.see(std::abs(static_cast<double>(G::v(dx[at(m * kw + c.K + i)]) - want_u)), tol_u,
              "d_up " + where);
      }
    }
  return w;
}

/// wgrad and dbias, overwriting or accumulating, against the reference.
template <moe::config C>
worst check_wgrad(gemm_case<C> const& c, bool accumulate, bool with_bias, moe::host_policy policy) {
  using A = moe::accum_t<C>;
  using G = gemm_case<C>;
  std::int64_t const n = 2 * c.N;
  std::vector<A> dw = c.dw0, db = c.db0;
  moe::grouped_gemm_wgrad_args<C> a{.experts = c.E,
                                    .rows = c.M,
                                    .n = n,
                                    .k = c.K,
                                    .offsets = c.off.data(),
                                    .x = c.x.data(),
                                    .dy = c.dy.data(),
                                    .dw = dw.data(),
                                    .d_bias = with_bias ? db.data() : nullptr,
                                    .accumulate = accumulate};
  moe::status const s = moe::grouped_gemm_wgrad(policy, a);
  REQUIRE_MESSAGE(s.ok(), s.message());
  worst w;
  for (std::int64_t e = 0; e < c.E; ++e) {
    double const terms = static_cast<double>(c.rows_of(e)) + 2;
    for (std::int64_t j = 0; j < n; ++j) {
      for (std::int64_t i = 0; i < c.K; ++i) {
        std::size_t const idx = at((e * n + j) * c.K + i);
        long double want = c.ws[idx];
        double scale = static_cast<double>(c.wa[idx]);
        if (accumulate) {
          want += c.dw0[idx];
          scale += std::abs(static_cast<double>(c.dw0[idx]));
        }
        w.see(std::abs(static_cast<double>(static_cast<long double>(dw[idx]) - want)),
              terms * (G::u_a + G::u_ref) * scale + 1e-300,
              "dw e " + std::to_string(e) + " n " + std::to_string(j) + " k " + std::to_string(i));
      }
      std::size_t const b = at(e * n + j);
      if (!with_bias) {
        if (db[b] != c.db0[b]) w.see(1, 0.5, "d_bias written although null");
        continue;
      }
      long double want = c.bs[b];
      double scale = static_cast<double>(c.ba[b]);
      if (accumulate) {
        want += c.db0[b];
        scale += std::abs(static_cast<double>(c.db0[b]));
      }
      w.see(std::abs(static_cast<double>(static_cast<long double>(db[b]) - want)),
            terms * (G::u_a + G::u_ref) * scale + 1e-300,
            "d_bias e " + std::to_string(e) + " n " + std::to_string(j));
    }
  }
  return w;
}

/// grouped_activation equals the forward's y bitwise, from the forward's own pre.
template <moe::config C>
bool activation_matches_forward(gemm_case<C> const& c, activation act) {
  using X = moe::act_t<C>;
  bool const gated = moe::is_gated(act);
  std::int64_t const nw = gated ? 2 * c.N : c.N;
  std::vector<X> y(at(c.M * c.N), sentinel<X>()), pre(at(c.M * nw)), h(y);
  moe::grouped_gemm_args<C> a{.experts = c.E,
                              .rows = c.M,
                              .n = c.N,
                              .k = c.K,
                              .offsets = c.off.data(),
                              .x = c.x.data(),
                              .w = gated ? c.wg.data() : c.wp.data(),
                              .bias = gated ? c.bg.data() : c.bp.data(),
                              .act = act,
                              .y = y.data(),
                              .pre = pre.data()};
  REQUIRE(moe::grouped_gemm(moe::host, a).ok());
  moe::grouped_activation_args<C> b{.experts = c.E,
                                    .rows = c.M,
                                    .n = c.N,
                                    .offsets = c.off.data(),
                                    .act = act,
                                    .pre = pre.data(),
                                    .h = h.data()};
  REQUIRE(moe::grouped_activation(moe::host, b).ok());
  return same_bits(y, h);
}

template <moe::config C>
void run_reference_suite(std::int64_t experts) {
  std::uint64_t const seed = fresh_seed();
  std::mt19937_64 gen(seed);
  // Sizes past every block (moe/host/grouped_gemm.hpp): K crosses the reduction slice (128
  // float, 64 double) and the dgrad column tile (128); N crosses the forward column tile (128;
  // 64 outputs when gated); 2N (dgrad's reduction, wgrad's rows) crosses the slice and the row
  // tile (288 float, 144 double); one expert has more rows than a row tile, an A chunk (72) and
  // a wgrad slice.
  std::int64_t const N = std::uniform_int_distribution<std::int64_t>(146, 160)(gen);
  std::int64_t const K = std::uniform_int_distribution<std::int64_t>(260, 290)(gen);
  std::int64_t const big = std::uniform_int_distribution<std::int64_t>(290, 330)(gen);
  std::int64_t const lead = std::uniform_int_distribution<std::int64_t>(0, 3)(gen);
  std::int64_t const tail = std::uniform_int_distribution<std::int64_t>(0, 3)(gen);
  gemm_case<C> const c(gen, experts, N, K, big, lead, tail);
  INFO("seed ", seed, ", ", std::string(moe::storage_name<moe::act_t<C>>()), ", E_l ", c.E, ", M ",
       c.M, ", N ", c.N, ", K ", c.K);
  for (activation act : all_activations) {
    for (int variant = 0; variant < 2; ++variant) {
      worst const f = check_forward(c, act, variant == 0, variant == 0, moe::host);
      INFO("forward ", std::string(moe::to_string(act)), " bias/pre ", variant == 0,
           ": worst error/tolerance ", f.ratio, " at ", f.at);
      CHECK(f.ratio <= 1.0);
    }
    worst const d = check_dgrad(c, act, moe::host);
    INFO("dgrad ", std::string(moe::to_string(act)), ": worst error/tolerance ", d.ratio, " at ",
         d.at);
    CHECK(d.ratio <= 1.0);
    CHECK_MESSAGE(activation_matches_forward(c, act), "grouped_activation vs forward y, ",
                  std::string(moe::to_string(act)));
  }
  for (int variant = 0; variant < 3; ++variant) {
    bool const accumulate = variant == 1, bias = variant != 2;
    worst const w = check_wgrad(c, accumulate, bias, moe::host);
    INFO("wgrad accumulate ", accumulate, " d_bias ", bias, ": worst error/tolerance ", w.ratio,
         " at ", w.at);
    CHECK(w.ratio <= 1.0);
  }
}

}  // namespace

TEST_CASE("grouped_gemm(host): every epilogue, dgrad and wgrad match the reference, fp32") {
  run_reference_suite<moe::configs::top2_fp32>(6);
}
TEST_CASE("grouped_gemm(host): every epilogue, dgrad and wgrad match the reference, fp64") {
  run_reference_suite<moe::configs::top2_fp64>(5);
}
TEST_CASE("grouped_gemm(host): every epilogue, dgrad and wgrad match the reference, bf16") {
  run_reference_suite<moe::configs::top2_bf16>(8);
}
TEST_CASE("grouped_gemm(host): every epilogue, dgrad and wgrad match the reference, fp16") {
  run_reference_suite<top2_fp16>(4);
}
TEST_CASE("grouped_gemm(host): 24 local experts, ragged with empty ones (fine-grained bf16)") {
  run_reference_suite<moe::configs::fine_bf16>(24);
}

TEST_CASE("grouped_gemm(host): a single row, a single column, K = 1, one expert") {
  constexpr moe::config C = moe::configs::top2_fp32;
  std::int64_t const off[2] = {0, 1};
  float const x[1] = {3.0f}, w[2] = {2.0f, -1.0f}, b[2] = {0.5f, 1.0f};
  float y[1] = {0}, pre[2] = {0, 0};
  REQUIRE(moe::grouped_gemm(moe::host, moe::grouped_gemm_args<C>{.experts = 1,
                                                                 .rows = 1,
                                                                 .n = 1,
                                                                 .k = 1,
                                                                 .offsets = off,
                                                                 .x = x,
                                                                 .w = w,
                                                                 .bias = b,
                                                                 .act = activation::swiglu,
                                                                 .y = y,
                                                                 .pre = pre})
              .ok());
  CHECK(pre[0] == 6.5f);
  CHECK(pre[1] == -2.0f);
  CHECK(y[0] == doctest::Approx(6.5 / (1 + std::exp(-6.5)) * -2.0).epsilon(1e-6));
}

TEST_CASE("grouped_gemm(host): bitwise deterministic across runs and thread counts") {
  constexpr moe::config C = moe::configs::top2_bf16;
  using X = moe::act_t<C>;
  using A = moe::accum_t<C>;
  std::uint64_t const seed = fresh_seed();
  INFO("seed ", seed);
  std::mt19937_64 gen(seed);
  gemm_case<C> const c(gen, 5, 100, 150, 200, 0, 0);
  auto const run = [&](moe::host_policy policy) {
    std::vector<X> y(at(c.M * c.N)), pre(at(c.M * 2 * c.N)), dx(at(c.M * 2 * c.K));
    std::vector<A> dw(at(c.E * 2 * c.N * c.K)), db(at(c.E * 2 * c.N));
    REQUIRE(moe::grouped_gemm(policy, moe::grouped_gemm_args<C>{.experts = c.E,
                                                                .rows = c.M,
                                                                .n = c.N,
                                                                .k = c.K,
                                                                .offsets = c.off.data(),
                                                                .x = c.x.data(),
                                                                .w = c.wg.data(),
                                                                .bias = c.bg.data(),
                                                                .act = activation::swiglu,
                                                                .y = y.data(),
                                                                .pre = pre.data()})
                .ok());
    REQUIRE(
        moe::grouped_gemm_dgrad(policy, moe::grouped_gemm_dgrad_args<C>{.experts = c.E,
                                                                        .rows = c.M,
                                                                        .n = 2 * c.N,
                                                                        .k = c.K,
                                                                        .offsets = c.off.data(),
                                                                        .dy = c.dy.data(),
                                                                        .w = c.wg.data(),
                                                                        .act = activation::geglu,
                                                                        .pre = c.pin.data(),
                                                                        .dx = dx.data()})
            .ok());
    REQUIRE(moe::grouped_gemm_wgrad(policy, moe::grouped_gemm_wgrad_args<C>{.experts = c.E,
                                                                            .rows = c.M,
                                                                            .n = 2 * c.N,
                                                                            .k = c.K,
                                                                            .offsets = c.off.data(),
                                                                            .x = c.x.data(),
                                                                            .dy = c.dy.data(),
                                                                            .dw = dw.data(),
                                                                            .d_bias = db.data()})
                .ok());
    return std::make_tuple(y, pre, dx, dw, db);
  };
  auto const first = run(moe::host);
  for (int threads : {0, 1, 2, 3}) {
    INFO("threads ", threads);
    auto const again = run(moe::host.with_threads(threads));
    CHECK(same_bits(std::get<0>(first), std::get<0>(again)));
    CHECK(same_bits(std::get<1>(first), std::get<1>(again)));
    CHECK(same_bits(std::get<2>(first), std::get<2>(again)));
    CHECK(same_bits(std::get<3>(first), std::get<3>(again)));
    CHECK(same_bits(std::get<4>(first), std::get<4>(again)));
  }
}

TEST_CASE("grouped_gemm_wgrad(host): two accumulating calls equal one over the joined rows") {
  constexpr moe::config C = moe::configs::top2_fp32;
  std::uint64_t const seed = fresh_seed();
  INFO("seed ", seed);
  std::mt19937_64 gen(seed);
  std::int64_t const E = 3, N = 37, K = 150;
  // Expert e has a_e rows in the first batch and b_e in the second; the joined buffer holds
  // each expert's first-batch rows, then its second-batch rows.
  std::int64_t const a_rows[E] = {300, 0, 7}, b_rows[E] = {5, 0, 280};
  std::vector<std::int64_t> off_a{0}, off_b{0}, off_j{0};
  for (std::int64_t e = 0; e < E; ++e) {
    off_a.push_back(off_a.back() + a_rows[e]);
    off_b.push_back(off_b.back() + b_rows[e]);
    off_j.push_back(off_j.back() + a_rows[e] + b_rows[e]);
  }
  std::int64_t const Ma = off_a.back(), Mb = off_b.back(), Mj = off_j.back();
  auto const xa = random_tensor<float>(gen, Ma * K), xb = random_tensor<float>(gen, Mb * K);
  auto const ga = random_tensor<float>(gen, Ma * N), gb = random_tensor<float>(gen, Mb * N);
  std::vector<float> xj(at(Mj * K)), gj(at(Mj * N));
  for (std::int64_t e = 0; e < E; ++e) {
    std::copy_n(xa.begin() + off_a[at(e)] * K, a_rows[e] * K, xj.begin() + off_j[at(e)] * K);
    std::copy_n(xb.begin() + off_b[at(e)] * K, b_rows[e] * K,
                xj.begin() + (off_j[at(e)] + a_rows[e]) * K);
    std::copy_n(ga.begin() + off_a[at(e)] * N, a_rows[e] * N, gj.begin() + off_j[at(e)] * N);
    std::copy_n(gb.begin() + off_b[at(e)] * N, b_rows[e] * N,
                gj.begin() + (off_j[at(e)] + a_rows[e]) * N);
  }
  auto const init = random_tensor<float>(gen, E * N * K);
  auto const init_b = random_tensor<float>(gen, E * N);
  std::vector<float> two = init, two_b = init_b, one = init, one_b = init_b;
  auto const call = [&](std::vector<std::int64_t> const& off, std::int64_t M,
                        std::vector<float> const& x, std::vector<float> const& g,
                        std::vector<float>& dw, std::vector<float>& db) {
    return moe::grouped_gemm_wgrad(moe::host, moe::grouped_gemm_wgrad_args<C>{.experts = E,
                                                                              .rows = M,
                                                                              .n = N,
                                                                              .k = K,
                                                                              .offsets = off.data(),
                                                                              .x = x.data(),
                                                                              .dy = g.data(),
                                                                              .dw = dw.data(),
                                                                              .d_bias = db.data(),
                                                                              .accumulate = true});
  };
  REQUIRE(call(off_a, Ma, xa, ga, two, two_b).ok());
  REQUIRE(call(off_b, Mb, xb, gb, two, two_b).ok());
  REQUIRE(call(off_j, Mj, xj, gj, one, one_b).ok());
  CHECK(same_bits(two, one));
  CHECK(same_bits(two_b, one_b));
  // Without accumulate, an expert without rows gets zeros.
  std::vector<float> fresh = init, fresh_b = init_b;
  REQUIRE(
      moe::grouped_gemm_wgrad(moe::host, moe::grouped_gemm_wgrad_args<C>{.experts = E,
                                                                         .rows = Ma,
                                                                         .n = N,
                                                                         .k = K,
                                                                         .offsets = off_a.data(),
                                                                         .x = xa.data(),
                                                                         .dy = ga.data(),
                                                                         .dw = fresh.data(),
                                                                         .d_bias = fresh_b.data()})
          .ok());
  bool zeros = true;
  for (std::int64_t i = N * K; i < 2 * N * K; ++i) zeros = zeros && fresh[at(i)] == 0.0f;
  for (std::int64_t i = N; i < 2 * N; ++i) zeros = zeros && fresh_b[at(i)] == 0.0f;
  CHECK(zeros);
}

TEST_CASE("grouped_gemm(host): zero rows is a no-op; buffers may then be null") {
  constexpr moe::config C = moe::configs::top2_fp32;
  std::int64_t const off[4] = {0, 0, 0, 0};
  float const w[3 * 4 * 5] = {};
  CHECK(moe::grouped_gemm(moe::host,
                          moe::grouped_gemm_args<C>{
                              .experts = 3, .rows = 0, .n = 4, .k = 5, .offsets = off, .w = w})
            .ok());
  CHECK(moe::grouped_gemm_dgrad(moe::host, moe::grouped_gemm_dgrad_args<C>{.experts = 3,
                                                                           .rows = 0,
                                                                           .n = 4,
                                                                           .k = 5,
                                                                           .offsets = off,
                                                                           .w = w,
                                                                           .act = activation::silu})
            .ok());
  std::vector<float> dw(3 * 4 * 5, 7.0f);
  CHECK(moe::grouped_gemm_wgrad(
            moe::host,
            moe::grouped_gemm_wgrad_args<C>{
                .experts = 3, .rows = 0, .n = 4, .k = 5, .offsets = off, .dw = dw.data()})
            .ok());
  CHECK(dw == std::vector<float>(3 * 4 * 5, 0.0f));
  CHECK(moe::workspace_bytes(moe::host, moe::grouped_gemm_args<C>{}) == 0);
}

namespace {
/// Expects `s` to be invalid_argument with a message containing `text`.
void expect_error(moe::status const& s, char const* text) {
  INFO("message: ", std::string(s.message()), "; expected to contain: ", std::string(text));
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::strstr(s.message(), text) != nullptr);
}
}  // namespace

TEST_CASE("grouped_gemm(host): every bad input gets its status") {
  constexpr moe::config C = moe::configs::top2_fp32;
  using args = moe::grouped_gemm_args<C>;
  constexpr std::int64_t E = 2, M = 6, N = 3, K = 4;
  std::int64_t off[E + 1] = {0, 2, 5};
  std::vector<float> x(M * K, 1.0f), w(E * 2 * N * K, 1.0f), b(E * 2 * N, 0.0f), y(M * N),
      pre(M * 2 * N);
  args const good{.experts = E,
                  .rows = M,
                  .n = N,
                  .k = K,
                  .offsets = off,
                  .x = x.data(),
                  .w = w.data(),
                  .bias = b.data(),
                  .act = activation::swiglu,
                  .y = y.data(),
                  .pre = pre.data()};
  REQUIRE(moe::grouped_gemm(moe::host, good).ok());
  auto const bad = [&](auto change, char const* text) {
    args a = good;
    change(a);
    expect_error(moe::grouped_gemm(moe::host, a), text);
  };
  expect_error(moe::grouped_gemm(moe::host.with_threads(-1), good), "host_policy.threads");
  bad([](args& a) { a.act = static_cast<activation>(42); }, "grouped_gemm_args.act");
  bad([](args& a) { a.experts = 0; }, "grouped_gemm_args.experts: expected 1 <= E_l <= 8");
  bad([](args& a) { a.experts = 9; }, "grouped_gemm_args.experts");
  bad([](args& a) { a.rows = -1; }, "grouped_gemm_args.rows");
  bad([](args& a) { a.n = 0; }, "grouped_gemm_args.n: expected >= 1");
  bad([](args& a) { a.k = 0; }, "grouped_gemm_args.k: expected >= 1");
  bad(
      [](args& a) {
        a.k = std::int64_t{1} << 40;
        a.n = std::int64_t{1} << 30;
      },
      "below 2^62");
  bad([](args& a) { a.rows = std::int64_t{1} << 61; }, "below 2^62");
  bad([](args& a) { a.offsets = nullptr; }, "grouped_gemm_args.offsets: expected non-null");
  bad([](args& a) { a.rows = 4; }, "got offsets[2] = 5");
  std::int64_t decreasing[E + 1] = {0, 3, 2};
  bad([&](args& a) { a.offsets = decreasing; }, "got offsets[2] = 2");
  std::int64_t negative[E + 1] = {-1, 3, 4};
  bad([&](args& a) { a.offsets = negative; }, "got offsets[0] = -1");
  bad([](args& a) { a.x = nullptr; }, "grouped_gemm_args.x: expected non-null");
  bad([](args& a) { a.w = nullptr; }, "grouped_gemm_args.w: expected non-null");
  bad([](args& a) { a.y = nullptr; }, "grouped_gemm_args.y: expected non-null");
  bad(
      [&](args& a) {
        a.x = reinterpret_cast<float const*>(reinterpret_cast<char const*>(x.data()) + 1);
      },
      "grouped_gemm_args.x: expected 4-byte alignment for fp32");
  bad(
      [&](args& a) {
        a.bias = reinterpret_cast<float const*>(reinterpret_cast<char const*>(b.data()) + 2);
      },
      "grouped_gemm_args.bias: expected 4-byte alignment");
  bad([&](args& a) { a.y = x.data(); }, "grouped_gemm_args.y: expected no overlap");
  bad([&](args& a) { a.y = pre.data() + 1; }, "grouped_gemm_args.y: expected no overlap");
  bad([&](args& a) { a.pre = w.data(); }, "grouped_gemm_args.pre: expected no overlap");

  using dargs = moe::grouped_gemm_dgrad_args<C>;
  std::vector<float> dy(M * N), dpre(M * 2 * K), dx(M * 2 * K);
  dargs const dgood{.experts = E,
                    .rows = M,
                    .n = N,
                    .k = K,
                    .offsets = off,
                    .dy = dy.data(),
                    .w = w.data(),
                    .act = activation::geglu,
                    .pre = dpre.data(),
                    .dx = dx.data()};
  REQUIRE(moe::grouped_gemm_dgrad(moe::host, dgood).ok());
  auto const dbad = [&](auto change, char const* text) {
    dargs a = dgood;
    change(a);
    expect_error(moe::grouped_gemm_dgrad(moe::host, a), text);
  };
  dbad([](dargs& a) { a.act = static_cast<activation>(200); }, "grouped_gemm_dgrad_args.act");
  dbad([](dargs& a) { a.n = -3; }, "grouped_gemm_dgrad_args.n");
  dbad([](dargs& a) { a.dy = nullptr; }, "grouped_gemm_dgrad_args.dy: expected non-null");
  dbad([](dargs& a) { a.dx = nullptr; }, "grouped_gemm_dgrad_args.dx: expected non-null");
  dbad([](dargs& a) { a.pre = nullptr; }, "grouped_gemm_dgrad_args.pre: expected non-null");
  dbad([](dargs& a) { a.act = activation::identity; },
       "grouped_gemm_dgrad_args.pre: expected null");
  dbad([](dargs& a) { a.offsets = nullptr; }, "grouped_gemm_dgrad_args.offsets");
  dbad([&](dargs& a) { a.dx = dpre.data(); }, "grouped_gemm_dgrad_args.dx: expected no overlap");
  dbad([&](dargs& a) { a.dx = const_cast<float*>(a.dy); },
       "grouped_gemm_dgrad_args.dx: expected no overlap");

  using wargs = moe::grouped_gemm_wgrad_args<C>;
  std::vector<float> dw(E * N * K), db(E * N);
  wargs const wgood{.experts = E,
                    .rows = M,
                    .n = N,
                    .k = K,
                    .offsets = off,
                    .x = x.data(),
                    .dy = dy.data(),
                    .dw = dw.data(),
                    .d_bias = db.data()};
  REQUIRE(moe::grouped_gemm_wgrad(moe::host, wgood).ok());
  auto const wbad = [&](auto change, char const* text) {
    wargs a = wgood;
    change(a);
    expect_error(moe::grouped_gemm_wgrad(moe::host, a), text);
  };
  wbad([](wargs& a) { a.experts = -1; }, "grouped_gemm_wgrad_args.experts");
  wbad([](wargs& a) { a.x = nullptr; }, "grouped_gemm_wgrad_args.x: expected non-null");
  wbad([](wargs& a) { a.dy = nullptr; }, "grouped_gemm_wgrad_args.dy: expected non-null");
  wbad([](wargs& a) { a.dw = nullptr; }, "grouped_gemm_wgrad_args.dw: expected non-null");
  wbad([&](wargs& a) { a.dw = x.data(); }, "grouped_gemm_wgrad_args.dw: expected no overlap");
  wbad([&](wargs& a) { a.d_bias = dw.data() + 3; },
       "grouped_gemm_wgrad_args.dw: expected no overlap");
  wbad([&](wargs& a) { a.d_bias = const_cast<float*>(a.dy); },
       "grouped_gemm_wgrad_args.d_bias: expected no overlap");

  using aargs = moe::grouped_activation_args<C>;
  aargs const agood{.experts = E,
                    .rows = M,
                    .n = N,
                    .offsets = off,
                    .act = activation::swiglu,
                    .pre = pre.data(),
                    .h = y.data()};
  REQUIRE(moe::grouped_activation(moe::host, agood).ok());
  aargs a1 = agood;
  a1.h = pre.data() + 2;
  expect_error(moe::grouped_activation(moe::host, a1),
               "grouped_activation_args.h: expected no overlap");
  a1 = agood;
  a1.pre = nullptr;
  expect_error(moe::grouped_activation(moe::host, a1),
               "grouped_activation_args.pre: expected non-null");

  // can_implement: the host's rules are H >= 1 and F >= 1 (and sizes below 2^62).
  moe::problem p{.tokens = 16, .hidden = 64, .ffn = 32};
  CHECK(moe::can_implement<C>(moe::host, p).ok());
  CHECK(moe::can_implement<C>(moe::host, p, activation::swiglu).ok());
  p.hidden = 0;
  expect_error(moe::can_implement<C>(moe::host, p), "problem.hidden: expected H >= 1");
  p.hidden = 64;
  p.ffn = 0;
  expect_error(moe::can_implement<C>(moe::host, p), "problem.ffn: expected F >= 1");
  p.ffn = std::int64_t{1} << 40;
  p.hidden = std::int64_t{1} << 30;
  expect_error(moe::can_implement<C>(moe::host, p), "below 2^62");
  p = {.tokens = 16, .hidden = 64, .ffn = 32, .ep_size = 3};
  expect_error(moe::can_implement<C>(moe::host, p), "problem.ep_size");
  p.ep_size = 1;
  expect_error(moe::can_implement<C>(moe::host, p, static_cast<activation>(9)), "act");
}
