// SPDX-License-Identifier: Apache-2.0
// The expert-parallel MoE layer on GPUs: `moe::layer<C, moe::cuda_policy, moe::comm::nccl>`
// (link moe::nccl). It computes what the host's expert-parallel path computes
// (moe/host/layer.hpp, docs/expert_parallel.md) — the group's routing on every rank, this
// rank's routes planned by the group's slot order, rows to the experts' ranks and back — with
// the CUDA ops and NCCL's send/receive on device buffers:
//
//   exchange (T, T_g, fingerprint) ─ sync ─ router GEMM ─ gather logits ─ route the group
//   ─ local slots (sort by (expert, group slot)) ─ plan ─ permute ─ exchange counts ─ sync
//   ─ rows out ─ regroup ─ expert FFN ─ regroup back ─ rows back ─ combine ─ dense, mix
//
// NCCL posts its sends and receives with host counts, so a forward reads two small arrays back
// from the device (every rank's token count; this rank's per-expert rows and the counts it
// receives), and a backward one (the counts forward left in the workspace): an expert-parallel
// step synchronises the policy's stream three times and cannot be captured in a CUDA graph.
// The host values live in the layer's own host scratch (allocated when it binds its
// parameters), so nothing is allocated inside a step. Everything else is enqueued on the
// policy's stream; the communicator's stream is ordered against it by events (comm::nccl).
#pragma once

#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>  // cub::DeviceRadixSort

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t

#include "moe/comm/nccl.cuh"                // moe::comm::nccl
#include "moe/cuda/layer.cuh"               // the CUDA glue, the ops, layer_memory<cuda_policy>
#include "moe/detail/layer_ep_compose.hpp"  // the expert-parallel composition

