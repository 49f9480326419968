// SPDX-License-Identifier: Apache-2.0
// Umbrella header of the CUDA backend: everything in moe/moe.hpp plus the CUDA overloads of
// each op. Compile with nvcc (-std=c++20); link CUDA::cudart (CMake: moe::cuda).
#pragma once

#include "moe/cuda/convert.cuh"  // moe::convert(cuda_policy, ...)
#include "moe/cuda/random.cuh"   // moe::fill_random(cuda_policy, ...)
#include "moe/cuda/runtime.cuh"  // cudaError_t -> moe::status, MOE_CUDA_TRY, device_count
#include "moe/moe.hpp"           // the host API
