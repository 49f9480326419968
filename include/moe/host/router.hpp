// SPDX-License-Identifier: Apache-2.0
// CPU backend of the router (moe/router.hpp): route, route_backward and update_expert_bias.
// Plain loops, one token at a time, so the per-token work is independent and every reduction
// has one fixed order — the CUDA kernel mirrors exactly this. The algorithm of route:
//
//   1. Scan the inputs: the first non-finite logit (t, e) in row-major order is reported (and
//      its flat index t·E + e written to route_args::bad_logit, -1 if none).
//   2. Per token t (select_native / select_deepspeed), all in fp32 with the functions of
//      detail::routing:  scores s = softmax_row(l) or sigmoid_det(l) over all E;  selection key
//      (native) sel = s (score_then_topk) or l (topk_then_score), + expert_bias by add_rn;
//      group filter (G > 1): group score = add_rn of the group's two largest keys, the M best
//      groups kept;  K rounds of argmax over the allowed experts not yet taken, strict `>` so
//      the lower index wins ties — a round that samples uses add_rn(l, g) as its key;  gate
//      a_k = s[e_k] (or, topk_then_score with softmax, the softmax of the K chosen logits:
//      exp_det(l - max), sum in choice order, div_rn).  Native weights: renormalised by
//      div_rn(a_k, max(Σ_k a_k, FLT_MIN)) (sum in choice order), then mul_rn(·, weight_scale).
//   3. counts[e] before drops; C = capacity<C>(p) (native), deepspeed_capacity(...) (deepspeed),
//      or the largest count when dropless.
//   4. Per expert, its routes in token order; if more than C, the first C in priority order
//      survive: (k, t) for position, (a_k desc, t) for probability, (u[t, e] desc, t) for
//      random_token; DeepSpeed top-1/top-k position is t order. Survivors are numbered
//      0, 1, ... in token order, except DeepSpeed top-2, whose slot is the (k, t) rank
//      (every first choice queues ahead of every second choice).
//   5. DeepSpeed weights from the survivors (step 5 of the issue), dropped routes get 0.
//   6. Losses and statistics in double, in token order.
#pragma once

#include <algorithm>  // std::sort, std::max
#include <cfloat>     // FLT_MIN
#include <cmath>      // std::exp, std::log, std::isfinite
#include <cstdint>    // std::int32_t, std::int64_t, std::uint64_t
#include <cstddef>    // std::size_t
#include <cstdint>    // std::uintptr_t
#include <memory>     // std::unique_ptr (scratch when the policy has no workspace)
#include <new>        // std::nothrow, placement new

#include "moe/config.hpp"             // moe::config, max_experts
#include "moe/detail/float_math.hpp"  // detail::add_rn, mul_rn, div_rn
#include "moe/philox.hpp"             // moe::gumbel, moe::uniform
#include "moe/router.hpp"             // the argument structs, detail::routing

namespace moe::detail::routing {

// ---- per-token steps shared with the CUDA kernel (moe/cuda/kernels/router.cuh) -------------
// Each takes plain pointers to one token's values, so the host passes its stack rows and the
// kernel passes shared-memory rows; the arithmetic, and so every bit, is the same.

/// Group score of DeepSeek-V3 group-limited routing: add_rn of the two largest of the n keys
/// key[0, n) (the key itself when n = 1), scanned in index order.
MOE_HOST_DEVICE float group_top2_score(float const* key, std::int32_t n) {
  float b1 = key[0];
  float b2 = 0.0f;
  bool have2 = false;
  for (std::int32_t i = 1; i < n; ++i) {
    float const v = key[i];
    if (v > b1) {
      b2 = b1;
      b1 = v;
    } else if (!have2 || v > b2) {
      b2 = v;
    }
    have2 = true;
  }
  return have2 ? add_rn(b1, b2) : b1;
}

/// Gates a[k] of the K chosen experts, from their logits lk[k] and scores sk[k]: the softmax of
/// the K logits (exp_det(l - max), sum in choice order, div_rn) when k_softmax
/// (topk_then_score with softmax), else the scores themselves.
MOE_HOST_DEVICE void native_gates(bool k_softmax, float const* lk, float const* sk,
                                  std::int32_t K, float* a) {
  if (k_softmax) {
    float m = lk[0];
    for (std::int32_t k = 1; k < K; ++k) m = lk[k] > m ? lk[k] : m;
    float sum = 0.0f;
    for (std::int32_t k = 0; k < K; ++k) {
      a[k] = exp_det(sub_rn(lk[k], m));
      sum = add_rn(sum, a[k]);
    }
    for (std::int32_t k = 0; k < K; ++k) a[k] = div_rn(a[k], sum);
  } else {
    for (std::int32_t k = 0; k < K; ++k) a[k] = sk[k];
  }
}

/// Native (pre-drop) weights: renormalised over the K by div_rn(a_k, max(Σ a, FLT_MIN)) (sum in
/// choice order) when renorm, then mul_rn by scale.
MOE_HOST_DEVICE void native_weights(bool renorm, float const* a, std::int32_t K, float scale,
                                    float* w) {
  float den = 1.0f;
  if (renorm) {
    float sum = 0.0f;
    for (std::int32_t k = 0; k < K; ++k) sum = add_rn(sum, a[k]);
    den = sum > FLT_MIN ? sum : FLT_MIN;
  }
  for (std::int32_t k = 0; k < K; ++k) {
    float const v = renorm ? div_rn(a[k], den) : a[k];
    w[k] = mul_rn(v, scale);
  }
}

/// Weights of one token after the drops. DeepSpeed (deepspeed = true): renormalised over the
/// survivors (K > 1), dividing by max(sum, 2^-23), then scaled. Every dropped route gets 0.
/// Returns the number of dropped routes.
MOE_HOST_DEVICE std::int32_t weights_after_drops(bool deepspeed, std::int32_t const* sl,
                                                 float const* g, std::int32_t K, float scale,
                                                 float* w) {
  if (deepspeed) {
    float den = 1.0f;
    if (K > 1) {
      float sum = 0.0f;
      for (std::int32_t k = 0; k < K; ++k)
        if (sl[k] >= 0) sum = add_rn(sum, g[k]);
      den = sum > 0x1p-23f ? sum : 0x1p-23f;
    }
    for (std::int32_t k = 0; k < K; ++k)
      w[k] = sl[k] < 0 ? 0.0f : mul_rn(K > 1 ? div_rn(g[k], den) : g[k], scale);
  }
  std::int32_t dropped = 0;
  for (std::int32_t k = 0; k < K; ++k)
    if (sl[k] < 0) {
      w[k] = 0.0f;
      ++dropped;
    }
  return dropped;
}

}  // namespace moe::detail::routing

