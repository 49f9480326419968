// SPDX-License-Identifier: Apache-2.0
// Kernel of fill_random: each thread computes whole draws with moe::draw, the same
// MOE_HOST_DEVICE function the host backend calls, from basic IEEE operations that nvcc cannot
// contract or approximate — so the device tensor equals the host one bit for bit.
// Memory-bound only in the sense of its 4-byte stores; the Philox rounds dominate (10 rounds of
// two 32x32->64 multiplies per 4 words), so a grid-stride loop over draws is enough.
#pragma once

#include <cstdint>  // std::int64_t

#include "moe/philox.hpp"  // moe::draw, moe::distribution

namespace moe::backend::cuda {

template <distribution D>
__global__ void fill_random_kernel(std::uint64_t seed, std::uint64_t offset,
                                   float* __restrict__ out,  // [n]
                                   std::int64_t n) {
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride)
    out[i] = draw(D, seed, static_cast<std::uint64_t>(i), offset);
}

}  // namespace moe::backend::cuda
