// SPDX-License-Identifier: Apache-2.0
// The CUDA backend's contact with the CUDA runtime: turning cudaError_t into moe::status,
// checking launches (and, with MOE_DEBUG_SYNC defined, synchronising after each one so that an
// asynchronous fault is reported by the launch that caused it), and asking whether a usable GPU
// exists at all — on a machine without a driver cudaGetDeviceCount fails with
// cudaErrorInsufficientDriver rather than reporting zero devices, so any error means "none";
// and the one check of a caller's workspace that every op with scratch makes.
#pragma once

#include <cuda_runtime.h>  // cudaError_t, cudaGetLastError, cudaStreamSynchronize

#include <cstddef>  // std::size_t
#include <cstdint>  // std::uintptr_t

#include "moe/policy.hpp"  // moe::cuda_policy
#include "moe/status.hpp"  // moe::status

namespace moe::backend::cuda {

/// A status for a CUDA runtime error; `what` names the call or kernel.
inline status from_cuda(cudaError_t e, char const* what) noexcept {
  if (e == cudaSuccess) return {};
  return status::native_error(errc::cuda_error, static_cast<int>(e), "%s: %s (%s)", what,
                              cudaGetErrorString(e), cudaGetErrorName(e));
}

/// Checks the launch just made on `stream`; under MOE_DEBUG_SYNC also waits for it to finish.
inline status check_launch(cudaStream_t stream, char const* kernel) noexcept {
  MOE_TRY(from_cuda(cudaGetLastError(), kernel));
#if defined(MOE_DEBUG_SYNC)
  MOE_TRY(from_cuda(cudaStreamSynchronize(stream), kernel));
#else
  (void)stream;
#endif
  return {};
}

/// The number of usable CUDA devices: 0 when the runtime reports any error (no driver, no GPU).
inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}

/// The caller's workspace (policy.workspace, policy.workspace_bytes) for op `op`, which needs
/// `bytes` (0: none, nothing checked) aligned to `align` bytes; `sizer` names the function that
/// returns the size. workspace_too_small when it is null or short, invalid_argument when it
/// is misaligned.
inline status check_workspace(cuda_policy const& policy, std::size_t bytes, std::size_t align,
                              char const* op, char const* sizer) noexcept {
  if (bytes == 0) return {};
  if (policy.workspace == nullptr || policy.workspace_bytes < bytes)
    return status::error(errc::workspace_too_small,
                         "cuda_policy.workspace_bytes: %s needs %zu bytes (%s), got %zu", op,
                         bytes, sizer, policy.workspace_bytes);
  if (reinterpret_cast<std::uintptr_t>(policy.workspace) % align != 0)
    return status::error(errc::invalid_argument,
                         "cuda_policy.workspace: expected %zu-byte alignment (cudaMalloc's)",
                         align);
  return {};
}

/// Blocks for a 1-D grid-stride launch: enough to fill the GPU, never more than the work needs.
inline unsigned grid_for(long long work_items, unsigned block) noexcept {
  long long const needed = (work_items + block - 1) / block;
  long long const cap = 65535LL * 8;  // far beyond what saturates any current GPU
  long long const blocks = needed < 1 ? 1 : (needed > cap ? cap : needed);
  return static_cast<unsigned>(blocks);
}

}  // namespace moe::backend::cuda

/// Returns a status from the enclosing function when a CUDA runtime call fails.
#define MOE_CUDA_TRY(call) MOE_TRY(::moe::backend::cuda::from_cuda((call), #call))
