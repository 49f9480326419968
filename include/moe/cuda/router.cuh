// SPDX-License-Identifier: Apache-2.0
// CUDA overload of route (see moe/router.hpp): the same argument checks as the host backend,
// then, all on the policy's stream and without synchronising:
//   1. counts, count1, the dropped counter ← 0, bad_logit ← -1 (cudaMemsetAsync);
//   2. route_select_kernel: a warp per token — non-finite logits reported to bad_logit, scores,
//      bias, groups, noise, top-K, gates and native weights with the host's MOE_HOST_DEVICE
//      arithmetic; counts by integer atomics;
//   3. route_capacity_kernel: C (the largest count when dropless), bucket starts, kept, stats;
//   4. route_sort_keys_kernel + CUB DeviceRadixSort (stable) by (expert, drop priority);
//   5. route_mark_kernel: rank < C survives (DeepSpeed top-2: slot = rank); else a second
//      stable sort by (expert, dropped) and route_number_kernel number survivors in token order;
//   6. route_weights_kernel: weights after the drops, dropped routes counted;
//   7. route_loss_partial_kernel, route_seq_loss_kernel (options.seq_len > 0) and
//      route_loss_final_kernel: aux, z and sequence-level losses, in fixed orders.
// Integer outputs and weights/scores are meant to equal the host backend's bit for bit; the
// losses are double sums in another (fixed) order, equal to the host's within rounding.
// Non-finite logits cannot come back as a status without synchronising: bad_logit (when not
// null) is set to -1 (all ones) by cudaMemsetAsync and route_select_kernel lowers it with an
// unsigned atomicMin to the lowest flat index t·E + e of a non-finite logit, as the host
// backend writes it. Not implemented: the scan of the noise tensors and expert_bias. With
// non-finite inputs the outputs are unspecified, but every chosen expert is a valid index, so
// nothing is written out of bounds.
//
// route_backward (CUDA): route_backward_count_kernel (aux-loss counts per expert, integer
// histograms), route_backward_seq_count_kernel (per-sequence counts, seq_len > 0), then
// route_backward_kernel, a warp per token in double — the host's function, within rounding.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t, std::uint64_t

#include <cub/device/device_radix_sort.cuh>  // cub::DeviceRadixSort

#include "moe/cuda/kernels/router.cuh"  // the kernels
#include "moe/cuda/runtime.cuh"         // check_launch, grid_for, MOE_CUDA_TRY
#include "moe/router.hpp"               // route_args, router_options, detail::routing

