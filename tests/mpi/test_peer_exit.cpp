// SPDX-License-Identifier: Apache-2.0
// A peer that dies does not hang the others (run under `mpirun -np 2` by
// tests/mpi/peer_exit.cmake, which is the test). Both ranks set up an expert-parallel layer
// (moe::layer<C, moe::host_policy, moe::comm::mpi>) and meet at a barrier; then rank 1 exits
// with std::_Exit(argv[1], default 3) — no MPI_Finalize, no destructors, as a crash would (or a
// stray exit(0)) — while rank 0 enters
// the layer's forward, whose first collective waits for rank 1 forever. MPI-3 cannot turn that
// into a status; what bounds the wait is Open MPI's launcher, which aborts the whole job when a
// process exits without MPI_Finalize. The wrapper checks that mpirun returns non-zero within
// its time limit and that rank 0 never printed "forward returned", and reports how long the
// abort took from the moment rank 1 printed "rank 1 exits at <µs>" (CLOCK_REALTIME).
// Exit status: whatever mpirun makes of it; a rank that gets here past the forward fails.
#include <mpi.h>

#include <chrono>   // std::chrono::system_clock, std::chrono::milliseconds
#include <cstddef>  // std::size_t
#include <cstdio>   // std::printf, std::fflush
#include <cstdlib>  // std::_Exit, std::atoi, std::aligned_alloc, std::free
#include <thread>   // std::this_thread::sleep_for
#include <vector>   // std::vector

#include "moe/comm/mpi.hpp"  // moe::comm::mpi
#include "moe/configs.hpp"   // moe::configs::top2_fp32
#include "moe/layer.hpp"     // moe::layer

namespace {

long long now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  moe::comm::mpi const comm(MPI_COMM_WORLD);
  int const rank = comm.rank();
  int const exit_status = argc > 1 ? std::atoi(argv[1]) : 3;  // rank 1's
  if (comm.size() != 2) {
    std::printf("rank %d: expected 2 ranks, got %d\n", rank, comm.size());
    MPI_Finalize();
    return 1;
  }
  using ep_layer = moe::layer<moe::configs::top2_fp32, moe::host_policy, moe::comm::mpi>;
  ep_layer ep({.hidden = 8, .ffn = 8, .ep_size = 2}, comm);
  if (!ep.allocate().ok() || !ep.init({.seed = 1, .std = 0.1f}).ok()) {
    std::printf("rank %d: setup failed\n", rank);
    MPI_Finalize();
    return 1;
  }
  moe::problem const p = ep.make_problem(16);
  std::size_t const bytes = ep.workspace_bytes(p);
  void* const ws = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  std::vector<float> x(16 * 8, 0.5f), y(x.size());
  MPI_Barrier(MPI_COMM_WORLD);  // both ranks are set up and alive

  if (rank == 1) {
    // Let rank 0 get inside the forward's first collective, then die without a word to MPI.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::printf("rank 1 exits at %lld us\n", now_us());
    std::fflush(stdout);
    std::_Exit(exit_status);
  }
  std::printf("rank 0 enters forward\n");
  std::fflush(stdout);
  moe::status const s = ep.forward(moe::host, p, {x.data(), y.data()}, ws, bytes);
  // Not reached while Open MPI aborts the job; if it ever is, the wrapper fails the test
  // whatever the status says (it would have to be an error, and the test would change).
  std::printf("rank 0: forward returned (%s)\n", s.ok() ? "ok" : s.message());
  std::fflush(stdout);
  std::free(ws);
  std::_Exit(s.ok() ? 0 : 2);
}
