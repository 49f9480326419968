// SPDX-License-Identifier: Apache-2.0
// Expert parallelism over MPI (run under `mpirun -np R`, R = 1, 2 or 4): the expert-parallel
// layer (moe::layer<C, moe::host_policy, moe::comm::mpi>) against the single-rank layer on the
// same global batch, which every rank also computes. The group's batch is the ranks' tokens
// concatenated in rank order. Compared, for every scenario:
//   - integers bitwise: each rank's experts (and whether each route was kept) equal the
//     single-rank layer's for those tokens; counts, capacity and dropped routes equal;
//   - floats within a bound normalised by the tensor's largest magnitude: y, dx, the aux and
//     z losses, the gradients of this rank's experts, and the replicated gradients (router,
//     shared experts) after all_reduce_replicated_gradients. fp64: 1e-12 (sums of the same
//     terms in another order: rows of an expert arrive grouped by source rank; ~100 terms at
//     u = 1.1e-16); fp32: 1e-5 (the same at u = 6e-8).
// Scenarios: equal shares with a skewed gate (drops; expert E-1 receives nothing), unequal
// shares with a rank that has no tokens at all, and a dropless SwiGLU config.
// Exit status: 0 when every check passed on every rank.
#include <mpi.h>

#include <algorithm>  // std::max
#include <cmath>      // std::abs
#include <cstdint>    // std::int64_t
#include <cstdio>     // std::printf
#include <cstdlib>    // std::aligned_alloc, std::free
#include <cstring>    // std::strstr
#include <random>     // std::mt19937_64
#include <vector>     // std::vector

#include "moe/comm/mpi.hpp"
#include "moe/configs.hpp"
#include "moe/layer.hpp"

namespace {

int failures = 0;
int rank = 0;

void check(bool ok, char const* what, double value = 0.0) {
  if (ok) return;
  ++failures;
  std::printf("rank %d: FAILED %s (%g)\n", rank, what, value);
}

template <class T>
double as_double(T v) {
  return static_cast<double>(moe::to_float(v));
}

/// max |a − b| / max |b| over a tensor.
template <class T>
double scaled_error(T const* a, T const* b, std::int64_t n) {
  double big = 0, worst = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    big = std::max(big, std::abs(as_double(b[i])));
    worst = std::max(worst, std::abs(as_double(a[i]) - as_double(b[i])));
  }
  return big > 0 ? worst / big : worst;
}

struct buffer {
  void* p = nullptr;
  explicit buffer(std::size_t bytes) : p(std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256)) {}
  ~buffer() { std::free(p); }
  buffer(buffer const&) = delete;
  buffer& operator=(buffer const&) = delete;
};

constexpr moe::config dropless_swiglu_fp64{.experts = 4,
                                           .top_k = 2,
                                           .capacity_factor = {0, 1},
                                           .eval_capacity_factor = {0, 1},
                                           .act = moe::precision::fp64,
                                           .weight = moe::precision::fp64,
                                           .accum = moe::precision::fp64,
                                           .norm = moe::normalization::renormalize,
                                           .ffn_activation = moe::activation::swiglu};

