// SPDX-License-Identifier: Apache-2.0
// The router on the host backend (moe/router.hpp) against an independent float64 reference
// written here with plain loops and sorts: every variant of a list of configs on random logits
// (fresh seeds, printed on failure), the edge cases, the DeepSpeed worked example and capacity
// case, route_backward against central finite differences, and every bad-input status.
//
// Integers (experts, slots, counts, kept, C, dropped) must match exactly; weights and scores
// within 1e-5 relative + 1e-9 absolute, losses within 1e-5 relative + 1e-7 absolute, d_logits
// within 1e-5 relative + 1e-6 absolute of the finite differences. Exact integer agreement needs
// inputs without near-ties (the library decides in fp32, the reference in double): logits are
// distinct multiples of 1/64 (1/512 for E = 512) in [-4, 4], and the reference reports the smallest
// gap at every decision it takes; a token row whose gap is below 1e-5 relative + 1e-6 is drawn
// again (and a whole input, for cross-token decisions). Exactly equal values are true ties, which
// both sides break to the lower index; they are also tested on their own.
#include <doctest/doctest.h>

#include "common.hpp"  // moe::test helpers: seeds, random tensors, rounding facts

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "moe/configs.hpp"
#include "moe/router.hpp"

namespace {

using moe::test::fresh_seed;

constexpr auto f32 = moe::precision::fp32;
constexpr auto ds = moe::router_compat::deepspeed;
constexpr double inf = std::numeric_limits<double>::infinity();

// ---- the float64 reference ------------------------------------------------------------------

/// Everything the reference needs besides the config: the run-time options and noise, as doubles.
struct ref_in {
  std::int64_t tokens = 0;
  bool training = true;
  int min_capacity = 4;
  double weight_scale = 1.0;
  std::vector<double> logits;  // [T, E]
  std::vector<double> bias;    // [E] or empty
  bool gumbel_top1 = false;
  bool sample_second = false;
  std::vector<double> gumbel;  // [T, E] (empty when no Gumbel round is in force)
  std::vector<double> rts;     // [T, E] (empty when random_token is not in force)
  std::int64_t seq_len = 0;
};

struct ref_out {
  std::vector<int> expert, slot;  // [T, K]
  std::vector<double> weight;     // [T, K]
  std::vector<double> scores;     // [T, E]
  std::vector<int> counts, kept;  // [E]
  std::int64_t capacity = 0;
  std::int64_t dropped = 0;
  int max_load = 0;
  double aux = 0, z = 0, seq = 0;
  double margin = inf;  // the smallest gap at a decision taken
};

bool noise_top1(moe::config const&, ref_in const& in) {
  return in.training && in.gumbel_top1;
}
bool noise_second(moe::config const& c, ref_in const& in) {
  return c.compat == ds ? in.sample_second : in.training && in.sample_second;
}
bool noise_rts(moe::config const& c, ref_in const& in) {
  return c.drop == moe::drop_policy::random_token && (c.compat == ds || in.training);
}

/// How far apart two compared values are, relative to the fp32 error of the library's values:
/// below 1 the library might decide either way. Equal doubles are a true tie (equal inputs, e.g.
/// the sigmoid of the same logit in two tokens), which the library sees as equal too.
double gap(double a, double b) {
  return a == b ? inf : std::fabs(a - b) / (1e-5 * (std::fabs(a) + std::fabs(b)) + 1e-6);
}

/// The index of the largest v[i] among the allowed ones (ties: lower index); `margin` takes the
/// gap to the runner-up.
int ref_argmax(std::vector<double> const& v, std::vector<bool> const& allowed, double& margin) {
  std::vector<int> idx;
  for (int i = 0; i < static_cast<int>(v.size()); ++i)
    if (allowed[static_cast<std::size_t>(i)]) idx.push_back(i);
  std::stable_sort(idx.begin(), idx.end(), [&](int x, int y) {
    return v[static_cast<std::size_t>(x)] > v[static_cast<std::size_t>(y)];
  });
  if (idx.size() > 1)
    margin = std::min(
        margin, gap(v[static_cast<std::size_t>(idx[0])], v[static_cast<std::size_t>(idx[1])]));
  return idx[0];
}

/// Per-token part of the reference: scores, experts and pre-drop gates of token t.
struct ref_token {
  std::vector<double> s;    // [E] scores
  std::vector<int> expert;  // [K]
  std::vector<double> a;    // [K] gates (clean probabilities)
  double margin = inf;
};

ref_token ref_select(moe::config const& c, ref_in const& in, std::int64_t t, int const* fixed) {
  int const E = c.experts, K = c.top_k;
  auto const at = [&](std::vector<double> const& v, int e) {
    return v[static_cast<std::size_t>(t * E + e)];
  };
  ref_token r;
  std::vector<double> l(static_cast<std::size_t>(E)), sm(l.size());
  double mx = -inf, z = 0;
  for (int e = 0; e < E; ++e) mx = std::max(mx, l[static_cast<std::size_t>(e)] = at(in.logits, e));
  for (int e = 0; e < E; ++e) z += std::exp(l[static_cast<std::size_t>(e)] - mx);
  for (int e = 0; e < E; ++e)
    sm[static_cast<std::size_t>(e)] = std::exp(l[static_cast<std::size_t>(e)] - mx) / z;
  bool const sigmoid = c.compat != ds && c.score == moe::score_function::sigmoid;
  r.s = sm;
  if (sigmoid)
    for (int e = 0; e < E; ++e)
      r.s[static_cast<std::size_t>(e)] = 1 / (1 + std::exp(-l[static_cast<std::size_t>(e)]));
  std::vector<double> noisy(l.size());
  if (noise_top1(c, in) || noise_second(c, in))
    for (int e = 0; e < E; ++e)
      noisy[static_cast<std::size_t>(e)] = l[static_cast<std::size_t>(e)] + at(in.gumbel, e);

  if (fixed != nullptr) {
    r.expert.assign(fixed, fixed + K);
  } else {
    std::vector<bool> allowed(l.size(), true);
    auto take = [&](std::vector<double> const& v) {
      int const e = ref_argmax(v, allowed, r.margin);
      allowed[static_cast<std::size_t>(e)] = false;
      r.expert.push_back(e);
    };
    if (c.compat == ds) {
      if (K == 1) {
        take(noise_top1(c, in) ? noisy : r.s);
      } else if (K == 2) {
        take(r.s);
        take(noise_second(c, in) ? noisy : l);
      } else {
        for (int k = 0; k < K; ++k) take(r.s);
      }
    } else {
      std::vector<double> key(l.size());
      for (int e = 0; e < E; ++e) {
        key[static_cast<std::size_t>(e)] =
            (c.order == moe::topk_order::score_then_topk ? r.s : l)[static_cast<std::size_t>(e)] +
            (in.bias.empty() ? 0.0 : in.bias[static_cast<std::size_t>(e)]);
      }
      if (c.expert_groups > 1) {
        int const G = c.expert_groups, n = E / G;
        std::vector<double> gs(static_cast<std::size_t>(G));
        for (int g = 0; g < G; ++g) {
          std::vector<double> v(key.begin() + g * n, key.begin() + (g + 1) * n);
          std::sort(v.begin(), v.end(), std::greater<>());
          gs[static_cast<std::size_t>(g)] = n >= 2 ? v[0] + v[1] : v[0];
        }
        std::vector<int> order(static_cast<std::size_t>(G));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
          return gs[static_cast<std::size_t>(x)] > gs[static_cast<std::size_t>(y)];
        });
        int const M = c.topk_groups;
        if (M < G)
          r.margin = std::min(
              r.margin, gap(gs[static_cast<std::size_t>(order[static_cast<std::size_t>(M - 1)])],
                            gs[static_cast<std::size_t>(order[static_cast<std::size_t>(M)])]));
        for (int j = M; j < G; ++j)
          for (int e = order[static_cast<std::size_t>(j)] * n;
               e < (order[static_cast<std::size_t>(j)] + 1) * n; ++e)
            allowed[static_cast<std::size_t>(e)] = false;
      }
      for (int k = 0; k < K; ++k) {
        bool const use_noise = (k == 0 && noise_top1(c, in)) || (k == 1 && noise_second(c, in));
        take(use_noise ? noisy : key);
      }
    }
  }
  bool const k_softmax = c.compat != ds && c.order == moe::topk_order::topk_then_score && !sigmoid;
  double zk = 0, mk = -inf;
  for (int e : r.expert) mk = std::max(mk, l[static_cast<std::size_t>(e)]);
  for (int e : r.expert) zk += std::exp(l[static_cast<std::size_t>(e)] - mk);
  for (int e : r.expert)
    r.a.push_back(k_softmax ? std::exp(l[static_cast<std::size_t>(e)] - mk) / zk
                            : r.s[static_cast<std::size_t>(e)]);
  return r;
}

