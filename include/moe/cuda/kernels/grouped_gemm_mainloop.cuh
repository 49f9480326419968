// SPDX-License-Identifier: Apache-2.0
// The two main loops of the CUDA grouped GEMM (moe/cuda/kernels/grouped_gemm.cuh). A main loop
// computes one output tile, bm × bn, of one expert: it reads its operands through the problem's
// `a_line`/`b_line` (a pointer per line, null for lines outside the expert or the matrix), sums
// over the problem's reduction starting from `initial(tile, i, j)`, and leaves the finished
// sums in shared memory, row-major [bm][ldc] of its accumulation type, for the epilogue. So a
// wgmma + TMA main loop for sm_90a can replace `mma_mainloop` under the same scheduler and
// epilogues.
//
// Operands come in two layouts, named from the GEMM's point of view:
//   rc  reduction-contiguous: a line is one output row (or column) and runs along the
//       reduction — x and W of the forward, dY of dgrad. Smem tile [rows][bk].
//   oc  output-contiguous: a line is one reduction step and runs along the outputs — W of
//       dgrad, dY and X of wgrad. Smem tile [bk][rows]; the tensor-core loop reads it with
//       ldmatrix.trans.
//
// mma_mainloop (bf16, fp16; sm_80+): 16-byte cp.async into XOR-swizzled smem, `stages`-deep
// pipeline (a stage is refilled right after the barrier that ends its last reads), ldmatrix.x4,
// mma.sync.m16n8k16 with fp32 accumulators; warps_m × warps_n warps of (bm/warps_m) ×
// (bn/warps_n) each. Lines and reduction steps past the operand are zero-filled by cp.async's
// src-size operand (0 bytes read), so partial tiles need no other predicate in the loop.
// simt_mainloop (fp32 with FFMA, fp64 with DFMA; any alignment): 256 threads of 4 × 4 outputs
// each (rows ty + 16i, columns tx + 16j), operands converted to the accumulation type on the
// way into smem; each sum is one fused multiply-add chain in ascending reduction index.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t, std::uint32_t
#include <type_traits>  // std::is_same_v

#include "moe/detail/gemm_layout.hpp"  // swizzle, a_ldmatrix, b_ldmatrix, c_fragment
#include "moe/precision.hpp"           // moe::bf16, fp16, to_float

namespace moe::backend::cuda {

/// Tile shape of a grouped-GEMM kernel (see grouped_gemm_tuning).
struct gemm_tile_shape {
  int bm;          ///< output rows of a tile (tokens for forward/dgrad, N for wgrad)
  int bn;          ///< output columns of a tile
  int bk;          ///< reduction step of one pipeline stage
  int warps_m;     ///< warps along bm (tensor-core loop)
  int warps_n;     ///< warps along bn (tensor-core loop)
  int stages;      ///< cp.async pipeline depth (tensor-core loop)
  int min_blocks;  ///< __launch_bounds__ blocks per SM the register budget must allow
};

// ---- PTX wrappers (sm_80+) ------------------------------------------------------------------

/// 16 bytes global → shared, bypassing L1; `valid` false reads nothing and writes zeros.
__device__ __forceinline__ void cp_async16(void* smem, void const* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  auto const s = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  int const bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
#elif defined(MOE_CUDA_EMULATION)  // tests/emu: run on the CPU
  moe_emu::cp_async16(smem, gmem, valid);
#else
  (void)smem, (void)gmem, (void)valid;
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#elif defined(MOE_CUDA_EMULATION)
  moe_emu::cp_async_commit();
#endif
}
/// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#elif defined(MOE_CUDA_EMULATION)
  moe_emu::cp_async_wait(N);
#endif
}

/// ldmatrix.x4 (Trans: .trans): four 8 × 8 matrices of 16-bit elements; this lane gives the
/// address of row lane % 8 of matrix lane / 8.
template <bool Trans>
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], void const* smem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  auto const s = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  if constexpr (Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#elif defined(MOE_CUDA_EMULATION)
  moe_emu::ldmatrix_x4<Trans>(r, smem);
#else
  (void)smem;
  r[0] = r[1] = r[2] = r[3] = 0;
#endif
}

