// SPDX-License-Identifier: Apache-2.0
// Kernels of route (moe/cuda/router.cuh). The per-token work (route_select_kernel) runs one
// warp per token: lane j holds the logits and scores of experts j, j+32, ... in registers
// (E/32 each; E is a template constant), the warp's reductions reproduce the host's orders
// (softmax sum: detail::routing::lane_order_sum, whose fold is the xor butterfly; argmax:
// the lowest index among equal maxima, which is what the host's strict `>` scan keeps), and
// the per-token K-sized arithmetic is done by lane 0 with the very MOE_HOST_DEVICE functions
// the host calls (group_top2_score, native_gates, native_weights, weights_after_drops) on
// shared-memory rows. Nothing goes to local memory: rows are in registers or shared memory.
//
// The drops are a stable CUB radix sort of the routes by (expert, priority) with the route
// index as value (stable, so equal priorities keep token order, as the host's tie rule), a
// rank test against C, and — for the policies that number survivors in token order — a second
// stable sort by (expert, dropped). Counts use integer atomics (order-free, so deterministic);
// the loss sums are fixed-order reductions in double (per-chunk partials, then chunk order).
//
// route_backward (at the end of this file) is a warp per token too, in double, with the
// per-expert counts of the aux and sequence-level losses counted first by integer histograms.
#pragma once

#include <cfloat>   // FLT_MIN
#include <cstdint>  // std::int32_t, std::int64_t, std::uint32_t, std::uint64_t

#include "moe/config.hpp"
#include "moe/detail/float_math.hpp"
#include "moe/philox.hpp"  // moe::gumbel, moe::uniform
#include "moe/router.hpp"  // detail::routing (and the host helpers it includes)

namespace moe::backend::cuda {

/// Everything route_select_kernel reads and writes (device pointers).
struct route_select_params {
  float const* logits = nullptr;  // [T, E]
  std::int64_t tokens = 0;
  float const* bias = nullptr;    // [E] or null
  float const* gumbel = nullptr;  // [T, E] or null = Philox
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;
  bool top1 = false;  // choice 0 sampled
  bool second = false;  // choice 1 sampled
  float weight_scale = 1.0f;
  std::int32_t* expert = nullptr;  // [T, K]
  float* weight = nullptr;         // [T, K] native pre-drop weights (deepspeed: unused here)
  float* gate = nullptr;           // [T, K]
  float* scores = nullptr;         // [T, E]
  double* lse = nullptr;           // [T]
  double* rowsum = nullptr;        // [T] Σ_e s (sigmoid normalisation of the loss probs)
  std::int32_t* counts = nullptr;  // [E] zeroed before
  std::int32_t* count1 = nullptr;  // [E] zeroed before
  unsigned long long* bad_logit = nullptr;  // [1] or null: set to all ones (-1) before; lowered
                                            // by atomicMin to the first non-finite t·E + e
};

/// Lowers *bad to the flat index t·E + e of the first non-finite logit among the warp's row
/// x (lane j holds experts j, j+32, ...), if any. *bad starts as all ones: -1 as int64 and the
/// largest value as unsigned, so an unsigned atomicMin keeps the lowest index (plan's encoding).
template <int NJ, int E>
__device__ __forceinline__ void route_report_nonfinite(unsigned long long* bad, int lane,
                                                       std::int64_t t, float const* x) {
  bool any = false;
#pragma unroll
  for (int j = 0; j < NJ; ++j)
    any |= lane + 32 * j < E && (__float_as_uint(x[j]) & 0x7f800000u) == 0x7f800000u;
  if (bad == nullptr || !__any_sync(0xffffffffu, any)) return;  // bad is warp-uniform
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    bool const nf = lane + 32 * j < E && (__float_as_uint(x[j]) & 0x7f800000u) == 0x7f800000u;
    unsigned const mask = __ballot_sync(0xffffffffu, nf);
    if (mask != 0u) {  // the lowest j with a bad lane, then its lowest lane: the lowest e
      if (lane == 0)
        atomicMin(bad, static_cast<unsigned long long>(t * E + 32 * j + (__ffs(mask) - 1)));
      return;
    }
  }
}

/// Block size of route_select_kernel: fewer warps for large E (shared rows are per warp).
template <int E>
inline constexpr int route_select_warps = E > 256 ? 2 : 4;

/// Flags of route_select_kernel (the config's routing fields, as integers: nvcc's host stubs
/// cannot name a kernel templated on a class-type `config` value).
enum : unsigned {
  route_ds = 1u,         // deepspeed compat
  route_softmax = 2u,    // softmax scores (else sigmoid)
  route_topk_then = 4u,  // topk_then_score
  route_renorm = 8u,     // renormalize
};

