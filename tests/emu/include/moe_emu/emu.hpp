// SPDX-License-Identifier: Apache-2.0
// moe_emu: runs moe's CUDA kernels on the CPU, so that the CUDA backend's code (kernels and the
// host code that launches them) can be executed and compared with the host backend on a
// machine without a GPU. A test tool, not a product: see docs/emulation.md.
//
// Model. A launch runs its blocks one after another. The threads of a block are fibers
// (cooperative, one OS thread, switched by moe_emu_switch in emu.cpp), run round-robin in an
// order that rotates and alternates direction from block to block (see run_block); a
// thread runs until it reaches a barrier or a warp-collective operation (shuffle, ballot,
// ldmatrix, mma), so every collective sees all its lanes' inputs at once and produces each
// lane's result exactly as the PTX ISA defines it. Block shared memory is one copy per variable
// (blocks run one at a time): static_shared storage for each `__shared__` declaration, and a
// buffer for `extern __shared__`, both refilled with 0xff bytes in each block (so reads of
// shared memory nobody wrote show up as NaNs or -1). cp.async copies are deferred to the
// cp.async.wait_group that must complete them (the latest moment the ISA allows).
// Device memory is host memory; every stream operation runs when it is issued.
//
// Checks beyond the GPU's: a block whose threads wait forever (a barrier not every thread
// reaches, a collective missing a lane) is reported as a deadlock; a collective whose lanes
// disagree on the operation or the mask, a shuffle from an exited or non-participating lane,
// more than 1024 threads or 227 KiB of shared memory per block, and CUB temporary storage
// smaller than the size CUB reported for the same call are reported as errors. A report
// prints what happened and aborts the test program.
//
// Not modelled: memory ordering between threads (they never run concurrently), the device's
// floating-point intrinsics (the kernels' host branches run instead: MOE_DEVICE_PASS is 0),
// timing, and concurrency between streams.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <tuple>
#include <type_traits>
#include <vector>

#define MOE_CUDA_EMULATION 1

// Under AddressSanitizer (the asan preset) the fiber switches are announced to it, fiber stacks
// and dynamic shared memory are poisoned where nothing may touch them, and cudaMalloc gives
// exactly the bytes asked for: an access past a device buffer, a fiber's stack or the launch's
// dynamic shared memory is reported as on a GPU by compute-sanitizer's memcheck.
#if defined(__has_feature)
#if __has_feature(address_sanitizer) && !defined(__SANITIZE_ADDRESS__)
#define __SANITIZE_ADDRESS__ 1  // clang's spelling
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define MOE_EMU_ASAN 1
#else
#define MOE_EMU_ASAN 0
#define ASAN_POISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#endif

// ---- CUDA's keywords ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

// The running thread's coordinates, rewritten at every fiber switch.
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

extern "C" void moe_emu_switch(void** save_sp, void* to_sp);

