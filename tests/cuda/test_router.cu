// SPDX-License-Identifier: Apache-2.0
// route on the GPU against the host backend on random logits, for every drop policy, both
// compat modes, groups, bias, sampled choices (Philox and injected noise) and E up to 512,
// K up to 8: experts, slots, counts, kept, capacity, dropped and max load bitwise; weights and
// scores bitwise too (the kernel runs the host's fp32 arithmetic); aux and z losses (double
// sums in another fixed order, and the device's log), and the sequence-level loss, within
// 1e-5 relative. route_backward on the GPU against the host's on the same decisions (the host
// forward's experts and slots) for the configs above plus K = 8 without renormalisation:
// d_logits within 1e-5 relative + 1e-7 absolute (both are double computations rounded to fp32
// once; they differ only in summation order and the device's exp/log, i.e. ~1e-16 relative
// before the rounding), and bitwise equal between two device runs.
#include <cmath>    // std::fabs, std::round
#include <cstdint>  // std::int32_t, std::int64_t
#include <cstring>  // std::memcmp
#include <random>   // std::mt19937_64, std::normal_distribution
#include <string>   // std::string
#include <vector>   // std::vector

#include "common.cuh"
#include "moe/configs.hpp"
#include "moe/cuda/router.cuh"

namespace {

constexpr auto f32 = moe::precision::fp32;

struct case_opts {
  std::int64_t tokens = 0;
  bool training = true;
  bool ties = false;      // logits on a coarse grid, so many ties
  bool bias = false;      // expert_bias
  bool top1 = false;      // gumbel_top1
  bool second = false;    // sample_second
  bool inject = false;    // caller's noise tensors instead of Philox
  float weight_scale = 1.0f;
  std::int32_t min_capacity = 4;
  std::int64_t seq_len = 0;  // > 0: the sequence-level loss too
};

template <class T>
std::size_t bit_mismatches(std::vector<T> const& a, std::vector<T> const& b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return n;
}

bool rel_close(double a, double b, double rel) {
  return std::fabs(a - b) <= rel * (std::fabs(b) > 1e-6 ? std::fabs(b) : 1e-6);
}

template <moe::config C>
void compare_with_host(case_opts const& c, std::uint64_t seed) {
  constexpr std::int32_t E = C.experts;
  constexpr std::int32_t K = C.top_k;
  std::int64_t const T = c.tokens;
  auto const TE = static_cast<std::size_t>(T * E);
  auto const TK = static_cast<std::size_t>(T * K);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  std::vector<float> logits(TE), gumbel(TE), prio(TE), bias(static_cast<std::size_t>(E));
  for (float& v : logits) v = c.ties ? std::round(normal(rng) * 2.0f) / 4.0f : normal(rng);
  for (float& v : gumbel) v = -std::log(-std::log(unif(rng) * 0.999f + 0.0005f));
  for (float& v : prio) v = c.ties ? std::round(unif(rng) * 8.0f) / 8.0f : unif(rng);
  for (float& v : bias) v = normal(rng) * 0.01f;

  moe::problem p;
  p.tokens = T;
  p.training = c.training;
  p.min_capacity = c.min_capacity;
  p.seed = seed ^ 0x9e3779b97f4a7c15ULL;
  moe::router_options o;
  o.weight_scale = c.weight_scale;
  o.gumbel_top1 = c.top1;
  o.sample_second = c.second;
  o.noise_offset = 12345;
  o.seq_len = c.seq_len;

  // Host.
  std::vector<std::int32_t> h_expert(TK), h_slot(TK), h_counts(E), h_kept(E);
  std::vector<float> h_weight(TK), h_scores(TE);
  moe::route_stats h_stats;
  std::int64_t h_bad = -7;
  moe::router_options oh = o;
  if (c.bias) oh.expert_bias = bias.data();
  if (c.inject) {
    oh.gumbel = gumbel.data();
    oh.rts_priority = prio.data();
  }
  MOE_REQUIRE_OK(moe::route<C>(moe::host, p, oh,
                               {.logits = logits.data(), .expert = h_expert.data(),
                                .weight = h_weight.data(), .slot = h_slot.data(),
                                .counts = h_counts.data(), .kept = h_kept.data(),
                                .scores = h_scores.data(), .stats = &h_stats,
                                .bad_logit = &h_bad}));
  CHECK(h_bad == -1);

  // Device.
  moe::test::device_vector<float> d_logits(TE), d_gumbel(TE), d_prio(TE), d_scores(TE),
      d_bias(static_cast<std::size_t>(E)), d_weight(TK);
  moe::test::device_vector<std::int32_t> d_expert(TK), d_slot(TK), d_counts(E), d_kept(E);
  moe::test::device_vector<moe::route_stats> d_stats(1);
  moe::test::device_vector<std::int64_t> d_bad(1);
  d_bad.upload(std::vector<std::int64_t>{-7});
  if (TE > 0) {
    d_logits.upload(logits);
    d_gumbel.upload(gumbel);
    d_prio.upload(prio);
  }
  d_bias.upload(bias);
  moe::router_options od = o;
  if (c.bias) od.expert_bias = d_bias.data();
  if (c.inject) {
    od.gumbel = d_gumbel.data();
    od.rts_priority = d_prio.data();
  }
  std::size_t const ws_bytes = moe::route_workspace_bytes<C>(p);
  REQUIRE(ws_bytes > 0);
  moe::test::device_vector<unsigned char> ws(ws_bytes);
  MOE_REQUIRE_OK(moe::route<C>(moe::cuda_on(nullptr, ws.data(), ws_bytes), p, od,
                               {.logits = d_logits.data(), .expert = d_expert.data(),
                                .weight = d_weight.data(), .slot = d_slot.data(),
                                .counts = d_counts.data(), .kept = d_kept.data(),
                                .scores = d_scores.data(), .stats = d_stats.data(),
                                .bad_logit = d_bad.data()}));
  MOE_REQUIRE_CUDA(cudaDeviceSynchronize());

  INFO("E " << E << " K " << K << " T " << T << " training " << c.training << " ties " << c.ties
            << " bias " << c.bias << " top1 " << c.top1 << " second " << c.second << " inject "
            << c.inject);
  CHECK(bit_mismatches(d_counts.download(), h_counts) == 0);
  CHECK(bit_mismatches(d_kept.download(), h_kept) == 0);
  CHECK(d_bad.download()[0] == h_bad);
  if (T > 0) {
    CHECK(bit_mismatches(d_expert.download(), h_expert) == 0);
    CHECK(bit_mismatches(d_slot.download(), h_slot) == 0);
    CHECK(bit_mismatches(d_weight.download(), h_weight) == 0);
    CHECK(bit_mismatches(d_scores.download(), h_scores) == 0);
  }
  moe::route_stats const s = d_stats.download()[0];
  CHECK(s.capacity == h_stats.capacity);
  CHECK(s.routes == h_stats.routes);
  CHECK(s.dropped == h_stats.dropped);
  CHECK(s.max_load == h_stats.max_load);
  CHECK(s.mean_load == h_stats.mean_load);
  CHECK(rel_close(s.aux_loss, h_stats.aux_loss, 1e-5));
  CHECK(rel_close(s.z_loss, h_stats.z_loss, 1e-5));
  CHECK(rel_close(s.seq_aux_loss, h_stats.seq_aux_loss, 1e-5));
}

template <moe::config C>
void sweep(std::uint64_t seed) {
  constexpr bool is_ds = C.compat == moe::router_compat::deepspeed;
  std::vector<case_opts> cases;
  for (std::int64_t T : {std::int64_t{0}, std::int64_t{1}, std::int64_t{37}, std::int64_t{1000},
                         std::int64_t{4133}})
    for (bool training : {true, false})
      for (bool ties : {false, true}) cases.push_back({.tokens = T, .training = training, .ties = ties});
  case_opts n{.tokens = 777, .training = true, .ties = true};
  n.weight_scale = 2.5f;
  n.min_capacity = 0;
  if (!is_ds) {
    n.bias = true;
    cases.push_back(n);
    n.bias = false;
  }
  if (!is_ds || C.top_k == 1) {
    n.top1 = true;
    cases.push_back(n);
    n.inject = true;
    cases.push_back(n);
    n.top1 = n.inject = false;
  }
  if (is_ds ? C.top_k == 2 : C.top_k >= 2) {
    n.second = true;
    cases.push_back(n);
    n.inject = true;
    cases.push_back(n);
    n.training = false;
    cases.push_back(n);
  }
  n = {.tokens = 2049, .training = true, .inject = true};  // injected RTS priorities
  cases.push_back(n);
  n = {.tokens = 1000, .training = true, .seq_len = 100};  // sequence-level loss
  cases.push_back(n);
  n = {.tokens = 777, .training = false, .ties = true, .seq_len = 1};
  cases.push_back(n);
  for (case_opts const& c : cases) compare_with_host<C>(c, seed++);
}

constexpr moe::config switch8{.experts = 8, .top_k = 1, .capacity_factor = {5, 4},
                              .eval_capacity_factor = {2, 1}, .act = f32, .weight = f32};
constexpr moe::config top2_pos{.experts = 8, .top_k = 2, .capacity_factor = {5, 4}, .act = f32,
                               .weight = f32, .norm = moe::normalization::renormalize};
constexpr moe::config top2_prob{.experts = 8, .top_k = 2, .capacity_factor = {1, 1},
                                .norm = moe::normalization::renormalize,
                                .drop = moe::drop_policy::probability};
constexpr moe::config top2_rts{.experts = 8, .top_k = 2, .capacity_factor = {1, 1},
                               .eval_capacity_factor = {1, 1},
                               .drop = moe::drop_policy::random_token};
constexpr moe::config mixtral{.experts = 8, .top_k = 2, .capacity_factor = {0, 1},
                              .eval_capacity_factor = {0, 1},
                              .order = moe::topk_order::topk_then_score};
constexpr moe::config dsv3{.experts = 64, .top_k = 8, .capacity_factor = {0, 1},
                           .eval_capacity_factor = {0, 1},
                           .score = moe::score_function::sigmoid,
                           .norm = moe::normalization::renormalize, .expert_groups = 8,
                           .topk_groups = 4};
constexpr moe::config sig_topk_prob{.experts = 16, .top_k = 4, .capacity_factor = {1, 2},
                                    .score = moe::score_function::sigmoid,
                                    .order = moe::topk_order::topk_then_score,
                                    .norm = moe::normalization::renormalize,
                                    .drop = moe::drop_policy::probability};
constexpr moe::config groups_of_one{.experts = 8, .top_k = 2, .capacity_factor = {3, 2},
                                    .expert_groups = 8, .topk_groups = 3};
constexpr moe::config e512_k8{.experts = 512, .top_k = 8, .capacity_factor = {5, 4},
                              .norm = moe::normalization::renormalize, .expert_groups = 16,
                              .topk_groups = 4};
constexpr moe::config e512_k1_prob{.experts = 512, .top_k = 1, .capacity_factor = {2, 1},
                                   .drop = moe::drop_policy::probability};
constexpr moe::config e160_k6_rts{.experts = 160, .top_k = 6, .capacity_factor = {1, 1},
                                  .score = moe::score_function::sigmoid,
                                  .drop = moe::drop_policy::random_token};
// Edge sizes: one expert; K = E (every expert for every token, capacity drops); the largest
// E the configs allow (1024), sigmoid scores.
constexpr moe::config one_expert{.experts = 1, .top_k = 1, .capacity_factor = {5, 4}};
constexpr moe::config k_is_e{.experts = 4, .top_k = 4, .capacity_factor = {1, 1},
                             .norm = moe::normalization::renormalize};
constexpr moe::config e1024_k2{.experts = 1024, .top_k = 2, .capacity_factor = {5, 4},
                               .score = moe::score_function::sigmoid};
namespace presets = moe::configs;
constexpr moe::config ds_top1 = presets::deepspeed_top1(8, {5, 4}, {2, 1}, false);
constexpr moe::config ds_top1_rts = presets::deepspeed_top1(8, {1, 1}, {1, 1}, true, f32);
constexpr moe::config ds_top1_dropless = presets::deepspeed_top1(8, {0, 1}, {1, 1}, false);
constexpr moe::config ds_top2 = presets::deepspeed_top2(8, {1, 1}, {3, 4});
constexpr moe::config ds_top2_e3 = presets::deepspeed_top2(3, {1, 2});
constexpr moe::config ds_topk_probs = presets::deepspeed_topk(16, 4);
constexpr moe::config ds_topk_pos =
    presets::deepspeed_topk(64, 8, {1, 1}, {1, 1}, moe::drop_policy::position, f32);

}  // namespace