/// d += a · b, one m16n8k16 tensor-core op with fp32 accumulators (T: bf16 or fp16).
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], std::uint32_t const (&a)[4],
                                          std::uint32_t const (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, bf16>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(MOE_CUDA_EMULATION)
  moe_emu::mma_16816<std::is_same_v<T, bf16>>(d, a, b);
#else
  (void)d, (void)a, (void)b;
#endif
}

// ---- tensor-core main loop ------------------------------------------------------------------

template <gemm_tile_shape S, class T>
struct mma_mainloop {
  using value_type = T;
  using accum = float;
  static constexpr gemm_tile_shape shape = S;
  static constexpr int threads = S.warps_m * S.warps_n * 32;
  static constexpr int wm = S.bm / S.warps_m;  ///< warp tile rows
  static constexpr int wn = S.bn / S.warps_n;  ///< warp tile columns
  static constexpr int mfrag = wm / 16;        ///< m16 blocks per warp
  static constexpr int nfrag = wn / 8;         ///< n8 blocks per warp
  static constexpr int a_elems = S.bm * S.bk;  ///< one stage of A
  static constexpr int b_elems = S.bn * S.bk;  ///< one stage of B
  static constexpr int ldc = S.bn + 4;         ///< staged C row (floats)
  static constexpr std::size_t pipe_bytes =
      static_cast<std::size_t>(S.stages) * (a_elems + b_elems) * sizeof(T);
  static constexpr std::size_t c_bytes = static_cast<std::size_t>(S.bm) * ldc * sizeof(float);
  static constexpr std::size_t smem_bytes = pipe_bytes > c_bytes ? pipe_bytes : c_bytes;
  static_assert(wm % 16 == 0 && wn % 16 == 0 && S.bk % 16 == 0 && S.stages >= 2,
                "mma_mainloop: warp tiles of whole m16 × n16 blocks, bk a multiple of 16");
  static_assert(sizeof(T) == 2, "mma_mainloop: 16-bit operands (bf16, fp16)");

  /// Issues the cp.async copies of one operand's stage. RC: Rows lines of bk elements from
  /// line(i) + k0; OC: bk lines line(k0 + r) of Rows elements. `limit`: RC, the reduction
  /// length; OC, the valid elements of a line (both multiples of 8: can_implement).
  template <bool RC, int Rows, class Line>
  static __device__ __forceinline__ void load(T* dst, Line const& line, std::int64_t limit,
                                              std::int64_t k0, void const* fallback) {
    if constexpr (RC) {
      constexpr int cpr = S.bk / 8;  // 16-byte chunks per line
#pragma unroll
      for (int q = static_cast<int>(threadIdx.x); q < Rows * cpr; q += threads) {
        int const i = q / cpr, c = (q % cpr) * 8;
        T const* const src = line(i);
        bool const ok = src != nullptr && k0 + c < limit;
        cp_async16(dst + moe::detail::gemm::swizzle<S.bk>(i, c),
                   ok ? static_cast<void const*>(src + k0 + c) : fallback, ok);
      }
    } else {
      constexpr int cpr = Rows / 8;
#pragma unroll
      for (int q = static_cast<int>(threadIdx.x); q < S.bk * cpr; q += threads) {
        int const r = q / cpr, c = (q % cpr) * 8;
        T const* const src = line(k0 + r);
        bool const ok = src != nullptr && c < limit;
        cp_async16(dst + moe::detail::gemm::swizzle<Rows>(r, c),
                   ok ? static_cast<void const*>(src + c) : fallback, ok);
      }
    }
  }

  /// The smem offset of the ldmatrix row this lane addresses.
  template <bool RC, int Rows>
  static __device__ __forceinline__ int offset(moe::detail::gemm::ld_coord c) {
    if constexpr (RC)
      return moe::detail::gemm::swizzle<S.bk>(c.row, c.col);
    else
      return moe::detail::gemm::swizzle<Rows>(c.row, c.col);
  }

