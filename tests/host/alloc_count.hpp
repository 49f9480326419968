// SPDX-License-Identifier: Apache-2.0
// Counts heap allocations of the process while a scope is open, for the "a layer step
// allocates nothing" tests. alloc_count.cpp replaces the global operator new/delete (every
// form) and, on Linux, wraps the malloc family of the code linked into the test executable
// (-Wl,--wrap=malloc,...: the header-only library's own calls to malloc, aligned_alloc, ...),
// so both C++ and C allocations made by the library are seen. Allocations made inside shared
// libraries' own code (libgomp's thread pool, glibc) are not: they are not ours to remove.
#pragma once

#include <cstdint>  // std::int64_t

namespace moe::test {

/// Allocations counted so far (only while a count_allocations scope is open).
std::int64_t allocations() noexcept;
/// Whether the malloc family is counted too (false: operator new only).
bool counts_malloc() noexcept;

/// Counts allocations from its construction to its destruction (one scope at a time).
class count_allocations {
 public:
  count_allocations() noexcept;
  ~count_allocations();
  count_allocations(count_allocations const&) = delete;
  count_allocations& operator=(count_allocations const&) = delete;
  /// Allocations since construction.
  [[nodiscard]] std::int64_t count() const noexcept { return allocations() - start_; }

 private:
  std::int64_t start_;
};

}  // namespace moe::test