namespace moe::detail::layer_impl {

/// Where the CUDA expert-parallel path keeps its host values (int64s of the layer's host
/// scratch, R <= E ranks): every rank's (T, T_g, fingerprint), the rows of every rank's tokens,
/// ones (the count exchange's rows), this rank's plan offsets, the counts it receives, rows
/// sent to and received from each rank, the regrouped offsets and the regrouping table.
struct ep_host_layout {
  std::int64_t tok, rows_of, ones, offsets, recv_counts, send_rows, recv_rows, e_offsets, table,
      end;
  ep_host_layout(std::int64_t R, std::int64_t E) noexcept {
    std::int64_t at = 0;
    auto take = [&at](std::int64_t n) {
      std::int64_t const s = at;
      at += n;
      return s;
    };
    tok = take(3 * R);
    rows_of = take(R);
    ones = take(R);
    offsets = take(E + 1);
    recv_counts = take(E);
    send_rows = take(R);
    recv_rows = take(R);
    e_offsets = take(E / R + 1);
    table = take(3 * E);
    end = at;
  }
};

/// Copies n int64s from the device and waits for them (and everything before on the stream).
inline status ep_download(cudaStream_t stream, std::int64_t* host, std::int64_t const* device,
                          std::int64_t n) noexcept {
  MOE_CUDA_TRY(cudaMemcpyAsync(host, device, static_cast<std::size_t>(n) * sizeof(std::int64_t),
                               cudaMemcpyDeviceToHost, stream));
  MOE_CUDA_TRY(cudaStreamSynchronize(stream));
  return {};
}

/// Copies n int64s to the device (from pageable host memory: the call returns once they are
/// staged, so the host array can be reused).
inline status ep_upload(cudaStream_t stream, std::int64_t* device, std::int64_t const* host,
                        std::int64_t n) noexcept {
  if (n == 0) return {};
  MOE_CUDA_TRY(cudaMemcpyAsync(device, host, static_cast<std::size_t>(n) * sizeof(std::int64_t),
                               cudaMemcpyHostToDevice, stream));
  return {};
}

/// This rank's routes out of the group's routing, on the device; within an expert, local
/// slots follow the group's slot order (CUB's stable radix sort by (expert, group slot) over
/// the bits that E·(C + 1) needs, dropped routes last, then each route's position among its
/// expert's).
template <config C>
status local_slots(cuda_policy ops, problem const& p, std::int64_t tokens_before, void* ws,
                   workspace_layout const& L) noexcept {
  using namespace backend::cuda;
  std::int64_t const n = p.tokens * C.top_k;
  if (n == 0) return {};
  std::uint64_t const slots = static_cast<std::uint64_t>(static_capacity<C>(group_problem(p))) + 1;
  std::uint64_t const none = static_cast<std::uint64_t>(C.experts) * slots;
  auto* const keys = at<std::uint64_t>(ws, L.sort_keys);  // [2][n]: the double buffer
  auto* const vals = at<std::int32_t>(ws, L.sort_vals);
  auto* const slot = at<std::int32_t>(ws, L.slot);
  ep_local_keys_kernel<><<<grid_for(n, 256), 256, 0, ops.stream>>>(
      n, tokens_before * C.top_k, slots, none, at<std::int32_t>(ws, L.g_expert),
      at<std::int32_t>(ws, L.g_slot), at<float>(ws, L.g_weight), at<std::int32_t>(ws, L.expert),
      slot, at<float>(ws, L.weight), keys, vals);
  MOE_TRY(check_launch(ops.stream, "ep_local_keys_kernel"));
  int end_bit = 1;
  while (end_bit < 64 && (std::uint64_t{1} << end_bit) <= none) ++end_bit;
  cub::DoubleBuffer<std::uint64_t> key_buf(keys, keys + n);
  cub::DoubleBuffer<std::int32_t> val_buf(vals, vals + n);
  std::size_t temp = ops.workspace_bytes;
  MOE_CUDA_TRY(cub::DeviceRadixSort::SortPairs(ops.workspace, temp, key_buf, val_buf, n, 0, end_bit,
                                               ops.stream));
  ep_local_slots_kernel<><<<grid_for(n, 256), 256, 0, ops.stream>>>(
      n, slots, none, key_buf.Current(), val_buf.Current(), slot);
  return check_launch(ops.stream, "ep_local_slots_kernel");
}

/// Forward of an expert-parallel layer on the GPU over NCCL.
template <config C>
status layer_forward_ep(cuda_policy policy, layer_state<C> const& self, comm::nccl& comm,
                        problem const& p, layer_forward_args<C> const& a, void* ws,
                        workspace_layout const& L) noexcept {
  using namespace backend::cuda;
  std::int64_t const T = p.tokens, E = C.experts;
  std::int32_t const R = comm.size();
  std::int64_t const El = E / R;
  if (T > 0 && (a.x == nullptr || a.y == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_forward_args.x/y: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  if (self.host_scratch == nullptr)
    return status::error(errc::invalid_argument,
                         "layer::forward: the layer has no host scratch (bind its parameters)");
  cudaStream_t const stream = policy.stream;
  comm.set_stream(stream);
  ep_host_layout const HL(R, E);
  std::int64_t* const hs = self.host_scratch;
  if (HL.end + ep_record_size(R) > layer_memory<cuda_policy>::host_scratch<C>(true))
    return status::error(errc::internal, "layer::forward: host scratch too small for R = %d", R);

  // 0. Every rank's (T, T_g, fingerprint), read back and checked identically everywhere.
  std::int64_t const mine[3] = {p.tokens, L.group_tokens,
                                problem_fingerprint(p, self.options.router)};
  MOE_TRY(ep_upload(stream, at<std::int64_t>(ws, L.tok_mine), mine, 3));
  for (std::int32_t r = 0; r < R; ++r) hs[HL.ones + r] = 1;
  MOE_TRY(comm.all_gather_v(at<std::int64_t>(ws, L.tok_mine), 1, at<std::int64_t>(ws, L.tok),
                            hs + HL.ones, 3 * sizeof(std::int64_t)));
  MOE_TRY(ep_download(stream, hs + HL.tok, at<std::int64_t>(ws, L.tok), 3 * R));
  std::int64_t tb = 0;
  MOE_TRY(check_group_tokens(hs + HL.tok, R, comm.rank(), tb, hs + HL.rows_of));
  if (group_problem(p).tokens == 0)
    return layer_glue<cuda_policy>::empty(policy, a, at<std::int32_t>(ws, L.g_counts),
                                          at<std::int32_t>(ws, L.g_kept));
  ep_counts n{hs + HL.send_rows, hs + HL.recv_rows, hs + HL.rows_of, 0, 0, tb};
  auto const ops = layer_glue<cuda_policy>::ops(policy, ws, L);

  // 1-2. The group's routing, 3. local slots, 4. plan and permute.
  MOE_TRY(ep_route_group(policy, ops, self, comm, p, a, ws, L, n));
  MOE_TRY(local_slots<C>(ops, p, tb, ws, L));
  MOE_TRY(ep_plan_permute(ops, self, p, a.x, ws, L));

  // 5. Counts per (rank, local expert), exchanged, read back with the plan's offsets; the
  // regrouping table computed here and the maps written on the device.
  auto* const offsets = at<std::int64_t>(ws, L.offsets);
  auto* const send_counts = at<std::int64_t>(ws, L.send_counts);
  auto* const recv_counts = at<std::int64_t>(ws, L.recv_counts);
  ep_send_counts_kernel<><<<grid_for(E, 256), 256, 0, stream>>>(E, offsets, send_counts);
  MOE_TRY(check_launch(stream, "ep_send_counts_kernel"));
  MOE_TRY(comm.all_to_all_v(send_counts, hs + HL.ones, recv_counts, hs + HL.ones,
                            static_cast<std::size_t>(El) * sizeof(std::int64_t)));
  MOE_CUDA_TRY(cudaMemcpyAsync(hs + HL.offsets, offsets,
                               static_cast<std::size_t>(E + 1) * sizeof(std::int64_t),
                               cudaMemcpyDeviceToHost, stream));
  MOE_TRY(ep_download(stream, hs + HL.recv_counts, recv_counts, E));
  std::int64_t* const table = hs + HL.table;
  std::int64_t pair = 0;
  MOE_TRY(ep_rows(hs + HL.offsets, hs + HL.recv_counts, R, El, L, hs + HL.send_rows,
                  hs + HL.recv_rows, hs + HL.e_offsets, n.Mr,
                  [&](std::int64_t first, std::int64_t g, std::int64_t rows) {
                    table[3 * pair] = first;
                    table[3 * pair + 1] = g;
                    table[3 * pair + 2] = rows;
                    ++pair;
                  }));
  n.M = hs[HL.offsets + E];
  MOE_TRY(ep_upload(stream, at<std::int64_t>(ws, L.e_offsets), hs + HL.e_offsets, El + 1));
  MOE_TRY(ep_upload(stream, at<std::int64_t>(ws, L.regroup), table, 3 * E));
  if (n.Mr > 0) {
    ep_regroup_kernel<><<<grid_for(E, 1), 128, 0, stream>>>(E, at<std::int64_t>(ws, L.regroup),
                                                            at<std::int32_t>(ws, L.order),
                                                            at<std::int32_t>(ws, L.inverse));
    MOE_TRY(check_launch(stream, "ep_regroup_kernel"));
  }
  // The record backward reads back: every rank's tokens, rows sent and received, M, M_r.
  std::int64_t* const rec = hs + HL.end;  // past the layout: free host scratch
  for (std::int64_t i = 0; i < 3 * R; ++i) rec[i] = hs[HL.tok + i];
  for (std::int32_t r = 0; r < R; ++r) {
    rec[3 * R + r] = n.send_rows[r];
    rec[4 * R + r] = n.recv_rows[r];
  }
  rec[5 * R] = n.M;
  rec[5 * R + 1] = n.Mr;
  MOE_TRY(ep_upload(stream, at<std::int64_t>(ws, L.ep_record), rec, ep_record_size(R)));

  // 6-8. Rows out and back, the experts, combine, statistics, dense branches (shared).
  phase_timer clock{nullptr};  // the profile's wall-clock phases are the host path's
  return ep_forward_tail(policy, ops, self, comm, p, a, ws, L, n, clock);
}

/// Backward of an expert-parallel layer on the GPU over NCCL: reads back the counts its
/// forward left in the workspace, then runs the shared composition.
template <config C>
status layer_backward_ep(cuda_policy policy, layer_state<C> const& self, comm::nccl& comm,
                         problem const& p, layer_backward_args<C> const& a, void* ws,
                         workspace_layout const& L) noexcept {
  std::int64_t const T = p.tokens;
  std::int32_t const R = comm.size();
  if (T > 0 && (a.x == nullptr || a.dy == nullptr || a.dx == nullptr))
    return status::error(errc::invalid_argument,
                         "layer_backward_args.x/dy/dx: expected non-null [T, H] for T = %lld",
                         static_cast<long long>(T));
  if (self.host_scratch == nullptr)
    return status::error(errc::invalid_argument,
                         "layer::backward: the layer has no host scratch (bind its parameters)");
  if (group_problem(p).tokens == 0) return {};  // forward checked that every rank agrees
  comm.set_stream(policy.stream);
  std::int64_t* const rec = self.host_scratch;
  MOE_TRY(ep_download(policy.stream, rec, at<std::int64_t>(ws, L.ep_record), ep_record_size(R)));
  std::int64_t* const rows_of = rec + ep_record_size(R);  // past the record: free host scratch
  std::int64_t tb = 0;
  bool const tokens_ok = check_group_tokens(rec, R, comm.rank(), tb, rows_of).ok();
  ep_counts const n{rec + 3 * R, rec + 4 * R, rows_of, rec[5 * R], rec[5 * R + 1], tb};
  // The record must be this problem's forward: its tokens as forward checked them, this rank's
  // T, the group's T, counts that are not negative and add up to M and M_r within the
  // workspace's bounds (garbage would reach ncclSend/ncclRecv as sizes).
  std::int64_t group = 0, sent = 0, received = 0;
  bool sane = tokens_ok && rec[3 * comm.rank()] == T && n.M >= 0 && n.M <= L.rows && n.Mr >= 0 &&
              n.Mr <= L.rows_recv;
  for (std::int32_t r = 0; r < R; ++r) {
    sane = sane && rows_of[r] >= 0 && n.send_rows[r] >= 0 && n.recv_rows[r] >= 0;
    group += rows_of[r];
    sent += n.send_rows[r];
    received += n.recv_rows[r];
  }
  if (!sane || group != L.group_tokens || sent != n.M || received != n.Mr)
    return status::error(errc::invalid_argument,
                         "layer::backward: the workspace does not hold this rank's forward of "
                         "%lld tokens (call forward first, with the same problem, on the same "
                         "stream or after it)",
                         static_cast<long long>(T));
  phase_timer clock{nullptr};
  return ep_backward_steps(policy, layer_glue<cuda_policy>::ops(policy, ws, L), self, comm, p, a,
                           ws, L, n, clock);
}

}  // namespace moe::detail::layer_impl
