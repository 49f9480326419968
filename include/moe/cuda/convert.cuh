// SPDX-License-Identifier: Apache-2.0
// CUDA overload of convert (see moe/convert.hpp): same argument checks as the host backend,
// then one launch of convert_kernel on the policy's stream. No workspace.
#pragma once

#include "moe/convert.hpp"               // moe::convert_args, detail::check
#include "moe/cuda/kernels/convert.cuh"  // convert_kernel
#include "moe/cuda/runtime.cuh"          // check_launch, grid_for

namespace moe {

/// Converts device memory, enqueued on `policy.stream`.
template <class From, class To>
status convert(cuda_policy policy, convert_args<From, To> const& a) noexcept {
  MOE_TRY(detail::check(a));
  if (a.n == 0) return {};
  constexpr unsigned block = 256;
  backend::cuda::convert_kernel<From, To>
      <<<backend::cuda::grid_for(a.n, block), block, 0, policy.stream>>>(a.in, a.out, a.n);
  return backend::cuda::check_launch(policy.stream, "convert_kernel");
}

}  // namespace moe