namespace moe_emu {

[[noreturn]] inline void fail(char const* what) {
  std::fprintf(stderr, "moe_emu: %s (block %u,%u,%u thread %u,%u,%u)\n", what, blockIdx.x,
               blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  std::fflush(stderr);
  std::abort();
}

// ---- fibers
// ----------------------------------------------------------------------------------------

struct warp_state;

struct fiber {
  void* sp = nullptr;
  std::unique_ptr<char[]> stack;
  void* fake_stack = nullptr;  ///< AddressSanitizer's, while the fiber is switched out
  uint3 idx{};
  int linear = 0;
  bool done = false;
};

/// One collective in progress in a warp: the lanes' inputs and outputs, 48 bytes each.
struct warp_state {
  using slot = std::array<unsigned char, 48>;
  int kind = -1;  ///< the operation in progress (-1: none)
  unsigned mask = 0;
  int arrived = 0;
  unsigned long long generation = 0;
  std::array<slot, 32> in{}, out{};
  unsigned exited = 0;  ///< lanes that have returned, one bit each
  int size = 32;        ///< lanes in this warp (the last warp of a block may be partial)
};

struct pending_copy {
  void* dst;
  void const* src;  ///< null: zero-fill
  int bytes;
  int group;  ///< commit group of the issuing thread (-1: not yet committed)
};

struct block_state {
  std::vector<fiber> fibers;
  std::vector<warp_state> warps;
  std::vector<std::vector<pending_copy>> copies;  ///< per thread
  std::vector<int> committed;                     ///< per thread: groups committed so far
  int live = 0;
  int bar_arrived = 0;
  unsigned long long bar_generation = 0;
  unsigned long long progress = 0;
};

// AddressSanitizer's redzones make frames larger.
constexpr std::size_t stack_bytes = (MOE_EMU_ASAN ? 1024 : 256) * 1024;
constexpr std::size_t max_dynamic_smem = 227 * 1024;

inline void* scheduler_sp = nullptr;
inline void const* scheduler_stack = nullptr;  ///< the scheduler's stack, for AddressSanitizer
inline std::size_t scheduler_stack_size = 0;
inline void* scheduler_fake_stack = nullptr;
inline fiber* current = nullptr;
inline block_state* block = nullptr;
inline std::function<void()> const* body = nullptr;
alignas(128) inline unsigned char dynamic_smem_buffer[max_dynamic_smem];
inline std::size_t dynamic_smem_size = 0;

inline void* dynamic_smem() {
  return dynamic_smem_buffer;
}

/// Blocks run so far; a static `__shared__` variable is refilled at its first use in each.
inline unsigned long long block_serial = 0;

/// A static `__shared__` variable (transform.py turns each declaration into a call, `Tag` a
/// lambda whose type is unique to the declaration and to the kernel's instantiation; `Align`
/// the declaration's __align__, else 16): one copy, filled with 0xff bytes when a block first
/// reaches the declaration, so that a read before any write of the block sees garbage, not what
/// the previous block left. On the heap rather than a local static, which g++ leaves without
/// AddressSanitizer redzones when it is COMDAT (as in every header kernel): an access past the
/// array is reported.
template <class T, std::size_t Align, class Tag>
T& static_shared(Tag) {
  using U = std::remove_cv_t<T>;
  static_assert(std::is_trivially_copyable_v<U>, "__shared__ variables have no constructors");
  constexpr std::size_t align = std::max(Align, alignof(U));
  static U* const storage =
      static_cast<U*>(::operator new(sizeof(U), std::align_val_t{align}));  // never freed
  static unsigned long long filled = ~0ULL;
  if (filled != block_serial) {
    std::memset(static_cast<void*>(storage), 0xff, sizeof(U));
    filled = block_serial;
  }
  return *storage;
}

inline int linear_thread() {
  return static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

/// From the scheduler into fiber `f`; returns when `f` yields or exits.
inline void enter(fiber& f) {
#if MOE_EMU_ASAN
  __sanitizer_start_switch_fiber(&scheduler_fake_stack, f.stack.get(), stack_bytes);
#endif
  moe_emu_switch(&scheduler_sp, f.sp);
#if MOE_EMU_ASAN
  __sanitizer_finish_switch_fiber(scheduler_fake_stack, nullptr, nullptr);
#endif
}

/// From the running fiber to the scheduler; returns when the scheduler resumes it (never if
/// `exiting`).
inline void leave(bool exiting) {
  fiber& f = *current;
#if MOE_EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, scheduler_stack,
                                 scheduler_stack_size);
#endif
  moe_emu_switch(&f.sp, scheduler_sp);
#if MOE_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &scheduler_stack, &scheduler_stack_size);
#endif
  (void)exiting;
}

/// Back to the scheduler; returns when the scheduler resumes this fiber.
inline void yield() {
  leave(false);
}

inline void barrier_complete_if_ready() {
  block_state& b = *block;
  if (b.bar_arrived > 0 && b.bar_arrived >= b.live) {
    b.bar_arrived = 0;
    ++b.bar_generation;
    ++b.progress;
  }
}

/// __syncthreads: threads that exited count as arrived (as the hardware does).
inline void syncthreads() {
  block_state& b = *block;
  unsigned long long const gen = b.bar_generation;
  ++b.bar_arrived;
  ++b.progress;
  barrier_complete_if_ready();
  while (b.bar_generation == gen) yield();
}

// (No address-taken locals here: the first instruction that touches this stack under
// AddressSanitizer must come after finish_switch_fiber.)
[[noreturn]] inline void fiber_entry() {
#if MOE_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack, &scheduler_stack_size);
#endif
  (*body)();
  block_state& b = *block;
  fiber& f = *current;
  f.done = true;
  --b.live;
  ++b.progress;
  warp_state& w = b.warps[f.linear / 32];
  w.exited |= 1u << (f.linear % 32);
  if (!b.copies[f.linear].empty()) fail("a thread exited with cp.async copies never waited for");
  barrier_complete_if_ready();
  leave(true);
  std::abort();  // never resumed
}

/// A fresh stack whose first switch enters fiber_entry (see moe_emu_switch in emu.cpp: six
/// callee-saved registers, then the return address).
inline void prepare(fiber& f) {
  if (f.stack == nullptr) f.stack = std::make_unique_for_overwrite<char[]>(stack_bytes);
  // A fiber leaves through fiber_entry and leave(true), which never return: under
  // AddressSanitizer their frames' redzones, at the top of the stack, stay poisoned (every
  // frame below them has returned and cleared its own).
  constexpr std::size_t top_frames = 16 * 1024;
  ASAN_UNPOISON_MEMORY_REGION(f.stack.get() + stack_bytes - top_frames, top_frames);
  auto top = reinterpret_cast<std::uintptr_t>(f.stack.get() + stack_bytes) & ~std::uintptr_t{15};
  auto* p = reinterpret_cast<std::uintptr_t*>(top);
  *--p = 0;                                               // fiber_entry's return address
  *--p = reinterpret_cast<std::uintptr_t>(&fiber_entry);  // where the switch returns to
  for (int i = 0; i < 6; ++i) *--p = 0;                   // rbp rbx r12 r13 r14 r15
  f.sp = p;
  f.done = false;
}

/// The state every launch reuses (fiber stacks are kept between launches).
inline block_state& launch_state() {
  static block_state s;
  return s;
}

/// A well-mixed 64-bit value of three (SplitMix64's finaliser over their combination).
inline unsigned long long mix(unsigned long long a, unsigned long long b, unsigned long long c) {
  unsigned long long z = a * 0x9e3779b97f4a7c15ULL + b * 0xbf58476d1ce4e5b9ULL + c + 1;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// Runs one block. The order in which a round visits the threads varies with the block (its
/// start rotates, its direction alternates), and every other round skips about half the warps
/// (chosen anew each round), so that a write and a read in different warps with no barrier
/// between them run in either order somewhere in a grid: a missing __syncthreads then gives a
/// wrong result in some block.
inline void run_block(block_state& b, int threads, unsigned long long block_linear) {
  ++block_serial;
  b.live = threads;
  b.bar_arrived = 0;
  for (int i = 0; i < threads; ++i) {
    fiber& f = b.fibers[static_cast<std::size_t>(i)];
    prepare(f);
    f.linear = i;
    f.idx = uint3{static_cast<unsigned>(i) % blockDim.x,
                  (static_cast<unsigned>(i) / blockDim.x) % blockDim.y,
                  static_cast<unsigned>(i) / (blockDim.x * blockDim.y)};
    b.copies[static_cast<std::size_t>(i)].clear();
    b.committed[static_cast<std::size_t>(i)] = 0;
  }
  int const warps = (threads + 31) / 32;
  for (int w = 0; w < warps; ++w) {
    warp_state& ws = b.warps[static_cast<std::size_t>(w)];
    ws.kind = -1;
    ws.arrived = 0;
    ws.mask = 0;
    ws.size = std::min(32, threads - 32 * w);
    ws.exited = 0;
  }
  std::memset(dynamic_smem_buffer, 0xff, dynamic_smem_size);
  int remaining = threads;
  int const start =
      static_cast<int>((block_linear * 97ULL) % static_cast<unsigned long long>(threads));
  bool const reverse = (block_linear & 1ULL) != 0;
  for (unsigned long long round = 0; remaining > 0; ++round) {
    // Every other round leaves about half the warps out, so warps drift apart as on a GPU
    // (otherwise they would advance in lockstep, one collective a round, hiding races between
    // a warp that is ahead and one that is behind). Deadlocks are judged on full rounds.
    bool const full = (round & 1ULL) != 0 || threads <= 32;
    unsigned long long const before = b.progress;
    remaining = 0;
    for (int n = 0; n < threads; ++n) {
      int const i = reverse ? (start + threads - n) % threads : (start + n) % threads;
      fiber& f = b.fibers[static_cast<std::size_t>(i)];
      if (f.done) continue;
      if (!full &&
          (mix(block_linear, round, static_cast<unsigned long long>(i / 32)) & 1ULL) != 0) {
        ++remaining;
        continue;
      }
      current = &f;
      threadIdx = f.idx;
      enter(f);
      if (!f.done) ++remaining;
    }
    if (full && remaining > 0 && b.progress == before) {
      threadIdx = uint3{};
      fail(
          "deadlock: every live thread waits at a barrier or a warp collective that cannot "
          "complete (a __syncthreads not every thread reaches, or a collective missing a lane)");
    }
  }
  current = nullptr;
}

/// Runs `fn` as a grid of `grid` blocks of `threads` threads.
inline int run_grid(dim3 grid, dim3 blk, std::size_t smem, std::function<void()> const& fn) {
  long long const threads = static_cast<long long>(blk.x) * blk.y * blk.z;
  if (threads < 1 || threads > 1024 || blk.z > 64) return 1;
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535) return 1;
  if (smem > max_dynamic_smem) return 1;
  block_state& b = launch_state();
  if (b.fibers.size() < static_cast<std::size_t>(threads)) {
    b.fibers.resize(static_cast<std::size_t>(threads));
    b.copies.resize(static_cast<std::size_t>(threads));
    b.committed.resize(static_cast<std::size_t>(threads));
    b.warps.resize(static_cast<std::size_t>((threads + 31) / 32));
  }
  std::function<void()> const* const saved_body = body;
  block_state* const saved_block = block;
  body = &fn;
  block = &b;
  blockDim = blk;
  gridDim = grid;
  dynamic_smem_size = smem;
  ASAN_UNPOISON_MEMORY_REGION(dynamic_smem_buffer, smem);
  ASAN_POISON_MEMORY_REGION(dynamic_smem_buffer + smem, max_dynamic_smem - smem);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        run_block(b, static_cast<int>(threads),
                  x + static_cast<unsigned long long>(grid.x) *
                          (y + static_cast<unsigned long long>(grid.y) * z));
      }
  body = saved_body;
  block = saved_block;
  return 0;
}

// ---- warp collectives -----------------------------------------------------------------------

/// Runs one warp-collective operation: this lane's input `in`, the function `op` that computes
/// every participating lane's output from all inputs (called once, by the last lane to arrive),
/// and this lane's output.
template <class Out, class In>
Out collective(int kind, unsigned mask, In const& in,
               void (*op)(warp_state&, unsigned participants)) {
  static_assert(sizeof(In) <= 48 && sizeof(Out) <= 48 && std::is_trivially_copyable_v<In>);
  block_state& b = *block;
  int const t = linear_thread();
  warp_state& w = b.warps[static_cast<std::size_t>(t / 32)];
  int const lane = t % 32;
  unsigned const valid = w.size == 32 ? 0xffffffffu : ((1u << w.size) - 1u);
  unsigned const participants = mask & valid;
  if ((participants & (1u << lane)) == 0) fail("a warp collective's mask leaves out the caller");
  if (w.arrived == 0) {
    w.kind = kind;
    w.mask = participants;
  } else if (w.kind != kind || w.mask != participants) {
    fail("lanes of a warp reached different collectives (operation or mask differ)");
  }
  if ((participants & w.exited) != 0) fail("a warp collective's mask names a lane that has exited");
  std::memcpy(w.in[static_cast<std::size_t>(lane)].data(), &in, sizeof(In));
  unsigned long long const gen = w.generation;
  ++b.progress;
  if (++w.arrived == std::popcount(participants)) {
    op(w, participants);
    w.arrived = 0;
    w.kind = -1;
    ++w.generation;
  } else {
    while (w.generation == gen) yield();
  }
  Out out;
  std::memcpy(&out, w.out[static_cast<std::size_t>(lane)].data(), sizeof(Out));
  return out;
}

template <class T>
T slot_as(warp_state::slot const& s) {
  T v;
  std::memcpy(&v, s.data(), sizeof(T));
  return v;
}
template <class T>
void set_slot(warp_state::slot& s, T const& v) {
  std::memcpy(s.data(), &v, sizeof(T));
}

enum collective_kind { k_sync, k_shfl, k_ballot, k_any, k_all, k_ldmatrix, k_ldmatrix_t, k_mma };

/// A shuffle's input: the value (up to 8 bytes), the mode and its operand, the width.
struct shfl_in {
  unsigned long long value;
  int mode;  ///< 0 idx, 1 up, 2 down, 3 xor
  int operand;
  int width;
};

inline void shfl_op(warp_state& w, unsigned participants) {
  for (int l = 0; l < 32; ++l) {
    if ((participants >> l & 1u) == 0) continue;
    auto const in = slot_as<shfl_in>(w.in[static_cast<std::size_t>(l)]);
    int const width = in.width;
    int const base = l & ~(width - 1);
    int src = l;
    int const b = in.operand & 31;  // shfl uses bits 4:0 of its lane/offset operand
    switch (in.mode) {
      case 0:
        src = base + (in.operand & (width - 1));
        break;
      case 1:
        src = (l - b >= base) ? l - b : l;
        break;
      case 2:
        src = (l + b < base + width) ? l + b : l;
        break;
      default:
        src = ((l ^ b) < base + width) ? (l ^ b) : l;
        break;
    }
    if ((participants >> src & 1u) == 0) {
      threadIdx = uint3{static_cast<unsigned>(l), 0, 0};
      fail("a shuffle reads a lane outside the mask (undefined on the GPU)");
    }
    set_slot(w.out[static_cast<std::size_t>(l)],
             slot_as<shfl_in>(w.in[static_cast<std::size_t>(src)]).value);
  }
}

template <class T>
T shfl(unsigned mask, T v, int mode, int operand, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) fail("shuffle width not a power of 2");
  shfl_in in{};
  std::memcpy(&in.value, &v, sizeof(T));
  in.mode = mode;
  in.operand = operand;
  in.width = width;
  auto const out = collective<unsigned long long>(k_shfl, mask, in, &shfl_op);
  T r;
  std::memcpy(&r, &out, sizeof(T));
  return r;
}

