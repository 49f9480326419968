// SPDX-License-Identifier: Apache-2.0
// Fuzz target: the host router (route, route_backward). The fuzzer picks a config (the compiled
// list, DeepSpeed's three modes, group-limited sigmoid routing, E = 1024 with K = 32), the
// problem (T, training, min_capacity, seed, loss coefficients — some invalid), the options
// (weight scale, bias, noise flags, seq_len) and every logit, often NaN, ±Inf, ±FLT_MAX, 1e30,
// subnormal, ±0 or tied. Every call must either return a status with a message (and for a
// non-finite logit, bad_logit = the first one) or a routing that keeps every invariant: counts
// sum to T·K, kept <= min(counts, C), each expert's slots are exactly 0 .. kept-1, a token's
// experts are distinct, dropped routes weigh 0, weights and scores finite, softmax scores within
// 2e-6 (relative) of a float64 softmax and summing to 1, the first choice the best score when
// nothing but the score decides, statistics consistent; and route_backward then gives finite
// d_logits whose rows sum to ~0 for softmax scores (no z-loss).
#include <algorithm>  // std::max
#include <cmath>      // std::exp, std::abs, std::isfinite
#include <cstdint>    // std::int32_t, std::int64_t
#include <vector>     // std::vector

#include "fuzz.hpp"
#include "moe/configs.hpp"  // moe::configs
#include "moe/router.hpp"   // the op under test

