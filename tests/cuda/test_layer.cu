// SPDX-License-Identifier: Apache-2.0
// The CUDA layer (moe/cuda/layer.cuh) against the host layer on the same parameters and inputs:
// routing integers (experts, slots, counts) bitwise; y, dx and every gradient within a bound
// normalised by the tensor's largest magnitude; two CUDA runs bitwise equal. Router inputs are
// small multiples of powers of two (x = k/8, W_g = k/16, H <= 64), so every logit is an exact
// fp32 sum whatever the order and both backends route identically; the other tensors are
// random. Bounds: fp32 1e-4 · max|ref| (GEMM sums of ~100 terms in different orders, about
// 100 · 6e-8 relative, and the chain of FFN layers); bf16 2e-2 · max|ref| (intermediates are
// stored in bf16, u = 3.9e-3, so one rounding that lands differently moves a value by an ulp);
// fp64 1e-10 (below). Every run is on a non-blocking stream. The step is also captured in a
// CUDA graph (zero_grad, forward, backward: no synchronisation, allocation or host read inside)
// and replayed over poisoned outputs and gradients: the replay's bits equal the eager run's.
#include <doctest/doctest.h>

#include <algorithm>  // std::max
#include <cmath>      // std::abs
#include <cstdint>    // std::int64_t
#include <random>     // std::mt19937_64
#include <vector>     // std::vector

#include "../host/common.hpp"  // same_bits
#include "common.cuh"            // device_vector, MOE_REQUIRE_OK
#include "moe/configs.hpp"
#include "moe/cuda/layer.cuh"