template <config C>
inline constexpr unsigned route_flags_of =
    (C.compat == router_compat::deepspeed ? route_ds : 0u) |
    (C.score == score_function::softmax ? route_softmax : 0u) |
    (C.order == topk_order::topk_then_score ? route_topk_then : 0u) |
    (C.norm == normalization::renormalize ? route_renorm : 0u);

// Argmax over the lane's allowed experts then over the warp: the lowest index of the maximum.
// A NaN key counts as -inf: (value descending, index ascending) is then a strict total order,
// so every lane agrees on the winner and exactly one allowed expert is taken per call (with a
// NaN kept as NaN, lanes holding one would never trade it and several could "win" at once,
// returning -1 once the warp ran out — a non-finite logit, bias or noise must still give
// valid indices).
template <int NJ, class Key>
__device__ __forceinline__ std::int32_t route_warp_take(std::uint32_t& allowed, int lane,
                                                        int experts, Key const& key) {
  float best_v = 0.0f;
  std::int32_t best = -1;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    int const e = lane + 32 * j;
    if (e < experts && ((allowed >> j) & 1u) != 0u) {
      float v = key(e);
      if (v != v) v = -__int_as_float(0x7f800000);
      if (best < 0 || v > best_v) {
        best = e;
        best_v = v;
      }
    }
  }
#pragma unroll
  for (int m = 16; m >= 1; m /= 2) {
    float const ov = __shfl_xor_sync(0xffffffffu, best_v, m);
    std::int32_t const oi = __shfl_xor_sync(0xffffffffu, best, m);
    bool const take = oi >= 0 && (best < 0 || ov > best_v || (ov == best_v && oi < best));
    if (take) {
      best = oi;
      best_v = ov;
    }
  }
  if (best >= 0 && (best & 31) == lane) allowed &= ~(1u << (best >> 5));
  return best;
}

template <int E, int K, int G, int M, unsigned F>
__global__ void __launch_bounds__(32 * route_select_warps<E>)
    route_select_kernel(route_select_params p) {
  using namespace ::moe::detail;
  constexpr int NJ = (E + 31) / 32;
  constexpr int W = route_select_warps<E>;
  constexpr bool ds = (F & route_ds) != 0u;
  constexpr bool softmax = ds || (F & route_softmax) != 0u;
  constexpr bool key_is_score = !ds && (F & route_topk_then) == 0u;
  constexpr bool k_softmax = !ds && (F & route_topk_then) != 0u && (F & route_softmax) != 0u;
  constexpr bool renorm = (F & route_renorm) != 0u;

  __shared__ float sh_s[W][E];    // scores
  __shared__ float sh_key[W][E];  // selection key (native) or logits (deepspeed)
  __shared__ float sh_gs[W][G];
  __shared__ unsigned char sh_kg[W][G];
  __shared__ float sh_lk[W][K], sh_sk[W][K], sh_a[W][K], sh_w[W][K];
  __shared__ std::int32_t sh_e[W][K];

  int const lane = static_cast<int>(threadIdx.x & 31u);
  int const wid = static_cast<int>(threadIdx.x >> 5);
  std::int64_t const warps = static_cast<std::int64_t>(gridDim.x) * W;
  for (std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * W + wid; t < p.tokens;
       t += warps) {
    float const* l = p.logits + t * E;
    float x[NJ];
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      int const e = lane + 32 * j;
      x[j] = e < E ? __ldg(l + e) : 0.0f;
    }
    route_report_nonfinite<NJ, E>(p.bad_logit, lane, t, x);
    // Row max; lanes without experts (E < 32) start at -inf, neutral for finite logits.
    float m = lane < E ? x[0] : -__int_as_float(0x7f800000);
#pragma unroll
    for (int j = 1; j < NJ; ++j)
      if (lane + 32 * j < E) m = x[j] > m ? x[j] : m;
#pragma unroll
    for (int s = 16; s >= 1; s /= 2) {
      float const o = __shfl_xor_sync(0xffffffffu, m, s);
      m = o > m ? o : m;
    }
    // Now every lane holds the row max (only real experts compared).
    float sv[NJ];
    double lse = 0.0;
    double rowsum = 0.0;
    if constexpr (softmax) {
      float part = 0.0f;
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        sv[j] = 0.0f;
        if (lane + 32 * j < E) {
          sv[j] = routing::exp_det(sub_rn(x[j], m));
          part = add_rn(part, sv[j]);
        }
      }
#pragma unroll
      for (int s = 16; s >= 1; s /= 2) part = add_rn(part, __shfl_xor_sync(0xffffffffu, part, s));
#pragma unroll
      for (int j = 0; j < NJ; ++j) sv[j] = div_rn(sv[j], part);
      lse = static_cast<double>(m) + log(static_cast<double>(part));
    } else {
      double ez = 0.0;
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        sv[j] = 0.0f;
        if (lane + 32 * j < E) {
          sv[j] = routing::sigmoid_det(x[j]);
          ez += static_cast<double>(routing::exp_det(sub_rn(x[j], m)));
          rowsum += static_cast<double>(sv[j]);
        }
      }
