// SPDX-License-Identifier: Apache-2.0
// check<C>() must reject a precision pair that is not compiled, with its sentence.
// expect: weight precision must equal act precision
#include "moe/config.hpp"
static_assert(moe::check<moe::config{.experts = 8, .top_k = 2, .weight = moe::precision::fp32}>());
