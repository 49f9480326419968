// SPDX-License-Identifier: Apache-2.0
// convert on the GPU (CUDA's own conversion intrinsics on the device pass) equals the host
// backend (our portable bit-level conversions) bit for bit: over a sweep of all 2^32 float bit
// patterns (stride MOE_TEST_FLOAT_STRIDE) to every narrow type, and every narrow bit pattern
// back to float.
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.cuh"
#include "moe/cuda/convert.cuh"

namespace {

template <class To>
void float_sweep_matches_host() {
  std::uint64_t const stride = moe::test::float_stride();
  constexpr std::size_t chunk = std::size_t{1} << 26;  // 256 MiB of floats per round trip
  moe::test::device_vector<float> in(chunk);
  moe::test::device_vector<To> out(chunk);
  std::vector<float> h_in(chunk);
  std::vector<To> h_out(chunk);
  std::uint64_t mismatches = 0;
  std::uint64_t bits = 0;
  while (bits <= 0xffffffffULL) {
    std::size_t n = 0;
    for (; n < chunk && bits <= 0xffffffffULL; ++n, bits += stride) {
      auto const b = static_cast<std::uint32_t>(bits);
      std::memcpy(&h_in[n], &b, sizeof b);
    }
    MOE_REQUIRE_CUDA(cudaMemcpy(in.data(), h_in.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    MOE_REQUIRE_OK(moe::convert(moe::cuda_on(nullptr),
                                moe::convert_args<float, To>{in.data(), out.data(),
                                                             static_cast<std::int64_t>(n)}));
    MOE_REQUIRE_CUDA(cudaMemcpy(h_out.data(), out.data(), n * sizeof(To), cudaMemcpyDeviceToHost));
    for (std::size_t i = 0; i < n; ++i) {
      To const want = moe::from_float<To>(h_in[i]);
      mismatches += std::memcmp(&want, &h_out[i], sizeof(To)) != 0;
    }
  }
  CHECK_MESSAGE(mismatches == 0, moe::storage_name<To>());
}

template <class From>
void widening_matches_host() {
  constexpr std::size_t n = std::size_t{1} << (8 * sizeof(From));
  std::vector<From> h_in(n);
  for (std::size_t i = 0; i < n; ++i) std::memcpy(&h_in[i], &i, sizeof(From));  // little-endian
  moe::test::device_vector<From> in(n);
  moe::test::device_vector<float> out(n);
  in.upload(h_in);
  MOE_REQUIRE_OK(moe::convert(moe::cuda_on(nullptr),
                              moe::convert_args<From, float>{in.data(), out.data(),
                                                             static_cast<std::int64_t>(n)}));
  std::vector<float> const got = out.download();
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < n; ++i) {
    float const want = moe::to_float(h_in[i]);
    mismatches += std::memcmp(&want, &got[i], sizeof(float)) != 0;
  }
  CHECK_MESSAGE(mismatches == 0, moe::storage_name<From>());
}

}  // namespace

TEST_CASE("convert(cuda) == convert(host): float to every narrow type") {
  float_sweep_matches_host<moe::bf16>();
  float_sweep_matches_host<moe::fp16>();
  float_sweep_matches_host<moe::fp8_e4m3>();
  float_sweep_matches_host<moe::fp8_e5m2>();
}

TEST_CASE("convert(cuda) == convert(host): every narrow bit pattern to float") {
  widening_matches_host<moe::bf16>();
  widening_matches_host<moe::fp16>();
  widening_matches_host<moe::fp8_e4m3>();
  widening_matches_host<moe::fp8_e5m2>();
}