namespace moe {

namespace detail::routing {

inline constexpr std::size_t cuda_ws_align = 256;

constexpr std::size_t cuda_align_up(std::size_t n) noexcept {
  return (n + cuda_ws_align - 1) / cuda_ws_align * cuda_ws_align;
}

constexpr int cuda_bits_for(std::int64_t n) noexcept {  // bits to hold values in [0, n)
  int b = 1;
  while ((std::int64_t{1} << b) < n) ++b;
  return b;
}

/// The workspace of a CUDA route call, carved in this order.
struct cuda_route_layout {
  std::size_t gate = 0, scores = 0, lse = 0, rowsum = 0, count1 = 0, keys = 0, keys_out = 0,
              vals = 0, vals_out = 0, keys2 = 0, keys2_out = 0, first = 0, cap = 0, dropped = 0,
              partial = 0, zpart = 0, seqval = 0, temp = 0, temp_bytes = 0, total = 0;
};

template <config C>
status cuda_route_layout_of(std::int64_t T, cuda_route_layout& L) noexcept {
  constexpr std::int32_t E = C.experts;
  constexpr std::int32_t K = C.top_k;
  auto const R = static_cast<std::size_t>(T * K);
  auto const Tz = static_cast<std::size_t>(T);
  std::size_t const chunks =
      static_cast<std::size_t>((T + backend::cuda::route_chunk_tokens - 1) /
                               backend::cuda::route_chunk_tokens);
  std::size_t at = 0;
  auto take = [&at](std::size_t bytes) {
    std::size_t const here = at;
    at += cuda_align_up(bytes > 0 ? bytes : 1);
    return here;
  };
  L.gate = take(R * sizeof(float));
  L.scores = take(Tz * E * sizeof(float));
  L.lse = take(Tz * sizeof(double));
  L.rowsum = take(Tz * sizeof(double));
  L.count1 = take(E * sizeof(std::int32_t));
  L.keys = take(R * sizeof(std::uint64_t));
  L.keys_out = take(R * sizeof(std::uint64_t));
  L.vals = take(R * sizeof(std::int32_t));
  L.vals_out = take(R * sizeof(std::int32_t));
  L.keys2 = take(R * sizeof(std::uint32_t));
  L.keys2_out = take(R * sizeof(std::uint32_t));
  L.first = take((E + 1) * sizeof(std::int32_t));
  L.cap = take(sizeof(std::int64_t));
  L.dropped = take(sizeof(unsigned long long));
  L.partial = take(chunks * E * sizeof(double));
  L.zpart = take(chunks * sizeof(double));
  L.seqval = take(Tz * sizeof(double));  // one per sequence: at most T
  std::size_t s1 = 0, s2 = 0;
  int const n = static_cast<int>(R);
  // The first sort walks prio_bits + log2 E bits (route_prio_bits: 0 to 32 by drop policy);
  // the temporary storage is queried for every width it may take, and the largest kept.
  int const widths[] = {
      0, backend::cuda::route_prio_bits(backend::cuda::route_prio::k_then_t, C.top_k), 32};
  for (int const pb : widths) {
    std::size_t s = 0;
    MOE_TRY(backend::cuda::from_cuda(
        cub::DeviceRadixSort::SortPairs(nullptr, s, static_cast<std::uint64_t const*>(nullptr),
                                        static_cast<std::uint64_t*>(nullptr),
                                        static_cast<std::int32_t const*>(nullptr),
                                        static_cast<std::int32_t*>(nullptr), n, 0,
                                        pb + cuda_bits_for(E)),
        "route: CUB DeviceRadixSort workspace query"));
    s1 = s > s1 ? s : s1;
  }
  MOE_TRY(backend::cuda::from_cuda(
      cub::DeviceRadixSort::SortPairs(nullptr, s2, static_cast<std::uint32_t const*>(nullptr),
                                      static_cast<std::uint32_t*>(nullptr),
                                      static_cast<std::int32_t const*>(nullptr),
                                      static_cast<std::int32_t*>(nullptr), n, 0,
                                      1 + cuda_bits_for(E)),
      "route: CUB DeviceRadixSort workspace query"));
  L.temp_bytes = s1 > s2 ? s1 : s2;
  L.temp = take(L.temp_bytes);
  L.total = at;
  return {};
}

/// What the CUDA route cannot do yet, as a status (ok when it can).
template <config C>
status cuda_route_can_implement(problem const& p, router_options const& o) noexcept {
  if (o.seq_len > 0 && p.tokens / o.seq_len > 2147483647)
    return status::error(errc::unsupported_config,
                         "route(cuda): more than 2^31 - 1 sequences (seq_len = %lld)",
                         static_cast<long long>(o.seq_len));
  if (p.tokens > std::int64_t{256} * 65535)
    return status::error(errc::unsupported_config,
                         "route(cuda): T = %lld exceeds 256 * 65535 (grid of the loss kernel)",
                         static_cast<long long>(p.tokens));
  if (p.tokens * static_cast<std::int64_t>(C.top_k) > INT32_MAX)
    return status::error(errc::unsupported_config,
                         "route(cuda): T * K = %lld routes exceeds 2^31 - 1",
                         static_cast<long long>(p.tokens * C.top_k));
  return {};
}

}  // namespace detail::routing

/// Bytes of device workspace route(cuda_on(stream, ws, bytes), ...) needs for p.tokens tokens;
/// 0 when T is invalid or CUB cannot be queried (route then reports why).
template <config C>
std::size_t route_workspace_bytes(problem const& p) noexcept {
  if (p.tokens < 0 || p.tokens * static_cast<std::int64_t>(C.top_k) > INT32_MAX) return 0;
  detail::routing::cuda_route_layout L;
  if (!detail::routing::cuda_route_layout_of<C>(p.tokens, L).ok()) return 0;
  return L.total;
}

/// Routes T tokens on the device, enqueued on policy.stream, without synchronising. All
/// pointers of `a` and `opt` are device memory (stats included). Workspace: route_workspace_bytes.
template <config C>
[[nodiscard]] status route(cuda_policy policy, problem const& p, router_options const& opt,
                           route_args const& a) noexcept {
  static_assert(check<C>());
  using namespace backend::cuda;
  constexpr std::int32_t E = C.experts;
  constexpr std::int32_t K = C.top_k;
  constexpr bool ds = C.compat == router_compat::deepspeed;
  MOE_TRY(detail::routing::check<C>(p, opt, a));
  MOE_TRY(detail::routing::cuda_route_can_implement<C>(p, opt));
  detail::routing::cuda_route_layout L;
  MOE_TRY(detail::routing::cuda_route_layout_of<C>(p.tokens, L));
  MOE_TRY(backend::cuda::check_workspace(policy, L.total, detail::routing::cuda_ws_align, "route",
                                         "route_workspace_bytes"));
  cudaStream_t const stream = policy.stream;
  char* const ws = static_cast<char*>(policy.workspace);
  auto* const gate = reinterpret_cast<float*>(ws + L.gate);
  auto* const scores = a.scores != nullptr ? a.scores : reinterpret_cast<float*>(ws + L.scores);
  auto* const lse = reinterpret_cast<double*>(ws + L.lse);
  auto* const rowsum = reinterpret_cast<double*>(ws + L.rowsum);
  auto* const count1 = reinterpret_cast<std::int32_t*>(ws + L.count1);
  auto* const keys = reinterpret_cast<std::uint64_t*>(ws + L.keys);
  auto* const keys_out = reinterpret_cast<std::uint64_t*>(ws + L.keys_out);
  auto* const vals = reinterpret_cast<std::int32_t*>(ws + L.vals);
  auto* const vals_out = reinterpret_cast<std::int32_t*>(ws + L.vals_out);
  auto* const keys2 = reinterpret_cast<std::uint32_t*>(ws + L.keys2);
  auto* const keys2_out = reinterpret_cast<std::uint32_t*>(ws + L.keys2_out);
  auto* const first = reinterpret_cast<std::int32_t*>(ws + L.first);
  auto* const cap = reinterpret_cast<std::int64_t*>(ws + L.cap);
  auto* const dropped = reinterpret_cast<unsigned long long*>(ws + L.dropped);
  auto* const partial = reinterpret_cast<double*>(ws + L.partial);
  auto* const zpart = reinterpret_cast<double*>(ws + L.zpart);
  auto* const seqval = reinterpret_cast<double*>(ws + L.seqval);
  void* const temp = ws + L.temp;

  std::int64_t const T = p.tokens;
  std::int64_t const R = T * K;
  bool const dropless = is_dropless<C>(p);
  std::int64_t const static_cap =
      dropless ? 0
      : ds ? detail::routing::deepspeed_capacity(T, E, active_capacity_factor<C>(p), K,
                                                 p.min_capacity)
           : capacity<C>(p);
  // Noise in force (the host's route_noise_of).
  bool const top1 = p.training && opt.gumbel_top1;
  bool const second = ds ? opt.sample_second : p.training && opt.sample_second;
  bool const rts = C.drop == drop_policy::random_token && (ds || p.training);

  MOE_CUDA_TRY(cudaMemsetAsync(a.counts, 0, E * sizeof(std::int32_t), stream));
  MOE_CUDA_TRY(cudaMemsetAsync(count1, 0, E * sizeof(std::int32_t), stream));
  MOE_CUDA_TRY(cudaMemsetAsync(dropped, 0, sizeof(unsigned long long), stream));
  if (a.bad_logit != nullptr)  // -1 as int64: no non-finite logit (yet)
    MOE_CUDA_TRY(cudaMemsetAsync(a.bad_logit, 0xff, sizeof(std::int64_t), stream));
  if (T > 0) {
    route_select_params sp;
    sp.logits = a.logits;
    sp.tokens = T;
    sp.bias = opt.expert_bias;
    sp.gumbel = opt.gumbel;
    sp.seed = p.seed;
    sp.offset = opt.noise_offset;
    sp.top1 = top1;
    sp.second = second;
    sp.weight_scale = opt.weight_scale;
    sp.expert = a.expert;
    sp.weight = a.weight;
    sp.gate = gate;
    sp.scores = scores;
    sp.lse = lse;
    sp.rowsum = rowsum;
    sp.counts = a.counts;
    sp.count1 = count1;
    sp.bad_logit = reinterpret_cast<unsigned long long*>(a.bad_logit);
    constexpr int warps = route_select_warps<E>;
    unsigned const grid = grid_for((T + warps - 1) / warps, 1);
    route_select_kernel<E, K, C.expert_groups, C.topk_groups, route_flags_of<C>><<<grid, 32 * warps, 0, stream>>>(sp);
    MOE_TRY(check_launch(stream, "route_select_kernel"));
  }
  route_capacity_kernel<><<<1, 1, 0, stream>>>(a.counts, E, T, K, dropless, static_cap, first, cap,
                                             a.kept, a.stats);
  MOE_TRY(check_launch(stream, "route_capacity_kernel"));
  if (T == 0) return {};

  // Drops and slots.
  route_prio prio = route_prio::k_then_t;
  if (C.drop == drop_policy::probability) prio = route_prio::gate;
  if (rts) prio = route_prio::rts;
  if (ds && K != 2 && C.drop == drop_policy::position) prio = route_prio::t;
  // Slots are ranks in the first sort's order for DeepSpeed top-2 ((k, t) order, its rule), and
  // wherever that order is token order inside each expert (priority t; or dropless, where the
  // priority decides nothing and t is chosen): survivors are then a prefix of their expert's
  // routes in token order, so the second sort, by (expert, dropped), would give the same order.
  bool rank_slots = ds && K == 2;
  if (!rank_slots && dropless) prio = route_prio::t;
  if (prio == route_prio::t) rank_slots = true;
  constexpr unsigned block = 256;
  unsigned const rgrid = grid_for(R, block);
  std::uint64_t const rts_offset =
      opt.noise_offset + static_cast<std::uint64_t>(T) * static_cast<std::uint64_t>(E);
  int const prio_bits = route_prio_bits(prio, K);
  route_sort_keys_kernel<><<<rgrid, block, 0, stream>>>(a.expert, gate, opt.rts_priority, p.seed,
                                                      rts_offset, R, K, E, prio, prio_bits, keys,
                                                      vals);
  MOE_TRY(check_launch(stream, "route_sort_keys_kernel"));
  std::size_t temp_bytes = L.temp_bytes;
  int const n = static_cast<int>(R);
  MOE_CUDA_TRY(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, keys_out, vals, vals_out, n,
                                               0, prio_bits + detail::routing::cuda_bits_for(E),
                                               stream));
  route_mark_kernel<><<<rgrid, block, 0, stream>>>(keys_out, vals_out, a.counts, first, cap, R,
                                                 prio_bits, dropless, rank_slots, a.slot, keys2);
  MOE_TRY(check_launch(stream, "route_mark_kernel"));
  if (!rank_slots) {  // vals still holds 0, 1, ..., R-1: keys2 is in route order
    temp_bytes = L.temp_bytes;
    MOE_CUDA_TRY(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys2, keys2_out, vals,
                                                 vals_out, n, 0,
                                                 1 + detail::routing::cuda_bits_for(E), stream));
    route_number_kernel<><<<rgrid, block, 0, stream>>>(keys2_out, vals_out, first, R, a.slot);
    MOE_TRY(check_launch(stream, "route_number_kernel"));
  }
  route_weights_kernel<><<<grid_for(T, block), block, 0, stream>>>(a.slot, gate, T, K, ds,
                                                                  opt.weight_scale, a.weight,
                                                                  dropped);
  MOE_TRY(check_launch(stream, "route_weights_kernel"));

  // Losses.
  std::int64_t const chunks = (T + route_chunk_tokens - 1) / route_chunk_tokens;
  constexpr unsigned eblock = 128;
  dim3 const lgrid((E + eblock - 1) / eblock, static_cast<unsigned>(chunks));
  bool const sigmoid_norm = !ds && C.score == score_function::sigmoid;
  route_loss_partial_kernel<><<<lgrid, eblock, 0, stream>>>(scores, rowsum, lse, T, E, sigmoid_norm,
                                                          partial, zpart);
  MOE_TRY(check_launch(stream, "route_loss_partial_kernel"));
  std::int64_t const sequences = opt.seq_len > 0 ? T / opt.seq_len : 0;
  if (sequences > 0) {
    route_seq_loss_kernel<><<<static_cast<unsigned>(sequences), 256, 0, stream>>>(
        scores, rowsum, a.expert, opt.seq_len, E, K, sigmoid_norm, seqval);
    MOE_TRY(check_launch(stream, "route_seq_loss_kernel"));
  }
  route_loss_final_kernel<><<<1, 1024, 0, stream>>>(partial, zpart, a.counts, count1, dropped,
                                                    chunks, T, E, K, ds && K == 2, seqval,
                                                    sequences, a.stats);
  return check_launch(stream, "route_loss_final_kernel");
}