/// One scenario: tokens[r] on rank r; `skew` added to expert 0's gate column, expert E-1's
/// column pushed far down (so that it receives nothing) when `starve` is set.
template <moe::config C>
void scenario(char const* name, moe::comm::mpi const& comm, std::vector<std::int64_t> const& tokens,
              double skew, bool starve, double tol) {
  using A = moe::act_t<C>;
  using W = moe::weight_t<C>;
  std::int32_t const R = comm.size(), r = comm.rank();
  std::int64_t const E = C.experts, K = C.top_k;
  moe::layer_shape const shape{.hidden = 12, .ffn = 8, .shared_ffn = 6};
  std::int64_t const H = shape.hidden;
  std::int64_t Tg = 0, tb = 0;
  for (std::int32_t s = 0; s < R; ++s) {
    if (s < r) tb += tokens[static_cast<std::size_t>(s)];
    Tg += tokens[static_cast<std::size_t>(s)];
  }
  std::int64_t const T = tokens[static_cast<std::size_t>(r)];

  // The single-rank layer on the group's batch (every rank computes it).
  moe::layer<C> single(shape);
  check(single.allocate().ok(), "single allocate");
  check(single.init({.seed = 11, .std = 0.4f}).ok(), "single init");
  std::int64_t const n_single = single.parameter_count();
  // Feature 0 of every token is the constant 3: W_g's row 0 acts as a gate bias, +skew for
  // expert 0 (which then overflows) and -4 for a starved expert E-1 (logit -12 + 0 elsewhere).
  W* const g = single.params().w_gate;
  g[0] = moe::from_float<W>(static_cast<float>(as_double(g[0]) + skew));
  if (starve)
    for (std::int64_t h = 0; h < H; ++h)
      g[h * E + E - 1] = moe::from_float<W>(h == 0 ? -4.0f : 0.0f);
  std::mt19937_64 gen(12345);
  std::normal_distribution<double> normal;
  std::vector<A> x(static_cast<std::size_t>(Tg * H)), dy(x.size()), y(x.size()), dx(x.size());
  for (auto& v : x) v = moe::from_float<A>(static_cast<float>(normal(gen)));
  for (std::int64_t t = 0; t < Tg; ++t) x[static_cast<std::size_t>(t * H)] = moe::from_float<A>(3.0f);
  for (auto& v : dy) v = moe::from_float<A>(static_cast<float>(normal(gen)));
  moe::problem ps = single.make_problem(Tg);
  ps.min_capacity = 1;
  ps.z_loss_coef = 0.1f;
  ps.seed = 5;
  buffer ws1(single.workspace_bytes(ps));
  moe::layer_stats s1{};
  check(single.forward(moe::host, ps, {x.data(), y.data(), &s1}, ws1.p, single.workspace_bytes(ps)).ok(),
        "single forward");
  check(single.backward(moe::host, ps, {x.data(), dy.data(), dx.data()}, ws1.p,
                        single.workspace_bytes(ps))
            .ok(),
        "single backward");
  moe::layer_routing const r1 = single.routing(ps, ws1.p);

  // The expert-parallel layer on this rank's share.
  moe::layer<C, moe::host_policy, moe::comm::mpi> ep({.hidden = shape.hidden,
                                                      .ffn = shape.ffn,
                                                      .shared_ffn = shape.shared_ffn,
                                                      .ep_size = R},
                                                     comm);
  moe::status s = ep.allocate();
  check(s.ok(), s.message());
  check(ep.init({.seed = 11, .std = 0.4f}).ok(), "ep init");
  for (std::int64_t i = 0; i < H * E; ++i) ep.params().w_gate[i] = single.params().w_gate[i];
  // Same weights: the rank's experts are the single layer's experts [r·E_l, (r+1)·E_l).
  std::int64_t const w1n = moe::detail::layer_impl::tensor_sizes<C>(ep.shape()).n[1];  // [E_l, F_w, H]
  check(scaled_error(ep.params().w1, single.params().w1 + r * w1n, w1n) == 0.0,
        "init: this rank's W1 equals the single layer's slice");
  moe::problem pe = ep.make_problem(T);
  pe.group_tokens = Tg;
  pe.min_capacity = 1;
  pe.z_loss_coef = 0.1f;
  pe.seed = 5;
  std::size_t const bytes = ep.workspace_bytes(pe);
  buffer ws(bytes);
  std::vector<A> ye(static_cast<std::size_t>(std::max<std::int64_t>(T, 1) * H)), dxe(ye.size());
  std::vector<std::int32_t> counts(static_cast<std::size_t>(E));
  moe::layer_stats se{};
  A const* xs = x.data() + tb * H;
  s = ep.forward(moe::host, pe, {xs, ye.data(), &se, counts.data()}, ws.p, bytes);
  check(s.ok(), s.message());
  s = ep.backward(moe::host, pe, {xs, dy.data() + tb * H, dxe.data()}, ws.p, bytes);
  check(s.ok(), s.message());
  s = ep.all_reduce_replicated_gradients();
  check(s.ok(), s.message());

  // Integers, bitwise.
  moe::layer_routing const re = ep.routing(pe, ws.p);
  bool same_routes = true;
  for (std::int64_t i = 0; i < T * K; ++i) {
    same_routes &= re.expert[i] == r1.expert[tb * K + i];
    same_routes &= (re.slot[i] < 0) == (r1.slot[tb * K + i] < 0);
  }
  check(same_routes, "experts and drops equal the single layer's");
  bool same_counts = true;
  for (std::int64_t e = 0; e < E; ++e) same_counts &= counts[static_cast<std::size_t>(e)] == r1.counts[e];
  check(same_counts, "counts equal");
  check(se.route.capacity == s1.route.capacity, "capacity equal");
  check(se.route.dropped == s1.route.dropped, "dropped routes equal");
  if (starve) check(r1.counts[E - 1] == 0, "the starved expert receives nothing");
  if (skew >= 1 && !moe::is_dropless<C>(ps)) check(s1.route.dropped > 0, "the skewed gate drops routes");
  // Floats.
  check(std::abs(se.route.aux_loss - s1.route.aux_loss) <= 1e-6 * std::abs(s1.route.aux_loss),
        "aux loss", se.route.aux_loss - s1.route.aux_loss);
  check(std::abs(se.route.z_loss - s1.route.z_loss) <= 1e-6 * std::abs(s1.route.z_loss), "z loss",
        se.route.z_loss - s1.route.z_loss);
  if (T > 0) {
    double const ey = scaled_error(ye.data(), y.data() + tb * H, T * H);
    check(ey <= tol, "y", ey);
    double const ex = scaled_error(dxe.data(), dx.data() + tb * H, T * H);
    check(ex <= tol, "dx", ex);
  }
  moe::detail::layer_impl::tensor_sizes<C> const se_sizes(ep.shape()), s1_sizes(single.shape());
  auto const* ep_grads = &ep.grads().w_gate;
  auto const* single_grads = &single.grads().w_gate;
  for (int i = 0; i < 15; ++i) {
    if (se_sizes.n[i] == 0) continue;
    bool const expert_tensor = i >= 1 && i <= 4;
    std::int64_t const offset = expert_tensor ? r * se_sizes.n[i] : 0;
    double const e = scaled_error(ep_grads[i], single_grads[i] + offset, se_sizes.n[i]);
    char what[96];
    std::snprintf(what, sizeof what, "gradient %s", moe::detail::layer_impl::tensor_names[i]);
    check(e <= tol, what, e);
  }
  (void)n_single;
  (void)s1_sizes;
  if (rank == 0) std::printf("scenario %s: R = %d, T = %lld done\n", name, R, static_cast<long long>(Tg));
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  {
    moe::comm::mpi const comm(MPI_COMM_WORLD);
    rank = comm.rank();
    std::int32_t const R = comm.size();
    std::vector<std::int64_t> equal(static_cast<std::size_t>(R), 24);
    std::vector<std::int64_t> uneven(static_cast<std::size_t>(R));
    for (std::int32_t s = 0; s < R; ++s) uneven[static_cast<std::size_t>(s)] = s == R - 1 ? 0 : 13 + 7 * s;
    if (R == 1) uneven[0] = 17;
    scenario<moe::configs::top2_fp64>("fp64 equal shares, skewed", comm, equal, 1.5, true, 1e-12);
    scenario<moe::configs::top2_fp64>("fp64 uneven shares, an empty rank", comm, uneven, 0.5,
                                      false, 1e-12);
    scenario<moe::configs::top2_fp32>("fp32 equal shares", comm, equal, 0.8, true, 1e-5);
    if (4 % R == 0)
      scenario<dropless_swiglu_fp64>("fp64 dropless swiglu, uneven", comm, uneven, 2.0, false,
                                     1e-12);
    // A problem that disagrees between ranks gets the same error on every rank, not a hang.
    {
      moe::layer<moe::configs::top2_fp32, moe::host_policy, moe::comm::mpi> ep(
          {.hidden = 4, .ffn = 4, .ep_size = R}, comm);
      check(ep.allocate().ok(), "allocate");
      moe::problem p = ep.make_problem(5);
      p.group_tokens = 5 * R + 1;  // wrong everywhere: the ranks' T sum to 5·R
      buffer ws(ep.workspace_bytes(p));
      std::vector<float> x(20, 0.25f), y(20);
      moe::status const s = ep.forward(moe::host, p, {x.data(), y.data()}, ws.p, ep.workspace_bytes(p));
      check(s.code() == moe::errc::invalid_argument, "inconsistent group_tokens is an error");
      check(std::strstr(s.message(), "problem.group_tokens") != nullptr, s.message());
      // Ranks that disagree on another field (here the last rank evaluates while the others
      // train, which would change the capacity factor) get the same error everywhere.
      if (R > 1) {
        moe::problem q = ep.make_problem(5);
        q.training = rank != R - 1;
        buffer wq(ep.workspace_bytes(q));
        moe::status const t = ep.forward(moe::host, q, {x.data(), y.data()}, wq.p,
                                         ep.workspace_bytes(q));
        check(t.code() == moe::errc::invalid_argument, "a rank that disagrees is an error");
        check(std::strstr(t.message(), "disagrees with rank 0") != nullptr, t.message());
      }
    }
    // A group with no tokens at all: like one rank's T = 0 — zero statistics and counts, no
    // bad logit, and a backward that changes no gradient.
    {
      moe::layer<moe::configs::top2_fp32, moe::host_policy, moe::comm::mpi> ep(
          {.hidden = 4, .ffn = 4, .ep_size = R}, comm);
      check(ep.allocate().ok(), "allocate");
      check(ep.zero_grad().ok(), "zero_grad");
      moe::problem p = ep.make_problem(0);
      buffer ws(ep.workspace_bytes(p));
      moe::layer_stats st{};
      st.route.capacity = 99;
      st.loss = 1.0;
      std::vector<std::int32_t> counts(static_cast<std::size_t>(moe::configs::top2_fp32.experts), 7);
      std::int64_t bad = 5;
      moe::status s = ep.forward(moe::host, p, {nullptr, nullptr, &st, counts.data(), &bad}, ws.p,
                                 ep.workspace_bytes(p));
      check(s.ok(), s.message());
      check(st.route.capacity == 0 && st.route.dropped == 0 && st.loss == 0.0,
            "an empty group's statistics are zero");
      bool zero = true;
      for (auto c : counts) zero &= c == 0;
      check(zero && bad == -1, "an empty group's counts are zero, no bad logit");
      s = ep.backward(moe::host, p, {nullptr, nullptr, nullptr}, ws.p, ep.workspace_bytes(p));
      check(s.ok(), s.message());
      bool untouched = true;
      for (std::int64_t i = 0; i < ep.parameter_count(); ++i) untouched &= ep.flat_grads()[i] == 0.0f;
      check(untouched, "an empty group's backward leaves the gradients at zero");
      if (rank == 0) std::printf("scenario an empty group: R = %d done\n", R);
    }
  }
  int total = 0;
  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) std::printf("%s: %d failed checks over all ranks\n", total == 0 ? "PASSED" : "FAILED", total);
  MPI_Finalize();
  return total == 0 ? 0 : 1;
}
