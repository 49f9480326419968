// SPDX-License-Identifier: Apache-2.0
// Kernel of fill_random: a grid-stride loop over runs of four consecutive draws, each run
// computed by detail::fill_random_run — the MOE_HOST_DEVICE function the host tests also
// drive — through a philox_stream, so each 10-round Philox block is computed once for its
// four words rather than once per word. The floats come from basic IEEE operations that
// nvcc cannot contract or approximate, so the device tensor equals the host one bit for bit.
// The Philox rounds (two 32x32->64 multiplies each), not the 4-byte stores, bound its speed.
#pragma once

#include <cstdint>  // std::int64_t, std::uint64_t

#include "moe/random.hpp"  // detail::fill_random_run, detail::random_runs

namespace moe::backend::cuda {

template <distribution D>
__global__ void fill_random_kernel(std::uint64_t seed, std::uint64_t offset,
                                   float* __restrict__ out,  // [n]
                                   std::int64_t n) {
  std::int64_t const runs = moe::detail::random_runs(n);
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t run = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       run < runs; run += stride)
    moe::detail::fill_random_run(D, seed, offset, out, n, run);
}

}  // namespace moe::backend::cuda