#pragma unroll
      for (int s = 16; s >= 1; s /= 2) {
        ez += __shfl_xor_sync(0xffffffffu, ez, s);
        rowsum += __shfl_xor_sync(0xffffffffu, rowsum, s);
      }
      lse = static_cast<double>(m) + log(ez);
    }
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      int const e = lane + 32 * j;
      if (e < E) {
        sh_s[wid][e] = sv[j];
        float k0 = ds ? x[j] : (key_is_score ? sv[j] : x[j]);
        if (!ds && p.bias != nullptr) k0 = add_rn(k0, __ldg(p.bias + e));
        sh_key[wid][e] = k0;
        p.scores[t * E + e] = sv[j];
      }
    }
    if (lane == 0) {
      p.lse[t] = lse;
      p.rowsum[t] = rowsum;
    }
    __syncwarp();

    std::uint32_t allowed = 0xffffffffu;
    if constexpr (!ds && G > 1) {  // DeepSeek-V3 group-limited routing
      constexpr int n = E / G;
      for (int g = lane; g < G; g += 32) {
        sh_gs[wid][g] = routing::group_top2_score(&sh_key[wid][g * n], n);
        sh_kg[wid][g] = 0;
      }
      __syncwarp();
      if (lane == 0) {
        for (int mm = 0; mm < M; ++mm) {
          int best = -1;
          for (int g = 0; g < G; ++g)
            if (sh_kg[wid][g] == 0 && (best < 0 || sh_gs[wid][g] > sh_gs[wid][best])) best = g;
          sh_kg[wid][best] = 1;
        }
      }
      __syncwarp();
      allowed = 0u;
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        int const e = lane + 32 * j;
        if (e < E && sh_kg[wid][e / n] != 0) allowed |= 1u << j;
      }
    }

    auto const noisy = [&](int e) {
      std::uint64_t const i = static_cast<std::uint64_t>(t) * static_cast<std::uint64_t>(E) +
                              static_cast<std::uint64_t>(e);
      float const g = p.gumbel != nullptr ? p.gumbel[i] : ::moe::gumbel(p.seed, p.offset + i);
      return add_rn(__ldg(l + e), g);
    };
    auto const by_score = [&](int e) { return sh_s[wid][e]; };
    auto const by_key = [&](int e) { return sh_key[wid][e]; };
    for (int k = 0; k < K; ++k) {
      std::int32_t e = -1;
      if constexpr (ds) {
        if (K == 1)
          e = p.top1 ? route_warp_take<NJ>(allowed, lane, E, noisy)
                     : route_warp_take<NJ>(allowed, lane, E, by_score);
        else if (K == 2 && k == 1)
          e = p.second ? route_warp_take<NJ>(allowed, lane, E, noisy)
                       : route_warp_take<NJ>(allowed, lane, E, by_key);  // logits
        else
          e = route_warp_take<NJ>(allowed, lane, E, by_score);
      } else {
        bool const sampled = (k == 0 && p.top1) || (k == 1 && p.second);
        e = sampled ? route_warp_take<NJ>(allowed, lane, E, noisy)
                    : route_warp_take<NJ>(allowed, lane, E, by_key);
      }
      if (lane == 0) sh_e[wid][k] = e;
    }
    __syncwarp();
    if (lane == 0) {
      for (int k = 0; k < K; ++k) {
        sh_lk[wid][k] = l[sh_e[wid][k]];
        sh_sk[wid][k] = sh_s[wid][sh_e[wid][k]];
      }
      if constexpr (ds) {
        for (int k = 0; k < K; ++k) sh_a[wid][k] = sh_sk[wid][k];
      } else {
        routing::native_gates(k_softmax, sh_lk[wid], sh_sk[wid], K, sh_a[wid]);
        routing::native_weights(renorm, sh_a[wid], K,
                                p.weight_scale, sh_w[wid]);
      }
    }
    __syncwarp();
    for (int k = lane; k < K; k += 32) {
      std::int32_t const e = sh_e[wid][k];
      p.expert[t * K + k] = e;
      p.gate[t * K + k] = sh_a[wid][k];
      if constexpr (!ds) p.weight[t * K + k] = sh_w[wid][k];
      atomicAdd(p.counts + e, 1);
      if (k == 0) atomicAdd(p.count1 + e, 1);
    }
    __syncwarp();
  }
}

/// Drop priority of a route inside its expert (lower sorts first; stable sort keeps t order).
enum class route_prio : std::uint8_t { k_then_t, t, gate, rts };

