// SPDX-License-Identifier: Apache-2.0
// The expert-parallel CUDA layer over NCCL (moe/cuda/layer_ep.cuh) on one rank (label gpu):
// layer<C, cuda_policy, comm::nccl> runs the whole expert-parallel path — the token exchange
// and its checks, the group's routing, the sort that gives local slots, the count and row
// exchanges, the regrouping, the way back and backward's gather of the combine weights'
// gradients — and must equal layer<C, cuda_policy> (no communicator) on the same parameters
// and batch: routing integers (experts, slots, counts, drops, C) bitwise; y, dx and every
// gradient within a bound normalised by the tensor's largest magnitude — fp32 1e-5 (the ops
// run on the same rows; only the row bounds the grouped GEMM gets differ, exact counts here
// against the static bound there), bf16 1e-2 (about three bf16 ulps, 3.9e-3 each). Cases:
// a skewed gate with drops and shared + residual branches (fp32), a balanced bf16 layer, a
// rank with no tokens, a group_tokens that disagrees, and the replicated gradients' all-reduce
// (a sum over one rank: unchanged). Multi-rank NCCL runs need several GPUs; the two GPU-only
// pieces of the path that one rank leaves trivial (local slots with tokens before this rank,
// the regrouping maps) are checked against the host path's code for R = 2 and 4 at the end.
#include <doctest/doctest.h>

#include <algorithm>  // std::copy
#include <cstdint>    // std::int64_t
#include <cstring>    // std::strstr
#include <random>     // std::mt19937_64
#include <vector>     // std::vector

#include "../host/common.hpp"  // same_bits
#include "common.cuh"            // device_vector, MOE_REQUIRE_OK
#include "moe/configs.hpp"
#include "moe/cuda/layer_ep.cuh"