  /// Computes tile `t` of problem `p` and leaves it in smem as float [bm][ldc].
  template <class P>
  static __device__ void run(P const& p, typename P::tile_t const& t, unsigned char* smem) {
    namespace lay = moe::detail::gemm;
    T* const as = reinterpret_cast<T*>(smem);
    T* const bs = as + S.stages * a_elems;
    int const warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
    int const wm0 = (warp / S.warps_n) * wm, wn0 = (warp % S.warps_n) * wn;
    void const* const fallback = p.offsets;  // any valid address: nothing is read from it

    float acc[mfrag][nfrag][4];
#pragma unroll
    for (int mi = 0; mi < mfrag; ++mi)
#pragma unroll
      for (int ni = 0; ni < nfrag; ++ni)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          lay::ld_coord const c = lay::c_fragment(lane, i);
          acc[mi][ni][i] = p.initial(t, wm0 + mi * 16 + c.row, wn0 + ni * 8 + c.col);
        }

    std::int64_t const a_limit = p.a_limit(t), b_limit = p.b_limit(t);
    auto const a_line = [&](std::int64_t i) { return p.a_line(t, i); };
    auto const b_line = [&](std::int64_t j) { return p.b_line(t, j); };
    auto const load_stage = [&](int stage, std::int64_t kt) {
      load<P::a_rc, S.bm>(as + stage * a_elems, a_line, a_limit, kt * S.bk, fallback);
      load<P::b_rc, S.bn>(bs + stage * b_elems, b_line, b_limit, kt * S.bk, fallback);
    };
    std::int64_t const ktiles = (p.reduction(t) + S.bk - 1) / S.bk;

#pragma unroll 1
    for (int s = 0; s < S.stages - 1; ++s) {
      if (s < ktiles) load_stage(s, s);
      cp_async_commit();  // empty groups keep the count uniform
    }
#pragma unroll 1
    for (std::int64_t kt = 0; kt < ktiles; ++kt) {
      cp_async_wait<S.stages - 2>();  // stage kt has landed (this thread's copies) ...
      __syncthreads();                // ... everyone's, and stage kt - 1 is no longer read
      std::int64_t const next = kt + S.stages - 1;
      if (next < ktiles) load_stage(static_cast<int>(next % S.stages), next);
      cp_async_commit();
      int const stage = static_cast<int>(kt % S.stages);
      T const* const a = as + stage * a_elems;
      T const* const b = bs + stage * b_elems;
#pragma unroll
      for (int ks = 0; ks < S.bk; ks += 16) {
        std::uint32_t af[mfrag][4], bf[nfrag][2];
#pragma unroll
        for (int mi = 0; mi < mfrag; ++mi)
          ldmatrix_x4<!P::a_rc>(
              af[mi], a + offset<P::a_rc, S.bm>(lay::a_ldmatrix(P::a_rc, lane, wm0 + mi * 16, ks)));
#pragma unroll
        for (int np = 0; np < nfrag / 2; ++np) {
          std::uint32_t r[4];
          ldmatrix_x4<!P::b_rc>(
              r, b + offset<P::b_rc, S.bn>(lay::b_ldmatrix(P::b_rc, lane, wn0 + np * 16, ks)));
          bf[2 * np][0] = r[0];
          bf[2 * np][1] = r[1];
          bf[2 * np + 1][0] = r[2];
          bf[2 * np + 1][1] = r[3];
        }
#pragma unroll
        for (int mi = 0; mi < mfrag; ++mi)
#pragma unroll
          for (int ni = 0; ni < nfrag; ++ni) mma_16816<T>(acc[mi][ni], af[mi], bf[ni]);
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // the pipeline's smem becomes the C tile

    float* const cs = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int mi = 0; mi < mfrag; ++mi)
#pragma unroll
      for (int ni = 0; ni < nfrag; ++ni)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          lay::ld_coord const c = lay::c_fragment(lane, i);
          cs[(wm0 + mi * 16 + c.row) * ldc + wn0 + ni * 8 + c.col] = acc[mi][ni][i];
        }
    __syncthreads();
  }
};

// ---- SIMT main loop ---------------------------------------------------------------------------

__device__ __forceinline__ float simt_fma(float a, float b, float c) {
  return __fmaf_rn(a, b, c);
}
__device__ __forceinline__ double simt_fma(double a, double b, double c) {
  return __fma_rn(a, b, c);
}

