// SPDX-License-Identifier: Apache-2.0
// plan, permute, unpermute/combine, combine_backward and permute_backward on the host backend,
// against references written here from the definitions: the plan by sorting the kept routes on
// (expert, slot) and numbering rows in that order; the tensor ops in float64 from the stored
// values. Routes are random (fresh seeds from std::random_device, printed on failure), in both
// layouts, with tile padding, drops and the edge cases of the issue; then determinism, the
// permute→unpermute identity, and every bad-input status.
//
// Tolerances (u_T: unit roundoff of the stored type — fp64 2^-53, fp32 2^-24, fp16 2^-11,
// bf16 2^-8; u_A: of the accumulator — 2^-53 for fp64 tensors, else 2^-24; fp16 adds 2^-25
// absolute for its subnormals):
//   permute                 bitwise
//   combine                 |y - ref|   <= u_T·|ref| + (K + 1)·u_A·Σ_k|w·o|
//   permute_backward        |dx - ref|  <= u_T·|ref| + (K + 1)·u_A·Σ_k|d|
//   combine_backward d_o    |d_o - ref| <= (u_T + u_A)·|ref|
//   combine_backward d_w    |d_w - ref| <= 2^-24·|ref| + (H + 1)·u_A·Σ_h|dy·o|
#include <doctest/doctest.h>

#include "common.hpp"         // moe::test helpers: seeds, random tensors, rounding facts
#include "plan_contract.hpp"  // moe::test::breaks_slot_contract, lowest_slot_contract_break

#include <algorithm>    // std::sort, std::shuffle, std::min
#include <cmath>        // std::fabs, std::ldexp
#include <cstdint>      // std::int32_t, std::int64_t, std::uint64_t
#include <cstring>      // std::memcmp, std::strstr
#include <numeric>      // std::iota
#include <random>       // std::mt19937_64, std::random_device
#include <string>       // std::string
#include <tuple>        // std::tuple
#include <type_traits>  // std::is_same_v
#include <vector>       // std::vector

#include "moe/permute.hpp"
#include "moe/plan.hpp"

