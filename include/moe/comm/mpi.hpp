// SPDX-License-Identifier: Apache-2.0
// The MPI communicator: expert parallelism over the ranks of an MPI communicator, with host
// buffers (the CPU backend; it also bootstraps NCCL). Every collective is a blocking MPI call
// on `MPI_Comm`, and every MPI error comes back as a moe::status carrying MPI's error code and
// string (the communicator's error handler is set to MPI_ERRORS_RETURN, so MPI returns codes
// instead of aborting).
//
// Rows, not bytes: exchanges count in rows of `row_bytes` bytes (a contiguous MPI datatype), so
// the int counts of MPI-3 reach 2^31 rows, not 2^31 bytes.
//
// The rule every caller must keep (docs/expert_parallel.md): all ranks of the group call the
// layer's collective steps in the same order, with problems that agree (the layer checks the
// token counts it exchanges, and returns the same error on every rank when they disagree).
#pragma once

#include <mpi.h>

#include <cstddef>  // std::size_t
#include <cstdint>  // std::int32_t, std::int64_t
#include <vector>   // displacement scratch

#include "moe/comm/groups.hpp"  // groups_of
#include "moe/status.hpp"       // moe::status

namespace moe::comm {

/// A group of ranks over an MPI communicator (not owned: the caller keeps it alive).
class mpi {
 public:
  mpi() = default;
  /// Uses `comm` (e.g. MPI_COMM_WORLD, or an expert-parallel group from ep_groups). Sets the
  /// communicator's error handler to MPI_ERRORS_RETURN.
  explicit mpi(MPI_Comm comm) noexcept : comm_(comm) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }

  /// Splits `world` into the expert-parallel group of this rank (consecutive blocks of R ranks)
  /// and its expert-data-parallel group (the same position in every block), see
  /// moe/comm/groups.hpp. The caller frees both with MPI_Comm_free.
  [[nodiscard]] static status split(MPI_Comm world, std::int32_t ep_size, MPI_Comm& ep,
                                    MPI_Comm& edp) noexcept {
    int rank = 0, size = 0;
    MOE_TRY(check(MPI_Comm_rank(world, &rank), "MPI_Comm_rank"));
    MOE_TRY(check(MPI_Comm_size(world, &size), "MPI_Comm_size"));
    rank_groups g;
    MOE_TRY(groups_of(rank, size, ep_size, g));
    MOE_TRY(check(MPI_Comm_split(world, g.ep.group, g.ep.position, &ep), "MPI_Comm_split(ep)"));
    return check(MPI_Comm_split(world, g.edp.group, g.edp.position, &edp), "MPI_Comm_split(edp)");
  }

  [[nodiscard]] std::int32_t rank() const noexcept { return rank_; }
  [[nodiscard]] std::int32_t size() const noexcept { return size_; }
  [[nodiscard]] MPI_Comm handle() const noexcept { return comm_; }

  /// recv [R·n] = every rank's send [n] int64s, in rank order.
  [[nodiscard]] status all_gather(std::int64_t const* send, std::int64_t n,
                                  std::int64_t* recv) const noexcept {
    return check(MPI_Allgather(send, static_cast<int>(n), MPI_INT64_T, recv, static_cast<int>(n),
                               MPI_INT64_T, comm_),
                 "MPI_Allgather");
  }

  /// recv = the concatenation, in rank order, of every rank's `rows` rows of `row_bytes` bytes;
  /// rows_of[r] are rank r's rows (every rank passes the same array).
  [[nodiscard]] status all_gather_v(void const* send, std::int64_t rows, void* recv,
                                    std::int64_t const* rows_of,
                                    std::size_t row_bytes) const noexcept {
    MPI_Datatype row = MPI_DATATYPE_NULL;
    MOE_TRY(make_row(row_bytes, row));
    std::vector<int> counts, displs;
    status s = layout(rows_of, counts, displs);
    if (s.ok())
      s = check(MPI_Allgatherv(rows > 0 ? send : nullptr, static_cast<int>(rows), row, recv,
                               counts.data(), displs.data(), row, comm_),
                "MPI_Allgatherv");
    MPI_Type_free(&row);
    return s;
  }

  /// All-to-all of rows: send_rows[r] rows (contiguous, in rank order) go to rank r;
  /// recv_rows[s] rows arrive from rank s, contiguous in rank order.
  [[nodiscard]] status all_to_all_v(void const* send, std::int64_t const* send_rows, void* recv,
                                    std::int64_t const* recv_rows,
                                    std::size_t row_bytes) const noexcept {
    MPI_Datatype row = MPI_DATATYPE_NULL;
    MOE_TRY(make_row(row_bytes, row));
    std::vector<int> sc, sd, rc, rd;
    status s = layout(send_rows, sc, sd);
    if (s.ok()) s = layout(recv_rows, rc, rd);
    if (s.ok())
      s = check(MPI_Alltoallv(send, sc.data(), sd.data(), row, recv, rc.data(), rd.data(), row,
                              comm_),
                "MPI_Alltoallv");
    MPI_Type_free(&row);
    return s;
  }

