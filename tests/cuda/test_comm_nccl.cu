// SPDX-License-Identifier: Apache-2.0
// The NCCL communicator (moe/comm/nccl.cuh) on one rank (label gpu): init from a fresh unique
// id; all_to_all_v and all_gather_v deliver the rows unchanged (R = 1: to itself), ordered
// against the caller's compute stream; all_reduce_sum and all_reduce_max leave one rank's data
// unchanged; poll() reports no asynchronous error; an uninitialised communicator and bad
// ranks get statuses naming the problem. Multi-rank NCCL runs need several GPUs.
#include <doctest/doctest.h>

#include <cstdint>  // std::int64_t
#include <cstring>  // std::strstr
#include <vector>   // std::vector

#include "common.cuh"  // device_vector, MOE_REQUIRE_OK
#include "moe/comm/nccl.cuh"

TEST_CASE("comm::nccl: one rank exchanges, gathers and reduces") {
  ncclUniqueId id{};
  MOE_REQUIRE_OK(moe::comm::nccl::unique_id(id));
  moe::comm::nccl comm;
  MOE_REQUIRE_OK(comm.init(id, 1, 0));
  CHECK(comm.rank() == 0);
  CHECK(comm.size() == 1);
  cudaStream_t compute = nullptr;
  MOE_REQUIRE_CUDA(cudaStreamCreate(&compute));
  comm.set_stream(compute);

  std::int64_t const rows = 37, row_bytes = 24;
  std::vector<char> host(static_cast<std::size_t>(rows * row_bytes));
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<char>(i * 7 + 3);
  moe::test::device_vector<char> send(host.size()), recv(host.size()), gathered(host.size());
  send.upload(host);
  std::int64_t const counts[1] = {rows};
  MOE_REQUIRE_OK(comm.all_to_all_v(send.data(), counts, recv.data(), counts,
                                   static_cast<std::size_t>(row_bytes)));
  MOE_REQUIRE_OK(comm.all_gather_v(send.data(), rows, gathered.data(), counts,
                                   static_cast<std::size_t>(row_bytes)));
  MOE_REQUIRE_CUDA(cudaStreamSynchronize(compute));
  CHECK(recv.download() == host);
  CHECK(gathered.download() == host);

  std::vector<double> values{1.5, -2.25, 3.0};
  moe::test::device_vector<double> dv(values.size());
  dv.upload(values);
  MOE_REQUIRE_OK(comm.all_reduce_sum(dv.data(), 3));
  std::vector<std::int64_t> ints{4, -9};
  moe::test::device_vector<std::int64_t> di(ints.size());
  di.upload(ints);
  MOE_REQUIRE_OK(comm.all_reduce_max(di.data(), 2));
  MOE_REQUIRE_CUDA(cudaStreamSynchronize(compute));
  CHECK(dv.download() == values);
  CHECK(di.download() == ints);
  MOE_REQUIRE_OK(comm.poll());
  cudaStreamDestroy(compute);
}

TEST_CASE("comm::nccl: bad use gets a status") {
  moe::comm::nccl comm;
  std::int64_t const counts[1] = {0};
  moe::status s = comm.all_to_all_v(nullptr, counts, nullptr, counts, 8);
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::strstr(s.message(), "not initialised") != nullptr);
  ncclUniqueId id{};
  MOE_REQUIRE_OK(moe::comm::nccl::unique_id(id));
  s = comm.init(id, 2, 2);
  CHECK(std::strstr(s.message(), "rank") != nullptr);
}
