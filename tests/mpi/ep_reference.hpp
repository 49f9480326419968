// SPDX-License-Identifier: Apache-2.0
// What the expert-parallel layer tests under mpirun share (tests/mpi/test_layer_ep.cpp for the
// host path, tests/cuda/test_layer_ep_nccl.cu for the CUDA path over NCCL): the single-rank host
// layer on the group's whole batch, which every rank computes, and the comparison of one rank's
// results with it. The group's batch is the ranks' tokens concatenated in rank order. Compared:
//   - integers bitwise: each route's expert and whether it was kept equal the single layer's
//     for this rank's tokens; the group's counts, capacity and dropped routes equal;
//   - floats within `tol` of the tensor's largest magnitude: y, dx, the aux and z losses, this
//     rank's expert gradients and the replicated gradients (after
//     all_reduce_replicated_gradients).
#pragma once

#include <algorithm>   // std::max
#include <cmath>       // std::abs
#include <cstdint>     // std::int64_t, std::int32_t, std::uintptr_t
#include <cstdio>      // std::printf, std::snprintf
#include <functional>  // std::function
#include <random>      // std::mt19937_64
#include <vector>      // std::vector

#include "moe/configs.hpp"
#include "moe/layer.hpp"

namespace moe::test::ep {

inline int failures = 0;
inline int rank = 0;

inline void check(bool ok, char const* what, double value = 0.0) {
  if (ok) return;
  ++failures;
  std::printf("rank %d: FAILED %s (%g)\n", rank, what, value);
}

template <class T>
double as_double(T v) {
  return static_cast<double>(moe::to_float(v));
}

/// max |a − b| / max |b| over n elements.
template <class T>
double scaled_error(T const* a, T const* b, std::int64_t n) {
  double big = 0, worst = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    big = std::max(big, std::abs(as_double(b[i])));
    worst = std::max(worst, std::abs(as_double(a[i]) - as_double(b[i])));
  }
  return big > 0 ? worst / big : worst;
}

inline constexpr moe::config dropless_swiglu_fp64{.experts = 4,
                                                  .top_k = 2,
                                                  .capacity_factor = {0, 1},
                                                  .eval_capacity_factor = {0, 1},
                                                  .act = moe::precision::fp64,
                                                  .weight = moe::precision::fp64,
                                                  .accum = moe::precision::fp64,
                                                  .norm = moe::normalization::renormalize,
                                                  .ffn_activation = moe::activation::swiglu};

inline constexpr moe::layer_shape shape{.hidden = 12, .ffn = 8, .shared_ffn = 6};

/// Tokens per rank: 24 each; or uneven with the last rank empty (R = 1: 17 tokens).
inline std::vector<std::int64_t> equal_shares(std::int32_t R) {
  return std::vector<std::int64_t>(static_cast<std::size_t>(R), 24);
}
inline std::vector<std::int64_t> uneven_shares(std::int32_t R) {
  std::vector<std::int64_t> t(static_cast<std::size_t>(R));
  for (std::int32_t s = 0; s < R; ++s) t[static_cast<std::size_t>(s)] = s == R - 1 ? 0 : 13 + 7 * s;
  if (R == 1) t[0] = 17;
  return t;
}

/// The single-rank host layer's forward and backward on the group's batch. Feature 0 of every
/// token is the constant 3, so W_g's row 0 acts as a gate bias: +`skew` for expert 0 (which
/// then overflows) and, with `starve`, -4 for expert E-1 (which then receives nothing).
template <moe::config C>
struct reference {
  using A = moe::act_t<C>;
  using W = moe::weight_t<C>;
  std::int32_t R, r;
  std::int64_t Tg = 0, tb = 0, T = 0;  ///< group tokens, this rank's first token, its count
  moe::layer<C> single{shape};
  std::vector<A> x, dy, y, dx;
  moe::problem ps{};
  std::vector<unsigned char> ws;
  moe::layer_stats stats{};
  moe::layer_routing routing{};

  reference(std::int32_t ranks, std::int32_t me, std::vector<std::int64_t> const& tokens,
            double skew, bool starve)
      : R(ranks), r(me) {
    std::int64_t const E = C.experts, H = shape.hidden;
    for (std::int32_t s = 0; s < R; ++s) {
      if (s < r) tb += tokens[static_cast<std::size_t>(s)];
      Tg += tokens[static_cast<std::size_t>(s)];
    }
    T = tokens[static_cast<std::size_t>(r)];
    check(single.allocate().ok(), "single allocate");
    check(single.init({.seed = 11, .std = 0.4f}).ok(), "single init");
    W* const g = single.params().w_gate;
    g[0] = moe::from_float<W>(static_cast<float>(as_double(g[0]) + skew));
    if (starve)
      for (std::int64_t h = 0; h < H; ++h)
        g[h * E + E - 1] = moe::from_float<W>(h == 0 ? -4.0f : 0.0f);
    std::mt19937_64 gen(12345);
    std::normal_distribution<double> normal;
    x.resize(static_cast<std::size_t>(Tg * H));
    dy.resize(x.size());
    y.resize(x.size());
    dx.resize(x.size());
    for (auto& v : x) v = moe::from_float<A>(static_cast<float>(normal(gen)));
    for (std::int64_t t = 0; t < Tg; ++t)
      x[static_cast<std::size_t>(t * H)] = moe::from_float<A>(3.0f);
    for (auto& v : dy) v = moe::from_float<A>(static_cast<float>(normal(gen)));
    ps = problem_for(single, Tg);
    std::size_t const bytes = single.workspace_bytes(ps);
    ws.resize(bytes + 64);
    check(single.forward(moe::host, ps, {x.data(), y.data(), &stats}, workspace(), bytes).ok(),
          "single forward");
    check(single.backward(moe::host, ps, {x.data(), dy.data(), dx.data()}, workspace(), bytes).ok(),
          "single backward");
    routing = single.routing(ps, workspace());
    if (starve) check(routing.counts[E - 1] == 0, "the starved expert receives nothing");
    if (skew >= 1 && !moe::is_dropless<C>(ps))
      check(stats.route.dropped > 0, "the skewed gate drops routes");
  }