/// The whole reference. With `fixed` (a previous result), its experts and slots are used instead
/// of deciding again: the loss is then a smooth function of the logits (finite differences).
ref_out reference(moe::config const& c, ref_in const& in, ref_out const* fixed = nullptr) {
  int const E = c.experts, K = c.top_k;
  std::int64_t const T = in.tokens;
  bool const is_ds = c.compat == ds;
  auto const uz = [](auto n) { return static_cast<std::size_t>(n); };
  ref_out out;
  out.counts.assign(uz(E), 0);
  out.kept.assign(uz(E), 0);
  if (T == 0) return out;
  std::vector<ref_token> tok;
  for (std::int64_t t = 0; t < T; ++t) {
    tok.push_back(ref_select(c, in, t, fixed ? fixed->expert.data() + t * K : nullptr));
    out.margin = std::min(out.margin, tok.back().margin);
    for (int e : tok.back().expert) {
      out.expert.push_back(e);
      ++out.counts[uz(e)];
    }
    out.scores.insert(out.scores.end(), tok.back().s.begin(), tok.back().s.end());
  }
  out.max_load = *std::max_element(out.counts.begin(), out.counts.end());

  // Capacity.
  moe::ratio const cf = in.training ? c.capacity_factor : c.eval_capacity_factor;
  bool const dropless = cf.num == 0;
  if (dropless) {
    out.capacity = out.max_load;
  } else if (is_ds) {
    float const te = static_cast<float>(static_cast<double>(T) / E);
    float const f = static_cast<float>(static_cast<double>(cf.num) / cf.den * K);
    volatile float prod = te * f;  // one fp32 rounding, nothing fused
    out.capacity =
        std::max<std::int64_t>(static_cast<std::int64_t>(std::ceil(prod)), in.min_capacity);
  } else {
    std::int64_t const num = T * K * cf.num, den = std::int64_t{E} * cf.den;
    out.capacity = std::max<std::int64_t>((num + den - 1) / den, in.min_capacity);
  }

  // Drops and slots, expert by expert.
  out.slot.assign(uz(T * K), -1);
  if (fixed != nullptr) {
    out.slot = fixed->slot;
  } else {
    for (int e = 0; e < E; ++e) {
      std::vector<std::int64_t> routes;  // t * K + k, token order
      for (std::int64_t r = 0; r < T * K; ++r)
        if (out.expert[uz(r)] == e) routes.push_back(r);
      auto gate = [&](std::int64_t r) { return tok[uz(r / K)].a[uz(r % K)]; };
      auto by_k_t = [&](std::int64_t x, std::int64_t y) {
        return x % K != y % K ? x % K < y % K : x < y;
      };
      std::vector<std::int64_t> prio = routes;
      bool const rts = noise_rts(c, in);
      if (rts) {
        std::sort(prio.begin(), prio.end(), [&](std::int64_t x, std::int64_t y) {
          double const ux = in.rts[uz(x / K * E + e)], uy = in.rts[uz(y / K * E + e)];
          return ux != uy ? ux > uy : x < y;
        });
      } else if (c.drop == moe::drop_policy::probability) {
        std::sort(prio.begin(), prio.end(), [&](std::int64_t x, std::int64_t y) {
          return gate(x) != gate(y) ? gate(x) > gate(y) : x < y;
        });
      } else if (!is_ds || K == 2) {
        std::sort(prio.begin(), prio.end(), by_k_t);
      }  // DeepSpeed top-1 / top-k position: token order
      std::int64_t const n = static_cast<std::int64_t>(prio.size());
      std::int64_t const keep = dropless ? n : std::min(n, out.capacity);
      if (!rts && c.drop == moe::drop_policy::probability && keep < n)
        out.margin = std::min(out.margin, gap(gate(prio[uz(keep - 1)]), gate(prio[uz(keep)])));
      std::vector<bool> kept_route(uz(T * K), false);
      for (std::int64_t i = 0; i < keep; ++i) kept_route[uz(prio[uz(i)])] = true;
      out.kept[uz(e)] = static_cast<int>(keep);
      if (is_ds && K == 2) {  // slot = rank among (k, t): first choices queue first
        std::vector<std::int64_t> kt = routes;
        std::sort(kt.begin(), kt.end(), by_k_t);
        for (std::int64_t i = 0; i < n; ++i)
          if (kept_route[uz(kt[uz(i)])]) out.slot[uz(kt[uz(i)])] = static_cast<int>(i);
      } else {
        int next = 0;
        for (std::int64_t r : routes)
          if (kept_route[uz(r)]) out.slot[uz(r)] = next++;
      }
    }
  }

  // Weights.
  out.weight.assign(uz(T * K), 0.0);
  for (std::int64_t t = 0; t < T; ++t) {
    double sum_all = 0, sum_kept = 0;
    for (int k = 0; k < K; ++k) {
      sum_all += tok[uz(t)].a[uz(k)];
      if (out.slot[uz(t * K + k)] >= 0) sum_kept += tok[uz(t)].a[uz(k)];
    }
    for (int k = 0; k < K; ++k) {
      double const ak = tok[uz(t)].a[uz(k)];
      double w;
      if (is_ds)
        w = K == 1 ? ak : ak / std::max(sum_kept, 0x1p-23);
      else
        w = c.norm == moe::normalization::renormalize ? ak / sum_all : ak;
      bool const kept = out.slot[uz(t * K + k)] >= 0;
      out.weight[uz(t * K + k)] = kept ? w * in.weight_scale : 0.0;
      out.dropped += kept ? 0 : 1;
    }
  }

  // Losses.
  bool const sigmoid = !is_ds && c.score == moe::score_function::sigmoid;
  std::vector<double> P(uz(E), 0.0), cnt1(uz(E), 0.0), seqP(uz(E), 0.0), seqc(uz(E), 0.0);
  std::int64_t const L = in.seq_len;
  for (std::int64_t t = 0; t < T; ++t) {
    double S = 0;
    for (double v : tok[uz(t)].s) S += v;
    for (int e = 0; e < E; ++e) {
      double const pe = sigmoid ? tok[uz(t)].s[uz(e)] / S : tok[uz(t)].s[uz(e)];
      P[uz(e)] += pe / static_cast<double>(T);
      seqP[uz(e)] += pe;
    }
    cnt1[uz(tok[uz(t)].expert[0])] += 1;
    double mx = -inf, z = 0;
    for (int e = 0; e < E; ++e) mx = std::max(mx, in.logits[uz(t * E + e)]);
    for (int e = 0; e < E; ++e) z += std::exp(in.logits[uz(t * E + e)] - mx);
    out.z += std::pow(mx + std::log(z), 2) / static_cast<double>(T);
    if (L > 0) {
      for (int e : tok[uz(t)].expert) seqc[uz(e)] += 1;
      if ((t + 1) % L == 0) {
        for (int e = 0; e < E; ++e)
          out.seq += (E * seqc[uz(e)] / (K * static_cast<double>(L))) *
                     (seqP[uz(e)] / static_cast<double>(L)) /
                     (static_cast<double>(T) / static_cast<double>(L));
        std::fill(seqP.begin(), seqP.end(), 0.0);
        std::fill(seqc.begin(), seqc.end(), 0.0);
      }
    }
  }
  for (int e = 0; e < E; ++e) {
    if (is_ds && K == 2)  // DeepSpeed top-2: mean(me * ce) * E * E, ce from first choices
      out.aux += P[uz(e)] * cnt1[uz(e)] / static_cast<double>(T) * E;
    else  // E Σ f_e P_e, f_e = count_e / (T K)   (= DeepSpeed's top-1 and top-k l_aux)
      out.aux += E * (out.counts[uz(e)] / static_cast<double>(T * K)) * P[uz(e)];
  }
  return out;
}