/// Bits the priority takes in a sort key (the expert sits above them): none for token order,
/// enough for k < top_k for (k, t) order, a whole float for the gate or the RTS draw. The
/// radix sort then walks only those bits and the expert's: one 8-bit pass instead of five for
/// position drops with E <= 32, K <= 8.
__host__ __device__ constexpr int route_prio_bits(route_prio prio, std::int32_t top_k) {
  if (prio == route_prio::t) return 0;
  if (prio == route_prio::k_then_t) {
    int b = 0;
    while ((std::int64_t{1} << b) < top_k) ++b;
    return b;
  }
  return 32;
}

/// Orderable bits of a float, descending: larger floats give smaller keys; -0 counts as +0.
__device__ __forceinline__ std::uint32_t route_desc_bits(float f) {
  std::uint32_t const b = __float_as_uint(__fadd_rn(f, 0.0f));
  std::uint32_t const up = (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
  return ~up;
}

/// keys[r] = (expert << prio_bits) | priority, vals[r] = r: the first sort's pairs.
template <int = 0>
__global__ void route_sort_keys_kernel(std::int32_t const* __restrict__ expert,
                                       float const* __restrict__ gate,
                                       float const* __restrict__ rts_in, std::uint64_t seed,
                                       std::uint64_t rts_offset, std::int64_t routes,
                                       std::int32_t top_k, std::int32_t experts, route_prio prio,
                                       int prio_bits, std::uint64_t* __restrict__ keys,
                                       std::int32_t* __restrict__ vals) {
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       r < routes; r += stride) {
    std::int32_t const e = expert[r];
    std::uint32_t pr = 0;
    switch (prio) {
      case route_prio::k_then_t: pr = static_cast<std::uint32_t>(r % top_k); break;
      case route_prio::t: pr = 0; break;
      case route_prio::gate: pr = route_desc_bits(gate[r]); break;
      case route_prio::rts: {
        std::uint64_t const i = static_cast<std::uint64_t>(r / top_k) *
                                    static_cast<std::uint64_t>(experts) +
                                static_cast<std::uint64_t>(e);
        float const u = rts_in != nullptr ? rts_in[i] : ::moe::uniform(seed, rts_offset + i);
        pr = route_desc_bits(u);
        break;
      }
    }
    keys[r] = (static_cast<std::uint64_t>(static_cast<std::uint32_t>(e)) << prio_bits) | pr;
    vals[r] = static_cast<std::int32_t>(r);
  }
}

/// One thread: max load, C (dropless: the max load), bucket starts, kept counts, first stats.
template <int = 0>
__global__ void route_capacity_kernel(std::int32_t const* __restrict__ counts,
                                      std::int32_t experts, std::int64_t tokens,
                                      std::int32_t top_k, bool dropless,
                                      std::int64_t static_capacity,
                                      std::int32_t* __restrict__ first,
                                      std::int64_t* __restrict__ cap_out,
                                      std::int32_t* __restrict__ kept, route_stats* stats) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  route_stats st{};
  if (tokens == 0) {
    for (std::int32_t e = 0; e < experts; ++e) kept[e] = 0;
    *cap_out = 0;
    *stats = st;
    return;
  }
  std::int32_t max_load = 0;
  for (std::int32_t e = 0; e < experts; ++e) max_load = counts[e] > max_load ? counts[e] : max_load;
  std::int64_t const cap = dropless ? static_cast<std::int64_t>(max_load) : static_capacity;
  std::int32_t acc = 0;
  for (std::int32_t e = 0; e < experts; ++e) {
    first[e] = acc;
    acc += counts[e];
    kept[e] = dropless || counts[e] <= cap ? counts[e] : static_cast<std::int32_t>(cap);
  }
  first[experts] = acc;
  *cap_out = cap;
  std::int64_t const R = tokens * top_k;
  st.capacity = cap;
  st.routes = R;
  st.max_load = max_load;
  st.mean_load = static_cast<float>(static_cast<double>(R) / static_cast<double>(experts));
  *stats = st;
}

/// Over the routes sorted by (expert, priority): rank < C survives. rank_slots: slot = rank;
/// else keys2[r] = (expert, dropped) for the second sort that numbers survivors by token.
template <int = 0>
__global__ void route_mark_kernel(std::uint64_t const* __restrict__ keys,
                                  std::int32_t const* __restrict__ vals,
                                  std::int32_t const* __restrict__ counts,
                                  std::int32_t const* __restrict__ first,
                                  std::int64_t const* __restrict__ cap_in, std::int64_t routes,
                                  int prio_bits, bool dropless, bool rank_slots,
                                  std::int32_t* __restrict__ slot,
                                  std::uint32_t* __restrict__ keys2) {
  std::int64_t const cap = *cap_in;
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < routes; i += stride) {
    std::int32_t const r = vals[i];
    auto const e = static_cast<std::int32_t>(keys[i] >> prio_bits);
    std::int64_t const rank = i - first[e];
    bool const kept = dropless || counts[e] <= cap || rank < cap;
    if (rank_slots) {
      slot[r] = kept ? static_cast<std::int32_t>(rank) : -1;
    } else {
      keys2[r] = (static_cast<std::uint32_t>(e) << 1) | (kept ? 0u : 1u);
    }
  }
}