namespace {

using moe::test::same_bits;
using moe::test::scaled_error;

template <moe::config C>
void compare_layers(moe::layer_shape shape, std::int64_t T, double tol) {
  using A = moe::act_t<C>;
  using W = moe::weight_t<C>;
  using G = moe::accum_t<C>;
  std::uint64_t const seed = std::random_device{}();
  CAPTURE(seed);
  std::int64_t const H = shape.hidden, E = C.experts, K = C.top_k;
  moe::layer<C> host(shape);
  moe::layer<C, moe::cuda_policy> dev(shape);
  REQUIRE(host.allocate().ok());
  REQUIRE(dev.allocate().ok());
  REQUIRE(host.init({.seed = seed, .std = 0.2f}).ok());
  REQUIRE(dev.init({.seed = seed, .std = 0.2f}).ok());
  // Exact router: W_g = k/16, x = k/8.
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> small(-8, 8);
  for (std::int64_t i = 0; i < H * E; ++i)
    host.params().w_gate[i] = moe::from_float<W>(static_cast<float>(small(gen)) / 16.0f);
  MOE_REQUIRE_CUDA(cudaMemcpy(dev.params().w_gate, host.params().w_gate,
                              static_cast<std::size_t>(H * E) * sizeof(W), cudaMemcpyHostToDevice));
  std::vector<A> x(static_cast<std::size_t>(T * H)), dy(x.size());
  std::normal_distribution<float> normal;
  for (auto& v : x) v = moe::from_float<A>(static_cast<float>(small(gen)) / 8.0f);
  for (auto& v : dy) v = moe::from_float<A>(normal(gen));

  moe::problem p = host.make_problem(T);
  p.z_loss_coef = 0.001f;
  std::size_t const hb = host.workspace_bytes(p), db = dev.workspace_bytes(p);
  std::vector<std::max_align_t> hws(hb / sizeof(std::max_align_t) + 8);
  void* hptr = reinterpret_cast<void*>((reinterpret_cast<std::uintptr_t>(hws.data()) + 63) / 64 * 64);
  std::vector<A> y(x.size()), dx(x.size());
  moe::layer_stats hstats{};
  REQUIRE(host.zero_grad().ok());
  MOE_REQUIRE_OK(host.forward(moe::host, p, {x.data(), y.data(), &hstats}, hptr, hb));
  MOE_REQUIRE_OK(host.backward(moe::host, p, {x.data(), dy.data(), dx.data()}, hptr, hb));

  moe::test::device_vector<A> dx_in(x.size()), ddy(x.size()), dy_out(x.size()), ddx(x.size());
  moe::test::device_vector<char> dws(db);
  moe::test::device_vector<moe::layer_stats> dstats(1);
  moe::test::device_vector<std::int64_t> bad(1);
  dx_in.upload(x);
  ddy.upload(dy);
  std::int64_t const n = host.parameter_count();
  std::vector<G> first_grads;
  std::vector<A> first_y, first_dx;
  // A non-blocking stream: a launch on the legacy stream instead of the policy's would race.
  cudaStream_t stream = nullptr;
  MOE_REQUIRE_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto const on = moe::cuda_on(stream);
  // Runs 0 and 1 eager, run 2 a CUDA graph of the same step.
  for (int run = 0; run < 3; ++run) {
    bool const graph = run == 2;
    if (graph) {
      if (!x.empty()) {
        MOE_REQUIRE_CUDA(cudaMemset(dy_out.data(), 0xff, x.size() * sizeof(A)));
        MOE_REQUIRE_CUDA(cudaMemset(ddx.data(), 0xff, x.size() * sizeof(A)));
      }
      MOE_REQUIRE_CUDA(cudaMemset(dev.flat_grads(), 0x7f, static_cast<std::size_t>(n) * sizeof(G)));
      MOE_REQUIRE_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    }
    moe::status s = dev.zero_grad(on);
    if (s.ok())
      s = dev.forward(on, p, {dx_in.data(), dy_out.data(), dstats.data(), nullptr, bad.data()},
                      dws.data(), db);
    if (s.ok()) s = dev.backward(on, p, {dx_in.data(), ddy.data(), ddx.data()}, dws.data(), db);
    if (graph) {  // end the capture before any REQUIRE can leave the stream capturing
      cudaGraph_t g = nullptr;
      cudaError_t const end = cudaStreamEndCapture(stream, &g);
      MOE_REQUIRE_OK(s);
      REQUIRE_MESSAGE(end == cudaSuccess, "cudaStreamEndCapture: " << cudaGetErrorName(end));
      cudaGraphExec_t exec = nullptr;
      cudaError_t const made = cudaGraphInstantiate(&exec, g, 0);
      cudaError_t const ran = made == cudaSuccess ? cudaGraphLaunch(exec, stream) : made;
      cudaError_t const done = cudaStreamSynchronize(stream);
      if (exec != nullptr) cudaGraphExecDestroy(exec);
      cudaGraphDestroy(g);
      REQUIRE_MESSAGE(ran == cudaSuccess, "cudaGraphLaunch: " << cudaGetErrorName(ran));
      REQUIRE_MESSAGE(done == cudaSuccess, "graph replay: " << cudaGetErrorName(done));
    }
    MOE_REQUIRE_OK(s);
    MOE_REQUIRE_CUDA(cudaStreamSynchronize(stream));
    std::vector<G> grads(static_cast<std::size_t>(n));
    MOE_REQUIRE_CUDA(cudaMemcpy(grads.data(), dev.flat_grads(), grads.size() * sizeof(G),
                                cudaMemcpyDeviceToHost));
    if (run == 0) {
      first_grads = grads;
      first_y = dy_out.download();
      first_dx = ddx.download();
      continue;
    }
    CHECK(same_bits(grads, first_grads));
    CHECK(same_bits(dy_out.download(), first_y));
    CHECK(same_bits(ddx.download(), first_dx));
  }
  cudaStreamDestroy(stream);
  CHECK(bad.download()[0] == -1);
  // Routing integers, bitwise.
  auto const hr = host.routing(p, hptr);
  auto const dr = dev.routing(p, dws.data());
  std::vector<std::int32_t> de(static_cast<std::size_t>(T * K)), ds(de.size()),
      dc(static_cast<std::size_t>(E));
  MOE_REQUIRE_CUDA(cudaMemcpy(de.data(), dr.expert, de.size() * 4, cudaMemcpyDeviceToHost));
  MOE_REQUIRE_CUDA(cudaMemcpy(ds.data(), dr.slot, ds.size() * 4, cudaMemcpyDeviceToHost));
  MOE_REQUIRE_CUDA(cudaMemcpy(dc.data(), dr.counts, dc.size() * 4, cudaMemcpyDeviceToHost));
  CHECK(same_bits(de, std::vector<std::int32_t>(hr.expert, hr.expert + de.size())));
  CHECK(same_bits(ds, std::vector<std::int32_t>(hr.slot, hr.slot + ds.size())));
  CHECK(same_bits(dc, std::vector<std::int32_t>(hr.counts, hr.counts + dc.size())));
  moe::layer_stats const dstat = dstats.download()[0];
  CHECK(dstat.route.dropped == hstats.route.dropped);
  CHECK(dstat.route.capacity == hstats.route.capacity);
  CHECK(dstat.loss == doctest::Approx(hstats.loss).epsilon(1e-5));
  // Floats within the stated bound, tensor by tensor.
  CHECK_MESSAGE(scaled_error(first_y, y) <= tol, "y: " << scaled_error(first_y, y));
  CHECK_MESSAGE(scaled_error(first_dx, dx) <= tol, "dx: " << scaled_error(first_dx, dx));
  moe::detail::layer_impl::tensor_sizes<C> const sizes(shape);
  std::int64_t at = 0;
  for (int i = 0; i < 15; ++i) {
    if (sizes.n[i] == 0) continue;
    std::vector<G> const want(host.flat_grads() + at, host.flat_grads() + at + sizes.n[i]);
    std::vector<G> const got(first_grads.begin() + at, first_grads.begin() + at + sizes.n[i]);
    double const e = scaled_error(got, want);
    CHECK_MESSAGE(e <= tol, moe::detail::layer_impl::tensor_names[i] << ": " << e);
    at += sizes.n[i];
  }
}

}  // namespace

