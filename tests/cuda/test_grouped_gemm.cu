// SPDX-License-Identifier: Apache-2.0
// The CUDA grouped GEMM and expert FFN (moe/cuda/grouped_gemm.cuh, moe/cuda/expert_ffn.cuh)
// against the host backend (their oracle, itself checked against long-double references in
// tests/host/test_grouped_gemm.cpp and test_expert_ffn.cpp) and against a cuBLAS baseline:
// forward with every epilogue (with bias and stored pre), dgrad plain and with every fused
// activation backward, wgrad and dbias (overwriting and accumulating), the element-wise
// activation, and the expert FFN forward and backward in every recompute mode; for bf16 and
// fp16 (tensor cores), fp32 (FFMA) and fp64 (DFMA) configs; random inputs (a fresh seed per
// run, printed on failure) with ragged experts, experts without rows, rows outside every
// expert, and sizes that are not tile multiples. Then determinism (two runs, the same bits),
// the three recompute modes bitwise equal, and the CUDA alignment rules.
//
// Tolerances, per element, with u_X the unit roundoff of the storage type (2^-8 bf16, 2^-11
// fp16, 2^-24 fp32, 2^-53 fp64), u_A that of the accumulator (2^-24, fp64 2^-53) and S the
// sum of |products| (the host op run on |inputs|): both backends sum n products in a different
// order, so their sums differ by at most 2(n + 2)·u_A·S; a stored value is rounded once on
// each side, and when the two sums straddle a rounding boundary the stored values differ by
// one ulp: 2·u_X·|ref|. Activations read the rounded pre-activation, so a one-ulp difference
// there moves the output by |f'| <= 1.25 times it (times |up| when gated), and CUDA's
// erf/exp/tanh differ from glibc's by a few ulp of u_A: 32·u_A·(1 + |g|)(1 + |u|). The expert
// FFN chains two GEMMs: the intermediate's one-ulp differences enter the second GEMM, bounded
// by 8·u_X times the second GEMM's S computed on |intermediate| (+ |g|·(1 + |u|) for h).
// Outputs outside the experts' rows must keep their initial values on both sides.
#include <algorithm>    // std::max
#include <cmath>        // std::fabs
#include <cstdint>      // std::int64_t
#include <cstdio>       // std::printf
#include <random>       // std::mt19937_64
#include <string>       // std::string
#include <type_traits>  // std::is_same_v
#include <vector>       // std::vector

#include "../host/common.hpp"  // fresh_seed, random_tensor, same_bits, unit_roundoff, at
#include "common.cuh"          // device_vector, MOE_REQUIRE_CUDA, MOE_REQUIRE_OK
#include "moe/configs.hpp"     // moe::configs::top2_bf16, top2_fp32, top2_fp64, fine_bf16
#include "moe/cuda/expert_ffn.cuh"           // the ops under test
#include "moe/cuda/grouped_gemm_cublas.cuh"  // the cuBLAS baseline

namespace {

using moe::activation;
using moe::test::at;
using moe::test::device_vector;
using moe::test::fresh_seed;
using moe::test::random_tensor;
using moe::test::same_bits;
using moe::test::unit_roundoff;
using i64 = std::int64_t;

/// The fp16 twin of configs::top2_bf16.
constexpr moe::config top2_fp16{.experts = 8,
                                .top_k = 2,
                                .capacity_factor = {5, 4},
                                .act = moe::precision::fp16,
                                .weight = moe::precision::fp16,
                                .norm = moe::normalization::renormalize};

/// 64 bf16 experts (grouped GEMM arguments allow E_l up to the config's expert count).
constexpr moe::config e64_bf16{.experts = 64,
                               .top_k = 2,
                               .capacity_factor = {5, 4},
                               .norm = moe::normalization::renormalize};

constexpr activation all_activations[] = {
    activation::identity, activation::relu,   activation::gelu, activation::gelu_tanh,
    activation::silu,     activation::swiglu, activation::geglu};

template <class T>
double val(T v) {
  return static_cast<double>(moe::to_float(v));
}

template <class T>
std::vector<T> abs_of(std::vector<T> const& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = moe::test::stored<T>(std::fabs(val(v[i])));
  return out;
}

/// A device copy of a host vector (at least one element, so pointers are never null).
template <class T>
struct dev {
  device_vector<T> d;
  explicit dev(std::vector<T> const& h) : d(std::max<std::size_t>(h.size(), 1)) {
    if (!h.empty()) {
      std::vector<T> padded = h;
      padded.resize(d.size());
      d.upload(padded);
    }
  }
  explicit dev(std::size_t n) : d(std::max<std::size_t>(n, 1)) {}
  T* p() const { return d.data(); }
  std::vector<T> get(std::size_t n) const {
    std::vector<T> h = d.download();
    h.resize(n);
    return h;
  }
};

/// Ragged offsets: `lead` rows before the first expert, empty experts, one expert of `big`
/// rows (past several row tiles), `tail` rows after the last.
std::vector<i64> ragged_offsets(std::mt19937_64& gen, i64 experts, i64 big, i64* rows) {
  std::vector<i64> off(at(experts + 1));
  std::uniform_int_distribution<i64> count(1, 40);
  std::uniform_int_distribution<int> coin(0, 2);
  i64 const big_expert = std::uniform_int_distribution<i64>(0, experts - 1)(gen);
  off[0] = 3;
  for (i64 e = 0; e < experts; ++e) {
    i64 c = e == big_expert ? big : coin(gen) == 0 ? 0 : count(gen);
    if (e == (big_expert + 1) % experts) c = 0;  // at least one empty expert
    off[at(e + 1)] = off[at(e)] + c;
  }
  *rows = off[at(experts)] + 5;
  return off;
}

/// Counts elements outside their tolerance, printing the first few.
template <class T>
void expect_close(std::string const& what, std::vector<T> const& got, std::vector<T> const& ref,
                  std::vector<double> const& tol, std::uint64_t seed) {
  REQUIRE(got.size() == ref.size());
  REQUIRE(tol.size() == ref.size());
  i64 bad = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    double const d = std::fabs(val(got[i]) - val(ref[i]));
    if (!(d <= tol[i])) {
      if (bad < 5)
        std::printf("%s [%zu]: got %.9g, host %.9g, |diff| %.3g > tol %.3g (seed %llu)\n",
                    what.c_str(), i, val(got[i]), val(ref[i]), d, tol[i],
                    static_cast<unsigned long long>(seed));
      ++bad;
    }
  }
  CHECK_MESSAGE(bad == 0, what, ": ", bad, " elements outside tolerance, seed ", seed);
}