TEST_CASE("route(cuda) == route(host): native configs") {
  if (moe::backend::cuda::device_count() == 0) return;
  sweep<switch8>(100);
  sweep<top2_pos>(200);
  sweep<top2_prob>(300);
  sweep<top2_rts>(400);
  sweep<mixtral>(500);
  sweep<dsv3>(600);
  sweep<sig_topk_prob>(700);
  sweep<groups_of_one>(800);
  sweep<e512_k8>(900);
  sweep<e512_k1_prob>(1000);
  sweep<e160_k6_rts>(1100);
  sweep<one_expert>(1200);
  sweep<k_is_e>(1300);
  sweep<e1024_k2>(1400);
}

TEST_CASE("route(cuda) == route(host): deepspeed configs") {
  if (moe::backend::cuda::device_count() == 0) return;
  sweep<ds_top1>(2100);
  sweep<ds_top1_rts>(2200);
  sweep<ds_top1_dropless>(2300);
  sweep<ds_top2>(2400);
  sweep<ds_top2_e3>(2500);
  sweep<ds_topk_probs>(2600);
  sweep<ds_topk_pos>(2700);
}

/// Non-finite logits at `bad` (flat indices, values cycling NaN, +inf, -inf): the device's
/// bad_logit equals the host's (the lowest index), and the outputs stay in bounds.
template <moe::config C>
void bad_logit_case(std::int64_t T, std::vector<std::int64_t> const& bad, std::uint64_t seed) {
  constexpr std::int32_t E = C.experts;
  constexpr std::int32_t K = C.top_k;
  auto const TE = static_cast<std::size_t>(T * E);
  auto const TK = static_cast<std::size_t>(T * K);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(TE);
  for (float& v : logits) v = normal(rng);
  float const kinds[3] = {NAN, INFINITY, -INFINITY};
  for (std::size_t i = 0; i < bad.size(); ++i)
    logits[static_cast<std::size_t>(bad[i])] = kinds[i % 3];
  moe::problem p;
  p.tokens = T;
  p.training = false;

  std::vector<std::int32_t> h_expert(TK), h_slot(TK), h_counts(E), h_kept(E);
  std::vector<float> h_weight(TK);
  moe::route_stats h_stats;
  std::int64_t h_bad = -7;
  moe::status const hs = moe::route<C>(
      moe::host, p, {},
      {.logits = logits.data(), .expert = h_expert.data(), .weight = h_weight.data(),
       .slot = h_slot.data(), .counts = h_counts.data(), .kept = h_kept.data(),
       .stats = &h_stats, .bad_logit = &h_bad});
  CHECK(hs.ok() == bad.empty());

  moe::test::device_vector<float> d_logits(TE), d_weight(TK);
  moe::test::device_vector<std::int32_t> d_expert(TK), d_slot(TK), d_counts(E), d_kept(E);
  moe::test::device_vector<moe::route_stats> d_stats(1);
  moe::test::device_vector<std::int64_t> d_bad(1);
  d_logits.upload(logits);
  d_bad.upload(std::vector<std::int64_t>{-7});
  std::size_t const ws_bytes = moe::route_workspace_bytes<C>(p);
  REQUIRE(ws_bytes > 0);
  moe::test::device_vector<unsigned char> ws(ws_bytes);
  MOE_REQUIRE_OK(moe::route<C>(moe::cuda_on(nullptr, ws.data(), ws_bytes), p, {},
                               {.logits = d_logits.data(), .expert = d_expert.data(),
                                .weight = d_weight.data(), .slot = d_slot.data(),
                                .counts = d_counts.data(), .kept = d_kept.data(),
                                .stats = d_stats.data(), .bad_logit = d_bad.data()}));
  MOE_REQUIRE_CUDA(cudaDeviceSynchronize());
  INFO("E " << E << " K " << K << " T " << T << " bad " << bad.size());
  std::int64_t const d = d_bad.download()[0];
  CHECK(d == h_bad);
  std::int64_t want = -1;
  for (std::int64_t i : bad) want = want < 0 || i < want ? i : want;
  CHECK(d == want);
  for (std::int32_t e : d_expert.download()) CHECK((e >= 0 && e < E));  // in bounds
}