namespace {

using moe::fuzz::reader;

template <moe::config C>
void run(reader& in) {
  constexpr std::int32_t E = C.experts, K = C.top_k;
  constexpr bool ds = C.compat == moe::router_compat::deepspeed;
  constexpr bool sigmoid = !ds && C.score == moe::score_function::sigmoid;
  std::int64_t const T = in.range(0, E >= 256 ? 3 : 24);
  moe::problem p{.tokens = T, .hidden = 1, .ffn = 1};
  p.training = in.flag();
  p.min_capacity = static_cast<std::int32_t>(in.range(-1, 6));
  p.seed = in.byte();
  p.aux_loss_coef = in.flag() ? in.value() : 0.01f;
  p.z_loss_coef = in.flag() ? in.value() : 0.0f;
  moe::router_options o;
  if (in.flag()) o.weight_scale = in.value();
  std::vector<float> bias(E);
  if (!ds && in.flag()) {
    for (auto& b : bias) b = in.byte() < 16 ? in.value() : in.finite() / 64.0f;
    o.expert_bias = bias.data();
  }
  std::uint8_t const noise = in.byte();
  o.gumbel_top1 = noise & 1;
  o.sample_second = noise & 2;
  o.seq_len = in.range(0, 4);
  o.seq_aux_loss_coef = (noise & 4) ? 0.5f : 0.0f;
  std::uint8_t const mode = in.byte();  // how often a logit is one of the hard values
  std::vector<float> logits(static_cast<std::size_t>(T * E));
  for (auto& l : logits) l = in.byte() < mode / 4 ? in.value() : in.finite();

  std::size_t const TK = static_cast<std::size_t>(T * K);
  std::vector<std::int32_t> expert(TK, -7), slot(TK, -7), counts(E, -7), kept(E, -7);
  std::vector<float> weight(TK, -7.0f), scores(static_cast<std::size_t>(T * E), -7.0f);
  moe::route_stats st{};
  std::int64_t bad_logit = -7;
  moe::status const s = moe::route<C>(moe::host, p, o,
                                      {.logits = logits.data(),
                                       .expert = expert.data(),
                                       .weight = weight.data(),
                                       .slot = slot.data(),
                                       .counts = counts.data(),
                                       .kept = kept.data(),
                                       .scores = scores.data(),
                                       .stats = &st,
                                       .bad_logit = &bad_logit});
  std::int64_t first_bad = -1;
  for (std::size_t i = 0; i < logits.size() && first_bad < 0; ++i)
    if (!std::isfinite(logits[i])) first_bad = static_cast<std::int64_t>(i);
  if (!s.ok()) {
    FUZZ_CHECK(s.message()[0] != '\0', "an error without a message");
    FUZZ_CHECK(bad_logit == -7 || bad_logit == first_bad, "bad_logit %lld, first non-finite %lld",
               static_cast<long long>(bad_logit), static_cast<long long>(first_bad));
    return;
  }
  FUZZ_CHECK(first_bad < 0, "route accepted a non-finite logit at %lld",
             static_cast<long long>(first_bad));
  FUZZ_CHECK(bad_logit == -1, "bad_logit %lld for finite logits",
             static_cast<long long>(bad_logit));

  // Invariants of the routing.
  std::int64_t total = 0, dropped = 0;
  std::int32_t max_load = 0;
  for (std::int32_t e = 0; e < E; ++e) {
    FUZZ_CHECK(counts[e] >= 0 && kept[e] >= 0 && kept[e] <= counts[e], "expert %d: %d kept of %d",
               e, kept[e], counts[e]);
    FUZZ_CHECK(kept[e] <= st.capacity, "expert %d keeps %d > C = %lld", e, kept[e],
               static_cast<long long>(st.capacity));
    total += counts[e];
    max_load = std::max(max_load, counts[e]);
  }
  FUZZ_CHECK(total == T * K, "counts sum to %lld, expected %lld", static_cast<long long>(total),
             static_cast<long long>(T * K));
  std::vector<std::int32_t> seen(E, 0);
  std::vector<std::vector<char>> used(E);
  for (std::int32_t e = 0; e < E; ++e)
    used[static_cast<std::size_t>(e)].assign(static_cast<std::size_t>(kept[e]), 0);
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int32_t k = 0; k < K; ++k) {
      std::size_t const r = static_cast<std::size_t>(t * K + k);
      std::int32_t const e = expert[r], sl = slot[r];
      FUZZ_CHECK(e >= 0 && e < E, "expert[%lld, %d] = %d", static_cast<long long>(t), k, e);
      for (std::int32_t j = 0; j < k; ++j)
        FUZZ_CHECK(expert[static_cast<std::size_t>(t * K + j)] != e, "token %lld repeats expert %d",
                   static_cast<long long>(t), e);
      ++seen[static_cast<std::size_t>(e)];
      FUZZ_CHECK(std::isfinite(weight[r]), "weight[%lld, %d] = %g", static_cast<long long>(t), k,
                 static_cast<double>(weight[r]));
      if (sl < 0) {
        FUZZ_CHECK(sl == -1 && weight[r] == 0.0f, "dropped route: slot %d weight %g", sl,
                   static_cast<double>(weight[r]));
        ++dropped;
      } else {
        FUZZ_CHECK(sl < kept[e] && !used[static_cast<std::size_t>(e)][static_cast<std::size_t>(sl)],
                   "slot %d of expert %d (kept %d) repeated or out of range", sl, e, kept[e]);
        used[static_cast<std::size_t>(e)][static_cast<std::size_t>(sl)] = 1;
      }
    }
  }
  for (std::int32_t e = 0; e < E; ++e)
    FUZZ_CHECK(seen[static_cast<std::size_t>(e)] == counts[e], "counts[%d] = %d, routes %d", e,
               counts[e], seen[static_cast<std::size_t>(e)]);
  FUZZ_CHECK(st.routes == T * K && st.dropped == dropped && st.max_load == max_load,
             "stats: routes %lld dropped %lld max_load %d", static_cast<long long>(st.routes),
             static_cast<long long>(st.dropped), st.max_load);
  if (moe::is_dropless<C>(p))
    FUZZ_CHECK(dropped == 0, "dropless config dropped %lld", static_cast<long long>(dropped));

  // Scores against float64, and the first choice.
  bool const noisy0 = o.gumbel_top1 && p.training;
  bool const plain = (ds || (C.order == moe::topk_order::score_then_topk && C.expert_groups == 1 &&
                             o.expert_bias == nullptr)) &&
                     !noisy0;
  for (std::int64_t t = 0; t < T; ++t) {
    float const* l = logits.data() + t * E;
    float const* sc = scores.data() + t * E;
    double m = l[0], z = 0, sum = 0;
    for (std::int32_t e = 1; e < E; ++e) m = std::max(m, static_cast<double>(l[e]));
    for (std::int32_t e = 0; e < E; ++e) z += std::exp(static_cast<double>(l[e]) - m);
    for (std::int32_t e = 0; e < E; ++e) {
      double const ref = sigmoid ? 1.0 / (1.0 + std::exp(-static_cast<double>(l[e])))
                                 : std::exp(static_cast<double>(l[e]) - m) / z;
      FUZZ_CHECK(std::abs(sc[e] - ref) <= 2e-6 * ref + 1e-30,
                 "score[%lld, %d] = %.9g, float64 %.9g", static_cast<long long>(t), e,
                 static_cast<double>(sc[e]), ref);
      sum += sc[e];
    }
    if (!sigmoid)
      FUZZ_CHECK(std::abs(sum - 1.0) <= 1e-5, "softmax row %lld sums to %.9g",
                 static_cast<long long>(t), sum);
    if (plain) {
      float best = sc[0];
      for (std::int32_t e = 1; e < E; ++e) best = std::max(best, sc[e]);
      FUZZ_CHECK(sc[expert[static_cast<std::size_t>(t * K)]] == best,
                 "token %lld: first choice %d is not the best score", static_cast<long long>(t),
                 expert[static_cast<std::size_t>(t * K)]);
    }
  }

  // Backward.
  std::vector<float> d_weight(TK), d_logits(static_cast<std::size_t>(T * E), -7.0f);
  for (auto& d : d_weight) d = in.byte() < 8 ? in.value() : in.finite();
  moe::status const b = moe::route_backward<C>(moe::host, p, o,
                                               {.logits = logits.data(),
                                                .expert = expert.data(),
                                                .slot = slot.data(),
                                                .d_weight = d_weight.data(),
                                                .d_logits = d_logits.data()});
  bool d_finite = true;
  for (float d : d_weight) d_finite &= std::isfinite(d);
  if (!b.ok()) {
    FUZZ_CHECK(!d_finite && b.message()[0] != '\0', "route_backward refused valid input: %s",
               b.message());
    return;
  }
  FUZZ_CHECK(d_finite, "route_backward accepted a non-finite d_weight");
  bool const tame = std::abs(o.weight_scale) < 1e6f;  // huge scales overflow float, by design
  for (std::int64_t t = 0; t < T && tame; ++t) {
    double sum = 0, mag = 0;
    for (std::int32_t e = 0; e < E; ++e) {
      float const d = d_logits[static_cast<std::size_t>(t * E + e)];
      if (!std::isfinite(d)) {
        bool big = false;  // a d_weight or coefficient near FLT_MAX may overflow: not a bug
        for (std::int32_t k = 0; k < K; ++k)
          big |= std::abs(d_weight[static_cast<std::size_t>(t * K + k)]) > 1e30f;
        big |= std::abs(p.aux_loss_coef) > 1e30f || std::abs(p.z_loss_coef) > 1e30f;
        // The z-loss gradient 2·coef·lse·softmax / T overflows fp32 when lse is near FLT_MAX
        // (the forward's z_loss, lse², is inf then too): the true value is not representable.
        double lm = logits[static_cast<std::size_t>(t * E)];
        for (std::int32_t j = 1; j < E; ++j)
          lm = std::max(lm, static_cast<double>(logits[static_cast<std::size_t>(t * E + j)]));
        big |= std::abs(static_cast<double>(p.z_loss_coef)) * 2.0 * (std::abs(lm) + 10.0) /
                   static_cast<double>(T) >
               1e37;
        if (!big) {
          std::fprintf(stderr, "config E=%d K=%d; token %lld:\n", E, K, static_cast<long long>(t));
          for (std::int32_t k = 0; k < K; ++k) {
            std::size_t const r = static_cast<std::size_t>(t * K + k);
            std::fprintf(stderr, "  k=%d expert %d slot %d weight %g d_weight %g logit %g\n", k,
                         expert[r], slot[r], static_cast<double>(weight[r]),
                         static_cast<double>(d_weight[r]),
                         static_cast<double>(logits[static_cast<std::size_t>(t * E + expert[r])]));
          }
          std::fprintf(stderr, "  logit[e=%d] %g score %g scale %g\n", e,
                       static_cast<double>(logits[static_cast<std::size_t>(t * E + e)]),
                       static_cast<double>(scores[static_cast<std::size_t>(t * E + e)]),
                       static_cast<double>(o.weight_scale));
        }
        FUZZ_CHECK(big, "d_logits[%lld, %d] = %g", static_cast<long long>(t), e,
                   static_cast<double>(d));
        sum = 0, mag = -1;
        break;
      }
      sum += d;
      mag += std::abs(d);
    }
    // The rows' double arithmetic cancels terms of the size of the upstream gradients: allow
    // their rounding (2^-52 of them) besides the fp32 rounding of each d_logit.
    double upstream = std::abs(static_cast<double>(p.aux_loss_coef)) + o.seq_aux_loss_coef;
    for (std::int32_t k = 0; k < K; ++k)
      upstream += std::abs(static_cast<double>(d_weight[static_cast<std::size_t>(t * K + k)]) *
                           static_cast<double>(o.weight_scale));
    if (!sigmoid && p.z_loss_coef == 0.0f && mag > 0)
      FUZZ_CHECK(std::abs(sum) <= 1e-5 * mag + 1e-14 * upstream + 1e-30,
                 "d_logits row %lld sums to %g (of %g, upstream %g)", static_cast<long long>(t),
                 sum, mag, upstream);
  }
}