moe::stream_t const stream = nullptr;
moe::cuda_policy const gpu = moe::cuda_on(stream);

void sync() { MOE_REQUIRE_CUDA(cudaStreamSynchronize(stream)); }

/// One random grouped-GEMM problem of config C: forward x [M, K] · W [E, N_w, K]; the dgrad
/// and wgrad use the same sizes with dy [M, N_w] and pre [M, 2K].
template <moe::config C>
struct gemm_case {
  using X = moe::act_t<C>;
  using A = moe::accum_t<C>;
  static constexpr double ux = unit_roundoff<X>(), ua = unit_roundoff<A>();
  i64 E, M, N, K;
  std::vector<i64> off;
  std::vector<X> x, w, b, dy, pin, y0, dx0;
  std::vector<A> dw0, db0;

  gemm_case(std::mt19937_64& gen, i64 experts, i64 n, i64 k, i64 big) : E(experts), N(n), K(k) {
    off = ragged_offsets(gen, E, big, &M);
    x = random_tensor<X>(gen, M * K);
    w = random_tensor<X>(gen, E * 2 * N * K);
    b = random_tensor<X>(gen, E * 2 * N);
    dy = random_tensor<X>(gen, M * 2 * N);
    pin = random_tensor<X>(gen, M * 2 * K, -3.0, 3.0);
    y0 = random_tensor<X>(gen, M * 2 * N, 7.0, 8.0);  // sentinels of untouched rows
    dx0 = random_tensor<X>(gen, M * 2 * K, 7.0, 8.0);
    dw0 = random_tensor<A>(gen, E * 2 * N * K);
    db0 = random_tensor<A>(gen, E * 2 * N);
  }
  i64 nw(activation a) const { return moe::is_gated(a) ? 2 * N : N; }
  i64 kw(activation a) const { return moe::is_gated(a) ? 2 * K : K; }
  /// err of one product sum of n terms with abs-sum s, both sides.
  static double sum_err(i64 n, double s) { return 2.0 * static_cast<double>(n + 2) * ua * s; }
};

template <moe::config C>
moe::grouped_gemm_args<C> fwd_args(gemm_case<C> const& c, i64 n, activation act,
                                   i64 const* off, moe::act_t<C> const* x, moe::act_t<C> const* w,
                                   moe::act_t<C> const* b, moe::act_t<C>* y, moe::act_t<C>* pre) {
  return {.experts = c.E, .rows = c.M, .n = n, .k = c.K, .offsets = off, .x = x, .w = w,
          .bias = b, .act = act, .y = y, .pre = pre};
}

template <moe::config C>
void test_forward(std::mt19937_64& gen, std::uint64_t seed, i64 n, i64 k, i64 big,
                  i64 experts = 5) {
  using X = moe::act_t<C>;
  gemm_case<C> c(gen, experts, n, k, big);
  dev<i64> d_off(c.off);
  dev<X> d_x(c.x), d_w(c.w), d_b(c.b);
  for (activation act : all_activations)
    for (bool bias : {false, true}) {
      CAPTURE(std::string(moe::to_string(act)));
      CAPTURE(bias);
      i64 const nw = c.nw(act);
      std::vector<X> y_ref(c.y0.begin(), c.y0.begin() + c.M * c.N), pre_ref(at(c.M * nw));
      std::vector<X> pre_init(c.y0.begin(), c.y0.begin() + c.M * nw);
      pre_ref = pre_init;
      MOE_REQUIRE_OK(moe::grouped_gemm(moe::host, fwd_args<C>(c, c.N, act, c.off.data(), c.x.data(),
                                                              c.w.data(), bias ? c.b.data() : nullptr,
                                                              y_ref.data(), pre_ref.data())));
      // S = Σ|x||w| + |b| per pre-activation element (identity forward of width N_w on |·|).
      std::vector<X> ax = abs_of(c.x), aw = abs_of(c.w), ab = abs_of(c.b);
      std::vector<X> s(at(c.M * nw));
      MOE_REQUIRE_OK(moe::grouped_gemm(
          moe::host, fwd_args<C>(c, nw, activation::identity, c.off.data(), ax.data(), aw.data(),
                                 bias ? ab.data() : nullptr, s.data(), nullptr)));
      dev<X> d_y(std::vector<X>(c.y0.begin(), c.y0.begin() + c.M * c.N)), d_pre(pre_init);
      MOE_REQUIRE_OK(moe::grouped_gemm(gpu, fwd_args<C>(c, c.N, act, d_off.p(), d_x.p(), d_w.p(),
                                                        bias ? d_b.p() : nullptr, d_y.p(),
                                                        d_pre.p())));
      sync();
      std::vector<X> y = d_y.get(at(c.M * c.N)), pre = d_pre.get(at(c.M * nw));
      std::vector<double> tol_pre(pre.size()), tol_y(y.size());
      bool const gated = moe::is_gated(act);
      for (i64 m = 0; m < c.M; ++m)
        for (i64 j = 0; j < nw; ++j)
          tol_pre[at(m * nw + j)] = 2 * c.ux * std::fabs(val(pre_ref[at(m * nw + j)])) +
                                    c.sum_err(c.K, val(s[at(m * nw + j)]));
      for (i64 m = 0; m < c.M; ++m)
        for (i64 j = 0; j < c.N; ++j) {
          double const g = std::fabs(val(pre_ref[at(m * nw + j)]));
          double const u = gated ? std::fabs(val(pre_ref[at(m * nw + c.N + j)])) : 0.0;
          double const eg = tol_pre[at(m * nw + j)], eu = gated ? tol_pre[at(m * nw + c.N + j)] : 0;
          tol_y[at(m * c.N + j)] = 2 * c.ux * std::fabs(val(y_ref[at(m * c.N + j)])) +
                                   1.25 * eg * (1 + u + eu) + (1.25 * g + 1) * eu +
                                   32 * c.ua * (1 + g) * (1 + u);
        }
      expect_close("forward pre", pre, pre_ref, tol_pre, seed);
      expect_close("forward y", y, y_ref, tol_y, seed);

      // grouped_activation on the CUDA pre: bitwise the CUDA forward's y.
      dev<X> d_h(std::vector<X>(c.y0.begin(), c.y0.begin() + c.M * c.N));
      MOE_REQUIRE_OK(moe::grouped_activation(
          gpu, moe::grouped_activation_args<C>{.experts = c.E, .rows = c.M, .n = c.N,
                                               .offsets = d_off.p(), .act = act,
                                               .pre = d_pre.p(), .h = d_h.p()}));
      sync();
      CHECK_MESSAGE(same_bits(d_h.get(at(c.M * c.N)), y), "grouped_activation != forward y");
    }
}