// ---- inputs -----------------------------------------------------------------------------------

/// A run-time variant of a config: options and the problem's flags.
struct variant {
  char const* name = "plain";
  bool bias = false;
  bool gumbel_top1 = false;
  bool sample_second = false;
  bool caller_noise = true;  // pass the noise tensors (else Philox draws them)
  bool training = true;
  std::int64_t seq_len = 0;
  float weight_scale = 1.0f;
  int min_capacity = 4;
};

struct case_data {
  moe::problem p;
  moe::router_options o;  // pointers unset: options() points them at this object's tensors
  bool caller_noise = true;
  std::vector<float> logits, bias, gumbel, rts;
  ref_in in;
  [[nodiscard]] moe::router_options options() const {
    moe::router_options r = o;
    r.expert_bias = bias.empty() ? nullptr : bias.data();
    r.gumbel = caller_noise ? gumbel.data() : nullptr;
    r.rts_priority = caller_noise ? rts.data() : nullptr;
    return r;
  }
};

std::vector<double> widen(std::vector<float> const& v) {
  return {v.begin(), v.end()};
}

/// Random inputs for (c, v, T), redrawn until no decision is a near-tie.
case_data make_case(moe::config const& c, variant const& v, std::int64_t T, std::mt19937_64& rng) {
  int const E = c.experts;
  case_data d;
  d.p = {.tokens = T,
         .hidden = 1,
         .ffn = 1,
         .min_capacity = v.min_capacity,
         .training = v.training,
         .aux_loss_coef = 0.1f,
         .z_loss_coef = 0.01f,
         .seed = rng()};
  d.o.weight_scale = v.weight_scale;
  d.o.gumbel_top1 = v.gumbel_top1;
  d.o.sample_second = v.sample_second;
  d.o.seq_len = v.seq_len;
  d.o.seq_aux_loss_coef = v.seq_len > 0 ? 0.05f : 0.0f;
  d.o.noise_offset = rng() >> 8;
  auto const n = static_cast<std::size_t>(T * E);
  d.logits.resize(n);
  d.gumbel.resize(n);
  d.rts.resize(n);
  std::uniform_int_distribution<int> bias_q(-100, 100);
  if (v.bias)
    for (int e = 0; e < E; ++e) d.bias.push_back(static_cast<float>(bias_q(rng)) / 4096.0f);
  d.caller_noise = v.caller_noise;
  // Distinct multiples of 1/q in [-4, 4]: q = 64 up to E = 64; E = 512 needs a finer grid, or
  // every row would hold nearly the same values and tokens would tie across the batch.
  int const q = E <= 64 ? 64 : 512;
  std::vector<int> grid(static_cast<std::size_t>(8 * q + 1));
  std::iota(grid.begin(), grid.end(), -4 * q);
  std::uniform_int_distribution<std::uint32_t> word;
  d.in.tokens = T;
  d.in.training = v.training;
  d.in.min_capacity = v.min_capacity;
  d.in.weight_scale = static_cast<double>(v.weight_scale);
  d.in.bias = widen(d.bias);
  d.in.gumbel_top1 = v.gumbel_top1;
  d.in.sample_second = v.sample_second;
  d.in.seq_len = v.seq_len;
  d.in.logits.resize(n);
  d.in.gumbel.resize(n);
  d.in.rts.resize(n);
  for (std::int64_t t = 0; t < T; ++t) {
    for (int attempt = 0;; ++attempt) {
      REQUIRE(attempt < 200);
      std::shuffle(grid.begin(), grid.end(), rng);
      for (int e = 0; e < E; ++e) {
        auto const i = static_cast<std::size_t>(t * E + e);
        std::uint64_t const w = static_cast<std::uint64_t>(t) * static_cast<std::uint64_t>(E) +
                                static_cast<std::uint64_t>(e);
        d.logits[i] = static_cast<float>(grid[static_cast<std::size_t>(e)]) / static_cast<float>(q);
        if (v.caller_noise) {
          d.gumbel[i] = moe::gumbel_from_word(word(rng));
          d.rts[i] = moe::uniform_from_word(word(rng));
        } else {  // the documented Philox layout
          d.gumbel[i] = moe::gumbel(d.p.seed, d.o.noise_offset + w);
          d.rts[i] = moe::uniform(d.p.seed, d.o.noise_offset + static_cast<std::uint64_t>(n) + w);
        }
        d.in.logits[i] = static_cast<double>(d.logits[i]);
        d.in.gumbel[i] = static_cast<double>(d.gumbel[i]);
        d.in.rts[i] = static_cast<double>(d.rts[i]);
      }
      if (ref_select(c, d.in, t, nullptr).margin >= 1.0) break;
    }
  }
  return d;
}

struct outputs {
  std::vector<std::int32_t> expert, slot, counts, kept;
  std::vector<float> weight, scores;
  moe::route_stats stats;
  moe::route_args args() {
    return {nullptr,       expert.data(), weight.data(), slot.data(),
            counts.data(), kept.data(),   scores.data(), &stats,
            nullptr};
  }
  outputs(std::int64_t T, int E, int K)
      : expert(static_cast<std::size_t>(T * K), -7),
        slot(expert.size(), -7),
        counts(static_cast<std::size_t>(E), -7),
        kept(counts.size(), -7),
        weight(expert.size(), -7.0f),
        scores(static_cast<std::size_t>(T * E), -7.0f) {}
};

bool close(double got, double want, double rel, double abs) {
  return std::fabs(got - want) <= rel * std::fabs(want) + abs;
}

/// Runs route<C> on `d` and compares everything with the reference.
template <moe::config C>
void compare_with_reference(case_data const& d, ref_out const& want) {
  std::int64_t const T = d.p.tokens;
  outputs got(T, C.experts, C.top_k);
  moe::route_args a = got.args();
  a.logits = d.logits.data();
  moe::status const s = moe::route<C>(moe::host, d.p, d.options(), a);
  REQUIRE_MESSAGE(s.ok(), s.message());
  CHECK(got.stats.capacity == want.capacity);
  CHECK(got.stats.routes == T * C.top_k);
  CHECK(got.stats.dropped == want.dropped);
  CHECK(got.stats.max_load == want.max_load);
  CHECK(got.counts == want.counts);
  CHECK(got.kept == want.kept);
  bool experts_ok = true, slots_ok = true, weights_ok = true, scores_ok = true;
  for (std::size_t i = 0; i < got.expert.size(); ++i) {
    experts_ok = experts_ok && got.expert[i] == want.expert[i];
    slots_ok = slots_ok && got.slot[i] == want.slot[i];
    weights_ok = weights_ok && close(got.weight[i], want.weight[i], 1e-5, 1e-9);
  }
  for (std::size_t i = 0; i < got.scores.size(); ++i)
    scores_ok = scores_ok && close(got.scores[i], want.scores[i], 1e-5, 1e-9);
  CHECK(experts_ok);
  CHECK(slots_ok);
  CHECK(weights_ok);
  CHECK(scores_ok);
  CHECK(close(got.stats.aux_loss, want.aux, 1e-5, 1e-7));
  CHECK(close(got.stats.z_loss, want.z, 1e-5, 1e-7));
  CHECK(close(got.stats.seq_aux_loss, want.seq, 1e-5, 1e-7));
  if (T > 0) CHECK(got.stats.mean_load == doctest::Approx(double(T) * C.top_k / C.experts));
}


template <moe::config C>
void random_cases(std::initializer_list<variant> variants,
                  std::initializer_list<std::int64_t> sizes = {0, 1, 7, 61, 256, 1000}) {
  char name[200];
  moe::describe(C, name, sizeof name);
  for (variant const& v : variants) {
    for (std::int64_t T : sizes) {
      std::uint64_t const seed = fresh_seed();
      INFO("config ", name, " variant ", std::string(v.name), " T = ", T, " seed = ", seed);
      std::mt19937_64 rng(seed);
      case_data d;
      ref_out want;
      for (int attempt = 0;; ++attempt) {  // cross-token near-ties: draw the whole input again
        REQUIRE(attempt < 20);
        d = make_case(C, v, T, rng);
        want = reference(C, d.in);
        if (want.margin >= 1.0) break;
      }
      compare_with_reference<C>(d, want);
    }
  }
}

