// SPDX-License-Identifier: Apache-2.0
// One MoE layer, forward and backward, on the CPU backend: a top-2 layer of 8 experts with a
// shared expert, a few SGD steps fitting y = x·0.5 on random tokens, printing the loss, the
// layer's own aux/z loss and the dropped routes. It shows the whole user-facing API: shape,
// allocate + init, make_problem, workspace_bytes, forward, backward, zero_grad, and the flat
// parameter/gradient buffers an optimizer walks.
//
// Run:  cmake --preset host && cmake --build --preset host --target moe_layer_example &&
//       ./build/host/examples/moe_layer_example
#include <moe/moe.hpp>  // moe::layer and the ops

#include <cstdio>   // std::printf, std::fprintf
#include <cstdlib>  // std::aligned_alloc, std::free, std::exit
#include <random>   // std::mt19937_64
#include <vector>   // std::vector

#define CHECK_OK(expr)                                                                  \
  do {                                                                                  \
    ::moe::status const s_ = (expr);                                                    \
    if (!s_.ok()) {                                                                     \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, s_.message()); \
      std::exit(EXIT_FAILURE);                                                          \
    }                                                                                   \
  } while (false)

int main() {
  // [snippet layer_step]
  constexpr moe::config C = moe::configs::top2_fp32;  // E = 8, K = 2, cf 1.25, renormalised
  moe::layer<C> layer({.hidden = 32, .ffn = 64, .shared_ffn = 32});
  CHECK_OK(layer.allocate());                     // layer-owned parameters and gradients
  CHECK_OK(layer.init({.seed = 1, .std = 0.1f}));  // N(0, 0.1²) weights, zero biases

  std::int64_t const T = 256, H = 32;
  moe::problem p = layer.make_problem(T);  // T tokens with the layer's H and F
  p.aux_loss_coef = 0.01f;
  std::size_t const bytes = layer.workspace_bytes(p);  // everything a step needs, once
  void* ws = std::aligned_alloc(64, (bytes + 63) / 64 * 64);

  std::vector<float> x(T * H), y(T * H), dy(T * H), dx(T * H);
  std::mt19937_64 gen(2);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(gen);
  for (int step = 0; step < 20; ++step) {
    moe::layer_stats stats{};
    CHECK_OK(layer.forward(moe::host, p, {.x = x.data(), .y = y.data(), .stats = &stats}, ws,
                           bytes));
    double loss = 0;  // mean squared error against the target 0.5·x
    for (std::int64_t i = 0; i < T * H; ++i) {
      float const d = y[i] - 0.5f * x[i];
      loss += static_cast<double>(d * d) / static_cast<double>(T);
      dy[i] = 2.0f * d / static_cast<float>(T);
    }
    CHECK_OK(layer.zero_grad());
    CHECK_OK(layer.backward(moe::host, p, {.x = x.data(), .dy = dy.data(), .dx = dx.data()}, ws,
                            bytes));
    for (std::int64_t i = 0; i < layer.parameter_count(); ++i)  // plain SGD on the flat buffers
      layer.flat_params()[i] -= 0.05f * layer.flat_grads()[i];
    std::printf("step %2d  loss %.5f  aux+z %.5f  dropped %lld of %lld routes\n", step, loss,
                stats.loss, static_cast<long long>(stats.route.dropped),
                static_cast<long long>(stats.route.routes));
  }
  std::free(ws);
  // [end snippet]
  return 0;
}