template <moe::config C>
void test_dgrad(std::mt19937_64& gen, std::uint64_t seed, i64 n, i64 k, i64 big) {
  using X = moe::act_t<C>;
  gemm_case<C> c(gen, 5, n, k, big);
  dev<i64> d_off(c.off);
  dev<X> d_dy(c.dy), d_w(c.w), d_pin(c.pin);
  std::vector<X> ady = abs_of(c.dy), aw = abs_of(c.w);
  std::vector<X> s(at(c.M * c.K));
  MOE_REQUIRE_OK(moe::grouped_gemm_dgrad(
      moe::host, moe::grouped_gemm_dgrad_args<C>{.experts = c.E, .rows = c.M, .n = c.N, .k = c.K,
                                                 .offsets = c.off.data(), .dy = ady.data(),
                                                 .w = aw.data(), .dx = s.data()}));
  for (activation act : all_activations) {
    CAPTURE(std::string(moe::to_string(act)));
    i64 const kw = c.kw(act);
    bool const gated = moe::is_gated(act);
    X const* pin = act == activation::identity ? nullptr : c.pin.data();
    std::vector<X> dx_ref(c.dx0.begin(), c.dx0.begin() + c.M * kw);
    // pre [M, K_w] of the gated width: view the first M·K_w elements of pin.
    MOE_REQUIRE_OK(moe::grouped_gemm_dgrad(
        moe::host, moe::grouped_gemm_dgrad_args<C>{.experts = c.E, .rows = c.M, .n = c.N,
                                                   .k = c.K, .offsets = c.off.data(),
                                                   .dy = c.dy.data(), .w = c.w.data(), .act = act,
                                                   .pre = pin, .dx = dx_ref.data()}));
    dev<X> d_dx(std::vector<X>(c.dx0.begin(), c.dx0.begin() + c.M * kw));
    MOE_REQUIRE_OK(moe::grouped_gemm_dgrad(
        gpu, moe::grouped_gemm_dgrad_args<C>{.experts = c.E, .rows = c.M, .n = c.N, .k = c.K,
                                             .offsets = d_off.p(), .dy = d_dy.p(), .w = d_w.p(),
                                             .act = act,
                                             .pre = pin != nullptr ? d_pin.p() : nullptr,
                                             .dx = d_dx.p()}));
    sync();
    std::vector<X> dx = d_dx.get(dx_ref.size());
    std::vector<double> tol(dx.size());
    for (i64 m = 0; m < c.M; ++m)
      for (i64 j = 0; j < kw; ++j) {
        i64 const jj = j % c.K;
        double const g = pin ? std::fabs(val(c.pin[at(m * kw + jj)])) : 0.0;
        double const u = gated ? std::fabs(val(c.pin[at(m * kw + c.K + jj)])) : 0.0;
        double const sj = val(s[at(m * c.K + jj)]);
        tol[at(m * kw + j)] = 2 * c.ux * std::fabs(val(dx_ref[at(m * kw + j)])) +
                              (2 + 1.25 * g + 1.25 * u) *
                                  (c.sum_err(c.N, sj) + 32 * c.ua * sj * (1 + g) * (1 + u));
      }
    expect_close("dgrad dx", dx, dx_ref, tol, seed);
  }
}