namespace {

using moe::test::fresh_seed;
using moe::test::same_bits;

using i32 = std::int32_t;
using i64 = std::int64_t;

// ---- routes -----------------------------------------------------------------------------------

struct routes {
  i64 tokens = 0;
  i32 top_k = 1;
  i32 experts = 1;
  i64 capacity = 0;
  std::vector<i32> expert, slot;
  std::vector<float> weight;
};

struct route_options {
  bool shuffle_slots = false;  // slots of an expert's survivors in random order (still 0..kept-1)
  i32 skip_expert = -1;        // this expert gets no route
  i32 only_expert = -1;        // every route goes here (K = 1)
};

// K distinct experts per token, slots by position with all first choices before second
// choices, routes past C dropped (slot -1). Dropped routes keep a non-zero weight, to prove
// that the ops ignore it.
routes make_routes(std::mt19937_64& rng, i64 tokens, i32 top_k, i32 experts, i64 capacity,
                   route_options opt = {}) {
  routes r{tokens, top_k, experts, capacity, {}, {}, {}};
  auto const n = static_cast<std::size_t>(tokens * top_k);
  r.expert.resize(n);
  r.slot.resize(n);
  r.weight.resize(n);
  std::uniform_real_distribution<float> w(0.0f, 1.0f);
  std::vector<i32> pool(static_cast<std::size_t>(experts));
  for (i64 t = 0; t < tokens; ++t) {
    std::iota(pool.begin(), pool.end(), 0);
    if (opt.skip_expert >= 0)
      std::swap(pool[static_cast<std::size_t>(opt.skip_expert)], pool.back());
    auto const choices = static_cast<i64>(pool.size()) - (opt.skip_expert >= 0 ? 1 : 0);
    for (i32 k = 0; k < top_k; ++k) {
      std::uniform_int_distribution<i64> pick(k, choices - 1);
      std::swap(pool[static_cast<std::size_t>(k)], pool[static_cast<std::size_t>(pick(rng))]);
      std::size_t const i = static_cast<std::size_t>(t * top_k + k);
      r.expert[i] = opt.only_expert >= 0 ? opt.only_expert : pool[static_cast<std::size_t>(k)];
      r.weight[i] = w(rng);
    }
  }
  std::vector<i64> count(static_cast<std::size_t>(experts), 0);
  for (i32 k = 0; k < top_k; ++k)
    for (i64 t = 0; t < tokens; ++t) {
      std::size_t const i = static_cast<std::size_t>(t * top_k + k);
      i64& c = count[static_cast<std::size_t>(r.expert[i])];
      r.slot[i] = c < capacity ? static_cast<i32>(c++) : -1;
    }
  if (opt.shuffle_slots) {
    for (i32 e = 0; e < experts; ++e) {
      std::vector<i32> s(static_cast<std::size_t>(count[static_cast<std::size_t>(e)]));
      std::iota(s.begin(), s.end(), 0);
      std::shuffle(s.begin(), s.end(), rng);
      std::size_t next = 0;
      for (std::size_t i = 0; i < n; ++i)
        if (r.expert[i] == e && r.slot[i] >= 0) r.slot[i] = s[next++];
    }
  }
  return r;
}

// ---- the reference plan: sort, then number --------------------------------------------------

struct plan_result {
  std::vector<i64> offsets;
  std::vector<i32> row_of, source_of;
};

plan_result reference_plan(routes const& r, moe::plan_layout layout, i32 tile, i64 source_rows) {
  auto const n = static_cast<i64>(r.expert.size());
  plan_result p;
  p.offsets.assign(static_cast<std::size_t>(r.experts) + 1, 0);
  p.row_of.assign(static_cast<std::size_t>(n), -1);
  p.source_of.assign(static_cast<std::size_t>(source_rows), -1);
  std::vector<i64> kept;
  for (i64 i = 0; i < n; ++i)
    if (r.slot[static_cast<std::size_t>(i)] >= 0) kept.push_back(i);
  std::sort(kept.begin(), kept.end(), [&](i64 a, i64 b) {
    auto const ea = r.expert[static_cast<std::size_t>(a)],
               eb = r.expert[static_cast<std::size_t>(b)];
    return ea != eb ? ea < eb
                    : r.slot[static_cast<std::size_t>(a)] < r.slot[static_cast<std::size_t>(b)];
  });
  i64 row = 0;
  std::size_t next = 0;
  for (i32 e = 0; e < r.experts; ++e) {
    p.offsets[static_cast<std::size_t>(e)] = row;
    i64 const start = row;
    for (; next < kept.size() && r.expert[static_cast<std::size_t>(kept[next])] == e; ++next) {
      i64 const i = kept[next];
      i64 const at =
          layout == moe::plan_layout::compact ? row++ : start + r.slot[static_cast<std::size_t>(i)];
      p.row_of[static_cast<std::size_t>(i)] = static_cast<i32>(at);
      p.source_of[static_cast<std::size_t>(at)] = static_cast<i32>(i);
    }
    if (layout == moe::plan_layout::compact)
      while ((row - start) % tile != 0) ++row;
    else
      row = start + r.capacity;
  }
  p.offsets[static_cast<std::size_t>(r.experts)] = row;
  return p;
}

struct built_plan : plan_result {
  i64 rows = 0;  // source_rows: the bound
  moe::status st;
};

built_plan run_plan(routes const& r, moe::plan_layout layout, i32 tile, i64 extra_rows = 0) {
  built_plan p;
  p.rows =
      moe::plan_rows_bound(r.tokens, r.top_k, r.experts, r.capacity, layout, tile) + extra_rows;
  p.offsets.assign(static_cast<std::size_t>(r.experts) + 1, -7);
  p.row_of.assign(r.expert.size(), -7);
  p.source_of.assign(static_cast<std::size_t>(p.rows), -7);
  i64 bad = -7;
  p.st = moe::plan(moe::host, {.layout = layout,
                               .tokens = r.tokens,
                               .top_k = r.top_k,
                               .experts = r.experts,
                               .capacity = r.capacity,
                               .tile_rows = tile,
                               .expert = r.expert.data(),
                               .slot = r.slot.data(),
                               .offsets = p.offsets.data(),
                               .row_of = p.row_of.data(),
                               .source_of = p.source_of.data(),
                               .source_rows = p.rows,
                               .bad_route = &bad});
  if (p.st.ok()) CHECK(bad == -1);
  return p;
}

void check_plan(routes const& r, moe::plan_layout layout, i32 tile) {
  CAPTURE(r.tokens);
  CAPTURE(r.top_k);
  CAPTURE(r.experts);
  CAPTURE(r.capacity);
  CAPTURE(tile);
  INFO("layout " << moe::to_string(layout));
  built_plan const got = run_plan(r, layout, tile);
  REQUIRE_MESSAGE(got.st.ok(), got.st.message());
  plan_result const want = reference_plan(r, layout, tile, got.rows);
  CHECK(got.offsets == want.offsets);
  CHECK(got.row_of == want.row_of);
  CHECK(got.source_of == want.source_of);
  CHECK(got.offsets.back() <= got.rows);
  // Per-rank offsets: the experts of a rank are contiguous.
  for (i32 ranks = 1; ranks <= r.experts; ++ranks) {
    if (r.experts % ranks != 0) continue;
    std::vector<i64> out(static_cast<std::size_t>(ranks) + 1, -1);
    REQUIRE(moe::rank_offsets(moe::host, {.offsets = got.offsets.data(),
                                          .experts = r.experts,
                                          .ep_size = ranks,
                                          .out = out.data()})
                .ok());
    for (i32 q = 0; q <= ranks; ++q)
      CHECK(out[static_cast<std::size_t>(q)] ==
            want.offsets[static_cast<std::size_t>(q * (r.experts / ranks))]);
  }
}

// ---- tensors and tolerances -----------------------------------------------------------------

template <class T>
double unit_roundoff() {
  if constexpr (std::is_same_v<T, double>) return std::ldexp(1.0, -53);
  if constexpr (std::is_same_v<T, float>) return std::ldexp(1.0, -24);
  if constexpr (std::is_same_v<T, moe::fp16>) return std::ldexp(1.0, -11);
  return std::ldexp(1.0, -8);
}
template <class T>
double accum_roundoff() {
  return std::is_same_v<T, double> ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
}
template <class T>
double absolute_floor() {
  return std::is_same_v<T, moe::fp16> ? std::ldexp(1.0, -25) : 0.0;
}

template <class T>
double as_double(T v) {
  return static_cast<double>(moe::to_float(v));
}

template <class T>
std::vector<T> random_tensor(std::mt19937_64& rng, i64 n) {
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = moe::from_float<T>(d(rng));
  if (n > 0) v[0] = moe::from_float<T>(-0.0f);  // the sign of zero must survive a copy
  return v;
}

// Forward and backward of every op on one plan, against float64.
template <class T>
void check_ops(std::mt19937_64& rng, routes const& r, built_plan const& p, i64 hidden) {
  CAPTURE(hidden);
  INFO("type " << moe::storage_name<T>());
  double const u = unit_roundoff<T>(), ua = accum_roundoff<T>(), floor = absolute_floor<T>();
  i64 const T_ = r.tokens, H = hidden, K = r.top_k, rows = p.rows;
  auto const x = random_tensor<T>(rng, T_ * H);
  auto const o = random_tensor<T>(rng, rows * H);
  auto const dy = random_tensor<T>(rng, T_ * H);

  // permute: bitwise
  std::vector<T> out(static_cast<std::size_t>(rows * H), moe::from_float<T>(7.0f));
  REQUIRE(moe::permute(moe::host, moe::permute_args<T>{.x = x.data(),
                                                       .source_of = p.source_of.data(),
                                                       .out = out.data(),
                                                       .tokens = T_,
                                                       .hidden = H,
                                                       .rows = rows,
                                                       .top_k = r.top_k})
              .ok());
  std::vector<T> want_out(out.size(), moe::from_float<T>(0.0f));
  for (i64 row = 0; row < rows; ++row) {
    i32 const s = p.source_of[static_cast<std::size_t>(row)];
    if (s >= 0)
      for (i64 h = 0; h < H; ++h)
        want_out[static_cast<std::size_t>(row * H + h)] =
            x[static_cast<std::size_t>(s / K * H + h)];
  }
  CHECK(same_bits(out, want_out));

  // combine
  std::vector<T> y(static_cast<std::size_t>(T_ * H), moe::from_float<T>(7.0f));
  REQUIRE(moe::unpermute(moe::host, moe::combine_args<T>{.o = o.data(),
                                                         .row_of = p.row_of.data(),
                                                         .weight = r.weight.data(),
                                                         .y = y.data(),
                                                         .tokens = T_,
                                                         .hidden = H,
                                                         .rows = rows,
                                                         .top_k = r.top_k})
              .ok());
  int bad = 0;
  for (i64 t = 0; t < T_; ++t)
    for (i64 h = 0; h < H; ++h) {
      double ref = 0, mag = 0;
      for (i64 k = 0; k < K; ++k) {
        i32 const row = p.row_of[static_cast<std::size_t>(t * K + k)];
        if (row < 0) continue;
        double const term = static_cast<double>(r.weight[static_cast<std::size_t>(t * K + k)]) *
                            as_double(o[static_cast<std::size_t>(row * H + h)]);
        ref += term;
        mag += std::fabs(term);
      }
      double const got = as_double(y[static_cast<std::size_t>(t * H + h)]);
      bad +=
          std::fabs(got - ref) > u * std::fabs(ref) + static_cast<double>(K + 1) * ua * mag + floor;
    }
  CHECK_MESSAGE(bad == 0, "combine: " << bad << " elements out of tolerance");

  // permute_backward (gradient of permute): gather-sum of the rows of o
  std::vector<T> dx(static_cast<std::size_t>(T_ * H), moe::from_float<T>(7.0f));
  REQUIRE(moe::permute_backward(moe::host, moe::permute_backward_args<T>{.d_out = o.data(),
                                                                         .row_of = p.row_of.data(),
                                                                         .dx = dx.data(),
                                                                         .tokens = T_,
                                                                         .hidden = H,
                                                                         .rows = rows,
                                                                         .top_k = r.top_k})
              .ok());
  bad = 0;
  for (i64 t = 0; t < T_; ++t)
    for (i64 h = 0; h < H; ++h) {
      double ref = 0, mag = 0;
      for (i64 k = 0; k < K; ++k) {
        i32 const row = p.row_of[static_cast<std::size_t>(t * K + k)];
        if (row < 0) continue;
        ref += as_double(o[static_cast<std::size_t>(row * H + h)]);
        mag += std::fabs(as_double(o[static_cast<std::size_t>(row * H + h)]));
      }
      double const got = as_double(dx[static_cast<std::size_t>(t * H + h)]);
      bad +=
          std::fabs(got - ref) > u * std::fabs(ref) + static_cast<double>(K + 1) * ua * mag + floor;
    }
  CHECK_MESSAGE(bad == 0, "permute_backward: " << bad << " elements out of tolerance");

  // combine_backward
  std::vector<T> d_o(static_cast<std::size_t>(rows * H), moe::from_float<T>(7.0f));
  std::vector<float> d_w(static_cast<std::size_t>(T_ * K), 7.0f);
  REQUIRE(moe::combine_backward(moe::host,
                                moe::combine_backward_args<T>{.dy = dy.data(),
                                                              .o = o.data(),
                                                              .row_of = p.row_of.data(),
                                                              .source_of = p.source_of.data(),
                                                              .weight = r.weight.data(),
                                                              .d_o = d_o.data(),
                                                              .d_weight = d_w.data(),
                                                              .tokens = T_,
                                                              .hidden = H,
                                                              .rows = rows,
                                                              .top_k = r.top_k})
              .ok());
  bad = 0;
  for (i64 row = 0; row < rows; ++row) {
    i32 const s = p.source_of[static_cast<std::size_t>(row)];
    for (i64 h = 0; h < H; ++h) {
      double const ref = s < 0 ? 0.0
                               : static_cast<double>(r.weight[static_cast<std::size_t>(s)]) *
                                     as_double(dy[static_cast<std::size_t>(s / K * H + h)]);
      double const got = as_double(d_o[static_cast<std::size_t>(row * H + h)]);
      bad += std::fabs(got - ref) > (u + ua) * std::fabs(ref) + floor;
    }
  }
  CHECK_MESSAGE(bad == 0, "combine_backward d_o: " << bad << " elements out of tolerance");
  bad = 0;
  for (i64 i = 0; i < T_ * K; ++i) {
    i32 const row = p.row_of[static_cast<std::size_t>(i)];
    double ref = 0, mag = 0;
    if (row >= 0)
      for (i64 h = 0; h < H; ++h) {
        double const term = as_double(dy[static_cast<std::size_t>(i / K * H + h)]) *
                            as_double(o[static_cast<std::size_t>(row * H + h)]);
        ref += term;
        mag += std::fabs(term);
      }
    double const got = d_w[static_cast<std::size_t>(i)];
    bad += std::fabs(got - ref) >
           std::ldexp(1.0, -24) * std::fabs(ref) + static_cast<double>(H + 1) * ua * mag;
    if (row < 0) bad += got != 0.0f;
  }
  CHECK_MESSAGE(bad == 0, "combine_backward d_weight: " << bad << " routes out of tolerance");
}

moe::plan_layout const layouts[] = {moe::plan_layout::compact, moe::plan_layout::capacity_padded};

bool contains(moe::status const& s, char const* text) {
  return std::strstr(s.message(), text) != nullptr;
}

}  // namespace

