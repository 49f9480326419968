// SPDX-License-Identifier: Apache-2.0
// The NCCL communicator: expert parallelism over GPUs, with device buffers. Exchanges are
// ncclSend/ncclRecv pairs inside one ncclGroupStart/End on the communicator's own stream,
// which is ordered after the caller's compute stream by an event before each collective and
// before the compute stream by an event after it — so callers enqueue as usual and never
// synchronise. Row counts are host values (NCCL needs them to post the sends; the expert-
// parallel layer gets them from an exchange of counts, docs/expert_parallel.md).
//
// Errors: every NCCL and CUDA failure comes back as a moe::status with the native code and
// NCCL's message; `poll()` reports NCCL's asynchronous errors (a peer that failed), which a
// caller should check between steps. Bootstrap: rank 0 calls unique_id() and distributes the
// id (e.g. MPI_Bcast of its bytes over the group's MPI communicator); every rank then calls
// init(id, size, rank).
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t
#include <memory>   // std::shared_ptr
#include <new>      // std::bad_alloc

#include "moe/status.hpp"  // moe::status

namespace moe::comm {

/// A group of ranks over an NCCL communicator. Copies share the communicator, its stream and
/// its events (reference-counted: the last copy destroys them), so every layer of a model can
/// hold one; each copy has its own compute stream (set_stream). Use a communicator and its
/// copies from one host thread at a time.
class nccl {
 public:
  nccl() = default;

  /// A fresh unique id (on one rank; distribute it to the others, e.g. with MPI_Bcast).
  [[nodiscard]] static status unique_id(ncclUniqueId& id) noexcept {
    return check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  }

  /// Joins the group of `size` ranks identified by `id` as `rank`, on the current device.
  [[nodiscard]] status init(ncclUniqueId const& id, std::int32_t size, std::int32_t rank) noexcept {
    if (size < 1 || rank < 0 || rank >= size)
      return status::error(errc::invalid_argument,
                           "comm::nccl::init: expected 0 <= rank < size, got rank %d of %d", rank,
                           size);
    shared_.reset();
    rank_ = 0;
    size_ = 1;
    std::shared_ptr<handles> h;
    try {
      h = std::make_shared<handles>();
    } catch (std::bad_alloc const&) {
      return status::error(errc::out_of_memory, "comm::nccl::init: no host memory");
    }
    MOE_TRY(check(ncclCommInitRank(&h->comm, size, id, rank), "ncclCommInitRank"));
    MOE_TRY(cuda(cudaStreamCreateWithFlags(&h->stream, cudaStreamNonBlocking), "cudaStreamCreate"));
    MOE_TRY(cuda(cudaEventCreateWithFlags(&h->before, cudaEventDisableTiming), "cudaEventCreate"));
    MOE_TRY(cuda(cudaEventCreateWithFlags(&h->after, cudaEventDisableTiming), "cudaEventCreate"));
    shared_ = static_cast<std::shared_ptr<handles>&&>(h);
    rank_ = rank;
    size_ = size;
    return {};
  }

  [[nodiscard]] std::int32_t rank() const noexcept { return rank_; }
  [[nodiscard]] std::int32_t size() const noexcept { return size_; }
  [[nodiscard]] ncclComm_t handle() const noexcept {
    return shared_ != nullptr ? shared_->comm : nullptr;
  }

  /// The compute stream the next collectives are ordered against (default: the legacy stream).
  void set_stream(cudaStream_t compute) noexcept { compute_ = compute; }

  /// NCCL's asynchronous error state: a failed peer or network shows up here.
  [[nodiscard]] status poll() const noexcept {
    if (shared_ == nullptr) return {};
    ncclResult_t async = ncclSuccess;
    MOE_TRY(check(ncclCommGetAsyncError(shared_->comm, &async), "ncclCommGetAsyncError"));
    return check(async, "NCCL asynchronous error");
  }

  /// All-to-all of rows: send_rows[r] rows (contiguous, in rank order) go to rank r;
  /// recv_rows[s] rows arrive from rank s. Counts are host arrays; buffers device memory.
  [[nodiscard]] status all_to_all_v(void const* send, std::int64_t const* send_rows, void* recv,
                                    std::int64_t const* recv_rows,
                                    std::size_t row_bytes) const noexcept {
    MOE_TRY(begin());
    MOE_TRY(check(ncclGroupStart(), "ncclGroupStart"));
    std::size_t sent = 0, received = 0;
    status s{};
    for (std::int32_t r = 0; r < size_ && s.ok(); ++r) {
      auto const out = static_cast<std::size_t>(send_rows[r]) * row_bytes;
      auto const in = static_cast<std::size_t>(recv_rows[r]) * row_bytes;
      if (out > 0)
        s = check(ncclSend(static_cast<char const*>(send) + sent, out, ncclChar, r, shared_->comm,
                           shared_->stream),
                  "ncclSend");
      if (s.ok() && in > 0)
        s = check(ncclRecv(static_cast<char*>(recv) + received, in, ncclChar, r, shared_->comm,
                           shared_->stream),
                  "ncclRecv");
      sent += out;
      received += in;
    }
    status const end = check(ncclGroupEnd(), "ncclGroupEnd");
    MOE_TRY(s);
    MOE_TRY(end);
    return finish();
  }

