// SPDX-License-Identifier: Apache-2.0
// check<C>() must reject an unsupported precision with its sentence.
// expect: act must be fp64, fp32, fp16 or bf16 \(fp8 is a storage format only\)
#include "moe/config.hpp"
static_assert(moe::check<moe::config{.experts = 8, .top_k = 2, .act = moe::precision::fp8_e4m3,
                                     .weight = moe::precision::fp8_e4m3}>());