// ---- plan ------------------------------------------------------------------------------------

TEST_CASE("plan: random routes match the sorted reference, both layouts, with tiles") {
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 200; ++trial) {
    i32 const experts = std::uniform_int_distribution<i32>(1, 40)(rng);
    i32 const top_k = std::uniform_int_distribution<i32>(1, std::min(experts, 8))(rng);
    i64 const tokens = std::uniform_int_distribution<i64>(0, 300)(rng);
    // capacity from starved (many drops) to dropless
    i64 const fair = (tokens * top_k + experts - 1) / experts;
    i64 const capacity = std::uniform_int_distribution<i64>(0, 2 * fair + 2)(rng);
    bool const shuffle = trial % 2 == 1;
    routes const r = make_routes(rng, tokens, top_k, experts, capacity, {.shuffle_slots = shuffle});
    for (auto layout : layouts)
      for (i32 tile : {1, 3, 16}) check_plan(r, layout, tile);
  }
}

TEST_CASE("plan: edge cases") {
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  SUBCASE("an expert with no tokens") {
    routes const r = make_routes(rng, 100, 2, 8, 40, {.skip_expert = 3});
    for (auto layout : layouts) check_plan(r, layout, 8);
    built_plan const p = run_plan(r, moe::plan_layout::compact, 8);
    CHECK(p.offsets[3] == p.offsets[4]);
  }
  SUBCASE("all tokens on one expert, with and without drops") {
    for (i64 capacity : {i64{500}, i64{37}}) {
      routes const r = make_routes(rng, 200, 1, 6, capacity, {.only_expert = 4});
      for (auto layout : layouts) check_plan(r, layout, 16);
      built_plan const p = run_plan(r, moe::plan_layout::compact, 1);
      CHECK(p.offsets[4] == 0);
      CHECK(p.offsets[5] == std::min<i64>(200, capacity));
    }
  }
  SUBCASE("K = E") {
    routes const r = make_routes(rng, 50, 6, 6, 50, {.shuffle_slots = true});
    for (auto layout : layouts) check_plan(r, layout, 4);
  }
  SUBCASE("T not a multiple of the tile height") {
    routes const r = make_routes(rng, 37, 1, 1, 37);
    check_plan(r, moe::plan_layout::compact, 16);
    built_plan const p = run_plan(r, moe::plan_layout::compact, 16);
    CHECK(p.offsets[1] == 48);
    for (i64 row = 37; row < 48; ++row) CHECK(p.source_of[static_cast<std::size_t>(row)] == -1);
  }
  SUBCASE("T = 0") {
    for (auto layout : layouts) {
      routes const r = make_routes(rng, 0, 2, 4, 3);
      check_plan(r, layout, 8);
      built_plan const p = run_plan(r, layout, 8);
      CHECK(p.offsets.back() == (layout == moe::plan_layout::compact ? 0 : 12));
      // null [T, K] pointers are fine when T = 0
      std::vector<i64> offsets(5, -1);
      CHECK(moe::plan(moe::host, {.layout = moe::plan_layout::compact,
                                  .tokens = 0,
                                  .top_k = 2,
                                  .experts = 4,
                                  .capacity = 3,
                                  .offsets = offsets.data()})
                .ok());
      CHECK(offsets == std::vector<i64>(5, 0));
    }
  }
  SUBCASE("capacity_padded allows holes") {
    routes r{.tokens = 3,
             .top_k = 1,
             .experts = 2,
             .capacity = 4,
             .expert = {0, 1, 0},
             .slot = {3, 1, -1},
             .weight = {1, 1, 1}};
    check_plan(r, moe::plan_layout::capacity_padded, 1);
  }
  SUBCASE("the row bound is reached") {
    // E tokens each alone on its expert: one row, padded to a whole tile, per expert.
    routes r{.tokens = 5,
             .top_k = 1,
             .experts = 5,
             .capacity = 5,
             .expert = {0, 1, 2, 3, 4},
             .slot = {0, 0, 0, 0, 0},
             .weight = {1, 1, 1, 1, 1}};
    built_plan const p = run_plan(r, moe::plan_layout::compact, 8);
    REQUIRE(p.st.ok());
    CHECK(p.offsets.back() == p.rows);
    CHECK(p.rows == 40);
  }
}

