// SPDX-License-Identifier: Apache-2.0
// CUDA overload of fill_random (see moe/random.hpp): checks the arguments exactly as the host
// backend does, then launches fill_random_kernel on the policy's stream. No workspace.
#pragma once

#include "moe/cuda/kernels/random.cuh"  // fill_random_kernel
#include "moe/cuda/runtime.cuh"         // check_launch, grid_for
#include "moe/random.hpp"               // moe::random_args, detail::check

namespace moe {

/// Fills `a.out[0, n)` (device memory) with draws, enqueued on `policy.stream`.
inline status fill_random(cuda_policy policy, random_args const& a) noexcept {
  MOE_TRY(detail::check(a));
  if (a.n == 0) return {};
  constexpr unsigned block = 256;
  unsigned const grid = backend::cuda::grid_for(detail::random_runs(a.n), block);
  switch (a.dist) {
    case distribution::uniform:
      backend::cuda::fill_random_kernel<distribution::uniform>
          <<<grid, block, 0, policy.stream>>>(a.seed, a.offset, a.out, a.n);
      break;
    case distribution::normal:
      backend::cuda::fill_random_kernel<distribution::normal>
          <<<grid, block, 0, policy.stream>>>(a.seed, a.offset, a.out, a.n);
      break;
    case distribution::gumbel:
      backend::cuda::fill_random_kernel<distribution::gumbel>
          <<<grid, block, 0, policy.stream>>>(a.seed, a.offset, a.out, a.n);
      break;
  }
  return backend::cuda::check_launch(policy.stream, "fill_random_kernel");
}

}  // namespace moe
