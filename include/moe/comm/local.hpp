// SPDX-License-Identifier: Apache-2.0
// The single-process communicator: one rank holds every expert (R = 1), so every exchange is
// the identity and every reduction returns its input. It is the default `Comm` of moe::layer;
// the MPI and NCCL communicators satisfy the same interface for expert parallelism.
#pragma once

#include <cstdint>  // std::int32_t

namespace moe::comm {

/// R = 1: rank 0 of a group of one.
struct local {
  [[nodiscard]] constexpr std::int32_t rank() const noexcept { return 0; }
  [[nodiscard]] constexpr std::int32_t size() const noexcept { return 1; }
};

}  // namespace moe::comm