TEST_CASE("plan_rows_bound: sizes and the config overload") {
  using moe::plan_layout;
  CHECK(moe::plan_rows_bound(100, 2, 8, 30, plan_layout::capacity_padded) == 240);
  CHECK(moe::plan_rows_bound(100, 2, 8, 30, plan_layout::compact) == 200);
  CHECK(moe::plan_rows_bound(100, 2, 8, 20, plan_layout::compact) == 160);
  // 160 kept + 8 experts · 15 padding rows, but never more than 8 · ⌈20/16⌉·16 = 256
  CHECK(moe::plan_rows_bound(100, 2, 8, 20, plan_layout::compact, 16) == 256);
  // C = 20 is whole tiles of 4: no expert can need padding beyond its C rows
  CHECK(moe::plan_rows_bound(100, 2, 8, 20, plan_layout::compact, 4) == 160);
  CHECK(moe::plan_rows_bound(100, 2, 8, 30, plan_layout::compact, 4) == 200 + 8 * 3);
  CHECK(moe::plan_rows_bound(2, 1, 8, 20, plan_layout::compact, 16) == 2 + 2 * 15);
  CHECK(moe::plan_rows_bound(0, 2, 8, 20, plan_layout::compact, 16) == 0);
  CHECK(moe::plan_rows_bound(-1, 2, 8, 20, plan_layout::compact) == 0);
  constexpr moe::config c{.experts = 8, .top_k = 2, .capacity_factor = {5, 4}};
  moe::problem const p{.tokens = 100, .hidden = 16, .ffn = 16};
  CHECK(moe::capacity<c>(p) == 32);
  CHECK(moe::plan_rows_bound<c>(p, plan_layout::capacity_padded) == 256);
  CHECK(moe::plan_rows_bound<c>(p, plan_layout::compact, 16) == 8 * 32);
  CHECK(moe::plan_rows_bound<c>(p, plan_layout::compact, 3) == 200 + 8 * 2);
}

TEST_CASE("plan: the result is the same bits every time") {
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  routes const r = make_routes(rng, 257, 3, 16, 40, {.shuffle_slots = true});
  for (auto layout : layouts) {
    built_plan const a = run_plan(r, layout, 8);
    built_plan const b = run_plan(r, layout, 8);
    CHECK(a.offsets == b.offsets);
    CHECK(a.row_of == b.row_of);
    CHECK(a.source_of == b.source_of);
  }
}

// ---- permute and friends ---------------------------------------------------------------------

TEST_CASE_TEMPLATE("dispatch ops vs float64, forward and backward", T, double, float, moe::bf16,
                   moe::fp16) {
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 36; ++trial) {
    i32 const experts = std::uniform_int_distribution<i32>(1, 12)(rng);
    i32 const top_k = std::uniform_int_distribution<i32>(1, std::min(experts, 4))(rng);
    i64 const tokens = std::uniform_int_distribution<i64>(0, 60)(rng);
    i64 const fair = (tokens * top_k + experts - 1) / experts;
    i64 const capacity = std::uniform_int_distribution<i64>(0, 2 * fair + 1)(rng);
    i64 const hidden = std::vector<i64>{1, 7, 8, 33, 64, 300}[static_cast<std::size_t>(trial % 6)];
    routes const r = make_routes(rng, tokens, top_k, experts, capacity, {.shuffle_slots = true});
    for (auto layout : layouts) {
      built_plan const p = run_plan(r, layout, trial % 3 == 0 ? 1 : 8);
      REQUIRE(p.st.ok());
      check_ops<T>(rng, r, p, hidden);
    }
  }
  SUBCASE("K = E, one expert empty, a fully dropped token") {
    routes r = make_routes(rng, 40, 3, 3, 40);
    routes s = make_routes(rng, 40, 1, 5, 40, {.skip_expert = 2});
    s.slot[7] = -1;  // token 7's only route dropped: y = 0
    // renumber the survivors of token 7's expert so that they hold slots 0..kept-1 again
    i32 const e7 = s.expert[7];
    i32 next = 0;
    for (std::size_t i = 0; i < s.slot.size(); ++i)
      if (s.expert[i] == e7 && s.slot[i] >= 0) s.slot[i] = next++;
    for (auto layout : layouts) {
      check_ops<T>(rng, r, run_plan(r, layout, 4), 24);
      built_plan const p = run_plan(s, layout, 4);
      REQUIRE_MESSAGE(p.st.ok(), p.st.message());
      check_ops<T>(rng, s, p, 24);
      auto const o = random_tensor<T>(rng, p.rows * 24);
      std::vector<T> y(40 * 24, moe::from_float<T>(7.0f));
      REQUIRE(moe::combine(moe::host, moe::combine_args<T>{.o = o.data(),
                                                           .row_of = p.row_of.data(),
                                                           .weight = s.weight.data(),
                                                           .y = y.data(),
                                                           .tokens = 40,
                                                           .hidden = 24,
                                                           .rows = p.rows,
                                                           .top_k = 1})
                  .ok());
      std::vector<T> const zeros(24, moe::from_float<T>(0.0f));  // +0, bit for bit
      CHECK(std::memcmp(y.data() + 7 * 24, zeros.data(), 24 * sizeof(T)) == 0);
    }
  }
}