  /// recv = every rank's `rows` rows, concatenated in rank order (rows_of: host array).
  [[nodiscard]] status all_gather_v(void const* send, std::int64_t rows, void* recv,
                                    std::int64_t const* rows_of,
                                    std::size_t row_bytes) const noexcept {
    MOE_TRY(begin());
    MOE_TRY(check(ncclGroupStart(), "ncclGroupStart"));
    std::size_t at = 0;
    status s{};
    auto const mine = static_cast<std::size_t>(rows) * row_bytes;
    for (std::int32_t r = 0; r < size_ && s.ok(); ++r) {
      auto const in = static_cast<std::size_t>(rows_of[r]) * row_bytes;
      if (mine > 0)
        s = check(ncclSend(send, mine, ncclChar, r, shared_->comm, shared_->stream), "ncclSend");
      if (s.ok() && in > 0)
        s = check(ncclRecv(static_cast<char*>(recv) + at, in, ncclChar, r, shared_->comm,
                           shared_->stream),
                  "ncclRecv");
      at += in;
    }
    status const end = check(ncclGroupEnd(), "ncclGroupEnd");
    MOE_TRY(s);
    MOE_TRY(end);
    return finish();
  }

  /// In-place sum over the group of n floats, doubles or int64s (device memory).
  template <class T>
  [[nodiscard]] status all_reduce_sum(T* data, std::int64_t n) const noexcept {
    MOE_TRY(begin());
    MOE_TRY(check(ncclAllReduce(data, data, static_cast<std::size_t>(n), type_of<T>(), ncclSum,
                                shared_->comm, shared_->stream),
                  "ncclAllReduce(sum)"));
    return finish();
  }

  /// In-place maximum over the group of n int64s (device memory).
  [[nodiscard]] status all_reduce_max(std::int64_t* data, std::int64_t n) const noexcept {
    MOE_TRY(begin());
    MOE_TRY(check(ncclAllReduce(data, data, static_cast<std::size_t>(n), ncclInt64, ncclMax,
                                shared_->comm, shared_->stream),
                  "ncclAllReduce(max)"));
    return finish();
  }

 private:
  template <class T>
  static ncclDataType_t type_of() noexcept {
    if constexpr (sizeof(T) == 8 && static_cast<T>(0.5) != 0)
      return ncclFloat64;
    else if constexpr (sizeof(T) == 4 && static_cast<T>(0.5) != 0)
      return ncclFloat32;
    else
      return ncclInt64;
  }

  static status check(ncclResult_t r, char const* what) noexcept {
    if (r == ncclSuccess) return {};
    return status::native_error(errc::nccl_error, static_cast<int>(r), "%s failed: %s", what,
                                ncclGetErrorString(r));
  }
  static status cuda(cudaError_t e, char const* what) noexcept {
    if (e == cudaSuccess) return {};
    return status::native_error(errc::cuda_error, static_cast<int>(e), "%s failed: %s", what,
                                cudaGetErrorString(e));
  }

  /// The communicator's stream waits for the work enqueued so far on the compute stream.
  status begin() const noexcept {
    if (shared_ == nullptr)
      return status::error(errc::invalid_argument, "comm::nccl: not initialised (call init)");
    MOE_TRY(cuda(cudaEventRecord(shared_->before, compute_), "cudaEventRecord"));
    return cuda(cudaStreamWaitEvent(shared_->stream, shared_->before, 0), "cudaStreamWaitEvent");
  }
  /// The compute stream waits for the collective.
  status finish() const noexcept {
    MOE_TRY(cuda(cudaEventRecord(shared_->after, shared_->stream), "cudaEventRecord"));
    return cuda(cudaStreamWaitEvent(compute_, shared_->after, 0), "cudaStreamWaitEvent");
  }

  /// The NCCL communicator, its stream and events, destroyed with the last copy.
  struct handles {
    ncclComm_t comm = nullptr;
    cudaStream_t stream = nullptr;
    cudaEvent_t before = nullptr;
    cudaEvent_t after = nullptr;
    handles() = default;
    handles(handles const&) = delete;
    handles& operator=(handles const&) = delete;
    ~handles() {
      if (comm != nullptr) ncclCommDestroy(comm);
      if (stream != nullptr) cudaStreamDestroy(stream);
      if (before != nullptr) cudaEventDestroy(before);
      if (after != nullptr) cudaEventDestroy(after);
    }
  };

  std::shared_ptr<handles> shared_;
  cudaStream_t compute_ = nullptr;
  std::int32_t rank_ = 0;
  std::int32_t size_ = 1;
};

}  // namespace moe::comm
