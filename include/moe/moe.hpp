// SPDX-License-Identifier: Apache-2.0
// Umbrella header of the host API and CPU backend. Compiles with g++ alone; never includes CUDA.
#pragma once

#include "moe/activation.hpp"    // expert FFN activations and their derivatives
#include "moe/config.hpp"        // moe::config, check<C>(), validate(config), describe
#include "moe/configs.hpp"       // moe::compiled_configs, dispatch(cfg, f) over them, presets
#include "moe/convert.hpp"       // moe::convert: fp32 <-> bf16/fp16/fp8 tensors
#include "moe/dispatch.hpp"      // moe::config_list, dispatch<List>(cfg, f)
#include "moe/expert_ffn.hpp"    // moe::expert_ffn: two grouped GEMMs and the activation
#include "moe/grouped_gemm.hpp"  // moe::grouped_gemm: per-expert GEMMs with fused epilogues
#include "moe/layer.hpp"         // moe::layer: the whole MoE layer, forward and backward
#include "moe/permute.hpp"       // moe::permute, unpermute/combine and their backward
#include "moe/philox.hpp"        // moe::philox4x32_10, uniform/normal/gumbel draws by (seed, offset)
#include "moe/plan.hpp"          // moe::plan: expert offsets and row maps (counting sort)
#include "moe/policy.hpp"        // moe::host, moe::cuda_on, execution_policy
#include "moe/precision.hpp"     // moe::bf16, fp16, fp8_e4m3, fp8_e5m2 storage types
#include "moe/problem.hpp"       // moe::problem, capacity<C>(), validate<C>(problem)
#include "moe/random.hpp"        // moe::fill_random: tensors of Philox draws
#include "moe/router.hpp"        // moe::route, route_backward: top-K, capacity, slots, losses
#include "moe/router_gemm.hpp"   // moe::router_gemm: logits = x · W_g, and its backward
#include "moe/status.hpp"        // moe::status, moe::errc, MOE_TRY
#include "moe/storage.hpp"       // moe::storage_t, act_t<C>, weight_t<C>, accum_t<C>