TEST_CASE_TEMPLATE("permute then unpermute with K = 1 and unit weights is the identity, bitwise", T,
                   double, float, moe::bf16, moe::fp16) {
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  for (i64 hidden : {i64{1}, i64{13}, i64{64}, i64{520}}) {
    routes const r = make_routes(rng, 97, 1, 7, 97, {.shuffle_slots = true});
    for (auto layout : layouts) {
      built_plan const p = run_plan(r, layout, 16);
      REQUIRE(p.st.ok());
      auto x = random_tensor<T>(rng, 97 * hidden);
      x.back() = moe::from_float<T>(std::ldexp(1.0f, -20));  // small, subnormal in fp16
      std::vector<T> buf(static_cast<std::size_t>(p.rows * hidden));
      REQUIRE(moe::permute(moe::host, moe::permute_args<T>{.x = x.data(),
                                                           .source_of = p.source_of.data(),
                                                           .out = buf.data(),
                                                           .tokens = 97,
                                                           .hidden = hidden,
                                                           .rows = p.rows})
                  .ok());
      std::vector<float> const ones(97, 1.0f);
      for (float const* w : {static_cast<float const*>(nullptr), ones.data()}) {
        std::vector<T> y(x.size());
        REQUIRE(moe::unpermute(moe::host, moe::combine_args<T>{.o = buf.data(),
                                                               .row_of = p.row_of.data(),
                                                               .weight = w,
                                                               .y = y.data(),
                                                               .tokens = 97,
                                                               .hidden = hidden,
                                                               .rows = p.rows})
                    .ok());
        CHECK(same_bits(x, y));
      }
    }
  }
}

TEST_CASE("dispatch: a forward pass, as docs/dispatch.md shows it") {
  // 6 tokens, K = 2 of E = 4 experts, C = 3: the router's output (expert, slot, weight)
  std::int64_t const T = 6, H = 8, C = 3;
  std::int32_t const K = 2, E = 4;
  std::vector<std::int32_t> const expert{0, 1, 1, 2, 0, 1, 3, 0, 1, 2, 0, 3};
  std::vector<std::int32_t> const slot{0, 0, 1, 0, 1, 2, 0, 2, -1, 1, -1, 1};
  std::vector<float> const weight{.6f, .4f, .7f, .3f, .5f, .5f, .9f, .1f, .8f, .2f, 1.f, 0.f};
  std::vector<float> x(T * H, 1.0f), y(T * H);
  // [snippet dispatch_forward]
  // Size every buffer from the worst case: no read-back of the plan's row count is needed.
  std::int64_t const rows = moe::plan_rows_bound(T, K, E, C, moe::plan_layout::compact, 16);
  std::vector<std::int64_t> offsets(E + 1);  // rows of expert e: [offsets[e], offsets[e+1])
  std::vector<std::int32_t> row_of(T * K), source_of(rows);
  moe::status s = moe::plan(moe::host, {.layout = moe::plan_layout::compact,
                                        .tokens = T,
                                        .top_k = K,
                                        .experts = E,
                                        .capacity = C,
                                        .tile_rows = 16,
                                        .expert = expert.data(),
                                        .slot = slot.data(),
                                        .offsets = offsets.data(),
                                        .row_of = row_of.data(),
                                        .source_of = source_of.data(),
                                        .source_rows = rows});
  std::vector<float> buf(rows * H);  // [rows, H] the experts' input, grouped by expert
  if (s.ok())
    s = moe::permute(moe::host, moe::permute_args<float>{.x = x.data(),
                                                         .source_of = source_of.data(),
                                                         .out = buf.data(),
                                                         .tokens = T,
                                                         .hidden = H,
                                                         .rows = rows,
                                                         .top_k = K});
  // ... each expert e transforms its rows of buf in place (grouped GEMM) ...
  if (s.ok())
    s = moe::combine(moe::host, moe::combine_args<float>{.o = buf.data(),
                                                         .row_of = row_of.data(),
                                                         .weight = weight.data(),
                                                         .y = y.data(),
                                                         .tokens = T,
                                                         .hidden = H,
                                                         .rows = rows,
                                                         .top_k = K});
  // [end snippet]
  REQUIRE_MESSAGE(s.ok(), s.message());
  CHECK(offsets == std::vector<std::int64_t>{0, 16, 32, 48, 64});
  CHECK(row_of == std::vector<std::int32_t>{0, 16, 17, 32, 1, 18, 48, 2, -1, 33, -1, 49});
  // with identity experts, y[t] = (Σ of the kept weights) · x[t]
  CHECK(y[4 * H] == doctest::Approx(0.2f));  // its 0.8 route was dropped
  CHECK(y[5 * H] == doctest::Approx(0.0f));
  CHECK(y[0] == doctest::Approx(1.0f));
}

TEST_CASE_TEMPLATE("dispatch ops: the same bits every time", T, double, float, moe::bf16,
                   moe::fp16) {
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  routes const r = make_routes(rng, 64, 4, 8, 40);
  built_plan const p = run_plan(r, moe::plan_layout::compact, 8);
  REQUIRE(p.st.ok());
  i64 const H = 72;
  auto const o = random_tensor<T>(rng, p.rows * H);
  auto const dy = random_tensor<T>(rng, 64 * H);
  auto run = [&] {
    std::vector<T> y(static_cast<std::size_t>(64 * H)), dx(y.size()),
        d_o(static_cast<std::size_t>(p.rows * H));
    std::vector<float> d_w(64 * 4);
    REQUIRE(moe::combine(moe::host, moe::combine_args<T>{o.data(), p.row_of.data(), r.weight.data(),
                                                         y.data(), 64, H, p.rows, 4})
                .ok());
    REQUIRE(
        moe::permute_backward(moe::host, moe::permute_backward_args<T>{o.data(), p.row_of.data(),
                                                                       dx.data(), 64, H, p.rows, 4})
            .ok());
    REQUIRE(moe::combine_backward(
                moe::host, moe::combine_backward_args<T>{dy.data(), o.data(), p.row_of.data(),
                                                         p.source_of.data(), r.weight.data(),
                                                         d_o.data(), d_w.data(), 64, H, p.rows, 4})
                .ok());
    return std::tuple{y, dx, d_o, d_w};
  };
  auto const [y1, dx1, do1, dw1] = run();
  auto const [y2, dx2, do2, dw2] = run();
  CHECK(same_bits(y1, y2));
  CHECK(same_bits(dx1, dx2));
  CHECK(same_bits(do1, do2));
  CHECK(same_bits(dw1, dw2));
}