namespace detail::routing {

/// The workspace of a CUDA route_backward call: the aux-loss counts [E], then the counts of
/// every sequence [T / L, E] when options.seq_len > 0 (int32 each, 256-byte aligned).
struct cuda_route_backward_layout {
  std::size_t counts = 0, seq_counts = 0, total = 0;
  std::int64_t sequences = 0;
};

template <config C>
cuda_route_backward_layout cuda_route_backward_layout_of(problem const& p,
                                                         router_options const& o) noexcept {
  cuda_route_backward_layout L;
  if (p.tokens <= 0) return L;  // nothing to do, nothing needed
  L.sequences = o.seq_len > 0 ? p.tokens / o.seq_len : 0;
  L.counts = 0;
  L.seq_counts = cuda_align_up(C.experts * sizeof(std::int32_t));
  L.total = L.seq_counts + cuda_align_up(static_cast<std::size_t>(L.sequences) *
                                         static_cast<std::size_t>(C.experts) *
                                         sizeof(std::int32_t));
  return L;
}

}  // namespace detail::routing

/// Bytes of device workspace route_backward(cuda_on(stream, ws, bytes), ...) needs: E counts,
/// plus (T / seq_len)·E counts when opt.seq_len > 0; 0 for T = 0 (or invalid sizes).
template <config C>
std::size_t route_backward_workspace_bytes(problem const& p,
                                           router_options const& opt = {}) noexcept {
  if (p.tokens <= 0 || opt.seq_len < 0 || (opt.seq_len > 0 && p.tokens % opt.seq_len != 0))
    return 0;
  return detail::routing::cuda_route_backward_layout_of<C>(p, opt).total;
}

