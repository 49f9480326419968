// SPDX-License-Identifier: Apache-2.0
// Expert parallelism over MPI on the host, under `mpirun -np R`: (a) the all-to-all the
// expert-parallel layer sends its rows with (moe::comm::mpi::all_to_all_v), and (b) where the
// expert-parallel layer's forward + backward spends its time (layer_profile).
//
// (a) Every rank sends T·K rows of H values (bf16 or fp32) — its T tokens' K routes — with
//     uniform routing: T·K/R rows to every rank (its own included: MPI copies those too).
//     Reported: the median over iterations of the slowest rank's time, the bytes this rank
//     sends per second (payload, one direction), and that rate as a fraction of memcpy's on
//     buffers of the same size, measured in the same run with every rank copying at once.
//     On one host MPI's shared-memory transport is a memory copy (two, through a shared
//     buffer, unless the single-copy path is available), so memcpy is the roof.
// (b) A mid-size layer (E = 16, top-2, capacity factor 1.25, GELU experts, fp32) on T tokens a
//     rank: mean seconds per forward + backward in each phase of layer_profile (route: router
//     GEMM + logits all-gather + route; plan: local slots, plan, permute; exchange: counts and
//     rows all-to-all, both directions; ffn: the local experts; rest: combine, dense parts,
//     dx sums), per rank.
//
// A plain program with std::chrono (Google Benchmark's repetition logic does not span ranks):
// every rank runs the same iterations, separated by barriers.
//
// Run:  cmake --preset host && cmake --build --preset host --target moe_bench_mpi &&
//       mpirun --allow-run-as-root --oversubscribe -np 2 ./build/host/benchmarks/moe_bench_mpi
//       (--smoke: tiny sizes; --max-mib N: skip exchanges whose send buffer exceeds N MiB,
//        default 1024; --layer-tokens/--layer-hidden/--layer-ffn N; --iters N; --threads N)
#include <mpi.h>

#include <algorithm>  // std::sort, std::max, std::min
#include <chrono>     // std::chrono::steady_clock
#include <cstdint>    // std::int64_t
#include <cstdio>     // std::printf
#include <cstdlib>    // std::strtoll, std::aligned_alloc, std::free
#include <cstring>    // std::memcpy, std::memset, std::strcmp
#include <string>     // std::string
#include <vector>     // std::vector

#include "moe/comm/mpi.hpp"  // moe::comm::mpi: all_to_all_v in rows
#include "moe/layer.hpp"     // moe::layer, layer_profile
#include "moe/random.hpp"    // moe::fill_random