TEST_CASE("dispatch: the index math the kernels share") {
  using moe::detail::threads_per_row;
  CHECK(threads_per_row(1) == 32);
  CHECK(threads_per_row(32) == 32);
  CHECK(threads_per_row(33) == 64);
  CHECK(threads_per_row(128) == 128);
  CHECK(threads_per_row(512) == 256);
  CHECK(threads_per_row(896) == 256);
  alignas(16) float buf[8] = {};
  CHECK(moe::detail::can_vectorize<float>(4, buf + 0, buf + 4));
  CHECK_FALSE(moe::detail::can_vectorize<float>(6, buf + 0));
  CHECK_FALSE(moe::detail::can_vectorize<float>(4, buf + 1));
  CHECK(moe::detail::can_vectorize<moe::bf16>(8, reinterpret_cast<moe::bf16 const*>(buf)));
  CHECK_FALSE(moe::detail::can_vectorize<moe::bf16>(4, reinterpret_cast<moe::bf16 const*>(buf)));
  CHECK(moe::detail::source_token(-1, 10, 2) == -1);
  CHECK(moe::detail::source_token(10, 10, 2) == -1);
  CHECK(moe::detail::source_token(9, 10, 2) == 4);
  CHECK(moe::detail::route_row(5, 5) == -1);
  CHECK(moe::detail::route_row(4, 5) == 4);
  CHECK(moe::detail::plan_block_rows(17, moe::plan_layout::compact, 99, 16) == 32);
  CHECK(moe::detail::plan_block_rows(0, moe::plan_layout::compact, 99, 16) == 0);
  CHECK(moe::detail::plan_block_rows(17, moe::plan_layout::capacity_padded, 99, 16) == 99);
  // More kept routes than C (only repeated slots do that) count C rows before the tile.
  CHECK(moe::detail::plan_block_rows(17, moe::plan_layout::compact, 10, 16) == 16);
  CHECK(moe::detail::plan_block_rows(5, moe::plan_layout::compact, 3, 1) == 3);
}

// ---- bad input -------------------------------------------------------------------------------

TEST_CASE("plan: a broken slot contract names the lowest route that breaks it") {
  using moe::plan_layout;
  using moe::test::breaks_slot_contract;
  using moe::test::lowest_slot_contract_break;
  // Runs the host plan with source_of at the bound; returns bad_route and the message.
  auto run = [](routes const& r, plan_layout layout, i32 tile, std::string* message) {
    i64 const rows = moe::plan_rows_bound(r.tokens, r.top_k, r.experts, r.capacity, layout, tile);
    std::vector<i64> offsets(static_cast<std::size_t>(r.experts) + 1);
    std::vector<i32> row_of(r.expert.size()), source_of(static_cast<std::size_t>(rows) + 1, -9);
    i64 bad = -7;
    moe::status const st = moe::plan(moe::host, {.layout = layout,
                                                 .tokens = r.tokens,
                                                 .top_k = r.top_k,
                                                 .experts = r.experts,
                                                 .capacity = r.capacity,
                                                 .tile_rows = tile,
                                                 .expert = r.expert.data(),
                                                 .slot = r.slot.data(),
                                                 .offsets = offsets.data(),
                                                 .row_of = row_of.data(),
                                                 .source_of = source_of.data(),
                                                 .source_rows = rows,
                                                 .bad_route = &bad});
    CHECK(source_of.back() == -9);  // nothing past source_rows
    CHECK(st.ok() == (bad == -1));
    *message = st.message();
    return bad;
  };

  SUBCASE("a repeated slot in an over-full expert, with a valid route of a later expert first") {
    // T = 3, K = 2, E = 2, C = 2. Expert 1 keeps (t=0, k=0) slot 0 and (t=1, k=0) slot 1:
    // valid. Expert 0 keeps (t=0, k=1), (t=1, k=1), (t=2, k=1) with slots 0, 1, 1: three routes
    // in two slots, the repeat first at route 3 = (t=1, k=1). Unclamped, expert 0's block of 3
    // rows pushed expert 1's slot 1 (route 2) to row 4 of the 4 rows of source_of, and route 2
    // was named.
    routes r{3, 2, 2, 2, {1, 0, 1, 0, 1, 0}, {0, 0, 1, 1, -1, 1}, {}};
    for (i32 tile : {1, 2, 4}) {
      CAPTURE(tile);
      std::string message;
      CHECK(lowest_slot_contract_break(r.expert, r.slot, 2, 2, plan_layout::compact) == 3);
      CHECK(run(r, plan_layout::compact, tile, &message) == 3);
      CHECK(message.find("slot[t=1, k=1]: slot 1 of expert 0 is also taken by route (t=2, k=1)") !=
            std::string::npos);
      CHECK(run(r, plan_layout::capacity_padded, tile, &message) == 3);
    }
  }

  SUBCASE("random corrupted plans against the brute-force reference") {
    std::uint64_t const seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937_64 rng(seed);
    int refused = 0;
    for (int trial = 0; trial < 3000; ++trial) {
      std::uniform_int_distribution<i64> tokens(1, 9);
      std::uniform_int_distribution<i32> experts(1, 5), capacity(0, 4), tile(1, 4);
      i32 const E = experts(rng);
      i32 const K = std::uniform_int_distribution<i32>(1, E)(rng);
      i64 const C = capacity(rng);
      routes r = make_routes(rng, tokens(rng), K, E, C);  // small C: drops, over-full if kept
      auto const n = r.expert.size();
      std::uniform_int_distribution<std::size_t> pick(0, n - 1);
      int const faults = std::uniform_int_distribution<int>(1, 3)(rng);
      for (int f = 0; f < faults; ++f) {
        std::size_t const i = pick(rng), j = pick(rng);
        switch (std::uniform_int_distribution<int>(0, 5)(rng)) {
          case 0:
            r.expert[i] = std::uniform_int_distribution<i32>(-2, E + 1)(rng);
            break;
          case 1:
            r.slot[i] = static_cast<i32>(std::uniform_int_distribution<i64>(-2, C + 1)(rng));
            break;
          case 2:
            r.expert[i] = r.expert[j];
            r.slot[i] = r.slot[j];
            break;  // repeat
          case 3:   // keep a dropped route in a taken slot (the expert overflows C)
            if (C > 0)
              r.slot[i] = static_cast<i32>(std::uniform_int_distribution<i64>(0, C - 1)(rng));
            break;
          case 4:
            r.slot[i] = -1;
            break;  // a drop: may leave a hole
          default:
            r.expert[i] = r.expert[j];
            break;
        }
      }
      for (auto layout : layouts)
        for (i32 t : {1, tile(rng)}) {
          CAPTURE(trial);
          CAPTURE(t);
          INFO("layout " << moe::to_string(layout));
          std::string message;
          i64 const got = run(r, layout, t, &message);
          INFO(message);
          i64 const want = lowest_slot_contract_break(r.expert, r.slot, E, C, layout);
          CHECK(got == want);
          if (got < 0) continue;
          ++refused;
          CHECK(
              breaks_slot_contract(r.expert, r.slot, E, C, layout, static_cast<std::size_t>(got)));
          std::string const names =
              "[t=" + std::to_string(got / K) + ", k=" + std::to_string(got % K) + "]";
          CHECK(message.find(names) != std::string::npos);
          CHECK(message.find("lands past") == std::string::npos);
        }
    }
    CHECK(refused > 1000);  // the corruptions mostly break the contract
  }
}

