// SPDX-License-Identifier: Apache-2.0
// Kernels of the CUDA grouped GEMM (moe/cuda/grouped_gemm.cuh): one persistent kernel for the
// three products, made of three separable parts —
//
//   scheduler   each CTA reads `offsets` (device memory) and builds, in smem, the prefix of
//               tiles per expert (experts without rows own none, except in wgrad, which writes
//               every dW_e); then walks tile ids blockIdx.x, + gridDim.x, ... and finds a
//               tile's expert by binary search. No host synchronisation: the grid is sized on
//               the host from the SM count and the upper bound M = rows.
//   main loop   mma_mainloop (bf16/fp16 tensor cores) or simt_mainloop (fp32 FFMA, fp64 DFMA),
//               moe/cuda/kernels/grouped_gemm_mainloop.cuh: the tile's sums, staged in smem.
//   epilogue    a member of the problem: bias, moe/activation.hpp's functions, rounding and
//               the stores, element by element from the staged tile (consecutive threads take
//               consecutive columns: coalesced stores).
//
// A problem (`gemm_forward`, `gemm_dgrad`, `gemm_wgrad`) says how tiles map onto an expert,
// which line of which tensor feeds row i of the A tile or column j of the B tile, and what the
// epilogue does. Rounding follows the host backend exactly (moe/host/grouped_gemm.hpp): sum
// (+ bias) rounded once to the activation type — the stored pre-activation — and the
// activation applied to that rounded value, so the only host/device differences are the
// summation order inside the tensor-core ops and the last bits of erf/exp/tanh.
//
// Determinism: each output element is computed by one thread of one CTA, from the same tile
// decomposition whatever the grid, in a fixed order: bitwise reproducible run to run. No
// atomics, no split-K: a wgrad tile loops over all rows of its expert.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t, std::int32_t

#include "moe/activation.hpp"                      // activation_forward, activation_backward
#include "moe/config.hpp"                          // moe::activation, max_experts, precision
#include "moe/cuda/kernels/column_sum.cuh"            // column_sum (d_bias)
#include "moe/cuda/kernels/grouped_gemm_mainloop.cuh"  // mma_mainloop, simt_mainloop
#include "moe/detail/gemm_layout.hpp"              // gated_output, gated_is_up, gated_column
#include "moe/precision.hpp"                       // to_float, from_float

namespace moe::backend::cuda {

/// Tile shapes, a constexpr function of the activation precision, the architecture (sm =
/// 10·major + minor) and whether the kernel is a gated forward (swiglu, geglu: the epilogue
/// with the most live registers).
///   bf16/fp16: 128 × 128 × 32, 8 warps of 64 × 32, 4 stages (64 KiB of smem). Two CTAs an SM
///              (__launch_bounds__ min_blocks 2: at most 128 registers), except the gated
///              forwards, which spill at 128 registers (sm_80, sm_90, sm_90a) and keep one. On
///              an H200 (2026-11-26, benchmarks/cuda/gemm_tiles.cu) the second CTA took the
///              identity forward from 175 to 236 TFLOP/s and wgrad from 128 to 184 (E = 8,
///              H = 4096, F = 14336, 1024 rows an expert), more than 128 × 256 tiles at one CTA
///              or a 64-deep k step gained. The same on sm_90 until a wgmma main loop exists.
///   fp32/fp64: 64 × 64 × 16 SIMT, 256 threads of 4 × 4.
constexpr gemm_tile_shape grouped_gemm_tuning(precision act, int sm, bool gated_forward) {
  (void)sm;
  if (act == precision::bf16 || act == precision::fp16)
    return {.bm = 128, .bn = 128, .bk = 32, .warps_m = 2, .warps_n = 4, .stages = 4,
            .min_blocks = gated_forward ? 1 : 2};
  return {.bm = 64, .bn = 64, .bk = 16, .warps_m = 4, .warps_n = 2, .stages = 1, .min_blocks = 2};
}

/// The main loop of storage type T: tensor cores for 16-bit types, SIMT otherwise; GatedForward
/// as in grouped_gemm_tuning.
template <class T, class A, bool GatedForward = false>
using gemm_mainloop_for = std::conditional_t<
    sizeof(T) == 2, mma_mainloop<grouped_gemm_tuning(precision::bf16, 80, GatedForward), T>,
    simt_mainloop<grouped_gemm_tuning(precision::fp32, 80, GatedForward), T, A>>;

__host__ __device__ constexpr std::int64_t gemm_ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

/// Rows [begin, end) of expert e, clamped into [0, rows] so that offsets that break their
/// contract (which the CUDA backend does not read on the host) never lead outside a buffer.
struct expert_rows {
  std::int64_t begin, end;
};
__device__ __forceinline__ expert_rows rows_of(std::int64_t const* offsets, std::int64_t rows,
                                               int e) {
  std::int64_t b = offsets[e], n = offsets[e + 1];
  b = b < 0 ? 0 : (b > rows ? rows : b);
  n = n < b ? b : (n > rows ? rows : n);
  return {b, n};
}

// ---- problems -------------------------------------------------------------------------------

/// Forward: pre = X_e · W_eᵀ + b_e, y = act(pre). A = X (rc), B = W_e (rc). Gated: the B tile
/// interleaves 8 gate rows and the 8 matching up rows (gemm_layout.hpp's gated_output), so a
/// tile covers bn/2 outputs and the epilogue finds both halves of an output in the same row.
template <activation Act, class T, class Mainloop>
struct gemm_forward {
  using mainloop = Mainloop;
  using A = typename Mainloop::accum;
  static constexpr gemm_tile_shape shape = Mainloop::shape;
  static constexpr bool a_rc = true, b_rc = true, gated = is_gated_v<Act>;
  static constexpr int outputs = gated ? shape.bn / 2 : shape.bn;  ///< output columns a tile

