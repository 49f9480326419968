// SPDX-License-Identifier: Apache-2.0
// The one parallel loop of the GPT-MoE example. Every loop hands each output element to exactly
// one iteration, and each iteration computes its outputs in a fixed order, so results are
// bitwise the same for any thread count (and without OpenMP). No loop reduces across
// iterations: sums over iterations are written per iteration and added up serially afterwards.
#pragma once

#include <cstdint>  // std::int64_t

#if defined(_OPENMP)
#include <omp.h>  // omp_get_max_threads
#endif

namespace gpt {

/// body(i) for i in [0, n), over `threads` OpenMP threads (0 = OpenMP's default), statically
/// scheduled; serially when built without OpenMP.
template <class Body>
void parallel_for(int threads, std::int64_t n, Body const& body) {
#if defined(_OPENMP)
  int const t = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1 && n > 1)
  for (std::int64_t i = 0; i < n; ++i) body(i);
#else
  (void)threads;
  for (std::int64_t i = 0; i < n; ++i) body(i);
#endif
}

}  // namespace gpt
