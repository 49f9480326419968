// SPDX-License-Identifier: Apache-2.0
// Quickstart: the vocabulary every moe call uses — a compile-time config, a run-time problem,
// the execution policy, a status out of every call, and dispatch from a run-time model
// description to the compiled config. (The whole layer joins this example when it lands.)
//
// Run:  cmake --preset host && cmake --build --preset host --target moe_quickstart &&
//       ./build/host/examples/moe_quickstart
#include <moe/moe.hpp>  // the host API: config, problem, policy, dispatch, ops

#include <cstdio>   // std::printf
#include <cstdlib>  // EXIT_SUCCESS, EXIT_FAILURE
#include <vector>   // std::vector

// Programs (not the library) may stop on an error: print the status and exit.
#define CHECK_OK(expr)                                                              \
  do {                                                                              \
    ::moe::status const s_ = (expr);                                                \
    if (!s_.ok()) {                                                                 \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, s_.message()); \
      std::exit(EXIT_FAILURE);                                                      \
    }                                                                               \
  } while (false)

int main() {
  // 1. What a model description says at run time (e.g. read from a config file).
  moe::config const wanted{.experts = 8, .top_k = 2, .capacity_factor = {5, 4},
                           .act = moe::precision::fp32, .weight = moe::precision::fp32,
                           .norm = moe::normalization::renormalize};
  moe::problem const prob{.tokens = 4096, .hidden = 512, .ffn = 2048, .seed = 42};

  // 2. Dispatch finds the compiled config equal to it and runs the generic lambda with it.
  CHECK_OK(moe::dispatch(wanted, [&]<moe::config C>() -> moe::status {
    MOE_TRY(moe::validate<C>(prob));
    char name[160];
    moe::describe(C, name, sizeof name);
    std::printf("config %s\n", name);
    std::printf("T=%lld H=%lld F=%lld: capacity C = %lld rows per expert (%d experts)\n",
                static_cast<long long>(prob.tokens), static_cast<long long>(prob.hidden),
                static_cast<long long>(prob.ffn), static_cast<long long>(moe::capacity<C>(prob)),
                C.experts);

    // 3. An op: router jitter noise for every token, reproducible from (seed, offset).
    std::vector<float> noise(static_cast<std::size_t>(prob.tokens));
    MOE_TRY(moe::fill_random(moe::host, {.dist = moe::distribution::gumbel, .seed = prob.seed,
                                         .out = noise.data(), .n = prob.tokens}));
    std::printf("gumbel noise[0..3] = %.6f %.6f %.6f %.6f\n", static_cast<double>(noise[0]),
                static_cast<double>(noise[1]), static_cast<double>(noise[2]),
                static_cast<double>(noise[3]));
    return {};
  }));

  // 4. A config that is not compiled in is an error you can print, never a crash.
  moe::status const s = moe::dispatch(moe::config{.experts = 3, .top_k = 2}, []<moe::config>() {});
  std::printf("not compiled: %s\n", s.message());
  return s.code() == moe::errc::unsupported_config ? EXIT_SUCCESS : EXIT_FAILURE;
}
