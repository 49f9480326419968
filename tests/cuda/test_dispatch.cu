// SPDX-License-Identifier: Apache-2.0
// The CUDA dispatch ops against the host backend (their oracle, itself checked against float64
// in tests/host/test_dispatch_plan.cpp): plan and rank_offsets bit for bit (offsets, row_of,
// source_of, and the bad_route word on broken slot contracts); permute, permute_backward and
// combine_backward's d_o bit for bit; combine and d_weight within the host test's tolerances
// (u_T·|ref| + (K + 1)·2^-24·Σ|terms| for combine, 2^-24·|ref| + (H + 1)·u_A·Σ|dy·o| for
// d_weight, measured against the host's own result). Both the 16-byte vector path and the
// scalar fallback (odd H, misaligned pointers), rows of one warp up to a whole block, and
// repeated runs (the same bits each time).
#include <algorithm>    // std::min, std::max
#include <cmath>        // std::fabs, std::ldexp
#include <cstdint>      // std::int32_t, std::int64_t, std::uint8_t
#include <cstring>      // std::memcmp
#include <numeric>      // std::iota
#include <random>       // std::mt19937_64, std::random_device
#include <type_traits>  // std::is_same_v
#include <utility>      // std::pair
#include <vector>       // std::vector

#include "../host/common.hpp"  // same_bits
#include "../host/plan_contract.hpp"  // moe::test::lowest_slot_contract_break
#include "common.cuh"
#include "moe/cuda/permute.cuh"
#include "moe/cuda/plan.cuh"