  int experts;
  std::int64_t rows, n, k;
  std::int64_t const* offsets;  // [E_l + 1]
  T const* x;                   // [M, K]
  T const* w;                   // [E_l, N_w, K]
  T const* bias;                // [E_l, N_w] or null
  T* y;                         // [M, N]
  T* pre;                       // [M, N_w] or null

  struct tile_t {
    std::int64_t m0, m_end, n0;
    int e;
  };
  __device__ std::int64_t tiles_of(int e) const {
    expert_rows const r = rows_of(offsets, rows, e);
    return gemm_ceil_div(r.end - r.begin, shape.bm) * gemm_ceil_div(n, outputs);
  }
  /// An upper bound of all experts' tiles from `rows` alone (the host does not read offsets):
  /// each expert may end in a partial row tile.
  __host__ __device__ std::int64_t tile_bound() const {
    return (gemm_ceil_div(rows, shape.bm) + experts) * gemm_ceil_div(n, outputs);
  }
  __device__ tile_t tile(int e, std::int64_t local) const {
    expert_rows const r = rows_of(offsets, rows, e);
    std::int64_t const row_tiles = gemm_ceil_div(r.end - r.begin, shape.bm);
    return {r.begin + (local % row_tiles) * shape.bm, r.end, (local / row_tiles) * outputs, e};
  }
  __device__ std::int64_t reduction(tile_t const&) const { return k; }
  __device__ T const* a_line(tile_t const& t, std::int64_t i) const {
    std::int64_t const m = t.m0 + i;
    return m < t.m_end ? x + m * k : nullptr;
  }
  __device__ std::int64_t a_limit(tile_t const&) const { return k; }
  __device__ T const* b_line(tile_t const& t, std::int64_t j) const {
    std::int64_t col = t.n0 + j, row = col;
    if constexpr (gated) {
      col = t.n0 + moe::detail::gemm::gated_output(static_cast<int>(j));
      row = moe::detail::gemm::gated_is_up(static_cast<int>(j)) ? n + col : col;
    }
    return col < n ? w + (t.e * (gated ? 2 * n : n) + row) * k : nullptr;
  }
  __device__ std::int64_t b_limit(tile_t const&) const { return k; }
  __device__ A initial(tile_t const&, int, int) const { return A(0); }

