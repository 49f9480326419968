// SPDX-License-Identifier: Apache-2.0
// fill_random on the GPU equals the host backend bit for bit: the Philox words are integers and
// the transforms use only correctly rounded IEEE operations on both sides.
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.cuh"
#include "moe/cuda/random.cuh"

TEST_CASE("fill_random(cuda) == fill_random(host), bitwise, for every distribution") {
  for (moe::distribution d :
       {moe::distribution::uniform, moe::distribution::normal, moe::distribution::gumbel}) {
    for (std::int64_t n : {std::int64_t{1}, std::int64_t{1031}, std::int64_t{1} << 20}) {
      for (std::uint64_t offset :
           {std::uint64_t{0}, std::uint64_t{5}, std::uint64_t{6}, (std::uint64_t{1} << 34) - 3}) {
        moe::test::device_vector<float> dev(static_cast<std::size_t>(n));
        moe::random_args a{.dist = d, .seed = 0xdeadbeefcafef00dULL, .offset = offset,
                           .out = dev.data(), .n = n};
        MOE_REQUIRE_OK(moe::fill_random(moe::cuda_on(nullptr), a));
        MOE_REQUIRE_CUDA(cudaDeviceSynchronize());
        std::vector<float> host(static_cast<std::size_t>(n));
        a.out = host.data();
        MOE_REQUIRE_OK(moe::fill_random(moe::host, a));
        std::vector<float> const got = dev.download();
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < host.size(); ++i)
          mismatches += std::memcmp(&got[i], &host[i], sizeof(float)) != 0;
        CHECK_MESSAGE(mismatches == 0, "dist " << static_cast<int>(d) << " n " << n << " offset "
                                               << offset);
      }
    }
  }
}

TEST_CASE("fill_random(cuda): bad arguments come back as a status before any launch") {
  moe::status const s = moe::fill_random(moe::cuda_on(nullptr), {.out = nullptr, .n = 5});
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(moe::fill_random(moe::cuda_on(nullptr), {.out = nullptr, .n = 0}).ok());
}