// ---- the configs under test -------------------------------------------------------------------

constexpr moe::config switch8{.experts = 8,
                              .top_k = 1,
                              .capacity_factor = {5, 4},
                              .eval_capacity_factor = {2, 1},
                              .act = f32,
                              .weight = f32};
constexpr moe::config top2_pos{.experts = 8,
                               .top_k = 2,
                               .capacity_factor = {5, 4},
                               .act = f32,
                               .weight = f32,
                               .norm = moe::normalization::renormalize};
constexpr moe::config top2_prob{.experts = 8,
                                .top_k = 2,
                                .capacity_factor = {1, 1},
                                .norm = moe::normalization::renormalize,
                                .drop = moe::drop_policy::probability};
constexpr moe::config top2_rts{.experts = 8,
                               .top_k = 2,
                               .capacity_factor = {1, 1},
                               .eval_capacity_factor = {1, 1},
                               .drop = moe::drop_policy::random_token};
constexpr moe::config mixtral{.experts = 8,
                              .top_k = 2,
                              .capacity_factor = {0, 1},
                              .eval_capacity_factor = {0, 1},
                              .order = moe::topk_order::topk_then_score};
constexpr moe::config dsv3{.experts = 64,
                           .top_k = 8,
                           .capacity_factor = {0, 1},
                           .eval_capacity_factor = {0, 1},
                           .score = moe::score_function::sigmoid,
                           .norm = moe::normalization::renormalize,
                           .expert_groups = 8,
                           .topk_groups = 4};
constexpr moe::config k8_pos{.experts = 64, .top_k = 8, .capacity_factor = {1, 1}};
constexpr moe::config sig_topk_prob{.experts = 16,
                                    .top_k = 4,
                                    .capacity_factor = {1, 2},
                                    .score = moe::score_function::sigmoid,
                                    .order = moe::topk_order::topk_then_score,
                                    .norm = moe::normalization::renormalize,
                                    .drop = moe::drop_policy::probability};
constexpr moe::config k_eq_e{
    .experts = 8, .top_k = 8, .capacity_factor = {1, 1}, .norm = moe::normalization::renormalize};
constexpr moe::config groups_of_one{
    .experts = 8, .top_k = 2, .capacity_factor = {3, 2}, .expert_groups = 8, .topk_groups = 3};
constexpr moe::config big_c{.experts = 4, .top_k = 2, .capacity_factor = {100, 1}};
constexpr moe::config e512_k8{.experts = 512,
                              .top_k = 8,
                              .capacity_factor = {5, 4},
                              .norm = moe::normalization::renormalize,
                              .expert_groups = 16,
                              .topk_groups = 4};
constexpr moe::config e512_k1_prob{
    .experts = 512, .top_k = 1, .capacity_factor = {2, 1}, .drop = moe::drop_policy::probability};
namespace presets = moe::configs;
constexpr moe::config ds_top1 = presets::deepspeed_top1(8, {5, 4}, {2, 1}, false);
constexpr moe::config ds_top1_rts = presets::deepspeed_top1(8, {1, 1}, {1, 1}, true, f32);
constexpr moe::config ds_top1_dropless = presets::deepspeed_top1(8, {0, 1}, {1, 1}, false);
constexpr moe::config ds_top2 = presets::deepspeed_top2(8, {1, 1}, {3, 4});
constexpr moe::config ds_top2_dropless = presets::deepspeed_top2(8, {0, 1});
constexpr moe::config ds_topk_probs = presets::deepspeed_topk(16, 4);
constexpr moe::config ds_topk_pos =
    presets::deepspeed_topk(64, 8, {1, 1}, {1, 1}, moe::drop_policy::position, f32);
constexpr moe::config ds_topk_dropless = presets::deepspeed_topk(16, 3, {0, 1});
static_assert(ds_top1 == moe::config{.experts = 8,
                                     .top_k = 1,
                                     .capacity_factor = {5, 4},
                                     .eval_capacity_factor = {2, 1},
                                     .compat = ds});
static_assert(ds_top1_rts.drop == moe::drop_policy::random_token && ds_top1_rts.act == f32);
static_assert(presets::deepspeed_top2(8, {1, 1}, {1, 1}, moe::precision::fp64).accum ==
              moe::precision::fp64);
static_assert(moe::is_valid(ds_topk_probs) && ds_topk_probs.drop == moe::drop_policy::probability);

/// A route call's buffers for fixed small inputs.
template <moe::config C>
struct run {
  std::int64_t T;
  outputs out;
  moe::status s;
  run(std::vector<float> const& logits, moe::problem p, moe::router_options const& o = {})
      : T(p.tokens), out(p.tokens, C.experts, C.top_k) {
    moe::route_args a = out.args();
    a.logits = logits.data();
    s = moe::route<C>(moe::host, p, o, a);
  }
  int expert(std::int64_t t, int k) const {
    return out.expert[static_cast<std::size_t>(t * C.top_k + k)];
  }
  int slot(std::int64_t t, int k) const {
    return out.slot[static_cast<std::size_t>(t * C.top_k + k)];
  }
  float weight(std::int64_t t, int k) const {
    return out.weight[static_cast<std::size_t>(t * C.top_k + k)];
  }
};

}  // namespace

// ---- random inputs against the reference --------------------------------------------------------

TEST_CASE("route(host): native variants equal the float64 reference on random logits") {
  random_cases<switch8>(
      {{.name = "plain"},
       {.name = "rsample", .gumbel_top1 = true},
       {.name = "rsample philox", .gumbel_top1 = true, .caller_noise = false},
       {.name = "eval (noise off, eval factor)", .gumbel_top1 = true, .training = false},
       {.name = "min_capacity 0", .min_capacity = 0}});
  random_cases<top2_pos>({{.name = "plain"},
                          {.name = "sample second", .sample_second = true},
                          {.name = "both Gumbel rounds, philox",
                           .gumbel_top1 = true,
                           .sample_second = true,
                           .caller_noise = false},
                          {.name = "scale 2.5, seq 1", .seq_len = 1, .weight_scale = 2.5f}});
  random_cases<top2_prob>({{.name = "plain", .min_capacity = 0}, {.name = "bias", .bias = true}});
  random_cases<top2_rts>({{.name = "caller priorities"},
                          {.name = "philox priorities", .caller_noise = false},
                          {.name = "eval: position", .training = false, .min_capacity = 1}});
  random_cases<mixtral>({{.name = "plain"}, {.name = "seq", .seq_len = 1}});
  random_cases<dsv3>(
      {{.name = "plain"}, {.name = "bias, scale 2.5", .bias = true, .weight_scale = 2.5f}},
      {0, 1, 7, 64});
  random_cases<k8_pos>({{.name = "plain", .min_capacity = 0}}, {0, 1, 7, 64});
  random_cases<sig_topk_prob>(
      {{.name = "plain", .min_capacity = 1}, {.name = "bias", .bias = true, .min_capacity = 0}});
  random_cases<k_eq_e>({{.name = "plain", .min_capacity = 0}});
  random_cases<groups_of_one>({{.name = "plain", .min_capacity = 0},
                               {.name = "bias, rsample", .bias = true, .gumbel_top1 = true}});
  random_cases<big_c>({{.name = "C > T"}}, {1, 7, 61});
  random_cases<e512_k8>({{.name = "plain", .min_capacity = 0}, {.name = "bias", .bias = true}},
                        {0, 1, 37});
  random_cases<e512_k1_prob>({{.name = "plain", .min_capacity = 0}}, {0, 1, 300});
  random_cases<moe::configs::fine_bf16>({{.name = "plain"}}, {0, 5, 40});
}

TEST_CASE("route(host): the sequence-level loss over several sequences") {
  random_cases<k8_pos>({{.name = "seq 8", .seq_len = 8}}, {64});
  random_cases<dsv3>({{.name = "seq 16", .seq_len = 16}}, {64});
  random_cases<top2_pos>({{.name = "seq 61", .seq_len = 61}}, {61});
}

