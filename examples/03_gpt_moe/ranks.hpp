// SPDX-License-Identifier: Apache-2.0
// The GPT-MoE example's ranks. moe_gpt is one rank; moe_gpt_mpi (built with MOE_GPT_MPI, run
// under `mpirun -np R`) is R ranks of MPI_COMM_WORLD, each training on its share of every
// global batch: the MoE layers are expert-parallel over the ranks (moe::comm::mpi, E/R experts
// each) and every other parameter — embeddings, attention, LayerNorms, dense FFNs, the routers'
// W_g — is replicated and trained data-parallel.
//
// Everything the ranks add up — the replicated parameters' gradients, losses, statistics — is
// summed in a FIXED order: an MPI_Allgather of every rank's values, then, on every rank, a sum
// in rank order (in double, rounded once for the float gradients). So every rank gets the same
// bits, the replicated parameters stay identical on every rank without a broadcast, and a run
// is reproducible for a given R. MPI_Allreduce promises neither: the standard only advises
// that every rank get the same result, and Open MPI picks its reduction algorithm (and so the
// order of the sum) by message size and process count. The gather moves R times the data of a
// ring all-reduce: a few MB a step at this model's size, small beside the step's compute.
#pragma once

#include <cmath>    // std::sqrt
#include <cstdint>  // std::int64_t
#include <cstdio>   // std::fprintf
#include <cstdlib>  // std::exit, EXIT_FAILURE
#include <vector>   // std::vector

#if defined(MOE_GPT_MPI)
#include <mpi.h>  // MPI_Allgather, MPI_Abort
#endif

#include "model.hpp"     // gpt::tensor_info
#include "optim.hpp"     // gpt::global_norm
#include "parallel.hpp"  // gpt::parallel_for

namespace gpt {

/// Stops the program: with MPI, every rank (a rank that left alone would leave the others
/// waiting in a collective).
[[noreturn]] inline void fail() {
#if defined(MOE_GPT_MPI)
  MPI_Abort(MPI_COMM_WORLD, EXIT_FAILURE);
#endif
  std::exit(EXIT_FAILURE);
}

class ranks {
 public:
#if defined(MOE_GPT_MPI)
  explicit ranks(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
#endif
  ranks() = default;

  [[nodiscard]] int rank() const noexcept {
    return rank_;
  }
  [[nodiscard]] int size() const noexcept {
    return size_;
  }

  /// v[i] = Σ over ranks r = 0, 1, ... of rank r's v[i] (every rank passes the same length).
  template <class T>
  void sum(std::vector<T>& v) {
    if (size_ == 1) return;
    std::vector<T> all;
    gather(v.data(), static_cast<std::int64_t>(v.size()), all);
    for (std::size_t i = 0; i < v.size(); ++i) {
      T s = 0;
      for (int r = 0; r < size_; ++r) s += all[static_cast<std::size_t>(r) * v.size() + i];
      v[i] = s;
    }
  }

  /// The mean over ranks of x (the group's mean of per-rank means over equal shares).
  double mean(double x) {
    std::vector<double> v{x};
    sum(v);
    return v[0] / static_cast<double>(size_);
  }

  /// Sums the gradients of the replicated parameters (every tensor but the routed experts')
  /// over the ranks, in rank order; the experts' gradients are this rank's own.
  void reduce_gradients(std::vector<float>& g, std::vector<tensor_info> const& tensors,
                        int threads) {
    if (size_ == 1) return;
    std::int64_t n = 0;
    for (auto const& t : tensors)
      if (!t.expert) n += t.size;
    send_.resize(static_cast<std::size_t>(n));
    std::int64_t at = 0;
    for (auto const& t : tensors)
      if (!t.expert)
        for (std::int64_t i = 0; i < t.size; ++i)
          send_[static_cast<std::size_t>(at++)] = g[static_cast<std::size_t>(t.offset + i)];
    gather(send_.data(), n, recv_);
    parallel_for(threads, n, [&](std::int64_t i) {
      double s = 0.0;
      for (int r = 0; r < size_; ++r)
        s += static_cast<double>(recv_[static_cast<std::size_t>(r * n + i)]);
      send_[static_cast<std::size_t>(i)] = static_cast<float>(s);
    });
    at = 0;
    for (auto const& t : tensors)
      if (!t.expert)
        for (std::int64_t i = 0; i < t.size; ++i)
          g[static_cast<std::size_t>(t.offset + i)] = send_[static_cast<std::size_t>(at++)];
  }

  /// The whole model's gradient L2 norm: the replicated parameters once, every rank's experts.
  /// One rank: gpt::global_norm (its fixed chunked order).
  double global_norm(std::vector<float> const& g, std::vector<tensor_info> const& tensors,
                     int threads) {
    if (size_ == 1) return gpt::global_norm(g, threads);
    double replicated = 0.0;
    std::vector<double> experts{0.0};
    for (auto const& t : tensors)
      for (std::int64_t i = 0; i < t.size; ++i) {
        auto const v = static_cast<double>(g[static_cast<std::size_t>(t.offset + i)]);
        (t.expert ? experts[0] : replicated) += v * v;
      }
    sum(experts);
    return std::sqrt(replicated + experts[0]);
  }

 private:
  template <class T>
  void gather(T const* send, std::int64_t n, std::vector<T>& all) {
    all.resize(static_cast<std::size_t>(n) * static_cast<std::size_t>(size_));
#if defined(MOE_GPT_MPI)
    if (n > 2147483647) {
      std::fprintf(stderr, "error: ranks: %lld values exceed MPI's int count\n",
                   static_cast<long long>(n));
      fail();
    }
    MPI_Datatype const type = sizeof(T) == 4             ? MPI_FLOAT
                              : static_cast<T>(0.5) != 0 ? MPI_DOUBLE
                                                         : MPI_INT64_T;
    int const code = MPI_Allgather(send, static_cast<int>(n), type, all.data(), static_cast<int>(n),
                                   type, comm_);
    if (code != MPI_SUCCESS) {
      std::fprintf(stderr, "error: MPI_Allgather failed (code %d)\n", code);
      fail();
    }
#else
    for (std::int64_t i = 0; i < n; ++i) all[static_cast<std::size_t>(i)] = send[i];
#endif
  }

#if defined(MOE_GPT_MPI)
  MPI_Comm comm_ = MPI_COMM_NULL;
#endif
  int rank_ = 0, size_ = 1;
  std::vector<float> send_, recv_;  // reduce_gradients' scratch, kept from step to step
};

}  // namespace gpt
