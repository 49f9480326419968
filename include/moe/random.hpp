// SPDX-License-Identifier: Apache-2.0
// Op: fill a tensor with Philox draws (uniform, normal or Gumbel) addressed by (seed, offset).
// Noise in the router (jitter, Gumbel sampling, random token selection) is drawn through this
// op or supplied by the caller; because every draw is a pure function of (seed, offset, index),
// the host and CUDA backends produce the same tensor and any run can be reproduced exactly.
// The CUDA overload lives in moe/cuda/random.cuh.
#pragma once

#include <cstdint>  // std::int64_t, std::uint64_t

#include "moe/detail/macros.hpp"  // MOE_HOST_DEVICE
#include "moe/philox.hpp"          // moe::distribution, moe::draw, moe::philox_fill, philox_stream
#include "moe/policy.hpp"         // moe::host_policy
#include "moe/status.hpp"         // moe::status

namespace moe {

/// Arguments of fill_random. Draw i of `out` is `draw(dist, seed, i, offset)`: uniform and
/// Gumbel draws consume one 32-bit word each, normal draws two, so a caller that wants
/// independent tensors from one seed gives them disjoint word ranges.
struct random_args {
  distribution dist = distribution::uniform;
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;  ///< first 32-bit word of the stream used
  float* out = nullptr;      ///< [n]
  std::int64_t n = 0;
};

/// Words of the stream that `n` draws of `d` consume (to advance an offset past them).
constexpr std::uint64_t words_used(distribution d, std::int64_t n) noexcept {
  return static_cast<std::uint64_t>(n) * words_per_draw(d);
}

namespace detail {

/// Draws per run: one Philox block's worth of words for uniform and Gumbel draws.
inline constexpr std::int64_t random_draws_per_run = 4;

/// Run `run` of a fill: draws [4 run, 4 run + 4) ∩ [0, n) through one philox_stream, so each
/// Philox block is computed once for its words. The CUDA kernel gives each thread runs; the
/// host tests run them in any order to check that the runs tile the tensor exactly.
MOE_HOST_DEVICE void fill_random_run(distribution d, std::uint64_t seed, std::uint64_t offset,
                                     float* out,  // [n]
                                     std::int64_t n, std::int64_t run) {
  std::int64_t const first = run * random_draws_per_run;
  philox_stream stream(seed, offset + static_cast<std::uint64_t>(first) * words_per_draw(d));
  for (std::int64_t k = 0; k < random_draws_per_run && first + k < n; ++k)
    out[first + k] = stream.next(d);
}

/// Runs that cover n draws.
MOE_HOST_DEVICE constexpr std::int64_t random_runs(std::int64_t n) noexcept {
  return (n + random_draws_per_run - 1) / random_draws_per_run;
}

inline status check(random_args const& a) noexcept {
  if (a.n < 0)
    return status::error(errc::invalid_argument, "random_args.n: expected >= 0, got %lld",
                         static_cast<long long>(a.n));
  if (a.n > 0 && a.out == nullptr)
    return status::error(errc::invalid_argument, "random_args.out: expected non-null for n = %lld",
                         static_cast<long long>(a.n));
  if (a.dist != distribution::uniform && a.dist != distribution::normal &&
      a.dist != distribution::gumbel)
    return status::error(errc::invalid_argument,
                         "random_args.dist: expected uniform, normal or gumbel, got %d",
                         static_cast<int>(a.dist));
  return {};
}
}  // namespace detail

/// Fills `a.out[0, n)` with draws on the CPU.
inline status fill_random(host_policy, random_args const& a) noexcept {
  MOE_TRY(detail::check(a));
  philox_fill(a.dist, a.seed, a.offset, a.out, a.n);
  return {};
}

}  // namespace moe