TEST_CASE("route(cuda): bad_logit equals the host's for non-finite logits") {
  if (moe::backend::cuda::device_count() == 0) return;
  bad_logit_case<switch8>(1000, {}, 3100);
  bad_logit_case<switch8>(1000, {3 * 8 + 6}, 3101);
  bad_logit_case<top2_pos>(1000, {999 * 8 + 7, 500 * 8 + 3, 17 * 8 + 1, 17 * 8 + 0}, 3102);
  bad_logit_case<top2_pos>(37, {0}, 3103);
  bad_logit_case<dsv3>(4133, {4000 * 64 + 63, 4000 * 64 + 40, 2222 * 64 + 33}, 3104);
  bad_logit_case<e512_k8>(777, {700 * 512 + 511, 300 * 512 + 200, 300 * 512 + 37}, 3105);
  bad_logit_case<ds_top2>(1000, {999 * 8 + 1, 123 * 8 + 4}, 3106);
  bad_logit_case<e160_k6_rts>(2049, {2048 * 160 + 159, 1500 * 160 + 130, 1500 * 160 + 129}, 3107);
}

TEST_CASE("route(cuda): the issue's worked DeepSpeed top-2 example") {
  if (moe::backend::cuda::device_count() == 0) return;
  constexpr moe::config c = presets::deepspeed_top2(3, {1, 2});  // E = 3, K = 2, cf = 0.5
  std::vector<float> const logits{3, 2, 0, 3, 0, 2, 2, 3, 0, 3, 2, 0, 0, 3, 2, 3, 0, 2};
  moe::problem p;
  p.tokens = 6;
  p.min_capacity = 0;
  moe::test::device_vector<float> l(18), w(12);
  moe::test::device_vector<std::int32_t> e(12), s(12), counts(3), kept(3);
  moe::test::device_vector<moe::route_stats> st(1);
  l.upload(logits);
  std::size_t const bytes = moe::route_workspace_bytes<c>(p);
  moe::test::device_vector<unsigned char> ws(bytes);
  MOE_REQUIRE_OK(moe::route<c>(moe::cuda_on(nullptr, ws.data(), bytes), p, {},
                               {.logits = l.data(), .expert = e.data(), .weight = w.data(),
                                .slot = s.data(), .counts = counts.data(), .kept = kept.data(),
                                .stats = st.data()}));
  MOE_REQUIRE_CUDA(cudaDeviceSynchronize());
  CHECK(e.download() == std::vector<std::int32_t>{0, 1, 0, 2, 1, 0, 0, 1, 1, 2, 0, 2});
  CHECK(s.download() == std::vector<std::int32_t>{0, -1, 1, 0, 0, -1, -1, -1, 1, 1, -1, -1});
  CHECK(st.download()[0].capacity == 2);
}