TEST_CASE("plan: every bad input gets a status naming it") {
  using moe::errc;
  using moe::plan_layout;
  // 3 tokens, K = 2, E = 4, C = 2
  std::vector<i32> expert{0, 1, 0, 2, 3, 1};
  std::vector<i32> slot{0, 0, 1, 0, 0, 1};
  std::vector<i64> offsets(5);
  std::vector<i32> row_of(6), source_of(64);
  i64 bad = -7;
  auto args = [&](plan_layout layout = plan_layout::compact) {
    return moe::plan_args{.layout = layout,
                          .tokens = 3,
                          .top_k = 2,
                          .experts = 4,
                          .capacity = 2,
                          .tile_rows = 1,
                          .expert = expert.data(),
                          .slot = slot.data(),
                          .offsets = offsets.data(),
                          .row_of = row_of.data(),
                          .source_of = source_of.data(),
                          .source_rows = 64,
                          .bad_route = &bad};
  };
  REQUIRE(moe::plan(moe::host, args()).ok());
  CHECK(bad == -1);

  SUBCASE("expert out of range") {
    expert[3] = 4;
    moe::status const s = moe::plan(moe::host, args());
    CHECK(s.code() == errc::invalid_argument);
    CHECK(contains(s, "expert[t=1, k=1]"));
    CHECK(contains(s, "got 4"));
    CHECK(bad == 3);
    expert[3] = -1;
    CHECK(contains(moe::plan(moe::host, args()), "got -1"));
  }
  SUBCASE("an out-of-range expert is refused on a dropped route too") {
    expert[5] = 9;
    slot[5] = -1;
    CHECK(contains(moe::plan(moe::host, args()), "expert[t=2, k=1]"));
  }
  SUBCASE("slot >= C and slot < -1") {
    slot[4] = 2;
    moe::status const s = moe::plan(moe::host, args(plan_layout::capacity_padded));
    CHECK(s.code() == errc::invalid_argument);
    CHECK(contains(s, "slot[t=2, k=0]"));
    CHECK(contains(s, "C = 2, got 2"));
    slot[4] = -2;
    CHECK(contains(moe::plan(moe::host, args()), "got -2"));
    CHECK(bad == 4);
  }
  SUBCASE("a hole in a compact expert") {
    slot[3] = 1;  // expert 2 keeps one route, so its slot must be 0
    moe::status const s = moe::plan(moe::host, args());
    CHECK(s.code() == errc::invalid_argument);
    CHECK(contains(s, "slot[t=1, k=1]"));
    CHECK(contains(s, "exactly 0..0"));
    CHECK(bad == 3);
    CHECK(moe::plan(moe::host, args(plan_layout::capacity_padded)).ok());  // holes are padding
  }
  SUBCASE("a repeated slot names both routes") {
    slot[0] = 1;  // routes (0, 0) and (1, 0) both take expert 0's slot 1
    slot[2] = 1;
    for (auto layout : layouts) {
      moe::status const s = moe::plan(moe::host, args(layout));
      CHECK(s.code() == errc::invalid_argument);
      CHECK(contains(s, "slot[t=0, k=0]"));
      CHECK(contains(s, "route (t=1, k=0)"));
      CHECK(bad == 0);
    }
  }
  SUBCASE("a repeated slot is named, not a later expert's valid route") {
    // Expert 0 keeps three routes with slots {0, 0, 1} in C = 2 (no hole by count, one
    // repeat). Its block is clamped to C = 2 rows, so expert 1's slot 1 lands on row 3 of the
    // 4 that source_of holds (the bound), not on row 4 past its end (the sanitizer build proves
    // nothing is written there), and the route named is the repeated one, never expert 1's.
    auto run = [&](std::vector<i32> e, std::vector<i32> s) {
      std::vector<i32> ro(5);
      std::vector<i32> so(4, -9);
      std::vector<i64> off(3);
      return moe::plan(moe::host, {.tokens = 5,
                                   .top_k = 1,
                                   .experts = 2,
                                   .capacity = 2,
                                   .expert = e.data(),
                                   .slot = s.data(),
                                   .offsets = off.data(),
                                   .row_of = ro.data(),
                                   .source_of = so.data(),
                                   .source_rows = 4,
                                   .bad_route = &bad});
    };
    moe::status st = run({0, 0, 0, 1, 1}, {0, 0, 1, 0, 1});
    CHECK(st.code() == errc::invalid_argument);
    CHECK(bad == 0);
    CHECK(contains(st, "also taken by route (t=1, k=0)"));
    // Before the clamp, route 1 (expert 1, slot 1: valid) was named here as "landing past
    // source_of"; the repeat is routes 2 and 3.
    st = run({1, 1, 0, 0, 0}, {0, 1, 0, 0, 1});
    CHECK(st.code() == errc::invalid_argument);
    CHECK(bad == 2);
    CHECK(contains(st, "slot[t=2, k=0]: slot 0 of expert 0 is also taken by route (t=3, k=0)"));
    CHECK_FALSE(contains(st, "lands past"));
  }
  SUBCASE("source_of too small: the status gives the size needed") {
    moe::plan_args a = args();
    a.source_rows = 5;
    moe::status const s = moe::plan(moe::host, a);
    CHECK(s.code() == errc::workspace_too_small);
    CHECK(contains(s, "expected >= 6 rows"));
    a.layout = plan_layout::capacity_padded;
    a.source_rows = 7;
    CHECK(contains(moe::plan(moe::host, a), "expected >= 8 rows"));
  }
  SUBCASE("sizes, pointers and the layout") {
    moe::plan_args a = args();
    a.top_k = 0;
    CHECK(contains(moe::plan(moe::host, a), "plan_args.top_k"));
    a = args();
    a.top_k = 33;
    CHECK(contains(moe::plan(moe::host, a), "plan_args.top_k"));
    a = args();
    a.experts = 0;
    CHECK(contains(moe::plan(moe::host, a), "plan_args.experts"));
    a = args();
    a.tokens = -1;
    CHECK(contains(moe::plan(moe::host, a), "plan_args.tokens"));
    a = args();
    a.capacity = -1;
    CHECK(contains(moe::plan(moe::host, a), "plan_args.capacity"));
    a = args();
    a.capacity = i64{1} << 31;
    CHECK(contains(moe::plan(moe::host, a), "plan_args.capacity"));
    a = args();
    a.tile_rows = 0;
    CHECK(contains(moe::plan(moe::host, a), "plan_args.tile_rows"));
    a = args();
    a.layout = static_cast<plan_layout>(7);
    CHECK(contains(moe::plan(moe::host, a), "plan_args.layout"));
    a = args();
    a.offsets = nullptr;
    CHECK(contains(moe::plan(moe::host, a), "plan_args.offsets"));
    a = args();
    a.source_of = nullptr;
    CHECK(contains(moe::plan(moe::host, a), "plan_args.source_of"));
    a = args();
    a.slot = nullptr;
    CHECK(contains(moe::plan(moe::host, a), "plan_args.expert/slot/row_of"));
    a = args();
    a.tokens = i64{1} << 30;
    CHECK(contains(moe::plan(moe::host, a), "int32 route indices"));
    a = args(plan_layout::capacity_padded);
    a.capacity = (i64{1} << 31) - 1;
    CHECK(contains(moe::plan(moe::host, a), "int32 row indices"));
  }
  SUBCASE("rank_offsets") {
    std::vector<i64> out(4);
    CHECK(contains(
        moe::rank_offsets(
            moe::host, {.offsets = offsets.data(), .experts = 4, .ep_size = 3, .out = out.data()}),
        "ep_size"));
    CHECK(contains(
        moe::rank_offsets(
            moe::host, {.offsets = offsets.data(), .experts = 0, .ep_size = 1, .out = out.data()}),
        "experts"));
    CHECK(contains(
        moe::rank_offsets(moe::host,
                          {.offsets = nullptr, .experts = 4, .ep_size = 2, .out = out.data()}),
        "offsets/out"));
  }
}

