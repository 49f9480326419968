// SPDX-License-Identifier: Apache-2.0
// convert on the GPU (CUDA's own conversion intrinsics on the device pass) equals the host
// backend (our portable bit-level conversions) bit for bit: over a sweep of all 2^32 float bit
// patterns (stride MOE_TEST_FLOAT_STRIDE) to every narrow type, and every narrow bit pattern
// back to float. And nvcc's float flags as moe::cuda sets them (IEEE semantics, no FTZ).
#include <cmath>
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

/// The float operations moe's kernels round with, on pairs (a[i], b[i]): what they compute
/// depends on nvcc's -ftz / -prec-div / -prec-sqrt, which moe::cuda fixes (docs/building.md).
__global__ void ieee_ops_kernel(int n, float const* a, float const* b, float* out) {
  int const i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  float const x = a[i], y = b[i];
  out[6 * i + 0] = __fmul_rn(x, y);
  out[6 * i + 1] = __fadd_rn(x, y);
  out[6 * i + 2] = __fdiv_rn(x, y);
  out[6 * i + 3] = x * y;
  out[6 * i + 4] = x / y;
  out[6 * i + 5] = sqrtf(x);
}

}  // namespace

// Subnormal operands and results, and divisions and square roots that must round correctly:
// with -ftz=true the first four flush to zero, with -prec-div=false / -prec-sqrt=false the
// last two may be off by an ulp. The host computes each in IEEE single precision.
TEST_CASE("cuda kernels compiled through moe::cuda keep IEEE float semantics (no FTZ)") {
  std::vector<float> const a = {0x1p-63f, 0x1p-130f, 0x1.8p-140f, 1.0f, 2.0f, 0x1.fffffep-2f,
                                0x1p-149f, 3.0f, 0x1.234566p-127f, 10.0f};
  std::vector<float> const b = {0x1p-70f, 0x1p-131f, 0x1.8p-141f, 3.0f, 7.0f, 0x1.000002p+0f,
                                0x1p-149f, 0x1.fffffep+127f, 0x1p+2f, 0x1.5555p-1f};
  int const n = static_cast<int>(a.size());
  moe::test::device_vector<float> da(a.size()), db(b.size()), out(6 * a.size());
  da.upload(a);
  db.upload(b);
  ieee_ops_kernel<<<1, 32>>>(n, da.data(), db.data(), out.data());
  MOE_REQUIRE_CUDA(cudaGetLastError());
  MOE_REQUIRE_CUDA(cudaDeviceSynchronize());
  std::vector<float> const got = out.download();
  int subnormal_results = 0;
  for (int i = 0; i < n; ++i) {
    float const x = a[static_cast<std::size_t>(i)], y = b[static_cast<std::size_t>(i)];
    volatile float vx = x, vy = y;  // no constant folding, no contraction on the host side
    float const want[6] = {vx * vy, vx + vy, vx / vy, vx * vy, vx / vy, std::sqrt(float{vx})};
    for (int j = 0; j < 6; ++j) {
      float const g = got[static_cast<std::size_t>(6 * i + j)];
      subnormal_results += want[j] != 0.0f && std::fabs(want[j]) < 0x1p-126f;
      CAPTURE(i);
      CAPTURE(j);
      CHECK(std::memcmp(&want[j], &g, sizeof(float)) == 0);
    }
  }
  CHECK(subnormal_results >= 6);  // the cases above do reach the subnormal range
}

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
