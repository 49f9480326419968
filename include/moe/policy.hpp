// SPDX-License-Identifier: Apache-2.0
// Execution policies: the first argument of every op says where it runs. `moe::host` runs on
// the CPU backend; `moe::cuda_on(stream, workspace, bytes)` enqueues on a CUDA stream using a
// caller-owned device workspace. Both are plain values and both are visible to g++ without CUDA:
// the stream is held as `CUstream_st*`, which is exactly what `cudaStream_t` names, so no CUDA
// header is needed to declare or pass one.
#pragma once

#include <concepts>  // std::same_as
#include <cstddef>   // std::size_t

struct CUstream_st;  // the CUDA runtime's opaque stream; cudaStream_t is CUstream_st*

namespace moe {

/// A CUDA stream handle, the same type as `cudaStream_t`.
using stream_t = CUstream_st*;

/// Runs an op on the CPU backend. `threads` caps the OpenMP threads (0 = OpenMP's default).
/// `workspace` (optional, host memory of `workspace_bytes` bytes, any alignment): scratch for
/// the ops that need some (route, route_backward: route_workspace_bytes); with none given they
/// allocate it themselves inside the call. moe::layer hands its ops a region of its own
/// workspace, so that a layer step allocates nothing.
struct host_policy {
  int threads = 0;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  [[nodiscard]] constexpr host_policy with_threads(int n) const noexcept {
    return {n, workspace, workspace_bytes};
  }
  [[nodiscard]] constexpr host_policy with_workspace(void* ws, std::size_t bytes) const noexcept {
    return {threads, ws, bytes};
  }
};

/// Runs an op on the CUDA backend, enqueued on `stream`, using `workspace` (device memory of
/// `workspace_bytes` bytes, at least the op's workspace_bytes(); nothing is allocated inside).
struct cuda_policy {
  stream_t stream = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
};

/// The CPU backend, with OpenMP's default thread count.
inline constexpr host_policy host{};

/// The CUDA backend on `stream` with a caller-owned device workspace.
constexpr cuda_policy cuda_on(stream_t stream, void* workspace = nullptr,
                              std::size_t bytes = 0) noexcept {
  return cuda_policy{stream, workspace, bytes};
}

/// The policies every op accepts.
template <class P>
concept execution_policy = std::same_as<P, host_policy> || std::same_as<P, cuda_policy>;

}  // namespace moe
