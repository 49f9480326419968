// SPDX-License-Identifier: Apache-2.0
// Expert placement and process groups, as pure functions of sizes (no communication library):
//
//   placement   global expert e lives on EP rank ⌊e / E_l⌋ as its local expert e mod E_l
//   EP groups   consecutive blocks of R world ranks (DeepSpeed's default): world rank w is in
//               EP group ⌊w / R⌋ at position w mod R
//   EDP groups  the ranks at the same position in every block hold the same experts (replicas),
//               so expert gradients are all-reduced over them: world rank w is in expert-data-
//               parallel group w mod R at position ⌊w / R⌋
//
// Example: world size 8, R = 4 → EP groups {0,1,2,3} and {4,5,6,7}; EDP groups {0,4}, {1,5},
// {2,6}, {3,7}. With E = 16, E_l = 4: experts 8..11 live on positions 2, i.e. world ranks 2
// and 6. comm::mpi::split (moe/comm/mpi.hpp) builds the MPI communicators from these colours.
#pragma once

#include <cstdint>  // std::int32_t

#include "moe/status.hpp"  // moe::status

namespace moe::comm {

/// Where a global expert lives.
struct expert_place {
  std::int32_t rank = 0;   ///< EP rank holding it
  std::int32_t local = 0;  ///< its index among that rank's E_l experts
};

/// Global expert e of E over R ranks (R divides E).
constexpr expert_place place_of(std::int32_t expert, std::int32_t experts, std::int32_t ep_size) noexcept {
  std::int32_t const per = experts / ep_size;
  return {expert / per, expert % per};
}

/// The global index of local expert j of EP rank r.
constexpr std::int32_t global_expert(std::int32_t rank, std::int32_t local, std::int32_t experts,
                                     std::int32_t ep_size) noexcept {
  return rank * (experts / ep_size) + local;
}

/// A rank's group (its colour for MPI_Comm_split) and its position in it (the key).
struct group_slot {
  std::int32_t group = 0;
  std::int32_t position = 0;
};

/// The two groups of one world rank.
struct rank_groups {
  group_slot ep;   ///< expert-parallel group: consecutive blocks of R ranks
  group_slot edp;  ///< expert-data-parallel group: the same position in every block
};

/// Groups of world rank `rank` of `world` ranks with expert-parallel size R. R must divide
/// the world size.
inline status groups_of(std::int32_t rank, std::int32_t world, std::int32_t ep_size,
                        rank_groups& out) noexcept {
  if (world < 1 || ep_size < 1 || world % ep_size != 0)
    return status::error(errc::invalid_argument,
                         "groups_of: ep_size: expected R >= 1 dividing the world size %d, got %d",
                         world, ep_size);
  if (rank < 0 || rank >= world)
    return status::error(errc::invalid_argument,
                         "groups_of: rank: expected 0 <= rank < %d, got %d", world, rank);
  out.ep = {rank / ep_size, rank % ep_size};
  out.edp = {rank % ep_size, rank / ep_size};
  return {};
}

}  // namespace moe::comm
