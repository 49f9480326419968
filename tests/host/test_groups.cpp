// SPDX-License-Identifier: Apache-2.0
// Expert placement and process groups (moe/comm/groups.hpp): every expert has exactly one
// (rank, local) place and back; EP groups are consecutive blocks of R ranks and EDP groups
// the same position across blocks, checked exhaustively for small worlds against a direct
// construction; the documented example; bad sizes get a status naming the argument.
#include <doctest/doctest.h>

#include <cstring>  // std::strstr
#include <set>      // std::set
#include <utility>  // std::pair

#include "moe/comm/groups.hpp"

TEST_CASE("groups: placement is a bijection between experts and (rank, local)") {
  for (int R : {1, 2, 4, 8})
    for (int E : {8, 16, 64}) {
      std::set<std::pair<int, int>> seen;
      for (int e = 0; e < E; ++e) {
        auto const p = moe::comm::place_of(e, E, R);
        CHECK(p.rank >= 0);
        CHECK(p.rank < R);
        CHECK(p.local < E / R);
        CHECK(moe::comm::global_expert(p.rank, p.local, E, R) == e);
        seen.insert({p.rank, p.local});
      }
      CHECK(static_cast<int>(seen.size()) == E);
    }
}

TEST_CASE("groups: EP blocks and EDP columns, exhaustively for small worlds") {
  for (int world = 1; world <= 12; ++world)
    for (int R = 1; R <= world; ++R) {
      if (world % R != 0) continue;
      std::set<std::pair<int, int>> ep_slots, edp_slots;
      for (int w = 0; w < world; ++w) {
        moe::comm::rank_groups g;
        REQUIRE(moe::comm::groups_of(w, world, R, g).ok());
        // Direct construction: block b = [bR, bR + R); column c = {c, c + R, c + 2R, ...}.
        int const block = w / R, column = w - block * R;
        CHECK(g.ep.group == block);
        CHECK(g.ep.position == column);
        CHECK(g.edp.group == column);
        CHECK(g.edp.position == block);
        ep_slots.insert({g.ep.group, g.ep.position});
        edp_slots.insert({g.edp.group, g.edp.position});
      }
      CHECK(static_cast<int>(ep_slots.size()) == world);
      CHECK(static_cast<int>(edp_slots.size()) == world);
    }
}

TEST_CASE("groups: the documented example and bad sizes") {
  moe::comm::rank_groups g;
  REQUIRE(moe::comm::groups_of(6, 8, 4, g).ok());
  CHECK(g.ep.group == 1);
  CHECK(g.ep.position == 2);
  CHECK(g.edp.group == 2);
  CHECK(g.edp.position == 1);
  auto const p = moe::comm::place_of(9, 16, 4);  // experts 8..11 on position 2
  CHECK(p.rank == 2);
  CHECK(p.local == 1);
  moe::status s = moe::comm::groups_of(0, 6, 4, g);
  CHECK(s.code() == moe::errc::invalid_argument);
  CHECK(std::strstr(s.message(), "ep_size") != nullptr);
  s = moe::comm::groups_of(8, 8, 4, g);
  CHECK(std::strstr(s.message(), "rank") != nullptr);
}
