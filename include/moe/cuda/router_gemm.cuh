// SPDX-License-Identifier: Apache-2.0
// CUDA overloads of the router GEMM (see moe/router_gemm.hpp): the same argument checks as the
// host backend, then, on the policy's stream and without synchronising:
//   router_gemm           router_gemm_tile_kernel: logits[T, E] = x̃ · W_g (x̃ = x ⊙ u
//                         formed as x is loaded, with the host's Philox words or caller's u)
//                         — in one pass over H when the output tiles alone fill the GPU, else
//                         over S fixed chunks of H into the workspace and
//                         router_gemm_reduce_kernel adding them in chunk order;
//   router_gemm_backward  router_gemm_tile_kernel for dx = (d_logits · W_gᵀ) ⊙ u (rounded once
//                         to the activation type), then for dW_g += x̃ᵀ · d_logits — in one
//                         pass over T when the output tiles alone fill the GPU, else over S
//                         fixed chunks of T into the workspace and router_gemm_reduce_kernel
//                         adding them to dW_g in chunk order.
// Our own SIMT kernel rather than cuBLAS: E <= 1024 makes these GEMMs skinny (memory-bound
// for small E), the jitter is fused into the operand load instead of materialising x̃, the
// fp64 configs need no separate path, no library handle has to travel through the policy, and
// the summation order is ours: one fma per term, k ascending, one owner per output element —
// bitwise reproducible run to run, and equal to the host's within the rounding of the
// accumulation type (the host does not fuse its multiply-adds).
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t

#include "moe/cuda/kernels/router_gemm.cuh"  // the kernels
#include "moe/cuda/runtime.cuh"              // check_launch, grid_for, MOE_CUDA_TRY
#include "moe/router_gemm.hpp"               // router_gemm_args, detail::check