/// d_logits [T, E] of route on the device (see route_backward_args for the loss), enqueued on
/// policy.stream without synchronising; all pointers are device memory. The same function as
/// the host backend's, computed in double: scores recomputed from the logits, decisions (the
/// forward's experts and slots) held fixed. Workspace: route_backward_workspace_bytes(p, opt).
/// Unlike the host, the inputs are not scanned (that would need a synchronisation): with a
/// non-finite logit or d_weight, an expert outside [0, E) or a slot below -1 the output is
/// unspecified, but nothing is read or written out of bounds.
/// @param p      the forward's problem (T, aux_loss_coef, z_loss_coef)
/// @param opt    the forward's options (weight_scale, seq_len, seq_aux_loss_coef are read)
/// @param a      logits [T, E], expert, slot, d_weight [T, K] in; d_logits [T, E] out
template <config C>
[[nodiscard]] status route_backward(cuda_policy policy, problem const& p, router_options const& opt,
                                    route_backward_args const& a) noexcept {
  static_assert(check<C>());
  using namespace backend::cuda;
  constexpr std::int32_t E = C.experts;
  constexpr std::int32_t K = C.top_k;
  constexpr bool ds = C.compat == router_compat::deepspeed;
  MOE_TRY(detail::routing::check<C>(p, opt, a));
  std::int64_t const T = p.tokens;
  if (T * static_cast<std::int64_t>(K) > INT32_MAX)  // the counts are int32
    return status::error(errc::unsupported_config,
                         "route_backward(cuda): T * K = %lld routes exceeds 2^31 - 1",
                         static_cast<long long>(T * K));
  if (T == 0) return {};
  detail::routing::cuda_route_backward_layout const L =
      detail::routing::cuda_route_backward_layout_of<C>(p, opt);
  MOE_TRY(backend::cuda::check_workspace(policy, L.total, detail::routing::cuda_ws_align,
                                         "route_backward", "route_backward_workspace_bytes"));
  cudaStream_t const stream = policy.stream;
  char* const ws = static_cast<char*>(policy.workspace);
  auto* const counts = reinterpret_cast<std::int32_t*>(ws + L.counts);
  auto* const seq_counts = reinterpret_cast<std::int32_t*>(ws + L.seq_counts);

  constexpr unsigned block = 256;
  std::int64_t const R = T * K;
  MOE_CUDA_TRY(cudaMemsetAsync(counts, 0, E * sizeof(std::int32_t), stream));
  route_backward_count_kernel<><<<grid_for(R, block * 8), block, 0, stream>>>(
      a.expert, R, K, E, ds && K == 2, counts);
  MOE_TRY(check_launch(stream, "route_backward_count_kernel"));
  if (L.sequences > 0) {
    unsigned const grid =
        static_cast<unsigned>(L.sequences < 65535 * 8 ? L.sequences : 65535 * 8);
    route_backward_seq_count_kernel<><<<grid, block, 0, stream>>>(a.expert, L.sequences,
                                                                  opt.seq_len, K, E, seq_counts);
    MOE_TRY(check_launch(stream, "route_backward_seq_count_kernel"));
  }
  route_backward_params bp;
  bp.logits = a.logits;
  bp.expert = a.expert;
  bp.slot = a.slot;
  bp.d_weight = a.d_weight;
  bp.d_logits = a.d_logits;
  bp.counts = counts;
  bp.seq_counts = L.sequences > 0 ? seq_counts : nullptr;
  bp.tokens = T;
  bp.seq_len = opt.seq_len;
  bp.aux_coef = p.aux_loss_coef;
  bp.z_coef = p.z_loss_coef;
  bp.seq_coef = opt.seq_aux_loss_coef;
  bp.weight_scale = opt.weight_scale;
  constexpr int warps = route_backward_warps<E>;
  route_backward_kernel<E, K, route_flags_of<C>>
      <<<grid_for((T + warps - 1) / warps, 1), 32 * warps, 0, stream>>>(bp);
  return check_launch(stream, "route_backward_kernel");
}

}  // namespace moe
