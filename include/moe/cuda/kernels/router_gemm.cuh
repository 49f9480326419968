// SPDX-License-Identifier: Apache-2.0
// Kernels of the router GEMM (moe/cuda/router_gemm.cuh). The three products are skinny — one
// side is E <= 1024 — so they run on the CUDA cores in the accumulation type (fp32, or fp64
// for fp64 configs) through one SIMT tile kernel, C[M, N] = Σ_k A(m, k) · B(k, n):
//
//   forward  logits[T, E]   M = T, N = E, k = h    A = x̃ (x ⊙ u, formed as it is loaded)
//   dgrad    dx[T, H]       M = T, N = H, k = e    A = d_logits, B = W_gᵀ; epilogue ⊙ u, round
//   wgrad    dW_g[H, E]    M = H, N = E, k = t    A = x̃ᵀ, B = d_logits; accumulated into dW_g
//
// A block of 256 threads owns a BM × BN output tile; it stages BK-deep slices of A and B in
// shared memory (padded by one element per row, so the column-wise stores of the transposing
// loads do not pile onto one bank) and every thread keeps a TM × TN register tile, its rows
// and columns strided by the thread grid so a warp reads consecutive shared addresses. The
// tile shape follows N: narrow tiles (BN = 8, 16) for small E so no work is wasted on padding.
//
// Determinism: every output element is one running sum (one fma per term, k ascending) owned
// by one thread, so nothing depends on scheduling. When the output tiles are too few to fill
// a GPU (wgrad's depth T; the forward's depth H at small T·E), the depth is split into S
// chunks fixed by (T, H, E) alone — never by the GPU —, each chunk's partial sums go to the
// workspace, and router_gemm_reduce_kernel adds them in chunk order. No atomics.
#pragma once

#include <cstdint>      // std::int64_t, std::uint64_t
#include <type_traits>  // std::is_same_v

#include "moe/philox.hpp"       // moe::uniform
#include "moe/precision.hpp"    // to_float, from_float
#include "moe/router_gemm.hpp"  // jitter_multiplier

namespace moe::backend::cuda {

/// Tile shape of router_gemm_tile_kernel for an output BN columns wide (8, 16, 32 or 64);
/// always 256 threads = (BM / TM) rows × (BN / TN) columns of threads.
template <int BN>
struct router_gemm_tile {
  static_assert(BN == 8 || BN == 16 || BN == 32 || BN == 64, "BN is 8, 16, 32 or 64");
  static constexpr int bn = BN;
  static constexpr int tn = BN >= 32 ? BN / 16 : 1;  // columns per thread
  static constexpr int tm = BN >= 32 ? 4 : 8;        // rows per thread
  static constexpr int col_threads = BN / tn;
  static constexpr int row_threads = 256 / col_threads;
  static constexpr int bm = row_threads * tm;
  static constexpr int bk = 16;
  static constexpr int threads = 256;
};

/// The narrowest tile that covers N = n columns (n <= 64), else the 64-wide one.
template <int N>
using router_gemm_tile_for = router_gemm_tile<(N <= 8    ? 8
                                               : N <= 16 ? 16
                                               : N <= 32 ? 32
                                                         : 64)>;

/// The jitter as kernels read it: u[t, h] from the caller's tensor or from Philox, exactly as
/// detail::router_jitter_source::fill draws it on the host.
struct router_jitter_dev {
  bool on = false;
  float eps = 0.0f;
  float const* u = nullptr;  // [T, H] or null = Philox
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;
  std::int64_t hidden = 0;

