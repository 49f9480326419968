// SPDX-License-Identifier: Apache-2.0
// router_gemm and router_gemm_backward on the GPU against the host backend, for every compiled
// config (E = 4, 8, 64; fp32, bf16 and fp64), ragged H (1, 13, 100, 257, 2100) and T (0 … 5000,
// so wgrad runs both in one pass and split over T into the workspace, and the forward both in
// one pass and split over H — up to 15 chunks, the last one short), jitter off, from Philox,
// from the caller's tensor, and in evaluation. Tolerances:
//   - small-integer inputs (every product and sum exact in the accumulation type): logits, dx
//     and dW_g bitwise equal to the host's;
//   - random inputs: |device − host| <= 2·(n + 1)·u·Σ|terms|, the standard bound on the error
//     of an n-term sum in any order (u = 2⁻²⁴ for fp32 accumulation, 2⁻⁵³ for fp64), doubled
//     because both sides err; for dx stored in bf16 plus one bf16 rounding step (2⁻⁷·|host|);
//   - the device's Philox jitter equals the caller's tensor holding the same multipliers, bit
//     for bit; two device runs give the same bits.
#include <cmath>        // std::fabs, std::ldexp
#include <cstdint>      // std::int64_t, std::uint64_t
#include <cstring>      // std::memcmp
#include <random>       // std::mt19937_64
#include <string>       // std::string
#include <type_traits>  // std::is_same_v
#include <vector>       // std::vector

#include "common.cuh"
#include "../host/common.hpp"  // same_bits
#include "moe/configs.hpp"
#include "moe/cuda/router_gemm.cuh"