template <moe::config C>
void test_wgrad(std::mt19937_64& gen, std::uint64_t seed, i64 n, i64 k, i64 big,
                i64 experts = 5) {
  using X = moe::act_t<C>;
  using A = moe::accum_t<C>;
  gemm_case<C> c(gen, experts, n, k, big);
  dev<i64> d_off(c.off);
  dev<X> d_x(c.x), d_dy(c.dy);
  i64 const nw = 2 * c.N;  // wgrad of a gated layer's width
  std::vector<X> ax = abs_of(c.x), ady = abs_of(c.dy);
  std::vector<A> sw(at(c.E * nw * c.K)), sb(at(c.E * nw));
  MOE_REQUIRE_OK(moe::grouped_gemm_wgrad(
      moe::host, moe::grouped_gemm_wgrad_args<C>{.experts = c.E, .rows = c.M, .n = nw, .k = c.K,
                                                 .offsets = c.off.data(), .x = ax.data(),
                                                 .dy = ady.data(), .dw = sw.data(),
                                                 .d_bias = sb.data()}));
  for (bool accumulate : {false, true})
    for (bool bias : {false, true}) {
      CAPTURE(accumulate);
      CAPTURE(bias);
      std::vector<A> dw_ref = c.dw0, db_ref = c.db0;
      auto args = [&](i64 const* off, X const* x, X const* dy, A* dw, A* db) {
        return moe::grouped_gemm_wgrad_args<C>{.experts = c.E, .rows = c.M, .n = nw, .k = c.K,
                                               .offsets = off, .x = x, .dy = dy, .dw = dw,
                                               .d_bias = bias ? db : nullptr,
                                               .accumulate = accumulate};
      };
      MOE_REQUIRE_OK(moe::grouped_gemm_wgrad(
          moe::host, args(c.off.data(), c.x.data(), c.dy.data(), dw_ref.data(), db_ref.data())));
      dev<A> d_dw(c.dw0), d_db(c.db0);
      MOE_REQUIRE_OK(moe::grouped_gemm_wgrad(gpu, args(d_off.p(), d_x.p(), d_dy.p(), d_dw.p(),
                                                       d_db.p())));
      sync();
      std::vector<double> tol(dw_ref.size()), tolb(db_ref.size());
      for (std::size_t i = 0; i < tol.size(); ++i)
        tol[i] = c.sum_err(c.M, val(sw[i]) + (accumulate ? std::fabs(val(c.dw0[i])) : 0.0)) +
                 c.ua * std::fabs(val(dw_ref[i]));
      for (std::size_t i = 0; i < tolb.size(); ++i)
        tolb[i] = c.sum_err(c.M, val(sb[i]) + (accumulate ? std::fabs(val(c.db0[i])) : 0.0)) +
                  c.ua * std::fabs(val(db_ref[i]));
      expect_close("wgrad dw", d_dw.get(dw_ref.size()), dw_ref, tol, seed);
      expect_close("wgrad d_bias", d_db.get(db_ref.size()), db_ref, tolb, seed);
    }
}

/// cuBLAS baseline: identity forward, identity dgrad, wgrad against the CUDA ops.
template <moe::config C>
void test_cublas(std::mt19937_64& gen, std::uint64_t seed, i64 n, i64 k, i64 big) {
  using X = moe::act_t<C>;
  using A = moe::accum_t<C>;
  gemm_case<C> c(gen, 5, n, k, big);
  cublasHandle_t handle = nullptr;
  REQUIRE(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS);
  dev<i64> d_off(c.off);
  dev<X> d_x(c.x), d_w(c.w), d_dy(c.dy);
  std::vector<X> ax = abs_of(c.x), aw = abs_of(c.w), ady = abs_of(c.dy);
  {  // forward
    std::vector<X> y0(c.y0.begin(), c.y0.begin() + c.M * c.N), s(at(c.M * c.N));
    MOE_REQUIRE_OK(moe::grouped_gemm(moe::host, fwd_args<C>(c, c.N, activation::identity,
                                                            c.off.data(), ax.data(), aw.data(),
                                                            nullptr, s.data(), nullptr)));
    dev<X> d_y(y0), d_yb(y0);
    auto const a = fwd_args<C>(c, c.N, activation::identity, d_off.p(), d_x.p(), d_w.p(),
                               nullptr, d_y.p(), nullptr);
    auto b = a;
    b.y = d_yb.p();
    MOE_REQUIRE_OK(moe::grouped_gemm(gpu, a));
    MOE_REQUIRE_OK(moe::backend::cuda::grouped_gemm_cublas(handle, gpu, b));
    sync();
    std::vector<X> ref = d_yb.get(y0.size());
    std::vector<double> tol(ref.size());
    for (std::size_t i = 0; i < tol.size(); ++i)
      tol[i] = 2 * c.ux * std::fabs(val(ref[i])) + c.sum_err(c.K, val(s[i]));
    expect_close("forward vs cuBLAS", d_y.get(y0.size()), ref, tol, seed);
  }
  {  // dgrad
    std::vector<X> dx0(c.dx0.begin(), c.dx0.begin() + c.M * c.K), s(at(c.M * c.K));
    MOE_REQUIRE_OK(moe::grouped_gemm_dgrad(
        moe::host, moe::grouped_gemm_dgrad_args<C>{.experts = c.E, .rows = c.M, .n = c.N,
                                                   .k = c.K, .offsets = c.off.data(),
                                                   .dy = ady.data(), .w = aw.data(),
                                                   .dx = s.data()}));
    dev<X> d_dx(dx0), d_dxb(dx0);
    moe::grouped_gemm_dgrad_args<C> a{.experts = c.E, .rows = c.M, .n = c.N, .k = c.K,
                                      .offsets = d_off.p(), .dy = d_dy.p(), .w = d_w.p(),
                                      .dx = d_dx.p()};
    auto b = a;
    b.dx = d_dxb.p();
    MOE_REQUIRE_OK(moe::grouped_gemm_dgrad(gpu, a));
    MOE_REQUIRE_OK(moe::backend::cuda::grouped_gemm_dgrad_cublas(handle, gpu, b));
    sync();
    std::vector<X> ref = d_dxb.get(dx0.size());
    std::vector<double> tol(ref.size());
    for (std::size_t i = 0; i < tol.size(); ++i)
      tol[i] = 2 * c.ux * std::fabs(val(ref[i])) + c.sum_err(c.N, val(s[i]));
    expect_close("dgrad vs cuBLAS", d_dx.get(dx0.size()), ref, tol, seed);
  }
  {  // wgrad
    std::vector<A> s(at(c.E * c.N * c.K));
    MOE_REQUIRE_OK(moe::grouped_gemm_wgrad(
        moe::host, moe::grouped_gemm_wgrad_args<C>{.experts = c.E, .rows = c.M, .n = c.N,
                                                   .k = c.K, .offsets = c.off.data(),
                                                   .x = ax.data(), .dy = ady.data(),
                                                   .dw = s.data()}));
    std::vector<A> dw0(c.dw0.begin(), c.dw0.begin() + c.E * c.N * c.K);
    dev<A> d_dw(dw0), d_dwb(dw0);
    moe::grouped_gemm_wgrad_args<C> a{.experts = c.E, .rows = c.M, .n = c.N, .k = c.K,
                                      .offsets = d_off.p(), .x = d_x.p(), .dy = d_dy.p(),
                                      .dw = d_dw.p()};
    auto b = a;
    b.dw = d_dwb.p();
    MOE_REQUIRE_OK(moe::grouped_gemm_wgrad(gpu, a));
    MOE_REQUIRE_OK(moe::backend::cuda::grouped_gemm_wgrad_cublas(handle, gpu, b));
    sync();
    std::vector<A> ref = d_dwb.get(dw0.size());
    std::vector<double> tol(ref.size());
    for (std::size_t i = 0; i < tol.size(); ++i)
      tol[i] = c.ua * std::fabs(val(ref[i])) + c.sum_err(c.M, val(s[i]));
    expect_close("wgrad vs cuBLAS", d_dw.get(dw0.size()), ref, tol, seed);
  }
  cublasDestroy(handle);
}