inline void vote_op(warp_state& w, unsigned participants) {
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if ((participants >> l & 1u) != 0 && slot_as<int>(w.in[static_cast<std::size_t>(l)]) != 0)
      bits |= 1u << l;
  for (int l = 0; l < 32; ++l) set_slot(w.out[static_cast<std::size_t>(l)], bits);
}

inline void all_op(warp_state& w, unsigned participants) {
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if ((participants >> l & 1u) != 0 && slot_as<int>(w.in[static_cast<std::size_t>(l)]) != 0)
      bits |= 1u << l;
  for (int l = 0; l < 32; ++l)
    set_slot(w.out[static_cast<std::size_t>(l)], bits == participants ? 1u : 0u);
}

inline void sync_op(warp_state&, unsigned) {}

// ---- tensor-core and async-copy operations (sm_80) ------------------------------------------

struct ldmatrix_in {
  unsigned char const* row;  ///< the 16 bytes this lane addresses
};
struct regs4 {
  std::uint32_t r[4];
};

template <bool Trans>
void ldmatrix_op(warp_state& w, unsigned participants) {
  if (participants != 0xffffffffu) fail("ldmatrix needs the whole warp");
  for (int l = 0; l < 32; ++l) {
    regs4 out{};
    for (int j = 0; j < 4; ++j) {
      std::uint16_t lo, hi;
      if (!Trans) {  // row l / 4 of matrix j, elements 2(l % 4), 2(l % 4) + 1
        auto const* row = slot_as<ldmatrix_in>(w.in[static_cast<std::size_t>(8 * j + l / 4)]).row;
        std::memcpy(&lo, row + 4 * (l % 4), 2);
        std::memcpy(&hi, row + 4 * (l % 4) + 2, 2);
      } else {  // rows 2(l % 4) and 2(l % 4) + 1 of matrix j, element l / 4
        auto const* r0 =
            slot_as<ldmatrix_in>(w.in[static_cast<std::size_t>(8 * j + 2 * (l % 4))]).row;
        auto const* r1 =
            slot_as<ldmatrix_in>(w.in[static_cast<std::size_t>(8 * j + 2 * (l % 4) + 1)]).row;
        std::memcpy(&lo, r0 + 2 * (l / 4), 2);
        std::memcpy(&hi, r1 + 2 * (l / 4), 2);
      }
      out.r[j] = static_cast<std::uint32_t>(lo) | (static_cast<std::uint32_t>(hi) << 16);
    }
    set_slot(w.out[static_cast<std::size_t>(l)], out);
  }
}