/// Over the routes sorted by (expert, dropped), token order inside: survivors' slots.
template <int = 0>
__global__ void route_number_kernel(std::uint32_t const* __restrict__ keys2,
                                    std::int32_t const* __restrict__ vals,
                                    std::int32_t const* __restrict__ first, std::int64_t routes,
                                    std::int32_t* __restrict__ slot) {
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < routes; i += stride) {
    std::uint32_t const k = keys2[i];
    auto const e = static_cast<std::int32_t>(k >> 1);
    slot[vals[i]] = (k & 1u) != 0u ? -1 : static_cast<std::int32_t>(i - first[e]);
  }
}

/// Per token: weights after the drops (the host's function), and the dropped routes counted.
template <int = 0>
__global__ void route_weights_kernel(std::int32_t const* __restrict__ slot,
                                     float const* __restrict__ gate, std::int64_t tokens,
                                     std::int32_t top_k, bool deepspeed, float weight_scale,
                                     float* __restrict__ weight,
                                     unsigned long long* __restrict__ dropped) {
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < tokens; t += stride) {
    std::int32_t const d = ::moe::detail::routing::weights_after_drops(
        deepspeed, slot + t * top_k, gate + t * top_k, top_k, weight_scale, weight + t * top_k);
    if (d > 0) atomicAdd(dropped, static_cast<unsigned long long>(d));
  }
}

inline constexpr std::int64_t route_chunk_tokens = 256;

/// partial[c, e] = Σ_{t in chunk c} p[t, e] in token order; zpart[c] = Σ lse² likewise.
template <int = 0>
__global__ void route_loss_partial_kernel(float const* __restrict__ scores,
                                          double const* __restrict__ rowsum,
                                          double const* __restrict__ lse, std::int64_t tokens,
                                          std::int32_t experts, bool sigmoid_norm,
                                          double* __restrict__ partial,
                                          double* __restrict__ zpart) {
  std::int64_t const c = blockIdx.y;
  std::int64_t const t0 = c * route_chunk_tokens;
  std::int64_t const t1 = t0 + route_chunk_tokens < tokens ? t0 + route_chunk_tokens : tokens;
  std::int32_t const e = static_cast<std::int32_t>(blockIdx.x * blockDim.x + threadIdx.x);
  if (e < experts) {
    double acc = 0.0;
    for (std::int64_t t = t0; t < t1; ++t) {
      double const s = static_cast<double>(scores[t * experts + e]);
      acc += sigmoid_norm && rowsum[t] > 0.0 ? s / rowsum[t] : s;
    }
    partial[c * experts + e] = acc;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    double z = 0.0;
    for (std::int64_t t = t0; t < t1; ++t) z += lse[t] * lse[t];
    zpart[c] = z;
  }
}

/// Block per sequence of L tokens (DeepSeek-V2): seqval[q] = Σ_e E·cnt_e/(K·L) · (P_e/L), with
/// P_e summed in token order and the terms in expert order (the host's orders).
template <int = 0>
__global__ void route_seq_loss_kernel(float const* __restrict__ scores,
                                      double const* __restrict__ rowsum,
                                      std::int32_t const* __restrict__ expert,
                                      std::int64_t seq_len, std::int32_t experts,
                                      std::int32_t top_k, bool sigmoid_norm,
                                      double* __restrict__ seqval) {
  __shared__ std::int32_t cnt[1024];
  __shared__ double term[1024];
  std::int64_t const t0 = static_cast<std::int64_t>(blockIdx.x) * seq_len;
  for (std::int32_t e = static_cast<std::int32_t>(threadIdx.x); e < experts;
       e += static_cast<std::int32_t>(blockDim.x))
    cnt[e] = 0;
  __syncthreads();
  for (std::int64_t r = threadIdx.x; r < seq_len * top_k; r += blockDim.x)
    atomicAdd(cnt + expert[t0 * top_k + r], 1);  // integer: order-free
  __syncthreads();
  double const Ed = static_cast<double>(experts);
  double const Kd = static_cast<double>(top_k);
  double const Ld = static_cast<double>(seq_len);
  for (std::int32_t e = static_cast<std::int32_t>(threadIdx.x); e < experts;
       e += static_cast<std::int32_t>(blockDim.x)) {
    double P = 0.0;
    for (std::int64_t t = t0; t < t0 + seq_len; ++t) {
      double const v = static_cast<double>(scores[t * experts + e]);
      P += sigmoid_norm && rowsum[t] > 0.0 ? v / rowsum[t] : v;
    }
    term[e] = Ed * static_cast<double>(cnt[e]) / (Kd * Ld) * (P / Ld);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double acc = 0.0;
    for (std::int32_t e = 0; e < experts; ++e) acc += term[e];
    seqval[blockIdx.x] = acc;
  }
}