namespace moe::backend::host {

/// The routing fields of a config and the capacity factor in force, as run-time values: the
/// host loops take these, so configs that differ only in what the router ignores share code.
struct route_shape {
  std::int32_t experts = 0;
  std::int32_t top_k = 0;
  score_function score = score_function::softmax;
  topk_order order = topk_order::score_then_topk;
  normalization norm = normalization::none;
  drop_policy drop = drop_policy::position;
  std::int32_t groups = 1;
  std::int32_t topk_groups = 1;
  bool deepspeed = false;
  ratio cf{1, 1};                    ///< the capacity factor in force ({0, 1} = dropless)
  std::int64_t native_capacity = 0;  ///< capacity<C>(p)
};

template <config C>
route_shape route_shape_of(problem const& p) noexcept {
  return {C.experts,
          C.top_k,
          C.score,
          C.order,
          C.norm,
          C.drop,
          C.expert_groups,
          C.topk_groups,
          C.compat == router_compat::deepspeed,
          active_capacity_factor<C>(p),
          capacity<C>(p)};
}

/// One token's working rows (E <= max_experts: fixed size, one per call).
struct route_row {
  float s[max_experts];       // scores over all E
  float key[max_experts];     // selection key
  bool allowed[max_experts];  // in a kept group and not chosen yet
};

/// Byte offsets of the host router's scratch inside one block (the caller's workspace, or one
/// allocation of its own when the policy has none). Every region is 64-byte aligned from a
/// base that is itself aligned up to 64 bytes, so `bytes` includes 63 bytes of slack and the
/// caller's pointer may have any alignment.
struct route_scratch_layout {
  // forward
  std::size_t gate = 0, key = 0, order = 0, first = 0, fill = 0, P = 0, seq_P = 0, seq_cnt = 0,
              count1 = 0, row = 0;
  // backward
  std::size_t cnt = 0, seq_cnt_d = 0;
  std::size_t bytes = 0;
};

inline std::size_t route_take_bytes(std::size_t& at, std::int64_t n, std::size_t elem) noexcept {
  std::size_t const start = (at + 63) / 64 * 64;
  at = start + static_cast<std::size_t>(n > 0 ? n : 0) * elem;
  return start;
}

/// route's scratch for T tokens: O(T·K) for the routes, O(E) for the sums, one route_row.
inline route_scratch_layout route_forward_layout(std::int64_t T, std::int32_t K,
                                                 std::int32_t E) noexcept {
  route_scratch_layout L;
  std::size_t at = 0;
  std::int64_t const R = T > 0 ? T * K : 0;
  L.gate = route_take_bytes(at, R, sizeof(float));     // [T, K] a_k: clean probability
  L.key = route_take_bytes(at, R, sizeof(float));      // [T, K] priority
  L.order = route_take_bytes(at, R, sizeof(std::int64_t));
  L.first = route_take_bytes(at, E + 1, sizeof(std::int64_t));
  L.fill = route_take_bytes(at, E, sizeof(std::int64_t));
  L.P = route_take_bytes(at, E, sizeof(double));
  L.seq_P = route_take_bytes(at, E, sizeof(double));
  L.seq_cnt = route_take_bytes(at, E, sizeof(std::int64_t));
  L.count1 = route_take_bytes(at, E, sizeof(std::int64_t));
  L.row = route_take_bytes(at, 1, sizeof(route_row));
  L.bytes = (at + 63) / 64 * 64 + 63;
  return L;
}

/// route_backward's scratch: two [E] sums.
inline route_scratch_layout route_backward_layout(std::int32_t E) noexcept {
  route_scratch_layout L;
  std::size_t at = 0;
  L.cnt = route_take_bytes(at, E, sizeof(double));
  L.seq_cnt_d = route_take_bytes(at, E, sizeof(double));
  L.bytes = (at + 63) / 64 * 64 + 63;
  return L;
}

/// The scratch block of one call: the policy's workspace when it has one (rejected, before
/// anything is written, when smaller than `need`), else one allocation of its own, freed on
/// return. base() is 64-byte aligned, or null after a failed allocation.
class route_scratch_block {
 public:
  route_scratch_block(host_policy const& policy, std::size_t need) noexcept {
    if (need == 0) return;  // nothing to hold (T = 0): no allocation
    if (policy.workspace != nullptr) {
      if (policy.workspace_bytes < need) {
        error_ = status::error(errc::workspace_too_small,
                               "host_policy.workspace: expected >= %zu bytes "
                               "(route_workspace_bytes / route_backward_workspace_bytes), got %zu",
                               need, policy.workspace_bytes);
        return;
      }
      raw_ = static_cast<char*>(policy.workspace);
    } else {
      owned_.reset(new (std::nothrow) char[need]);
      raw_ = owned_.get();
      if (raw_ == nullptr)
        error_ = status::error(errc::out_of_memory,
                               "route: could not allocate %zu bytes of host scratch (or pass a "
                               "workspace: host_policy::with_workspace)",
                               need);
    }
  }
  [[nodiscard]] status const& error() const noexcept { return error_; }
  [[nodiscard]] char* base() const noexcept {
    if (raw_ == nullptr) return nullptr;
    auto const a = reinterpret_cast<std::uintptr_t>(raw_);
    return raw_ + ((64 - a % 64) % 64);
  }
  template <class T>
  T* at(std::size_t offset) const noexcept {
    return reinterpret_cast<T*>(base() + offset);
  }