namespace {

using moe::test::same_bits;

enum class jitter_mode { off, philox, caller, eval };

char const* name(jitter_mode j) {
  switch (j) {
    case jitter_mode::off:
      return "off";
    case jitter_mode::philox:
      return "philox";
    case jitter_mode::caller:
      return "caller";
    case jitter_mode::eval:
      return "eval";
  }
  return "?";
}

template <class T>
double val(T v) {
  return static_cast<double>(moe::to_float(v));
}

/// Everything one comparison needs: inputs, and the host's and the device's outputs.
template <moe::config C>
struct gemm_run {
  using X = moe::act_t<C>;
  using W = moe::weight_t<C>;
  using A = moe::accum_t<C>;
  moe::problem p;
  moe::router_jitter jitter;
  std::vector<X> x;
  std::vector<W> w;
  std::vector<A> dl, dw0;
  std::vector<float> u;  // caller's multipliers (jitter_mode::caller)
  std::vector<A> logits, dw;
  std::vector<X> dx;
};

template <moe::config C>
gemm_run<C> make_run(std::int64_t T, std::int64_t H, jitter_mode jm, bool exact,
                     std::uint64_t seed) {
  using R = gemm_run<C>;
  constexpr std::int64_t E = C.experts;
  R r;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> small(-2, 2);
  std::uniform_real_distribution<float> mult(0.9f, 1.1f);
  auto const draw = [&](float scale) {
    return exact ? static_cast<float>(small(rng)) * scale : normal(rng) * scale;
  };
  r.x.resize(static_cast<std::size_t>(T * H));
  r.w.resize(static_cast<std::size_t>(H * E));
  r.dl.resize(static_cast<std::size_t>(T * E));
  r.dw0.resize(static_cast<std::size_t>(H * E));
  for (auto& v : r.x) v = moe::from_float<typename R::X>(draw(1.0f));
  for (auto& v : r.w) v = moe::from_float<typename R::W>(draw(1.0f));
  for (auto& v : r.dl) v = static_cast<typename R::A>(draw(1.0f));
  for (auto& v : r.dw0) v = static_cast<typename R::A>(draw(2.0f));
  r.p.tokens = T;
  r.p.hidden = H;
  r.p.training = jm != jitter_mode::eval;
  r.p.seed = seed * 0x9e3779b97f4a7c15ULL + 1;
  if (jm != jitter_mode::off) {
    r.jitter.eps = 0.1f;
    r.jitter.offset = 1000 + seed;
  }
  if (jm == jitter_mode::caller) {
    r.u.resize(static_cast<std::size_t>(T * H));
    for (float& v : r.u) v = mult(rng);
  }
  return r;
}

template <moe::config C>
void run_host(gemm_run<C>& r) {
  constexpr std::int64_t E = C.experts;
  moe::router_jitter j = r.jitter;
  j.u = r.u.empty() ? nullptr : r.u.data();
  r.logits.assign(static_cast<std::size_t>(r.p.tokens * E), {});
  r.dx.assign(r.x.size(), {});
  r.dw = r.dw0;
  MOE_REQUIRE_OK(moe::router_gemm(
      moe::host, r.p, moe::router_gemm_args<C>{r.x.data(), r.w.data(), r.logits.data(), j}));
  MOE_REQUIRE_OK(moe::router_gemm_backward(
      moe::host, r.p,
      moe::router_gemm_backward_args<C>{r.x.data(), r.w.data(), r.dl.data(), r.dx.data(),
                                        r.dw.data(), j}));
}

/// The device's outputs for r's inputs; `u` overrides the caller's multipliers when non-empty.
template <moe::config C>
gemm_run<C> run_device(gemm_run<C> const& r, std::vector<float> const& u) {
  using R = gemm_run<C>;
  constexpr std::int64_t E = C.experts;
  std::int64_t const T = r.p.tokens;
  moe::test::device_vector<typename R::X> x(r.x.size()), dx(r.x.size());
  moe::test::device_vector<typename R::W> w(r.w.size());
  moe::test::device_vector<typename R::A> dl(r.dl.size()), dw(r.dw0.size()),
      logits(static_cast<std::size_t>(T * E));
  moe::test::device_vector<float> du(u.size());
  if (!r.x.empty()) x.upload(r.x);
  w.upload(r.w);
  if (!r.dl.empty()) dl.upload(r.dl);
  dw.upload(r.dw0);
  if (!u.empty()) du.upload(u);
  moe::router_jitter j = r.jitter;
  j.u = u.empty() ? nullptr : du.data();
  std::size_t const fwd_bytes = moe::router_gemm_workspace_bytes<C>(r.p);
  std::size_t const bwd_bytes = moe::router_gemm_backward_workspace_bytes<C>(r.p);
  std::size_t const ws_bytes = fwd_bytes > bwd_bytes ? fwd_bytes : bwd_bytes;
  moe::test::device_vector<unsigned char> ws(ws_bytes);
  MOE_REQUIRE_OK(moe::router_gemm(moe::cuda_on(nullptr, ws.data(), ws_bytes), r.p,
                                  moe::router_gemm_args<C>{x.data(), w.data(), logits.data(), j}));
  MOE_REQUIRE_OK(moe::router_gemm_backward(
      moe::cuda_on(nullptr, ws.data(), ws_bytes), r.p,
      moe::router_gemm_backward_args<C>{x.data(), w.data(), dl.data(), dx.data(), dw.data(), j}));
  MOE_REQUIRE_CUDA(cudaDeviceSynchronize());
  R d;
  if (T > 0) {
    d.logits = logits.download();
    d.dx = dx.download();
  }
  d.dw = dw.download();
  return d;
}

/// Worst |device − host| / bound over the elements (<= 1 passes).
template <class T>
double worst_ratio(std::vector<T> const& dev, std::vector<T> const& host,
                   std::vector<double> const& bound) {
  double worst = 0.0;
  for (std::size_t i = 0; i < dev.size(); ++i) {
    double const r = std::fabs(val(dev[i]) - val(host[i])) / (bound[i] + 1e-300);
    worst = r > worst ? r : worst;
  }
  return worst;
}

template <moe::config C>
void compare(std::int64_t T, std::int64_t H, jitter_mode jm, bool exact, std::uint64_t seed) {
  using R = gemm_run<C>;
  constexpr std::int64_t E = C.experts;
  constexpr bool fp64 = std::is_same_v<typename R::A, double>;
  constexpr bool bf16_act = std::is_same_v<typename R::X, moe::bf16>;
  double const u = fp64 ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
  INFO("E " << E << " T " << T << " H " << H << " jitter " << name(jm) << " exact " << exact
            << " seed " << seed);
  gemm_run<C> r = make_run<C>(T, H, jm, exact, seed);
  run_host(r);
  gemm_run<C> const d = run_device(r, r.u);
  gemm_run<C> const again = run_device(r, r.u);
  CHECK(same_bits(d.logits, again.logits));  // deterministic
  CHECK(same_bits(d.dx, again.dx));
  CHECK(same_bits(d.dw, again.dw));
  if (T == 0) {
    CHECK(same_bits(d.dw, r.dw0));  // untouched
    return;
  }
  if (exact) {
    CHECK(same_bits(d.logits, r.logits));
    CHECK(same_bits(d.dx, r.dx));
    CHECK(same_bits(d.dw, r.dw));
    return;
  }
  double const jit = jm == jitter_mode::off || jm == jitter_mode::eval ? 1.0 : 1.1;  // |u| <= 1.1
  std::vector<double> b_logits(r.logits.size()), b_dx(r.dx.size()), b_dw(r.dw.size());
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t e = 0; e < E; ++e) {
      double m = 0.0;
      for (std::int64_t h = 0; h < H; ++h)
        m += std::fabs(val(r.x[t * H + h])) * jit * std::fabs(val(r.w[h * E + e]));
      b_logits[t * E + e] = 2.0 * static_cast<double>(H + 1) * u * m;
    }
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < H; ++h) {
      double m = 0.0;
      for (std::int64_t e = 0; e < E; ++e)
        m += std::fabs(val(r.dl[t * E + e])) * std::fabs(val(r.w[h * E + e]));
      double b = 2.0 * static_cast<double>(E + 2) * u * m * jit;
      if (bf16_act) b += std::ldexp(std::fabs(val(r.dx[t * H + h])), -7);
      b_dx[t * H + h] = b;
    }
  for (std::int64_t h = 0; h < H; ++h)
    for (std::int64_t e = 0; e < E; ++e) {
      double m = std::fabs(val(r.dw0[h * E + e]));
      for (std::int64_t t = 0; t < T; ++t)
        m += std::fabs(val(r.x[t * H + h])) * jit * std::fabs(val(r.dl[t * E + e]));
      b_dw[h * E + e] = 2.0 * static_cast<double>(T + 2) * u * m;
    }
  CHECK(worst_ratio(d.logits, r.logits, b_logits) <= 1.0);
  CHECK(worst_ratio(d.dx, r.dx, b_dx) <= 1.0);
  CHECK(worst_ratio(d.dw, r.dw, b_dw) <= 1.0);

  if (jm == jitter_mode::philox) {  // the device's Philox multipliers are the documented ones
    std::vector<float> mult(static_cast<std::size_t>(T * H));
    for (std::int64_t i = 0; i < T * H; ++i)
      mult[static_cast<std::size_t>(i)] = moe::jitter_multiplier(
          r.jitter.eps, moe::uniform(r.p.seed, r.jitter.offset + static_cast<std::uint64_t>(i)));
    gemm_run<C> const c = run_device(r, mult);
    CHECK(same_bits(d.logits, c.logits));
    CHECK(same_bits(d.dx, c.dx));
    CHECK(same_bits(d.dw, c.dw));
  }
}