template <bool Trans>
void ldmatrix_x4(std::uint32_t (&r)[4], void const* smem) {
  auto const a = reinterpret_cast<std::uintptr_t>(smem);
  auto const lo = reinterpret_cast<std::uintptr_t>(dynamic_smem_buffer);
  if ((a & 15) != 0) fail("ldmatrix row address not 16-byte aligned");
  // moe's ldmatrix reads only the launch's dynamic shared memory
  if (a < lo || a + 16 > lo + dynamic_smem_size)
    fail("ldmatrix reads outside dynamic shared memory");
  auto const out =
      collective<regs4>(Trans ? k_ldmatrix_t : k_ldmatrix, 0xffffffffu,
                        ldmatrix_in{static_cast<unsigned char const*>(smem)}, &ldmatrix_op<Trans>);
  for (int j = 0; j < 4; ++j) r[j] = out.r[j];
}

/// mma.sync.m16n8k16.row.col.f32.{bf16,f16}: the lanes' fragments (PTX ISA, "Matrix Fragments
/// for mma.m16n8k16"), g = lane / 4, t = lane % 4: A reg 0 (g, 2t..2t+1), 1 (g+8, 2t..),
/// 2 (g, 2t+8..), 3 (g+8, 2t+8..); B reg 0 (k 2t..2t+1, n g), 1 (k 2t+8.., n g); C/D c0, c1
/// (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1). Products are exact in float and summed in k order.
struct mma_in {
  std::uint32_t a[4];
  std::uint32_t b[2];
  float c[4];
};
struct float4_out {
  float d[4];
};