namespace {

using moe::test::same_bits;
using moe::test::scaled_error;

template <class T>
std::vector<T> download(T const* p, std::int64_t n) {
  std::vector<T> h(static_cast<std::size_t>(n));
  if (n > 0)
    MOE_REQUIRE_CUDA(cudaMemcpy(h.data(), p, h.size() * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

/// Copies v to the device memory at base + offset.
template <class T>
void upload_at(char* base, std::size_t offset, std::vector<T> const& v) {
  MOE_REQUIRE_CUDA(
      cudaMemcpy(base + offset, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}

moe::comm::nccl one_rank() {
  // [snippet nccl_layer]
  ncclUniqueId id{};
  MOE_REQUIRE_OK(moe::comm::nccl::unique_id(id));  // on rank 0; MPI_Bcast it to the others
  moe::comm::nccl comm;                            // (after cudaSetDevice(this rank's GPU))
  MOE_REQUIRE_OK(comm.init(id, 1, 0));             // the group's size R, this rank (here 1, 0)
  // [end snippet]
  return comm;
}

/// What one layer's forward and backward produced.
template <moe::config C>
struct run_out {
  std::vector<moe::act_t<C>> y, dx;
  std::vector<moe::accum_t<C>> grads;
  std::vector<std::int32_t> expert, slot, counts;
  moe::layer_stats stats{};
  std::int64_t bad = 0;
};

template <moe::config C, class Layer>
run_out<C> run(Layer& layer, moe::problem const& p, std::vector<moe::act_t<C>> const& x,
               std::vector<moe::act_t<C>> const& dy, cudaStream_t stream) {
  using A = moe::act_t<C>;
  std::int64_t const T = p.tokens, H = layer.shape().hidden;
  moe::test::device_vector<A> dx_in(x.size()), ddy(dy.size()), dy_out(x.size()), ddx(x.size());
  if (T > 0) {
    dx_in.upload(x);
    ddy.upload(dy);
  }
  std::size_t const bytes = layer.workspace_bytes(p);
  moe::test::device_vector<char> ws(bytes);
  moe::test::device_vector<moe::layer_stats> stats(1);
  moe::test::device_vector<std::int32_t> counts(C.experts);
  moe::test::device_vector<std::int64_t> bad(1);
  auto const policy = moe::cuda_on(stream);
  MOE_REQUIRE_OK(layer.zero_grad(policy));
  MOE_REQUIRE_OK(layer.forward(
      policy, p, {dx_in.data(), dy_out.data(), stats.data(), counts.data(), bad.data()}, ws.data(),
      bytes));
  MOE_REQUIRE_OK(
      layer.backward(policy, p, {dx_in.data(), ddy.data(), ddx.data()}, ws.data(), bytes));
  MOE_REQUIRE_CUDA(cudaStreamSynchronize(stream));
  run_out<C> out;
  out.y = download(dy_out.data(), T * H);
  out.dx = download(ddx.data(), T * H);
  out.grads = download(layer.flat_grads(), layer.parameter_count());
  auto const r = layer.routing(p, ws.data());
  out.expert = download(r.expert, T * C.top_k);
  out.slot = download(r.slot, T * C.top_k);
  out.counts = counts.download();
  out.stats = stats.download()[0];
  out.bad = bad.download()[0];
  return out;
}

/// The one-rank NCCL layer against the communicator-free CUDA layer.
template <moe::config C>
void compare(moe::layer_shape shape, std::int64_t T, bool skewed, double tol) {
  using A = moe::act_t<C>;
  using W = moe::weight_t<C>;
  std::uint64_t const seed = std::random_device{}();
  CAPTURE(seed);
  CAPTURE(T);
  std::int64_t const H = shape.hidden, E = C.experts;
  cudaStream_t stream = nullptr;
  MOE_REQUIRE_CUDA(cudaStreamCreate(&stream));
  moe::layer<C, moe::cuda_policy> local(shape);
  // [snippet nccl_layer]
  moe::layer<C, moe::cuda_policy, moe::comm::nccl> ep(shape, one_rank());  // shape.ep_size = R
  // [end snippet]
  MOE_REQUIRE_OK(local.allocate());
  MOE_REQUIRE_OK(ep.allocate());
  MOE_REQUIRE_OK(local.init({.seed = seed, .std = 0.2f}));
  MOE_REQUIRE_OK(ep.init({.seed = seed, .std = 0.2f}));
  // Router inputs on a grid of small multiples of powers of two; the skewed gate raises
  // expert 0's logit for every token through a constant input feature.
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> small(-8, 8);
  std::vector<W> w_gate(static_cast<std::size_t>(H * E));
  for (auto& v : w_gate) v = moe::from_float<W>(static_cast<float>(small(gen)) / 16.0f);
  if (skewed) w_gate[0] = moe::from_float<W>(4.0f);  // h = 0, e = 0
  W* const gates[2] = {local.params().w_gate, ep.params().w_gate};
  for (W* gate : gates)
    MOE_REQUIRE_CUDA(
        cudaMemcpy(gate, w_gate.data(), w_gate.size() * sizeof(W), cudaMemcpyHostToDevice));
  std::vector<A> x(static_cast<std::size_t>(T * H)), dy(x.size());
  std::normal_distribution<float> normal;
  for (auto& v : x) v = moe::from_float<A>(static_cast<float>(small(gen)) / 8.0f);
  if (skewed)
    for (std::int64_t t = 0; t < T; ++t)
      x[static_cast<std::size_t>(t * H)] = moe::from_float<A>(1.0f);
  for (auto& v : dy) v = moe::from_float<A>(normal(gen));

  moe::problem p = local.make_problem(T);
  p.z_loss_coef = 0.001f;
  moe::problem pe = ep.make_problem(T);
  pe.z_loss_coef = 0.001f;
  auto const want = run<C>(local, p, x, dy, stream);
  auto const got = run<C>(ep, pe, x, dy, stream);
  auto const again = run<C>(ep, pe, x, dy, stream);

  CHECK(got.expert == want.expert);
  CHECK(got.slot == want.slot);
  CHECK(got.counts == want.counts);
  CHECK(got.stats.route.dropped == want.stats.route.dropped);
  CHECK(got.stats.route.capacity == want.stats.route.capacity);
  CHECK(got.stats.loss == doctest::Approx(want.stats.loss).epsilon(1e-6));
  CHECK(got.bad == -1);
  if (skewed && T > 0) CHECK(got.stats.route.dropped > 0);
  CHECK_MESSAGE(scaled_error(got.y, want.y) <= tol, "y: " << scaled_error(got.y, want.y));
  CHECK_MESSAGE(scaled_error(got.dx, want.dx) <= tol, "dx: " << scaled_error(got.dx, want.dx));
  moe::detail::layer_impl::tensor_sizes<C> const sizes(shape);
  std::int64_t at = 0;
  for (int i = 0; i < 15; ++i) {
    if (sizes.n[i] == 0) continue;
    auto const first = static_cast<std::ptrdiff_t>(at), last = first + sizes.n[i];
    std::vector<moe::accum_t<C>> const w(want.grads.begin() + first, want.grads.begin() + last);
    std::vector<moe::accum_t<C>> const g(got.grads.begin() + first, got.grads.begin() + last);
    double const e = scaled_error(g, w);
    CHECK_MESSAGE(e <= tol, moe::detail::layer_impl::tensor_names[i] << ": " << e);
    at += sizes.n[i];
  }
  // Deterministic: a second run gives the same bits.
  CHECK(same_bits(again.y, got.y));
  CHECK(same_bits(again.dx, got.dx));
  CHECK(same_bits(again.grads, got.grads));
  // One rank: the replicated gradients' sum over the group leaves them unchanged.
  MOE_REQUIRE_OK(ep.all_reduce_replicated_gradients(moe::cuda_on(stream)));
  MOE_REQUIRE_CUDA(cudaStreamSynchronize(stream));
  CHECK(download(ep.flat_grads(), ep.parameter_count()) == again.grads);
  cudaStreamDestroy(stream);
}

}  // namespace

TEST_CASE("cuda layer over nccl, one rank: skewed fp32 with drops, shared and residual") {
  compare<moe::configs::top2_fp32>({.hidden = 64, .ffn = 96, .shared_ffn = 32, .residual_ffn = 32},
                                   300, true, 1e-5);
  compare<moe::configs::top2_fp32>({.hidden = 32, .ffn = 64}, 1, false, 1e-5);
}

TEST_CASE("cuda layer over nccl, one rank: bf16") {
  compare<moe::configs::top2_bf16>({.hidden = 64, .ffn = 128}, 517, false, 1e-2);
}

TEST_CASE("cuda layer over nccl, one rank: no tokens") {
  compare<moe::configs::top2_fp32>({.hidden = 32, .ffn = 64}, 0, false, 1e-5);
}

TEST_CASE("cuda layer over nccl: a group_tokens that disagrees gets a status") {
  constexpr moe::config C = moe::configs::top2_fp32;
  moe::layer<C, moe::cuda_policy, moe::comm::nccl> ep({.hidden = 32, .ffn = 64}, one_rank());
  MOE_REQUIRE_OK(ep.allocate());
  moe::problem p = ep.make_problem(8);
  p.group_tokens = 12;  // one rank of 8 tokens cannot make a group of 12
  std::size_t const bytes = ep.workspace_bytes(p);
  moe::test::device_vector<char> ws(bytes);
  moe::test::device_vector<float> x(8 * 32), y(8 * 32);
  moe::status const s =
      ep.forward(moe::cuda_on(nullptr), p, {x.data(), y.data()}, ws.data(), bytes);
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::strstr(s.message(), "group_tokens") != nullptr);
}

// The two pieces of the GPU expert-parallel path that one rank cannot exercise (with R = 1 the
// local slots are the group's and the regrouping is the identity): against the host path's
// own code, for R = 2 and 4 with a rank that has tokens before it.
TEST_CASE("cuda expert parallel: local slots and the regrouping maps equal the host path's") {
  constexpr moe::config C = moe::configs::top2_fp32;
  namespace li = moe::detail::layer_impl;
  std::uint64_t const seed = std::random_device{}();
  CAPTURE(seed);
  std::mt19937_64 gen(seed);
  std::int64_t const E = C.experts, K = C.top_k;
  std::int32_t const ranks[2] = {2, 4};
  for (std::int32_t R : ranks) {
    CAPTURE(R);
    std::int64_t const El = E / R;
    // The group: ranks of 13, 0, 29, ... tokens; rank R - 1 (tokens before it) is checked.
    std::vector<std::int64_t> share(static_cast<std::size_t>(R));
    for (std::int32_t r = 0; r < R; ++r)
      share[static_cast<std::size_t>(r)] = r == 1 ? 0 : 13 + 16 * r;
    std::int64_t Tg = 0, tb = 0;
    for (std::int32_t r = 0; r < R; ++r) {
      if (r < R - 1) tb += share[static_cast<std::size_t>(r)];
      Tg += share[static_cast<std::size_t>(r)];
    }
    std::int64_t const T = share.back();
    moe::layer_shape const shape{.hidden = 8, .ffn = 8, .ep_size = R};
    moe::problem p{};
    p.tokens = T;
    p.group_tokens = Tg;
    p.hidden = 8;
    p.ffn = 8;
    p.ep_size = R;
    p.ep_rank = R - 1;
    p.training = true;
    // The group's routing on the host: random logits, capacity with drops.
    moe::problem pg = li::group_problem(p);
    std::vector<float> logits(static_cast<std::size_t>(Tg * E));
    std::normal_distribution<float> normal;
    for (auto& v : logits) v = normal(gen);
    for (std::int64_t t = 0; t < Tg; ++t) logits[static_cast<std::size_t>(t * E)] += 2.0f;  // skew
    std::vector<std::int32_t> g_expert(static_cast<std::size_t>(Tg * K)), g_slot(g_expert.size()),
        counts(static_cast<std::size_t>(E)), kept(counts.size());
    std::vector<float> g_weight(g_expert.size());
    moe::route_stats st{};
    MOE_REQUIRE_OK(moe::route<C>(moe::host, pg, {},
                                 {logits.data(), g_expert.data(), g_weight.data(), g_slot.data(),
                                  counts.data(), kept.data(), nullptr, &st}));
    CHECK(st.dropped > 0);
    // The same group routing in a host and a device workspace.
    auto const Lh = li::make_layout<C>(shape, p, 0, true);
    auto const Ld = li::make_layout<C>(
        shape, p, li::layer_memory<moe::cuda_policy>::op_scratch<C>(shape, {}, p), true);
    std::vector<std::int64_t> hbuf(Lh.bytes / sizeof(std::int64_t) + 1);
    void* const hws = hbuf.data();
    moe::test::device_vector<char> dws(Ld.bytes);
    std::copy(g_expert.begin(), g_expert.end(), li::at<std::int32_t>(hws, Lh.g_expert));
    std::copy(g_slot.begin(), g_slot.end(), li::at<std::int32_t>(hws, Lh.g_slot));
    std::copy(g_weight.begin(), g_weight.end(), li::at<float>(hws, Lh.g_weight));
    *li::at<moe::route_stats>(hws, Lh.stats) = st;
    upload_at(dws.data(), Ld.g_expert, g_expert);
    upload_at(dws.data(), Ld.g_slot, g_slot);
    upload_at(dws.data(), Ld.g_weight, g_weight);
    li::local_slots<C>(T, tb, hws, Lh);
    auto const ops = moe::cuda_on(nullptr, dws.data() + Ld.op_scratch, Ld.op_scratch_bytes);
    MOE_REQUIRE_OK(li::local_slots<C>(ops, p, tb, dws.data(), Ld));
    MOE_REQUIRE_CUDA(cudaDeviceSynchronize());
    auto* const he = li::at<std::int32_t>(hws, Lh.expert);
    auto* const hs = li::at<std::int32_t>(hws, Lh.slot);
    CHECK(download(li::at<std::int32_t>(dws.data(), Ld.expert), T * K) ==
          std::vector<std::int32_t>(he, he + T * K));
    CHECK(download(li::at<std::int32_t>(dws.data(), Ld.slot), T * K) ==
          std::vector<std::int32_t>(hs, hs + T * K));

    // The regrouping: random per-(source, local expert) counts, some zero.
    std::uniform_int_distribution<int> rows(0, 5);
    std::vector<std::int64_t> recv_counts(static_cast<std::size_t>(E)),
        offsets(static_cast<std::size_t>(E + 1));
    for (auto& c : recv_counts) c = rows(gen) == 0 ? 0 : rows(gen);
    offsets[0] = 0;
    for (std::int64_t e = 0; e < E; ++e)
      offsets[static_cast<std::size_t>(e + 1)] = offsets[static_cast<std::size_t>(e)] + rows(gen);
    li::workspace_layout bounds{};
    bounds.rows = offsets.back();
    bounds.rows_recv = 6 * E;
    std::vector<std::int64_t> send_rows(static_cast<std::size_t>(R)), recv_rows(send_rows.size()),
        e_offsets(static_cast<std::size_t>(El + 1)), table(static_cast<std::size_t>(3 * E));
    std::vector<std::int32_t> order(static_cast<std::size_t>(6 * E), -2), inverse(order.size(), -2);
    std::int64_t Mr = 0, pair = 0;
    MOE_REQUIRE_OK(li::ep_rows(
        offsets.data(), recv_counts.data(), R, El, bounds, send_rows.data(), recv_rows.data(),
        e_offsets.data(), Mr, [&](std::int64_t first, std::int64_t g, std::int64_t n) {
          for (std::int64_t i = 0; i < n; ++i) {
            order[static_cast<std::size_t>(g + i)] = static_cast<std::int32_t>(first + i);
            inverse[static_cast<std::size_t>(first + i)] = static_cast<std::int32_t>(g + i);
          }
          table[static_cast<std::size_t>(3 * pair)] = first;
          table[static_cast<std::size_t>(3 * pair + 1)] = g;
          table[static_cast<std::size_t>(3 * pair + 2)] = n;
          ++pair;
        }));
    CHECK(pair == E);
    moe::test::device_vector<std::int64_t> dtable(table.size());
    moe::test::device_vector<std::int32_t> dorder(order.size()), dinverse(order.size());
    dtable.upload(table);
    dorder.upload(order);
    dinverse.upload(inverse);
    moe::backend::cuda::ep_regroup_kernel<><<<moe::backend::cuda::grid_for(E, 1), 128>>>(
        E, dtable.data(), dorder.data(), dinverse.data());
    MOE_REQUIRE_CUDA(cudaGetLastError());
    CHECK(dorder.download() == order);
    CHECK(dinverse.download() == inverse);
    // The maps are inverse permutations of the Mr received rows.
    for (std::int64_t g = 0; g < Mr; ++g)
      CHECK(inverse[static_cast<std::size_t>(order[static_cast<std::size_t>(g)])] == g);
  }
}