namespace moe {

namespace detail {

/// The jitter as the kernels read it (the host's jitter_source: on in training with eps > 0).
inline backend::cuda::router_jitter_dev cuda_jitter(problem const& p,
                                                    router_jitter const& j) noexcept {
  return {p.training && j.eps > 0.0f, j.eps, j.u, p.seed, j.offset, p.hidden};
}

/// How a router GEMM splits its depth over blocks: `chunks` consecutive pieces of `chunk` (the
/// last shorter), a function of the output's rows M (times E), the depth and the config only —
/// never of the GPU — so the sums, and hence the bits, are the same on every device. One chunk
/// when the output tiles alone give >= 1024 blocks; otherwise enough chunks for about 1024
/// blocks, at most 16, each at least `min_chunk` deep and a multiple of `granule`.
struct cuda_router_split {
  std::int64_t chunks = 1;
  std::int64_t chunk = 0;
  std::size_t workspace_bytes = 0;  ///< chunks > 1: [chunks, M, E] partial sums in accum_t<C>
};

template <config C>
cuda_router_split cuda_router_split_of(std::int64_t M, std::int64_t depth, std::int64_t min_chunk,
                                       std::int64_t granule) noexcept {
  using tile = backend::cuda::router_gemm_tile_for<C.experts>;
  constexpr std::int64_t target_blocks = 1024, max_chunks = 16;
  cuda_router_split s;
  s.chunk = depth;
  if (M <= 0 || depth <= 0) return s;
  std::int64_t const tiles =
      ((M + tile::bm - 1) / tile::bm) * ((C.experts + tile::bn - 1) / tile::bn);
  std::int64_t c = tiles >= target_blocks ? 1 : (target_blocks + tiles - 1) / tiles;
  std::int64_t const by_depth = (depth + min_chunk - 1) / min_chunk;
  c = c < by_depth ? c : by_depth;
  c = c < max_chunks ? c : max_chunks;
  if (c <= 1) return s;
  std::int64_t const per = (depth + c - 1) / c;
  s.chunk = (per + granule - 1) / granule * granule;
  s.chunks = (depth + s.chunk - 1) / s.chunk;
  if (s.chunks == 1) {
    s.chunk = depth;
    return s;
  }
  s.workspace_bytes = static_cast<std::size_t>(s.chunks) * static_cast<std::size_t>(M) *
                      static_cast<std::size_t>(C.experts) * sizeof(accum_t<C>);
  return s;
}

/// wgrad (M = H, depth T): chunks of at least 256 tokens (2048 until 2026-11-26, when E = 8,
/// T = 4096, H = 4096 ran wgrad in 32 blocks on a 132-SM H200).
template <config C>
cuda_router_split cuda_router_wgrad_split_of(std::int64_t T, std::int64_t H) noexcept {
  return cuda_router_split_of<C>(H, T, 256, 1);
}

/// The forward (M = T, depth H): chunks of at least 128, a multiple of the tile's BK. Without
/// it, E = 8 and T = 4096 made 16 blocks walking all of H on a 132-SM H200 (1.3 ms at H = 4096,
/// 2026-11-26).
template <config C>
cuda_router_split cuda_router_forward_split_of(std::int64_t T, std::int64_t H) noexcept {
  return cuda_router_split_of<C>(T, H, 128, backend::cuda::router_gemm_tile_for<C.experts>::bk);
}

/// Grid limits of the tile kernel: M tiles in grid.x (< 2^31), N tiles in grid.y (<= 65535).
inline status cuda_router_gemm_grid_ok(std::int64_t m_tiles, std::int64_t n_tiles,
                                       char const* what) noexcept {
  if (m_tiles > 2147483647 || n_tiles > 65535)
    return status::error(errc::unsupported_config,
                         "%s(cuda): %lld x %lld output tiles exceed the grid (2^31 - 1 x 65535)",
                         what, static_cast<long long>(m_tiles), static_cast<long long>(n_tiles));
  return {};
}

}  // namespace detail

/// Bytes of device workspace router_gemm(cuda_on(stream, ws, bytes), ...) needs for p.tokens
/// and p.hidden: 0 unless the forward splits H (then chunks · T · E partial sums; at most
/// about 16 MiB for fp32 accumulation, since the split stops at about 1024 blocks).
template <config C>
std::size_t router_gemm_workspace_bytes(problem const& p) noexcept {
  return detail::cuda_router_forward_split_of<C>(p.tokens, p.hidden).workspace_bytes;
}

/// Bytes of device workspace router_gemm_backward(cuda_on(stream, ws, bytes), ...) needs for
/// p.tokens and p.hidden: 0 unless wgrad splits T (then chunks · H · E partial sums).
template <config C>
std::size_t router_gemm_backward_workspace_bytes(problem const& p) noexcept {
  return detail::cuda_router_wgrad_split_of<C>(p.tokens, p.hidden).workspace_bytes;
}

/// Router logits on the device, enqueued on policy.stream without synchronising: logits =
/// x̃ · W_g, each element one fma chain over ascending h in accum_t<C> — or, when the output
/// tiles are too few to fill a GPU, S fma chains over fixed consecutive ranges of h written to
/// the workspace and added in range order by router_gemm_reduce_kernel (S from T, H and E only).
/// Workspace: router_gemm_workspace_bytes(p) (256-byte aligned when non-zero).
/// @param policy  stream and workspace
/// @param p       T = p.tokens, H = p.hidden; p.training and p.seed drive the jitter
/// @param a       x [T, H], w_gate [H, E], logits [T, E] out, jitter.u [T, H]: device memory
template <config C>
[[nodiscard]] status router_gemm(cuda_policy policy, problem const& p,
                                 router_gemm_args<C> const& a) noexcept {
  static_assert(check<C>());
  using namespace backend::cuda;
  using A = accum_t<C>;
  using tile = router_gemm_tile_for<C.experts>;
  MOE_TRY(detail::check(host_policy{}, p, a));
  if (p.tokens == 0) return {};
  std::int64_t const T = p.tokens, H = p.hidden, E = C.experts;
  std::int64_t const m_tiles = (T + tile::bm - 1) / tile::bm;
  std::int64_t const n_tiles = (E + tile::bn - 1) / tile::bn;
  MOE_TRY(detail::cuda_router_gemm_grid_ok(m_tiles, n_tiles, "router_gemm"));
  detail::cuda_router_split const split = detail::cuda_router_forward_split_of<C>(T, H);
  MOE_TRY(backend::cuda::check_workspace(policy, split.workspace_bytes, 256, "router_gemm",
                                         "router_gemm_workspace_bytes"));
  router_jitter_dev const jit = detail::cuda_jitter(p, a.jitter);
  dim3 const grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(n_tiles),
                  static_cast<unsigned>(split.chunks));
  router_x_operand<A, act_t<C>, false> const xo{a.x, H, jit};
  router_w_operand<A, weight_t<C>, false> const wo{a.w_gate, E};
  if (split.chunks == 1) {
    router_gemm_tile_kernel<A, tile, /*AKMajor=*/true, /*BNMajor=*/true>
        <<<grid, tile::threads, 0, policy.stream>>>(T, E, H, H, xo, wo,
                                                    router_store_epilogue<A>{a.logits, E, 0});
    return check_launch(policy.stream, "router_gemm_tile_kernel (forward)");
  }
  A* const partial = static_cast<A*>(policy.workspace);
  router_gemm_tile_kernel<A, tile, /*AKMajor=*/true, /*BNMajor=*/true>
      <<<grid, tile::threads, 0, policy.stream>>>(T, E, H, split.chunk, xo, wo,
                                                  router_store_epilogue<A>{partial, E, T * E});
  MOE_TRY(check_launch(policy.stream, "router_gemm_tile_kernel (forward, chunks)"));
  constexpr unsigned block = 256;
  router_gemm_reduce_kernel<A, /*Accumulate=*/false>
      <<<grid_for(T * E, block), block, 0, policy.stream>>>(partial, T * E, split.chunks,
                                                           a.logits);
  return check_launch(policy.stream, "router_gemm_reduce_kernel (forward)");
}

