// SPDX-License-Identifier: Apache-2.0
// Fuzz target: plan, permute, combine, combine_backward and permute_backward on the host. The
// fuzzer picks T, K, E, C, tile_rows, the layout, source_rows (sometimes too small) and every
// route's expert and slot — often out of range, repeated or leaving holes. plan must accept
// exactly the routes a reference written here accepts (expert in [0, E), slot in [-1, C), slots
// of an expert dense from 0 in the compact layout, no slot taken twice) and otherwise name the
// lowest bad route (bad_route, and in the message), which must break the contract itself
// (tests/host/plan_contract.hpp); when it accepts: offsets monotone from 0 with each expert's
// block of the expected size, row_of and source_of inverse, padding rows -1. Then permute,
// combine and the two backward ops on the plan, in fp64, against float64 loops written here
// (exact: sums of at most K products of small integers).
#include <algorithm>  // std::min
#include <cstdint>    // std::int32_t, std::int64_t
#include <cstdio>     // std::snprintf
#include <cstring>    // std::strstr
#include <map>        // std::map
#include <utility>    // std::pair
#include <vector>     // std::vector

#include "../host/plan_contract.hpp"  // moe::test::breaks_slot_contract: one route, brute force
#include "fuzz.hpp"
#include "moe/permute.hpp"  // permute, combine, combine_backward, permute_backward
#include "moe/plan.hpp"     // the op under test

