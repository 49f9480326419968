// SPDX-License-Identifier: Apache-2.0
// Column sums over many rows — out[j] (+)= Σ_m term(m, j) — for the gradients that reduce over
// tokens: the grouped GEMM's d_bias and the PR-MoE coefficients' dW_c, db_c. One thread per
// column walking all rows would give few threads when the columns are few (a dense branch's
// d_bias: E_l = 1, a few thousand columns) and leave most of the GPU idle on a long serial
// loop. Here a block of 32 × 16 threads takes 32 columns: row group g (threadIdx.y) sums rows
// begin + g, begin + g + 16, ... in ascending order (a warp reads 32 consecutive columns of a
// row), and thread (j, 0) adds the 16 partial sums to the initial value in group order. The
// order depends only on the row range — not on the grid or the GPU — so results are the same
// bits run after run; they differ from the host's single running sum by rounding only.
#pragma once

#include <cstdint>  // std::int64_t

namespace moe::backend::cuda {

/// Columns and row groups of a column-sum block: blockDim = (column_sum_cols, column_sum_groups).
inline constexpr int column_sum_cols = 32;
inline constexpr int column_sum_groups = 16;
inline constexpr int column_sum_threads = column_sum_cols * column_sum_groups;

/// Blocks for n columns (a grid-stride loop covers any more than gridDim.x allows).
inline unsigned column_sum_blocks(std::int64_t n) {
  std::int64_t const chunks = (n + column_sum_cols - 1) / column_sum_cols;
  return static_cast<unsigned>(chunks < 65535 ? chunks : 65535);
}

/// Block shared storage of column_sum: one partial sum per thread.
template <class A>
struct column_sum_storage {
  A partial[column_sum_groups][column_sum_cols];
};

/// Σ_{m in [begin, end)} term(m) for this thread's column, added to `init` in the order above;
/// the result is meaningful in the threads with threadIdx.y == 0 (the others return 0).
/// `active`: whether this thread's column exists (a block's last columns may not). Every thread
/// of the block must call it (it synchronises the block twice).
template <class A, class Term>
__device__ __forceinline__ A column_sum(column_sum_storage<A>& s, std::int64_t begin,
                                        std::int64_t end, bool active, A init, Term term) {
  int const c = static_cast<int>(threadIdx.x), g = static_cast<int>(threadIdx.y);
  A part = A(0);
  if (active) {
#pragma unroll 4
    for (std::int64_t m = begin + g; m < end; m += column_sum_groups) part += term(m);
  }
  s.partial[g][c] = part;
  __syncthreads();
  A total = A(0);
  if (g == 0) {
    total = init;
#pragma unroll
    for (int i = 0; i < column_sum_groups; ++i) total += s.partial[i][c];
  }
  __syncthreads();  // the storage may be reused by the next call
  return total;
}

}  // namespace moe::backend::cuda