/// One block: P_e over the chunks in order, then aux, z and the dropped count into stats.
template <int = 0>
__global__ void route_loss_final_kernel(double const* __restrict__ partial,
                                        double const* __restrict__ zpart,
                                        std::int32_t const* __restrict__ counts,
                                        std::int32_t const* __restrict__ count1,
                                        unsigned long long const* __restrict__ dropped,
                                        std::int64_t chunks, std::int64_t tokens,
                                        std::int32_t experts, std::int32_t top_k, bool ds_top2,
                                        double const* __restrict__ seqval,
                                        std::int64_t sequences, route_stats* stats) {
  __shared__ double term[1024];
  for (std::int32_t e = static_cast<std::int32_t>(threadIdx.x); e < experts;
       e += static_cast<std::int32_t>(blockDim.x)) {
    double P = 0.0;
    for (std::int64_t c = 0; c < chunks; ++c) P += partial[c * experts + e];
    double const Td = static_cast<double>(tokens);
    double const f = ds_top2 ? static_cast<double>(count1[e]) / Td
                             : static_cast<double>(counts[e]) / (Td * top_k);
    term[e] = f * (P / Td);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double aux = 0.0;
    for (std::int32_t e = 0; e < experts; ++e) aux += term[e];
    aux *= static_cast<double>(experts);
    double z = 0.0;
    for (std::int64_t c = 0; c < chunks; ++c) z += zpart[c];
    stats->aux_loss = static_cast<float>(aux);
    stats->z_loss = static_cast<float>(z / static_cast<double>(tokens));
    stats->dropped = static_cast<std::int64_t>(*dropped);
    double seq = 0.0;
    for (std::int64_t q = 0; q < sequences; ++q) seq += seqval[q];
    stats->seq_aux_loss = sequences > 0 ? static_cast<float>(seq / static_cast<double>(sequences))
                                        : 0.0f;
  }
}

// ---- route_backward ---------------------------------------------------------------------------
// The host's route_backward (moe/host/router.hpp) per token, a warp per token: the row's softmax
// (and sigmoid) recomputed in double into per-warp shared rows, the balance-loss gradient through
// p, the K routes' gradient (lanes k < K, one route each) back through the scale, the
// renormalisation and the gates, scattered onto the expert rows by lane 0 in choice order, then
// the softmax/sigmoid Jacobian and the z-loss. Every reduction is a per-lane sum in index order
// folded by a fixed xor butterfly, so the result is bitwise reproducible run to run (it equals
// the host's within double rounding, not bit for bit: the host sums in plain index order).

/// Routes per expert, counted from the forward's experts: all K choices, or only the first
/// (first_only, DeepSpeed top-2's aux loss). Block histograms in shared memory, then integer
/// atomics into `counts` (zeroed before): order-free, so deterministic. Experts outside
/// [0, experts) are skipped (the host rejects them; here the output is then unspecified).
template <int = 0>
__global__ void route_backward_count_kernel(std::int32_t const* __restrict__ expert,
                                            std::int64_t routes, std::int32_t top_k,
                                            std::int32_t experts, bool first_only,
                                            std::int32_t* __restrict__ counts) {
  __shared__ std::int32_t hist[max_experts];
  for (std::int32_t e = static_cast<std::int32_t>(threadIdx.x); e < experts;
       e += static_cast<std::int32_t>(blockDim.x))
    hist[e] = 0;
  __syncthreads();
  std::int64_t const stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       r < routes; r += stride) {
    std::int32_t const e = expert[r];
    if (e >= 0 && e < experts && (!first_only || r % top_k == 0)) atomicAdd(hist + e, 1);
  }
  __syncthreads();
  for (std::int32_t e = static_cast<std::int32_t>(threadIdx.x); e < experts;
       e += static_cast<std::int32_t>(blockDim.x))
    if (hist[e] != 0) atomicAdd(counts + e, hist[e]);
}

/// seq_counts[q, e] = routes of sequence q (tokens [q·L, (q+1)·L)) on expert e, all K choices:
/// a block per sequence (grid-stride), a shared histogram, every entry written.
template <int = 0>
__global__ void route_backward_seq_count_kernel(std::int32_t const* __restrict__ expert,
                                                std::int64_t sequences, std::int64_t seq_len,
                                                std::int32_t top_k, std::int32_t experts,
                                                std::int32_t* __restrict__ seq_counts) {
  __shared__ std::int32_t hist[max_experts];
  for (std::int64_t q = blockIdx.x; q < sequences; q += gridDim.x) {
    for (std::int32_t e = static_cast<std::int32_t>(threadIdx.x); e < experts;
         e += static_cast<std::int32_t>(blockDim.x))
      hist[e] = 0;
    __syncthreads();
    std::int32_t const* const ex = expert + q * seq_len * top_k;
    for (std::int64_t r = threadIdx.x; r < seq_len * top_k; r += blockDim.x) {
      std::int32_t const e = ex[r];
      if (e >= 0 && e < experts) atomicAdd(hist + e, 1);
    }
    __syncthreads();
    for (std::int32_t e = static_cast<std::int32_t>(threadIdx.x); e < experts;
         e += static_cast<std::int32_t>(blockDim.x))
      seq_counts[q * experts + e] = hist[e];
    __syncthreads();  // the histogram is reused by the next sequence
  }
}