  __device__ __forceinline__ float at(std::int64_t t, std::int64_t h) const {
    std::int64_t const i = t * hidden + h;
    if (u != nullptr) return __ldg(u + i);
    return ::moe::jitter_multiplier(eps,
                                    ::moe::uniform(seed, offset + static_cast<std::uint64_t>(i)));
  }
};

/// x · u in the accumulation type, rounded once (never fused into the GEMM's fma): the host's
/// jitter_apply.
template <class A>
__device__ __forceinline__ A router_jitter_apply(A x, float u) {
  if constexpr (std::is_same_v<A, float>)
    return __fmul_rn(x, u);
  else
    return __dmul_rn(x, static_cast<double>(u));
}

/// Operand x̃[t, h] = A(x[t, h]) ⊙ u[t, h] (the forward's A, wgrad's A with (m, k) = (h, t)).
template <class A, class X, bool Transposed>
struct router_x_operand {
  X const* x = nullptr;  // [T, H]
  std::int64_t hidden = 0;
  router_jitter_dev jitter{};

  __device__ __forceinline__ A operator()(std::int64_t i, std::int64_t j) const {
    std::int64_t const t = Transposed ? j : i;
    std::int64_t const h = Transposed ? i : j;
    A const v = static_cast<A>(::moe::to_float(x[t * hidden + h]));
    return jitter.on ? router_jitter_apply(v, jitter.at(t, h)) : v;
  }
};

/// Operand W_g[h, e] ([H, E] row-major) read as (k, n) = (h, e), or as its transpose (k, n) =
/// (e, h) for dgrad.
template <class A, class W, bool Transposed>
struct router_w_operand {
  W const* w = nullptr;  // [H, E]
  std::int64_t experts = 0;

  __device__ __forceinline__ A operator()(std::int64_t i, std::int64_t j) const {
    std::int64_t const h = Transposed ? j : i;
    std::int64_t const e = Transposed ? i : j;
    return static_cast<A>(::moe::to_float(w[h * experts + e]));
  }
};

/// Operand d_logits[t, e] ([T, E] row-major, already in A).
template <class A>
struct router_dlogits_operand {
  A const* d = nullptr;  // [T, E]
  std::int64_t experts = 0;

  __device__ __forceinline__ A operator()(std::int64_t t, std::int64_t e) const {
    return d[t * experts + e];
  }
};

/// Epilogue: out[m, n] = sum, starting from 0 (forward logits; wgrad's per-chunk partials at
/// chunk · M · N).
template <class A>
struct router_store_epilogue {
  A* out = nullptr;
  std::int64_t ld = 0;           // row stride (N)
  std::int64_t chunk_elems = 0;  // M · N: where chunk z's partials start
  __device__ __forceinline__ A init(std::int64_t, std::int64_t) const { return A{0}; }
  __device__ __forceinline__ void store(unsigned z, std::int64_t m, std::int64_t n, A v) const {
    out[static_cast<std::int64_t>(z) * chunk_elems + m * ld + n] = v;
  }
};

/// Epilogue: out[m, n] += sum, continuing the caller's running sum (wgrad in one chunk).
template <class A>
struct router_accumulate_epilogue {
  A* out = nullptr;
  std::int64_t ld = 0;
  __device__ __forceinline__ A init(std::int64_t m, std::int64_t n) const {
    return out[m * ld + n];
  }
  __device__ __forceinline__ void store(unsigned, std::int64_t m, std::int64_t n, A v) const {
    out[m * ld + n] = v;
  }
};

/// Epilogue of dgrad: dx[t, h] = X(sum ⊙ u[t, h]), rounded once to the activation type.
template <class A, class X>
struct router_dx_epilogue {
  X* dx = nullptr;  // [T, H]
  std::int64_t hidden = 0;
  router_jitter_dev jitter{};
  __device__ __forceinline__ A init(std::int64_t, std::int64_t) const { return A{0}; }
  __device__ __forceinline__ void store(unsigned, std::int64_t t, std::int64_t h, A v) const {
    A const r = jitter.on ? router_jitter_apply(v, jitter.at(t, h)) : v;
    dx[t * hidden + h] = ::moe::from_float<X>(r);
  }
};

/// C[M, N] (through `epi`) = Σ_{k in chunk z} a(m, k) · b(k, n), k ascending, one fma per term.
/// Chunk z = blockIdx.z covers k in [z · chunk, min((z + 1) · chunk, depth)).
/// AKMajor: consecutive k of A are adjacent in memory (else consecutive m); BNMajor: consecutive
/// n of B are adjacent (else consecutive k) — the tile loads walk the adjacent index fastest.
template <class A, class Tile, bool AKMajor, bool BNMajor, class OpA, class OpB, class Epi>
__global__ void __launch_bounds__(Tile::threads)
    router_gemm_tile_kernel(std::int64_t M, std::int64_t N, std::int64_t depth, std::int64_t chunk,
                            OpA a, OpB b, Epi epi) {
  constexpr int BM = Tile::bm, BN = Tile::bn, BK = Tile::bk, TM = Tile::tm, TN = Tile::tn;
  constexpr int RT = Tile::row_threads, CT = Tile::col_threads, NT = Tile::threads;
  __shared__ A as[BK][BM + 1];  // A slice, k-major: as[k][m]
  __shared__ A bs[BK][BN + 1];  // B slice: bs[k][n]

  int const tid = static_cast<int>(threadIdx.x);
  int const tx = tid % CT;  // this thread's columns: tx + j·CT
  int const ty = tid / CT;  // this thread's rows: ty + i·RT
  std::int64_t const m0 = static_cast<std::int64_t>(blockIdx.x) * BM;
  std::int64_t const n0 = static_cast<std::int64_t>(blockIdx.y) * BN;
  std::int64_t const k_begin = static_cast<std::int64_t>(blockIdx.z) * chunk;
  std::int64_t const k_end = k_begin + chunk < depth ? k_begin + chunk : depth;

  A acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      std::int64_t const m = m0 + ty + i * RT, n = n0 + tx + j * CT;
      acc[i][j] = m < M && n < N ? epi.init(m, n) : A{0};
    }

