// SPDX-License-Identifier: Apache-2.0
// Portability macros shared by every header. `MOE_HOST_DEVICE` marks functions that the
// CUDA backend calls from kernels and the host backend calls from plain C++: under nvcc they
// are `__host__ __device__`, under g++ they are ordinary inline functions, so host tests run
// exactly the index and number arithmetic the kernels run.
#pragma once

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__ __forceinline__
#define MOE_DEVICE __device__ __forceinline__
#else
#define MOE_HOST_DEVICE inline
#endif

// True while nvcc compiles the device side of a translation unit.
#if defined(__CUDA_ARCH__)
#define MOE_DEVICE_PASS 1
#else
#define MOE_DEVICE_PASS 0
#endif
