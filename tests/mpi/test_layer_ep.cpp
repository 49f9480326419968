// SPDX-License-Identifier: Apache-2.0
// Expert parallelism over MPI (run under `mpirun -np R`, R = 1, 2 or 4): the expert-parallel
// layer (moe::layer<C, moe::host_policy, moe::comm::mpi>) against the single-rank layer on the
// same global batch, which every rank also computes. The group's batch is the ranks' tokens
// concatenated in rank order. Compared, for every scenario:
//   - integers bitwise: each rank's experts (and whether each route was kept) equal the
//     single-rank layer's for those tokens; counts, capacity and dropped routes equal;
//   - floats within a bound normalised by the tensor's largest magnitude: y, dx, the gradients
//     of this rank's experts, and the replicated gradients (router, shared experts) after
//     all_reduce_replicated_gradients. fp64: 1e-12 (sums of the same terms in another order:
//     rows of an expert arrive grouped by source rank; ~100 terms at u = 1.1e-16); fp32: 1e-5
//     (the same at u = 6e-8); the aux and z losses within 1e-6, relative.
// The single-rank layer and the comparison are ep_reference.hpp's (shared with the CUDA test
// tests/cuda/test_layer_ep_nccl.cu).
// Scenarios: equal shares with a skewed gate (drops; expert E-1 receives nothing), unequal
// shares with a rank that has no tokens at all, and a dropless SwiGLU config.
// Exit status: 0 when every check passed on every rank.
#include <mpi.h>

#include <algorithm>  // std::max
#include <cstdint>  // std::int64_t
#include <cstdio>   // std::printf
#include <cstdlib>  // std::aligned_alloc, std::free
#include <cstring>  // std::strstr
#include <vector>   // std::vector

#include "ep_reference.hpp"  // reference, check, equal_shares, uneven_shares
#include "moe/comm/mpi.hpp"
#include "moe/configs.hpp"
#include "moe/layer.hpp"

namespace {

using moe::test::ep::check;
using moe::test::ep::failures;
using moe::test::ep::rank;

struct buffer {
  void* p = nullptr;
  explicit buffer(std::size_t bytes) : p(std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256)) {}
  ~buffer() { std::free(p); }
  buffer(buffer const&) = delete;
  buffer& operator=(buffer const&) = delete;
};

/// One scenario (ep_reference.hpp): tokens[r] on rank r, the gate skewed and starved.
template <moe::config C>
void scenario(char const* name, moe::comm::mpi const& comm, std::vector<std::int64_t> const& tokens,
              double skew, bool starve, double tol) {
  using A = moe::act_t<C>;
  using G = moe::accum_t<C>;
  std::int32_t const R = comm.size(), r = comm.rank();
  moe::test::ep::reference<C> ref(R, r, tokens, skew, starve);
  std::int64_t const H = moe::test::ep::shape.hidden, E = C.experts, T = ref.T;

  moe::layer<C, moe::host_policy, moe::comm::mpi> ep({.hidden = moe::test::ep::shape.hidden,
                                                      .ffn = moe::test::ep::shape.ffn,
                                                      .shared_ffn = moe::test::ep::shape.shared_ffn,
                                                      .ep_size = R},
                                                     comm);
  moe::status s = ep.allocate();
  check(s.ok(), s.message());
  check(ep.init({.seed = 11, .std = 0.4f}).ok(), "ep init");
  for (std::int64_t i = 0; i < H * E; ++i) ep.params().w_gate[i] = ref.single.params().w_gate[i];
  // Same weights: the rank's experts are the single layer's experts [r·E_l, (r+1)·E_l).
  std::int64_t const w1n = moe::detail::layer_impl::tensor_sizes<C>(ep.shape()).n[1];  // [E_l, F_w, H]
  check(moe::test::ep::scaled_error(ep.params().w1, ref.params_of(1, w1n), w1n) == 0.0,
        "init: this rank's W1 equals the single layer's slice");
  moe::problem const pe = ref.problem_for(ep, T);
  std::size_t const bytes = ep.workspace_bytes(pe);
  buffer ws(bytes);
  std::vector<A> ye(static_cast<std::size_t>(std::max<std::int64_t>(T, 1) * H)), dxe(ye.size());
  std::vector<std::int32_t> counts(static_cast<std::size_t>(E));
  moe::layer_stats se{};
  A const* xs = ref.x.data() + ref.tb * H;
  s = ep.forward(moe::host, pe, {xs, ye.data(), &se, counts.data()}, ws.p, bytes);
  check(s.ok(), s.message());
  s = ep.backward(moe::host, pe, {xs, ref.dy.data() + ref.tb * H, dxe.data()}, ws.p, bytes);
  check(s.ok(), s.message());
  s = ep.all_reduce_replicated_gradients();
  check(s.ok(), s.message());
  moe::layer_routing const re = ep.routing(pe, ws.p);
  G* const* const grads = &ep.grads().w_gate;
  ref.compare(name, re.expert, re.slot, counts.data(), se, ye.data(), dxe.data(),
              [&](int i, std::int64_t n) { return std::vector<G>(grads[i], grads[i] + n); },
              ep.shape(), tol, 1e-6);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  {
    moe::comm::mpi const comm(MPI_COMM_WORLD);
    rank = comm.rank();
    std::int32_t const R = comm.size();
    std::vector<std::int64_t> const equal = moe::test::ep::equal_shares(R),
                                    uneven = moe::test::ep::uneven_shares(R);
    scenario<moe::configs::top2_fp64>("fp64 equal shares, skewed", comm, equal, 1.5, true, 1e-12);
    scenario<moe::configs::top2_fp64>("fp64 uneven shares, an empty rank", comm, uneven, 0.5,
                                      false, 1e-12);
    scenario<moe::configs::top2_fp32>("fp32 equal shares", comm, equal, 0.8, true, 1e-5);
    if (4 % R == 0)
      scenario<moe::test::ep::dropless_swiglu_fp64>("fp64 dropless swiglu, uneven", comm, uneven,
                                                     2.0, false, 1e-12);
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
