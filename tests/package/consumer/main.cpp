// SPDX-License-Identifier: Apache-2.0
// The g++ package consumer: includes the host umbrella, dispatches a config, draws noise.
#include <moe/moe.hpp>

#include <cstdio>

int main() {
  moe::config const cfg = moe::configs::top2_fp32;
  float noise[4] = {};
  moe::status s = moe::dispatch(cfg, [&]<moe::config C>() {
    return moe::fill_random(moe::host, {.dist = moe::distribution::gumbel, .seed = C.experts,
                                        .out = noise, .n = 4});
  });
  std::printf("consumer_cxx: %s %s (%g %g %g %g)\n", s.ok() ? "ok" : "error", s.message(),
              static_cast<double>(noise[0]), static_cast<double>(noise[1]),
              static_cast<double>(noise[2]), static_cast<double>(noise[3]));
  return s.ok() ? 0 : 1;
}