  for (std::int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
    for (int idx = tid; idx < BM * BK; idx += NT) {
      int const kk = AKMajor ? idx % BK : idx / BM;
      int const mm = AKMajor ? idx / BK : idx % BM;
      std::int64_t const m = m0 + mm, k = k0 + kk;
      as[kk][mm] = m < M && k < k_end ? a(m, k) : A{0};
    }
#pragma unroll
    for (int idx = tid; idx < BK * BN; idx += NT) {
      int const kk = BNMajor ? idx / BN : idx % BK;
      int const nn = BNMajor ? idx % BN : idx / BK;
      std::int64_t const n = n0 + nn, k = k0 + kk;
      bs[kk][nn] = n < N && k < k_end ? b(k, n) : A{0};
    }
    __syncthreads();
    // Past k_end both slices hold zeros: fma(0, 0, s) = s, so the full depth adds nothing.
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      A ar[TM], br[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) ar[i] = as[kk][ty + i * RT];
#pragma unroll
      for (int j = 0; j < TN; ++j) br[j] = bs[kk][tx + j * CT];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(ar[i], br[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      std::int64_t const m = m0 + ty + i * RT, n = n0 + tx + j * CT;
      if (m < M && n < N) epi.store(blockIdx.z, m, n, acc[i][j]);
    }
}

/// out[i] = (Accumulate ? out[i] : 0) + partial[0][i] + partial[1][i] + ... in chunk order:
/// wgrad continues dW's running sum, the forward's split writes the logits.
template <class A, bool Accumulate>
__global__ void router_gemm_reduce_kernel(A const* __restrict__ partial, std::int64_t elems,
                                          std::int64_t chunks, A* __restrict__ dw) {
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < elems;
       i += stride) {
    A s = Accumulate ? dw[i] : A{0};
    for (std::int64_t c = 0; c < chunks; ++c) s += partial[c * elems + i];
    dw[i] = s;
  }
}

}  // namespace moe::backend::cuda