TEST_CASE("route(cuda): unsupported sizes and bad arguments come back as a status") {
  moe::problem p;
  p.tokens = std::int64_t{256} * 65535 + 1;  // beyond the loss kernel's grid
  moe::router_options o;
  float dummy = 0.0f;
  std::int32_t idummy = 0;
  moe::route_stats st;
  moe::route_args const a{.logits = &dummy, .expert = &idummy, .weight = &dummy, .slot = &idummy,
                          .counts = &idummy, .kept = &idummy, .stats = &st};
  CHECK(moe::route<switch8>(moe::cuda_on(nullptr), p, o, a).code() ==
        moe::errc::unsupported_config);
  p.tokens = 4;
  CHECK(moe::route<switch8>(moe::cuda_on(nullptr), p, {}, {}).code() ==
        moe::errc::invalid_argument);
  if (moe::backend::cuda::device_count() == 0) return;  // the workspace query asks CUB
  CHECK(moe::route<switch8>(moe::cuda_on(nullptr), p, {}, a).code() ==
        moe::errc::workspace_too_small);
}

// ---- route_backward ------------------------------------------------------------------------

namespace {

constexpr moe::config k8_pos{.experts = 64, .top_k = 8, .capacity_factor = {1, 1}};

struct backward_case {
  std::int64_t tokens = 0;
  std::int64_t seq_len = 0;
  float weight_scale = 1.0f;
  std::int32_t min_capacity = 0;  // 0: capacity configs drop routes
  bool coefs = true;              // aux 0.1, z 0.01, seq 0.05 (else all 0)
  bool sampled = false;           // gumbel_top1 / sample_second where the config allows
  bool bias = false;              // expert_bias (native only)
};

template <moe::config C>
void backward_vs_host(backward_case const& c, std::uint64_t seed) {
  constexpr std::int32_t E = C.experts;
  constexpr std::int32_t K = C.top_k;
  constexpr bool is_ds = C.compat == moe::router_compat::deepspeed;
  std::int64_t const T = c.tokens;
  auto const TE = static_cast<std::size_t>(T * E);
  auto const TK = static_cast<std::size_t>(T * K);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  std::uniform_real_distribution<float> sym(-1.0f, 1.0f);
  std::vector<float> logits(TE), gumbel(TE), prio(TE), bias(static_cast<std::size_t>(E)), dw(TK);
  for (float& v : logits) v = normal(rng);
  for (float& v : gumbel) v = -std::log(-std::log(unif(rng) * 0.999f + 0.0005f));
  for (float& v : prio) v = unif(rng);
  for (float& v : bias) v = normal(rng) * 0.01f;
  for (float& v : dw) v = sym(rng);

  moe::problem p;
  p.tokens = T;
  p.training = true;
  p.min_capacity = c.min_capacity;
  p.seed = seed;
  p.aux_loss_coef = c.coefs ? 0.1f : 0.0f;
  p.z_loss_coef = c.coefs ? 0.01f : 0.0f;
  moe::router_options o;
  o.weight_scale = c.weight_scale;
  o.seq_len = c.seq_len;
  o.seq_aux_loss_coef = c.coefs && c.seq_len > 0 ? 0.05f : 0.0f;
  o.gumbel_top1 = c.sampled && (!is_ds || K == 1);
  o.sample_second = c.sampled && (is_ds ? K == 2 : K >= 2);
  o.gumbel = gumbel.data();
  o.rts_priority = prio.data();
  if (c.bias && !is_ds) o.expert_bias = bias.data();

  // The decisions: the host forward.
  std::vector<std::int32_t> expert(TK), slot(TK), counts(E), kept(E);
  std::vector<float> weight(TK);
  moe::route_stats stats;
  MOE_REQUIRE_OK(moe::route<C>(moe::host, p, o,
                               {.logits = logits.data(), .expert = expert.data(),
                                .weight = weight.data(), .slot = slot.data(),
                                .counts = counts.data(), .kept = kept.data(), .stats = &stats}));
  std::vector<float> h_dl(TE, -7.0f);
  MOE_REQUIRE_OK(moe::route_backward<C>(
      moe::host, p, o,
      {.logits = logits.data(), .expert = expert.data(), .slot = slot.data(),
       .d_weight = dw.data(), .d_logits = h_dl.data()}));

  moe::test::device_vector<float> d_logits(TE), d_dw(TK), d_dl(TE);
  moe::test::device_vector<std::int32_t> d_expert(TK), d_slot(TK);
  if (T > 0) {
    d_logits.upload(logits);
    d_dw.upload(dw);
    d_expert.upload(expert);
    d_slot.upload(slot);
  }
  moe::router_options od = o;  // the backward reads no noise or bias: null them
  od.gumbel = od.rts_priority = od.expert_bias = nullptr;
  std::size_t const ws_bytes = moe::route_backward_workspace_bytes<C>(p, od);
  CHECK((ws_bytes > 0) == (T > 0));
  moe::test::device_vector<unsigned char> ws(ws_bytes);
  moe::route_backward_args const b{.logits = d_logits.data(), .expert = d_expert.data(),
                                   .slot = d_slot.data(), .d_weight = d_dw.data(),
                                   .d_logits = d_dl.data()};
  MOE_REQUIRE_OK(moe::route_backward<C>(moe::cuda_on(nullptr, ws.data(), ws_bytes), p, od, b));
  MOE_REQUIRE_CUDA(cudaDeviceSynchronize());
  if (T == 0) return;
  std::vector<float> const first = d_dl.download();
  MOE_REQUIRE_OK(moe::route_backward<C>(moe::cuda_on(nullptr, ws.data(), ws_bytes), p, od, b));
  MOE_REQUIRE_CUDA(cudaDeviceSynchronize());
  std::vector<float> const again = d_dl.download();

  INFO("E " << E << " K " << K << " T " << T << " seq_len " << c.seq_len << " scale "
            << c.weight_scale << " coefs " << c.coefs << " sampled " << c.sampled << " seed "
            << seed << " dropped " << stats.dropped);
  CHECK(bit_mismatches(first, again) == 0);  // deterministic run to run
  double worst = 0.0;
  std::size_t worst_i = 0;
  for (std::size_t i = 0; i < TE; ++i) {
    double const h = h_dl[i];
    double const err = std::fabs(static_cast<double>(first[i]) - h) / (1e-5 * std::fabs(h) + 1e-7);
    if (err > worst) {
      worst = err;
      worst_i = i;
    }
  }
  INFO("worst at " << worst_i << ": device " << first[worst_i] << " host " << h_dl[worst_i]);
  CHECK(worst <= 1.0);
}

template <moe::config C>
void backward_sweep(std::uint64_t seed) {
  std::vector<backward_case> cases;
  for (std::int64_t T : {std::int64_t{0}, std::int64_t{1}, std::int64_t{37}, std::int64_t{1000}})
    cases.push_back({.tokens = T});
  cases.push_back({.tokens = 4133, .min_capacity = 4});
  cases.push_back({.tokens = 777, .weight_scale = 2.5f, .sampled = true, .bias = true});
  cases.push_back({.tokens = 1000, .seq_len = 100});
  cases.push_back({.tokens = 777, .seq_len = 1});
  cases.push_back({.tokens = 1000, .coefs = false});
  for (backward_case const& c : cases) backward_vs_host<C>(c, seed++);
}

}  // namespace