  void* workspace() {
    auto const at = reinterpret_cast<std::uintptr_t>(ws.data());
    return ws.data() + (64 - at % 64) % 64;
  }

  /// The problem both layers solve: `tokens` of them on this layer, capacity at least 1,
  /// z-loss 0.1, seed 5 (and, for the expert-parallel layer, the group's token count).
  template <class Layer>
  moe::problem problem_for(Layer const& layer, std::int64_t tokens) const {
    moe::problem p = layer.make_problem(tokens);
    p.group_tokens = Tg;
    p.min_capacity = 1;
    p.z_loss_coef = 0.1f;
    p.seed = 5;
    return p;
  }

  /// The expert-parallel layer's parameter tensor i as the single layer holds it: the rank's
  /// experts [r·E_l, (r+1)·E_l) for the expert tensors (1..4), the whole tensor otherwise.
  W const* params_of(int i, std::int64_t n) const {
    bool const expert_tensor = i >= 1 && i <= 4;
    return (&single.params().w_gate)[i] + (expert_tensor ? r * n : 0);
  }

  /// Checks this rank's results (host memory): experts and slots [T, K], the group's counts [E],
  /// statistics, y and dx [T, H], and grad(i, n) the expert-parallel layer's gradient tensor i
  /// (n elements); floats within `tol`, the losses within `loss_tol`, relative.
  void compare(char const* name, std::int32_t const* expert, std::int32_t const* slot,
               std::int32_t const* counts, moe::layer_stats const& se, A const* ye, A const* dxe,
               std::function<std::vector<moe::accum_t<C>>(int, std::int64_t)> const& grad,
               moe::layer_shape const& ep_shape, double tol, double loss_tol) const {
    std::int64_t const E = C.experts, K = C.top_k, H = shape.hidden;
    bool same_routes = true;
    for (std::int64_t i = 0; i < T * K; ++i) {
      same_routes &= expert[i] == routing.expert[tb * K + i];
      same_routes &= (slot[i] < 0) == (routing.slot[tb * K + i] < 0);
    }
    check(same_routes, "experts and drops equal the single layer's");
    bool same_counts = true;
    for (std::int64_t e = 0; e < E; ++e) same_counts &= counts[e] == routing.counts[e];
    check(same_counts, "counts equal");
    check(se.route.capacity == stats.route.capacity, "capacity equal");
    check(se.route.dropped == stats.route.dropped, "dropped routes equal");
    check(std::abs(se.route.aux_loss - stats.route.aux_loss) <=
              loss_tol * std::abs(stats.route.aux_loss),
          "aux loss", se.route.aux_loss - stats.route.aux_loss);
    check(std::abs(se.route.z_loss - stats.route.z_loss) <= loss_tol * std::abs(stats.route.z_loss),
          "z loss", se.route.z_loss - stats.route.z_loss);
    if (T > 0) {
      double const ey = scaled_error(ye, y.data() + tb * H, T * H);
      check(ey <= tol, "y", ey);
      double const ex = scaled_error(dxe, dx.data() + tb * H, T * H);
      check(ex <= tol, "dx", ex);
    }
    moe::detail::layer_impl::tensor_sizes<C> const sizes(ep_shape);
    for (int i = 0; i < 15; ++i) {
      if (sizes.n[i] == 0) continue;
      bool const expert_tensor = i >= 1 && i <= 4;
      std::int64_t const offset = expert_tensor ? r * sizes.n[i] : 0;
      std::vector<moe::accum_t<C>> const got = grad(i, sizes.n[i]);
      double const e = scaled_error(got.data(), (&single.grads().w_gate)[i] + offset, sizes.n[i]);
      char what[96];
      std::snprintf(what, sizeof what, "gradient %s", moe::detail::layer_impl::tensor_names[i]);
      check(e <= tol, what, e);
    }
    if (rank == 0)
      std::printf("scenario %s: R = %d, T = %lld done\n", name, R, static_cast<long long>(Tg));
  }
};

}  // namespace moe::test::ep