template <bool Bf16>
void mma_op(warp_state& w, unsigned participants) {
  if (participants != 0xffffffffu) fail("mma.sync needs the whole warp");
  float A[16][16], B[16][8], C[16][8];
  auto const h = [](std::uint32_t reg, int half) -> float {
    auto const bits = static_cast<std::uint16_t>(half == 0 ? reg & 0xffffu : reg >> 16);
    if constexpr (Bf16) {
      return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
    } else {  // IEEE binary16
      std::uint32_t const sign = (bits >> 15) & 1u, exp = (bits >> 10) & 31u, man = bits & 1023u;
      float v;
      if (exp == 0)
        v = std::ldexp(static_cast<float>(man), -24);
      else if (exp == 31)
        v = man != 0 ? NAN : INFINITY;
      else
        v = std::ldexp(static_cast<float>(man | 1024u), static_cast<int>(exp) - 25);
      return sign != 0 ? -v : v;
    }
  };
  for (int l = 0; l < 32; ++l) {
    auto const in = slot_as<mma_in>(w.in[static_cast<std::size_t>(l)]);
    int const g = l / 4, t = l % 4;
    for (int i = 0; i < 2; ++i) {
      A[g][2 * t + i] = h(in.a[0], i);
      A[g + 8][2 * t + i] = h(in.a[1], i);
      A[g][2 * t + 8 + i] = h(in.a[2], i);
      A[g + 8][2 * t + 8 + i] = h(in.a[3], i);
      B[2 * t + i][g] = h(in.b[0], i);
      B[2 * t + 8 + i][g] = h(in.b[1], i);
      C[g][2 * t + i] = in.c[i];
      C[g + 8][2 * t + i] = in.c[2 + i];
    }
  }
  float D[16][8];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      float s = C[m][n];
      for (int k = 0; k < 16; ++k) s += A[m][k] * B[k][n];
      D[m][n] = s;
    }
  for (int l = 0; l < 32; ++l) {
    int const g = l / 4, t = l % 4;
    float4_out out{{D[g][2 * t], D[g][2 * t + 1], D[g + 8][2 * t], D[g + 8][2 * t + 1]}};
    set_slot(w.out[static_cast<std::size_t>(l)], out);
  }
}

