// SPDX-License-Identifier: Apache-2.0
// check<C>() must reject K > E with its sentence.
// expect: top_k must be in \[1, experts\]
#include "moe/config.hpp"
static_assert(moe::check<moe::config{.experts = 4, .top_k = 5}>());