/// Two runs of each op on the same inputs give the same bits.
template <moe::config C>
void test_determinism(std::mt19937_64& gen, i64 n, i64 k, i64 big) {
  using X = moe::act_t<C>;
  using A = moe::accum_t<C>;
  gemm_case<C> c(gen, 5, n, k, big);
  dev<i64> d_off(c.off);
  dev<X> d_x(c.x), d_w(c.w), d_b(c.b), d_dy(c.dy), d_pin(c.pin);
  std::vector<X> ys[2], dxs[2];
  std::vector<A> dws[2];
  for (int run = 0; run < 2; ++run) {
    dev<X> d_y(c.y0), d_pre(c.y0), d_dx(c.dx0);
    dev<A> d_dw(c.dw0), d_db(c.db0);
    MOE_REQUIRE_OK(moe::grouped_gemm(gpu, fwd_args<C>(c, c.N, activation::swiglu, d_off.p(),
                                                      d_x.p(), d_w.p(), d_b.p(), d_y.p(),
                                                      d_pre.p())));
    MOE_REQUIRE_OK(moe::grouped_gemm_dgrad(
        gpu, moe::grouped_gemm_dgrad_args<C>{.experts = c.E, .rows = c.M, .n = c.N, .k = c.K,
                                             .offsets = d_off.p(), .dy = d_dy.p(), .w = d_w.p(),
                                             .act = activation::geglu, .pre = d_pin.p(),
                                             .dx = d_dx.p()}));
    MOE_REQUIRE_OK(moe::grouped_gemm_wgrad(
        gpu, moe::grouped_gemm_wgrad_args<C>{.experts = c.E, .rows = c.M, .n = 2 * c.N, .k = c.K,
                                             .offsets = d_off.p(), .x = d_x.p(), .dy = d_dy.p(),
                                             .dw = d_dw.p(), .d_bias = d_db.p(),
                                             .accumulate = true}));
    sync();
    ys[run] = d_y.get(c.y0.size());
    dxs[run] = d_dx.get(c.dx0.size());
    dws[run] = d_dw.get(c.dw0.size());
  }
  CHECK(same_bits(ys[0], ys[1]));
  CHECK(same_bits(dxs[0], dxs[1]));
  CHECK(same_bits(dws[0], dws[1]));
}

TEST_CASE("grouped GEMM (CUDA): forward with every epilogue, against the host backend") {
  std::uint64_t const seed = fresh_seed();
  CAPTURE(seed);
  std::mt19937_64 gen(seed);
  test_forward<moe::configs::top2_bf16>(gen, seed, 200, 136, 300);
  test_forward<top2_fp16>(gen, seed, 72, 40, 150);
  test_forward<moe::configs::top2_fp32>(gen, seed, 61, 75, 150);
  test_forward<moe::configs::top2_fp64>(gen, seed, 37, 29, 100);
}

TEST_CASE("grouped GEMM (CUDA): dgrad with every fused activation backward") {
  std::uint64_t const seed = fresh_seed();
  CAPTURE(seed);
  std::mt19937_64 gen(seed);
  test_dgrad<moe::configs::top2_bf16>(gen, seed, 200, 136, 300);
  test_dgrad<top2_fp16>(gen, seed, 72, 40, 150);
  test_dgrad<moe::configs::top2_fp32>(gen, seed, 61, 75, 150);
  test_dgrad<moe::configs::top2_fp64>(gen, seed, 37, 29, 100);
}

TEST_CASE("grouped GEMM (CUDA): wgrad and d_bias, overwriting and accumulating") {
  std::uint64_t const seed = fresh_seed();
  CAPTURE(seed);
  std::mt19937_64 gen(seed);
  test_wgrad<moe::configs::top2_bf16>(gen, seed, 200, 136, 300);
  test_wgrad<top2_fp16>(gen, seed, 72, 40, 150);
  test_wgrad<moe::configs::top2_fp32>(gen, seed, 61, 75, 150);
  test_wgrad<moe::configs::top2_fp64>(gen, seed, 37, 29, 100);
}

// 64 experts (the tile scheduler's warp scan carries across warps past 32) and N = 2048, so
// that there are several times more tiles than CTAs of the persistent grid: each CTA runs
// tiles one after another (shared memory reused after an epilogue, accumulators reset).
TEST_CASE("grouped GEMM (CUDA): 64 experts, more tiles than CTAs") {
  std::uint64_t const seed = fresh_seed();
  CAPTURE(seed);
  std::mt19937_64 gen(seed);
  test_forward<e64_bf16>(gen, seed, 2048, 64, 300, 64);
  test_wgrad<e64_bf16>(gen, seed, 2048, 64, 300, 64);
}

TEST_CASE("grouped GEMM (CUDA): against the cuBLAS baseline") {
  std::uint64_t const seed = fresh_seed();
  CAPTURE(seed);
  std::mt19937_64 gen(seed);
  test_cublas<moe::configs::top2_bf16>(gen, seed, 264, 520, 700);
  test_cublas<moe::configs::top2_fp32>(gen, seed, 61, 75, 150);
}