 private:
  char* raw_ = nullptr;
  std::unique_ptr<char[]> owned_;
  status error_{};
};

/// Which noise a call uses, and where each draw comes from (caller's tensor or Philox).
struct route_noise {
  bool top1 = false;    ///< choice 0 from logits + g
  bool second = false;  ///< choice 1 from logits + g
  bool rts = false;     ///< random_token priorities in force
  float const* g_in = nullptr;
  float const* u_in = nullptr;
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;
  std::int64_t tokens = 0;
  std::int32_t experts = 0;

  [[nodiscard]] std::uint64_t index(std::int64_t t, std::int32_t e) const noexcept {
    return static_cast<std::uint64_t>(t) * static_cast<std::uint64_t>(experts) +
           static_cast<std::uint64_t>(e);
  }
  [[nodiscard]] float g(std::int64_t t, std::int32_t e) const noexcept {
    return g_in != nullptr ? g_in[index(t, e)] : ::moe::gumbel(seed, offset + index(t, e));
  }
  [[nodiscard]] float u(std::int64_t t, std::int32_t e) const noexcept {
    return u_in != nullptr ? u_in[index(t, e)]
                           : ::moe::uniform(seed, offset + index(tokens, 0) + index(t, e));
  }
};

inline route_noise route_noise_of(route_shape const& sh, problem const& p,
                                  router_options const& o) noexcept {
  route_noise n;
  if (sh.deepspeed) {  // DeepSpeed: RSample in training only; 2nd sampling and RTS always
    n.top1 = p.training && o.gumbel_top1;
    n.second = o.sample_second;
    n.rts = sh.drop == drop_policy::random_token;
  } else {
    n.top1 = p.training && o.gumbel_top1;
    n.second = p.training && o.sample_second;
    n.rts = p.training && sh.drop == drop_policy::random_token;
  }
  n.g_in = o.gumbel;
  n.u_in = o.rts_priority;
  n.seed = p.seed;
  n.offset = o.noise_offset;
  n.tokens = p.tokens;
  n.experts = sh.experts;
  return n;
}


/// argmax of key(e) over the allowed experts, ties to the lower index; the winner is then no
/// longer allowed.
template <class Key>
std::int32_t route_take(std::int32_t experts, bool* allowed, Key const& key) noexcept {
  std::int32_t best = -1;
  float best_v = 0.0f;
  for (std::int32_t e = 0; e < experts; ++e) {
    if (!allowed[e]) continue;
    float const v = key(e);
    if (best < 0 || v > best_v) {
      best = e;
      best_v = v;
    }
  }
  allowed[best] = false;
  return best;
}

/// Scores of one row; returns its logsumexp (for the z-loss), in double.
inline double route_scores(route_shape const& sh, float const* l, float* s) noexcept {
  using namespace ::moe::detail::routing;
  if (sh.score == score_function::softmax || sh.deepspeed) {
    softmax_stats const st = softmax_row(l, sh.experts, s);
    return static_cast<double>(st.max) + std::log(static_cast<double>(st.sum));
  }
  float m = l[0];
  for (std::int32_t e = 0; e < sh.experts; ++e) m = std::max(m, l[e]);
  double sum = 0.0;
  for (std::int32_t e = 0; e < sh.experts; ++e) {
    s[e] = sigmoid_det(l[e]);
    sum += static_cast<double>(exp_det(::moe::detail::sub_rn(l[e], m)));
  }
  return static_cast<double>(m) + std::log(sum);
}

/// Native selection of token t: experts [K] in choice order, gates a [K], weights w [K]
/// (pre-drop: renormalised over the K and scaled).
inline double select_native(route_shape const& sh, router_options const& o, route_noise const& nz,
                            std::int64_t t, float const* l, route_row& row, std::int32_t* expert,
                            float* a, float* w) noexcept {
  using namespace ::moe::detail;
  std::int32_t const E = sh.experts;
  std::int32_t const K = sh.top_k;
  double const lse = route_scores(sh, l, row.s);
  for (std::int32_t e = 0; e < E; ++e) {
    float const k0 = sh.order == topk_order::score_then_topk ? row.s[e] : l[e];  // unbiased
    row.key[e] = o.expert_bias != nullptr ? add_rn(k0, o.expert_bias[e]) : k0;
    row.allowed[e] = true;
  }
  if (sh.groups > 1) {  // DeepSeek-V3 group-limited routing
    std::int32_t const n = E / sh.groups;
    float gs[max_experts];
    bool kept_group[max_experts];
    for (std::int32_t g = 0; g < sh.groups; ++g) {
      gs[g] = routing::group_top2_score(row.key + g * n, n);
      kept_group[g] = false;
    }
    for (std::int32_t m = 0; m < sh.topk_groups; ++m) {
      std::int32_t best = -1;
      for (std::int32_t g = 0; g < sh.groups; ++g)
        if (!kept_group[g] && (best < 0 || gs[g] > gs[best])) best = g;
      kept_group[best] = true;
    }
    for (std::int32_t e = 0; e < E; ++e) row.allowed[e] = kept_group[e / n];
  }
  for (std::int32_t k = 0; k < K; ++k) {
    bool const noisy = (k == 0 && nz.top1) || (k == 1 && nz.second);
    expert[k] =
        noisy ? route_take(E, row.allowed, [&](std::int32_t e) { return add_rn(l[e], nz.g(t, e)); })
              : route_take(E, row.allowed, [&](std::int32_t e) { return row.key[e]; });
  }
  float lk[max_top_k], sk[max_top_k];
  for (std::int32_t k = 0; k < K; ++k) {
    lk[k] = l[expert[k]];
    sk[k] = row.s[expert[k]];
  }
  routing::native_gates(
      sh.order == topk_order::topk_then_score && sh.score == score_function::softmax, lk, sk, K,
      a);
  routing::native_weights(sh.norm == normalization::renormalize, a, K, o.weight_scale, w);
  return lse;
}

/// DeepSpeed selection of token t (top1gating / top2gating / topkgating): experts [K] in choice
/// order and their clean probabilities a [K]; returns the row's logsumexp. Weights come after
/// the drops.
inline double select_deepspeed(route_shape const& sh, route_noise const& nz, std::int64_t t,
                               float const* l, route_row& row, std::int32_t* expert,
                               float* a) noexcept {
  using namespace ::moe::detail;
  std::int32_t const E = sh.experts;
  std::int32_t const K = sh.top_k;
  double const lse = route_scores(sh, l, row.s);
  for (std::int32_t e = 0; e < E; ++e) row.allowed[e] = true;
  auto const gate = [&](std::int32_t e) { return row.s[e]; };
  auto const noisy = [&](std::int32_t e) { return add_rn(l[e], nz.g(t, e)); };
  if (K == 1) {  // argmax(logits + gumbel) with RSample, else argmax(gates)
    expert[0] = nz.top1 ? route_take(E, row.allowed, noisy) : route_take(E, row.allowed, gate);
  } else if (K == 2) {  // 2nd: argmax of the logits (+ gumbel) with the 1st masked out
    expert[0] = route_take(E, row.allowed, gate);
    expert[1] = nz.second ? route_take(E, row.allowed, noisy)
                          : route_take(E, row.allowed, [&](std::int32_t e) { return l[e]; });
  } else {  // torch.topk(gates, k)
    for (std::int32_t k = 0; k < K; ++k) expert[k] = route_take(E, row.allowed, gate);
  }
  for (std::int32_t k = 0; k < K; ++k) a[k] = row.s[expert[k]];
  return lse;
}

/// p[t, e], the probabilities the balance losses average: the softmax itself, or for sigmoid
/// scores s / Σ s (DeepSeek-V3's normalisation), in double.
inline void route_loss_probs(route_shape const& sh, float const* s, double* p) noexcept {
  double sum = 0.0;
  for (std::int32_t e = 0; e < sh.experts; ++e) sum += static_cast<double>(s[e]);
  bool const norm = sh.score == score_function::sigmoid && !sh.deepspeed && sum > 0.0;
  for (std::int32_t e = 0; e < sh.experts; ++e)
    p[e] = norm ? static_cast<double>(s[e]) / sum : static_cast<double>(s[e]);
}

/// Flat index row·cols + col of the first non-finite element of a [rows, cols] tensor, or -1.
inline std::int64_t route_first_nonfinite(float const* x, std::int64_t rows,
                                          std::int32_t cols) noexcept {
  if (x == nullptr) return -1;
  std::int64_t const n = rows * cols;
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return i;
  return -1;
}

/// The status for the non-finite element at flat index i (>= 0) of x, naming (row, col).
inline status route_nonfinite_error(float const* x, std::int64_t i, std::int32_t cols,
                                    char const* name) noexcept {
  return status::error(errc::invalid_argument, "%s[%lld, %d]: expected a finite value, got %g",
                       name, static_cast<long long>(i / cols), static_cast<int>(i % cols),
                       static_cast<double>(x[i]));
}

/// First non-finite element of a [rows, cols] tensor, as a status naming (row, col).
inline status route_scan_finite(float const* x, std::int64_t rows, std::int32_t cols,
                                char const* name) noexcept {
  std::int64_t const i = route_first_nonfinite(x, rows, cols);
  return i < 0 ? status{} : route_nonfinite_error(x, i, cols, name);
}

inline status route_forward(route_shape const& sh, problem const& p, router_options const& o,
                            route_args const& a, route_scratch_block const& ws) noexcept {
  using namespace ::moe::detail;
  std::int64_t const T = p.tokens;
  std::int32_t const E = sh.experts;
  std::int32_t const K = sh.top_k;
  route_noise const nz = route_noise_of(sh, p, o);

  // 1. Inputs.
  {  // the lowest non-finite logit goes to bad_logit (-1 if none) and into the status
    std::int64_t const bad = route_first_nonfinite(a.logits, T, E);
    if (a.bad_logit != nullptr) *a.bad_logit = bad;
    if (bad >= 0) return route_nonfinite_error(a.logits, bad, E, "route_args.logits");
  }
  for (std::int32_t e = 0; o.expert_bias != nullptr && e < E; ++e)
    if (!std::isfinite(o.expert_bias[e]))
      return status::error(errc::invalid_argument,
                           "router_options.expert_bias[%d]: expected a finite value, got %g", e,
                           static_cast<double>(o.expert_bias[e]));
  if (nz.top1 || nz.second) MOE_TRY(route_scan_finite(o.gumbel, T, E, "router_options.gumbel"));
  if (nz.rts) MOE_TRY(route_scan_finite(o.rts_priority, T, E, "router_options.rts_priority"));

  for (std::int32_t e = 0; e < E; ++e) a.counts[e] = a.kept[e] = 0;
  *a.stats = route_stats{};
  if (T == 0) return {};

  std::int64_t const R = T * K;
  route_scratch_layout const SL = route_forward_layout(T, K, E);
  auto* const gate = ws.at<float>(SL.gate);  // [T, K] a_k: clean probability of each route
  auto* const key = ws.at<float>(SL.key);    // [T, K] priority (probability, random_token)
  auto* const order = ws.at<std::int64_t>(SL.order);  // routes by expert, then priority order
  auto* const first = ws.at<std::int64_t>(SL.first);  // [E + 1]
  auto* const P = ws.at<double>(SL.P);                // [E] Σ_t p[t, e]
  auto* const seq_P = ws.at<double>(SL.seq_P);
  auto* const seq_cnt = ws.at<std::int64_t>(SL.seq_cnt);
  auto* const count1 = ws.at<std::int64_t>(SL.count1);  // first choices (DeepSpeed top-2's aux)
  auto* const row = new (ws.base() + SL.row) route_row;  // placement: nothing is allocated

  // 2. Per token: experts, gates, native weights, loss sums.
  std::int64_t const L = o.seq_len;
  double seq_sum = 0.0;
  double z_sum = 0.0;
  double pt[max_experts];
  for (std::int32_t e = 0; e < E; ++e) {
    P[e] = seq_P[e] = 0.0;
    seq_cnt[e] = count1[e] = 0;
  }
  for (std::int64_t t = 0; t < T; ++t) {
    float const* l = a.logits + t * E;
    std::int32_t* ex = a.expert + t * K;
    double const lse = sh.deepspeed ? select_deepspeed(sh, nz, t, l, *row, ex, gate + t * K)
                                    : select_native(sh, o, nz, t, l, *row, ex, gate + t * K,
                                                    a.weight + t * K);
    if (a.scores != nullptr)
      for (std::int32_t e = 0; e < E; ++e) a.scores[t * E + e] = row->s[e];
    for (std::int32_t k = 0; k < K; ++k) ++a.counts[ex[k]];
    ++count1[ex[0]];
    route_loss_probs(sh, row->s, pt);
    for (std::int32_t e = 0; e < E; ++e) P[e] += pt[e];
    z_sum += lse * lse;
    if (L > 0) {  // DeepSeek-V2: Σ_e f_e P_e per sequence, f_e = E·count_e/(K·L), P_e = mean p
      for (std::int32_t e = 0; e < E; ++e) seq_P[e] += pt[e];
      for (std::int32_t k = 0; k < K; ++k) ++seq_cnt[ex[k]];
      if ((t + 1) % L == 0) {
        double s = 0.0;
        for (std::int32_t e = 0; e < E; ++e) {
          s += static_cast<double>(E) * static_cast<double>(seq_cnt[e]) /
               (static_cast<double>(K) * static_cast<double>(L)) *
               (seq_P[e] / static_cast<double>(L));
          seq_P[e] = 0.0;
          seq_cnt[e] = 0;
        }
        seq_sum += s;
      }
    }
  }

  // 3. Capacity.
  std::int32_t max_load = 0;
  for (std::int32_t e = 0; e < E; ++e) max_load = std::max(max_load, a.counts[e]);
  bool const dropless = sh.cf.is_zero();
  std::int64_t cap = 0;
  if (dropless) {
    cap = max_load;           // DeepSpeed top-1 also clamps to T: a no-op, a count never exceeds T
  } else if (sh.deepspeed) {  // f = cf (top-1), 2·cf (top-2), K·cf (top-k)
    cap = routing::deepspeed_capacity(T, E, sh.cf, K, p.min_capacity);
  } else {
    cap = sh.native_capacity;
  }

  // 4. Drops and slots. Bucket the routes by expert, in token order.
  first[0] = 0;
  for (std::int32_t e = 0; e < E; ++e) first[e + 1] = first[e] + a.counts[e];
  {
    auto* const fill = ws.at<std::int64_t>(SL.fill);
    for (std::int32_t e = 0; e < E; ++e) fill[e] = first[e];
    for (std::int64_t r = 0; r < R; ++r) order[fill[a.expert[r]]++] = r;
  }
  enum class prio { k_then_t, t, by_key };
  prio pr = prio::k_then_t;
  if (sh.drop == drop_policy::probability) {
    pr = prio::by_key;
    for (std::int64_t r = 0; r < R; ++r) key[r] = gate[r];
  }
  if (nz.rts) {
    pr = prio::by_key;
    for (std::int64_t r = 0; r < R; ++r) key[r] = nz.u(r / K, a.expert[r]);
  }
  if (sh.deepspeed && K != 2 && sh.drop == drop_policy::position) pr = prio::t;
  bool const rank_slots = sh.deepspeed && K == 2;  // top-2: slot = (k, t) rank
  for (std::int64_t r = 0; r < R; ++r) a.slot[r] = -1;
  for (std::int32_t e = 0; e < E; ++e) {
    std::int64_t* list = order + first[e];
    std::int64_t const n = first[e + 1] - first[e];
    bool const overflow = !dropless && n > cap;
    prio const sort_by = overflow ? pr : rank_slots ? prio::k_then_t : prio::t;
    if (sort_by == prio::k_then_t) {  // r = t·K + k, so (k, r) orders by (k, t)
      std::sort(list, list + n, [K](std::int64_t x, std::int64_t y) {
        return x % K != y % K ? x % K < y % K : x < y;
      });
    } else if (sort_by == prio::by_key) {  // highest first; a route's expert holds one per token
      std::sort(list, list + n, [&](std::int64_t x, std::int64_t y) {
        return key[x] != key[y] ? key[x] > key[y] : x < y;
      });
    }
    std::int64_t const survivors = overflow ? cap : n;
    for (std::int64_t i = 0; i < survivors; ++i)
      a.slot[list[i]] = rank_slots ? static_cast<std::int32_t>(i) : 0;  // 0 marks "kept"
    a.kept[e] = static_cast<std::int32_t>(survivors);
    if (!rank_slots) {  // number the survivors in token order
      if (sort_by != prio::t) std::sort(list, list + n);
      std::int32_t next = 0;
      for (std::int64_t i = 0; i < n; ++i)
        if (a.slot[list[i]] >= 0) a.slot[list[i]] = next++;
    }
  }

  // 5. Weights after the drops.
  std::int64_t dropped = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    float* w = a.weight + t * K;
    std::int32_t const* sl = a.slot + t * K;
    float const* g = gate + t * K;
    dropped += routing::weights_after_drops(sh.deepspeed, sl, g, K, o.weight_scale, w);
  }

