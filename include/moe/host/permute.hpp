// SPDX-License-Identifier: Apache-2.0
// Host overloads of permute, unpermute/combine, combine_backward and permute_backward (declared
// in moe/permute.hpp, which includes this file at its end). Plain loops over rows: copies are
// memcpy of whole rows; sums walk a row in chunks of `chunk` elements whose float accumulators
// live on the stack (no allocation), adding the K routes in k order element by element, so the
// compiler vectorises the inner loop and the result does not depend on how it does so. With
// OpenMP, tokens or rows are shared among threads (each writes only its own rows).
#pragma once

#include <cstdint>  // std::int32_t, std::int64_t
#include <cstring>  // std::memcpy, std::memset

#include "moe/permute.hpp"    // the args structs, detail::check, source_token, route_row
#include "moe/precision.hpp"  // to_float, from_float

#if defined(_OPENMP)
#include <omp.h>  // omp_get_max_threads
#endif

namespace moe::backend::host {

/// Elements of a row summed per step: 256 floats of accumulators (1 KiB, 2 KiB for double).
inline constexpr std::int64_t dispatch_chunk = 256;

/// Runs body(i) for i in [0, n): over OpenMP threads when built with OpenMP (`threads` > 0 caps
/// them), else in order. Each i writes disjoint outputs, so the order does not matter.
template <class Body>
inline void for_each_row(int threads, std::int64_t n, Body const& body) {
#if defined(_OPENMP)
  int const t = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1 && n > 64)
  for (std::int64_t i = 0; i < n; ++i) body(i);
#else
  (void)threads;
  for (std::int64_t i = 0; i < n; ++i) body(i);
#endif
}

/// dst[t] = Σ_k w[t,k] · src[row_of[t,k]] (w = 1 when `weight` is null) for every token, in k
/// order, accumulated in A from -0 so that a single unit-weight route is copied bit for bit
/// (-0 + x = x for every x, -0 included); a token with no kept route gets +0.
template <class T>
void gather_sum(int threads, std::int64_t tokens, std::int64_t hidden, std::int64_t rows,
                std::int32_t top_k,
                T const* src,                // [rows, H]
                std::int32_t const* row_of,  // [T, K]
                float const* weight,         // [T, K] or null
                T* dst) {                    // [T, H]
  using A = detail::dispatch_accum_t<T>;
  for_each_row(threads, tokens, [&](std::int64_t t) {
    T* const out = dst + t * hidden;
    bool kept = false;
    for (std::int32_t k = 0; k < top_k; ++k)
      kept |= detail::route_row(row_of[t * top_k + k], rows) >= 0;
    if (!kept) {
      std::memset(static_cast<void*>(out), 0, static_cast<std::size_t>(hidden) * sizeof(T));
      return;
    }
    for (std::int64_t h0 = 0; h0 < hidden; h0 += dispatch_chunk) {
      std::int64_t const n = hidden - h0 < dispatch_chunk ? hidden - h0 : dispatch_chunk;
      A acc[dispatch_chunk];
      for (std::int64_t j = 0; j < n; ++j) acc[j] = A(-0.0);
      for (std::int32_t k = 0; k < top_k; ++k) {
        std::int64_t const row = detail::route_row(row_of[t * top_k + k], rows);
        if (row < 0) continue;
        T const* const in = src + row * hidden + h0;
        if (weight == nullptr) {
          for (std::int64_t j = 0; j < n; ++j) acc[j] += to_float(in[j]);
        } else {
          A const w = static_cast<A>(weight[t * top_k + k]);
          for (std::int64_t j = 0; j < n; ++j) acc[j] += w * to_float(in[j]);
        }
      }
      for (std::int64_t j = 0; j < n; ++j) out[h0 + j] = from_float<T>(acc[j]);
    }
  });
}

/// The first route whose row_of entry is outside [-1, rows), or -1.
inline std::int64_t first_bad_row(std::int32_t const* row_of, std::int64_t routes,
                                  std::int64_t rows) {
  for (std::int64_t i = 0; i < routes; ++i)
    if (row_of[i] < -1 || row_of[i] >= rows) return i;
  return -1;
}

inline status bad_row_error(char const* op, std::int32_t const* row_of, std::int64_t bad,
                            std::int32_t top_k, std::int64_t rows) noexcept {
  return status::error(errc::invalid_argument,
                       "%s.row_of[t=%lld, k=%d]: expected -1 <= row < rows = %lld, got %d", op,
                       static_cast<long long>(bad / top_k), static_cast<int>(bad % top_k),
                       static_cast<long long>(rows), row_of[bad]);
}

/// The first row whose source_of entry is outside [-1, routes), or -1.
inline std::int64_t first_bad_source(std::int32_t const* source_of, std::int64_t rows,
                                     std::int64_t routes) {
  for (std::int64_t r = 0; r < rows; ++r)
    if (source_of[r] < -1 || source_of[r] >= routes) return r;
  return -1;
}