TEST_CASE("route_backward(cuda) == route_backward(host): native configs") {
  if (moe::backend::cuda::device_count() == 0) return;
  backward_sweep<switch8>(5100);
  backward_sweep<top2_pos>(5200);
  backward_sweep<top2_prob>(5300);
  backward_sweep<top2_rts>(5400);
  backward_sweep<mixtral>(5500);
  backward_sweep<dsv3>(5600);
  backward_sweep<sig_topk_prob>(5700);
  backward_sweep<groups_of_one>(5800);
  backward_sweep<k8_pos>(5900);
  backward_sweep<e512_k8>(6000);
  backward_sweep<e512_k1_prob>(6100);
  backward_sweep<e160_k6_rts>(6200);
  backward_sweep<one_expert>(6300);
  backward_sweep<k_is_e>(6400);
  backward_sweep<e1024_k2>(6500);
}

TEST_CASE("route_backward(cuda) == route_backward(host): deepspeed configs") {
  if (moe::backend::cuda::device_count() == 0) return;
  backward_sweep<ds_top1>(7100);
  backward_sweep<ds_top1_rts>(7200);
  backward_sweep<ds_top1_dropless>(7300);
  backward_sweep<ds_top2>(7400);
  backward_sweep<ds_top2_e3>(7500);
  backward_sweep<ds_topk_probs>(7600);
  backward_sweep<ds_topk_pos>(7700);
}

