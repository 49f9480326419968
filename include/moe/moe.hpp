// SPDX-License-Identifier: Apache-2.0
// Umbrella header of the host API and CPU backend. Compiles with g++ alone; never includes CUDA.
#pragma once

#include "moe/config.hpp"     // moe::config, check<C>(), validate(config), describe
#include "moe/configs.hpp"    // moe::compiled_configs, dispatch(cfg, f) over them
#include "moe/convert.hpp"    // moe::convert: fp32 <-> bf16/fp16/fp8 tensors
#include "moe/dispatch.hpp"   // moe::config_list, dispatch<List>(cfg, f)
#include "moe/philox.hpp"     // moe::philox4x32_10, uniform/normal/gumbel draws by (seed, offset)
#include "moe/policy.hpp"     // moe::host, moe::cuda_on, execution_policy
#include "moe/precision.hpp"  // moe::bf16, fp16, fp8_e4m3, fp8_e5m2 storage types
#include "moe/problem.hpp"    // moe::problem, capacity<C>(), validate<C>(problem)
#include "moe/random.hpp"     // moe::fill_random: tensors of Philox draws
#include "moe/status.hpp"     // moe::status, moe::errc, MOE_TRY
