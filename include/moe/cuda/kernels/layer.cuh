// SPDX-License-Identifier: Apache-2.0
// The CUDA layer's own small kernels (moe/cuda/layer.cuh): the glue between the ops — mixing
// the branches into y (with the PR-MoE coefficients' softmax), the mixing backward, the
// coefficients' weight gradient, the dx sum in accum_t, type conversions of the router's
// logits for fp64 configs, the dense branches' offsets and the statistics. Every reduction is
// a CUB block reduction of a fixed block size over a fixed partition of the row, or a column
// sum over the tokens in column_sum's fixed order, so results are the same bits run after run.
#pragma once

#include <cub/block/block_reduce.cuh>  // cub::BlockReduce

#include <cstdint>  // std::int64_t

#include "moe/cuda/kernels/column_sum.cuh"  // column_sum (the coefficients' gradients)
#include "moe/layer.hpp"                      // moe::layer_stats
#include "moe/precision.hpp"                  // to_float, from_float
#include "moe/router.hpp"                     // moe::route_stats

namespace moe::backend::cuda {

/// Threads of the per-token kernels (one block per token, grid-stride over tokens).
inline constexpr int layer_block = 128;

/// A value rounded to storage type S from accumulation type A (double is stored to double or
/// float directly; the 16-bit types from float, as every op stores them).
template <class S, class A>
__device__ __forceinline__ S layer_store(A v) {
  if constexpr (sizeof(A) == 8 && sizeof(S) < 4)
    return from_float<S>(static_cast<float>(v));
  else
    return from_float<S>(v);
}

template <class A, class S>
__device__ __forceinline__ A layer_load(S v) {
  return static_cast<A>(to_float(v));
}

/// Σ over the block of one value per thread, in CUB's fixed order; every thread gets it.
template <class A>
__device__ __forceinline__ A layer_block_sum(A v) {
  using reduce = cub::BlockReduce<A, layer_block>;
  __shared__ typename reduce::TempStorage temp;
  __shared__ A total;
  A const s = reduce(temp).Sum(v);
  if (threadIdx.x == 0) total = s;
  __syncthreads();
  A const out = total;
  __syncthreads();
  return out;
}

/// y[t] = c0 · (y_moe + shared_y) + c1 · res_y with c = softmax(x·W_cᵀ + b_c) when res_y is
/// given (coef[t] ← c), else y_moe + shared_y; in A, rounded once. shared_y, res_y may be null.
template <class S, class W, class A>
__global__ void __launch_bounds__(layer_block)
    layer_mix_forward_kernel(std::int64_t tokens, std::int64_t hidden, S const* x, S const* y_moe,
                             S const* shared_y, S const* res_y, W const* coef_w, W const* coef_b,
                             A* coef, S* y) {
  for (std::int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    std::int64_t const row = t * hidden;
    A c0 = 1, c1 = 0;
    if (res_y != nullptr) {
      A z0 = 0, z1 = 0;
      for (std::int64_t h = threadIdx.x; h < hidden; h += layer_block) {
        A const xv = layer_load<A>(x[row + h]);
        z0 += xv * layer_load<A>(coef_w[h]);
        z1 += xv * layer_load<A>(coef_w[hidden + h]);
      }
      z0 = layer_block_sum(z0) + layer_load<A>(coef_b[0]);
      z1 = layer_block_sum(z1) + layer_load<A>(coef_b[1]);
      A const m = z0 > z1 ? z0 : z1;
      A const e0 = exp(z0 - m), e1 = exp(z1 - m);
      c0 = e0 / (e0 + e1);
      c1 = e1 / (e0 + e1);
      if (threadIdx.x == 0) {
        coef[2 * t] = c0;
        coef[2 * t + 1] = c1;
      }
    }
    for (std::int64_t h = threadIdx.x; h < hidden; h += layer_block) {
      A v = layer_load<A>(y_moe[row + h]);
      if (shared_y != nullptr) v += layer_load<A>(shared_y[row + h]);
      if (res_y != nullptr) v = c0 * v + c1 * layer_load<A>(res_y[row + h]);
      y[row + h] = layer_store<S>(v);
    }
  }
}

/// The mixing's backward: d_moe = c0·dy, d_res = c1·dy, and the gradient of the coefficients'
/// logits dcoef[t] = c ⊙ (g − <c, g>) with g_j = <dy, branch_j>.
template <class S, class A>
__global__ void __launch_bounds__(layer_block)
    layer_mix_backward_kernel(std::int64_t tokens, std::int64_t hidden, S const* dy, S const* y_moe,
                              S const* shared_y, S const* res_y, A const* coef, S* d_moe, S* d_res,
                              A* dcoef) {
  for (std::int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    std::int64_t const row = t * hidden;
    A const c0 = coef[2 * t], c1 = coef[2 * t + 1];
    A g0 = 0, g1 = 0;
    for (std::int64_t h = threadIdx.x; h < hidden; h += layer_block) {
      A const d = layer_load<A>(dy[row + h]);
      A v = layer_load<A>(y_moe[row + h]);
      if (shared_y != nullptr) v += layer_load<A>(shared_y[row + h]);
      g0 += d * v;
      g1 += d * layer_load<A>(res_y[row + h]);
      d_moe[row + h] = layer_store<S>(c0 * d);
      d_res[row + h] = layer_store<S>(c1 * d);
    }
    g0 = layer_block_sum(g0);
    g1 = layer_block_sum(g1);
    if (threadIdx.x == 0) {
      A const s = c0 * g0 + c1 * g1;
      dcoef[2 * t] = c0 * (g0 - s);
      dcoef[2 * t + 1] = c1 * (g1 - s);
    }
  }
}

/// dW_c[j, h] += Σ_t dcoef[t, j] x[t, h] and db_c[j] += Σ_t dcoef[t, j], as 2H + 2 column
/// sums over the tokens (column i < 2H is (j, h) = (i / H, i % H), then db_c's two): a block of
/// column_sum_threads per 32 columns, in column_sum's fixed order.
template <class S, class A>
__global__ void __launch_bounds__(column_sum_threads)
    layer_coef_wgrad_kernel(std::int64_t tokens, std::int64_t hidden, S const* x,
                            A const* dcoef, A* dw, A* db) {
  __shared__ column_sum_storage<A> storage;
  std::int64_t const n = 2 * hidden + 2;
  for (std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * column_sum_cols; i0 < n;
       i0 += static_cast<std::int64_t>(gridDim.x) * column_sum_cols) {
    std::int64_t const i = i0 + threadIdx.x;
    bool const active = i < n, weight = i < 2 * hidden;
    std::int64_t const j = weight ? i / hidden : i - 2 * hidden, h = weight ? i % hidden : 0;
    A* const out = !active ? nullptr : weight ? dw + i : db + j;
    A const init = active && threadIdx.y == 0 ? *out : A(0);
    A const sum = column_sum<A>(storage, 0, tokens, active, init, [&](std::int64_t t) {
      A const d = dcoef[2 * t + j];
      return weight ? d * layer_load<A>(x[t * hidden + h]) : d;
    });
    if (active && threadIdx.y == 0) *out = sum;
  }
}

/// sum[i] = (first ? 0 : sum[i]) + part[i] (+ the coefficients' dx when dcoef is given).
template <class S, class W, class A>
__global__ void layer_dx_add_kernel(std::int64_t n, std::int64_t hidden, S const* part, bool first,
                                    A const* dcoef, W const* coef_w, A* sum) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    A v = first ? A{0} : sum[i];
    if (part != nullptr) v += layer_load<A>(part[i]);
    if (dcoef != nullptr) {
      std::int64_t const t = i / hidden, h = i % hidden;
      v += dcoef[2 * t] * layer_load<A>(coef_w[h]) +
           dcoef[2 * t + 1] * layer_load<A>(coef_w[hidden + h]);
    }
    sum[i] = v;
  }
}