TEST_CASE("route(host): deepspeed presets equal the float64 reference on random logits") {
  random_cases<ds_top1>({{.name = "plain", .min_capacity = 0},
                         {.name = "rsample", .gumbel_top1 = true},
                         {.name = "rsample philox", .gumbel_top1 = true, .caller_noise = false},
                         {.name = "eval: no rsample", .gumbel_top1 = true, .training = false}});
  random_cases<ds_top1_rts>({{.name = "caller uniforms", .min_capacity = 0},
                             {.name = "philox uniforms", .caller_noise = false},
                             {.name = "eval: RTS stays on", .training = false, .min_capacity = 1}});
  random_cases<ds_top1_dropless>({{.name = "plain"}});
  random_cases<ds_top2>({{.name = "plain", .min_capacity = 0},
                         {.name = "2nd sampling", .sample_second = true},
                         {.name = "2nd sampling philox",
                          .sample_second = true,
                          .caller_noise = false,
                          .min_capacity = 1},
                         {.name = "eval: sampling stays on",
                          .sample_second = true,
                          .training = false,
                          .min_capacity = 0}});
  random_cases<ds_top2_dropless>({{.name = "plain"}, {.name = "sampling", .sample_second = true}});
  random_cases<ds_topk_probs>({{.name = "plain", .min_capacity = 0}});
  random_cases<ds_topk_pos>({{.name = "plain", .min_capacity = 0}}, {0, 1, 7, 64});
  random_cases<ds_topk_dropless>({{.name = "plain"}});
}

TEST_CASE("route(host): Philox noise follows the documented layout") {
  // Caller-supplied tensors equal to the Philox draws give the same routes, bit for bit.
  constexpr moe::config c{
      .experts = 8, .top_k = 2, .capacity_factor = {1, 2}, .drop = moe::drop_policy::random_token};
  std::int64_t const T = 33;
  moe::problem const p{.tokens = T, .min_capacity = 0, .seed = 0xfeedULL};
  std::vector<float> logits(T * 8), g(logits.size()), u(logits.size());
  std::mt19937 rng(5);
  for (float& x : logits) x = static_cast<float>(static_cast<int>(rng() % 200) - 100) / 37.0f;
  moe::router_options o{.gumbel_top1 = true, .sample_second = true, .noise_offset = 1001};
  for (std::size_t i = 0; i < logits.size(); ++i) {
    g[i] = moe::gumbel(p.seed, 1001 + i);
    u[i] = moe::uniform(p.seed, 1001 + logits.size() + i);
  }
  CHECK(moe::router_noise_words<c>(T) == 2 * logits.size());
  run<c> philox(logits, p, o);
  o.gumbel = g.data();
  o.rts_priority = u.data();
  run<c> given(logits, p, o);
  REQUIRE(philox.s.ok());
  REQUIRE(given.s.ok());
  CHECK(philox.out.expert == given.out.expert);
  CHECK(philox.out.slot == given.out.slot);
  CHECK(std::memcmp(philox.out.weight.data(), given.out.weight.data(),
                    philox.out.weight.size() * sizeof(float)) == 0);
  CHECK(philox.out.stats.dropped > 0);
}

// ---- DeepSpeed's worked example and capacity rounding ------------------------------------------

TEST_CASE("route(host): the DeepSpeed top-2 worked example (E = 3, cf = 0.5, T = 6, C = 2)") {
  // clang-format off
  // [snippet routing_worked_example]
  constexpr moe::config c = moe::configs::deepspeed_top2(3, {1, 2});  // E = 3, K = 2, cf = 0.5
  std::vector<float> const logits = {3, 2, 0,  3, 0, 2,  2, 3, 0,   // t0 t1 t2
                                     3, 2, 0,  0, 3, 2,  3, 0, 2};  // t3 t4 t5
  moe::problem const p{.tokens = 6, .min_capacity = 0};
  std::vector<std::int32_t> expert(12), slot(12), counts(3), kept(3);
  std::vector<float> weight(12);
  moe::route_stats stats;
  moe::status const s = moe::route<c>(
      moe::host, p, moe::router_options{},
      {.logits = logits.data(), .expert = expert.data(), .weight = weight.data(),
       .slot = slot.data(), .counts = counts.data(), .kept = kept.data(), .stats = &stats});
  // [end snippet]
  // clang-format on
  REQUIRE(s.ok());
  CHECK(stats.capacity == 2);
  std::vector<std::int32_t> const want_expert = {0, 1, 0, 2, 1, 0, 0, 1, 1, 2, 0, 2};
  std::vector<std::int32_t> const want_slot = {0, -1, 1, 0, 0, -1, -1, -1, 1, 1, -1, -1};
  CHECK(expert == want_expert);
  CHECK(slot == want_slot);
  double const big = 1 / (1 + std::exp(-1.0));  // e^3 / (e^3 + e^2) = 0.731
  std::vector<double> const want_weight = {1, 0, big, 1 - big, 1, 0, 0, 0, big, 1 - big, 0, 0};
  for (std::size_t i = 0; i < 12; ++i)
    CHECK(weight[i] == doctest::Approx(want_weight[i]).epsilon(1e-6));
  CHECK(weight[0] == 1.0f);  // a single survivor gets exactly 1
  CHECK(weight[4] == 1.0f);
  CHECK(counts == std::vector<std::int32_t>{5, 4, 3});  // exp_counts: before drops
  CHECK(kept == std::vector<std::int32_t>{2, 2, 2});
  CHECK(stats.dropped == 6);
  // l_aux = E Σ_e me_e ce_e with ce from the first choices (4, 2, 0) / 6.
  double me[3] = {0, 0, 0};
  for (int t = 0; t < 6; ++t) {
    double z = 0;
    for (int e = 0; e < 3; ++e) z += std::exp(double(logits[static_cast<std::size_t>(t * 3 + e)]));
    for (int e = 0; e < 3; ++e)
      me[e] += std::exp(double(logits[static_cast<std::size_t>(t * 3 + e)])) / z / 6;
  }
  CHECK(stats.aux_loss == doctest::Approx(3 * (me[0] * 4 / 6 + me[1] * 2 / 6)).epsilon(1e-6));
}

TEST_CASE("route(host): DeepSpeed's float32 capacity (T = 70, E = 3, cf = 0.3 gives C = 8)") {
  constexpr moe::config ds1{.experts = 3, .top_k = 1, .capacity_factor = {3, 10}, .compat = ds};
  constexpr moe::config native1{.experts = 3, .top_k = 1, .capacity_factor = {3, 10}};
  constexpr moe::config ds2{.experts = 3, .top_k = 2, .capacity_factor = {3, 20}, .compat = ds};
  moe::problem const p{.tokens = 70, .min_capacity = 0};
  std::vector<float> logits(70 * 3);
  for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = i % 3 == 0 ? 1.0f : 0.0f;
  run<ds1> a(logits, p);
  run<native1> b(logits, p);
  run<ds2> c2(logits, p);
  REQUIRE(a.s.ok());
  CHECK(a.out.stats.capacity == 8);   // ceil(fl32(23.333334) * fl32(0.3)) = ceil(7.0000005)
  CHECK(b.out.stats.capacity == 7);   // exact: ceil(0.3 * 70 / 3) = 7
  CHECK(c2.out.stats.capacity == 8);  // 2 * 0.15 formed in double, then the same product
  CHECK(a.out.kept[0] == 8);          // every token chose expert 0: the first 8 survive
  for (std::int64_t t = 0; t < 70; ++t) CHECK(a.slot(t, 0) == (t < 8 ? t : -1));
  CHECK(moe::detail::routing::deepspeed_capacity(70, 3, {3, 10}, 1, 4) == 8);
  CHECK(moe::detail::routing::deepspeed_capacity(70, 3, {3, 10}, 1, 9) == 9);  // min_capacity
  // A sweep: the float32 formula against the same formula written with volatile floats.
  for (std::int64_t T = 1; T < 3000; T += 7)
    for (int E : {3, 7, 12, 64})
      for (moe::ratio cf :
           {moe::ratio{3, 10}, moe::ratio{5, 4}, moe::ratio{1, 3}, moe::ratio{7, 10}})
        for (int k : {1, 2, 3}) {
          volatile float te = static_cast<float>(static_cast<double>(T) / E);
          volatile float f = static_cast<float>(static_cast<double>(cf.num) / cf.den * k);
          volatile float prod = te * f;
          auto const want = static_cast<std::int64_t>(std::ceil(static_cast<float>(prod)));
          CHECK(moe::detail::routing::deepspeed_capacity(T, E, cf, k, 0) == want);
        }
}