namespace {
using moe::fuzz::reader;
using sz = std::size_t;
sz at(std::int64_t i) {
  return static_cast<sz>(i);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  reader in(data, size);
  std::int64_t const T = in.range(-1, 12);
  std::int32_t const K = static_cast<std::int32_t>(in.range(0, 5));
  std::int32_t const E = static_cast<std::int32_t>(in.range(0, 6));
  std::int64_t const C = in.range(-1, 8);
  std::int32_t const tile = static_cast<std::int32_t>(in.range(0, 4));
  auto const layout =
      in.byte() % 5 == 0 ? moe::plan_layout::capacity_padded : moe::plan_layout::compact;
  std::int64_t const bound = moe::plan_rows_bound(T, K, E, C, layout, tile);
  std::int64_t const rows =
      std::max<std::int64_t>(0, bound + in.range(-2, 3) * (in.flag() ? 1 : 0));
  std::int64_t const TK = T > 0 && K > 0 ? T * K : 0;
  std::vector<std::int32_t> expert(at(TK)), slot(at(TK)), row_of(at(TK), -9),
      source_of(at(rows) + 1, -9);
  std::vector<std::int64_t> offsets(at(std::max(E, 0)) + 1, -9);
  for (std::int64_t r = 0; r < TK; ++r) {
    std::uint8_t const b = in.byte();
    expert[at(r)] = b < 20 ? static_cast<std::int32_t>(in.range(-3, E + 3))
                           : static_cast<std::int32_t>(b % std::max(E, 1));
    std::uint8_t const c = in.byte();
    slot[at(r)] = c < 40   ? static_cast<std::int32_t>(in.range(-3, C + 3))
                  : c < 80 ? -1
                           : static_cast<std::int32_t>(c % std::max<std::int64_t>(C, 1));
  }
  std::int64_t bad_route = -9;
  moe::plan_args const a{.layout = layout,
                         .tokens = T,
                         .top_k = K,
                         .experts = E,
                         .capacity = C,
                         .tile_rows = tile,
                         .expert = expert.data(),
                         .slot = slot.data(),
                         .offsets = offsets.data(),
                         .row_of = row_of.data(),
                         .source_of = source_of.data(),
                         .source_rows = rows,
                         .bad_route = &bad_route};
  moe::status const s = moe::plan(moe::host, a);
  bool const args_ok = T >= 0 && K >= 1 && E >= 1 && C >= 0 && tile >= 1 && rows >= bound;
  if (!args_ok) {
    FUZZ_CHECK(!s.ok() && s.message()[0] != '\0', "plan accepted invalid sizes");
    return 0;
  }
  // Reference: the lowest route that breaks the contract, or -1.
  std::vector<std::int64_t> kept(at(E), 0);
  auto in_range = [&](std::int64_t r) {
    return expert[at(r)] >= 0 && expert[at(r)] < E && slot[at(r)] >= -1 && slot[at(r)] < C;
  };
  for (std::int64_t r = 0; r < TK; ++r)
    if (in_range(r) && slot[at(r)] >= 0) ++kept[at(expert[at(r)])];
  std::int64_t bad = -1;
  std::map<std::pair<std::int32_t, std::int32_t>, std::int64_t> first_taker;
  for (std::int64_t r = 0; r < TK; ++r) {
    bool wrong = !in_range(r);
    if (!wrong && slot[at(r)] >= 0) {
      std::int32_t const e = expert[at(r)], sl = slot[at(r)];
      if (layout == moe::plan_layout::compact && sl >= kept[at(e)]) {
        wrong = true;
      } else {
        auto const it = first_taker.find({e, sl});
        if (it != first_taker.end())
          bad = bad < 0 ? it->second : std::min(bad, it->second);
        else
          first_taker[{e, sl}] = r;
      }
    }
    if (wrong) bad = bad < 0 ? r : std::min(bad, r);
  }
  if (!s.ok()) {
    FUZZ_CHECK(bad >= 0, "plan refused valid routes: %s", s.message());
    // bad_route is exactly the lowest route that breaks the contract — a route that breaks it
    // itself (checked on its own, by brute force), never a valid route of another expert — and
    // the message names it.
    FUZZ_CHECK(bad_route == bad, "bad_route %lld, reference %lld (%s)",
               static_cast<long long>(bad_route), static_cast<long long>(bad), s.message());
    FUZZ_CHECK(moe::test::breaks_slot_contract(expert, slot, E, C, layout, at(bad_route)),
               "bad_route %lld breaks nothing (%s)", static_cast<long long>(bad_route),
               s.message());
    char names[64];
    std::snprintf(names, sizeof names, "[t=%lld, k=%d]", static_cast<long long>(bad_route / K),
                  static_cast<int>(bad_route % K));
    FUZZ_CHECK(std::strstr(s.message(), names) != nullptr, "message does not name %s: %s", names,
               s.message());
    return 0;
  }
  FUZZ_CHECK(bad < 0, "plan accepted bad route %lld", static_cast<long long>(bad));
  FUZZ_CHECK(bad_route == -1, "bad_route %lld on success", static_cast<long long>(bad_route));
  FUZZ_CHECK(offsets[0] == 0, "offsets[0] = %lld", static_cast<long long>(offsets[0]));
  for (std::int32_t e = 0; e < E; ++e) {
    std::int64_t const block =
        layout == moe::plan_layout::capacity_padded ? C : (kept[at(e)] + tile - 1) / tile * tile;
    FUZZ_CHECK(offsets[at(e) + 1] - offsets[at(e)] == block, "expert %d: block %lld, expected %lld",
               e, static_cast<long long>(offsets[at(e) + 1] - offsets[at(e)]),
               static_cast<long long>(block));
  }
  FUZZ_CHECK(offsets[at(E)] <= rows, "offsets[E] = %lld > rows %lld",
             static_cast<long long>(offsets[at(E)]), static_cast<long long>(rows));
  FUZZ_CHECK(source_of[at(rows)] == -9, "source_of written past source_rows");
  for (std::int64_t r = 0; r < TK; ++r) {
    std::int32_t const row = row_of[at(r)];
    if (slot[at(r)] < 0) {
      FUZZ_CHECK(row == -1, "dropped route %lld has row %d", static_cast<long long>(r), row);
    } else {
      FUZZ_CHECK(row == offsets[at(expert[at(r)])] + slot[at(r)] && source_of[at(row)] == r,
                 "route %lld: row %d", static_cast<long long>(r), row);
    }
  }
  for (std::int64_t row = 0; row < rows; ++row) {
    std::int32_t const r = source_of[at(row)];
    FUZZ_CHECK(r == -1 || (r >= 0 && r < TK && row_of[at(r)] == row), "source_of[%lld] = %d",
               static_cast<long long>(row), r);
  }

  // The data movement on this plan, fp64, H from the input.
  std::int64_t const H = in.range(1, 5);
  std::vector<double> x(at(T * H)), o(at(rows * H)), dy(at(T * H)), out(at(rows * H), -9.0),
      y(at(T * H), -9.0), d_o(at(rows * H), -9.0), dx(at(T * H), -9.0);
  std::vector<float> w(at(TK)), dw(at(TK), -9.0f);
  for (auto& v : x) v = static_cast<double>(in.range(-8, 8));
  for (auto& v : o) v = static_cast<double>(in.range(-8, 8));
  for (auto& v : dy) v = static_cast<double>(in.range(-8, 8));
  for (auto& v : w) v = static_cast<float>(in.range(-4, 4)) / 4.0f;
  FUZZ_CHECK(moe::permute(moe::host, moe::permute_args<double>{.x = x.data(),
                                                               .source_of = source_of.data(),
                                                               .out = out.data(),
                                                               .tokens = T,
                                                               .hidden = H,
                                                               .rows = rows,
                                                               .top_k = K})
                 .ok(),
             "permute");
  FUZZ_CHECK(moe::combine(moe::host, moe::combine_args<double>{.o = o.data(),
                                                               .row_of = row_of.data(),
                                                               .weight = w.data(),
                                                               .y = y.data(),
                                                               .tokens = T,
                                                               .hidden = H,
                                                               .rows = rows,
                                                               .top_k = K})
                 .ok(),
             "combine");
  FUZZ_CHECK(moe::combine_backward(moe::host,
                                   moe::combine_backward_args<double>{.dy = dy.data(),
                                                                      .o = o.data(),
                                                                      .row_of = row_of.data(),
                                                                      .source_of = source_of.data(),
                                                                      .weight = w.data(),
                                                                      .d_o = d_o.data(),
                                                                      .d_weight = dw.data(),
                                                                      .tokens = T,
                                                                      .hidden = H,
                                                                      .rows = rows,
                                                                      .top_k = K})
                 .ok(),
             "combine_backward");
  FUZZ_CHECK(
      moe::permute_backward(moe::host, moe::permute_backward_args<double>{.d_out = o.data(),
                                                                          .row_of = row_of.data(),
                                                                          .dx = dx.data(),
                                                                          .tokens = T,
                                                                          .hidden = H,
                                                                          .rows = rows,
                                                                          .top_k = K})
          .ok(),
      "permute_backward");
  for (std::int64_t row = 0; row < rows; ++row) {
    std::int32_t const r = source_of[at(row)];
    for (std::int64_t h = 0; h < H; ++h) {
      double const want = r < 0 ? 0.0 : x[at(r / K * H + h)];
      FUZZ_CHECK(out[at(row * H + h)] == want, "permute row %lld", static_cast<long long>(row));
      double const want_d = r < 0 ? 0.0 : static_cast<double>(w[at(r)]) * dy[at(r / K * H + h)];
      FUZZ_CHECK(d_o[at(row * H + h)] == want_d, "combine_backward row %lld",
                 static_cast<long long>(row));
    }
  }
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < H; ++h) {
      double sy = 0, sx = 0;
      for (std::int32_t k = 0; k < K; ++k) {
        std::int32_t const row = row_of[at(t * K + k)];
        if (row < 0) continue;
        sy += static_cast<double>(w[at(t * K + k)]) * o[at(row * H + h)];
        sx += o[at(row * H + h)];
      }
      FUZZ_CHECK(y[at(t * H + h)] == sy, "combine token %lld", static_cast<long long>(t));
      FUZZ_CHECK(dx[at(t * H + h)] == sx, "permute_backward token %lld", static_cast<long long>(t));
    }
  for (std::int64_t r = 0; r < TK; ++r) {
    std::int32_t const row = row_of[at(r)];
    double d = 0;
    for (std::int64_t h = 0; row >= 0 && h < H; ++h)
      d += dy[at(r / K * H + h)] * o[at(row * H + h)];
    FUZZ_CHECK(static_cast<double>(dw[at(r)]) == static_cast<double>(static_cast<float>(d)),
               "d_weight %lld: %g vs %g", static_cast<long long>(r), static_cast<double>(dw[at(r)]),
               d);
  }
  return 0;
}