/// Router GEMM backward on the device, enqueued on policy.stream without synchronising:
/// dx = (d_logits · W_gᵀ) ⊙ u rounded once to act_t<C> (overwritten); d_w_gate += x̃ᵀ ·
/// d_logits (accumulated: zero it first for a fresh gradient). T = 0 is a no-op.
/// Workspace: router_gemm_backward_workspace_bytes(p) (256-byte aligned when non-zero).
/// @param p  the forward's problem
/// @param a  x [T, H], w_gate [H, E], d_logits [T, E], dx [T, H] out, d_w_gate [H, E] in/out
template <config C>
[[nodiscard]] status router_gemm_backward(cuda_policy policy, problem const& p,
                                          router_gemm_backward_args<C> const& a) noexcept {
  static_assert(check<C>());
  using namespace backend::cuda;
  using A = accum_t<C>;
  using wide = router_gemm_tile<64>;               // dgrad: N = H
  using narrow = router_gemm_tile_for<C.experts>;  // wgrad: N = E
  MOE_TRY(detail::check(host_policy{}, p, a));
  if (p.tokens == 0) return {};
  std::int64_t const T = p.tokens, H = p.hidden, E = C.experts;
  std::int64_t const dm = (T + wide::bm - 1) / wide::bm, dn = (H + wide::bn - 1) / wide::bn;
  std::int64_t const wm = (H + narrow::bm - 1) / narrow::bm;
  std::int64_t const wn = (E + narrow::bn - 1) / narrow::bn;
  MOE_TRY(detail::cuda_router_gemm_grid_ok(dm, dn, "router_gemm_backward"));
  MOE_TRY(detail::cuda_router_gemm_grid_ok(wm, wn, "router_gemm_backward"));
  detail::cuda_router_split const split = detail::cuda_router_wgrad_split_of<C>(T, H);
  MOE_TRY(backend::cuda::check_workspace(policy, split.workspace_bytes, 256,
                                         "router_gemm_backward",
                                         "router_gemm_backward_workspace_bytes"));
  cudaStream_t const stream = policy.stream;
  router_jitter_dev const jit = detail::cuda_jitter(p, a.jitter);

  // dgrad: M = T, N = H, depth E; B(k, n) = W_g[n, k].
  router_gemm_tile_kernel<A, wide, /*AKMajor=*/true, /*BNMajor=*/false>
      <<<dim3(static_cast<unsigned>(dm), static_cast<unsigned>(dn), 1), wide::threads, 0, stream>>>(
          T, H, E, E, router_dlogits_operand<A>{a.d_logits, E},
          router_w_operand<A, weight_t<C>, true>{a.w_gate, E},
          router_dx_epilogue<A, act_t<C>>{a.dx, H, jit});
  MOE_TRY(check_launch(stream, "router_gemm_tile_kernel (dgrad)"));

  // wgrad: M = H, N = E, depth T; A(m, k) = x̃[k, m].
  dim3 const wgrid(static_cast<unsigned>(wm), static_cast<unsigned>(wn),
                   static_cast<unsigned>(split.chunks));
  router_x_operand<A, act_t<C>, true> const xt{a.x, H, jit};
  router_dlogits_operand<A> const dl{a.d_logits, E};
  if (split.chunks == 1) {
    router_gemm_tile_kernel<A, narrow, /*AKMajor=*/false, /*BNMajor=*/true>
        <<<wgrid, narrow::threads, 0, stream>>>(H, E, T, T, xt, dl,
                                                router_accumulate_epilogue<A>{a.d_w_gate, E});
    return check_launch(stream, "router_gemm_tile_kernel (wgrad)");
  }
  A* const partial = static_cast<A*>(policy.workspace);
  router_gemm_tile_kernel<A, narrow, /*AKMajor=*/false, /*BNMajor=*/true>
      <<<wgrid, narrow::threads, 0, stream>>>(H, E, T, split.chunk, xt, dl,
                                              router_store_epilogue<A>{partial, E, H * E});
  MOE_TRY(check_launch(stream, "router_gemm_tile_kernel (wgrad, chunks)"));
  constexpr unsigned block = 256;
  router_gemm_reduce_kernel<A, /*Accumulate=*/true>
      <<<grid_for(H * E, block), block, 0, stream>>>(partial, H * E, split.chunks, a.d_w_gate);
  return check_launch(stream, "router_gemm_reduce_kernel");
}

}  // namespace moe