namespace {

struct options {
  bool smoke = false;
  std::int64_t max_mib = 1024;
  std::int64_t layer_tokens = 2048, layer_hidden = 512, layer_ffn = 1024;
  int iters = 5;
  int threads = 1;
};

/// Memory aligned for the layer's workspace (and for wide copies), freed with the object.
struct buffer {
  void* p = nullptr;
  explicit buffer(std::size_t bytes)
      : p(std::aligned_alloc(256, std::max<std::size_t>(256, (bytes + 255) / 256 * 256))) {
    if (p != nullptr) std::memset(p, 1, bytes);  // touched now: no page faults when timed
  }
  ~buffer() { std::free(p); }
  buffer(buffer const&) = delete;
  buffer& operator=(buffer const&) = delete;
};

[[noreturn]] void fail(char const* what, moe::status const& s) {
  std::fprintf(stderr, "error: %s: %s\n", what, s.message());
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// The slowest rank's value (a collective is as slow as its slowest rank).
double slowest(double t) {
  double m = t;
  MPI_Allreduce(&t, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  std::size_t const n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Median over `iters` of the slowest rank's time of f().
template <class F>
double time_median(int iters, F const& f) {
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    double const t0 = now();
    f();
    t.push_back(slowest(now() - t0));
  }
  return median(t);
}

/// (a) one all_to_all_v of T·K rows of `row_bytes` bytes, T·K/R rows to every rank.
void exchange_row(moe::comm::mpi const& comm, options const& o, std::int64_t T, std::int64_t H,
                  std::int64_t K, int elem, char const* type) {
  std::int32_t const R = comm.size();
  std::int64_t const rows = T * K;
  std::size_t const row_bytes = static_cast<std::size_t>(H) * static_cast<std::size_t>(elem);
  std::size_t const bytes = static_cast<std::size_t>(rows) * row_bytes;
  double const mib = static_cast<double>(bytes) / 1048576.0;
  if (comm.rank() == 0)
    std::printf("%6lld %5lld %2lld  %-4s %9.1f ", static_cast<long long>(T),
                static_cast<long long>(H), static_cast<long long>(K), type, mib);
  if (mib > static_cast<double>(o.max_mib)) {
    if (comm.rank() == 0)
      std::printf("   skipped (send buffer above --max-mib %lld)\n",
                  static_cast<long long>(o.max_mib));
    return;
  }
  // Uniform routing: every destination gets rows / R (the first rows % R one more).
  std::vector<std::int64_t> counts(static_cast<std::size_t>(R));
  for (std::int32_t r = 0; r < R; ++r)
    counts[static_cast<std::size_t>(r)] = rows / R + (r < rows % R);
  buffer send(bytes), recv(bytes);
  // Iterations: enough for ~0.3 s of all-to-alls, 3 to 20, the same on every rank.
  double const first = slowest([&] {
    double const t0 = now();
    moe::status const s =
        comm.all_to_all_v(send.p, counts.data(), recv.p, counts.data(), row_bytes);
    if (!s.ok()) fail("all_to_all_v", s);
    return now() - t0;
  }());
  int const iters = o.smoke ? 2 : std::clamp(static_cast<int>(0.3 / std::max(first, 1e-6)), 3, 20);
  double const t_a2a = time_median(iters, [&] {
    moe::status const s =
        comm.all_to_all_v(send.p, counts.data(), recv.p, counts.data(), row_bytes);
    if (!s.ok()) fail("all_to_all_v", s);
  });
  double const t_copy = time_median(iters, [&] { std::memcpy(recv.p, send.p, bytes); });
  double const a2a_gbs = static_cast<double>(bytes) / t_a2a / 1e9;
  double const copy_gbs = static_cast<double>(bytes) / t_copy / 1e9;
  if (comm.rank() == 0)
    std::printf("%10.3f %10.2f %10.2f %9.2f %6d\n", 1e3 * t_a2a, a2a_gbs, copy_gbs,
                a2a_gbs / copy_gbs, iters);
}

constexpr moe::config bench_layer{.experts = 16,
                                  .top_k = 2,
                                  .capacity_factor = {5, 4},
                                  .act = moe::precision::fp32,
                                  .weight = moe::precision::fp32,
                                  .ffn_activation = moe::activation::gelu};

/// (b) the expert-parallel layer's forward + backward, split by layer_profile.
void layer_split(moe::comm::mpi const& comm, options const& o) {
  constexpr auto C = bench_layer;
  std::int32_t const R = comm.size(), rank = comm.rank();
  if (C.experts % R != 0) {
    if (rank == 0)
      std::printf("\nlayer split skipped: R = %d does not divide E = %d\n", R, C.experts);
    return;
  }
  std::int64_t const T = o.layer_tokens, H = o.layer_hidden, F = o.layer_ffn;
  moe::layer<C, moe::host_policy, moe::comm::mpi> layer(
      moe::layer_shape{.hidden = H, .ffn = F, .ep_size = R}, comm);
  moe::status s = layer.allocate();
  if (s.ok()) s = layer.init({.seed = 1});
  if (!s.ok()) fail("layer allocate/init", s);
  moe::layer_profile prof{};
  layer.options().profile = &prof;
  moe::problem const p = layer.make_problem(T, true);
  std::size_t const ws_bytes = layer.workspace_bytes(p);
  buffer ws(ws_bytes);
  std::vector<float> x(static_cast<std::size_t>(T * H)), y(x.size()), dy(x.size()), dx(x.size());
  auto const offset = static_cast<std::uint64_t>(rank) * 4u * static_cast<std::uint64_t>(T * H);
  s = moe::fill_random(moe::host, {.dist = moe::distribution::normal,
                                   .seed = 7,
                                   .offset = offset,
                                   .out = x.data(),
                                   .n = T * H});
  if (s.ok())
    s = moe::fill_random(moe::host, {.dist = moe::distribution::normal,
                                     .seed = 8,
                                     .offset = offset,
                                     .out = dy.data(),
                                     .n = T * H});
  if (!s.ok()) fail("fill_random", s);
  auto const policy = moe::host.with_threads(o.threads);
  moe::layer_stats st{};
  auto const step = [&] {
    moe::status r =
        layer.forward(policy, p, {.x = x.data(), .y = y.data(), .stats = &st}, ws.p, ws_bytes);
    if (r.ok())
      r = layer.backward(policy, p, {.x = x.data(), .dy = dy.data(), .dx = dx.data()}, ws.p,
                         ws_bytes);
    if (!r.ok()) fail("layer forward/backward", r);
  };
  step();  // warm-up
  prof = {};
  int const iters = o.smoke ? 1 : o.iters;
  double total = 0;
  for (int i = 0; i < iters; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    double const t0 = now();
    step();
    total += now() - t0;
  }
  double const n = static_cast<double>(iters);
  double const mine[7] = {prof.route / n,
                          prof.plan / n,
                          prof.exchange / n,
                          prof.ffn / n,
                          prof.rest / n,
                          total / n,
                          static_cast<double>(prof.bytes_sent) / n};
  std::vector<double> all(static_cast<std::size_t>(7 * R));
  MPI_Gather(mine, 7, MPI_DOUBLE, all.data(), 7, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (rank != 0) return;
  double const flops = 3.0 * 2.0 * static_cast<double>(T * C.top_k) * 2.0 *
                       static_cast<double>(H * F);  // expert FFN fwd + bwd, per rank
  std::printf(
      "\nexpert-parallel layer, forward + backward: E = %d, top-%d, cf 1.25, GELU, fp32, H = %lld, "
      "F = %lld, T = %lld tokens a rank (%lld in the group), %d thread(s) a rank, mean of %d\n",
      C.experts, C.top_k, static_cast<long long>(H), static_cast<long long>(F),
      static_cast<long long>(T), static_cast<long long>(T * R), o.threads, iters);
  std::printf("  (capacity %lld, dropped %lld of %lld routes; expert FFN ~%.2f GFLOP a rank)\n",
              static_cast<long long>(st.route.capacity), static_cast<long long>(st.route.dropped),
              static_cast<long long>(st.route.routes), flops / 1e9);
  std::printf(
      "rank   total ms |  route ms   plan ms  exchange ms   ffn ms   rest ms |"
      " route  plan  exch   ffn  rest | MiB sent  exch GB/s\n");
  for (std::int32_t r = 0; r < R; ++r) {
    double const* v = all.data() + 7 * r;
    double const parts = v[0] + v[1] + v[2] + v[3] + v[4];
    std::printf("%4d %10.1f | %8.1f %9.1f %12.1f %8.1f %9.1f |", r, 1e3 * v[5], 1e3 * v[0],
                1e3 * v[1], 1e3 * v[2], 1e3 * v[3], 1e3 * v[4]);
    for (int k = 0; k < 5; ++k) std::printf(" %4.0f%%", parts > 0 ? 100.0 * v[k] / parts : 0.0);
    std::printf(" | %8.1f %10.2f\n", v[6] / 1048576.0, v[2] > 0 ? v[6] / v[2] / 1e9 : 0.0);
  }
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    auto const next = [&]() -> std::int64_t {
      if (i + 1 >= argc) return -1;
      return std::strtoll(argv[++i], nullptr, 10);
    };
    std::string const a = argv[i];
    std::int64_t v = 0;
    if (a == "--smoke")
      o.smoke = true;
    else if (a == "--max-mib" && (v = next()) > 0)
      o.max_mib = v;
    else if (a == "--layer-tokens" && (v = next()) > 0)
      o.layer_tokens = v;
    else if (a == "--layer-hidden" && (v = next()) > 0)
      o.layer_hidden = v;
    else if (a == "--layer-ffn" && (v = next()) > 0)
      o.layer_ffn = v;
    else if (a == "--iters" && (v = next()) > 0)
      o.iters = static_cast<int>(v);
    else if (a == "--threads" && (v = next()) >= 0)
      o.threads = static_cast<int>(v);
    else {
      std::fprintf(stderr, "error: bad flag '%s' (see the comment at the top of main.cpp)\n",
                   a.c_str());
      std::exit(1);
    }
  }
  if (o.smoke) {
    o.layer_tokens = 128;
    o.layer_hidden = 64;
    o.layer_ffn = 128;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  options const o = parse(argc, argv);
  MPI_Init(&argc, &argv);
  {
    moe::comm::mpi const comm(MPI_COMM_WORLD);
    if (comm.rank() == 0) {
      std::printf(
          "all_to_all_v (moe::comm::mpi), R = %d ranks, uniform routing: T·K/R rows of H "
          "values from every rank to every rank\n",
          comm.size());
      std::printf(
          "     T     H  K  type  MiB/rank  median ms  GB/s/rank memcpy GB/s  fraction  iters\n");
    }
    std::vector<std::int64_t> const Ts =
        o.smoke ? std::vector<std::int64_t>{256} : std::vector<std::int64_t>{4096, 16384};
    std::vector<std::int64_t> const Hs =
        o.smoke ? std::vector<std::int64_t>{64} : std::vector<std::int64_t>{1024, 4096};
    std::vector<std::int64_t> const Ks =
        o.smoke ? std::vector<std::int64_t>{1, 2} : std::vector<std::int64_t>{1, 2, 8};
    for (std::int64_t T : Ts)
      for (std::int64_t H : Hs)
        for (std::int64_t K : Ks) {
          exchange_row(comm, o, T, H, K, 2, "bf16");
          exchange_row(comm, o, T, H, K, 4, "fp32");
        }
    layer_split(comm, o);
  }
  MPI_Finalize();
  return 0;
}
