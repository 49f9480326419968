// SPDX-License-Identifier: Apache-2.0
// The single-process communicator: one rank holds every expert (R = 1), so every exchange is a
// copy and every reduction returns its input. It is the default `Comm` of moe::layer; the MPI
// communicator (moe/comm/mpi.hpp) has the same members, for expert parallelism over ranks.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t
#include <cstring>  // std::memmove

#include "moe/status.hpp"  // moe::status

namespace moe::comm {

/// R = 1: rank 0 of a group of one (host buffers).
struct local {
  [[nodiscard]] constexpr std::int32_t rank() const noexcept { return 0; }
  [[nodiscard]] constexpr std::int32_t size() const noexcept { return 1; }

  [[nodiscard]] status all_gather(std::int64_t const* send, std::int64_t n,
                                  std::int64_t* recv) const noexcept {
    copy(recv, send, static_cast<std::size_t>(n) * sizeof(std::int64_t));
    return {};
  }
  [[nodiscard]] status all_gather_v(void const* send, std::int64_t rows, void* recv,
                                    std::int64_t const*, std::size_t row_bytes) const noexcept {
    copy(recv, send, static_cast<std::size_t>(rows) * row_bytes);
    return {};
  }
  [[nodiscard]] status all_to_all_v(void const* send, std::int64_t const* send_rows, void* recv,
                                    std::int64_t const*, std::size_t row_bytes) const noexcept {
    copy(recv, send, static_cast<std::size_t>(send_rows[0]) * row_bytes);
    return {};
  }
  template <class T>
  [[nodiscard]] status all_reduce_sum(T*, std::int64_t) const noexcept {
    return {};
  }
  [[nodiscard]] status all_reduce_max(std::int64_t*, std::int64_t) const noexcept { return {}; }

 private:
  static void copy(void* to, void const* from, std::size_t bytes) noexcept {
    if (bytes > 0 && to != from) std::memmove(to, from, bytes);
  }
};

}  // namespace moe::comm