template <moe::config C>
void sweep(std::uint64_t seed) {
  compare<C>(0, 13, jitter_mode::off, false, seed++);
  for (auto [T, H] :
       {std::pair<std::int64_t, std::int64_t>{1, 1}, {37, 13}, {300, 100}, {5000, 257},
        {64, 2100}})
    compare<C>(T, H, jitter_mode::off, true, seed++);
  for (jitter_mode jm :
       {jitter_mode::off, jitter_mode::philox, jitter_mode::caller, jitter_mode::eval})
    for (auto [T, H] : {std::pair<std::int64_t, std::int64_t>{37, 13}, {300, 257}, {5000, 100}})
      compare<C>(T, H, jm, false, seed++);
}

}  // namespace

TEST_CASE("router_gemm(cuda) == router_gemm(host): every compiled config") {
  if (moe::backend::cuda::device_count() == 0) return;
  std::uint64_t seed = 100;
  moe::compiled_configs::for_each([&]<moe::config C>() {
    sweep<C>(seed);
    seed += 100;
  });
}

TEST_CASE("router_gemm(cuda): T = 0, bad arguments and a short workspace come back as a status") {
  constexpr moe::config c = moe::configs::top2_fp32;
  moe::problem p;
  p.tokens = 0;
  p.hidden = 16;
  CHECK(moe::router_gemm(moe::cuda_on(nullptr), p, moe::router_gemm_args<c>{}).ok());
  CHECK(moe::router_gemm_backward(moe::cuda_on(nullptr), p, moe::router_gemm_backward_args<c>{})
            .ok());
  CHECK(moe::router_gemm_backward_workspace_bytes<c>(p) == 0);
  CHECK(moe::router_gemm_workspace_bytes<c>(p) == 0);
  p.tokens = 4;
  moe::status const s = moe::router_gemm(moe::cuda_on(nullptr), p, moe::router_gemm_args<c>{});
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::string(s.message()) == "router_gemm_args.x: expected non-null");
  p.hidden = 0;
  CHECK(std::string(
            moe::router_gemm(moe::cuda_on(nullptr), p, moe::router_gemm_args<c>{}).message()) ==
        "problem.hidden: expected H >= 1, got 0");
  // T = 37, H = 1000, E = 8: one output tile, so the forward splits H into 8 chunks of 128.
  p.tokens = 37;
  p.hidden = 1000;
  CHECK(moe::router_gemm_workspace_bytes<c>(p) == 8u * 37u * 8u * sizeof(float));
  {
    static float fx[37 * 1000], fw[1000 * 8], logits[37 * 8];
    moe::status const fs = moe::router_gemm(moe::cuda_on(nullptr, nullptr, 0), p,
                                            moe::router_gemm_args<c>{fx, fw, logits, {}});
    CHECK(fs.code() == moe::errc::workspace_too_small);
    CHECK(std::string(fs.message()) ==
          "cuda_policy.workspace_bytes: router_gemm needs 9472 bytes "
          "(router_gemm_workspace_bytes), got 0");
  }
  // T = 5000, H = 100, E = 8: wgrad splits T into 16 chunks of 313 tokens, so it needs a
  // workspace; the forward, 20 tiles over one chunk of H = 100, does not.
  p.tokens = 5000;
  p.hidden = 100;
  CHECK(moe::router_gemm_workspace_bytes<c>(p) == 0);
  std::size_t const need = moe::router_gemm_backward_workspace_bytes<c>(p);
  CHECK(need == 16u * 100u * 8u * sizeof(float));
  static float x[5000 * 100], w[100 * 8], dl[5000 * 8], dx[5000 * 100], dw[100 * 8];
  moe::status const ws =
      moe::router_gemm_backward(moe::cuda_on(nullptr, nullptr, 0), p,
                                moe::router_gemm_backward_args<c>{x, w, dl, dx, dw, {}});
  CHECK(ws.code() == moe::errc::workspace_too_small);
}
