// SPDX-License-Identifier: Apache-2.0
// Fuzz target: the host grouped GEMM (forward, dgrad, wgrad) in fp64. The fuzzer picks the
// shapes (experts, rows, n, k — some zero or negative), the offsets (often non-monotone or out
// of range), the activation (some not an enumerator), which pointers are null and every value.
// Each call must return a status with a message, or results equal to float64 loops written
// here to 1e-12 of Σ|a·b| (identity and relu epilogues; other activations must stay finite).
// Buffers are exactly the claimed sizes, so AddressSanitizer catches any access outside them.
#include <cmath>    // std::abs, std::isfinite
#include <cstdint>  // std::int64_t
#include <vector>   // std::vector

#include "fuzz.hpp"
#include "moe/configs.hpp"       // moe::configs::top2_fp64
#include "moe/grouped_gemm.hpp"  // the op under test

namespace {
using moe::fuzz::reader;
using sz = std::size_t;
sz at(std::int64_t i) {
  return static_cast<sz>(i > 0 ? i : 0);
}
constexpr moe::config C = moe::configs::top2_fp64;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  reader in(data, size);
  std::int64_t const E = in.range(-1, 4), M = in.range(-1, 9), N = in.range(-1, 5),
                     Kd = in.range(-1, 5);
  std::uint8_t const actb = in.byte();
  auto const act = static_cast<moe::activation>(actb % 9);  // a few past the last enumerator
  bool const gated = moe::is_valid_activation(act) && moe::is_gated(act);
  std::int64_t const nw = gated ? 2 * N : N;
  std::uint8_t const nulls = in.byte() < 32 ? in.byte() : 0;
  // Offsets: usually valid (monotone, within rows), sometimes raw.
  std::vector<std::int64_t> off(at(E) + 1);
  bool const raw = in.byte() < 48;
  for (sz e = 0; e < off.size(); ++e)
    off[e] = raw ? in.range(-2, M + 2) : (e == 0 ? in.range(0, 1) : off[e - 1] + in.range(0, 3));
  if (!raw && !off.empty() && off.back() > M) off.back() = M;
  std::vector<double> x(at(M * Kd)), w(at(E * nw * Kd)), b(at(E * nw)), y(at(M * N), -9.0),
      pre(at(M * nw), -9.0), dy(at(M * nw)), dx(at(M * Kd), -9.0), dw(at(E * nw * Kd), -9.0),
      db(at(E * nw), -9.0);
  for (auto* v : {&x, &w, &b, &dy})
    for (auto& e : *v) e = static_cast<double>(in.range(-16, 16)) / 8.0;
  auto ptr = [&](std::vector<double>& v, int bit) { return nulls >> bit & 1 ? nullptr : v.data(); };

  // Forward.
  moe::status const f = moe::grouped_gemm(
      moe::host, moe::grouped_gemm_args<C>{.experts = E,
                                           .rows = M,
                                           .n = N,
                                           .k = Kd,
                                           .offsets = nulls & 128 ? nullptr : off.data(),
                                           .x = ptr(x, 0),
                                           .w = ptr(w, 1),
                                           .bias = ptr(b, 2),
                                           .act = act,
                                           .y = ptr(y, 3),
                                           .pre = ptr(pre, 4)});
  bool const off_ok = !(nulls & 128) && E >= 1 && off[0] >= 0 && [&] {
    for (sz e = 1; e < off.size(); ++e)
      if (off[e] < off[e - 1]) return false;
    return off.back() <= M;
  }();
  if (!f.ok()) {
    FUZZ_CHECK(f.message()[0] != '\0', "an error without a message");
  } else {
    FUZZ_CHECK(off_ok && moe::is_valid_activation(act), "forward accepted bad offsets/act: E=%lld",
               static_cast<long long>(E));
    bool const exact = act == moe::activation::identity || act == moe::activation::relu;
    for (std::int64_t e = 0; e < E; ++e)
      for (std::int64_t m = off[at(e)]; m < off[at(e) + 1]; ++m)
        for (std::int64_t j = 0; j < N; ++j) {
          double s = b.empty() || (nulls & 4) ? 0.0 : b[at(e * nw + j)], mag = std::abs(s);
          for (std::int64_t k = 0; k < Kd; ++k) {
            s += x[at(m * Kd + k)] * w[at((e * nw + j) * Kd + k)];
            mag += std::abs(x[at(m * Kd + k)] * w[at((e * nw + j) * Kd + k)]);
          }
          double const got = y[at(m * N + j)];
          FUZZ_CHECK(std::isfinite(got), "y[%lld, %lld] = %g", static_cast<long long>(m),
                     static_cast<long long>(j), got);
          if (exact) {
            double const want = act == moe::activation::relu && s < 0 ? 0.0 : s;
            FUZZ_CHECK(std::abs(got - want) <= 1e-12 * (1 + mag),
                       "y[%lld, %lld] = %.17g, want %.17g", static_cast<long long>(m),
                       static_cast<long long>(j), got, want);
          }
        }
  }