template <bool Bf16>
void mma_16816(float (&d)[4], std::uint32_t const (&a)[4], std::uint32_t const (&b)[2]) {
  mma_in in{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, {d[0], d[1], d[2], d[3]}};
  auto const out = collective<float4_out>(k_mma, 0xffffffffu, in, &mma_op<Bf16>);
  for (int i = 0; i < 4; ++i) d[i] = out.d[i];
}

/// cp.async.cg 16 bytes (valid false: zero-fill); copied at the wait that completes it.
inline void cp_async16(void* smem, void const* gmem, bool valid) {
  auto const s = reinterpret_cast<std::uintptr_t>(smem);
  // The ISA's alignment rule covers the source address even when src-size is 0 (zero fill).
  if ((s & 15) != 0 || (reinterpret_cast<std::uintptr_t>(gmem) & 15) != 0)
    fail("cp.async of 16 bytes from or to an address not 16-byte aligned");
  auto const lo = reinterpret_cast<std::uintptr_t>(dynamic_smem_buffer);
  if (s < lo || s + 16 > lo + dynamic_smem_size)
    fail("cp.async writes outside dynamic shared memory");
  int const t = linear_thread();
  block->copies[static_cast<std::size_t>(t)].push_back(
      pending_copy{smem, valid ? gmem : nullptr, 16, -1});
}
inline void cp_async_commit() {
  int const t = linear_thread();
  int const g = block->committed[static_cast<std::size_t>(t)]++;
  for (pending_copy& c : block->copies[static_cast<std::size_t>(t)])
    if (c.group < 0) c.group = g;
}
/// Completes every committed group but the newest `n`.
inline void cp_async_wait(int n) {
  int const t = linear_thread();
  auto& list = block->copies[static_cast<std::size_t>(t)];
  int const limit = block->committed[static_cast<std::size_t>(t)] - n;
  std::erase_if(list, [&](pending_copy const& c) {
    if (c.group < 0 || c.group >= limit) return false;
    if (c.src != nullptr)
      std::memcpy(c.dst, c.src, static_cast<std::size_t>(c.bytes));
    else
      std::memset(c.dst, 0, static_cast<std::size_t>(c.bytes));
    return true;
  });
}

