// SPDX-License-Identifier: Apache-2.0
// moe_emu's stand-in for the NCCL calls moe::comm::nccl makes. One rank: sends to and receives
// from rank 0 inside ncclGroupStart/End are paired in order at ncclGroupEnd (sizes must agree),
// an all-reduce copies. More ranks (built with MOE_EMU_WITH_MPI, run under mpirun, one rank of
// NCCL per MPI process of MPI_COMM_WORLD): a group's sends and receives become MPI_Isend/Irecv
// completed at ncclGroupEnd, an all-reduce is MPI_Allreduce. Anything else is refused.
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda_runtime.h"

#if defined(MOE_EMU_WITH_MPI)
#include <mpi.h>
#endif

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
  int rank;
};
using ncclComm_t = ncclComm*;

namespace moe_emu {
inline std::size_t nccl_size(ncclDataType_t t) {
  switch (t) {
    case ncclChar:
      return 1;
    case ncclInt32:
    case ncclFloat32:
      return 4;
    default:
      return 8;  // ncclInt64, ncclFloat64
  }
}
struct nccl_transfer {
  void const* send;
  void* recv;
  std::size_t bytes;
  int peer;
  int ranks;
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
  bool ok = ranks == 1 && rank == 0;
#if defined(MOE_EMU_WITH_MPI)
  int init = 0, world = 0, me = -1;
  MPI_Initialized(&init);
  if (!ok && init != 0) {
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    ok = world == ranks && me == rank;
  }
#endif
  if (!ok) return ncclInvalidArgument;
  *comm = new ncclComm{ranks, rank};
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
  bool const local =
      (g.sends.empty() || g.sends[0].ranks == 1) && (g.recvs.empty() || g.recvs[0].ranks == 1);
  if (local) {
    if (g.sends.size() != g.recvs.size()) r = ncclInvalidUsage;
    for (std::size_t i = 0; r == ncclSuccess && i < g.sends.size(); ++i) {
      if (g.sends[i].bytes != g.recvs[i].bytes) {
        r = ncclInvalidUsage;
        break;
      }
      if (g.sends[i].bytes > 0) std::memmove(g.recvs[i].recv, g.sends[i].send, g.sends[i].bytes);
    }
  } else {
#if defined(MOE_EMU_WITH_MPI)
    std::vector<MPI_Request> req;
    for (auto const& t : g.recvs) {
      req.emplace_back();
      MPI_Irecv(t.recv, static_cast<int>(t.bytes), MPI_BYTE, t.peer, 7, MPI_COMM_WORLD,
                &req.back());
    }
    for (auto const& t : g.sends) {
      req.emplace_back();
      MPI_Isend(t.send, static_cast<int>(t.bytes), MPI_BYTE, t.peer, 7, MPI_COMM_WORLD,
                &req.back());
    }
    std::vector<MPI_Status> st(req.size());
    if (MPI_Waitall(static_cast<int>(req.size()), req.data(), st.data()) != MPI_SUCCESS)
      r = ncclSystemError;
    // NCCL pairs a send with a receive of the same size; MPI accepts a shorter message.
    for (std::size_t i = 0; r == ncclSuccess && i < g.recvs.size(); ++i) {
      int got = 0;
      MPI_Get_count(&st[i], MPI_BYTE, &got);
      if (static_cast<std::size_t>(got) != g.recvs[i].bytes) {
        std::fprintf(stderr, "moe_emu: ncclRecv of %zu bytes from rank %d got %d\n",
                     g.recvs[i].bytes, g.recvs[i].peer, got);
        r = ncclInvalidUsage;
      }
    }
#else
    r = ncclInvalidUsage;
#endif
  }
  g.sends.clear();
  g.recvs.clear();
  return r;
}
inline ncclResult_t ncclSend(void const* buf, std::size_t count, ncclDataType_t t, int peer,
                             ncclComm_t comm, cudaStream_t) {
  auto& g = moe_emu::nccl_state();
  if (comm == nullptr || peer < 0 || peer >= comm->ranks) return ncclInvalidArgument;
  if (g.depth == 0) return ncclInvalidUsage;  // moe groups every send and receive
  g.sends.push_back({buf, nullptr, count * moe_emu::nccl_size(t), peer, comm->ranks});
  return ncclSuccess;
}
inline ncclResult_t ncclRecv(void* buf, std::size_t count, ncclDataType_t t, int peer,
                             ncclComm_t comm, cudaStream_t) {
  auto& g = moe_emu::nccl_state();
  if (comm == nullptr || peer < 0 || peer >= comm->ranks) return ncclInvalidArgument;
  if (g.depth == 0) return ncclInvalidUsage;
  g.recvs.push_back({nullptr, buf, count * moe_emu::nccl_size(t), peer, comm->ranks});
  return ncclSuccess;
}
inline ncclResult_t ncclAllReduce(void const* send, void* recv, std::size_t count, ncclDataType_t t,
                                  ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (comm->ranks == 1) {
    if (send != recv && count > 0) std::memmove(recv, send, count * moe_emu::nccl_size(t));
    return ncclSuccess;
  }
#if defined(MOE_EMU_WITH_MPI)
  MPI_Datatype const type = t == ncclChar      ? MPI_CHAR
                            : t == ncclInt32   ? MPI_INT32_T
                            : t == ncclInt64   ? MPI_INT64_T
                            : t == ncclFloat32 ? MPI_FLOAT
                                               : MPI_DOUBLE;
  MPI_Op const mop = op == ncclSum   ? MPI_SUM
                     : op == ncclMax ? MPI_MAX
                     : op == ncclMin ? MPI_MIN
                                     : MPI_PROD;
  int const rc = MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, static_cast<int>(count),
                               type, mop, MPI_COMM_WORLD);
  return rc == MPI_SUCCESS ? ncclSuccess : ncclSystemError;
#else
  (void)op;
  return ncclInvalidUsage;
#endif
}