constexpr moe::config grouped_sigmoid{.experts = 16,
                                      .top_k = 4,
                                      .capacity_factor = {3, 2},
                                      .act = moe::precision::fp32,
                                      .weight = moe::precision::fp32,
                                      .score = moe::score_function::sigmoid,
                                      .norm = moe::normalization::renormalize,
                                      .drop = moe::drop_policy::probability,
                                      .expert_groups = 4,
                                      .topk_groups = 2};
constexpr moe::config topk_then_score{.experts = 8,
                                      .top_k = 3,
                                      .capacity_factor = {1, 1},
                                      .act = moe::precision::fp32,
                                      .weight = moe::precision::fp32,
                                      .order = moe::topk_order::topk_then_score,
                                      .drop = moe::drop_policy::random_token};
constexpr moe::config widest{.experts = 1024,
                             .top_k = 32,
                             .capacity_factor = {1, 1},
                             .act = moe::precision::fp32,
                             .weight = moe::precision::fp32,
                             .norm = moe::normalization::renormalize};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  reader in(data, size);
  switch (in.byte() % 12) {
    case 0:
      run<moe::configs::switch_fp32>(in);
      break;
    case 1:
      run<moe::configs::top2_fp32>(in);
      break;
    case 2:
      run<moe::configs::top2_fp64>(in);
      break;
    case 3:
      run<moe::configs::top2_bf16>(in);
      break;
    case 4:
      run<moe::configs::fine_bf16>(in);
      break;
    case 5:
      run<moe::configs::deepspeed_top1(8, {1, 1}, {2, 1}, true)>(in);
      break;
    case 6:
      run<moe::configs::deepspeed_top2(8, {1, 2}, {1, 1})>(in);
      break;
    case 7:
      run<moe::configs::deepspeed_topk(16, 4, {1, 1}, {0, 1})>(in);
      break;
    case 8:
      run<grouped_sigmoid>(in);
      break;
    case 9:
      run<topk_then_score>(in);
      break;
    case 10:
      run<widest>(in);
      break;
    default:
      run<moe::configs::deepspeed_top1(4, {1, 1}, {1, 1}, false)>(in);
      break;
  }
  return 0;
}