// ---- launches ----------------------------------------------------------------------------

inline int last_error = 0;

// ---- stream capture (CUDA graphs) -----------------------------------------------------------
// While a stream is captured, stream work (launches, async copies and sets, CUB calls) is
// recorded instead of run, and cudaGraphLaunch runs the recording in order. What CUDA refuses
// inside a capture — a synchronisation, a synchronous copy or set, an allocation or a free —
// invalidates it, so cudaStreamEndCapture reports the error a real device would: the check that
// a layer step really needs no host round trip.

inline std::vector<std::function<void()>>* capture_ops = nullptr;
inline bool capture_invalid = false;

/// Runs `f` now, or records it while a stream is captured.
inline void enqueue(std::function<void()> f) {
  if (capture_ops != nullptr)
    capture_ops->push_back(std::move(f));
  else
    f();
}

/// True (and the capture invalidated) when a stream is being captured: the caller must fail.
inline bool capture_forbids() {
  if (capture_ops == nullptr) return false;
  capture_invalid = true;
  return true;
}

/// A launch: `fn`, a callable that calls the kernel with the arguments it is given. Under
/// capture the arguments are copied, as a graph's kernel node copies them.
template <class F>
struct launcher {
  F fn;
  dim3 grid, blk;
  std::size_t smem;
  template <class... Args>
  void operator()(Args&&... args) const {
    if (capture_ops != nullptr) {
      capture_ops->push_back([fn = fn, grid = grid, blk = blk, smem = smem,
                              saved = std::make_tuple(std::decay_t<Args>(args)...)] {
        std::function<void()> const call = [&] { std::apply(fn, saved); };
        if (run_grid(grid, blk, smem, call) != 0) last_error = 1;
      });
      return;
    }
    std::function<void()> const call = [&] { fn(args...); };
    if (run_grid(grid, blk, smem, call) != 0) last_error = 1;
  }
};