TEST_CASE("cuda layer: fp32 vs the host layer (capacity, shared experts, residual)") {
  compare_layers<moe::configs::top2_fp32>(
      {.hidden = 64, .ffn = 96, .shared_ffn = 32, .residual_ffn = 32}, 300, 1e-4);
  compare_layers<moe::configs::top2_fp32>({.hidden = 32, .ffn = 64}, 1, 1e-4);
}

TEST_CASE("cuda layer: bf16 vs the host layer") {
  compare_layers<moe::configs::top2_bf16>({.hidden = 64, .ffn = 128, .shared_ffn = 64}, 517, 2e-2);
}

// fp64: the logits are narrowed to fp32 for the router and its gradient widened back (both
// backends); every other sum is in double, ~100 terms in a different order: 1e-10 · max|ref|
// leaves four orders of magnitude above the ~1e-14 that order changes give.
TEST_CASE("cuda layer: fp64 vs the host layer, with a residual") {
  compare_layers<moe::configs::top2_fp64>({.hidden = 32, .ffn = 48, .residual_ffn = 16}, 130,
                                          1e-10);
  compare_layers<moe::configs::top2_fp64>({.hidden = 32, .ffn = 48}, 1, 1e-10);
}

// Gated (SwiGLU), dropless, sigmoid scores, 64 experts of top-8: the bf16 bound.
TEST_CASE("cuda layer: fine-grained dropless SwiGLU bf16 vs the host layer") {
  compare_layers<moe::configs::fine_bf16>({.hidden = 64, .ffn = 32}, 200, 2e-2);
}

TEST_CASE("cuda layer: no tokens") {
  compare_layers<moe::configs::top2_fp32>({.hidden = 32, .ffn = 64}, 0, 1e-4);
}
