// SPDX-License-Identifier: Apache-2.0
// CPU backend of the grouped GEMM (moe/grouped_gemm.hpp): forward with its fused epilogue,
// dgrad with the activation backward fused, wgrad with dbias, and the element-wise activation
// the expert FFN uses to recompute h from a saved pre-activation.
//
// One engine (`gemm_tile`) serves the three products. A task owns one output tile of one
// expert — at most tm × tn elements (forward and dgrad: rows × columns; wgrad: N × K of dW_e) —
// and computes it completely: its fp32 (fp64) sums live in a local C tile through the whole
// reduction, which is cut into slices of kc. Per slice the B operand is packed once and the A
// operand in chunks of mc rows, both converted to the accumulation type A on the way (bf16/fp16
// → float once per panel, never in the inner loop), into micro-panels
//   A panels: [⌈mc/mr⌉][kc][mr]   (mr rows interleaved per reduction step)
//   B panels: [⌈tn/nr⌉][kc][nr]   (nr columns contiguous per reduction step)
// and a register tile of mr × nr sums walks them (`gemm_micro_tile`). The epilogue then reads
// C once: bias, pre-activation, activation, one rounding to the storage type.
//
//   op       C tile            reduction over     A operand (packed)        B operand (packed)
//   forward  Y_e[m, n]         k < K              X[m, k]     (lines)       W_e[n, k]  (lines)
//   dgrad    dX_e[m, k]        n < N              dY[m, n]    (lines)       W_e[n, k]  (columns)
//   wgrad    dW_e[n, k]        m ∈ rows of e      dY[m, n]    (columns)     X[m, k]    (columns)
// "lines": the operand is contiguous along the reduction and packing transposes it;
// "columns": contiguous along the output index, packing is a converting copy.
// Gated forward tasks cover tn/2 output columns and pack the gate rows W_e[n0 + j] into the
// first half of the B panels and the up rows W_e[N + n0 + j] into the second, so one C tile
// holds both halves of each output and the epilogue combines them in registers.
//
// Determinism: every output element is one running sum, in ascending reduction index, from 0
// (or, for wgrad with `accumulate`, from the caller's value), carried in A between slices
// (storing a partial sum in A rounds nothing). Tiles are fixed by the shapes alone and each is
// computed by one thread, whatever the thread count or the schedule, so results are bitwise
// independent of both. The build decides whether the tile update fuses its multiply and add
// (g++ contracts with -mfma/-march=native): the same for every element of a build.
//
// Memory: nothing is allocated; a task's panels and C tile live on its thread's stack: 244 KiB
// (see `grouped_gemm_tiling`).
#pragma once

#include <algorithm>  // std::min, std::fill, std::upper_bound
#include <cstdint>    // std::int64_t
#include <cstring>    // std::memcpy
#include <utility>    // std::integer_sequence

#include "moe/activation.hpp"  // activation_forward, activation_backward
#include "moe/config.hpp"      // moe::activation, is_gated, max_experts
#include "moe/precision.hpp"   // to_float, from_float

#if defined(_OPENMP)
#include <omp.h>  // omp_get_max_threads
#endif

