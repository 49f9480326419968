// SPDX-License-Identifier: Apache-2.0
// Runs everywhere, GPU or not: the CUDA backend's entry points turn runtime failures into a
// status (never a crash, exit or abort), and argument errors are reported before any CUDA call.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "moe/cuda.cuh"

TEST_CASE("cuda runtime errors become statuses with the native code and names") {
  moe::status const s = moe::backend::cuda::from_cuda(cudaErrorInvalidValue, "cudaMemcpy");
  CHECK(s.code() == moe::errc::cuda_error);
  CHECK(s.native_code() == static_cast<int>(cudaErrorInvalidValue));
  CHECK(std::string(s.message()).find("cudaMemcpy: ") == 0);
  CHECK(std::string(s.message()).find("cudaErrorInvalidValue") != std::string::npos);
  CHECK(moe::backend::cuda::from_cuda(cudaSuccess, "x").ok());
}

TEST_CASE("argument errors come first, without touching the device") {
  moe::status const s = moe::fill_random(moe::cuda_on(nullptr), {.out = nullptr, .n = 3});
  CHECK(std::string(s.message()) == "random_args.out: expected non-null for n = 3");
  moe::status const c = moe::convert(moe::cuda_on(nullptr),
                                     moe::convert_args<float, moe::bf16>{nullptr, nullptr, -1});
  CHECK(std::string(c.message()) == "convert_args.n: expected >= 0, got -1");
}

TEST_CASE("without a device, a launch reports a CUDA error status instead of crashing") {
  if (moe::backend::cuda::device_count() > 0) {
    MESSAGE("a device is present: the no-device path is covered on machines without one");
    return;
  }
  float* bogus = reinterpret_cast<float*>(std::uintptr_t{256});  // never dereferenced on host
  moe::status const s = moe::fill_random(moe::cuda_on(nullptr), {.out = bogus, .n = 8});
  CHECK(s.code() == moe::errc::cuda_error);
  CHECK(s.native_code() != 0);
  MESSAGE("no-device launch: " << s.message());
}
