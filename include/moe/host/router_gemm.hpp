// SPDX-License-Identifier: Apache-2.0
// CPU backend of the router GEMM (moe/router_gemm.hpp): the three products of the router's
// linear layer — forward logits = x̃ · W_g, dgrad dx = (d_logits · W_gᵀ) ⊙ u, wgrad
// dW_g += x̃ᵀ · d_logits — as cache-blocked loops around one register-tile update.
//
// Determinism: every output element is one running sum in a fixed order — ascending h for the
// logits, ascending e for dx, ascending t (continuing from the caller's dW_g) for dW_g — and
// each is owned by exactly one thread. Partial sums kept between blocks are stored in the
// accumulation type itself, so blocking does not change a single rounding: the results depend
// on neither the thread count nor the tile sizes, and dW_g accumulated over two calls equals
// one call over the concatenated tokens, bit for bit.
//
// Layout of the work (the shapes a reader needs; A = float or double):
//   forward  per block of 32 tokens (one thread): x̃ rows converted once per 128 columns of H,
//            W_g converted to A in [128 × 64] panels, 4 × nr register tiles accumulated into
//            the logits rows (they are A, so storing a partial sum rounds nothing).
//   dgrad    per block of 32 tokens: W_gᵀ packed in [128 e × 64 h] panels, sums in a local
//            [32 × 64] buffer, then ⊙ u and one rounding to the activation type.
//   wgrad    per block of 64 columns of H (one thread owns those rows of dW_g): x̃ packed in
//            [256 t × 64 h] panels, register tiles over (4 experts × nr hidden).
// The tile update vectorises over its nr contiguous columns (two 16-byte vectors: SSE2 at
// -O2, one AVX vector with -mavx), and keeps its 4 × nr sums in registers across the depth.
#pragma once

#include <algorithm>    // std::min, std::fill
#include <cstdint>      // std::int64_t
#include <cstring>      // std::memcpy
#include <type_traits>  // std::is_same_v
#include <utility>      // std::integer_sequence

#include "moe/detail/float_math.hpp"  // detail::mul_rn
#include "moe/precision.hpp"          // to_float, from_float

#if defined(_OPENMP)
#include <omp.h>  // omp_get_max_threads
#endif

