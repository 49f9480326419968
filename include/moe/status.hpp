// SPDX-License-Identifier: Apache-2.0
// `moe::status`: what every public entry point returns. The library never throws, exits or
// aborts; a failure comes back as a code, the native CUDA/NCCL/MPI code where there is one, and
// a short message that names the argument and the value that was expected. The message lives in
// a fixed-size buffer so that building an error never allocates (it may run where allocation
// is the thing that failed).
#pragma once

#include <cstdarg>  // va_list for the printf-style constructors
#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint8_t
#include <cstdio>   // std::vsnprintf

namespace moe {

/// What went wrong, coarsely; `status::message()` says precisely.
enum class errc : std::uint8_t {
  ok = 0,
  invalid_argument,     ///< a pointer, size or value outside its documented domain
  unsupported_config,   ///< a config that check() rejects, or one that is not compiled in
  workspace_too_small,  ///< the caller's buffer is smaller than workspace_bytes()/the plan needs
  out_of_memory,        ///< an allocation the caller asked the library to make failed
  cuda_error,           ///< the CUDA runtime failed; native_code() is the cudaError_t
  nccl_error,           ///< NCCL failed; native_code() is the ncclResult_t
  mpi_error,            ///< MPI failed; native_code() is the MPI error code
  no_device,            ///< a CUDA entry point was called where no usable GPU exists
  internal,             ///< a broken invariant inside the library: please report it
};

/// The name of an error code, for messages and logs.
constexpr char const* to_string(errc code) noexcept {
  switch (code) {
    case errc::ok: return "ok";
    case errc::invalid_argument: return "invalid_argument";
    case errc::unsupported_config: return "unsupported_config";
    case errc::workspace_too_small: return "workspace_too_small";
    case errc::out_of_memory: return "out_of_memory";
    case errc::cuda_error: return "cuda_error";
    case errc::nccl_error: return "nccl_error";
    case errc::mpi_error: return "mpi_error";
    case errc::no_device: return "no_device";
    case errc::internal: return "internal";
  }
  return "unknown";
}

/// The result of a library call: ok, or an error code with a message.
///
/// A default-constructed status is ok. Errors are made with `status::error`, whose message is
/// printf-formatted into a fixed buffer (truncated, always NUL-terminated).
class [[nodiscard]] status {
 public:
  static constexpr std::size_t message_capacity = 512;

  constexpr status() noexcept = default;

  /// An error with a printf-style message, e.g.
  /// `status::error(errc::invalid_argument, "tokens: expected >= 0, got %lld", t)`.
#if defined(__GNUC__)
  [[gnu::format(printf, 2, 3)]]
#endif
  static status error(errc code, char const* format, ...) noexcept {
    status s;
    s.code_ = code;
    std::va_list args;
    va_start(args, format);
    s.vformat(format, args);
    va_end(args);
    return s;
  }

  /// An error that carries the failing library's own code (cudaError_t, ncclResult_t, MPI).
#if defined(__GNUC__)
  [[gnu::format(printf, 3, 4)]]
#endif
  static status native_error(errc code, int native, char const* format, ...) noexcept {
    status s;
    s.code_ = code;
    s.native_ = native;
    std::va_list args;
    va_start(args, format);
    s.vformat(format, args);
    va_end(args);
    return s;
  }

  [[nodiscard]] constexpr bool ok() const noexcept { return code_ == errc::ok; }
  constexpr explicit operator bool() const noexcept { return ok(); }
  [[nodiscard]] constexpr errc code() const noexcept { return code_; }
  /// The failing library's own error code, or 0.
  [[nodiscard]] constexpr int native_code() const noexcept { return native_; }
  /// What went wrong, naming the argument and the expected value; "" when ok.
  [[nodiscard]] constexpr char const* message() const noexcept { return message_; }

 private:
  void vformat(char const* format, std::va_list args) noexcept {
    int const n = std::vsnprintf(message_, message_capacity, format, args);
    if (n < 0) message_[0] = '\0';  // an encoding error: keep the code, drop the text
  }

  errc code_ = errc::ok;
  int native_ = 0;
  char message_[message_capacity] = {};
};

}  // namespace moe

/// Returns the status of `expr` from the enclosing function when it is an error.
#define MOE_TRY(expr)                               \
  do {                                              \
    ::moe::status moe_try_status_ = (expr);         \
    if (!moe_try_status_.ok()) return moe_try_status_; \
  } while (false)
