// SPDX-License-Identifier: Apache-2.0
// check<C>() must reject E = 0 with its sentence.
// expect: experts must be at least 1
#include "moe/config.hpp"
static_assert(moe::check<moe::config{.experts = 0, .top_k = 1}>());