TEST_CASE("grouped GEMM (CUDA): two runs give the same bits") {
  std::uint64_t const seed = fresh_seed();
  CAPTURE(seed);
  std::mt19937_64 gen(seed);
  test_determinism<moe::configs::top2_bf16>(gen, 200, 136, 300);
  test_determinism<moe::configs::top2_fp32>(gen, 61, 75, 150);
}

TEST_CASE("grouped GEMM (CUDA): alignment rules of the tensor-core kernel") {
  constexpr moe::config bf = moe::configs::top2_bf16;
  moe::problem p{.tokens = 16, .hidden = 132, .ffn = 64};
  moe::status s = moe::can_implement<bf>(gpu, p);
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::string(s.message()).find("hidden") != std::string::npos);
  p.hidden = 128;
  CHECK(moe::can_implement<bf>(gpu, p).ok());
  p.ffn = 60;
  CHECK(!moe::can_implement<bf>(gpu, p).ok());
  // fp32 runs the SIMT kernel: no alignment rule.
  p.ffn = 61;
  p.hidden = 75;
  CHECK(moe::can_implement<moe::configs::top2_fp32>(gpu, p).ok());
  // Rejected before any launch.
  device_vector<i64> off(9);
  device_vector<moe::bf16> x(16 * 12), w(8 * 16 * 12), y(16 * 16);
  s = moe::grouped_gemm(gpu, moe::grouped_gemm_args<bf>{.experts = 8, .rows = 16, .n = 16,
                                                                .k = 12, .offsets = off.data(),
                                                                .x = x.data(), .w = w.data(),
                                                                .y = y.data()});
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::string(s.message()).find("grouped_gemm_args.k") != std::string::npos);
}

// ---- the expert FFN ----------------------------------------------------------------------------

