// SPDX-License-Identifier: Apache-2.0
// check<C>() must reject expert groups that do not divide E, with its sentence; and a problem
// validated against a bad config fails to compile too (validate<C> checks the config first).
// expect: expert_groups must be >= 1 and divide experts
#include "moe/problem.hpp"
moe::status f(moe::problem const& p) {
  return moe::validate<moe::config{.experts = 8, .top_k = 2, .expert_groups = 3}>(p);
}