template <class V>
dim3 to_dim3(V v) {
  if constexpr (std::is_same_v<V, dim3>)
    return v;
  else
    return dim3(static_cast<unsigned>(v));
}

template <class F, class G, class B, class S = std::size_t, class St = void*>
launcher<F> launch(F fn, G grid, B blk, S smem = 0, St = nullptr) {
  return launcher<F>{fn, to_dim3(grid), to_dim3(blk), static_cast<std::size_t>(smem)};
}

}  // namespace moe_emu

// ---- CUDA's device functions --------------------------------------------------------------------

inline void __syncthreads() {
  moe_emu::syncthreads();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)moe_emu::collective<int>(moe_emu::k_sync, mask, 0, &moe_emu::sync_op);
}
inline void __threadfence() {}
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return moe_emu::shfl(mask, v, 0, src, width);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
  return moe_emu::shfl(mask, v, 1, static_cast<int>(d), width);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
  return moe_emu::shfl(mask, v, 2, static_cast<int>(d), width);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return moe_emu::shfl(mask, v, 3, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int p) {
  return moe_emu::collective<unsigned>(moe_emu::k_ballot, mask, p, &moe_emu::vote_op) & mask;
}
inline int __any_sync(unsigned mask, int p) {
  return (moe_emu::collective<unsigned>(moe_emu::k_any, mask, p, &moe_emu::vote_op) & mask) != 0;
}
inline int __all_sync(unsigned mask, int p) {
  return moe_emu::collective<unsigned>(moe_emu::k_all, mask, p, &moe_emu::all_op);
}

template <class T>
T __ldg(T const* p) {
  return *p;
}
template <class T>
T atomicAdd(T* p, T v) {
  T const old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  T const old = *p;
  if (v < old) *p = v;
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  T const old = *p;
  if (v > old) *p = v;
  return old;
}
template <class T>
T atomicCAS(T* p, T compare, T v) {
  T const old = *p;
  if (old == compare) *p = v;
  return old;
}
template <class T>
T atomicExch(T* p, T v) {
  T const old = *p;
  *p = v;
  return old;
}
inline unsigned __float_as_uint(float v) {
  return std::bit_cast<unsigned>(v);
}
inline float __uint_as_float(unsigned v) {
  return std::bit_cast<float>(v);
}
inline int __float_as_int(float v) {
  return std::bit_cast<int>(v);
}
inline float __int_as_float(int v) {
  return std::bit_cast<float>(v);
}
inline double __longlong_as_double(long long v) {
  return std::bit_cast<double>(v);
}
inline long long __double_as_longlong(double v) {
  return std::bit_cast<long long>(v);
}
inline int __ffs(int v) {
  return v == 0 ? 0 : std::countr_zero(static_cast<unsigned>(v)) + 1;
}
inline int __popc(unsigned v) {
  return std::popcount(v);
}
inline int __clz(int v) {
  return std::countl_zero(static_cast<unsigned>(v));
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}

// Correctly rounded arithmetic (the host computes in IEEE binary32/64 without contraction:
// moe_emu builds with -ffp-contract=off).
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __fsub_rn(float a, float b) {
  return a - b;
}
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __fdiv_rn(float a, float b) {
  return a / b;
}
inline float __fsqrt_rn(float a) {
  return std::sqrt(a);
}
inline float __fmaf_rn(float a, float b, float c) {
  return std::fma(a, b, c);
}
inline double __dadd_rn(double a, double b) {
  return a + b;
}
inline double __dmul_rn(double a, double b) {
  return a * b;
}
inline double __fma_rn(double a, double b, double c) {
  return std::fma(a, b, c);
}