TEST_CASE("route_backward(cuda): T = 0, bad arguments and a short workspace come back as a status") {
  moe::problem p;
  p.tokens = 0;
  CHECK(moe::route_backward<top2_pos>(moe::cuda_on(nullptr), p, {}, {}).ok());  // no-op
  CHECK(moe::route_backward_workspace_bytes<top2_pos>(p) == 0);
  p.tokens = 4;
  float f[32] = {};
  std::int32_t i[8] = {};
  moe::route_backward_args const good{.logits = f, .expert = i, .slot = i, .d_weight = f,
                                      .d_logits = f + 16};
  moe::route_backward_args bad = good;
  bad.d_logits = nullptr;
  moe::status const s = moe::route_backward<top2_pos>(moe::cuda_on(nullptr), p, {}, bad);
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::string(s.message()) == "route_backward_args.d_logits: expected non-null");
  moe::router_options o;
  o.seq_len = 3;  // 4 % 3 != 0
  CHECK(moe::route_backward<top2_pos>(moe::cuda_on(nullptr), p, o, good).code() ==
        moe::errc::invalid_argument);
  CHECK(moe::route_backward_workspace_bytes<top2_pos>(p, o) == 0);
  std::size_t const need = moe::route_backward_workspace_bytes<top2_pos>(p);
  CHECK(need > 0);
  moe::status const w = moe::route_backward<top2_pos>(moe::cuda_on(nullptr, nullptr, need - 1),
                                                      p, {}, good);
  CHECK(w.code() == moe::errc::workspace_too_small);
}
