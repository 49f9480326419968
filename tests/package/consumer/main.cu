// SPDX-License-Identifier: Apache-2.0
// The nvcc package consumer: includes the CUDA umbrella and touches NCCL and MPI, proving that
// moe::cuda, moe::nccl and moe::mpi give it headers, flags (C++20) and libraries. It needs no
// GPU: without one, the CUDA op must come back as a status.
#include <moe/cuda.cuh>

#include <mpi.h>
#include <nccl.h>

#include <cstdio>

int main() {
  int nccl_version = 0;
  if (ncclGetVersion(&nccl_version) != ncclSuccess) return 1;
  int mpi_initialized = 1;
  MPI_Initialized(&mpi_initialized);
  int const devices = moe::backend::cuda::device_count();
  float* out = nullptr;
  moe::status s{};
  if (devices > 0) {
    if (cudaMalloc(&out, 16 * sizeof(float)) != cudaSuccess) return 1;
    s = moe::fill_random(moe::cuda_on(nullptr), {.out = out, .n = 16});
    if (s.ok() && cudaDeviceSynchronize() != cudaSuccess) return 1;
    cudaFree(out);
  }
  std::printf("consumer_cuda: nccl %d, mpi initialized %d, devices %d, %s\n", nccl_version,
              mpi_initialized, devices, s.ok() ? "ok" : s.message());
  return s.ok() && mpi_initialized == 0 ? 0 : 1;
}
