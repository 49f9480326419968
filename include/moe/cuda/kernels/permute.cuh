// SPDX-License-Identifier: Apache-2.0
// Kernels of permute, unpermute/combine, combine_backward and permute_backward (see
// moe/permute.hpp). All four are gathers over rows of H elements and bound by memory
// bandwidth, so they share one shape: a group of `tpr` threads (a warp up to a whole block,
// detail::threads_per_row) owns a destination row, loads `unroll` 16-byte vectors per thread
// before storing any (several independent loads in flight per thread hide DRAM latency), and
// walks the grid with a stride of rows. `V` is the elements per vector: 16 / sizeof(T) when
// the row length and pointers allow 16-byte accesses (detail::can_vectorize), else 1 — the
// same code, with scalar accesses.
//
// Sums (combine, permute_backward) start from -0 and add the K routes in k order with the
// non-contracting _rn intrinsics, exactly as the host loop does, so for the same inputs they
// give the host's bits (as long as the host compiler does not fuse multiply-adds either);
// permute and d_o are one copy or one rounding per element, equal to the host's bit for bit.
// d_weight is a dot product reduced by a shuffle tree: deterministic, but in a different order
// from the host's, hence equal within tolerance only. No atomics anywhere.
#pragma once

#include <cstdint>  // std::int32_t, std::int64_t

#include "moe/permute.hpp"    // detail::source_token, route_row, dispatch_accum_t
#include "moe/precision.hpp"  // to_float, from_float