  // 6. Losses and statistics.
  double aux = 0.0;
  double const Td = static_cast<double>(T);
  for (std::int32_t e = 0; e < E; ++e) {
    double const f = sh.deepspeed && K == 2
                         ? static_cast<double>(count1[e]) / Td  // top-2: first choices
                         : static_cast<double>(a.counts[e]) / (Td * K);
    aux += f * (P[e] / Td);
  }
  aux *= static_cast<double>(E);
  route_stats st;
  st.capacity = cap;
  st.routes = R;
  st.dropped = dropped;
  st.max_load = max_load;
  st.mean_load = static_cast<float>(static_cast<double>(R) / static_cast<double>(E));
  st.aux_loss = static_cast<float>(aux);
  st.z_loss = static_cast<float>(z_sum / Td);
  st.seq_aux_loss = L > 0 ? static_cast<float>(seq_sum / (Td / static_cast<double>(L))) : 0.0f;
  *a.stats = st;
  return {};
}

inline status route_backward_host(route_shape const& sh, problem const& p, router_options const& o,
                                  route_backward_args const& a,
                                  route_scratch_block const& ws) noexcept {
  std::int64_t const T = p.tokens;
  std::int32_t const E = sh.experts;
  std::int32_t const K = sh.top_k;
  MOE_TRY(route_scan_finite(a.logits, T, E, "route_backward_args.logits"));
  MOE_TRY(route_scan_finite(a.d_weight, T, K, "route_backward_args.d_weight"));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int32_t k = 0; k < K; ++k) {
      std::int32_t const e = a.expert[t * K + k];
      std::int32_t const s = a.slot[t * K + k];
      if (e < 0 || e >= E)
        return status::error(errc::invalid_argument,
                             "route_backward_args.expert[%lld, %d]: expected an expert in [0, %d), "
                             "got %d",
                             static_cast<long long>(t), k, E, e);
      if (s < -1)
        return status::error(
            errc::invalid_argument,
            "route_backward_args.slot[%lld, %d]: expected -1 or a slot >= 0, got %d",
            static_cast<long long>(t), k, s);
    }
  if (T == 0) return {};

  route_scratch_layout const SL = route_backward_layout(E);
  auto* const cnt = ws.at<double>(SL.cnt);          // [E] routes per expert, as doubles
  auto* const seq_cnt = ws.at<double>(SL.seq_cnt_d);  // [E] the same over one sequence
  double const Td = static_cast<double>(T);
  double const Ed = static_cast<double>(E);
  double const Kd = static_cast<double>(K);
  bool const ds2 = sh.deepspeed && K == 2;
  for (std::int32_t e = 0; e < E; ++e) cnt[e] = 0.0;
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int32_t k = 0; k < (ds2 ? 1 : K); ++k) cnt[a.expert[t * K + k]] += 1.0;
  // ∂(coef · aux)/∂p[t, e]: aux = E Σ_e f_e P_e with P_e = mean_t p[t, e].
  double ca[max_experts];
  for (std::int32_t e = 0; e < E; ++e)
    ca[e] =
        static_cast<double>(p.aux_loss_coef) * Ed * (ds2 ? cnt[e] / Td : cnt[e] / (Td * Kd)) / Td;
  std::int64_t const L = o.seq_len;
  double const Ld = static_cast<double>(L);
  double const n_seq = L > 0 ? Td / Ld : 1.0;
  bool const renorm_native = !sh.deepspeed && sh.norm == normalization::renormalize;
  bool const k_softmax = !sh.deepspeed && sh.order == topk_order::topk_then_score &&
                         sh.score == score_function::softmax;
  double const scale = static_cast<double>(o.weight_scale);

  double s[max_experts], sm[max_experts], ds[max_experts], dl[max_experts];
  for (std::int64_t t = 0; t < T; ++t) {
    float const* l = a.logits + t * E;
    std::int32_t const* ex = a.expert + t * K;
    std::int32_t const* sl = a.slot + t * K;
    float const* dw = a.d_weight + t * K;
    if (L > 0 && t % L == 0) {  // the counts of this token's sequence
      for (std::int32_t e = 0; e < E; ++e) seq_cnt[e] = 0.0;
      for (std::int64_t u = t; u < t + L; ++u)
        for (std::int32_t k = 0; k < K; ++k) seq_cnt[a.expert[u * K + k]] += 1.0;
    }
    // Softmax (and sigmoid) of the row in double.
    double m = static_cast<double>(l[0]);
    for (std::int32_t e = 1; e < E; ++e) m = std::max(m, static_cast<double>(l[e]));
    double z = 0.0;
    for (std::int32_t e = 0; e < E; ++e) z += (sm[e] = std::exp(static_cast<double>(l[e]) - m));
    for (std::int32_t e = 0; e < E; ++e) sm[e] /= z;
    double const lse = m + std::log(z);
    bool const sigmoid = !sh.deepspeed && sh.score == score_function::sigmoid;
    for (std::int32_t e = 0; e < E; ++e)
      s[e] = sigmoid ? 1.0 / (1.0 + std::exp(-static_cast<double>(l[e]))) : sm[e];

    // Losses through p: dp[t, e], then ds = J_p^T dp.
    double dp[max_experts];
    for (std::int32_t e = 0; e < E; ++e) {
      dp[e] = ca[e];
      if (L > 0)
        dp[e] +=
            static_cast<double>(o.seq_aux_loss_coef) * (Ed * seq_cnt[e] / (Kd * Ld)) / Ld / n_seq;
    }
    double s_sum = 0.0;
    if (sigmoid)
      for (std::int32_t e = 0; e < E; ++e) s_sum += s[e];
    if (sigmoid && s_sum > 0.0) {  // p = s / Σ s (p = s when every score underflows to 0, as
      double dot = 0.0;            // in the forward's route_loss_probs: 0/0 would give NaN)
      for (std::int32_t e = 0; e < E; ++e) dot += dp[e] * s[e] / s_sum;
      for (std::int32_t e = 0; e < E; ++e) ds[e] = (dp[e] - dot) / s_sum;
    } else {
      for (std::int32_t e = 0; e < E; ++e) ds[e] = dp[e];
    }
    for (std::int32_t e = 0; e < E; ++e) dl[e] = 0.0;

    // The weights: g_k = ∂L/∂w_k, back through the scale, renormalisation and gate.
    double gk[max_top_k], ak[max_top_k], da[max_top_k];
    for (std::int32_t k = 0; k < K; ++k) {
      bool const keep = sl[k] >= 0;
      gk[k] = keep ? static_cast<double>(dw[k]) * scale : 0.0;
      ak[k] = s[ex[k]];
    }
    if (k_softmax) {  // a = softmax of the K chosen logits
      double mk = static_cast<double>(l[ex[0]]), zk = 0.0;
      for (std::int32_t k = 1; k < K; ++k) mk = std::max(mk, static_cast<double>(l[ex[k]]));
      for (std::int32_t k = 0; k < K; ++k)
        zk += (ak[k] = std::exp(static_cast<double>(l[ex[k]]) - mk));
      for (std::int32_t k = 0; k < K; ++k) ak[k] /= zk;
    }
    if (renorm_native || (sh.deepspeed && K > 1)) {  // w_k = a_k / max(Σ a, floor)
      double S = 0.0, ga = 0.0;
      for (std::int32_t k = 0; k < K; ++k)
        if (renorm_native || sl[k] >= 0) S += ak[k];
      double const floor = sh.deepspeed ? 0x1p-23 : static_cast<double>(FLT_MIN);
      for (std::int32_t k = 0; k < K; ++k)
        if (renorm_native || sl[k] >= 0) ga += gk[k] * ak[k];
      for (std::int32_t k = 0; k < K; ++k) {
        bool const in_sum = renorm_native || sl[k] >= 0;
        da[k] = S > floor ? (in_sum ? gk[k] / S - ga / (S * S) : 0.0) : gk[k] / floor;
      }
    } else {
      for (std::int32_t k = 0; k < K; ++k) da[k] = gk[k];
    }
    if (k_softmax) {
      double dot = 0.0;
      for (std::int32_t k = 0; k < K; ++k) dot += da[k] * ak[k];
      for (std::int32_t k = 0; k < K; ++k) dl[ex[k]] += ak[k] * (da[k] - dot);
    } else {
      for (std::int32_t k = 0; k < K; ++k) ds[ex[k]] += da[k];
    }

    // Scores to logits, plus the z-loss: ∂ mean_t(lse_t²)/∂l = 2 lse_t softmax_t / T.
    if (sigmoid) {
      for (std::int32_t e = 0; e < E; ++e) dl[e] += ds[e] * s[e] * (1.0 - s[e]);
    } else {
      double dot = 0.0;
      for (std::int32_t e = 0; e < E; ++e) dot += ds[e] * s[e];
      for (std::int32_t e = 0; e < E; ++e) dl[e] += s[e] * (ds[e] - dot);
    }
    double const zc = static_cast<double>(p.z_loss_coef) * 2.0 * lse / Td;
    for (std::int32_t e = 0; e < E; ++e)
      a.d_logits[t * E + e] = static_cast<float>(dl[e] + zc * sm[e]);
  }
  return {};
}

}  // namespace moe::backend::host

