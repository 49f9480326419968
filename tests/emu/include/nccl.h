// SPDX-License-Identifier: Apache-2.0
// moe_emu's stand-in for the NCCL calls moe::comm::nccl makes, for a communicator of one rank:
// sends to and receives from rank 0 inside ncclGroupStart/End are paired in order at
// ncclGroupEnd (sizes must agree), an all-reduce over one rank copies. More ranks are refused
// (ncclInvalidArgument): the multi-rank paths are tested under MPI on the host (label mpi).
#pragma once

#include <cstddef>
#include <cstring>
#include <vector>

#include "cuda_runtime.h"

enum ncclResult_t {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
};
enum ncclDataType_t {
  ncclInt8 = 0,
  ncclChar = 0,
  ncclInt32 = 2,
  ncclInt64 = 4,
  ncclFloat32 = 7,
  ncclFloat64 = 8,
};
enum ncclRedOp_t { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3 };
struct ncclUniqueId {
  char internal[128];
};
struct ncclComm {
  int ranks;
};
using ncclComm_t = ncclComm*;

namespace moe_emu {
inline std::size_t nccl_size(ncclDataType_t t) {
  switch (t) {
    case ncclChar:
      return 1;
    case ncclInt32:
      return 4;
    default:
      return 8;  // ncclInt64, ncclFloat64
    case ncclFloat32:
      return 4;
  }
}
struct nccl_transfer {
  void const* send;
  void* recv;
  std::size_t bytes;
};
struct nccl_group {
  int depth = 0;
  std::vector<nccl_transfer> sends, recvs;
};
inline nccl_group& nccl_state() {
  static nccl_group g;
  return g;
}
}  // namespace moe_emu

inline char const* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess:
      return "no error";
    case ncclInvalidArgument:
      return "invalid argument (moe_emu: one rank only)";
    case ncclInvalidUsage:
      return "invalid usage";
    default:
      return "unhandled error";
  }
}
inline ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id, 0, sizeof(*id));
  return ncclSuccess;
}
inline ncclResult_t ncclCommInitRank(ncclComm_t* comm, int ranks, ncclUniqueId, int rank) {
  if (ranks != 1 || rank != 0) return ncclInvalidArgument;
  *comm = new ncclComm{ranks};
  return ncclSuccess;
}
inline ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
inline ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* r) {
  *r = ncclSuccess;
  return ncclSuccess;
}
inline ncclResult_t ncclGroupStart() {
  ++moe_emu::nccl_state().depth;
  return ncclSuccess;
}
inline ncclResult_t ncclGroupEnd() {
  auto& g = moe_emu::nccl_state();
  if (g.depth == 0) return ncclInvalidUsage;
  if (--g.depth > 0) return ncclSuccess;
  ncclResult_t r = ncclSuccess;
  if (g.sends.size() != g.recvs.size()) r = ncclInvalidUsage;
  for (std::size_t i = 0; r == ncclSuccess && i < g.sends.size(); ++i) {
    if (g.sends[i].bytes != g.recvs[i].bytes) {
      r = ncclInvalidUsage;
      break;
    }
    if (g.sends[i].bytes > 0) std::memmove(g.recvs[i].recv, g.sends[i].send, g.sends[i].bytes);
  }
  g.sends.clear();
  g.recvs.clear();
  return r;
}
inline ncclResult_t ncclSend(void const* buf, std::size_t count, ncclDataType_t t, int peer,
                             ncclComm_t comm, cudaStream_t) {
  auto& g = moe_emu::nccl_state();
  if (comm == nullptr || peer != 0) return ncclInvalidArgument;
  if (g.depth == 0) return ncclInvalidUsage;  // a send to oneself outside a group never ends
  g.sends.push_back({buf, nullptr, count * moe_emu::nccl_size(t)});
  return ncclSuccess;
}
inline ncclResult_t ncclRecv(void* buf, std::size_t count, ncclDataType_t t, int peer,
                             ncclComm_t comm, cudaStream_t) {
  auto& g = moe_emu::nccl_state();
  if (comm == nullptr || peer != 0) return ncclInvalidArgument;
  if (g.depth == 0) return ncclInvalidUsage;
  g.recvs.push_back({nullptr, buf, count * moe_emu::nccl_size(t)});
  return ncclSuccess;
}
inline ncclResult_t ncclAllReduce(void const* send, void* recv, std::size_t count, ncclDataType_t t,
                                  ncclRedOp_t, ncclComm_t comm, cudaStream_t) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (send != recv && count > 0) std::memmove(recv, send, count * moe_emu::nccl_size(t));
  return ncclSuccess;
}