TEST_CASE("dispatch ops: every bad input gets a status naming it") {
  using moe::errc;
  std::vector<float> x(4 * 8), buf(6 * 8), y(4 * 8), w(4 * 2, 1.0f);
  std::vector<i32> source_of{0, 1, 2, -1, 5, 7};
  std::vector<i32> row_of{0, 1, 2, -1, 4, -1, 5, -1};
  moe::permute_args<float> const p{x.data(), source_of.data(), buf.data(), 4, 8, 6, 2};
  moe::combine_args<float> const c{buf.data(), row_of.data(), w.data(), y.data(), 4, 8, 6, 2};
  REQUIRE(moe::permute(moe::host, p).ok());
  REQUIRE(moe::combine(moe::host, c).ok());

  SUBCASE("a route outside [-1, T*K) in source_of") {
    source_of[4] = 8;
    moe::status const s = moe::permute(moe::host, p);
    CHECK(s.code() == errc::invalid_argument);
    CHECK(contains(s, "permute_args.source_of[4]"));
    CHECK(contains(s, "got 8"));
    source_of[4] = -2;
    CHECK(contains(moe::permute(moe::host, p), "got -2"));
    CHECK(contains(moe::combine_backward(
                       moe::host, moe::combine_backward_args<float>{.dy = y.data(),
                                                                    .row_of = row_of.data(),
                                                                    .source_of = source_of.data(),
                                                                    .d_o = buf.data(),
                                                                    .tokens = 4,
                                                                    .hidden = 8,
                                                                    .rows = 6,
                                                                    .top_k = 2}),
                   "combine_backward_args.source_of[4]"));
  }
  SUBCASE("a row outside [-1, rows) in row_of") {
    row_of[6] = 6;
    moe::status const s = moe::combine(moe::host, c);
    CHECK(s.code() == errc::invalid_argument);
    CHECK(contains(s, "combine_args.row_of[t=3, k=0]"));
    CHECK(contains(moe::permute_backward(
                       moe::host, moe::permute_backward_args<float>{buf.data(), row_of.data(),
                                                                    y.data(), 4, 8, 6, 2}),
                   "permute_backward_args.row_of[t=3, k=0]"));
  }
  SUBCASE("sizes and pointers") {
    auto bad = p;
    bad.hidden = 0;
    CHECK(contains(moe::permute(moe::host, bad), "permute_args.hidden"));
    bad = p;
    bad.tokens = -3;
    CHECK(contains(moe::permute(moe::host, bad), "permute_args.tokens"));
    bad = p;
    bad.top_k = 40;
    CHECK(contains(moe::permute(moe::host, bad), "permute_args.top_k"));
    bad = p;
    bad.rows = -1;
    CHECK(contains(moe::permute(moe::host, bad), "permute_args.rows"));
    bad = p;
    bad.x = nullptr;
    CHECK(contains(moe::permute(moe::host, bad), "permute_args.x"));
    auto bc = c;
    bc.o = nullptr;
    CHECK(contains(moe::combine(moe::host, bc), "combine_args.o"));
    bc = c;
    bc.y = nullptr;
    CHECK(contains(moe::combine(moe::host, bc), "combine_args.row_of/y"));
    CHECK(contains(moe::combine_backward(
                       moe::host, moe::combine_backward_args<float>{.dy = y.data(),
                                                                    .row_of = row_of.data(),
                                                                    .source_of = source_of.data(),
                                                                    .d_o = buf.data(),
                                                                    .d_weight = w.data(),
                                                                    .tokens = 4,
                                                                    .hidden = 8,
                                                                    .rows = 6,
                                                                    .top_k = 2}),
                   "combine_backward_args.o"));
    CHECK(contains(
        moe::permute_backward(moe::host, moe::permute_backward_args<float>{nullptr, row_of.data(),
                                                                           y.data(), 4, 8, 6, 2}),
        "permute_backward_args.d_out"));
  }
  SUBCASE("T = 0 is a no-op") {
    CHECK(moe::combine(moe::host, moe::combine_args<float>{.hidden = 8}).ok());
    CHECK(moe::permute_backward(moe::host, moe::permute_backward_args<float>{.hidden = 8}).ok());
    CHECK(moe::combine_backward(moe::host, moe::combine_backward_args<float>{.hidden = 8}).ok());
    CHECK(moe::permute(moe::host, moe::permute_args<float>{.hidden = 8}).ok());
  }
}
