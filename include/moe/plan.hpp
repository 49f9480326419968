// SPDX-License-Identifier: Apache-2.0
// Op: the dispatch plan. From the router's (expert, slot) of every route (t, k) it builds where
// each route's row lives in the permuted buffer that the expert GEMMs read, and which route
// fills each row: `offsets[E+1]` (first row of each expert), `row_of[T*K]` (row of each route,
// -1 = dropped) and `source_of[rows]` (route of each row, -1 = padding). It is a counting sort
// whose within-expert rank is already known — the router's slot — so it is a histogram, an
// exclusive scan and a scatter: row = offsets[e] + slot in both layouts. Rows are ordered by
// expert, then slot; the result is a pure function of the inputs (see docs/dispatch.md).
//
// The router→plan slot contract (checked here, on both backends):
//   - every expert id is in [0, E); every slot is -1 (dropped) or in [0, C);
//   - no two kept routes share (expert, slot);
//   - compact layout only: the kept routes of expert e hold exactly the slots 0..kept_e-1
//     (the router's slots are ranks among survivors, so they have no holes). capacity_padded
//     allows holes: an empty slot is a padding row.
// A route breaks it when its expert or slot is out of range, when it is a hole (compact: slot
// >= kept_e), or when another kept route has its (expert, slot); both backends name the lowest
// such route, never a valid one.
//
// This header holds the argument struct, its checks, the index math both backends share
// (MOE_HOST_DEVICE) and the host overload. The CUDA overload is moe/cuda/plan.cuh.
#pragma once

#include <cstdint>  // std::int32_t, std::int64_t

#include "moe/config.hpp"         // moe::config, moe::max_top_k
#include "moe/detail/macros.hpp"  // MOE_HOST_DEVICE
#include "moe/policy.hpp"         // moe::host_policy
#include "moe/problem.hpp"        // moe::problem, capacity<C>()
#include "moe/status.hpp"         // moe::status, MOE_TRY