  // dgrad (identity): dx = dy · W_e over the forward's n_w = N rows.
  moe::status const d = moe::grouped_gemm_dgrad(
      moe::host, moe::grouped_gemm_dgrad_args<C>{.experts = E,
                                                 .rows = M,
                                                 .n = nw,
                                                 .k = Kd,
                                                 .offsets = nulls & 128 ? nullptr : off.data(),
                                                 .dy = ptr(dy, 5),
                                                 .w = ptr(w, 1),
                                                 .dx = ptr(dx, 6)});
  if (!d.ok()) {
    FUZZ_CHECK(d.message()[0] != '\0', "an error without a message");
  } else {
    FUZZ_CHECK(off_ok, "dgrad accepted bad offsets");
    for (std::int64_t e = 0; e < E; ++e)
      for (std::int64_t m = off[at(e)]; m < off[at(e) + 1]; ++m)
        for (std::int64_t k = 0; k < Kd; ++k) {
          double s = 0, mag = 0;
          for (std::int64_t j = 0; j < nw; ++j) {
            s += dy[at(m * nw + j)] * w[at((e * nw + j) * Kd + k)];
            mag += std::abs(dy[at(m * nw + j)] * w[at((e * nw + j) * Kd + k)]);
          }
          FUZZ_CHECK(std::abs(dx[at(m * Kd + k)] - s) <= 1e-12 * (1 + mag), "dx[%lld, %lld]",
                     static_cast<long long>(m), static_cast<long long>(k));
        }
  }

  // wgrad: dW_e = dY_eᵀ X_e, db_e = Σ dY_e (overwritten).
  moe::status const g = moe::grouped_gemm_wgrad(
      moe::host, moe::grouped_gemm_wgrad_args<C>{.experts = E,
                                                 .rows = M,
                                                 .n = nw,
                                                 .k = Kd,
                                                 .offsets = nulls & 128 ? nullptr : off.data(),
                                                 .x = ptr(x, 0),
                                                 .dy = ptr(dy, 5),
                                                 .dw = ptr(dw, 7),
                                                 .d_bias = db.data()});
  if (!g.ok()) {
    FUZZ_CHECK(g.message()[0] != '\0', "an error without a message");
  } else {
    FUZZ_CHECK(off_ok, "wgrad accepted bad offsets");
    for (std::int64_t e = 0; e < E; ++e)
      for (std::int64_t j = 0; j < nw; ++j) {
        double sb = 0;
        for (std::int64_t m = off[at(e)]; m < off[at(e) + 1]; ++m) sb += dy[at(m * nw + j)];
        FUZZ_CHECK(std::abs(db[at(e * nw + j)] - sb) <= 1e-12 * (1 + std::abs(sb) + 16.0 * M),
                   "db[%lld, %lld]", static_cast<long long>(e), static_cast<long long>(j));
        for (std::int64_t k = 0; k < Kd; ++k) {
          double s = 0, mag = 0;
          for (std::int64_t m = off[at(e)]; m < off[at(e) + 1]; ++m) {
            s += dy[at(m * nw + j)] * x[at(m * Kd + k)];
            mag += std::abs(dy[at(m * nw + j)] * x[at(m * Kd + k)]);
          }
          FUZZ_CHECK(std::abs(dw[at((e * nw + j) * Kd + k)] - s) <= 1e-12 * (1 + mag),
                     "dw[%lld, %lld, %lld]", static_cast<long long>(e), static_cast<long long>(j),
                     static_cast<long long>(k));
        }
      }
  }
  return 0;
}