// ---- edge cases --------------------------------------------------------------------------------

TEST_CASE("route(host): T = 0 is a no-op with zeroed counts and statistics") {
  moe::problem const p{.tokens = 0};
  std::vector<std::int32_t> counts(8, 5), kept(8, 5);
  moe::route_stats stats{.capacity = 9, .routes = 9, .dropped = 9, .aux_loss = 1.0f};
  moe::route_args const a{.counts = counts.data(), .kept = kept.data(), .stats = &stats};
  moe::status const s = moe::route<top2_pos>(moe::host, p, {}, a);
  REQUIRE_MESSAGE(s.ok(), s.message());
  CHECK(counts == std::vector<std::int32_t>(8, 0));
  CHECK(kept == std::vector<std::int32_t>(8, 0));
  CHECK(stats.capacity == 0);
  CHECK(stats.routes == 0);
  CHECK(stats.dropped == 0);
  CHECK(stats.aux_loss == 0.0f);
  moe::route_backward_args const b{};
  CHECK(moe::route_backward<top2_pos>(moe::host, p, {}, b).ok());
}

TEST_CASE("route(host): an expert with no tokens, and all tokens on one expert") {
  constexpr moe::config c{.experts = 4, .top_k = 1, .capacity_factor = {1, 1}};
  std::int64_t const T = 12;
  std::vector<float> logits(T * 4, 0.0f);
  for (std::int64_t t = 0; t < T; ++t)
    logits[static_cast<std::size_t>(t * 4 + t % 3)] = 2.0f;  // experts 0, 1, 2 in turn; never 3
  run<c> spread(logits, {.tokens = T, .min_capacity = 0});
  REQUIRE(spread.s.ok());
  CHECK(spread.out.counts == std::vector<std::int32_t>{4, 4, 4, 0});
  CHECK(spread.out.kept == std::vector<std::int32_t>{3, 3, 3, 0});  // C = ceil(12 / 4) = 3
  CHECK(spread.out.stats.dropped == 3);
  CHECK(spread.out.stats.max_load == 4);

  // All on expert 2, with rising confidence: position keeps the first C, probability the last.
  for (std::int64_t t = 0; t < T; ++t) {
    for (int e = 0; e < 4; ++e) logits[static_cast<std::size_t>(t * 4 + e)] = 0.0f;
    logits[static_cast<std::size_t>(t * 4 + 2)] = 1.0f + static_cast<float>(t) / 8.0f;
  }
  run<c> pos(logits, {.tokens = T, .min_capacity = 0});
  constexpr moe::config cp{
      .experts = 4, .top_k = 1, .capacity_factor = {1, 1}, .drop = moe::drop_policy::probability};
  run<cp> prob(logits, {.tokens = T, .min_capacity = 0});
  constexpr moe::config cd{.experts = 4, .top_k = 1, .capacity_factor = {0, 1}};
  run<cd> dropless(logits, {.tokens = T});
  for (std::int64_t t = 0; t < T; ++t) {
    CHECK(pos.expert(t, 0) == 2);
    CHECK(pos.slot(t, 0) == (t < 3 ? t : -1));
    CHECK(prob.slot(t, 0) == (t >= 9 ? t - 9 : -1));  // survivors numbered in token order
    CHECK(dropless.slot(t, 0) == t);
    CHECK((pos.slot(t, 0) < 0) == (pos.weight(t, 0) == 0.0f));
  }
  CHECK(dropless.out.stats.capacity == T);
  CHECK(dropless.out.stats.dropped == 0);
  CHECK(pos.out.stats.aux_loss > 2.0f);  // E f_2 P_2 with f_2 = 1 and P_2 > 1/2
}

TEST_CASE("route(host): ties go to the lower expert, group and token index") {
  std::int64_t const T = 6;
  std::vector<float> logits(T * 8, 0.5f);  // every score equal
  constexpr moe::config c{.experts = 8,
                          .top_k = 3,
                          .capacity_factor = {1, 1},
                          .drop = moe::drop_policy::probability,
                          .expert_groups = 4,
                          .topk_groups = 2};
  run<c> r(logits, {.tokens = T, .min_capacity = 0});  // C = ceil(6 * 3 / 8) = 3
  REQUIRE(r.s.ok());
  for (std::int64_t t = 0; t < T; ++t) {
    CHECK(r.expert(t, 0) == 0);  // groups 0 and 1 kept, then experts 0, 1, 2
    CHECK(r.expert(t, 1) == 1);
    CHECK(r.expert(t, 2) == 2);
    for (int k = 0; k < 3; ++k) CHECK(r.slot(t, k) == (t < 3 ? t : -1));  // equal scores: t order
  }
  constexpr moe::config d{.experts = 4, .top_k = 2, .capacity_factor = {1, 1}, .compat = ds};
  std::vector<float> flat(4 * 4, 0.0f);
  run<d> r2(flat, {.tokens = 4, .min_capacity = 0});
  for (std::int64_t t = 0; t < 4; ++t) {
    CHECK(r2.expert(t, 0) == 0);
    CHECK(r2.expert(t, 1) == 1);
  }
}

TEST_CASE("route(host): K = E, C > T and the statistics") {
  std::int64_t const T = 5;
  std::vector<float> logits(T * 4);
  for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i % 7) - 3.0f;
  constexpr moe::config all{
      .experts = 4, .top_k = 4, .capacity_factor = {1, 1}, .norm = moe::normalization::renormalize};
  run<all> r(logits, {.tokens = T});
  REQUIRE(r.s.ok());
  for (std::int64_t t = 0; t < T; ++t) {
    double sum = 0;
    for (int k = 0; k < 4; ++k) sum += r.weight(t, k);
    CHECK(sum == doctest::Approx(1.0).epsilon(1e-6));
    CHECK(r.out.stats.capacity == 5);  // max(4, ceil(5 * 4 / 4))
  }
  CHECK(r.out.counts == std::vector<std::int32_t>(4, 5));
  CHECK(r.out.stats.dropped == 0);
  CHECK(r.out.stats.aux_loss == doctest::Approx(1.0).epsilon(1e-6));  // f_e = 1/E: aux = Σ P_e = 1
  run<big_c> b(logits, {.tokens = T});
  CHECK(b.out.stats.capacity == 250);  // ceil(100 * 5 * 2 / 4) > T
  CHECK(b.out.stats.dropped == 0);
  CHECK(b.out.stats.mean_load == 2.5f);
}

TEST_CASE("route(host): the selection bias steers experts but not weights") {
  constexpr moe::config c{.experts = 4, .top_k = 1, .capacity_factor = {0, 1}};
  std::vector<float> const logits = {1.0f, 0.0f, 0.0f, 0.0f};
  std::vector<float> const bias = {0.0f, 0.0f, 0.0f, 1.0f};
  run<c> r(logits, {.tokens = 1}, {.expert_bias = bias.data()});
  REQUIRE(r.s.ok());
  CHECK(r.expert(0, 0) == 3);
  double const want = 1.0 / (std::exp(1.0) + 3.0);  // unbiased softmax score of expert 3
  CHECK(r.weight(0, 0) == doctest::Approx(want).epsilon(1e-6));
}

TEST_CASE("update_expert_bias: a step of `rate` against the sign of the load error") {
  constexpr moe::config c{.experts = 4, .top_k = 1};
  std::vector<std::int32_t> const counts = {6, 2, 4, 4};  // mean 4
  std::vector<float> bias = {0.0f, 0.0f, 0.5f, -1.0f};
  REQUIRE(moe::update_expert_bias<c>(moe::host, 0.25f, counts.data(), bias.data()).ok());
  CHECK(bias == std::vector<float>{-0.25f, 0.25f, 0.5f, -1.0f});
  moe::status const s = moe::update_expert_bias<c>(moe::host, 0.25f, nullptr, bias.data());
  CHECK(std::string(s.message()) == "update_expert_bias.counts: expected non-null");
  moe::status const n = moe::update_expert_bias<c>(moe::host, NAN, counts.data(), bias.data());
  CHECK(std::string(n.message()) == "update_expert_bias.rate: expected a finite value, got nan");
}

