// SPDX-License-Identifier: Apache-2.0
// The FLOPs the layer benchmarks count (benchmarks/host/main.cpp, benchmarks/cuda/layer.cu):
// the GEMMs a layer step runs — the router GEMM 2·T·H·E (backward: dx and dW_g, twice that)
// and the routed experts' two grouped GEMMs on the M kept rows, 2·M·H·F_w + 2·M·F·H
// (F_w = 2F when gated), twice that backward plus the first GEMM again when it is recomputed.
// Element-wise work is not counted.
#pragma once

#include <cstdint>  // std::int64_t

#include "moe/layer.hpp"  // moe::layer_shape, moe::layer_options, moe::config

namespace moe_bench {

struct layer_flop_count {
  double forward = 0, backward = 0;
};

template <moe::config C>
layer_flop_count layer_flops(moe::layer_shape const& s, moe::layer_options const& o,
                             std::int64_t tokens, std::int64_t kept_rows) {
  auto const T = static_cast<double>(tokens), M = static_cast<double>(kept_rows);
  auto const H = static_cast<double>(s.hidden), F = static_cast<double>(s.ffn);
  double const Fw = moe::is_gated(C.ffn_activation) ? 2.0 * F : F;
  double const router = 2.0 * T * H * C.experts;
  double const fc1 = 2.0 * M * H * Fw, fc2 = 2.0 * M * F * H;
  double const recompute = o.recompute == moe::ffn_recompute::fc1 ? fc1 : 0.0;
  return {router + fc1 + fc2, 2.0 * router + 2.0 * (fc1 + fc2) + recompute};
}

}  // namespace moe_bench
