// SPDX-License-Identifier: Apache-2.0
// Kernel of convert: a grid-stride loop, one element per thread per step, converting through
// the same MOE_HOST_DEVICE functions as the host backend (CUDA's own __float2bfloat16_rn etc. on
// the device pass, which the tests prove bit-identical to the host twins). Element-wise loads
// are coalesced across a warp; this op is not on a training step's hot path.
#pragma once

#include <cstdint>  // std::int64_t

#include "moe/precision.hpp"  // moe::to_float, moe::from_float

namespace moe::backend::cuda {

template <class From, class To>
__global__ void convert_kernel(From const* __restrict__ in,  // [n]
                               To* __restrict__ out,         // [n]
                               std::int64_t n) {
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride)
    out[i] = from_float<To>(to_float(in[i]));
}

}  // namespace moe::backend::cuda