namespace {

using moe::test::same_bits;

using i32 = std::int32_t;
using i64 = std::int64_t;
using moe::test::device_vector;

std::uint64_t fresh_seed() {
  std::random_device rd;
  return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

struct routes {
  i64 tokens;
  i32 top_k, experts;
  i64 capacity;
  std::vector<i32> expert, slot;
  std::vector<float> weight;
};

// K distinct experts per token, slots by position (first choices first), drops past C.
routes make_routes(std::mt19937_64& rng, i64 tokens, i32 top_k, i32 experts, i64 capacity) {
  routes r{tokens, top_k, experts, capacity, {}, {}, {}};
  auto const n = static_cast<std::size_t>(tokens * top_k);
  r.expert.resize(n);
  r.slot.resize(n);
  r.weight.resize(n);
  std::vector<i32> pool(static_cast<std::size_t>(experts));
  std::uniform_real_distribution<float> w(0.0f, 1.0f);
  for (i64 t = 0; t < tokens; ++t) {
    std::iota(pool.begin(), pool.end(), 0);
    for (i32 k = 0; k < top_k; ++k) {
      std::uniform_int_distribution<i32> pick(k, experts - 1);
      std::swap(pool[static_cast<std::size_t>(k)], pool[static_cast<std::size_t>(pick(rng))]);
      r.expert[static_cast<std::size_t>(t * top_k + k)] = pool[static_cast<std::size_t>(k)];
      r.weight[static_cast<std::size_t>(t * top_k + k)] = w(rng);
    }
  }
  std::vector<i64> count(static_cast<std::size_t>(experts), 0);
  for (i32 k = 0; k < top_k; ++k)
    for (i64 t = 0; t < tokens; ++t) {
      auto const i = static_cast<std::size_t>(t * top_k + k);
      i64& c = count[static_cast<std::size_t>(r.expert[i])];
      r.slot[i] = c < capacity ? static_cast<i32>(c++) : -1;
    }
  return r;
}

struct plan_out {
  std::vector<i64> offsets;
  std::vector<i32> row_of, source_of;
  i64 bad_route = -7;
  i64 rows = 0;
};

plan_out host_plan(routes const& r, moe::plan_layout layout, i32 tile, moe::status* st = nullptr) {
  plan_out p;
  p.rows = moe::plan_rows_bound(r.tokens, r.top_k, r.experts, r.capacity, layout, tile);
  p.offsets.assign(static_cast<std::size_t>(r.experts) + 1, 0);
  p.row_of.assign(r.expert.size(), 0);
  p.source_of.assign(static_cast<std::size_t>(p.rows), 0);
  moe::status const s = moe::plan(moe::host, {.layout = layout,
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
                                              .bad_route = &p.bad_route});
  if (st != nullptr)
    *st = s;
  else
    REQUIRE_MESSAGE(s.ok(), s.message());
  return p;
}

plan_out device_plan(routes const& r, moe::plan_layout layout, i32 tile) {
  plan_out p;
  p.rows = moe::plan_rows_bound(r.tokens, r.top_k, r.experts, r.capacity, layout, tile);
  auto const n = r.expert.size();
  device_vector<i32> expert(n), slot(n), row_of(n), source_of(static_cast<std::size_t>(p.rows));
  device_vector<i64> offsets(static_cast<std::size_t>(r.experts) + 1), bad(1);
  if (n > 0) {
    expert.upload(r.expert);
    slot.upload(r.slot);
  }
  moe::plan_args const a{.layout = layout,
                         .tokens = r.tokens,
                         .top_k = r.top_k,
                         .experts = r.experts,
                         .capacity = r.capacity,
                         .tile_rows = tile,
                         .expert = expert.data(),
                         .slot = slot.data(),
                         .offsets = offsets.data(),
                         .row_of = row_of.data(),
                         .source_of = source_of.data(),
                         .source_rows = p.rows,
                         .bad_route = bad.data()};
  std::size_t const bytes = moe::plan_workspace_bytes(a);
  REQUIRE(bytes > 0);
  device_vector<std::uint8_t> ws(bytes);
  MOE_REQUIRE_OK(moe::plan(moe::cuda_on(nullptr, ws.data(), bytes), a));
  MOE_REQUIRE_CUDA(cudaDeviceSynchronize());
  p.offsets = offsets.download();
  if (n > 0) p.row_of = row_of.download();
  if (p.rows > 0) p.source_of = source_of.download();
  p.bad_route = bad.download()[0];
  return p;
}

moe::plan_layout const layouts[] = {moe::plan_layout::compact, moe::plan_layout::capacity_padded};

template <class T>
std::vector<T> random_tensor(std::mt19937_64& rng, i64 n) {
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = moe::from_float<T>(d(rng));
  if (n > 0) v[0] = moe::from_float<T>(-0.0f);
  return v;
}

template <class T>
double as_double(T v) {
  return static_cast<double>(moe::to_float(v));
}

// A device copy of `h` starting `shift` elements into its allocation (shift = 1 misaligns it).
template <class T>
struct shifted {
  device_vector<T> buf;
  i64 shift;
  shifted(std::vector<T> const& h, i64 s)
      : buf(h.size() + static_cast<std::size_t>(s) + 1), shift(s) {
    if (!h.empty())
      MOE_REQUIRE_CUDA(
          cudaMemcpy(buf.data() + shift, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  explicit shifted(std::size_t n, i64 s) : buf(n + static_cast<std::size_t>(s) + 1), shift(s) {}
  T* data() const { return buf.data() + shift; }
  std::vector<T> download(std::size_t n) const {
    std::vector<T> h(n);
    if (n > 0)
      MOE_REQUIRE_CUDA(cudaMemcpy(h.data(), data(), n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

template <class T>
void check_ops(std::mt19937_64& rng, routes const& r, plan_out const& p, i64 hidden, i64 shift) {
  CAPTURE(hidden);
  CAPTURE(shift);
  CAPTURE(r.tokens);
  CAPTURE(r.top_k);
  INFO("type " << moe::storage_name<T>());
  i64 const T_ = r.tokens, H = hidden, K = r.top_k, rows = p.rows;
  auto const tn = static_cast<std::size_t>(T_ * H), rn = static_cast<std::size_t>(rows * H);
  auto const x = random_tensor<T>(rng, T_ * H);
  auto const o = random_tensor<T>(rng, rows * H);
  auto const dy = random_tensor<T>(rng, T_ * H);
  shifted<T> const dx_in(x, shift), d_o_in(o, shift), d_dy(dy, shift);
  shifted<i32> const d_row_of(p.row_of, 0), d_source_of(p.source_of, 0);
  shifted<float> const d_w(r.weight, 0);
  auto const cuda = moe::cuda_on(nullptr);

  // permute
  shifted<T> out(rn, shift);
  moe::permute_args<T> pa{.x = dx_in.data(),
                          .source_of = d_source_of.data(),
                          .out = out.data(),
                          .tokens = T_,
                          .hidden = H,
                          .rows = rows,
                          .top_k = r.top_k};
  MOE_REQUIRE_OK(moe::permute(cuda, pa));
  std::vector<T> want(rn);
  pa.x = x.data();
  pa.source_of = p.source_of.data();
  pa.out = want.data();
  MOE_REQUIRE_OK(moe::permute(moe::host, pa));
  CHECK(same_bits(out.download(rn), want));

  // combine
  shifted<T> y(tn, shift);
  moe::combine_args<T> ca{.o = d_o_in.data(),
                          .row_of = d_row_of.data(),
                          .weight = d_w.data(),
                          .y = y.data(),
                          .tokens = T_,
                          .hidden = H,
                          .rows = rows,
                          .top_k = r.top_k};
  MOE_REQUIRE_OK(moe::combine(cuda, ca));
  std::vector<T> y_host(tn);
  ca.o = o.data();
  ca.row_of = p.row_of.data();
  ca.weight = r.weight.data();
  ca.y = y_host.data();
  MOE_REQUIRE_OK(moe::combine(moe::host, ca));
  double const u = std::is_same_v<T, double>      ? std::ldexp(1.0, -53)
                   : std::is_same_v<T, float>     ? std::ldexp(1.0, -24)
                   : std::is_same_v<T, moe::fp16> ? std::ldexp(1.0, -11)
                                                  : std::ldexp(1.0, -8);
  double const ua = std::is_same_v<T, double> ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
  double const floor = std::is_same_v<T, moe::fp16> ? std::ldexp(1.0, -24) : 0.0;
  {
    auto const got = y.download(tn);
    int bad = 0;
    for (i64 t = 0; t < T_; ++t)
      for (i64 h = 0; h < H; ++h) {
        double mag = 0;
        for (i64 k = 0; k < K; ++k) {
          i32 const row = p.row_of[static_cast<std::size_t>(t * K + k)];
          if (row >= 0)
            mag += std::fabs(r.weight[static_cast<std::size_t>(t * K + k)] *
                             as_double(o[static_cast<std::size_t>(row * H + h)]));
        }
        double const a = as_double(got[static_cast<std::size_t>(t * H + h)]);
        double const b = as_double(y_host[static_cast<std::size_t>(t * H + h)]);
        bad += std::fabs(a - b) >
               2 * u * std::fabs(b) + 2.0 * static_cast<double>(K + 1) * ua * mag + floor;
      }
    CHECK_MESSAGE(bad == 0, "combine: " << bad << " elements beyond tolerance");
  }

  // permute_backward: bitwise
  shifted<T> dx(tn, shift);
  moe::permute_backward_args<T> pb{.d_out = d_o_in.data(),
                                   .row_of = d_row_of.data(),
                                   .dx = dx.data(),
                                   .tokens = T_,
                                   .hidden = H,
                                   .rows = rows,
                                   .top_k = r.top_k};
  MOE_REQUIRE_OK(moe::permute_backward(cuda, pb));
  std::vector<T> dx_host(tn);
  pb.d_out = o.data();
  pb.row_of = p.row_of.data();
  pb.dx = dx_host.data();
  MOE_REQUIRE_OK(moe::permute_backward(moe::host, pb));
  CHECK(same_bits(dx.download(tn), dx_host));

  // combine_backward: d_o bitwise, d_weight within tolerance
  shifted<T> d_o(rn, shift);
  device_vector<float> d_dw(static_cast<std::size_t>(T_ * K) + 1);
  moe::combine_backward_args<T> cb{.dy = d_dy.data(),
                                   .o = d_o_in.data(),
                                   .row_of = d_row_of.data(),
                                   .source_of = d_source_of.data(),
                                   .weight = d_w.data(),
                                   .d_o = d_o.data(),
                                   .d_weight = d_dw.data(),
                                   .tokens = T_,
                                   .hidden = H,
                                   .rows = rows,
                                   .top_k = r.top_k};
  MOE_REQUIRE_OK(moe::combine_backward(cuda, cb));
  std::vector<T> d_o_host(rn);
  std::vector<float> dw_host(static_cast<std::size_t>(T_ * K));
  cb.dy = dy.data();
  cb.o = o.data();
  cb.row_of = p.row_of.data();
  cb.source_of = p.source_of.data();
  cb.weight = r.weight.data();
  cb.d_o = d_o_host.data();
  cb.d_weight = dw_host.data();
  MOE_REQUIRE_OK(moe::combine_backward(moe::host, cb));
  CHECK(same_bits(d_o.download(rn), d_o_host));
  {
    auto dw = d_dw.download();
    dw.resize(static_cast<std::size_t>(T_ * K));
    int bad = 0;
    for (i64 i = 0; i < T_ * K; ++i) {
      i32 const row = p.row_of[static_cast<std::size_t>(i)];
      double mag = 0;
      if (row >= 0)
        for (i64 h = 0; h < H; ++h)
          mag += std::fabs(as_double(dy[static_cast<std::size_t>(i / K * H + h)]) *
                           as_double(o[static_cast<std::size_t>(row * H + h)]));
      double const a = dw[static_cast<std::size_t>(i)], b = dw_host[static_cast<std::size_t>(i)];
      bad += std::fabs(a - b) >
             std::ldexp(1.0, -23) * std::fabs(b) + 2.0 * static_cast<double>(H + 1) * ua * mag;
      if (row < 0) bad += a != 0.0f;
    }
    CHECK_MESSAGE(bad == 0, "combine_backward d_weight: " << bad << " routes beyond tolerance");
  }
}

}  // namespace

TEST_CASE("plan(cuda) == plan(host), bitwise: random routes, both layouts, tiles, T = 0") {
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  struct shape {
    i64 tokens;
    i32 top_k, experts;
  };
  for (shape s : {shape{0, 2, 8}, shape{1, 1, 1}, shape{1000, 2, 8}, shape{4096, 8, 64},
                  shape{3000, 6, 6}, shape{20000, 2, 256}, shape{777, 1, 1024}}) {
    for (double cf : {0.5, 1.25, 100.0}) {
      auto const capacity =
          static_cast<i64>(cf * static_cast<double>(s.tokens * s.top_k) / s.experts) + 1;
      routes const r = make_routes(rng, s.tokens, s.top_k, s.experts, capacity);
      for (auto layout : layouts)
        for (i32 tile : {1, 16, 128}) {
          CAPTURE(s.tokens);
          CAPTURE(s.experts);
          CAPTURE(capacity);
          CAPTURE(tile);
          INFO("layout " << moe::to_string(layout));
          plan_out const want = host_plan(r, layout, tile);
          plan_out const got = device_plan(r, layout, tile);
          CHECK(got.offsets == want.offsets);
          CHECK(got.row_of == want.row_of);
          CHECK(got.source_of == want.source_of);
          CHECK(got.bad_route == -1);
          // and the per-rank offsets
          device_vector<i64> offsets(want.offsets.size()),
              out(static_cast<std::size_t>(s.experts) + 1);
          offsets.upload(want.offsets);
          for (i32 ranks = 1; ranks <= s.experts; ranks *= 2) {
            if (s.experts % ranks != 0) continue;
            MOE_REQUIRE_OK(moe::rank_offsets(moe::cuda_on(nullptr), {.offsets = offsets.data(),
                                                                     .experts = s.experts,
                                                                     .ep_size = ranks,
                                                                     .out = out.data()}));
            auto const got_ranks = out.download();
            for (i32 q = 0; q <= ranks; ++q)
              CHECK(got_ranks[static_cast<std::size_t>(q)] ==
                    want.offsets[static_cast<std::size_t>(q * (s.experts / ranks))]);
          }
        }
    }
  }
}

TEST_CASE("plan(cuda): a broken slot contract names the same route as the host") {
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 40; ++trial) {
    routes r = make_routes(rng, 500, 2, 16, 80);
    std::uniform_int_distribution<std::size_t> pick(0, r.slot.size() - 1);
    std::size_t const i = pick(rng);
    switch (trial % 5) {
      case 0:
        r.expert[i] = 16 + trial;
        break;  // expert out of range
      case 1:
        r.slot[i] = 80;
        break;  // slot >= C
      case 2:
        r.slot[i] = -2;
        break;  // slot < -1
      case 3:
        r.slot[i] = r.slot[pick(rng)] >= 0 ? r.slot[pick(rng)] : 0;
        break;  // repeat/hole
      case 4:
        r.slot[pick(rng)] = r.slot[i];
        r.expert[pick(rng)] = r.expert[i];
        break;
    }
    for (auto layout : layouts) {
      moe::status st;
      plan_out const want = host_plan(r, layout, 8, &st);
      plan_out const got = device_plan(r, layout, 8);
      CAPTURE(trial);
      INFO("host: " << st.message());
      CHECK(got.bad_route == want.bad_route);
      CHECK(st.ok() == (want.bad_route == -1));
    }
  }
}

TEST_CASE("plan(cuda): a repeated slot names the lowest route that breaks the contract") {
  using moe::test::lowest_slot_contract_break;
  // The host test's case (tests/host/test_dispatch_plan.cpp): expert 0 keeps three routes in
  // C = 2 slots, slot 1 first repeated at route 3, and expert 1's valid route 2 comes first;
  // unclamped blocks pushed route 2 past source_of and named it.
  routes const fixed{3, 2, 2, 2, {1, 0, 1, 0, 1, 0}, {0, 0, 1, 1, -1, 1}, {}};
  for (auto layout : layouts)
    for (i32 tile : {1, 2, 4}) {
      CAPTURE(tile);
      INFO("layout " << moe::to_string(layout));
      moe::status st;
      CHECK(host_plan(fixed, layout, tile, &st).bad_route == 3);
      CHECK(device_plan(fixed, layout, tile).bad_route == 3);
    }
  // Small random plans (C well below T·K/E, so experts fill up) with 1 to 3 corruptions:
  // experts or slots out of range, copied (expert, slot) pairs, dropped routes put back into a
  // taken slot (an over-full expert), new drops (holes). Device = host = brute force.
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  int refused = 0;
  for (int trial = 0; trial < 200; ++trial) {
    i32 const E = std::uniform_int_distribution<i32>(1, 6)(rng);
    i32 const K = std::uniform_int_distribution<i32>(1, E)(rng);
    i64 const C = std::uniform_int_distribution<i64>(0, 5)(rng);
    routes r = make_routes(rng, std::uniform_int_distribution<i64>(1, 12)(rng), K, E, C);
    std::uniform_int_distribution<std::size_t> pick(0, r.slot.size() - 1);
    for (int f = std::uniform_int_distribution<int>(1, 3)(rng); f > 0; --f) {
      std::size_t const i = pick(rng), j = pick(rng);
      switch (std::uniform_int_distribution<int>(0, 4)(rng)) {
        case 0:
          r.expert[i] = std::uniform_int_distribution<i32>(-2, E + 1)(rng);
          break;
        case 1:
          r.slot[i] = static_cast<i32>(std::uniform_int_distribution<i64>(-2, C + 1)(rng));
          break;
        case 2:
          r.expert[i] = r.expert[j];
          r.slot[i] = r.slot[j];
          break;
        case 3:
          if (C > 0)
            r.slot[i] = static_cast<i32>(std::uniform_int_distribution<i64>(0, C - 1)(rng));
          break;
        default:
          r.slot[i] = -1;
          break;
      }
    }
    for (auto layout : layouts)
      for (i32 tile : {1, 3}) {
        CAPTURE(trial);
        CAPTURE(tile);
        INFO("layout " << moe::to_string(layout));
        moe::status st;
        plan_out const want = host_plan(r, layout, tile, &st);
        INFO("host: " << st.message());
        plan_out const got = device_plan(r, layout, tile);
        CHECK(want.bad_route == lowest_slot_contract_break(r.expert, r.slot, E, C, layout));
        CHECK(got.bad_route == want.bad_route);
        refused += want.bad_route >= 0;
      }
  }
  CHECK(refused > 200);
}

TEST_CASE("plan(cuda): argument errors come back as a status before any launch") {
  std::vector<i64> dummy(8);
  moe::plan_args a{.tokens = 4,
                   .top_k = 2,
                   .experts = 4,
                   .capacity = 4,
                   .expert = reinterpret_cast<i32 const*>(dummy.data()),
                   .slot = reinterpret_cast<i32 const*>(dummy.data()),
                   .offsets = dummy.data(),
                   .row_of = reinterpret_cast<i32*>(dummy.data()),
                   .source_of = reinterpret_cast<i32*>(dummy.data()),
                   .source_rows = 7};
  moe::status s = moe::plan(moe::cuda_on(nullptr), a);
  CHECK(s.code() == moe::errc::workspace_too_small);
  CHECK(std::strstr(s.message(), "expected >= 8 rows") != nullptr);
  a.source_rows = 8;
  s = moe::plan(moe::cuda_on(nullptr, nullptr, 0), a);
  CHECK(s.code() == moe::errc::workspace_too_small);
  CHECK(std::strstr(s.message(), "plan_workspace_bytes") != nullptr);
  a.top_k = 0;
  CHECK(moe::plan(moe::cuda_on(nullptr), a).code() == moe::errc::invalid_argument);
  CHECK(moe::permute(moe::cuda_on(nullptr), moe::permute_args<float>{.hidden = 0}).code() ==
        moe::errc::invalid_argument);
  CHECK(moe::combine(moe::cuda_on(nullptr), moe::combine_args<float>{.hidden = 8}).ok());
}

TEST_CASE_TEMPLATE("dispatch ops (cuda) vs host: vector and scalar paths, small and large rows", T,
                   double, float, moe::bf16, moe::fp16) {
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  struct shape {
    i64 tokens;
    i32 top_k, experts;
    i64 hidden;
  };
  for (shape s :
       {shape{0, 2, 8, 64}, shape{1, 1, 4, 1}, shape{300, 2, 8, 40}, shape{257, 8, 16, 1024},
        shape{100, 1, 4, 7168}, shape{64, 2, 4, 4099}, shape{500, 4, 32, 8}}) {
    for (double cf : {0.75, 2.0}) {
      auto const capacity =
          static_cast<i64>(cf * static_cast<double>(s.tokens * s.top_k) / s.experts) + 1;
      routes const r = make_routes(rng, s.tokens, s.top_k, s.experts, capacity);
      for (auto layout : layouts) {
        plan_out const p = host_plan(r, layout, 16);
        for (i64 shift : {i64{0}, i64{1}}) check_ops<T>(rng, r, p, s.hidden, shift);
      }
    }
  }
}

TEST_CASE("dispatch ops (cuda): the same bits every run") {
  std::uint64_t const seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  routes const r = make_routes(rng, 2048, 4, 16, 700);
  plan_out const p = host_plan(r, moe::plan_layout::compact, 64);
  i64 const H = 2048;
  auto const o = random_tensor<moe::bf16>(rng, p.rows * H);
  auto const dy = random_tensor<moe::bf16>(rng, r.tokens * H);
  device_vector<moe::bf16> d_o_in(o.size()), d_dy(dy.size()), y(dy.size()), d_o(o.size());
  device_vector<i32> row_of(p.row_of.size()), source_of(p.source_of.size());
  device_vector<float> w(r.weight.size()), dw(r.weight.size());
  d_o_in.upload(o);
  d_dy.upload(dy);
  row_of.upload(p.row_of);
  source_of.upload(p.source_of);
  w.upload(r.weight);
  auto run = [&] {
    MOE_REQUIRE_OK(moe::combine(moe::cuda_on(nullptr),
                                moe::combine_args<moe::bf16>{d_o_in.data(), row_of.data(), w.data(),
                                                             y.data(), r.tokens, H, p.rows, 4}));
    MOE_REQUIRE_OK(moe::combine_backward(
        moe::cuda_on(nullptr), moe::combine_backward_args<moe::bf16>{
                                   d_dy.data(), d_o_in.data(), row_of.data(), source_of.data(),
                                   w.data(), d_o.data(), dw.data(), r.tokens, H, p.rows, 4}));
    return std::pair{y.download(), dw.download()};
  };
  auto const a = run();
  auto const b = run();
  CHECK(same_bits(a.first, b.first));
  CHECK(same_bits(a.second, b.second));
}