  /// Bias, round to T (the stored pre), activation of the rounded value, round to T.
  __device__ void epilogue(tile_t const& t, A const* cs) const {
    std::int64_t const nw = gated ? 2 * n : n;
    T const* const be = bias != nullptr ? bias + t.e * nw : nullptr;
#pragma unroll 1
    for (int q = static_cast<int>(threadIdx.x); q < shape.bm * outputs; q += mainloop::threads) {
      int const i = q / outputs, o = q % outputs;
      std::int64_t const m = t.m0 + i, col = t.n0 + o;
      if (m >= t.m_end || col >= n) continue;
      int const cg = gated ? moe::detail::gemm::gated_column(o) : o;
      A sg = cs[i * mainloop::ldc + cg];
      if (be != nullptr) sg += static_cast<A>(to_float(be[col]));
      T const pg = from_float<T>(sg);
      if (pre != nullptr) pre[m * nw + col] = pg;
      A up = A(0);
      if constexpr (gated) {
        A su = cs[i * mainloop::ldc + cg + 8];
        if (be != nullptr) su += static_cast<A>(to_float(be[n + col]));
        T const pu = from_float<T>(su);
        if (pre != nullptr) pre[m * nw + n + col] = pu;
        up = static_cast<A>(to_float(pu));
      }
      y[m * n + col] = from_float<T>(activation_forward<Act>(static_cast<A>(to_float(pg)), up));
    }
  }
};

/// dgrad: s = dY_e · W_e over n < N; dx = s, or the fused activation backward with `pre`.
/// A = dY (rc), B = W_e read along K (oc).
template <activation Act, class T, class Mainloop>
struct gemm_dgrad {
  using mainloop = Mainloop;
  using A = typename Mainloop::accum;
  static constexpr gemm_tile_shape shape = Mainloop::shape;
  static constexpr bool a_rc = true, b_rc = false, gated = is_gated_v<Act>;

  int experts;
  std::int64_t rows, n, k;
  std::int64_t const* offsets;  // [E_l + 1]
  T const* dy;                  // [M, N]
  T const* w;                   // [E_l, N, K]
  T const* pre;                 // [M, K_w] (null for identity)
  T* dx;                        // [M, K_w]

  struct tile_t {
    std::int64_t m0, m_end, k0;
    int e;
  };
  __device__ std::int64_t tiles_of(int e) const {
    expert_rows const r = rows_of(offsets, rows, e);
    return gemm_ceil_div(r.end - r.begin, shape.bm) * gemm_ceil_div(k, shape.bn);
  }
  /// An upper bound of all experts' tiles from `rows` alone (as gemm_forward's).
  __host__ __device__ std::int64_t tile_bound() const {
    return (gemm_ceil_div(rows, shape.bm) + experts) * gemm_ceil_div(k, shape.bn);
  }
  __device__ tile_t tile(int e, std::int64_t local) const {
    expert_rows const r = rows_of(offsets, rows, e);
    std::int64_t const row_tiles = gemm_ceil_div(r.end - r.begin, shape.bm);
    return {r.begin + (local % row_tiles) * shape.bm, r.end, (local / row_tiles) * shape.bn, e};
  }
  __device__ std::int64_t reduction(tile_t const&) const { return n; }
  __device__ T const* a_line(tile_t const& t, std::int64_t i) const {
    std::int64_t const m = t.m0 + i;
    return m < t.m_end ? dy + m * n : nullptr;
  }
  __device__ std::int64_t a_limit(tile_t const&) const { return n; }
  __device__ T const* b_line(tile_t const& t, std::int64_t r) const {
    return r < n ? w + (t.e * n + r) * k + t.k0 : nullptr;
  }
  __device__ std::int64_t b_limit(tile_t const& t) const { return k - t.k0; }
  __device__ A initial(tile_t const&, int, int) const { return A(0); }

  __device__ void epilogue(tile_t const& t, A const* cs) const {
    std::int64_t const kw = gated ? 2 * k : k;
#pragma unroll 1
    for (int q = static_cast<int>(threadIdx.x); q < shape.bm * shape.bn; q += mainloop::threads) {
      int const i = q / shape.bn, j = q % shape.bn;
      std::int64_t const m = t.m0 + i, col = t.k0 + j;
      if (m >= t.m_end || col >= k) continue;
      A const s = cs[i * mainloop::ldc + j];
      if constexpr (Act == activation::identity) {
        dx[m * kw + col] = from_float<T>(s);
      } else {
        A d_gate, d_up;
        A const up = gated ? static_cast<A>(to_float(pre[m * kw + k + col])) : A(0);
        activation_backward<Act>(static_cast<A>(to_float(pre[m * kw + col])), up, s, d_gate, d_up);
        dx[m * kw + col] = from_float<T>(d_gate);
        if constexpr (gated) dx[m * kw + k + col] = from_float<T>(d_up);
      }
    }
  }
};

/// wgrad: dW_e (+)= dY_eᵀ · X_e over the expert's rows. A = dY (oc, the tile's rows are N),
/// B = X (oc); every expert owns its ⌈N/bm⌉·⌈K/bn⌉ tiles, also without rows (zeros, or the
/// caller's values when accumulating: the sums start from them).
template <class T, class Mainloop>
struct gemm_wgrad {
  using mainloop = Mainloop;
  using A = typename Mainloop::accum;
  static constexpr gemm_tile_shape shape = Mainloop::shape;
  static constexpr bool a_rc = false, b_rc = false;