namespace moe::backend::host {

/// Block sizes of the router GEMM for accumulation type A. A thread's panels live on its stack:
/// at most 64 KiB for float (wgrad's x̃ panel), 128 KiB for double.
template <class A>
struct router_gemm_tiling {
  /// Register tile: 4 broadcast rows × 32 bytes of vector columns (8 floats, 4 doubles), i.e.
  /// 8 SSE2 or 4 AVX sum registers, leaving room for the operands.
  static constexpr int tile_rows = 4;
  static constexpr int tile_cols = static_cast<int>(32 / sizeof(A));
  static constexpr std::int64_t tokens = 32;         ///< forward/dgrad: tokens per thread block
  static constexpr std::int64_t depth = 128;         ///< forward: H per panel; dgrad: E per panel
  static constexpr std::int64_t width = 64;          ///< forward: E per panel; dgrad: H per panel
  static constexpr std::int64_t wgrad_tokens = 256;  ///< wgrad: tokens per x̃ panel
  static constexpr std::int64_t wgrad_hidden = 64;   ///< wgrad: H per thread block
  static_assert(width % tile_cols == 0 && wgrad_hidden % tile_cols == 0);
  static_assert(tokens % tile_rows == 0);  // dgrad's tiles stay inside its [tokens][width] sums
};

/// x · u, the jittered input, in the accumulation type: one rounding, to fp32 (never fused
/// into the GEMM's adds) or to double.
template <class A>
inline A jitter_apply(A x, float u) {
  if constexpr (std::is_same_v<A, float>)
    return detail::mul_rn(x, u);
  else
    return x * static_cast<double>(u);
}

/// One SIMD register of A as a GNU vector (g++, clang): 16 bytes (SSE2, the x86-64 baseline),
/// 32 with AVX. A plain loop nest is not enough: g++ -O2 leaves a 4 × 8 tile scalar with its
/// sums in memory, and a 32-byte vector without AVX is lowered through the stack; native-width
/// vectors and a folded row loop keep every sum in a register at -O2 and -O3 alike.
#if defined(__AVX__)
inline constexpr int tile_vector_bytes = 32;
#else
inline constexpr int tile_vector_bytes = 16;
#endif
template <class A>
struct tile_vector;
template <>
struct tile_vector<float> {
  typedef float type __attribute__((vector_size(tile_vector_bytes)));
};
template <>
struct tile_vector<double> {
  typedef double type __attribute__((vector_size(tile_vector_bytes)));
};

/// acc[i][j] += Σ_{k < depth} a[i][k · a_step] · b[k · b_stride + j], k ascending: the only
/// arithmetic of the router GEMM (one multiply and one add per term; fused only where the
/// build enables FMA contraction, the same for every element). The NR columns of b are
/// contiguous (whole vectors); a[i][...] is broadcast.
template <int MR, int NR, class A>
inline void tile_update(A (&acc)[MR][NR], A const* const (&a)[MR], std::int64_t a_step, A const* b,
                        std::int64_t b_stride, std::int64_t depth) {
  using vec = typename tile_vector<A>::type;
  constexpr int per_row = static_cast<int>(NR * sizeof(A) / sizeof(vec));
  static_assert(per_row >= 1 && per_row * sizeof(vec) == NR * sizeof(A),
                "a tile row is a whole number of vectors");
  // Sum n is row n / per_row, vector n % per_row; the folds unroll both loops, so with
  // constant indices the MR · per_row sums live in registers.
  auto const unrolled = [&]<int... N>(std::integer_sequence<int, N...>) {
    vec sum[MR * per_row];
    (std::memcpy(&sum[N], &acc[N / per_row][N % per_row * (NR / per_row)], sizeof(vec)), ...);
    for (std::int64_t k = 0; k < depth; ++k) {
      vec bk[per_row];
      std::memcpy(bk, b + k * b_stride, sizeof bk);
      ((sum[N] += a[N / per_row][k * a_step] * bk[N % per_row]), ...);
    }
    (std::memcpy(&acc[N / per_row][N % per_row * (NR / per_row)], &sum[N], sizeof(vec)), ...);
  };
  unrolled(std::make_integer_sequence<int, MR * per_row>{});
}

/// Runs body(block) for block in [0, blocks): over OpenMP threads when built with OpenMP
/// (static schedule; `threads` > 0 caps them), else in order. Bodies write disjoint outputs.
template <class Body>
inline void for_blocks(int threads, std::int64_t blocks, Body const& body) {
#if defined(_OPENMP)
  int const n = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(n) if (n > 1 && blocks > 1)
  for (std::int64_t block = 0; block < blocks; ++block) body(block);
#else
  (void)threads;
  for (std::int64_t block = 0; block < blocks; ++block) body(block);
#endif
}

/// Row t of x̃ for columns [h0, h0 + n), in A: to_float(x) ⊙ u. `jitter` provides
/// `bool on` and `fill(t, h0, n, float* u)`; `u` is scratch of n floats.
template <class A, class X, class J>
inline void load_jittered_row(X const* x,  // [T, H]
                              std::int64_t hidden, std::int64_t t, std::int64_t h0, std::int64_t n,
                              J const& jitter, float* u, A* out) {
  X const* const row = x + t * hidden + h0;
  if (jitter.on) {
    jitter.fill(t, h0, n, u);
    for (std::int64_t k = 0; k < n; ++k)
      out[k] = jitter_apply(static_cast<A>(to_float(row[k])), u[k]);
  } else {
    // Runs of 8 with a constant trip count: g++ -O2 vectorises those (not a loop of run-time
    // length), which is a quarter of the forward's time for bf16 and E = 8.
    std::int64_t k = 0;
    for (; k + 8 <= n; k += 8)
      for (int l = 0; l < 8; ++l) out[k + l] = static_cast<A>(to_float(row[k + l]));
    for (; k < n; ++k) out[k] = static_cast<A>(to_float(row[k]));
  }
}

/// logits[T, E] = x̃[T, H] · W[H, E] (overwritten), sums in A in ascending h.
template <class A, class X, class W, class J>
void router_gemm_forward(int threads, std::int64_t tokens, std::int64_t hidden, int experts,
                         X const* x,  // [T, H]
                         W const* w,  // [H, E]
                         A* logits,   // [T, E]
                         J const& jitter) {
  using tiling = router_gemm_tiling<A>;
  constexpr int mr = tiling::tile_rows, nr = tiling::tile_cols;
  constexpr std::int64_t tb = tiling::tokens, kc = tiling::depth, nc = tiling::width;
  std::int64_t const E = experts;
  for_blocks(threads, (tokens + tb - 1) / tb, [&](std::int64_t block) {
    alignas(64) A xs[tb * kc];  // x̃ [tb][kc]
    alignas(64) A ws[kc * nc];  // W  [kc][nc]
    float u[kc];
    std::int64_t const t0 = block * tb;
    std::int64_t const rows = std::min(tb, tokens - t0);
    A* const out = logits + t0 * E;  // [rows, E], the running sums
    std::fill(out, out + rows * E, A{0});
    for (std::int64_t h0 = 0; h0 < hidden; h0 += kc) {
      std::int64_t const depth = std::min(kc, hidden - h0);
      for (std::int64_t r = 0; r < rows; ++r)
        load_jittered_row(x, hidden, t0 + r, h0, depth, jitter, u, xs + r * kc);
      for (std::int64_t e0 = 0; e0 < E; e0 += nc) {
        std::int64_t const width = std::min(nc, E - e0);
        // W is converted (and zero-padded to whole register tiles) once per token block even
        // when it is already fp32: 1/32 of the multiply-adds, and the panel's fixed stride keeps
        // the tile loop's addressing constant (g++ -O3 vectorised the strided variant badly).
        std::int64_t const padded = (width + nr - 1) / nr * nr;
        for (std::int64_t k = 0; k < depth; ++k) {
          W const* const wr = w + (h0 + k) * E + e0;
          A* const pr = ws + k * nc;
          for (std::int64_t j = 0; j < width; ++j) pr[j] = static_cast<A>(to_float(wr[j]));
          for (std::int64_t j = width; j < padded; ++j) pr[j] = A{0};
        }
        for (std::int64_t i0 = 0; i0 < rows; i0 += mr) {
          A const* a[mr];  // rows past the block repeat its last row; their sums are dropped
          for (int i = 0; i < mr; ++i) a[i] = xs + std::min(i0 + i, rows - 1) * kc;
          int const valid_rows = static_cast<int>(std::min<std::int64_t>(mr, rows - i0));
          for (std::int64_t j0 = 0; j0 < width; j0 += nr) {
            int const valid_cols = static_cast<int>(std::min<std::int64_t>(nr, width - j0));
            A* const c = out + i0 * E + e0 + j0;
            A acc[mr][nr];
            for (int i = 0; i < mr; ++i)
              for (int j = 0; j < nr; ++j)
                acc[i][j] = i < valid_rows && j < valid_cols ? c[i * E + j] : A{0};
            tile_update(acc, a, 1, ws + j0, nc, depth);
            for (int i = 0; i < valid_rows; ++i)
              for (int j = 0; j < valid_cols; ++j) c[i * E + j] = acc[i][j];
          }
        }
      }
    }
  });
}

/// dx[T, H] = (d_logits[T, E] · W[H, E]ᵀ) ⊙ u (overwritten), sums in A in ascending e, then
/// one rounding to X.
template <class A, class X, class W, class J>
void router_gemm_dgrad(int threads, std::int64_t tokens, std::int64_t hidden, int experts,
                       W const* w,         // [H, E]
                       A const* d_logits,  // [T, E]
                       X* dx,              // [T, H]
                       J const& jitter) {
  using tiling = router_gemm_tiling<A>;
  constexpr int mr = tiling::tile_rows, nr = tiling::tile_cols;
  constexpr std::int64_t tb = tiling::tokens, kc = tiling::depth, nc = tiling::width;
  std::int64_t const E = experts;
  for_blocks(threads, (tokens + tb - 1) / tb, [&](std::int64_t block) {
    alignas(64) A ws[kc * nc];    // Wᵀ [kc e][nc h]
    alignas(64) A sums[tb * nc];  // [tb][nc]
    float u[nc];
    std::int64_t const t0 = block * tb;
    std::int64_t const rows = std::min(tb, tokens - t0);
    for (std::int64_t h0 = 0; h0 < hidden; h0 += nc) {
      std::int64_t const width = std::min(nc, hidden - h0);
      std::int64_t const padded = (width + nr - 1) / nr * nr;
      std::fill(sums, sums + tb * nc, A{0});
      for (std::int64_t e0 = 0; e0 < E; e0 += kc) {
        std::int64_t const depth = std::min(kc, E - e0);
        for (std::int64_t j = 0; j < width; ++j) {  // read W rows, write panel columns
          W const* const wr = w + (h0 + j) * E + e0;
          for (std::int64_t k = 0; k < depth; ++k) ws[k * nc + j] = static_cast<A>(to_float(wr[k]));
        }
        for (std::int64_t k = 0; k < depth; ++k)
          std::fill(ws + k * nc + width, ws + k * nc + padded, A{0});
        for (std::int64_t i0 = 0; i0 < rows; i0 += mr) {
          A const* a[mr];  // d_logits rows; rows past the block repeat its last row
          for (int i = 0; i < mr; ++i) a[i] = d_logits + (t0 + std::min(i0 + i, rows - 1)) * E + e0;
          for (std::int64_t j0 = 0; j0 < padded; j0 += nr) {
            A* const c = sums + i0 * nc + j0;  // inside [tb][nc] even for the dropped rows
            A acc[mr][nr];
            for (int i = 0; i < mr; ++i)
              for (int j = 0; j < nr; ++j) acc[i][j] = c[i * nc + j];
            tile_update(acc, a, 1, ws + j0, nc, depth);
            for (int i = 0; i < mr; ++i)
              for (int j = 0; j < nr; ++j) c[i * nc + j] = acc[i][j];
          }
        }
      }
      for (std::int64_t r = 0; r < rows; ++r) {
        X* const out = dx + (t0 + r) * hidden + h0;
        A const* const s = sums + r * nc;
        if (jitter.on) {
          jitter.fill(t0 + r, h0, width, u);
          for (std::int64_t j = 0; j < width; ++j) out[j] = from_float<X>(jitter_apply(s[j], u[j]));
        } else {
          for (std::int64_t j = 0; j < width; ++j) out[j] = from_float<X>(s[j]);
        }
      }
    }
  });
}

/// dW[H, E] += x̃[T, H]ᵀ · d_logits[T, E]: each element continues its running sum from the
/// caller's value, in ascending t.
template <class A, class X, class J>
void router_gemm_wgrad(int threads, std::int64_t tokens, std::int64_t hidden, int experts,
                       X const* x,         // [T, H]
                       A const* d_logits,  // [T, E]
                       A* dw,              // [H, E]
                       J const& jitter) {
  using tiling = router_gemm_tiling<A>;
  constexpr int mr = tiling::tile_rows, nr = tiling::tile_cols;
  constexpr std::int64_t tt = tiling::wgrad_tokens, hb = tiling::wgrad_hidden;
  std::int64_t const E = experts;
  for_blocks(threads, (hidden + hb - 1) / hb, [&](std::int64_t block) {
    alignas(64) A xs[tt * hb];  // x̃ [tt t][hb h], zero past H
    float u[hb];
    std::int64_t const h0 = block * hb;
    std::int64_t const width = std::min(hb, hidden - h0);
    std::int64_t const padded = (width + nr - 1) / nr * nr;
    for (std::int64_t t0 = 0; t0 < tokens; t0 += tt) {
      std::int64_t const depth = std::min(tt, tokens - t0);
      for (std::int64_t k = 0; k < depth; ++k) {
        load_jittered_row(x, hidden, t0 + k, h0, width, jitter, u, xs + k * hb);
        std::fill(xs + k * hb + width, xs + k * hb + padded, A{0});
      }
      // The register tile is (4 experts) × (nr hidden): the broadcast operand is a d_logits
      // row segment, the vector operand a row of x̃; acc[i][j] is dW[h0 + j0 + j][e0 + i].
      for (std::int64_t e0 = 0; e0 < E; e0 += mr) {
        A const* a[mr];  // experts past E repeat the last one; their sums are dropped
        for (int i = 0; i < mr; ++i)
          a[i] = d_logits + t0 * E + std::min<std::int64_t>(e0 + i, E - 1);
        int const valid_e = static_cast<int>(std::min<std::int64_t>(mr, E - e0));
        for (std::int64_t j0 = 0; j0 < width; j0 += nr) {
          int const valid_h = static_cast<int>(std::min<std::int64_t>(nr, width - j0));
          A* const c = dw + (h0 + j0) * E + e0;
          A acc[mr][nr];
          for (int i = 0; i < mr; ++i)
            for (int j = 0; j < nr; ++j)
              acc[i][j] = i < valid_e && j < valid_h ? c[j * E + i] : A{0};
          tile_update(acc, a, E, xs + j0, hb, depth);
          for (int i = 0; i < valid_e; ++i)
            for (int j = 0; j < valid_h; ++j) c[j * E + i] = acc[i][j];
        }
      }
    }
  });
}

}  // namespace moe::backend::host
