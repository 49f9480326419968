// SPDX-License-Identifier: Apache-2.0
// check<C>() must reject a capacity factor with a zero denominator, with its sentence.
// expect: capacity_factor must be a ratio \{num >= 0, den >= 1\}
#include "moe/config.hpp"
static_assert(moe::check<moe::config{.experts = 8, .top_k = 2, .capacity_factor = {1, 0}}>());
