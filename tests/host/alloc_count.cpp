// SPDX-License-Identifier: Apache-2.0
// The allocation counter of alloc_count.hpp: replacements of every global operator new and
// delete, and (with MOE_TEST_WRAP_MALLOC, set by CMake on Linux together with
// -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc,--wrap=posix_memalign)
// wrappers of the malloc family. Each counts one allocation while counting is on, then
// allocates with the real function; operator new goes straight to the real malloc so that it
// is counted once. Works under AddressSanitizer (its malloc is what the real functions reach).
#include "alloc_count.hpp"

#include <atomic>   // std::atomic
#include <cstddef>  // std::size_t
#include <cstdlib>  // std::malloc, std::free
#include <new>      // std::bad_alloc, std::align_val_t, std::nothrow_t

namespace {
std::atomic<bool> counting{false};
std::atomic<std::int64_t> counted{0};
void note() noexcept {
  if (counting.load(std::memory_order_relaxed)) counted.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

#ifdef MOE_TEST_WRAP_MALLOC
extern "C" {
void* __real_malloc(std::size_t n);
void* __real_calloc(std::size_t n, std::size_t size);
void* __real_realloc(void* p, std::size_t n);
void* __real_aligned_alloc(std::size_t align, std::size_t n);
int __real_posix_memalign(void** p, std::size_t align, std::size_t n);

void* __wrap_malloc(std::size_t n) {
  note();
  return __real_malloc(n);
}
void* __wrap_calloc(std::size_t n, std::size_t size) {
  note();
  return __real_calloc(n, size);
}
void* __wrap_realloc(void* p, std::size_t n) {
  note();
  return __real_realloc(p, n);
}
void* __wrap_aligned_alloc(std::size_t align, std::size_t n) {
  note();
  return __real_aligned_alloc(align, n);
}
int __wrap_posix_memalign(void** p, std::size_t align, std::size_t n) {
  note();
  return __real_posix_memalign(p, align, n);
}
}
namespace {
void* raw_alloc(std::size_t n) noexcept {
  return __real_malloc(n > 0 ? n : 1);
}
void* raw_aligned(std::size_t n, std::size_t align) noexcept {
  void* p = nullptr;
  return __real_posix_memalign(&p, align < sizeof(void*) ? sizeof(void*) : align, n > 0 ? n : 1) ==
                 0
             ? p
             : nullptr;
}
}  // namespace
#else
namespace {
void* raw_alloc(std::size_t n) noexcept {
  return std::malloc(n > 0 ? n : 1);
}
void* raw_aligned(std::size_t n, std::size_t align) noexcept {
  void* p = nullptr;
  return posix_memalign(&p, align < sizeof(void*) ? sizeof(void*) : align, n > 0 ? n : 1) == 0
             ? p
             : nullptr;
}
}  // namespace
#endif

namespace moe::test {
std::int64_t allocations() noexcept {
  return counted.load();
}
bool counts_malloc() noexcept {
#ifdef MOE_TEST_WRAP_MALLOC
  return true;
#else
  return false;
#endif
}
count_allocations::count_allocations() noexcept : start_(counted.load()) {
  counting = true;
}
count_allocations::~count_allocations() {
  counting = false;
}
}  // namespace moe::test

// ---- the global allocation functions ----------------------------------------------------------
void* operator new(std::size_t n) {
  note();
  if (void* p = raw_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  note();
  if (void* p = raw_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::nothrow_t const&) noexcept {
  note();
  return raw_alloc(n);
}
void* operator new[](std::size_t n, std::nothrow_t const&) noexcept {
  note();
  return raw_alloc(n);
}
void* operator new(std::size_t n, std::align_val_t a) {
  note();
  if (void* p = raw_aligned(n, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) {
  note();
  if (void* p = raw_aligned(n, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a, std::nothrow_t const&) noexcept {
  note();
  return raw_aligned(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a, std::nothrow_t const&) noexcept {
  note();
  return raw_aligned(n, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::nothrow_t const&) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::nothrow_t const&) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t, std::nothrow_t const&) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t, std::nothrow_t const&) noexcept {
  std::free(p);
}
