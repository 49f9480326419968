// SPDX-License-Identifier: Apache-2.0
// The per-expert row split the grouped-GEMM benchmarks use (benchmarks/host/main.cpp,
// benchmarks/cuda/grouped_gemm.cu): uniform, or skewed — expert e gets total/2^(e+1) rows and
// the last one the rest, so most experts are empty once E passes log2 of the total.
#pragma once

#include <cstdint>  // std::int64_t
#include <vector>   // std::vector

namespace moe_bench {

/// Offsets [E + 1] of `experts` experts of `per_expert` rows each on average.
inline std::vector<std::int64_t> expert_row_offsets(std::int64_t per_expert, bool skewed,
                                                    std::int64_t experts) {
  std::vector<std::int64_t> off{0};
  std::int64_t const total = per_expert * experts;
  for (std::int64_t e = 0; e < experts; ++e) {
    std::int64_t const skew = e + 1 < experts ? total >> (e + 1) : total - off.back();
    off.push_back(off.back() + (skewed ? skew : per_expert));
  }
  return off;
}

}  // namespace moe_bench