template <gemm_tile_shape S, class T, class A>
struct simt_mainloop {
  using value_type = T;
  using accum = A;
  static constexpr gemm_tile_shape shape = S;
  static constexpr int threads = 256;  // 16 × 16 threads
  static constexpr int tm = S.bm / 16, tn = S.bn / 16;
  static constexpr int lda = S.bm + 1, ldb = S.bn + 1;  // +1: the transposing stores spread
  static constexpr int ldc = S.bn + 1;
  static constexpr std::size_t pipe_bytes =
      static_cast<std::size_t>(S.bk) * (lda + ldb) * sizeof(A);
  static constexpr std::size_t c_bytes = static_cast<std::size_t>(S.bm) * ldc * sizeof(A);
  static constexpr std::size_t smem_bytes = pipe_bytes > c_bytes ? pipe_bytes : c_bytes;
  static_assert(S.bm % 16 == 0 && S.bn % 16 == 0, "simt_mainloop: 16 × 16 threads");

  /// One operand's bk-deep slice into smem [bk][ld], converted to A, zeros outside.
  template <bool RC, int Rows, class Line>
  static __device__ __forceinline__ void load(A* dst, int ld, Line const& line, std::int64_t limit,
                                              std::int64_t k0) {
    if constexpr (RC) {
#pragma unroll 4
      for (int q = static_cast<int>(threadIdx.x); q < Rows * S.bk; q += threads) {
        int const i = q / S.bk, kk = q % S.bk;
        T const* const src = line(i);
        dst[kk * ld + i] = src != nullptr && k0 + kk < limit ? to_float(src[k0 + kk]) : A(0);
      }
    } else {
#pragma unroll 4
      for (int q = static_cast<int>(threadIdx.x); q < Rows * S.bk; q += threads) {
        int const kk = q / Rows, c = q % Rows;
        T const* const src = line(k0 + kk);
        dst[kk * ld + c] = src != nullptr && c < limit ? to_float(src[c]) : A(0);
      }
    }
  }

  template <class P>
  static __device__ void run(P const& p, typename P::tile_t const& t, unsigned char* smem) {
    A* const as = reinterpret_cast<A*>(smem);
    A* const bs = as + S.bk * lda;
    int const tx = static_cast<int>(threadIdx.x) % 16, ty = static_cast<int>(threadIdx.x) / 16;
    A acc[tm][tn];
#pragma unroll
    for (int i = 0; i < tm; ++i)
#pragma unroll
      for (int j = 0; j < tn; ++j) acc[i][j] = p.initial(t, ty + 16 * i, tx + 16 * j);

    std::int64_t const a_limit = p.a_limit(t), b_limit = p.b_limit(t);
    auto const a_line = [&](std::int64_t i) { return p.a_line(t, i); };
    auto const b_line = [&](std::int64_t j) { return p.b_line(t, j); };
    std::int64_t const reduction = p.reduction(t);
#pragma unroll 1
    for (std::int64_t k0 = 0; k0 < reduction; k0 += S.bk) {
      __syncthreads();  // the previous slice is no longer read
      load<P::a_rc, S.bm>(as, lda, a_line, a_limit, k0);
      load<P::b_rc, S.bn>(bs, ldb, b_line, b_limit, k0);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < S.bk; ++kk) {
        A a[tm], b[tn];
#pragma unroll
        for (int i = 0; i < tm; ++i) a[i] = as[kk * lda + ty + 16 * i];
#pragma unroll
        for (int j = 0; j < tn; ++j) b[j] = bs[kk * ldb + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < tm; ++i)
#pragma unroll
          for (int j = 0; j < tn; ++j) acc[i][j] = simt_fma(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
    A* const cs = reinterpret_cast<A*>(smem);
#pragma unroll
    for (int i = 0; i < tm; ++i)
#pragma unroll
      for (int j = 0; j < tn; ++j) cs[(ty + 16 * i) * ldc + tx + 16 * j] = acc[i][j];
    __syncthreads();
  }
};

}  // namespace moe::backend::cuda