/// Everything route_backward_kernel reads and writes (device pointers).
struct route_backward_params {
  float const* logits = nullptr;             // [T, E]
  std::int32_t const* expert = nullptr;      // [T, K]
  std::int32_t const* slot = nullptr;        // [T, K]
  float const* d_weight = nullptr;           // [T, K]
  float* d_logits = nullptr;                 // [T, E] out
  std::int32_t const* counts = nullptr;      // [E] aux-loss counts (route_backward_count_kernel)
  std::int32_t const* seq_counts = nullptr;  // [T / L, E] or null (no sequence-level loss)
  std::int64_t tokens = 0;
  std::int64_t seq_len = 0;
  float aux_coef = 0.0f;
  float z_coef = 0.0f;
  float seq_coef = 0.0f;
  float weight_scale = 1.0f;
};

/// Warps per block of route_backward_kernel: its shared rows are per warp (up to three rows of
/// E doubles, 24 KiB at E = 1024 with one warp).
template <int E>
inline constexpr int route_backward_warps = E > 512 ? 1 : E > 256 ? 2 : 4;

__device__ __forceinline__ double route_warp_sum(double v) {
#pragma unroll
  for (int m = 16; m >= 1; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

__device__ __forceinline__ double route_warp_max(double v) {
#pragma unroll
  for (int m = 16; m >= 1; m /= 2) {
    double const o = __shfl_xor_sync(0xffffffffu, v, m);
    v = o > v ? o : v;
  }
  return v;
}

template <int E, int K, unsigned F>
__global__ void __launch_bounds__(32 * route_backward_warps<E>)
    route_backward_kernel(route_backward_params p) {
  constexpr int W = route_backward_warps<E>;
  constexpr bool ds = (F & route_ds) != 0u;
  constexpr bool sigmoid = !ds && (F & route_softmax) == 0u;
  constexpr bool k_softmax = !ds && (F & route_topk_then) != 0u && (F & route_softmax) != 0u;
  constexpr bool renorm_native = !ds && (F & route_renorm) != 0u;
  constexpr bool renorm = renorm_native || (ds && K > 1);  // w = a / max(Σ a, floor)
  constexpr bool ds2 = ds && K == 2;                       // aux counts: first choices
  constexpr double floor = ds ? 0x1p-23 : static_cast<double>(FLT_MIN);
  double const inf = __longlong_as_double(0x7ff0000000000000LL);

  __shared__ double sh_sm[W][E];               // softmax of the row
  __shared__ double sh_acc[W][E];              // ds, then d_logits before the z-loss
  __shared__ double sh_s[W][sigmoid ? E : 1];  // sigmoid scores
  __shared__ double sh_c[W][K];                // each route's contribution, choice order
  __shared__ std::int32_t sh_e[W][K];          // each route's expert (-1: out of range)

  int const lane = static_cast<int>(threadIdx.x & 31u);
  int const wid = static_cast<int>(threadIdx.x >> 5);
  double* const sm = sh_sm[wid];
  double* const acc = sh_acc[wid];
  double* const sg = sh_s[wid];
  auto const score = [&](int e) { return sigmoid ? sg[e] : sm[e]; };
  double const Td = static_cast<double>(p.tokens);
  double const Ed = static_cast<double>(E);
  double const Kd = static_cast<double>(K);
  double const Ld = static_cast<double>(p.seq_len);
  double const n_seq = p.seq_len > 0 ? Td / Ld : 1.0;
  std::int64_t const warps = static_cast<std::int64_t>(gridDim.x) * W;
  for (std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * W + wid; t < p.tokens;
       t += warps) {
    float const* const l = p.logits + t * E;
    // Softmax (and sigmoid) of the row in double, as the host recomputes them.
    double m = -inf;
#pragma unroll 1  // rolled loops: a double exp/division may call a slow path, keep few values live
    for (int e = lane; e < E; e += 32) {
      double const v = static_cast<double>(__ldg(l + e));
      m = v > m ? v : m;
    }
    m = route_warp_max(m);
    double z = 0.0;
#pragma unroll 1
    for (int e = lane; e < E; e += 32) {
      double const v = exp(static_cast<double>(__ldg(l + e)) - m);
      sm[e] = v;
      z += v;
    }
    z = route_warp_sum(z);
    double const lse = m + log(z);
#pragma unroll 1
    for (int e = lane; e < E; e += 32) {
      sm[e] /= z;
      if constexpr (sigmoid) sg[e] = 1.0 / (1.0 + exp(-static_cast<double>(__ldg(l + e))));
    }

    // The balance losses through p: dp[e], then ds = J_pᵀ dp (p = s / Σ s for sigmoid).
    std::int32_t const* const seq_cnt =
        p.seq_counts != nullptr ? p.seq_counts + (t / p.seq_len) * E : nullptr;
    double s_sum = 0.0;
#pragma unroll 1
    for (int e = lane; e < E; e += 32) {
      double const cnt = static_cast<double>(p.counts[e]);
      double dp = static_cast<double>(p.aux_coef) * Ed * (ds2 ? cnt / Td : cnt / (Td * Kd)) / Td;
      if (seq_cnt != nullptr)
        dp += static_cast<double>(p.seq_coef) *
              (Ed * static_cast<double>(seq_cnt[e]) / (Kd * Ld)) / Ld / n_seq;
      acc[e] = dp;
      if constexpr (sigmoid) s_sum += sg[e];
    }
    if constexpr (sigmoid) {
      double const S = route_warp_sum(s_sum);
      if (S > 0.0) {  // p = s when every score underflows to 0 (the forward's rule; not 0/0)
        double dot = 0.0;
#pragma unroll 1
        for (int e = lane; e < E; e += 32) dot += acc[e] * sg[e] / S;
        dot = route_warp_sum(dot);
#pragma unroll 1
        for (int e = lane; e < E; e += 32) acc[e] = (acc[e] - dot) / S;
      }
    }
    __syncwarp();

    // The K routes, lane k holding route k: g = ∂L/∂w through the scale, the renormalisation
    // (over the K, or DeepSpeed's over the survivors) and the gates.
    std::int32_t ek = -1;
    double gk = 0.0, ak = 0.0, lk = -inf;
    bool keep = false;
    if (lane < K) {
      std::int64_t const r = t * K + lane;
      std::int32_t const e = p.expert[r];
      if (e >= 0 && e < E) {
        ek = e;
        keep = p.slot[r] >= 0;
        gk = keep ? static_cast<double>(p.d_weight[r]) * static_cast<double>(p.weight_scale)
                  : 0.0;
        ak = score(e);
        lk = static_cast<double>(__ldg(l + e));
      }
    }
    if constexpr (k_softmax) {  // a = softmax of the K chosen logits
      double const mk = route_warp_max(lk);
      double const xk = ek >= 0 ? exp(lk - mk) : 0.0;
      ak = xk / route_warp_sum(xk);
    }
    double da = gk;
    if constexpr (renorm) {
      bool const in_sum = ek >= 0 && (renorm_native || keep);
      double const S = route_warp_sum(in_sum ? ak : 0.0);
      double const ga = route_warp_sum(in_sum ? gk * ak : 0.0);
      da = S > floor ? (in_sum ? gk / S - ga / (S * S) : 0.0) : gk / floor;
    }
    double c = da;
    if constexpr (k_softmax) c = ak * (da - route_warp_sum(da * ak));
    if (lane < K) {
      sh_e[wid][lane] = ek;
      sh_c[wid][lane] = c;
    }
    if constexpr (k_softmax) {  // the routes feed d_logits directly; ds = dp goes through sm
      double dot = 0.0;
#pragma unroll 1
      for (int e = lane; e < E; e += 32) dot += acc[e] * sm[e];
      dot = route_warp_sum(dot);
      __syncwarp();
#pragma unroll 1
      for (int e = lane; e < E; e += 32) acc[e] = sm[e] * (acc[e] - dot);
    }
    __syncwarp();
    if (lane == 0)  // in choice order, as the host adds them
      for (int k = 0; k < K; ++k)
        if (sh_e[wid][k] >= 0) acc[sh_e[wid][k]] += sh_c[wid][k];
    __syncwarp();

    // Scores to logits (unless done above), plus the z-loss 2·lse·softmax/T.
    if constexpr (!k_softmax) {
      if constexpr (sigmoid) {
#pragma unroll 1
        for (int e = lane; e < E; e += 32) acc[e] = acc[e] * sg[e] * (1.0 - sg[e]);
      } else {
        double dot = 0.0;
#pragma unroll 1
        for (int e = lane; e < E; e += 32) dot += acc[e] * sm[e];
        dot = route_warp_sum(dot);
#pragma unroll 1
        for (int e = lane; e < E; e += 32) acc[e] = sm[e] * (acc[e] - dot);
      }
    }
    double const zc = static_cast<double>(p.z_coef) * 2.0 * lse / Td;
    float* const out = p.d_logits + t * E;
#pragma unroll 1
    for (int e = lane; e < E; e += 32) out[e] = static_cast<float>(acc[e] + zc * sm[e]);
    __syncwarp();  // the rows are rewritten by the warp's next token
  }
}

}  // namespace moe::backend::cuda