template <moe::config C>
void test_ffn(std::mt19937_64& gen, std::uint64_t seed, activation act, i64 experts, i64 H,
              i64 F, i64 big) {
  using X = moe::act_t<C>;
  using A = moe::accum_t<C>;
  using moe::ffn_recompute;
  CAPTURE(std::string(moe::to_string(act)));
  constexpr double ux = unit_roundoff<X>(), ua = unit_roundoff<A>();
  i64 M = 0;
  std::vector<i64> off = ragged_offsets(gen, experts, big, &M);
  bool const gated = moe::is_gated(act);
  i64 const E = experts, FW = gated ? 2 * F : F;
  std::vector<X> x = random_tensor<X>(gen, M * H), w1 = random_tensor<X>(gen, E * FW * H, -0.5, 0.5),
                 b1 = random_tensor<X>(gen, E * FW), w2 = random_tensor<X>(gen, E * H * F, -0.5, 0.5),
                 b2 = random_tensor<X>(gen, E * H), dy = random_tensor<X>(gen, M * H),
                 y0 = random_tensor<X>(gen, M * std::max(FW, H), 7.0, 8.0);  // sentinels
  std::vector<A> dw1_0 = random_tensor<A>(gen, E * FW * H), db1_0 = random_tensor<A>(gen, E * FW),
                 dw2_0 = random_tensor<A>(gen, E * H * F), db2_0 = random_tensor<A>(gen, E * H);
  auto head = [&](std::vector<X> const& v, i64 n) { return std::vector<X>(v.begin(), v.begin() + n); };

  // ---- forward: CUDA vs host (recompute = none keeps pre and h)
  std::vector<X> y_ref = head(y0, M * H), pre_ref = head(y0, M * FW), h_ref = head(y0, M * F);
  auto fargs = [&](i64 const* o, X const* px, X const* pw1, X const* pb1, X const* pw2,
                   X const* pb2, ffn_recompute r, X* py, X* ppre, X* ph) {
    return moe::expert_ffn_args<C>{.experts = E, .rows = M, .hidden = H, .ffn = F, .offsets = o,
                                   .x = px, .w1 = pw1, .b1 = pb1, .w2 = pw2, .b2 = pb2,
                                   .act = act, .recompute = r, .y = py, .pre = ppre, .h = ph};
  };
  MOE_REQUIRE_OK(moe::expert_ffn(moe::host, fargs(off.data(), x.data(), w1.data(), b1.data(),
                                                  w2.data(), b2.data(), ffn_recompute::none,
                                                  y_ref.data(), pre_ref.data(), h_ref.data())));
  dev<i64> d_off(off);
  dev<X> d_x(x), d_w1(w1), d_b1(b1), d_w2(w2), d_b2(b2), d_dy(dy);
  dev<X> d_y(head(y0, M * H)), d_pre(head(y0, M * FW)), d_h(head(y0, M * F));
  MOE_REQUIRE_OK(moe::expert_ffn(gpu, fargs(d_off.p(), d_x.p(), d_w1.p(), d_b1.p(), d_w2.p(),
                                            d_b2.p(), ffn_recompute::none, d_y.p(), d_pre.p(),
                                            d_h.p())));
  sync();
  std::vector<X> y_c = d_y.get(at(M * H)), pre_c = d_pre.get(at(M * FW)), h_c = d_h.get(at(M * F));
  {
    // S of the first GEMM (|x|, |w1|, |b1|) and of the second on |h| + |g|(1 + |u|).
    std::vector<X> ax = abs_of(x), aw1 = abs_of(w1), ab1 = abs_of(b1), aw2 = abs_of(w2),
                   ab2 = abs_of(b2), s1(at(M * FW)), s2(at(M * H)), hmag(at(M * F));
    MOE_REQUIRE_OK(moe::grouped_gemm(
        moe::host, moe::grouped_gemm_args<C>{.experts = E, .rows = M, .n = FW, .k = H,
                                             .offsets = off.data(), .x = ax.data(),
                                             .w = aw1.data(), .bias = ab1.data(),
                                             .y = s1.data()}));
    for (i64 m = 0; m < M; ++m)
      for (i64 j = 0; j < F; ++j) {
        double const g = std::fabs(val(pre_ref[at(m * FW + j)]));
        double const u = gated ? std::fabs(val(pre_ref[at(m * FW + F + j)])) : 0.0;
        hmag[at(m * F + j)] =
            moe::test::stored<X>(std::fabs(val(h_ref[at(m * F + j)])) + g * (1 + u));
      }
    MOE_REQUIRE_OK(moe::grouped_gemm(
        moe::host, moe::grouped_gemm_args<C>{.experts = E, .rows = M, .n = H, .k = F,
                                             .offsets = off.data(), .x = hmag.data(),
                                             .w = aw2.data(), .bias = ab2.data(),
                                             .y = s2.data()}));
    std::vector<double> tp(pre_ref.size()), th(h_ref.size()), ty(y_ref.size());
    for (std::size_t i = 0; i < tp.size(); ++i)
      tp[i] = 2 * ux * std::fabs(val(pre_ref[i])) + 2.0 * static_cast<double>(H + 2) * ua * val(s1[i]);
    for (i64 m = 0; m < M; ++m)
      for (i64 j = 0; j < F; ++j) {
        double const g = std::fabs(val(pre_ref[at(m * FW + j)]));
        double const u = gated ? std::fabs(val(pre_ref[at(m * FW + F + j)])) : 0.0;
        double const eg = tp[at(m * FW + j)], eu = gated ? tp[at(m * FW + F + j)] : 0.0;
        th[at(m * F + j)] = 2 * ux * std::fabs(val(h_ref[at(m * F + j)])) +
                            1.25 * eg * (1 + u + eu) + (1.25 * g + 1) * eu +
                            32 * ua * (1 + g) * (1 + u);
      }
    for (std::size_t i = 0; i < ty.size(); ++i)
      ty[i] = 2 * ux * std::fabs(val(y_ref[i])) +
              (8 * ux + 2.0 * static_cast<double>(F + 2) * ua) * val(s2[i]);
    expect_close("ffn pre", pre_c, pre_ref, tp, seed);
    expect_close("ffn h", h_c, h_ref, th, seed);
    expect_close("ffn y", y_c, y_ref, ty, seed);
  }

  // ---- backward: CUDA vs host, both from the host forward's pre and h (recompute = none)
  auto bargs = [&](i64 const* o, X const* px, X const* pw1, X const* pb1, X const* pw2,
                   ffn_recompute r, X const* pdy, X* ppre, X* ph, X* pdpre, X* pdx, A* dw1, A* db1,
                   A* dw2, A* db2) {
    return moe::expert_ffn_backward_args<C>{
        .experts = E, .rows = M, .hidden = H, .ffn = F, .offsets = o, .x = px, .w1 = pw1,
        .b1 = pb1, .w2 = pw2, .act = act, .recompute = r, .dy = pdy, .pre = ppre, .h = ph,
        .d_pre = pdpre, .dx = pdx, .dw1 = dw1, .db1 = db1, .dw2 = dw2, .db2 = db2};
  };
  std::vector<X> dpre_ref = head(y0, M * FW), dx_ref = head(y0, M * H);
  std::vector<A> dw1_ref = dw1_0, db1_ref = db1_0, dw2_ref = dw2_0, db2_ref = db2_0;
  {
    std::vector<X> pre_h = pre_ref, h_h = h_ref;
    MOE_REQUIRE_OK(moe::expert_ffn_backward(
        moe::host, bargs(off.data(), x.data(), w1.data(), b1.data(), w2.data(), ffn_recompute::none,
                         dy.data(), pre_h.data(), h_h.data(), dpre_ref.data(), dx_ref.data(),
                         dw1_ref.data(), db1_ref.data(), dw2_ref.data(), db2_ref.data())));
  }
  {
    dev<X> d_preh(pre_ref), d_hh(h_ref), d_dpre(head(y0, M * FW)), d_dx(head(y0, M * H));
    dev<A> d_dw1(dw1_0), d_db1(db1_0), d_dw2(dw2_0), d_db2(db2_0);
    MOE_REQUIRE_OK(moe::expert_ffn_backward(
        gpu, bargs(d_off.p(), d_x.p(), d_w1.p(), d_b1.p(), d_w2.p(), ffn_recompute::none,
                   d_dy.p(), d_preh.p(), d_hh.p(), d_dpre.p(), d_dx.p(), d_dw1.p(), d_db1.p(),
                   d_dw2.p(), d_db2.p())));
    sync();
    // Bounds on |·| inputs: d pre from |dy|·|w2| (dgrad), dW2 from |dy|ᵀ|h|, dW1 and dx from
    // |d pre| (its rounding differences enter both).
    std::vector<X> ady = abs_of(dy), aw2 = abs_of(w2), ah = abs_of(h_ref), adp = abs_of(dpre_ref),
                   ax = abs_of(x), aw1 = abs_of(w1), sdp(at(M * F)), sdx(at(M * H));
    std::vector<A> sw2(dw2_0.size()), sb2(db2_0.size()), sw1(dw1_0.size()), sb1(db1_0.size());
    MOE_REQUIRE_OK(moe::grouped_gemm_dgrad(
        moe::host, moe::grouped_gemm_dgrad_args<C>{.experts = E, .rows = M, .n = H, .k = F,
                                                   .offsets = off.data(), .dy = ady.data(),
                                                   .w = aw2.data(), .dx = sdp.data()}));
    MOE_REQUIRE_OK(moe::grouped_gemm_wgrad(
        moe::host, moe::grouped_gemm_wgrad_args<C>{.experts = E, .rows = M, .n = H, .k = F,
                                                   .offsets = off.data(), .x = ah.data(),
                                                   .dy = ady.data(), .dw = sw2.data(),
                                                   .d_bias = sb2.data()}));
    MOE_REQUIRE_OK(moe::grouped_gemm_wgrad(
        moe::host, moe::grouped_gemm_wgrad_args<C>{.experts = E, .rows = M, .n = FW, .k = H,
                                                   .offsets = off.data(), .x = ax.data(),
                                                   .dy = adp.data(), .dw = sw1.data(),
                                                   .d_bias = sb1.data()}));
    MOE_REQUIRE_OK(moe::grouped_gemm_dgrad(
        moe::host, moe::grouped_gemm_dgrad_args<C>{.experts = E, .rows = M, .n = FW, .k = H,
                                                   .offsets = off.data(), .dy = adp.data(),
                                                   .w = aw1.data(), .dx = sdx.data()}));
    std::vector<double> tdp(dpre_ref.size()), tdx(dx_ref.size());
    for (i64 m = 0; m < M; ++m)
      for (i64 j = 0; j < FW; ++j) {
        i64 const jj = j % F;
        double const g = std::fabs(val(pre_ref[at(m * FW + jj)]));
        double const u = gated ? std::fabs(val(pre_ref[at(m * FW + F + jj)])) : 0.0;
        double const sj = val(sdp[at(m * F + jj)]);
        tdp[at(m * FW + j)] = 2 * ux * std::fabs(val(dpre_ref[at(m * FW + j)])) +
                              (2 + 1.25 * g + 1.25 * u) *
                                  (2.0 * static_cast<double>(H + 2) * ua * sj +
                                   32 * ua * sj * (1 + g) * (1 + u));
      }
    for (std::size_t i = 0; i < tdx.size(); ++i)
      tdx[i] = 2 * ux * std::fabs(val(dx_ref[i])) +
               (8 * ux + 2.0 * static_cast<double>(FW + 2) * ua) * val(sdx[i]);
    auto wtol = [&](std::vector<A> const& s, std::vector<A> const& init, std::vector<A> const& ref,
                    double rel) {
      std::vector<double> t(s.size());
      for (std::size_t i = 0; i < t.size(); ++i)
        t[i] = (rel + 2.0 * static_cast<double>(M + 2) * ua) * val(s[i]) +
               2 * ua * (std::fabs(val(init[i])) + std::fabs(val(ref[i])));
      return t;
    };
    expect_close("ffn d_pre", d_dpre.get(dpre_ref.size()), dpre_ref, tdp, seed);
    expect_close("ffn dx", d_dx.get(dx_ref.size()), dx_ref, tdx, seed);
    expect_close("ffn dw2", d_dw2.get(dw2_ref.size()), dw2_ref, wtol(sw2, dw2_0, dw2_ref, 0), seed);
    expect_close("ffn db2", d_db2.get(db2_ref.size()), db2_ref, wtol(sb2, db2_0, db2_ref, 0), seed);
    expect_close("ffn dw1", d_dw1.get(dw1_ref.size()), dw1_ref, wtol(sw1, dw1_0, dw1_ref, 8 * ux),
                 seed);
    expect_close("ffn db1", d_db1.get(db1_ref.size()), db1_ref, wtol(sb1, db1_0, db1_ref, 8 * ux),
                 seed);
  }

  // ---- the three recompute modes on CUDA: the same bits (forward y and every gradient)
  std::vector<X> ys[3], dxs[3];
  std::vector<A> grads[3];
  ffn_recompute const modes[] = {ffn_recompute::none, ffn_recompute::activation,
                                 ffn_recompute::fc1};
  for (int r = 0; r < 3; ++r) {
    dev<X> f_y(head(y0, M * H)), f_pre(head(y0, M * FW)), f_h(head(y0, M * F)),
        f_dpre(head(y0, M * FW)), f_dx(head(y0, M * H));
    dev<A> f_dw1(dw1_0), f_db1(db1_0), f_dw2(dw2_0), f_db2(db2_0);
    MOE_REQUIRE_OK(moe::expert_ffn(gpu, fargs(d_off.p(), d_x.p(), d_w1.p(), d_b1.p(), d_w2.p(),
                                              d_b2.p(), modes[r], f_y.p(), f_pre.p(), f_h.p())));
    if (modes[r] != ffn_recompute::none) {  // h is scratch: spoil it
      MOE_REQUIRE_CUDA(cudaMemsetAsync(f_h.p(), 0x7f, at(M * F) * sizeof(X), stream));
    }
    if (modes[r] == ffn_recompute::fc1) {  // pre is scratch too
      MOE_REQUIRE_CUDA(cudaMemsetAsync(f_pre.p(), 0x7f, at(M * FW) * sizeof(X), stream));
    }
    MOE_REQUIRE_OK(moe::expert_ffn_backward(
        gpu, bargs(d_off.p(), d_x.p(), d_w1.p(), d_b1.p(), d_w2.p(), modes[r], d_dy.p(), f_pre.p(),
                   f_h.p(), f_dpre.p(), f_dx.p(), f_dw1.p(), f_db1.p(), f_dw2.p(), f_db2.p())));
    sync();
    ys[r] = f_y.get(at(M * H));
    dxs[r] = f_dx.get(at(M * H));
    for (auto* g : {&f_dw1, &f_db1, &f_dw2, &f_db2}) {
      std::vector<A> v = g->d.download();
      grads[r].insert(grads[r].end(), v.begin(), v.end());
    }
  }
  for (int r = 1; r < 3; ++r) {
    CAPTURE(std::string(moe::to_string(modes[r])));
    CHECK(same_bits(ys[0], ys[r]));
    CHECK(same_bits(dxs[0], dxs[r]));
    CHECK(same_bits(grads[0], grads[r]));
  }
}

TEST_CASE("expert FFN (CUDA): forward and backward against the host, recompute modes equal") {
  std::uint64_t const seed = fresh_seed();
  CAPTURE(seed);
  std::mt19937_64 gen(seed);
  test_ffn<moe::configs::top2_bf16>(gen, seed, activation::gelu, 5, 136, 88, 300);
  test_ffn<moe::configs::fine_bf16>(gen, seed, activation::swiglu, 12, 64, 40, 200);
  test_ffn<moe::configs::top2_fp32>(gen, seed, activation::geglu, 5, 45, 29, 150);
  test_ffn<moe::configs::top2_fp64>(gen, seed, activation::silu, 4, 21, 17, 90);
}

}  // namespace