namespace moe::backend::cuda {

/// V elements of T moved as one access (16 bytes when V = 16 / sizeof(T)).
template <class T, int V>
struct alignas(sizeof(T) * V) dispatch_pack {
  T v[V];
};

/// Threads per block of every dispatch kernel: 256/tpr rows at a time.
inline constexpr int dispatch_block = 256;
/// Vectors each thread loads before it stores.
inline constexpr int dispatch_unroll = 4;
/// Blocks per SM the register allocation must allow (128 registers a thread): stating it keeps
/// ptxas from picking a tighter budget of its own, which spilled the double kernels.
inline constexpr int dispatch_min_blocks = 2;

__device__ __forceinline__ float dispatch_add(float a, float b) {
  return __fadd_rn(a, b);
}
__device__ __forceinline__ double dispatch_add(double a, double b) {
  return __dadd_rn(a, b);
}
__device__ __forceinline__ float dispatch_mul(float a, float b) {
  return __fmul_rn(a, b);
}
__device__ __forceinline__ double dispatch_mul(double a, double b) {
  return __dmul_rn(a, b);
}

/// Visits the vectors [0, vectors) of a row that a thread at `lane` of a group of `tpr` owns,
/// `dispatch_unroll` at a time while whole steps fit (main(j, stride): j, j + stride, ...),
/// then one at a time (tail(j)). Separating the two keeps predicates off the unrolled loads.
template <class Main, class Tail>
__device__ __forceinline__ void for_row_vectors(int lane, int tpr, int vectors, Main&& main,
                                                Tail&& tail) {
  int j = lane;
#pragma unroll 1
  for (; j + (dispatch_unroll - 1) * tpr < vectors; j += dispatch_unroll * tpr) main(j, tpr);
#pragma unroll 1
  for (; j < vectors; j += tpr) tail(j);
}

/// out[row] = x[source_of[row] / K], zeros for padding rows. `vectors` per row.
template <class T, int V>
__global__ void __launch_bounds__(dispatch_block, dispatch_min_blocks)
    permute_gather_kernel(T const* __restrict__ x,                     // [T, H]
                          std::int32_t const* __restrict__ source_of,  // [rows]
                          T* __restrict__ out,                         // [rows, H]
                          std::int64_t routes, std::int64_t rows, int vectors, std::int32_t top_k,
                          int tpr) {
  using pack = dispatch_pack<T, V>;
  int const group = static_cast<int>(threadIdx.x) / tpr;
  int const lane = static_cast<int>(threadIdx.x) % tpr;
  std::int64_t const rows_per_block = dispatch_block / tpr;
#pragma unroll 1
  for (std::int64_t row = blockIdx.x * rows_per_block + group; row < rows;
       row += gridDim.x * rows_per_block) {
    std::int64_t const t = moe::detail::source_token(source_of[row], routes, top_k);
    pack* const dst = reinterpret_cast<pack*>(out) + row * vectors;
    if (t < 0) {
#pragma unroll 1
      for (int j = lane; j < vectors; j += tpr) dst[j] = pack{};
      continue;
    }
    pack const* const src = reinterpret_cast<pack const*>(x) + t * vectors;
    for_row_vectors(
        lane, tpr, vectors,
        [&](int j, int stride) {
          pack buf[dispatch_unroll];
#pragma unroll
          for (int u = 0; u < dispatch_unroll; ++u) buf[u] = src[j + u * stride];
#pragma unroll
          for (int u = 0; u < dispatch_unroll; ++u) dst[j + u * stride] = buf[u];
        },
        [&](int j) { dst[j] = src[j]; });
  }
}

/// acc[e] += w · v[e] (or += v[e] when unweighted), each step rounded on its own.
template <class A, class T, int V>
__device__ __forceinline__ void dispatch_accumulate(A (&acc)[V], dispatch_pack<T, V> const& v,
                                                    bool weighted, A w) {
  if (weighted) {
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = dispatch_add(acc[e], dispatch_mul(w, to_float(v.v[e])));
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = dispatch_add(acc[e], to_float(v.v[e]));
  }
}

/// Rounds V accumulators to a pack of T.
template <class T, int V, class A>
__device__ __forceinline__ dispatch_pack<T, V> dispatch_round(A const (&acc)[V]) {
  dispatch_pack<T, V> out;
#pragma unroll
  for (int e = 0; e < V; ++e) out.v[e] = from_float<T>(acc[e]);
  return out;
}

/// y[t] = Σ_k w[t,k] · src[row_of[t,k]] in k order (w = 1 when `weight` is null): combine,
/// and, with null weights, permute_backward. A token with no kept route gets +0.
template <class T, int V>
__global__ void __launch_bounds__(dispatch_block, dispatch_min_blocks)
    combine_gather_kernel(T const* __restrict__ src,                // [rows, H]
                          std::int32_t const* __restrict__ row_of,  // [T, K]
                          float const* __restrict__ weight,         // [T, K] or null
                          T* __restrict__ y,                        // [T, H]
                          std::int64_t tokens, std::int64_t rows, int vectors, std::int32_t top_k,
                          int tpr) {
  using pack = dispatch_pack<T, V>;
  using A = moe::detail::dispatch_accum_t<T>;
  int const group = static_cast<int>(threadIdx.x) / tpr;
  int const lane = static_cast<int>(threadIdx.x) % tpr;
  std::int64_t const tokens_per_block = dispatch_block / tpr;
  bool const weighted = weight != nullptr;
#pragma unroll 1
  for (std::int64_t t = blockIdx.x * tokens_per_block + group; t < tokens;
       t += gridDim.x * tokens_per_block) {
    std::int32_t const* const rows_of_t = row_of + t * top_k;
    float const* const weights_of_t = weighted ? weight + t * top_k : nullptr;
    bool kept = false;
#pragma unroll 1
    for (std::int32_t k = 0; k < top_k; ++k)
      kept |= moe::detail::route_row(rows_of_t[k], rows) >= 0;
    pack* const dst = reinterpret_cast<pack*>(y) + t * vectors;
    if (!kept) {
#pragma unroll 1
      for (int j = lane; j < vectors; j += tpr) dst[j] = pack{};
      continue;
    }
    for_row_vectors(
        lane, tpr, vectors,
        [&](int j, int stride) {
          A acc[dispatch_unroll][V];
#pragma unroll
          for (int u = 0; u < dispatch_unroll; ++u)
#pragma unroll
            for (int e = 0; e < V; ++e) acc[u][e] = A(-0.0);
#pragma unroll 1
          for (std::int32_t k = 0; k < top_k; ++k) {
            std::int64_t const row = moe::detail::route_row(rows_of_t[k], rows);
            if (row < 0) continue;
            pack const* const in = reinterpret_cast<pack const*>(src) + row * vectors;
            A const w = weighted ? static_cast<A>(weights_of_t[k]) : A(1);
            pack buf[dispatch_unroll];
#pragma unroll
            for (int u = 0; u < dispatch_unroll; ++u) buf[u] = in[j + u * stride];
#pragma unroll
            for (int u = 0; u < dispatch_unroll; ++u)
              dispatch_accumulate(acc[u], buf[u], weighted, w);
          }
#pragma unroll
          for (int u = 0; u < dispatch_unroll; ++u)
            dst[j + u * stride] = dispatch_round<T, V>(acc[u]);
        },
        [&](int j) {
          A acc[V];
#pragma unroll
          for (int e = 0; e < V; ++e) acc[e] = A(-0.0);
#pragma unroll 1
          for (std::int32_t k = 0; k < top_k; ++k) {
            std::int64_t const row = moe::detail::route_row(rows_of_t[k], rows);
            if (row < 0) continue;
            pack const* const in = reinterpret_cast<pack const*>(src) + row * vectors;
            A const w = weighted ? static_cast<A>(weights_of_t[k]) : A(1);
            dispatch_accumulate(acc, in[j], weighted, w);
          }
          dst[j] = dispatch_round<T, V>(acc);
        });
  }
}

/// d_o[j] = w · g[j] rounded to T (a copy when unweighted); returns Σ_e g[j]·v[j] when `dot`.
template <class T, int V, class A>
__device__ __forceinline__ A dispatch_scale_dot(dispatch_pack<T, V> const& g,
                                                dispatch_pack<T, V> const& v,
                                                dispatch_pack<T, V>& d, bool weighted, A w,
                                                bool dot) {
  A sum = 0;
#pragma unroll
  for (int e = 0; e < V; ++e) {
    A const gv = to_float(g.v[e]);
    d.v[e] = weighted ? from_float<T>(dispatch_mul(w, gv)) : g.v[e];
    if (dot) sum += gv * to_float(v.v[e]);
  }
  return sum;
}

/// d_o[row] = w · dy[t] (0 for padding rows) and, when d_weight is non-null,
/// d_weight[route] = <dy[t], o[row]>, reduced over the row's group of threads in a fixed tree.
/// d_weight of dropped routes is zeroed by the launcher before this kernel runs.
template <class T, int V>
__global__ void __launch_bounds__(dispatch_block, dispatch_min_blocks)
    combine_backward_kernel(T const* __restrict__ dy,                    // [T, H]
                            T const* __restrict__ o,                     // [rows, H]
                            std::int32_t const* __restrict__ source_of,  // [rows]
                            float const* __restrict__ weight,            // [T, K] or null
                            T* __restrict__ d_o,                         // [rows, H]
                            float* __restrict__ d_weight,                // [T, K] or null
                            std::int64_t routes, std::int64_t rows, int vectors, std::int32_t top_k,
                            int tpr) {
  using pack = dispatch_pack<T, V>;
  using A = moe::detail::dispatch_accum_t<T>;
  __shared__ A partial[dispatch_block / 32];
  int const group = static_cast<int>(threadIdx.x) / tpr;
  int const lane = static_cast<int>(threadIdx.x) % tpr;
  std::int64_t const rows_per_block = dispatch_block / tpr;
  bool const weighted = weight != nullptr;
  bool const need_dot = d_weight != nullptr;
  // `base` is the same for every thread of the block, so all of them meet each __syncthreads.
#pragma unroll 1
  for (std::int64_t base = blockIdx.x * rows_per_block; base < rows;
       base += gridDim.x * rows_per_block) {
    std::int64_t const row = base + group;
    std::int32_t const source = row < rows ? source_of[row] : -1;
    std::int64_t const t = moe::detail::source_token(source, routes, top_k);
    A dot = 0;
    if (row < rows) {
      pack* const dst = reinterpret_cast<pack*>(d_o) + row * vectors;
      if (t < 0) {
#pragma unroll 1
        for (int j = lane; j < vectors; j += tpr) dst[j] = pack{};
      } else {
        pack const* const g = reinterpret_cast<pack const*>(dy) + t * vectors;
        pack const* const v = reinterpret_cast<pack const*>(o) + row * vectors;
        A const w = weighted ? static_cast<A>(weight[source]) : A(1);
        for_row_vectors(
            lane, tpr, vectors,
            [&](int j, int stride) {
              pack gb[dispatch_unroll], vb[dispatch_unroll];
#pragma unroll
              for (int u = 0; u < dispatch_unroll; ++u) {
                gb[u] = g[j + u * stride];
                vb[u] = need_dot ? v[j + u * stride] : pack{};
              }
#pragma unroll
              for (int u = 0; u < dispatch_unroll; ++u) {
                pack d;
                dot += dispatch_scale_dot(gb[u], vb[u], d, weighted, w, need_dot);
                dst[j + u * stride] = d;
              }
            },
            [&](int j) {
              pack d;
              dot += dispatch_scale_dot(g[j], need_dot ? v[j] : pack{}, d, weighted, w, need_dot);
              dst[j] = d;
            });
      }
    }
    if (!need_dot) continue;  // the same for the whole block
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    if (tpr > 32) {  // also the same for the whole block
      int const warp = static_cast<int>(threadIdx.x) / 32;
      if (threadIdx.x % 32 == 0) partial[warp] = dot;
      __syncthreads();
      if (lane == 0) {
        dot = partial[warp];
        for (int w = 1; w < tpr / 32; ++w) dot += partial[warp + w];
      }
      __syncthreads();
    }
    if (lane == 0 && t >= 0) d_weight[source] = static_cast<float>(dot);
  }
}

}  // namespace moe::backend::cuda
