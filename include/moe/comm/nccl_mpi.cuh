// SPDX-License-Identifier: Apache-2.0
// Bootstrapping the NCCL communicator through MPI (link moe::nccl and moe::mpi): rank 0 of an
// MPI communicator makes NCCL's unique id, MPI_Bcast hands it to the others, and every rank
// joins the NCCL group of the same ranks in the same order. Collective over the MPI
// communicator; call it after choosing this rank's GPU (cudaSetDevice).
#pragma once

#include <mpi.h>
#include <nccl.h>

#include "moe/comm/mpi.hpp"   // moe::comm::mpi (its error codes as statuses)
#include "moe/comm/nccl.cuh"  // moe::comm::nccl

namespace moe::comm {

/// `out` joins the NCCL group of the ranks of `group` (rank r of `group` is NCCL rank r).
/// Every MPI or NCCL failure is a status with the native code; if rank 0 cannot make the id,
/// every rank gets an error (a zeroed id is broadcast with the failure flagged) instead of
/// waiting in NCCL's initialisation.
[[nodiscard]] inline status nccl_from_mpi(mpi const& group, nccl& out) noexcept {
  struct message {
    ncclUniqueId id;
    int ok;
  } m{};
  status made{};
  if (group.rank() == 0) {
    made = nccl::unique_id(m.id);
    m.ok = made.ok() ? 1 : 0;
  }
  MOE_TRY(mpi::check(MPI_Bcast(&m, static_cast<int>(sizeof m), MPI_BYTE, 0, group.handle()),
                     "MPI_Bcast (NCCL unique id)"));
  if (m.ok == 0) {
    if (!made.ok()) return made;
    return status::error(errc::nccl_error,
                         "comm::nccl_from_mpi: rank 0 could not make NCCL's unique id");
  }
  return out.init(m.id, group.size(), group.rank());
}

}  // namespace moe::comm
