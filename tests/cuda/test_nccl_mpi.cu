// SPDX-License-Identifier: Apache-2.0
// NCCL bootstrapped through MPI (moe/comm/nccl_mpi.cuh), run by ctest under `mpirun -np 1`
// (label gpu; NCCL refuses two ranks on one GPU, so more ranks need a machine with a GPU per
// rank: `mpirun -np R` there, rank r on GPU r mod count). Every rank joins the NCCL group made
// from MPI_COMM_WORLD, then checks an all-gather of every rank's rank and an all-reduce of
// (rank + 1) against what MPI says the group is. Exit 77 without a GPU (skipped).
#include <cuda_runtime.h>
#include <mpi.h>

#include <cstdint>  // std::int64_t
#include <cstdio>   // std::printf
#include <vector>   // std::vector

#include "moe/comm/nccl_mpi.cuh"
#include "moe/cuda/runtime.cuh"  // device_count

namespace {

int failures = 0;

void check(bool ok, char const* what) {
  if (!ok) {
    ++failures;
    std::printf("FAILED: %s\n", what);
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int const devices = moe::backend::cuda::device_count();
  int any = devices;
  MPI_Allreduce(&devices, &any, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (any == 0) {
    std::printf("SKIPPED: no usable CUDA device\n");
    MPI_Finalize();
    return 77;
  }
  moe::comm::mpi const world(MPI_COMM_WORLD);
  int const R = world.size(), rank = world.rank();
  check(cudaSetDevice(rank % devices) == cudaSuccess, "cudaSetDevice");
  moe::comm::nccl comm;
  moe::status s = moe::comm::nccl_from_mpi(world, comm);
  check(s.ok(), s.message());
  if (s.ok()) {
    check(comm.size() == R && comm.rank() == rank, "the NCCL group is the MPI group");
    cudaStream_t stream = nullptr;
    check(cudaStreamCreate(&stream) == cudaSuccess, "cudaStreamCreate");
    comm.set_stream(stream);
    std::int64_t *mine = nullptr, *all = nullptr, *sum = nullptr;
    check(cudaMalloc(&mine, sizeof(std::int64_t)) == cudaSuccess, "cudaMalloc");
    check(cudaMalloc(&all, static_cast<std::size_t>(R) * sizeof(std::int64_t)) == cudaSuccess,
          "cudaMalloc");
    check(cudaMalloc(&sum, sizeof(std::int64_t)) == cudaSuccess, "cudaMalloc");
    std::int64_t const value = rank, plus_one = rank + 1;
    check(cudaMemcpy(mine, &value, sizeof value, cudaMemcpyHostToDevice) == cudaSuccess, "upload");
    check(cudaMemcpy(sum, &plus_one, sizeof plus_one, cudaMemcpyHostToDevice) == cudaSuccess,
          "upload");
    std::vector<std::int64_t> ones(static_cast<std::size_t>(R), 1);
    s = comm.all_gather_v(mine, 1, all, ones.data(), sizeof(std::int64_t));
    check(s.ok(), s.message());
    s = comm.all_reduce_sum(sum, 1);
    check(s.ok(), s.message());
    check(cudaStreamSynchronize(stream) == cudaSuccess, "cudaStreamSynchronize");
    std::vector<std::int64_t> got(static_cast<std::size_t>(R));
    std::int64_t total = 0;
    check(cudaMemcpy(got.data(), all, got.size() * sizeof(std::int64_t),
                     cudaMemcpyDeviceToHost) == cudaSuccess,
          "download");
    check(cudaMemcpy(&total, sum, sizeof total, cudaMemcpyDeviceToHost) == cudaSuccess,
          "download");
    for (int r = 0; r < R; ++r) check(got[static_cast<std::size_t>(r)] == r, "all_gather_v order");
    check(total == static_cast<std::int64_t>(R) * (R + 1) / 2, "all_reduce_sum");
    s = comm.poll();
    check(s.ok(), s.message());
    cudaFree(mine);
    cudaFree(all);
    cudaFree(sum);
    cudaStreamDestroy(stream);
  }
  int total_failures = 0;
  MPI_Allreduce(&failures, &total_failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("%s: %d failed checks over %d ranks\n", total_failures == 0 ? "PASSED" : "FAILED",
                total_failures, R);
  MPI_Finalize();
  return total_failures == 0 ? 0 : 1;
}