namespace moe {

/// How the permuted buffer is laid out.
enum class plan_layout : std::uint8_t {
  /// Kept routes only, grouped by expert; each expert's block is padded with zero rows up to a
  /// multiple of `tile_rows` (1 = no padding; an expert with no routes has no rows at all).
  compact,
  /// DeepSpeed's [E, C] layout: row = e·C + slot; empty slots are zero rows.
  capacity_padded,
};

constexpr char const* to_string(plan_layout l) noexcept {
  return l == plan_layout::compact ? "compact" : "capacity_padded";
}

/// Arguments of plan. Pointers are host memory for moe::host, device memory for moe::cuda_on.
struct plan_args {
  plan_layout layout = plan_layout::compact;
  std::int64_t tokens = 0;               ///< T (0 is valid: the plan is empty)
  std::int32_t top_k = 1;                ///< K, in [1, 32]
  std::int32_t experts = 0;              ///< E >= 1
  std::int64_t capacity = 0;             ///< C, slots per expert, in [0, 2^31)
  std::int32_t tile_rows = 1;            ///< compact: pad each expert's block to a multiple; >= 1
  std::int32_t const* expert = nullptr;  ///< [T, K] expert of each route (router's output)
  std::int32_t const* slot = nullptr;    ///< [T, K] slot inside its expert, -1 = dropped
  std::int64_t* offsets = nullptr;       ///< [E+1] out: first row of each expert; [E] = rows used
  std::int32_t* row_of = nullptr;        ///< [T, K] out: row of each route, -1 = dropped
  std::int32_t* source_of = nullptr;  ///< [source_rows] out: route t·K+k of each row, -1 = padding
  std::int64_t source_rows = 0;       ///< length of source_of: at least plan_rows_bound(...)
  /// [1] out, optional: -1, or the lowest route index t·K+k that breaks the slot contract. The
  /// host backend also returns a status naming it; the CUDA backend sees the values only on the
  /// device, so this word is how it reports them without synchronising.
  std::int64_t* bad_route = nullptr;
};

/// The most rows a plan of these sizes can use, so that buffers are sized without reading
/// anything back from the device: E·C for capacity_padded; for compact, N = min(T·K, E·C) kept
/// routes, plus at most tile_rows - 1 padding rows for each of the min(E, N) experts that can
/// have routes, and never more than E experts of ⌈C / tile⌉ full tiles. 0 for invalid sizes.
constexpr std::int64_t plan_rows_bound(std::int64_t tokens, std::int32_t top_k,
                                       std::int32_t experts, std::int64_t capacity,
                                       plan_layout layout, std::int32_t tile_rows = 1) noexcept {
  if (tokens < 0 || top_k < 1 || experts < 1 || capacity < 0 || tile_rows < 1) return 0;
  std::int64_t const e = experts;
  if (layout == plan_layout::capacity_padded) return e * capacity;
  std::int64_t const routes = tokens * top_k;
  std::int64_t const kept = routes < e * capacity ? routes : e * capacity;
  if (tile_rows == 1) return kept;
  std::int64_t const tile = tile_rows;
  std::int64_t const busy = kept < e ? kept : e;  // experts that can own a partial tile
  std::int64_t const spread = kept + busy * (tile - 1);
  std::int64_t const full = e * ((capacity + tile - 1) / tile * tile);
  return spread < full ? spread : full;
}

/// plan_rows_bound for config C and problem p, with C = capacity<C>(p).
template <config C>
constexpr std::int64_t plan_rows_bound(problem const& p, plan_layout layout,
                                       std::int32_t tile_rows = 1) noexcept {
  static_assert(check<C>());
  return plan_rows_bound(p.tokens, C.top_k, C.experts, capacity<C>(p), layout, tile_rows);
}

namespace detail {

/// Rows of one expert's block: its kept routes, at most C, rounded up to the tile (compact), or
/// C. An expert keeps more than C routes only when its slots (all in [0, C)) repeat; clamping
/// its block to C keeps the blocks' sum within plan_rows_bound, so every in-range route that is
/// not a hole gets a row inside source_of: the repeats collide in their own block and are named,
/// and no valid route of a later expert is pushed past the end. A valid plan is unchanged.
MOE_HOST_DEVICE constexpr std::int64_t plan_block_rows(std::int64_t kept, plan_layout layout,
                                                       std::int64_t capacity,
                                                       std::int32_t tile_rows) {
  if (layout == plan_layout::capacity_padded) return capacity;
  std::int64_t const rows = kept < capacity ? kept : capacity;
  return (rows + tile_rows - 1) / tile_rows * tile_rows;
}

/// True when a route's expert and slot are in range (kept or dropped).
MOE_HOST_DEVICE constexpr bool plan_route_in_range(std::int32_t expert, std::int32_t slot,
                                                   std::int32_t experts, std::int64_t capacity) {
  return expert >= 0 && expert < experts && slot >= -1 && slot < capacity;
}

/// The expert a route counts for in the histogram: its expert when it is kept and in range,
/// else -1 (outside the histogram's bins, so not counted).
MOE_HOST_DEVICE constexpr std::int32_t plan_histogram_bin(std::int32_t expert, std::int32_t slot,
                                                          std::int32_t experts,
                                                          std::int64_t capacity) {
  return plan_route_in_range(expert, slot, experts, capacity) && slot >= 0 ? expert : -1;
}

/// True when a kept, in-range route breaks the compact layout's no-holes contract: its slot is
/// at or above its expert's kept count (so some lower slot is missing or repeated).
MOE_HOST_DEVICE constexpr bool plan_slot_is_hole(std::int32_t slot, std::int64_t kept,
                                                 plan_layout layout) {
  return layout == plan_layout::compact && slot >= kept;
}

/// The row of a kept route that is not a hole, or -1 when it falls at or past `source_rows`.
/// With the clamped blocks of plan_block_rows that cannot happen (a route's row is below
/// offsets[E] <= plan_rows_bound <= source_rows); the guard only keeps a write out of bounds
/// impossible should that reasoning ever break.
MOE_HOST_DEVICE constexpr std::int64_t plan_row(std::int64_t expert_offset, std::int32_t slot,
                                                std::int64_t source_rows) {
  std::int64_t const row = expert_offset + slot;
  return row < source_rows ? row : -1;
}

/// First row of rank r's experts: rows of experts [r·E_l, (r+1)·E_l) are contiguous because
/// rows are ordered by expert.
MOE_HOST_DEVICE constexpr std::int64_t rank_row_offset(std::int64_t const* offsets,  // [E+1]
                                                       std::int32_t experts, std::int32_t ep_size,
                                                       std::int32_t rank) {
  return offsets[static_cast<std::int64_t>(rank) * (experts / ep_size)];
}

inline constexpr std::int64_t int32_limit = 2147483647;

inline status check(plan_args const& a) noexcept {
  if (a.layout != plan_layout::compact && a.layout != plan_layout::capacity_padded)
    return status::error(errc::invalid_argument,
                         "plan_args.layout: expected compact or capacity_padded, got %d",
                         static_cast<int>(a.layout));
  if (a.tokens < 0)
    return status::error(errc::invalid_argument, "plan_args.tokens: expected >= 0, got %lld",
                         static_cast<long long>(a.tokens));
  if (a.top_k < 1 || a.top_k > max_top_k)
    return status::error(errc::invalid_argument, "plan_args.top_k: expected 1 <= K <= %d, got %d",
                         max_top_k, a.top_k);
  if (a.experts < 1)
    return status::error(errc::invalid_argument, "plan_args.experts: expected >= 1, got %d",
                         a.experts);
  if (a.capacity < 0 || a.capacity > int32_limit)
    return status::error(errc::invalid_argument,
                         "plan_args.capacity: expected 0 <= C < 2^31, got %lld",
                         static_cast<long long>(a.capacity));
  if (a.tile_rows < 1)
    return status::error(errc::invalid_argument, "plan_args.tile_rows: expected >= 1, got %d",
                         a.tile_rows);
  if (a.tokens > int32_limit / a.top_k)
    return status::error(errc::invalid_argument,
                         "plan_args.tokens: T*K = %lld routes do not fit the int32 route indices",
                         static_cast<long long>(a.tokens) * a.top_k);
  std::int64_t const bound =
      plan_rows_bound(a.tokens, a.top_k, a.experts, a.capacity, a.layout, a.tile_rows);
  if (bound > int32_limit)
    return status::error(errc::invalid_argument,
                         "plan_args: up to %lld rows do not fit the int32 row indices",
                         static_cast<long long>(bound));
  if (a.source_rows < bound)
    return status::error(errc::workspace_too_small,
                         "plan_args.source_rows: expected >= %lld rows (plan_rows_bound for T=%lld "
                         "K=%d E=%d C=%lld %s tile=%d), got %lld",
                         static_cast<long long>(bound), static_cast<long long>(a.tokens), a.top_k,
                         a.experts, static_cast<long long>(a.capacity), to_string(a.layout),
                         a.tile_rows, static_cast<long long>(a.source_rows));
  if (a.offsets == nullptr)
    return status::error(errc::invalid_argument, "plan_args.offsets: expected non-null [E+1]");
  if (a.source_rows > 0 && a.source_of == nullptr)
    return status::error(errc::invalid_argument,
                         "plan_args.source_of: expected non-null for source_rows = %lld",
                         static_cast<long long>(a.source_rows));
  if (a.tokens > 0 && (a.expert == nullptr || a.slot == nullptr || a.row_of == nullptr))
    return status::error(errc::invalid_argument,
                         "plan_args.expert/slot/row_of: expected non-null [T, K] for T = %lld",
                         static_cast<long long>(a.tokens));
  return {};
}

/// The status naming route `bad` and what it breaks (host backend, after a failed plan).
inline status plan_route_error(plan_args const& a, std::int64_t bad, std::int64_t other) noexcept {
  long long const t = static_cast<long long>(bad / a.top_k);
  int const k = static_cast<int>(bad % a.top_k);
  std::int32_t const e = a.expert[bad];
  std::int32_t const s = a.slot[bad];
  if (e < 0 || e >= a.experts)
    return status::error(errc::invalid_argument,
                         "plan_args.expert[t=%lld, k=%d]: expected 0 <= expert < E = %d, got %d", t,
                         k, a.experts, e);
  if (s < -1 || s >= a.capacity)
    return status::error(errc::invalid_argument,
                         "plan_args.slot[t=%lld, k=%d]: expected -1 <= slot < C = %lld, got %d", t,
                         k, static_cast<long long>(a.capacity), s);
  if (other >= 0)
    return status::error(errc::invalid_argument,
                         "plan_args.slot[t=%lld, k=%d]: slot %d of expert %d is also taken by "
                         "route (t=%lld, k=%d)",
                         t, k, s, e, static_cast<long long>(other / a.top_k),
                         static_cast<int>(other % a.top_k));
  std::int64_t kept = 0;
  for (std::int64_t i = 0; i < a.tokens * a.top_k; ++i)
    kept += plan_histogram_bin(a.expert[i], a.slot[i], a.experts, a.capacity) == e;
  if (plan_slot_is_hole(s, kept, a.layout))
    return status::error(errc::invalid_argument,
                         "plan_args.slot[t=%lld, k=%d]: got slot %d of expert %d, which keeps %lld "
                         "routes (compact layout: its slots must be exactly 0..%lld)",
                         t, k, s, e, static_cast<long long>(kept),
                         static_cast<long long>(kept - 1));
  return status::error(errc::invalid_argument,  // unreachable: see plan_row
                       "plan_args.slot[t=%lld, k=%d]: slot %d of expert %d lands past the %lld "
                       "rows of source_of",
                       t, k, s, e, static_cast<long long>(a.source_rows));
}

}  // namespace detail

/// Builds the plan on the CPU. On a route that breaks the slot contract it returns
/// errc::invalid_argument naming the lowest such route (t, k) and its value (also written to
/// `bad_route`); the outputs are then unspecified, but nothing is written out of bounds.
/// @param a  expert, slot [T, K] in; offsets [E+1], row_of [T, K], source_of [source_rows] out
inline status plan(host_policy, plan_args const& a) noexcept {
  MOE_TRY(detail::check(a));
  std::int64_t const routes = a.tokens * a.top_k;
  std::int64_t const experts = a.experts;
  for (std::int64_t r = 0; r < a.source_rows; ++r) a.source_of[r] = -1;
  for (std::int64_t e = 0; e <= experts; ++e) a.offsets[e] = 0;
  // Every route flagged below breaks the contract itself (out of range, a hole, or the first of
  // the routes sharing an (expert, slot)), and every route that breaks it is flagged or shares
  // its slot with a lower flagged one, so `bad` ends as the lowest route that breaks it. The
  // CUDA kernel flags routes by the same rules (in another order), so its minimum is the same.
  std::int64_t bad = -1;
  std::int64_t other = -1;  // the other route of a repeated slot
  auto flag = [&](std::int64_t i, std::int64_t with) {
    if (bad < 0 || i < bad) {
      bad = i;
      other = with;
    }
  };
  // Histogram: offsets[e + 1] counts the kept, in-range routes of expert e.
  for (std::int64_t i = 0; i < routes; ++i) {
    std::int32_t const bin =
        detail::plan_histogram_bin(a.expert[i], a.slot[i], a.experts, a.capacity);
    if (!detail::plan_route_in_range(a.expert[i], a.slot[i], a.experts, a.capacity)) flag(i, -1);
    if (bin >= 0) ++a.offsets[bin + 1];
  }
  // Holes need the kept counts, which the scan below replaces: mark such routes in row_of.
  for (std::int64_t i = 0; i < routes; ++i) {
    std::int32_t const bin =
        detail::plan_histogram_bin(a.expert[i], a.slot[i], a.experts, a.capacity);
    a.row_of[i] = -1;
    if (bin >= 0 && detail::plan_slot_is_hole(a.slot[i], a.offsets[bin + 1], a.layout)) {
      a.row_of[i] = -2;
      flag(i, -1);
    }
  }
  // Exclusive scan of the block sizes, in place.
  for (std::int64_t e = 0; e < experts; ++e)
    a.offsets[e + 1] =
        a.offsets[e] + detail::plan_block_rows(a.offsets[e + 1], a.layout, a.capacity, a.tile_rows);
  // Scatter, in route order; a slot taken twice names the first route that took it.
  for (std::int64_t i = 0; i < routes; ++i) {
    std::int32_t const bin =
        detail::plan_histogram_bin(a.expert[i], a.slot[i], a.experts, a.capacity);
    if (bin < 0 || a.row_of[i] == -2) {
      a.row_of[i] = -1;
      continue;
    }
    std::int64_t const row = detail::plan_row(a.offsets[bin], a.slot[i], a.source_rows);
    if (row < 0) {  // unreachable (see detail::plan_row), refused rather than written
      flag(i, -1);
      continue;
    }
    if (a.source_of[row] >= 0) {
      flag(a.source_of[row], i);
      continue;
    }
    a.source_of[row] = static_cast<std::int32_t>(i);
    a.row_of[i] = static_cast<std::int32_t>(row);
  }
  if (a.bad_route != nullptr) *a.bad_route = bad;
  if (bad >= 0) return detail::plan_route_error(a, bad, other);
  return {};
}

/// Arguments of rank_offsets: the first row of each expert-parallel rank's experts.
struct rank_offsets_args {
  std::int64_t const* offsets = nullptr;  ///< [E+1] a plan's offsets
  std::int32_t experts = 0;               ///< E
  std::int32_t ep_size = 1;     ///< R, dividing E; rank r holds experts [r·E/R, (r+1)·E/R)
  std::int64_t* out = nullptr;  ///< [R+1] out: first row of rank r; [R] = rows used
};

namespace detail {
inline status check(rank_offsets_args const& a) noexcept {
  if (a.experts < 1)
    return status::error(errc::invalid_argument, "rank_offsets_args.experts: expected >= 1, got %d",
                         a.experts);
  if (a.ep_size < 1 || a.experts % a.ep_size != 0)
    return status::error(errc::invalid_argument,
                         "rank_offsets_args.ep_size: expected R >= 1 dividing E = %d, got %d",
                         a.experts, a.ep_size);
  if (a.offsets == nullptr || a.out == nullptr)
    return status::error(errc::invalid_argument,
                         "rank_offsets_args.offsets/out: expected non-null [E+1] and [R+1]");
  return {};
}
}  // namespace detail

/// Per-rank row offsets on the CPU: out[r] = offsets[r·E/R] for r in [0, R].
inline status rank_offsets(host_policy, rank_offsets_args const& a) noexcept {
  MOE_TRY(detail::check(a));
  for (std::int32_t r = 0; r <= a.ep_size; ++r)
    a.out[r] = detail::rank_row_offset(a.offsets, a.experts, a.ep_size, r);
  return {};
}

}  // namespace moe
