// SPDX-License-Identifier: Apache-2.0
// CUDA overloads of plan and rank_offsets (see moe/plan.hpp): the same argument checks as the
// host backend, then, all on the policy's stream and without synchronising:
//   1. source_of ← -1 (cudaMemsetAsync), bad_route ← -1;
//   2. counts[E] ← CUB DeviceHistogram::HistogramEven over the kept, in-range routes;
//   3. offsets[E+1] ← CUB DeviceScan::ExclusiveSum over the experts' block sizes;
//   4. plan_scatter_kernel: row_of, source_of, and the slot-contract check.
// counts and CUB's temporary storage live in the caller's workspace (plan_workspace_bytes).
// Route values are seen only on the device, so a broken slot contract cannot come back as a
// status here: it is written to plan_args::bad_route (read it back when convenient).
#pragma once

#include <thrust/iterator/counting_iterator.h>   // thrust::counting_iterator
#include <thrust/iterator/transform_iterator.h>  // thrust::transform_iterator

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t

#include <cub/device/device_histogram.cuh>  // cub::DeviceHistogram
#include <cub/device/device_scan.cuh>       // cub::DeviceScan

#include "moe/cuda/kernels/plan.cuh"  // plan_scatter_kernel, rank_offsets_kernel, CUB functors
#include "moe/cuda/runtime.cuh"       // check_launch, grid_for, MOE_CUDA_TRY
#include "moe/plan.hpp"               // moe::plan_args, detail::check

namespace moe {

namespace detail {

inline constexpr std::size_t plan_workspace_align = 256;

constexpr std::size_t plan_align_up(std::size_t n) noexcept {
  return (n + plan_workspace_align - 1) / plan_workspace_align * plan_workspace_align;
}

inline auto plan_bins(plan_args const& a) {
  return thrust::make_transform_iterator(
      thrust::counting_iterator<std::int64_t>(0),
      backend::cuda::plan_bin_of_route{a.expert, a.slot, a.experts, a.capacity});
}

inline auto plan_block_sizes(plan_args const& a, std::int32_t const* counts) {
  return thrust::make_transform_iterator(thrust::counting_iterator<std::int32_t>(0),
                                         backend::cuda::plan_block_rows_of_expert{
                                             counts, a.experts, a.layout, a.capacity, a.tile_rows});
}

// Bytes of the counts and of CUB's temporary storage (shared by the histogram and the scan,
// which run one after the other on the same stream).
inline status plan_workspace_parts(plan_args const& a, std::size_t& counts_bytes,
                                   std::size_t& temp_bytes) noexcept {
  counts_bytes = plan_align_up(static_cast<std::size_t>(a.experts) * sizeof(std::int32_t));
  std::size_t hist = 0, scan = 0;
  MOE_CUDA_TRY(cub::DeviceHistogram::HistogramEven(nullptr, hist, plan_bins(a),
                                                   static_cast<int*>(nullptr), a.experts + 1, 0,
                                                   a.experts, a.tokens * a.top_k));
  MOE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, scan, plan_block_sizes(a, nullptr),
                                             static_cast<std::int64_t*>(nullptr), a.experts + 1));
  temp_bytes = plan_align_up(hist > scan ? hist : scan);
  return {};
}

}  // namespace detail

/// Bytes of device workspace that plan(cuda_on(stream, ws, bytes), a) needs: the experts'
/// counts and CUB's temporary storage. Depends only on a.tokens, a.top_k and a.experts; 0 when
/// those are invalid or CUB cannot be queried (plan then reports why).
inline std::size_t plan_workspace_bytes(plan_args const& a) noexcept {
  if (a.tokens < 0 || a.top_k < 1 || a.experts < 1 || a.tokens > detail::int32_limit / a.top_k)
    return 0;
  std::size_t counts = 0, temp = 0;
  if (!detail::plan_workspace_parts(a, counts, temp).ok()) return 0;
  return counts + temp;
}

/// Builds the plan on the device, enqueued on `policy.stream`; integer outputs equal the host
/// backend's. A broken slot contract is reported in `a.bad_route` (device memory), not in the
/// status; outputs are then unspecified but nothing is written out of bounds.
/// @param a  expert, slot [T, K] in; offsets [E+1], row_of [T, K], source_of [source_rows] out
inline status plan(cuda_policy policy, plan_args const& a) noexcept {
  MOE_TRY(detail::check(a));
  std::size_t counts_bytes = 0, temp_bytes = 0;
  MOE_TRY(detail::plan_workspace_parts(a, counts_bytes, temp_bytes));
  MOE_TRY(backend::cuda::check_workspace(policy, counts_bytes + temp_bytes,
                                         detail::plan_workspace_align, "plan",
                                         "plan_workspace_bytes"));
  cudaStream_t const stream = policy.stream;
  auto* const counts = static_cast<std::int32_t*>(policy.workspace);
  void* const temp = static_cast<char*>(policy.workspace) + counts_bytes;
  std::int64_t const routes = a.tokens * a.top_k;

  if (a.source_rows > 0)
    MOE_CUDA_TRY(cudaMemsetAsync(
        a.source_of, 0xff, static_cast<std::size_t>(a.source_rows) * sizeof(std::int32_t), stream));
  if (a.bad_route != nullptr)
    MOE_CUDA_TRY(cudaMemsetAsync(a.bad_route, 0xff, sizeof(std::int64_t), stream));
  if (routes > 0) {
    MOE_CUDA_TRY(cub::DeviceHistogram::HistogramEven(temp, temp_bytes, detail::plan_bins(a), counts,
                                                     a.experts + 1, 0, a.experts, routes, stream));
  } else {
    MOE_CUDA_TRY(cudaMemsetAsync(
        counts, 0, static_cast<std::size_t>(a.experts) * sizeof(std::int32_t), stream));
  }
  MOE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, detail::plan_block_sizes(a, counts),
                                             a.offsets, a.experts + 1, stream));
  MOE_TRY(backend::cuda::check_launch(stream, "plan: CUB histogram and scan"));
  if (routes == 0) return {};
  constexpr unsigned block = 256;
  backend::cuda::plan_scatter_kernel<>
      <<<backend::cuda::grid_for(routes, block), block, 0, stream>>>(
          a.expert, a.slot, counts, a.offsets, a.row_of, a.source_of, a.bad_route, routes,
          a.experts, a.capacity, a.layout, a.source_rows);
  return backend::cuda::check_launch(stream, "plan_scatter_kernel");
}

/// Per-rank row offsets on the device: out[r] = offsets[r·E/R] for r in [0, R].
inline status rank_offsets(cuda_policy policy, rank_offsets_args const& a) noexcept {
  MOE_TRY(detail::check(a));
  constexpr unsigned block = 128;
  backend::cuda::rank_offsets_kernel<>
      <<<backend::cuda::grid_for(a.ep_size + 1, block), block, 0, policy.stream>>>(
          a.offsets, a.experts, a.ep_size, a.out);
  return backend::cuda::check_launch(policy.stream, "rank_offsets_kernel");
}

}  // namespace moe
