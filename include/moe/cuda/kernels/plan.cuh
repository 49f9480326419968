// SPDX-License-Identifier: Apache-2.0
// Kernels and CUB functors of plan (see moe/plan.hpp). The plan is a histogram of the kept
// routes per expert (CUB DeviceHistogram over plan_bin_of_route), an exclusive scan of the
// experts' block sizes into offsets (CUB DeviceScan over plan_block_rows_of_expert), and
// plan_scatter_kernel, which gives every route its row offsets[e] + slot. The slot already is
// the route's rank inside its expert, so the scatter is one independent write per route and the
// result does not depend on thread order: integer outputs equal the host backend's bit for bit.
// Each thread also checks its route against the slot contract with the same MOE_HOST_DEVICE
// predicates as the host, and claims its row with an atomicCAS from -1, which finds a repeated
// slot without a second pass; faults go to the bad_route word with atomicMin, so the route
// reported is the lowest faulty index whatever the thread order. The scan clamps each block to
// C rows (plan_block_rows), so an expert whose slots repeat cannot push a later expert's valid
// routes past source_of: every flagged route breaks the contract itself, as on the host.
#pragma once

#include <cstdint>  // std::int32_t, std::int64_t

#include "moe/plan.hpp"  // detail::plan_histogram_bin, plan_block_rows, plan_slot_is_hole, plan_row

namespace moe::backend::cuda {

/// Histogram samples: route i's expert when it is kept and in range, else -1, which falls
/// outside the bins [0, E) and is not counted.
struct plan_bin_of_route {
  std::int32_t const* expert;  // [T*K]
  std::int32_t const* slot;    // [T*K]
  std::int32_t experts;
  std::int64_t capacity;
  __host__ __device__ std::int32_t operator()(std::int64_t i) const {
    return moe::detail::plan_histogram_bin(expert[i], slot[i], experts, capacity);
  }
};

/// Scan input: entry e < E is expert e's block of rows (its count clamped to C, then tiled);
/// entry E is 0, so the exclusive sum of E + 1 entries ends with the rows used.
struct plan_block_rows_of_expert {
  std::int32_t const* counts;  // [E] kept routes per expert
  std::int32_t experts;
  plan_layout layout;
  std::int64_t capacity;
  std::int32_t tile_rows;
  __host__ __device__ std::int64_t operator()(std::int32_t e) const {
    return e < experts ? moe::detail::plan_block_rows(counts[e], layout, capacity, tile_rows) : 0;
  }
};

__device__ __forceinline__ void plan_report(std::int64_t* bad_route, std::int64_t route) {
  // bad_route starts as all ones: -1 as int64, the largest value as unsigned, so the unsigned
  // minimum over the faulty routes is the lowest of them.
  if (bad_route != nullptr)
    atomicMin(reinterpret_cast<unsigned long long*>(bad_route),
              static_cast<unsigned long long>(route));
}

/// One thread per route (grid-stride): row_of[i] and source_of[row_of[i]]. source_of starts
/// all -1 (padding), so a row still -1 afterwards is padding. (The template parameter only
/// makes the kernel, defined in a header, a template: one definition across translation units.)
template <int = 0>
__global__ void plan_scatter_kernel(std::int32_t const* __restrict__ expert,   // [T*K]
                                    std::int32_t const* __restrict__ slot,     // [T*K]
                                    std::int32_t const* __restrict__ counts,   // [E]
                                    std::int64_t const* __restrict__ offsets,  // [E+1]
                                    std::int32_t* __restrict__ row_of,         // [T*K]
                                    std::int32_t* __restrict__ source_of,      // [source_rows]
                                    std::int64_t* __restrict__ bad_route,      // [1] or null
                                    std::int64_t routes, std::int32_t experts,
                                    std::int64_t capacity, plan_layout layout,
                                    std::int64_t source_rows) {
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < routes; i += stride) {
    std::int32_t const e = expert[i];
    std::int32_t const s = slot[i];
    std::int32_t row = -1;
    if (!moe::detail::plan_route_in_range(e, s, experts, capacity)) {
      plan_report(bad_route, i);
    } else if (s >= 0) {
      std::int64_t const at = moe::detail::plan_slot_is_hole(s, counts[e], layout)
                                  ? -1
                                  : moe::detail::plan_row(offsets[e], s, source_rows);
      if (at < 0) {  // a hole (past source_of cannot happen: see detail::plan_row)
        plan_report(bad_route, i);
      } else {
        std::int32_t const taken =
            atomicCAS(reinterpret_cast<int*>(source_of + at), -1, static_cast<int>(i));
        if (taken == -1)
          row = static_cast<std::int32_t>(at);
        else  // a repeated slot: name the lowest route of the pair, as the host does
          plan_report(bad_route, taken < i ? taken : i);
      }
    }
    row_of[i] = row;
  }
}

/// out[r] = offsets[r·E/R] for r in [0, R].
template <int = 0>
__global__ void rank_offsets_kernel(std::int64_t const* __restrict__ offsets,  // [E+1]
                                    std::int32_t experts, std::int32_t ep_size,
                                    std::int64_t* __restrict__ out) {  // [R+1]
  for (std::int32_t r = static_cast<std::int32_t>(blockIdx.x * blockDim.x + threadIdx.x);
       r <= ep_size; r += static_cast<std::int32_t>(gridDim.x * blockDim.x))
    out[r] = moe::detail::rank_row_offset(offsets, experts, ep_size, r);
}

}  // namespace moe::backend::cuda
