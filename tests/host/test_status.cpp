// SPDX-License-Identifier: Apache-2.0
// moe::status: ok by default, errors keep code, native code and a bounded message; MOE_TRY
// propagates the first error.
#include <doctest/doctest.h>

#include <cstring>
#include <string>

#include "moe/status.hpp"

namespace {
moe::status fails_with(int v) {
  return moe::status::error(moe::errc::invalid_argument, "x: expected 0, got %d", v);
}
moe::status chain(int v, int* reached) {
  MOE_TRY(v == 0 ? moe::status{} : fails_with(v));
  *reached = 1;
  return {};
}
}  // namespace

TEST_CASE("status: default is ok, errors carry code, native code and message") {
  moe::status const ok{};
  CHECK(ok.ok());
  CHECK(static_cast<bool>(ok));
  CHECK(ok.code() == moe::errc::ok);
  CHECK(std::string(ok.message()).empty());

  moe::status const e = fails_with(3);
  CHECK_FALSE(e.ok());
  CHECK(e.code() == moe::errc::invalid_argument);
  CHECK(e.native_code() == 0);
  CHECK(std::string(e.message()) == "x: expected 0, got 3");

  moe::status const n = moe::status::native_error(moe::errc::cuda_error, 35, "cudaMalloc: %s",
                                                  "insufficient driver");
  CHECK(n.code() == moe::errc::cuda_error);
  CHECK(n.native_code() == 35);
  CHECK(std::string(moe::to_string(n.code())) == "cuda_error");
}

TEST_CASE("status: long messages are truncated and stay NUL-terminated") {
  std::string const big(4 * moe::status::message_capacity, 'a');
  moe::status const e = moe::status::error(moe::errc::internal, "%s", big.c_str());
  CHECK(std::strlen(e.message()) == moe::status::message_capacity - 1);
}

TEST_CASE("status: MOE_TRY returns the first error and continues on ok") {
  int reached = 0;
  CHECK(chain(0, &reached).ok());
  CHECK(reached == 1);
  reached = 0;
  moe::status const e = chain(7, &reached);
  CHECK(reached == 0);
  CHECK(std::string(e.message()) == "x: expected 0, got 7");
}

TEST_CASE("status: every error code has a distinct name") {
  using moe::errc;
  errc const all[] = {errc::ok,         errc::invalid_argument, errc::unsupported_config,
                      errc::workspace_too_small, errc::out_of_memory, errc::cuda_error,
                      errc::nccl_error, errc::mpi_error,        errc::no_device,
                      errc::internal};
  for (errc a : all)
    for (errc b : all)
      if (a != b) CHECK(std::string(moe::to_string(a)) != moe::to_string(b));
}