// ---- the shared fp32 arithmetic
// ------------------------------------------------------------------

TEST_CASE("router arithmetic: exp_det within 1 ulp, sigmoid_det, lane_order_sum's order") {
  double worst = 0;
  for (float x = -103.0f; x < 88.7f; x = std::nextafter(x + 0.0003779f, 100.0f)) {
    double const want = std::exp(static_cast<double>(x));
    float const got = moe::detail::routing::exp_det(x);
    float const w32 = static_cast<float>(want);
    double const ulp = static_cast<double>(std::nextafter(w32, INFINITY) - w32);
    worst = std::max(worst, std::fabs(static_cast<double>(got) - want) / ulp);
  }
  for (float x : {-1e-7f, 0.0f, 1e-7f, 0.3465f, -0.3466f, 1.0f, -1.0f, 88.72f, -87.0f})
    CHECK(std::fabs(moe::detail::routing::exp_det(x) - std::exp(x)) <=
          std::fabs(std::nextafter(std::exp(x), INFINITY) - std::exp(x)));
  MESSAGE("exp_det: worst error ", worst, " ulp");
  CHECK(worst <= 1.0);
  CHECK(moe::detail::routing::exp_det(0.0f) == 1.0f);
  CHECK(moe::detail::routing::exp_det(-104.5f) == 0.0f);
  CHECK(std::isinf(moe::detail::routing::exp_det(89.0f)));
  CHECK(moe::detail::routing::exp_det(-100.0f) > 0.0f);  // subnormal
  CHECK(moe::detail::routing::sigmoid_det(0.0f) == 0.5f);
  CHECK(moe::detail::routing::sigmoid_det(-200.0f) == 0.0f);
  CHECK(moe::detail::routing::sigmoid_det(200.0f) == 1.0f);
  // The warp order: lanes sum their strided elements, then halves fold.
  float x[70];
  for (int i = 0; i < 70; ++i) x[i] = 1.0f + static_cast<float>(i) * 0x1p-20f;
  float part[32] = {};
  for (int i = 0; i < 70; ++i) part[i % 32] += x[i];
  for (int m = 16; m >= 1; m /= 2)
    for (int j = 0; j < m; ++j) part[j] += part[j + m];
  CHECK(moe::detail::routing::lane_order_sum(70, [&](int i) { return x[i]; }) == part[0]);
}

// ---- backward against finite differences --------------------------------------------------------

namespace {

/// L = Σ dw·w + aux_coef·aux + z_coef·z + seq_coef·seq of the reference, decisions fixed.
double ref_loss(moe::config const& c, ref_in const& in, ref_out const& fixed,
                std::vector<double> const& dw, moe::problem const& p,
                moe::router_options const& o) {
  ref_out const r = reference(c, in, &fixed);
  double L = 0;
  for (std::size_t i = 0; i < dw.size(); ++i) L += dw[i] * r.weight[i];
  return L + static_cast<double>(p.aux_loss_coef) * r.aux +
         static_cast<double>(p.z_loss_coef) * r.z +
         static_cast<double>(o.seq_aux_loss_coef) * r.seq;
}

template <moe::config C>
void backward_cases(std::initializer_list<variant> variants, std::int64_t T = 12) {
  char name[200];
  moe::describe(C, name, sizeof name);
  for (variant const& v : variants) {
    std::uint64_t const seed = fresh_seed();
    INFO("config ", name, " variant ", std::string(v.name), " T = ", T, " seed = ", seed);
    std::mt19937_64 rng(seed);
    case_data d = make_case(C, v, T, rng);
    ref_out const fixed = reference(C, d.in);
    outputs fwd(T, C.experts, C.top_k);
    moe::route_args a = fwd.args();
    a.logits = d.logits.data();
    REQUIRE(moe::route<C>(moe::host, d.p, d.options(), a).ok());
    REQUIRE(fwd.expert == fixed.expert);
    REQUIRE(fwd.slot == fixed.slot);
    std::vector<float> dw(fwd.expert.size()), dl(d.logits.size(), -7.0f);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    for (float& x : dw) x = unit(rng);
    moe::route_backward_args const b{d.logits.data(), fwd.expert.data(), fwd.slot.data(), dw.data(),
                                     dl.data()};
    moe::status const s = moe::route_backward<C>(moe::host, d.p, d.options(), b);
    REQUIRE_MESSAGE(s.ok(), s.message());
    std::vector<double> const dwd = widen(dw);
    double const h = 1e-5;
    double worst = 0;
    for (std::size_t i = 0; i < d.logits.size(); ++i) {
      ref_in in = d.in;
      in.logits[i] += h;
      double const up = ref_loss(C, in, fixed, dwd, d.p, d.o);
      in.logits[i] -= 2 * h;
      double const down = ref_loss(C, in, fixed, dwd, d.p, d.o);
      double const fd = (up - down) / (2 * h);
      worst = std::max(worst,
                       std::fabs(static_cast<double>(dl[i]) - fd) / (1e-5 * std::fabs(fd) + 1e-6));
    }
    CHECK(worst <= 1.0);
  }
}

}  // namespace

TEST_CASE("route_backward(host): d_logits equal central finite differences of the reference") {
  backward_cases<switch8>({{.name = "plain"}, {.name = "scale", .weight_scale = 1.5f}});
  backward_cases<top2_pos>({{.name = "renormalise, drops"}, {.name = "seq 4", .seq_len = 4}});
  backward_cases<top2_prob>({{.name = "plain", .min_capacity = 0}});
  backward_cases<mixtral>({{.name = "topk_then_score softmax"}});
  backward_cases<sig_topk_prob>(
      {{.name = "sigmoid, K softmax-free", .min_capacity = 0}, {.name = "seq 3", .seq_len = 3}});
  backward_cases<dsv3>({{.name = "groups, bias, sigmoid", .bias = true, .weight_scale = 2.5f}}, 8);
  backward_cases<k8_pos>({{.name = "K = 8, no renormalisation", .min_capacity = 0}}, 8);
  backward_cases<ds_top1>(
      {{.name = "plain", .min_capacity = 0}, {.name = "rsample", .gumbel_top1 = true}});
  backward_cases<ds_top2>({{.name = "plain", .min_capacity = 0},
                           {.name = "sampling", .sample_second = true, .min_capacity = 0}});
  backward_cases<ds_topk_probs>({{.name = "plain", .min_capacity = 0}});
}

// ---- bad input ---------------------------------------------------------------------------------

