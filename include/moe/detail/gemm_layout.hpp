// SPDX-License-Identifier: Apache-2.0
// The index maps of the CUDA grouped GEMM's tensor-core main loop, as MOE_HOST_DEVICE functions
// that the kernel itself calls, so that a host program can push tiles through exactly these maps
// (32 simulated lanes, the mma.sync semantics of the PTX ISA) and compare with a plain GEMM:
//
//   - the XOR swizzle of a shared-memory tile of 16-bit elements (16-byte chunks permuted per
//     row so that the 8 row addresses of one ldmatrix phase, and the 8 chunks one cp.async phase
//     writes, fall in distinct bank groups);
//   - which smem element a lane addresses for ldmatrix.x4 (lane l gives row l % 8 of matrix
//     l / 8), for an operand stored reduction-contiguous ("rc": [rows][k], plain ldmatrix) or
//     output-contiguous ("oc": [k][rows], ldmatrix.trans);
//   - the mma.sync.m16n8k16 fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
//     g = lane / 4, t = lane % 4:
//       A (16 × 16, row): reg 0 (g, 2t..2t+1), reg 1 (g + 8, 2t..), reg 2 (g, 2t + 8..),
//                         reg 3 (g + 8, 2t + 8..)
//       B (16 × 8, col):  reg 0 (k = 2t..2t+1, n = g), reg 1 (k = 2t + 8.., n = g)
//       C (16 × 8, f32):  c0, c1 (g, 2t..2t+1), c2, c3 (g + 8, 2t..2t+1)
//     ldmatrix hands lane l, for each 8 × 8 matrix, the pair (row l / 4, columns 2(l % 4),
//     2(l % 4) + 1) of it as stored, or with .trans the pair (rows 2(l % 4), 2(l % 4) + 1,
//     column l / 4): so the four matrices below are arranged to land on the fragment registers.
#pragma once

#include "moe/detail/macros.hpp"  // MOE_HOST_DEVICE

namespace moe::detail::gemm {

/// Offset in elements of (row, col) in a smem tile of `Cols` 16-bit elements per row (Cols a
/// multiple of 8), 16-byte chunks XOR-swizzled: chunk c of row r is stored at chunk
/// c ^ ((r >> shift) & (span - 1)), span = min(Cols / 8, 8). With 8 chunks a row this is the
/// classic c ^ (r & 7); with 4 (64-byte rows) it is c ^ ((r >> 1) & 3), which still spreads 8
/// consecutive rows over the 8 bank groups of 16 bytes.
template <int Cols>
MOE_HOST_DEVICE constexpr int swizzle(int row, int col) {
  static_assert(Cols % 8 == 0 && Cols >= 16, "a swizzled row holds whole 16-byte chunks");
  constexpr int chunks = Cols / 8;
  constexpr int span = chunks < 8 ? chunks : 8;
  constexpr int shift = span == 8 ? 0 : span == 4 ? 1 : 2;
  int const chunk = col >> 3;
  return row * Cols + ((chunk ^ ((row >> shift) & (span - 1))) << 3) + (col & 7);
}

/// The (row, col) of a smem tile a lane addresses for one ldmatrix.x4.
struct ld_coord {
  int row;
  int col;
};

/// A operand, 16 × 16 block at (m0, k0) of the warp: matrix j = lane / 8 covers rows
/// m0 + (j & 1)·8 and columns k0 + (j >> 1)·8, so registers 0..3 are A's regs 0..3.
/// rc: the tile is [m][k] (plain ldmatrix); oc: [k][m] (ldmatrix.trans).
MOE_HOST_DEVICE constexpr ld_coord a_ldmatrix(bool rc, int lane, int m0, int k0) {
  int const j = lane >> 3, r = lane & 7;
  int const m = m0 + (j & 1) * 8, k = k0 + (j >> 1) * 8;
  return rc ? ld_coord{m + r, k} : ld_coord{k + r, m};
}

/// B operand, two 16 × 8 blocks at (k0, n0) and (k0, n0 + 8): matrix j covers n0 + (j >> 1)·8,
/// k0 + (j & 1)·8, so registers 0, 1 are block 0's regs 0, 1 and registers 2, 3 block 1's.
/// rc: the tile is [n][k] (plain ldmatrix); oc: [k][n] (ldmatrix.trans).
MOE_HOST_DEVICE constexpr ld_coord b_ldmatrix(bool rc, int lane, int n0, int k0) {
  int const j = lane >> 3, r = lane & 7;
  int const n = n0 + (j >> 1) * 8, k = k0 + (j & 1) * 8;
  return rc ? ld_coord{n + r, k} : ld_coord{k + r, n};
}

/// Row and column, within the 16 × 8 block, of accumulator i (0..3) of a lane.
MOE_HOST_DEVICE constexpr ld_coord c_fragment(int lane, int i) {
  return {(lane >> 2) + (i >> 1) * 8, (lane & 3) * 2 + (i & 1)};
}

/// The column of the B tile (the W row, relative to the tile) that tile column `j` holds in the
/// gated forward: blocks of 8 columns alternate gate and up, so block 2b holds gate outputs
/// o = 8b..8b+7 and block 2b + 1 the matching up rows, and one lane's accumulators c and c'
/// of n8 blocks 2b and 2b + 1 are the gate and up halves of the same output.
/// @return the output column (relative to the tile) in `out` and whether it is the up half
MOE_HOST_DEVICE constexpr int gated_output(int j) {
  return (j >> 4) * 8 + (j & 7);
}
MOE_HOST_DEVICE constexpr bool gated_is_up(int j) {
  return ((j >> 3) & 1) != 0;
}
/// The tile column of the gate half of output `o` (the up half is 8 further).
MOE_HOST_DEVICE constexpr int gated_column(int o) {
  return (o >> 3) * 16 + (o & 7);
}

}  // namespace moe::detail::gemm