  int experts;
  std::int64_t rows, n, k;
  std::int64_t const* offsets;  // [E_l + 1]
  T const* x;                   // [M, K]
  T const* dy;                  // [M, N]
  A* dw;                        // [E_l, N, K]
  bool accumulate;

  struct tile_t {
    std::int64_t n0, k0, first, count;
    int e;
  };
  __device__ std::int64_t tiles_of(int) const {
    return gemm_ceil_div(n, shape.bm) * gemm_ceil_div(k, shape.bn);
  }
  /// All experts' tiles (every dW_e is written, also without rows).
  __host__ __device__ std::int64_t tile_bound() const {
    return experts * gemm_ceil_div(n, shape.bm) * gemm_ceil_div(k, shape.bn);
  }
  __device__ tile_t tile(int e, std::int64_t local) const {
    expert_rows const r = rows_of(offsets, rows, e);
    std::int64_t const n_tiles = gemm_ceil_div(n, shape.bm);
    return {(local % n_tiles) * shape.bm, (local / n_tiles) * shape.bn, r.begin, r.end - r.begin,
            e};
  }
  __device__ std::int64_t reduction(tile_t const& t) const { return t.count; }
  __device__ T const* a_line(tile_t const& t, std::int64_t r) const {
    return r < t.count ? dy + (t.first + r) * n + t.n0 : nullptr;
  }
  __device__ std::int64_t a_limit(tile_t const& t) const { return n - t.n0; }
  __device__ T const* b_line(tile_t const& t, std::int64_t r) const {
    return r < t.count ? x + (t.first + r) * k + t.k0 : nullptr;
  }
  __device__ std::int64_t b_limit(tile_t const& t) const { return k - t.k0; }
  __device__ A initial(tile_t const& t, int i, int j) const {
    std::int64_t const row = t.n0 + i, col = t.k0 + j;
    return accumulate && row < n && col < k ? dw[(t.e * n + row) * k + col] : A(0);
  }
  __device__ void epilogue(tile_t const& t, A const* cs) const {
#pragma unroll 1
    for (int q = static_cast<int>(threadIdx.x); q < shape.bm * shape.bn; q += mainloop::threads) {
      int const i = q / shape.bn, j = q % shape.bn;
      std::int64_t const row = t.n0 + i, col = t.k0 + j;
      if (row < n && col < k) dw[(t.e * n + row) * k + col] = cs[i * mainloop::ldc + j];
    }
  }
};

// ---- scheduler and kernels --------------------------------------------------------------------

/// first[e] = tiles of experts [0, e), first[E_l] = all tiles; a block-wide scan by warp 0.
template <class P>
__device__ __forceinline__ std::int32_t scan_tiles(std::int32_t* first, P const& p) {
  for (int e = static_cast<int>(threadIdx.x); e < p.experts; e += static_cast<int>(blockDim.x))
    first[e + 1] = static_cast<std::int32_t>(p.tiles_of(e));
  __syncthreads();
  if (threadIdx.x < 32) {
    int const lane = static_cast<int>(threadIdx.x);
    std::int32_t carry = 0;
    for (int base = 1; base <= p.experts; base += 32) {
      int const i = base + lane;
      std::int32_t v = i <= p.experts ? first[i] : 0;
#pragma unroll
      for (int d = 1; d < 32; d *= 2) {
        std::int32_t const u = __shfl_up_sync(0xffffffffu, v, d);
        if (lane >= d) v += u;
      }
      if (i <= p.experts) first[i] = carry + v;
      carry += __shfl_sync(0xffffffffu, v, 31);
    }
    if (lane == 0) first[0] = 0;
  }
  __syncthreads();
  return first[p.experts];
}

/// The expert e with first[e] <= t < first[e + 1] (experts without tiles are skipped).
__device__ __forceinline__ int expert_of(std::int32_t const* first, int experts, std::int32_t t) {
  int lo = 0, hi = experts;  // first[lo] <= t < first[hi]
  while (hi - lo > 1) {
    int const mid = (lo + hi) / 2;
    if (first[mid] <= t)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/// Static shared memory of grouped_gemm_kernel: the scheduler's tile prefix first[].
inline constexpr std::size_t grouped_gemm_static_smem = sizeof(std::int32_t) * (max_experts + 1);

/// The grouped GEMM: a persistent grid walks the tiles of all experts (see the file comment).
template <class P>
__global__ void __launch_bounds__(P::mainloop::threads, P::shape.min_blocks)
    grouped_gemm_kernel(P const p) {
  extern __shared__ __align__(128) unsigned char grouped_gemm_smem[];
  __shared__ std::int32_t first[max_experts + 1];
  std::int32_t const total = scan_tiles(first, p);
#pragma unroll 1
  for (std::int32_t t = static_cast<std::int32_t>(blockIdx.x); t < total;
       t += static_cast<std::int32_t>(gridDim.x)) {
    int const e = expert_of(first, p.experts, t);
    typename P::tile_t const tile = p.tile(e, t - first[e]);
    P::mainloop::run(p, tile, grouped_gemm_smem);
    p.epilogue(tile, reinterpret_cast<typename P::A const*>(grouped_gemm_smem));
    __syncthreads();  // the next tile's loads overwrite the staged sums
  }
}

/// Threads of the element-wise kernels below.
inline constexpr int grouped_elementwise_block = 256;

/// d_bias[e, j] (+)= Σ dy[m, j] over the rows m of expert e, in A: a block of
/// column_sum_threads per 32 columns of one expert (blockIdx.y), in column_sum's fixed order.
template <class T, class A>
__global__ void __launch_bounds__(column_sum_threads)
    grouped_bias_grad_kernel(std::int64_t const* __restrict__ offsets,  // [E_l + 1]
                             T const* __restrict__ dy,                  // [M, N]
                             A* __restrict__ d_bias,                    // [E_l, N]
                             std::int64_t rows, std::int64_t n, bool accumulate) {
  __shared__ column_sum_storage<A> storage;
  int const e = static_cast<int>(blockIdx.y);
  expert_rows const r = rows_of(offsets, rows, e);
#pragma unroll 1
  for (std::int64_t j0 = static_cast<std::int64_t>(blockIdx.x) * column_sum_cols; j0 < n;
       j0 += static_cast<std::int64_t>(gridDim.x) * column_sum_cols) {
    std::int64_t const j = j0 + threadIdx.x;
    bool const active = j < n;
    A const init = active && threadIdx.y == 0 && accumulate ? d_bias[e * n + j] : A(0);
    A const sum = column_sum<A>(storage, r.begin, r.end, active, init, [&](std::int64_t m) {
      return static_cast<A>(to_float(dy[m * n + j]));
    });
    if (active && threadIdx.y == 0) d_bias[e * n + j] = sum;
  }
}

/// h = act(pre) on rows [offsets[0], offsets[E_l]), the forward epilogue's arithmetic.
template <activation Act, class T, class A>
__global__ void __launch_bounds__(grouped_elementwise_block)
    grouped_activation_kernel(std::int64_t const* __restrict__ offsets,  // [E_l + 1]
                              T const* __restrict__ pre,                 // [M, N_w]
                              T* __restrict__ h,                         // [M, N]
                              int experts, std::int64_t rows, std::int64_t n) {
  constexpr bool gated = is_gated_v<Act>;
  std::int64_t const nw = gated ? 2 * n : n;
  std::int64_t begin = offsets[0], end = offsets[experts];
  begin = begin < 0 ? 0 : (begin > rows ? rows : begin);
  end = end < begin ? begin : (end > rows ? rows : end);
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
#pragma unroll 1
  for (std::int64_t q = begin * n + static_cast<std::int64_t>(blockIdx.x) * blockDim.x +
                        threadIdx.x;
       q < end * n; q += stride) {
    std::int64_t const m = q / n, j = q % n;
    A const up = gated ? static_cast<A>(to_float(pre[m * nw + n + j])) : A(0);
    h[q] = from_float<T>(activation_forward<Act>(static_cast<A>(to_float(pre[m * nw + j])), up));
  }
}

}  // namespace moe::backend::cuda
