// SPDX-License-Identifier: Apache-2.0
// CUDA overloads of permute, unpermute/combine, combine_backward and permute_backward (see
// moe/permute.hpp): the same argument checks as the host backend, then one kernel launch each
// on the policy's stream (combine_backward also zeroes d_weight first, for dropped routes). No
// workspace, no synchronisation. The launch shape — threads per row, 16-byte vectors or scalar
// accesses — is chosen here from H and the pointers' alignment; the kernels are in
// moe/cuda/kernels/permute.cuh. Plan entries outside their range (which the host backend
// rejects) are treated as padding or dropped routes, so the kernels never leave their buffers.
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int64_t

#include "moe/cuda/kernels/permute.cuh"  // the kernels, dispatch_block
#include "moe/cuda/runtime.cuh"          // check_launch, grid_for, MOE_CUDA_TRY
#include "moe/permute.hpp"               // the args structs, detail::check, threads_per_row

namespace moe {

namespace detail {

/// Grid, threads per row and vectors per row for `items` rows (or tokens) of H elements,
/// moved V elements at a time.
struct dispatch_shape {
  unsigned grid;
  int tpr;
  int vectors;  // per row: < 2^31 since H is (check_sizes)
};

inline dispatch_shape make_dispatch_shape(std::int64_t items, std::int64_t hidden, int v) {
  auto const vectors = static_cast<int>(hidden / v);
  int const tpr = threads_per_row(vectors);
  unsigned const grid =
      backend::cuda::grid_for(items, static_cast<unsigned>(backend::cuda::dispatch_block / tpr));
  return {grid, tpr, vectors};
}

/// Calls f.template operator()<V>() with V = 16 / sizeof(T) when the rows of H elements and
/// every pointer allow 16-byte accesses, else with V = 1.
template <class T, class F, class... P>
status with_vector_width(std::int64_t hidden, F&& f, P const*... ptrs) {
  if (can_vectorize<T>(hidden, ptrs...)) return f.template operator()<vector_elems<T>>();
  return f.template operator()<1>();
}

}  // namespace detail

/// Gathers token rows into the permuted buffer on the device (an exact copy; zeros for
/// padding rows), enqueued on `policy.stream`.
template <dispatch_storage T>
status permute(cuda_policy policy, permute_args<T> const& a) noexcept {
  MOE_TRY(detail::check(a));
  if (a.rows == 0) return {};
  return detail::with_vector_width<T>(
      a.hidden,
      [&]<int V>() {
        auto const s = detail::make_dispatch_shape(a.rows, a.hidden, V);
        backend::cuda::permute_gather_kernel<T, V>
            <<<s.grid, backend::cuda::dispatch_block, 0, policy.stream>>>(
                a.x, a.source_of, a.out, a.tokens * a.top_k, a.rows, s.vectors, a.top_k, s.tpr);
        return backend::cuda::check_launch(policy.stream, "permute_gather_kernel");
      },
      a.x, a.out);
}

namespace detail {
template <class T>
status launch_combine_gather(cuda_policy policy, T const* src, std::int32_t const* row_of,
                             float const* weight, T* y, std::int64_t tokens, std::int64_t hidden,
                             std::int64_t rows, std::int32_t top_k) {
  if (tokens == 0) return {};
  return with_vector_width<T>(
      hidden,
      [&]<int V>() {
        auto const s = make_dispatch_shape(tokens, hidden, V);
        backend::cuda::combine_gather_kernel<T, V>
            <<<s.grid, backend::cuda::dispatch_block, 0, policy.stream>>>(
                src, row_of, weight, y, tokens, rows, s.vectors, top_k, s.tpr);
        return backend::cuda::check_launch(policy.stream, "combine_gather_kernel");
      },
      src, y);
}
}  // namespace detail

/// y[t] = Σ_k w[t,k] · o[row_of[t,k]] on the device, in k order in float (double for double);
/// +0 for a token whose routes are all dropped. Enqueued on `policy.stream`.
template <dispatch_storage T>
status unpermute(cuda_policy policy, combine_args<T> const& a) noexcept {
  MOE_TRY(detail::check(a));
  return detail::launch_combine_gather(policy, a.o, a.row_of, a.weight, a.y, a.tokens, a.hidden,
                                       a.rows, a.top_k);
}

/// The same op as unpermute, by the name the MoE literature gives it.
template <dispatch_storage T>
status combine(cuda_policy policy, combine_args<T> const& a) noexcept {
  return unpermute(policy, a);
}

/// Backward of permute on the device: dx[t] = Σ_k d_out[row_of[t,k]] in k order.
template <dispatch_storage T>
status permute_backward(cuda_policy policy, permute_backward_args<T> const& a) noexcept {
  MOE_TRY(detail::check(a));
  return detail::launch_combine_gather<T>(policy, a.d_out, a.row_of, nullptr, a.dx, a.tokens,
                                          a.hidden, a.rows, a.top_k);
}

/// Backward of combine on the device: d_o[row] = w·dy[t] (0 for padding rows) and, when
/// d_weight is non-null, d_weight[t,k] = <dy[t], o[row]> (0 for dropped routes).
template <dispatch_storage T>
status combine_backward(cuda_policy policy, combine_backward_args<T> const& a) noexcept {
  MOE_TRY(detail::check(a));
  std::int64_t const routes = a.tokens * a.top_k;
  if (a.d_weight != nullptr && routes > 0)
    MOE_CUDA_TRY(cudaMemsetAsync(a.d_weight, 0, static_cast<std::size_t>(routes) * sizeof(float),
                                 policy.stream));
  if (a.rows == 0) return {};
  return detail::with_vector_width<T>(
      a.hidden,
      [&]<int V>() {
        auto const s = detail::make_dispatch_shape(a.rows, a.hidden, V);
        backend::cuda::combine_backward_kernel<T, V>
            <<<s.grid, backend::cuda::dispatch_block, 0, policy.stream>>>(
                a.dy, a.o, a.source_of, a.weight, a.d_o, a.d_weight, routes, a.rows, s.vectors,
                a.top_k, s.tpr);
        return backend::cuda::check_launch(policy.stream, "combine_backward_kernel");
      },
      a.dy, a.o, a.d_o);
}

}  // namespace moe