namespace moe::backend::host {

/// Bytes of one SIMD register as the build targets it: 16 (SSE2, the x86-64 baseline), 32 (AVX),
/// 64 (AVX-512). The micro-tile is written with GNU vectors of this width.
#if defined(__AVX512F__)
inline constexpr int gemm_vector_bytes = 64;
#elif defined(__AVX__)
inline constexpr int gemm_vector_bytes = 32;
#else
inline constexpr int gemm_vector_bytes = 16;
#endif

template <class A>
struct gemm_vector;
template <>
struct gemm_vector<float> {
  typedef float type __attribute__((vector_size(gemm_vector_bytes)));
};
template <>
struct gemm_vector<double> {
  typedef double type __attribute__((vector_size(gemm_vector_bytes)));
};

/// Block sizes of the host grouped GEMM for accumulation type A. A task's buffers live on its
/// thread's stack: A chunk mc × kc (36 KiB), B slice kc × tn (64 KiB), C tile tm × tn (144 KiB)
/// — 244 KiB for float and for double.
template <class A>
struct grouped_gemm_tiling {
  static constexpr int lanes = gemm_vector_bytes / static_cast<int>(sizeof(A));
  /// Register tile: mr rows × nv vectors = 12 sums, + 2 B vectors + 1 broadcast = 15 of the 16
  /// vector registers of SSE2/AVX2. (AVX-512 has 32, but 12 × 2 zmm sums measured 2.5x slower
  /// than 6 × 2 on this Sapphire Rapids: 74 vs 185 GFLOP/s in L1.)
  static constexpr int mr = 6;
  static constexpr int nv = 2;
  static constexpr int nr = nv * lanes;  ///< 8 / 16 / 32 floats, 4 / 8 / 16 doubles
  /// Reduction slice: a B micro-panel (kc × nr, 4-16 KiB) stays in L1 while mc / mr = 12
  /// register tiles stream an A chunk (mc × kc) past it from L2.
  static constexpr std::int64_t kc = sizeof(A) == 4 ? 128 : 64;
  static constexpr std::int64_t mc = 72;
  /// A task's C tile: tn columns (gated forward: tn/2 outputs, gate and up) by tm rows. The B
  /// slice is packed once per tm rows and an A chunk once per tn columns, so packing (a
  /// transpose for the forward's operands) costs 1/(2 tm) + 1/(2 tn) of the multiply-adds.
  static constexpr std::int64_t tn = 128;
  static constexpr std::int64_t tm = sizeof(A) == 4 ? 4 * mc : 2 * mc;
  static_assert(mc % mr == 0 && tm % mc == 0 && tn % (2 * nr) == 0,
                "tiles are whole register tiles");
};

inline constexpr std::int64_t gemm_ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

/// One vector from `p` (any alignment).
template <class V, class A>
inline V gemm_load(A const* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

/// c[i][j] += Σ_{r < depth} a[r][i] · b[r][j], r ascending, for the mr × nr tile at c (row
/// stride ldc): the only arithmetic of the products. `a` is one A micro-panel [depth][mr],
/// `b` one B micro-panel [depth][nr]. The fold keeps the 12 sums in registers at -O2
/// (plain nested loops leave them in memory under g++ -O2).
template <class A>
inline void gemm_micro_tile(std::int64_t depth, A const* a, A const* b, A* c, std::int64_t ldc) {
  using tiling = grouped_gemm_tiling<A>;
  using vec = typename gemm_vector<A>::type;
  constexpr int mr = tiling::mr, nv = tiling::nv, nr = tiling::nr, lanes = tiling::lanes;
  [&]<int... S>(std::integer_sequence<int, S...>) {
    vec sum[mr * nv];  // sum S is row S / nv, vector S % nv
    (std::memcpy(&sum[S], c + (S / nv) * ldc + (S % nv) * lanes, sizeof(vec)), ...);
    for (std::int64_t r = 0; r < depth; ++r) {
      // One load per B vector (the fold repeats each address per row; g++ loads it once). A
      // memcpy of the whole row into a vector array was split into 16-byte moves through the
      // stack whose reload missed store forwarding: 4x slower with AVX2.
      A const* const ar = a + r * mr;
      A const* const br = b + r * nr;
      ((sum[S] += ar[S / nv] * gemm_load<vec>(br + (S % nv) * lanes)), ...);
    }
    (std::memcpy(c + (S / nv) * ldc + (S % nv) * lanes, &sum[S], sizeof(vec)), ...);
  }
  (std::make_integer_sequence<int, mr * nv>{});
}

/// Every register tile of one slice: B micro-panels outer (one stays in L1), A inner.
template <class A>
inline void gemm_slice(std::int64_t a_panels, std::int64_t b_panels, std::int64_t depth,
                       A const* ap,  // [a_panels][depth][mr]
                       A const* bp,  // [b_panels][depth][nr]
                       A* c,         // [a_panels · mr][ldc]
                       std::int64_t ldc) {
  using tiling = grouped_gemm_tiling<A>;
  for (std::int64_t jp = 0; jp < b_panels; ++jp)
    for (std::int64_t ip = 0; ip < a_panels; ++ip)
      gemm_micro_tile(depth, ap + ip * depth * tiling::mr, bp + jp * depth * tiling::nr,
                      c + ip * tiling::mr * ldc + jp * tiling::nr, ldc);
}

template <class A, class S>
inline A gemm_widen(S v) {
  return static_cast<A>(to_float(v));
}

/// Packs `count` lines that are contiguous along the reduction — element (line l, step r) at
/// src[l · ld + r] — into ⌈count/P⌉ micro-panels [depth][P], converted to A; the lines that
/// pad the last panel are zero. (A transpose: reading P lines at once and writing each panel
/// row contiguously measured 1.5x faster at -O2/-O3 than line by line with strided writes.)
template <int P, class A, class S>
inline void gemm_pack_lines(S const* src, std::int64_t ld, std::int64_t count, std::int64_t depth,
                            A* dst) {
  for (std::int64_t p0 = 0; p0 < count; p0 += P) {
    A* const panel = dst + p0 * depth;  // (p0 / P) panels of depth · P
    std::int64_t const valid = std::min<std::int64_t>(P, count - p0);
    S const* lines[P];
    for (int i = 0; i < P; ++i) lines[i] = src + (p0 + std::min<std::int64_t>(i, valid - 1)) * ld;
    if (valid == P) {
      for (std::int64_t r = 0; r < depth; ++r)
        for (int i = 0; i < P; ++i) panel[r * P + i] = gemm_widen<A>(lines[i][r]);
    } else {
      for (std::int64_t r = 0; r < depth; ++r)
        for (int i = 0; i < P; ++i)
          panel[r * P + i] = i < valid ? gemm_widen<A>(lines[i][r]) : A{0};
    }
  }
}

/// Packs `count` lines that are contiguous along the output index — element (line l, step r)
/// at src[r · ld + l] — into ⌈count/P⌉ micro-panels [depth][P], converted to A, zero-padded.
template <int P, class A, class S>
inline void gemm_pack_columns(S const* src, std::int64_t ld, std::int64_t count, std::int64_t depth,
                              A* dst) {
  for (std::int64_t p0 = 0; p0 < count; p0 += P) {
    A* const panel = dst + p0 * depth;
    std::int64_t const valid = std::min<std::int64_t>(P, count - p0);
    for (std::int64_t r = 0; r < depth; ++r) {
      S const* const row = src + r * ld + p0;
      A* const out = panel + r * P;
      for (std::int64_t i = 0; i < valid; ++i) out[i] = gemm_widen<A>(row[i]);
      for (std::int64_t i = valid; i < P; ++i) out[i] = A{0};
    }
  }
}

/// Accumulates one task's C tile over the whole reduction: c[i][j] += Σ_r A(i, r) B(r, j) for
/// i < rows (≤ tm) and the b_panels · nr columns, in slices of kc. Per slice, `pack_b(r0,
/// depth, bp)` packs the B panels once, then for each chunk of mc rows `pack_a(i0, chunk, r0,
/// depth, ap)` packs that chunk's A panels and every register tile of the chunk is updated.
template <class A, class PackA, class PackB>
inline void gemm_tile(std::int64_t rows, std::int64_t b_panels, std::int64_t reduction,
                      PackA const& pack_a, PackB const& pack_b,
                      A* ap,   // [mc · kc] scratch
                      A* bp,   // [kc · tn] scratch
                      A* c) {  // [tm][tn]
  using tiling = grouped_gemm_tiling<A>;
  for (std::int64_t r0 = 0; r0 < reduction; r0 += tiling::kc) {
    std::int64_t const depth = std::min(tiling::kc, reduction - r0);
    pack_b(r0, depth, bp);
    for (std::int64_t i0 = 0; i0 < rows; i0 += tiling::mc) {
      std::int64_t const chunk = std::min(tiling::mc, rows - i0);
      pack_a(i0, chunk, r0, depth, ap);
      gemm_slice(gemm_ceil_div(chunk, tiling::mr), b_panels, depth, ap, bp, c + i0 * tiling::tn,
                 tiling::tn);
    }
  }
}

/// Zeroes rows [0, rows) × columns [0, cols) of a C tile, rounded up to whole register tiles.
template <class A>
inline void gemm_zero(A* c, std::int64_t rows, std::int64_t cols) {
  using tiling = grouped_gemm_tiling<A>;
  std::int64_t const padded = gemm_ceil_div(rows, tiling::mr) * tiling::mr;
  for (std::int64_t i = 0; i < padded; ++i)
    std::fill(c + i * tiling::tn, c + i * tiling::tn + cols, A{0});
}

/// Tasks numbered expert by expert: expert e owns [first[e], first[e + 1]).
struct grouped_tasks {
  std::int64_t experts = 0;
  std::int64_t first[max_experts + 1] = {};

  [[nodiscard]] std::int64_t total() const { return first[experts]; }
  /// The expert owning task t (experts with no task are skipped).
  [[nodiscard]] std::int64_t expert_of(std::int64_t t) const {
    return (std::upper_bound(first, first + experts + 1, t) - first) - 1;
  }
};

/// Runs body(task) for task in [0, tasks): over OpenMP threads when built with OpenMP
/// (`threads` > 0 caps them; dynamic schedule, since experts are ragged), else in order.
/// Bodies write disjoint outputs and compute them independently of the thread.
template <class Body>
inline void grouped_for_tasks(int threads, std::int64_t tasks, Body const& body) {
#if defined(_OPENMP)
  int const n = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(n) if (n > 1 && tasks > 1)
  for (std::int64_t t = 0; t < tasks; ++t) body(t);
#else
  (void)threads;
  for (std::int64_t t = 0; t < tasks; ++t) body(t);
#endif
}

/// Tasks of an op whose C tiles cut each expert's rows into tm-row tiles and its columns into
/// `col_tiles` tiles; task t of expert e is (row tile t % row_tiles, column tile t / row_tiles),
/// so consecutive tasks share a B slice (W) that the other thread may still hold in L2.
template <class A>
inline void row_tasks(grouped_tasks& map, std::int64_t experts, std::int64_t const* offsets,
                      std::int64_t col_tiles) {
  map.experts = experts;
  map.first[0] = 0;
  for (std::int64_t e = 0; e < experts; ++e)
    map.first[e + 1] =
        map.first[e] +
        gemm_ceil_div(offsets[e + 1] - offsets[e], grouped_gemm_tiling<A>::tm) * col_tiles;
}

/// Forward: pre = X_e · W_eᵀ (+ bias_e), y = act(pre) per expert, for the rows
/// [offsets[e], offsets[e+1]) of each expert; other rows are not touched. N_w = 2N when Act is
/// gated (W_e rows [0, N) gate, [N, 2N) up), else N. pre is rounded to X first and the
/// activation reads the rounded value, so h recomputed from a saved pre equals this y bitwise.
template <activation Act, class A, class X, class W>
void grouped_gemm_forward(int threads, std::int64_t experts, std::int64_t n, std::int64_t k,
                          std::int64_t const* offsets,  // [E_l + 1]
                          X const* x,                   // [M, K]
                          W const* w,                   // [E_l, N_w, K]
                          W const* bias,                // [E_l, N_w] or null
                          X* y,                         // [M, N]
                          X* pre) {                     // [M, N_w] or null
  using tiling = grouped_gemm_tiling<A>;
  constexpr bool gated = is_gated(Act);
  constexpr int mr = tiling::mr, nr = tiling::nr;
  constexpr std::int64_t tm = tiling::tm, tn = tiling::tn;
  constexpr std::int64_t tile_cols = gated ? tn / 2 : tn;  // outputs per task
  std::int64_t const nw = gated ? 2 * n : n;
  grouped_tasks map;
  row_tasks<A>(map, experts, offsets, gemm_ceil_div(n, tile_cols));

  grouped_for_tasks(threads, map.total(), [&](std::int64_t t) {
    alignas(64) A ap[tiling::mc * tiling::kc];
    alignas(64) A bp[tiling::kc * tn];
    alignas(64) A c[tm * tn];
    std::int64_t const e = map.expert_of(t), local = t - map.first[e];
    std::int64_t const row_tiles = gemm_ceil_div(offsets[e + 1] - offsets[e], tm);
    std::int64_t const m0 = offsets[e] + (local % row_tiles) * tm;
    std::int64_t const n0 = (local / row_tiles) * tile_cols;
    std::int64_t const rows = std::min(tm, offsets[e + 1] - m0);
    std::int64_t const cols = std::min(tile_cols, n - n0);
    std::int64_t const half = gemm_ceil_div(cols, nr);  // B panels of the gate (or only) half
    std::int64_t const b_panels = gated ? 2 * half : half;
    W const* const we = w + e * nw * k;
    gemm_zero(c, rows, b_panels * nr);
    gemm_tile(
        rows, b_panels, k,
        [&](std::int64_t i0, std::int64_t chunk, std::int64_t r0, std::int64_t depth, A* dst) {
          gemm_pack_lines<mr>(x + (m0 + i0) * k + r0, k, chunk, depth, dst);
        },
        [&](std::int64_t r0, std::int64_t depth, A* dst) {
          gemm_pack_lines<nr>(we + n0 * k + r0, k, cols, depth, dst);
          if constexpr (gated)
            gemm_pack_lines<nr>(we + (n + n0) * k + r0, k, cols, depth, dst + half * depth * nr);
        },
        ap, bp, c);
    // Epilogue: bias, round to X (the stored pre-activation), activation, round to X.
    W const* const be = bias != nullptr ? bias + e * nw : nullptr;
    for (std::int64_t i = 0; i < rows; ++i) {
      std::int64_t const m = m0 + i;
      A const* const crow = c + i * tn;
      for (std::int64_t j = 0; j < cols; ++j) {
        A sg = crow[j];
        if (be != nullptr) sg += gemm_widen<A>(be[n0 + j]);
        X const pg = from_float<X>(sg);
        if (pre != nullptr) pre[m * nw + n0 + j] = pg;
        A up = A{0};
        if constexpr (gated) {
          A su = crow[half * nr + j];
          if (be != nullptr) su += gemm_widen<A>(be[n + n0 + j]);
          X const pu = from_float<X>(su);
          if (pre != nullptr) pre[m * nw + n + n0 + j] = pu;
          up = gemm_widen<A>(pu);
        }
        y[m * n + n0 + j] = from_float<X>(activation_forward<Act>(gemm_widen<A>(pg), up));
      }
    }
  });
}

/// dgrad: s = dY_e · W_e (a [rows, K] product); with Act = identity dx = s, otherwise the
/// activation backward is fused: dx = d pre = act'(pre) ⊙ s, and for gated Act
/// dx[:, j] = s · up · f'(gate), dx[:, K + j] = s · f(gate) with gate = pre[:, j],
/// up = pre[:, K + j]. K_w = 2K when gated, else K.
template <activation Act, class A, class X, class W>
void grouped_gemm_dgrad(int threads, std::int64_t experts, std::int64_t n, std::int64_t k,
                        std::int64_t const* offsets,  // [E_l + 1]
                        X const* dy,                  // [M, N]
                        W const* w,                   // [E_l, N, K]
                        X const* pre,                 // [M, K_w] (null for identity)
                        X* dx) {                      // [M, K_w]
  using tiling = grouped_gemm_tiling<A>;
  constexpr bool gated = is_gated(Act);
  constexpr int mr = tiling::mr, nr = tiling::nr;
  constexpr std::int64_t tm = tiling::tm, tn = tiling::tn;
  std::int64_t const kw = gated ? 2 * k : k;
  grouped_tasks map;
  row_tasks<A>(map, experts, offsets, gemm_ceil_div(k, tn));

  grouped_for_tasks(threads, map.total(), [&](std::int64_t t) {
    alignas(64) A ap[tiling::mc * tiling::kc];
    alignas(64) A bp[tiling::kc * tn];
    alignas(64) A c[tm * tn];
    std::int64_t const e = map.expert_of(t), local = t - map.first[e];
    std::int64_t const row_tiles = gemm_ceil_div(offsets[e + 1] - offsets[e], tm);
    std::int64_t const m0 = offsets[e] + (local % row_tiles) * tm;
    std::int64_t const k0 = (local / row_tiles) * tn;
    std::int64_t const rows = std::min(tm, offsets[e + 1] - m0);
    std::int64_t const cols = std::min(tn, k - k0);
    std::int64_t const b_panels = gemm_ceil_div(cols, nr);
    W const* const we = w + e * n * k;
    gemm_zero(c, rows, b_panels * nr);
    gemm_tile(
        rows, b_panels, n,
        [&](std::int64_t i0, std::int64_t chunk, std::int64_t r0, std::int64_t depth, A* dst) {
          gemm_pack_lines<mr>(dy + (m0 + i0) * n + r0, n, chunk, depth, dst);
        },
        [&](std::int64_t r0, std::int64_t depth, A* dst) {
          gemm_pack_columns<nr>(we + r0 * k + k0, k, cols, depth, dst);
        },
        ap, bp, c);
    for (std::int64_t i = 0; i < rows; ++i) {
      std::int64_t const m = m0 + i;
      A const* const crow = c + i * tn;
      X* const out = dx + m * kw;
      if constexpr (Act == activation::identity) {
        for (std::int64_t j = 0; j < cols; ++j) out[k0 + j] = from_float<X>(crow[j]);
      } else {
        X const* const p = pre + m * kw;
        for (std::int64_t j = 0; j < cols; ++j) {
          A d_gate, d_up;
          A const up = gated ? gemm_widen<A>(p[k + k0 + j]) : A{0};
          activation_backward<Act>(gemm_widen<A>(p[k0 + j]), up, crow[j], d_gate, d_up);
          out[k0 + j] = from_float<X>(d_gate);
          if constexpr (gated) out[k + k0 + j] = from_float<X>(d_up);
        }
      }
    }
  });
}

/// wgrad: dW_e (+)= dY_eᵀ · X_e over the rows of expert e in ascending order, and
/// d_bias_e (+)= Σ dY_e (rows ascending). Every expert's dW_e is written, so an expert without
/// rows gets zeros (or keeps the caller's values when accumulating).
template <class A, class X>
void grouped_gemm_wgrad(int threads, std::int64_t experts, std::int64_t n, std::int64_t k,
                        std::int64_t const* offsets,  // [E_l + 1]
                        X const* x,                   // [M, K]
                        X const* dy,                  // [M, N]
                        A* dw,                        // [E_l, N, K]
                        A* d_bias,                    // [E_l, N] or null
                        bool accumulate) {
  using tiling = grouped_gemm_tiling<A>;
  constexpr int mr = tiling::mr, nr = tiling::nr;
  constexpr std::int64_t tm = tiling::tm, tn = tiling::tn;
  std::int64_t const tiles_n = gemm_ceil_div(n, tm), tiles_k = gemm_ceil_div(k, tn);
  std::int64_t const per_expert = tiles_n * tiles_k;

  grouped_for_tasks(threads, experts * per_expert, [&](std::int64_t t) {
    alignas(64) A ap[tiling::mc * tiling::kc];
    alignas(64) A bp[tiling::kc * tn];
    alignas(64) A c[tm * tn];
    std::int64_t const e = t / per_expert, local = t % per_expert;
    std::int64_t const n0 = (local % tiles_n) * tm;
    std::int64_t const k0 = (local / tiles_n) * tn;
    std::int64_t const rows = std::min(tm, n - n0);  // rows of dW_e in this tile
    std::int64_t const cols = std::min(tn, k - k0);
    std::int64_t const b_panels = gemm_ceil_div(cols, nr);
    A* const out = dw + (e * n + n0) * k + k0;
    gemm_zero(c, rows, b_panels * nr);
    if (accumulate)
      for (std::int64_t i = 0; i < rows; ++i)
        std::memcpy(c + i * tn, out + i * k, static_cast<std::size_t>(cols) * sizeof(A));
    std::int64_t const first = offsets[e], count = offsets[e + 1] - offsets[e];
    gemm_tile(
        rows, b_panels, count,
        [&](std::int64_t i0, std::int64_t chunk, std::int64_t r0, std::int64_t depth, A* dst) {
          gemm_pack_columns<mr>(dy + (first + r0) * n + n0 + i0, n, chunk, depth, dst);
        },
        [&](std::int64_t r0, std::int64_t depth, A* dst) {
          gemm_pack_columns<nr>(x + (first + r0) * k + k0, k, cols, depth, dst);
        },
        ap, bp, c);
    for (std::int64_t i = 0; i < rows; ++i)
      std::memcpy(out + i * k, c + i * tn, static_cast<std::size_t>(cols) * sizeof(A));
    if (d_bias != nullptr && k0 == 0) {  // one task per (expert, N tile) sums the bias
      A* const db = d_bias + e * n + n0;
      A sum[tm];
      for (std::int64_t i = 0; i < rows; ++i) sum[i] = accumulate ? db[i] : A{0};
      for (std::int64_t m = first; m < first + count; ++m)
        for (std::int64_t i = 0; i < rows; ++i) sum[i] += gemm_widen<A>(dy[m * n + n0 + i]);
      for (std::int64_t i = 0; i < rows; ++i) db[i] = sum[i];
    }
  });
}

/// h = act(pre) for rows [row_begin, row_end), exactly as the forward epilogue computes y from
/// its rounded pre-activation.
template <activation Act, class A, class X>
void grouped_activation(int threads, std::int64_t row_begin, std::int64_t row_end, std::int64_t n,
                        X const* pre,  // [M, N_w]
                        X* h) {        // [M, N]
  constexpr bool gated = is_gated(Act);
  constexpr std::int64_t block = 64;
  std::int64_t const nw = gated ? 2 * n : n;
  grouped_for_tasks(threads, gemm_ceil_div(row_end - row_begin, block), [&](std::int64_t t) {
    std::int64_t const m_end = std::min(row_end, row_begin + (t + 1) * block);
    for (std::int64_t m = row_begin + t * block; m < m_end; ++m)
      for (std::int64_t j = 0; j < n; ++j) {
        A const up = gated ? gemm_widen<A>(pre[m * nw + n + j]) : A{0};
        h[m * n + j] = from_float<X>(activation_forward<Act>(gemm_widen<A>(pre[m * nw + j]), up));
      }
  });
}

}  // namespace moe::backend::host