inline status bad_source_error(char const* op, std::int32_t const* source_of, std::int64_t bad,
                               std::int64_t routes) noexcept {
  return status::error(errc::invalid_argument,
                       "%s.source_of[%lld]: expected -1 <= route < T*K = %lld, got %d", op,
                       static_cast<long long>(bad), static_cast<long long>(routes), source_of[bad]);
}

}  // namespace moe::backend::host

namespace moe {

template <dispatch_storage T>
status permute(host_policy policy, permute_args<T> const& a) noexcept {
  MOE_TRY(detail::check(a));
  std::int64_t const routes = a.tokens * a.top_k;
  if (std::int64_t const bad = backend::host::first_bad_source(a.source_of, a.rows, routes);
      bad >= 0)
    return backend::host::bad_source_error("permute_args", a.source_of, bad, routes);
  auto const bytes = static_cast<std::size_t>(a.hidden) * sizeof(T);
  backend::host::for_each_row(policy.threads, a.rows, [&](std::int64_t row) {
    std::int64_t const t = detail::source_token(a.source_of[row], routes, a.top_k);
    void* const out = a.out + row * a.hidden;
    if (t < 0)
      std::memset(out, 0, bytes);
    else
      std::memcpy(out, a.x + t * a.hidden, bytes);
  });
  return {};
}

template <dispatch_storage T>
status unpermute(host_policy policy, combine_args<T> const& a) noexcept {
  MOE_TRY(detail::check(a));
  if (std::int64_t const bad = backend::host::first_bad_row(a.row_of, a.tokens * a.top_k, a.rows);
      bad >= 0)
    return backend::host::bad_row_error("combine_args", a.row_of, bad, a.top_k, a.rows);
  backend::host::gather_sum(policy.threads, a.tokens, a.hidden, a.rows, a.top_k, a.o, a.row_of,
                            a.weight, a.y);
  return {};
}

template <dispatch_storage T>
status combine_backward(host_policy policy, combine_backward_args<T> const& a) noexcept {
  MOE_TRY(detail::check(a));
  using A = detail::dispatch_accum_t<T>;
  std::int64_t const routes = a.tokens * a.top_k;
  if (std::int64_t const bad = backend::host::first_bad_source(a.source_of, a.rows, routes);
      bad >= 0)
    return backend::host::bad_source_error("combine_backward_args", a.source_of, bad, routes);
  if (a.d_weight != nullptr)
    if (std::int64_t const bad = backend::host::first_bad_row(a.row_of, routes, a.rows); bad >= 0)
      return backend::host::bad_row_error("combine_backward_args", a.row_of, bad, a.top_k, a.rows);
  // d_o: a scaled gather, one rounding per element.
  backend::host::for_each_row(policy.threads, a.rows, [&](std::int64_t row) {
    std::int32_t const source = a.source_of[row];
    std::int64_t const t = detail::source_token(source, routes, a.top_k);
    T* const out = a.d_o + row * a.hidden;
    if (t < 0) {
      std::memset(static_cast<void*>(out), 0, static_cast<std::size_t>(a.hidden) * sizeof(T));
      return;
    }
    T const* const in = a.dy + t * a.hidden;
    if (a.weight == nullptr) {
      std::memcpy(static_cast<void*>(out), in, static_cast<std::size_t>(a.hidden) * sizeof(T));
      return;
    }
    A const w = static_cast<A>(a.weight[source]);
    for (std::int64_t h = 0; h < a.hidden; ++h) out[h] = from_float<T>(w * to_float(in[h]));
  });
  // d_weight: one dot product per route, in h order.
  if (a.d_weight != nullptr) {
    backend::host::for_each_row(policy.threads, routes, [&](std::int64_t i) {
      std::int64_t const row = detail::route_row(a.row_of[i], a.rows);
      if (row < 0) {
        a.d_weight[i] = 0.0f;
        return;
      }
      T const* const g = a.dy + (i / a.top_k) * a.hidden;
      T const* const v = a.o + row * a.hidden;
      A dot = 0;
      for (std::int64_t h = 0; h < a.hidden; ++h) dot += to_float(g[h]) * to_float(v[h]);
      a.d_weight[i] = static_cast<float>(dot);
    });
  }
  return {};
}

template <dispatch_storage T>
status permute_backward(host_policy policy, permute_backward_args<T> const& a) noexcept {
  MOE_TRY(detail::check(a));
  if (std::int64_t const bad = backend::host::first_bad_row(a.row_of, a.tokens * a.top_k, a.rows);
      bad >= 0)
    return backend::host::bad_row_error("permute_backward_args", a.row_of, bad, a.top_k, a.rows);
  backend::host::gather_sum<T>(policy.threads, a.tokens, a.hidden, a.rows, a.top_k, a.d_out,
                               a.row_of, nullptr, a.dx);
  return {};
}

}  // namespace moe
