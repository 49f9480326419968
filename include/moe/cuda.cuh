// SPDX-License-Identifier: Apache-2.0
// Umbrella header of the CUDA backend: everything in moe/moe.hpp plus the CUDA overloads of
// each op that has one. Compile with nvcc (-std=c++20); link CUDA::cudart (CMake: moe::cuda).
#pragma once

#include "moe/cuda/convert.cuh"  // moe::convert(cuda_policy, ...)
#include "moe/cuda/expert_ffn.cuh"  // moe::grouped_gemm*, grouped_activation, expert_ffn* (cuda_policy)
#include "moe/cuda/layer.cuh"       // moe::layer<C, moe::cuda_policy>: the whole layer on the GPU
#include "moe/cuda/permute.cuh"  // moe::permute, unpermute, combine_backward, permute_backward
#include "moe/cuda/plan.cuh"     // moe::plan(cuda_policy, ...), plan_workspace_bytes
#include "moe/cuda/random.cuh"   // moe::fill_random(cuda_policy, ...)
#include "moe/cuda/router.cuh"   // moe::route, route_backward(cuda_policy, ...), *_workspace_bytes
#include "moe/cuda/router_gemm.cuh"  // moe::router_gemm, router_gemm_backward(cuda_policy, ...)
#include "moe/cuda/runtime.cuh"  // cudaError_t -> moe::status, MOE_CUDA_TRY, device_count
#include "moe/moe.hpp"           // the host API