TEST_CASE("route(host): every bad input gets a status naming it") {
  std::int64_t const T = 4;
  std::vector<float> logits(T * 8, 0.25f);
  outputs o(T, 8, 2);
  moe::problem const p{.tokens = T};
  auto msg = [&](moe::problem const& pp, moe::router_options const& opt, moe::route_args const& a) {
    moe::status const s = moe::route<top2_pos>(moe::host, pp, opt, a);
    CHECK(s.code() == moe::errc::invalid_argument);
    return std::string(s.message());
  };
  moe::route_args good = o.args();
  good.logits = logits.data();
  REQUIRE(moe::route<top2_pos>(moe::host, p, {}, good).ok());

  logits[2 * 8 + 5] = NAN;
  logits[3 * 8 + 1] = INFINITY;
  CHECK(msg(p, {}, good) == "route_args.logits[2, 5]: expected a finite value, got nan");
  logits[2 * 8 + 5] = 0.0f;
  CHECK(msg(p, {}, good) == "route_args.logits[3, 1]: expected a finite value, got inf");
  logits[3 * 8 + 1] = 0.0f;

  auto without = [&](auto field) {
    moe::route_args a = good;
    a.*field = nullptr;
    return msg(p, {}, a);
  };
  CHECK(without(&moe::route_args::logits) == "route_args.logits: expected non-null");
  CHECK(without(&moe::route_args::expert) == "route_args.expert: expected non-null");
  CHECK(without(&moe::route_args::weight) == "route_args.weight: expected non-null");
  CHECK(without(&moe::route_args::slot) == "route_args.slot: expected non-null");
  CHECK(without(&moe::route_args::counts) == "route_args.counts: expected non-null");
  CHECK(without(&moe::route_args::kept) == "route_args.kept: expected non-null");
  CHECK(without(&moe::route_args::stats) == "route_args.stats: expected non-null");
  moe::route_args mis = good;
  mis.weight = reinterpret_cast<float*>(reinterpret_cast<char*>(o.weight.data()) + 2);
  CHECK(msg(p, {}, mis) == "route_args.weight: expected 4-byte alignment");

  CHECK(msg({.tokens = -1}, {}, good) == "problem.tokens: expected 0 <= T <= 2^31 - 1, got -1");
  CHECK(msg({.tokens = T, .min_capacity = -2}, {}, good) ==
        "problem.min_capacity: expected >= 0, got -2");
  CHECK(msg({.tokens = T, .aux_loss_coef = -1.0f}, {}, good) ==
        "problem.aux_loss_coef: expected a finite value >= 0, got -1");
  CHECK(msg({.tokens = T, .z_loss_coef = NAN}, {}, good) ==
        "problem.z_loss_coef: expected a finite value >= 0, got nan");
  CHECK(msg(p, {.seq_len = 3}, good) ==
        "router_options.seq_len: expected 0 or a divisor of T = 4, got 3");
  CHECK(msg(p, {.seq_len = -1}, good) ==
        "router_options.seq_len: expected 0 or a divisor of T = 4, got -1");
  CHECK(msg(p, {.weight_scale = INFINITY}, good) ==
        "router_options.weight_scale: expected a finite value, got inf");
  CHECK(msg(p, {.seq_aux_loss_coef = -0.5f}, good) ==
        "router_options.seq_aux_loss_coef: expected a finite value >= 0, got -0.5");
  std::vector<float> bias(8, 0.0f);
  bias[6] = NAN;
  CHECK(msg(p, {.expert_bias = bias.data()}, good) ==
        "router_options.expert_bias[6]: expected a finite value, got nan");
  std::vector<float> g(T * 8, 0.0f);
  g[9] = -INFINITY;
  CHECK(msg(p, {.sample_second = true, .gumbel = g.data()}, good) ==
        "router_options.gumbel[1, 1]: expected a finite value, got -inf");
  // Unused noise is not read: eval turns sampling off.
  moe::problem eval = p;
  eval.training = false;
  CHECK(moe::route<top2_pos>(moe::host, eval, {.sample_second = true, .gumbel = g.data()}, good)
            .ok());

  // Options that a config cannot use.
  auto ds_msg = [&]<moe::config C>(moe::router_options const& opt) {
    outputs out(T, C.experts, C.top_k);
    moe::route_args a = out.args();
    a.logits = logits.data();
    return std::string(moe::route<C>(moe::host, p, opt, a).message());
  };
  CHECK(ds_msg.operator()<ds_top2>({.expert_bias = bias.data()}) ==
        "router_options.expert_bias: expected null for deepspeed routing (DeepSpeed has no "
        "selection bias)");
  CHECK(ds_msg.operator()<ds_top2>({.gumbel_top1 = true}) ==
        "router_options.gumbel_top1: deepspeed RSample exists for K = 1 only, got K = 2");
  CHECK(ds_msg.operator()<ds_top1>({.sample_second = true}) ==
        "router_options.sample_second: expected K == 2, got K = 1");
  CHECK(ds_msg.operator()<switch8>({.sample_second = true}) ==
        "router_options.sample_second: expected K >= 2, got K = 1");
  constexpr moe::config rts1{.experts = 8, .top_k = 1, .drop = moe::drop_policy::random_token};
  std::vector<float> u(T * 8, 0.5f);
  u[30] = NAN;
  CHECK(ds_msg.operator()<rts1>({.rts_priority = u.data()}) ==
        "router_options.rts_priority[3, 6]: expected a finite value, got nan");
}

TEST_CASE("route(host): bad_logit holds the lowest non-finite logit's flat index, or -1") {
  std::int64_t const T = 5;
  constexpr std::int32_t E = 8;
  std::vector<float> logits(T * E, 0.25f);
  for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i % 7) * 0.5f;
  outputs o(T, E, 2);
  moe::problem const p{.tokens = T};
  std::int64_t bad = -7;
  moe::route_args a = o.args();
  a.logits = logits.data();
  a.bad_logit = &bad;
  moe::status s = moe::route<top2_pos>(moe::host, p, {}, a);
  REQUIRE_MESSAGE(s.ok(), s.message());
  CHECK(bad == -1);
  {  // the same results with and without bad_logit
    outputs o2(T, E, 2);
    moe::route_args a2 = o2.args();
    a2.logits = logits.data();
    REQUIRE(moe::route<top2_pos>(moe::host, p, {}, a2).ok());
    CHECK(o2.expert == o.expert);
    CHECK(o2.slot == o.slot);
    CHECK(o2.weight == o.weight);
  }

  logits[3 * E + 6] = NAN;  // one bad value at (3, 6)
  bad = -7;
  s = moe::route<top2_pos>(moe::host, p, {}, a);
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::string(s.message()) == "route_args.logits[3, 6]: expected a finite value, got nan");
  CHECK(bad == 3 * E + 6);

  logits[4 * E + 0] = -INFINITY;  // several: the lowest flat index wins, whatever the kind
  logits[1 * E + 7] = INFINITY;
  logits[3 * E + 2] = NAN;
  bad = -7;
  s = moe::route<top2_pos>(moe::host, p, {}, a);
  CHECK(std::string(s.message()) == "route_args.logits[1, 7]: expected a finite value, got inf");
  CHECK(bad == 1 * E + 7);

  logits[0] = -INFINITY;  // flat index 0 is not confused with "none"
  bad = -7;
  CHECK(!moe::route<top2_pos>(moe::host, p, {}, a).ok());
  CHECK(bad == 0);

  bad = -7;  // T = 0: nothing to scan, -1
  moe::route_args z = o.args();
  z.bad_logit = &bad;
  REQUIRE(moe::route<top2_pos>(moe::host, moe::problem{.tokens = 0}, {}, z).ok());
  CHECK(bad == -1);

  bad = -7;  // a rejected argument leaves bad_logit untouched
  a.bad_logit = reinterpret_cast<std::int64_t*>(reinterpret_cast<char*>(&bad) + 1);
  s = moe::route<top2_pos>(moe::host, p, {}, a);
  CHECK(std::string(s.message()) == "route_args.bad_logit: expected 8-byte alignment");
  CHECK(bad == -7);
}

TEST_CASE("route_backward(host): every bad input gets a status naming it") {
  std::int64_t const T = 3;
  std::vector<float> logits(T * 8, 0.0f), dw(T * 2, 1.0f), dl(T * 8);
  std::vector<std::int32_t> expert = {0, 1, 2, 3, 4, 5}, slot = {0, 0, 0, -1, 0, 0};
  moe::problem const p{.tokens = T};
  moe::route_backward_args const good{logits.data(), expert.data(), slot.data(), dw.data(),
                                      dl.data()};
  REQUIRE(moe::route_backward<top2_pos>(moe::host, p, {}, good).ok());
  auto msg = [&](moe::route_backward_args const& b) {
    return std::string(moe::route_backward<top2_pos>(moe::host, p, {}, b).message());
  };
  moe::route_backward_args b = good;
  b.d_logits = nullptr;
  CHECK(msg(b) == "route_backward_args.d_logits: expected non-null");
  b = good;
  b.expert = nullptr;
  CHECK(msg(b) == "route_backward_args.expert: expected non-null");
  expert[3] = 8;
  CHECK(msg(good) == "route_backward_args.expert[1, 1]: expected an expert in [0, 8), got 8");
  expert[3] = 3;
  slot[4] = -2;
  CHECK(msg(good) == "route_backward_args.slot[2, 0]: expected -1 or a slot >= 0, got -2");
  slot[4] = 0;
  logits[7] = NAN;
  CHECK(msg(good) == "route_backward_args.logits[0, 7]: expected a finite value, got nan");
  logits[7] = 0;
  dw[5] = INFINITY;
  CHECK(msg(good) == "route_backward_args.d_weight[2, 1]: expected a finite value, got inf");
}
