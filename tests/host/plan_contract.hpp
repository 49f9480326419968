// SPDX-License-Identifier: Apache-2.0
// The router → plan slot contract written out route by route, by brute force, for the plan
// tests of both backends (tests/host/test_dispatch_plan.cpp, tests/cuda/test_dispatch.cu): which
// routes break it, and the lowest of them, which is the route plan must name in bad_route.
// Quadratic in T·K on purpose — it follows the definition in docs/dispatch.md word for word
// and shares nothing with the plan's histogram/scan/scatter.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t
#include <vector>   // std::vector

#include "moe/plan.hpp"  // moe::plan_layout

namespace moe::test {

/// True when route i breaks the slot contract: its expert is outside [0, E), its slot outside
/// [-1, C), it is kept and another kept route has the same (expert, slot), or (compact) it is
/// kept with a slot at or above the number of routes its expert keeps (a hole).
inline bool breaks_slot_contract(std::vector<std::int32_t> const& expert,
                                 std::vector<std::int32_t> const& slot, std::int32_t experts,
                                 std::int64_t capacity, moe::plan_layout layout, std::size_t i) {
  auto in_range = [&](std::size_t j) {
    return expert[j] >= 0 && expert[j] < experts && slot[j] >= -1 && slot[j] < capacity;
  };
  if (!in_range(i)) return true;
  if (slot[i] < 0) return false;  // dropped, expert in range
  std::int64_t kept = 0;
  for (std::size_t j = 0; j < expert.size(); ++j) {
    if (!in_range(j) || slot[j] < 0 || expert[j] != expert[i]) continue;
    ++kept;
    if (j != i && slot[j] == slot[i]) return true;  // a repeated slot
  }
  return layout == moe::plan_layout::compact && slot[i] >= kept;  // a hole
}

/// The lowest route that breaks the slot contract, or -1 when none does.
inline std::int64_t lowest_slot_contract_break(std::vector<std::int32_t> const& expert,
                                               std::vector<std::int32_t> const& slot,
                                               std::int32_t experts, std::int64_t capacity,
                                               moe::plan_layout layout) {
  for (std::size_t i = 0; i < expert.size(); ++i)
    if (breaks_slot_contract(expert, slot, experts, capacity, layout, i))
      return static_cast<std::int64_t>(i);
  return -1;
}

}  // namespace moe::test