/// out[i] = in[i] converted (the fp64 configs' logits to fp32 and back).
template <class To, class From>
__global__ void layer_convert_kernel(std::int64_t n, From const* in, To* out) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<To>(in[i]);
}

/// out[i] = round(in[i]) to the storage type.
template <class S, class A>
__global__ void layer_round_kernel(std::int64_t n, A const* in, S* out) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    out[i] = layer_store<S>(in[i]);
}

/// The dense branches' offsets {0, T}, and the statistics from the router's. (A template only
/// so that the header can be included by several translation units.)
template <int Unused = 0>
__global__ void layer_small_kernel(std::int64_t tokens, std::int64_t* dense_offsets,
                                   route_stats const* st, layer_stats* out, double aux_coef,
                                   double z_coef, double seq_coef) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  dense_offsets[0] = 0;
  dense_offsets[1] = tokens;
  if (out != nullptr) {
    out->route = *st;
    out->loss = aux_coef * st->aux_loss + z_coef * st->z_loss + seq_coef * st->seq_aux_loss;
  }
}

// ---- expert parallelism (moe/cuda/layer_ep.cuh) -------------------------------------------

/// This rank's routes out of the group's routing (routes [first, first + n) of it): expert and
/// weight copied, slot cleared, and for the sort a key (expert, group slot) per kept route —
/// `none` for a dropped one, so that dropped routes sort last — and the route's index.
template <class = void>
__global__ void ep_local_keys_kernel(std::int64_t n, std::int64_t first, std::uint64_t slots,
                                     std::uint64_t none, std::int32_t const* g_expert,
                                     std::int32_t const* g_slot, float const* g_weight,
                                     std::int32_t* expert, std::int32_t* slot, float* weight,
                                     std::uint64_t* keys, std::int32_t* routes) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int32_t const e = g_expert[first + i], s = g_slot[first + i];
    expert[i] = e;
    weight[i] = g_weight[first + i];
    slot[i] = -1;
    keys[i] = s >= 0 ? static_cast<std::uint64_t>(e) * slots + static_cast<std::uint64_t>(s) : none;
    routes[i] = static_cast<std::int32_t>(i);
  }
}

