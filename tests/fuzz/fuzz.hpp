// SPDX-License-Identifier: Apache-2.0
// Shared by the libFuzzer targets of tests/fuzz (scripts/fuzz.sh builds and runs them): a reader
// that turns the fuzzer's bytes into bounded integers and adversarial floats, and FUZZ_CHECK,
// which prints what failed and traps (libFuzzer then saves the input as a crash).
#pragma once

#include <cmath>    // std::isfinite
#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint8_t, std::int64_t, std::uint32_t
#include <cstdio>   // std::fprintf
#include <cstring>  // std::memcpy
#include <limits>   // std::numeric_limits

#define FUZZ_CHECK(cond, ...)                                                            \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                 \
      std::fprintf(stderr, "\n");                                                        \
      __builtin_trap();                                                                  \
    }                                                                                    \
  } while (false)

namespace moe::fuzz {

/// Reads the fuzzer's bytes front to back; past the end every read gives 0.
class reader {
 public:
  reader(std::uint8_t const* data, std::size_t size) : p_(data), n_(size) {}
  std::uint8_t byte() { return i_ < n_ ? p_[i_++] : 0; }
  std::uint32_t u32() {
    std::uint32_t v = 0;
    for (int b = 0; b < 4; ++b) v = v << 8 | byte();
    return v;
  }
  /// An integer in [lo, hi].
  std::int64_t range(std::int64_t lo, std::int64_t hi) {
    std::uint64_t const span = static_cast<std::uint64_t>(hi - lo) + 1;
    std::uint64_t const v = span <= 256 ? byte() : u32();
    return lo + static_cast<std::int64_t>(v % span);
  }
  bool flag() { return byte() & 1; }
  /// A float: mostly ordinary values, often the hard ones (NaN, ±Inf, ±FLT_MAX, subnormals,
  /// ±0, ties), sometimes raw bits.
  float value() {
    std::uint8_t const kind = byte();
    switch (kind % 16) {
      case 0:
        return std::numeric_limits<float>::quiet_NaN();
      case 1:
        return kind & 16 ? std::numeric_limits<float>::infinity()
                         : -std::numeric_limits<float>::infinity();
      case 2:
        return kind & 16 ? std::numeric_limits<float>::max() : -std::numeric_limits<float>::max();
      case 3:
        return kind & 16 ? 1e30f : -1e30f;
      case 4:
        return kind & 16 ? std::numeric_limits<float>::denorm_min() : -0.0f;
      case 5:
        return 0.0f;
      case 6:
        return 1.0f;  // ties
      case 7: {
        std::uint32_t b = u32();
        float f;
        std::memcpy(&f, &b, sizeof f);
        return f;
      }
      default:
        return static_cast<float>(static_cast<std::int8_t>(byte())) / 16.0f;
    }
  }
  /// A finite float (the non-finite kinds replaced by small values).
  float finite() {
    float const f = value();
    return std::isfinite(f) ? f : static_cast<float>(byte() % 7) - 3.0f;
  }
  [[nodiscard]] bool empty() const { return i_ >= n_; }

 private:
  std::uint8_t const* p_;
  std::size_t n_;
  std::size_t i_ = 0;
};

}  // namespace moe::fuzz