namespace moe {

template <config C>
std::size_t route_workspace_bytes(host_policy, problem const& p) noexcept {
  if (p.tokens < 0 || p.tokens > max_tokens) return 0;
  return backend::host::route_forward_layout(p.tokens, C.top_k, C.experts).bytes;
}

template <config C>
std::size_t route_backward_workspace_bytes(host_policy, problem const& p,
                                           router_options const&) noexcept {
  if (p.tokens < 0 || p.tokens > max_tokens) return 0;
  return backend::host::route_backward_layout(C.experts).bytes;
}

template <config C>
status route(host_policy policy, problem const& p, router_options const& opt,
             route_args const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::routing::check<C>(p, opt, a));
  // Scratch only when there are tokens: T = 0 neither allocates nor needs a workspace.
  std::size_t const need = p.tokens > 0 ? route_workspace_bytes<C>(policy, p) : 0;
  backend::host::route_scratch_block const ws(policy, need);
  MOE_TRY(ws.error());  // a small workspace or no memory: rejected before anything is written
  return backend::host::route_forward(backend::host::route_shape_of<C>(p), p, opt, a, ws);
}

template <config C>
status route_backward(host_policy policy, problem const& p, router_options const& opt,
                      route_backward_args const& a) noexcept {
  static_assert(check<C>());
  MOE_TRY(detail::routing::check<C>(p, opt, a));
  std::size_t const need = p.tokens > 0 ? route_backward_workspace_bytes<C>(policy, p, opt) : 0;
  backend::host::route_scratch_block const ws(policy, need);
  MOE_TRY(ws.error());
  return backend::host::route_backward_host(backend::host::route_shape_of<C>(p), p, opt, a, ws);
}

template <config C>
status update_expert_bias(host_policy, float rate, std::int32_t const* counts,
                          float* bias) noexcept {
  static_assert(check<C>());
  if (!std::isfinite(rate))
    return status::error(errc::invalid_argument,
                         "update_expert_bias.rate: expected a finite value, got %g",
                         static_cast<double>(rate));
  MOE_TRY(detail::routing::check_ptr(counts, true, "update_expert_bias.counts"));
  MOE_TRY(detail::routing::check_ptr(bias, true, "update_expert_bias.bias"));
  std::int64_t total = 0;
  for (std::int32_t e = 0; e < C.experts; ++e) total += counts[e];
  // counts[e] < mean  <=>  E · counts[e] < total, in exact integers.
  for (std::int32_t e = 0; e < C.experts; ++e) {
    std::int64_t const scaled = static_cast<std::int64_t>(C.experts) * counts[e];
    if (scaled < total) bias[e] = detail::add_rn(bias[e], rate);
    if (scaled > total) bias[e] = detail::sub_rn(bias[e], rate);
  }
  return {};
}

}  // namespace moe