/// After the sort by key: a kept route's local slot is its position among the sorted routes of
/// its expert (the first of them found by a binary search over the sorted keys), so within an
/// expert the local slots follow the group's slot order.
template <class = void>
__global__ void ep_local_slots_kernel(std::int64_t n, std::uint64_t slots, std::uint64_t none,
                                      std::uint64_t const* keys, std::int32_t const* routes,
                                      std::int32_t* slot) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::uint64_t const key = keys[j];
    if (key >= none) continue;
    std::uint64_t const start = key / slots * slots;  // the expert's first key
    std::int64_t lo = 0, hi = j;                      // first position with keys[pos] >= start
    while (lo < hi) {
      std::int64_t const mid = lo + (hi - lo) / 2;
      if (keys[mid] < start)
        lo = mid + 1;
      else
        hi = mid;
    }
    slot[routes[j]] = static_cast<std::int32_t>(j - lo);
  }
}

/// counts[e] = offsets[e + 1] - offsets[e]: this rank's rows for each (global) expert.
template <class = void>
__global__ void ep_send_counts_kernel(std::int64_t experts, std::int64_t const* offsets,
                                      std::int64_t* counts) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       e < experts; e += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    counts[e] = offsets[e + 1] - offsets[e];
}

/// The received rows regrouped by local expert: for pair p (table[3p..3p+2] = first received
/// row, first grouped row, rows), order[grouped] = received and inverse[received] = grouped.
/// One block per pair.
template <class = void>
__global__ void ep_regroup_kernel(std::int64_t pairs, std::int64_t const* table,
                                  std::int32_t* order, std::int32_t* inverse) {
  for (std::int64_t p = blockIdx.x; p < pairs; p += gridDim.x) {
    std::int64_t const src = table[3 * p], dst = table[3 * p + 1], rows = table[3 * p + 2];
    for (std::int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
      order[dst + i] = static_cast<std::int32_t>(src + i);
      inverse[src + i] = static_cast<std::int32_t>(dst + i);
    }
  }
}

}  // namespace moe::backend::cuda