  /// In-place sum over the group of n doubles, floats or int64s: every rank gets the same bits,
  /// the sum taken in rank order (r = 0, 1, ...). MPI_Allreduce does not promise that for
  /// floating point (its algorithm may associate differently on different ranks), so floats
  /// are gathered (MPI_Allgather, R·n values of host scratch allocated here) and summed in
  /// order; int64s, whose sum is exact, go through MPI_Allreduce.
  template <class T>
  [[nodiscard]] status all_reduce_sum(T* data, std::int64_t n) const noexcept {
    if (n <= 0) return {};
    if constexpr (static_cast<T>(0.5) == 0) {
      return check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), type_of<T>(), MPI_SUM,
                                 comm_),
                   "MPI_Allreduce(sum)");
    } else {
      std::vector<T> all;
      try {
        all.resize(static_cast<std::size_t>(n) * static_cast<std::size_t>(size_));
      } catch (...) {
        return status::error(errc::out_of_memory,
                             "comm::mpi::all_reduce_sum: no memory for %lld x %d values",
                             static_cast<long long>(n), size_);
      }
      MOE_TRY(check(MPI_Allgather(data, static_cast<int>(n), type_of<T>(), all.data(),
                                  static_cast<int>(n), type_of<T>(), comm_),
                    "MPI_Allgather (ordered sum)"));
      for (std::int64_t i = 0; i < n; ++i) {
        T s = all[static_cast<std::size_t>(i)];
        for (int r = 1; r < size_; ++r) s += all[static_cast<std::size_t>(r * n + i)];
        data[i] = s;
      }
      return {};
    }
  }

  /// In-place maximum over the group of n int64s.
  [[nodiscard]] status all_reduce_max(std::int64_t* data, std::int64_t n) const noexcept {
    return check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_INT64_T, MPI_MAX,
                               comm_),
                 "MPI_Allreduce(max)");
  }

  /// A status for an MPI return code (MPI's error string; `what` names the call).
  [[nodiscard]] static status check(int code, char const* what) noexcept {
    if (code == MPI_SUCCESS) return {};
    char text[MPI_MAX_ERROR_STRING] = {};
    int len = 0;
    MPI_Error_string(code, text, &len);
    return status::native_error(errc::mpi_error, code, "%s failed: %s", what, text);
  }

 private:
  template <class T>
  static MPI_Datatype type_of() noexcept {
    if constexpr (sizeof(T) == 8 && static_cast<T>(0.5) != 0)
      return MPI_DOUBLE;
    else if constexpr (sizeof(T) == 4 && static_cast<T>(0.5) != 0)
      return MPI_FLOAT;
    else
      return MPI_INT64_T;
  }


  static status make_row(std::size_t row_bytes, MPI_Datatype& row) noexcept {
    if (row_bytes == 0 || row_bytes > 2147483647u)
      return status::error(errc::invalid_argument,
                           "comm::mpi: row_bytes: expected 1 <= bytes < 2^31, got %zu", row_bytes);
    MOE_TRY(check(MPI_Type_contiguous(static_cast<int>(row_bytes), MPI_BYTE, &row),
                  "MPI_Type_contiguous"));
    return check(MPI_Type_commit(&row), "MPI_Type_commit");
  }

  status layout(std::int64_t const* rows, std::vector<int>& counts,
                std::vector<int>& displs) const noexcept {
    try {
      counts.resize(static_cast<std::size_t>(size_));
      displs.resize(static_cast<std::size_t>(size_));
    } catch (...) {
      return status::error(errc::out_of_memory, "comm::mpi: no memory for %d counts", size_);
    }
    std::int64_t at = 0;
    for (int r = 0; r < size_; ++r) {
      if (rows[r] < 0 || rows[r] > 2147483647 || at > 2147483647)
        return status::error(errc::invalid_argument,
                             "comm::mpi: rows of rank %d: expected counts and offsets below 2^31 "
                             "rows, got %lld at offset %lld",
                             r, static_cast<long long>(rows[r]), static_cast<long long>(at));
      counts[static_cast<std::size_t>(r)] = static_cast<int>(rows[r]);
      displs[static_cast<std::size_t>(r)] = static_cast<int>(at);
      at += rows[r];
    }
    return {};
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace moe::comm
