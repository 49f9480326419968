// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the CUDA tests: an owning device buffer and a checking macro. Tests only —
// the library itself never allocates behind the caller's back and never aborts.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>  // std::max
#include <cmath>      // std::abs
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "moe/cuda/runtime.cuh"
#include "moe/precision.hpp"  // to_float

#define MOE_REQUIRE_CUDA(call) REQUIRE_MESSAGE((call) == cudaSuccess, #call)
#define MOE_REQUIRE_OK(expr)                          \
  do {                                                \
    ::moe::status const moe_s_ = (expr);              \
    REQUIRE_MESSAGE(moe_s_.ok(), std::string(moe_s_.message())); \
  } while (false)

#ifndef MOE_TEST_FLOAT_STRIDE
#define MOE_TEST_FLOAT_STRIDE 1
#endif

namespace moe::test {

/// The largest |got - want| over the tensor, divided by its largest |want| (itself when that is
/// 0): the error bound the layer tests state per precision.
template <class T>
double scaled_error(std::vector<T> const& got, std::vector<T> const& want) {
  REQUIRE(got.size() == want.size());
  auto as_double = [](T v) { return static_cast<double>(::moe::to_float(v)); };
  double big = 0, worst = 0;
  for (auto v : want) big = std::max(big, std::abs(as_double(v)));
  for (std::size_t i = 0; i < want.size(); ++i)
    worst = std::max(worst, std::abs(as_double(got[i]) - as_double(want[i])));
  return big > 0 ? worst / big : worst;
}

/// Stride of sweeps over all 2^32 float bit patterns: the build's MOE_TEST_FLOAT_STRIDE, or the
/// environment variable of that name (the GPU check strides them under compute-sanitizer).
inline std::uint64_t float_stride() {
  if (char const* env = std::getenv("MOE_TEST_FLOAT_STRIDE")) {
    long long const v = std::atoll(env);
    if (v >= 1) return static_cast<std::uint64_t>(v);
  }
  return MOE_TEST_FLOAT_STRIDE;
}

/// A device array of n elements of T (RAII; test code only).
template <class T>
class device_vector {
 public:
  explicit device_vector(std::size_t n) : n_(n) {
    if (n_ > 0) MOE_REQUIRE_CUDA(cudaMalloc(&p_, n_ * sizeof(T)));
  }
  device_vector(device_vector const&) = delete;
  device_vector& operator=(device_vector const&) = delete;
  ~device_vector() { cudaFree(p_); }
  T* data() const { return p_; }
  std::size_t size() const { return n_; }
  void upload(std::vector<T> const& h) {
    REQUIRE(h.size() == n_);
    MOE_REQUIRE_CUDA(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    MOE_REQUIRE_CUDA(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace moe::test
