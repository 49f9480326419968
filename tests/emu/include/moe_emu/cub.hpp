// SPDX-License-Identifier: Apache-2.0
// moe_emu's stand-in for the parts of CUB that moe calls: DeviceRadixSort::SortPairs (pointers
// and DoubleBuffer), DeviceScan::ExclusiveSum/InclusiveSum, DeviceHistogram::HistogramEven and
// BlockReduce. Results are CUB's documented ones (stable radix order over the selected bits,
// CUB's key twiddling for signed and floating keys). Temporary storage: a size query returns a
// size that grows with the item count, and a call given less than the size the query reports
// for the same arguments fails with cudaErrorInvalidValue (and a message), so workspace sizing
// bugs show up here.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cuda_runtime.h"

namespace cub {

template <class T>
struct DoubleBuffer {
  T* d_buffers[2] = {nullptr, nullptr};
  int selector = 0;
  DoubleBuffer() = default;
  DoubleBuffer(T* current, T* alternate) : d_buffers{current, alternate} {}
  T* Current() const { return d_buffers[selector]; }
  T* Alternate() const { return d_buffers[selector ^ 1]; }
};

namespace emu_detail {

inline std::size_t temp_for(long long items) {
  return 1024 + 16 * static_cast<std::size_t>(items < 0 ? 0 : items);
}

/// Handles the size query (temp null) and checks a real call's storage.
inline bool temp_query(void* temp, std::size_t& bytes, long long items, cudaError_t& err,
                       char const* what) {
  std::size_t const need = temp_for(items);
  if (temp == nullptr) {
    bytes = need;
    err = cudaSuccess;
    return true;
  }
  if (bytes < need) {
    std::fprintf(stderr, "moe_emu: %s given %zu bytes of temporary storage, needs %zu\n", what,
                 bytes, need);
    err = cudaErrorInvalidValue;
    return true;
  }
  return false;
}

/// CUB's order-preserving unsigned image of a key.
template <class K>
auto twiddle(K k) {
  if constexpr (std::is_floating_point_v<K>) {
    using U = std::conditional_t<sizeof(K) == 4, std::uint32_t, std::uint64_t>;
    U u;
    std::memcpy(&u, &k, sizeof(K));
    U const sign = U{1} << (8 * sizeof(K) - 1);
    return (u & sign) != 0 ? static_cast<U>(~u) : static_cast<U>(u | sign);
  } else if constexpr (std::is_signed_v<K>) {
    using U = std::make_unsigned_t<K>;
    return static_cast<U>(static_cast<U>(k) ^ (U{1} << (8 * sizeof(K) - 1)));
  } else {
    return k;
  }
}

template <class K>
std::uint64_t key_bits(K k, int begin_bit, int end_bit) {
  auto const u = static_cast<std::uint64_t>(twiddle(k));
  int const width = end_bit - begin_bit;
  std::uint64_t const mask = width >= 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << width) - 1);
  return (u >> begin_bit) & mask;
}

template <class K, class V>
void sort_pairs(K const* keys_in, K* keys_out, V const* vals_in, V* vals_out, long long n,
                int begin_bit, int end_bit) {
  std::vector<long long> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0LL);
  std::stable_sort(order.begin(), order.end(), [&](long long a, long long b) {
    return key_bits(keys_in[a], begin_bit, end_bit) < key_bits(keys_in[b], begin_bit, end_bit);
  });
  std::vector<K> k(static_cast<std::size_t>(n));
  std::vector<V> v(static_cast<std::size_t>(n));
  for (long long i = 0; i < n; ++i) {
    k[static_cast<std::size_t>(i)] = keys_in[order[static_cast<std::size_t>(i)]];
    if (vals_in != nullptr)
      v[static_cast<std::size_t>(i)] = vals_in[order[static_cast<std::size_t>(i)]];
  }
  std::copy(k.begin(), k.end(), keys_out);
  if (vals_out != nullptr) std::copy(v.begin(), v.end(), vals_out);
}

inline bool bad_bits(int begin_bit, int end_bit, int key_bytes) {
  return begin_bit < 0 || end_bit > 8 * key_bytes || begin_bit >= end_bit;
}

}  // namespace emu_detail

struct DeviceRadixSort {
  template <class K, class V, class N>
  static cudaError_t SortPairs(void* temp, std::size_t& bytes, K const* keys_in, K* keys_out,
                               V const* vals_in, V* vals_out, N n, int begin_bit = 0,
                               int end_bit = sizeof(K) * 8, cudaStream_t = nullptr) {
    cudaError_t err;
    if (emu_detail::temp_query(temp, bytes, static_cast<long long>(n), err, "SortPairs"))
      return err;
    if (emu_detail::bad_bits(begin_bit, end_bit, sizeof(K))) return cudaErrorInvalidValue;
    moe_emu::enqueue([=] {
      emu_detail::sort_pairs(keys_in, keys_out, vals_in, vals_out, static_cast<long long>(n),
                             begin_bit, end_bit);
    });
    return cudaSuccess;
  }
  /// The sorted pairs go to the alternate buffers, the selectors flip and the old buffers are
  /// overwritten (CUB may end in either buffer and overwrite both; this exercises the callers'
  /// use of Current() alone).
  template <class K, class V, class N>
  static cudaError_t SortPairs(void* temp, std::size_t& bytes, DoubleBuffer<K>& keys,
                               DoubleBuffer<V>& vals, N n, int begin_bit = 0,
                               int end_bit = sizeof(K) * 8, cudaStream_t = nullptr) {
    cudaError_t err;
    if (emu_detail::temp_query(temp, bytes, static_cast<long long>(n), err, "SortPairs"))
      return err;
    if (emu_detail::bad_bits(begin_bit, end_bit, sizeof(K))) return cudaErrorInvalidValue;
    moe_emu::enqueue([kc = keys.Current(), ka = keys.Alternate(), vc = vals.Current(),
                      va = vals.Alternate(), n, begin_bit, end_bit] {
      emu_detail::sort_pairs(kc, ka, vc, va, static_cast<long long>(n), begin_bit, end_bit);
      // CUB may leave garbage in either buffer: the input buffers' old contents are gone.
      std::memset(kc, 0xa5, static_cast<std::size_t>(n) * sizeof(K));
      std::memset(vc, 0xa5, static_cast<std::size_t>(n) * sizeof(V));
    });
    keys.selector ^= 1;
    vals.selector ^= 1;
    return cudaSuccess;
  }
};

struct DeviceScan {
  template <class In, class Out, class N>
  static cudaError_t ExclusiveSum(void* temp, std::size_t& bytes, In in, Out out, N n,
                                  cudaStream_t = nullptr) {
    return scan(temp, bytes, in, out, static_cast<long long>(n), false);
  }
  template <class In, class Out, class N>
  static cudaError_t InclusiveSum(void* temp, std::size_t& bytes, In in, Out out, N n,
                                  cudaStream_t = nullptr) {
    return scan(temp, bytes, in, out, static_cast<long long>(n), true);
  }

 private:
  /// Sums in the input's value type, in index order.
  template <class In, class Out>
  static cudaError_t scan(void* temp, std::size_t& bytes, In in, Out out, long long n,
                          bool inclusive) {
    cudaError_t err;
    if (emu_detail::temp_query(temp, bytes, n, err, "DeviceScan")) return err;
    moe_emu::enqueue([=]() mutable {
      using A = std::decay_t<decltype(in[0])>;
      A sum{};
      for (long long i = 0; i < n; ++i) {
        A const v = in[i];
        if (!inclusive) out[i] = sum;
        sum = sum + v;
        if (inclusive) out[i] = sum;
      }
    });
    return cudaSuccess;
  }
};

struct DeviceHistogram {
  /// num_levels - 1 bins of equal width over [lower, upper); samples outside are not counted.
  template <class In, class C, class L, class N>
  static cudaError_t HistogramEven(void* temp, std::size_t& bytes, In samples, C* hist,
                                   int num_levels, L lower, L upper, N n, cudaStream_t = nullptr) {
    cudaError_t err;
    if (emu_detail::temp_query(temp, bytes, static_cast<long long>(n), err, "HistogramEven"))
      return err;
    if (num_levels < 2 || !(lower < upper)) return cudaErrorInvalidValue;
    moe_emu::enqueue([=] {
      int const bins = num_levels - 1;
      for (int b = 0; b < bins; ++b) hist[b] = 0;
      for (long long i = 0; i < static_cast<long long>(n); ++i) {
        auto const s = samples[i];
        if (s < lower || !(s < upper)) continue;
        long double const f =
            static_cast<long double>(s - lower) * bins / static_cast<long double>(upper - lower);
        int b = static_cast<int>(f);
        if (b >= bins) b = bins - 1;
        ++hist[b];
      }
    });
    return cudaSuccess;
  }
};

/// BlockReduce: thread 0 receives the block's sum (in thread order), as CUB documents; the
/// other threads' results are unspecified (here: their own input).
template <class T, int Threads>
class BlockReduce {
 public:
  struct TempStorage {
    T values[Threads];
  };
  explicit BlockReduce(TempStorage& s) : s_(s) {}
  T Sum(T v) {
    return Reduce(v, [](T a, T b) { return a + b; });
  }
  template <class Op>
  T Reduce(T v, Op op) {
    int const t = moe_emu::linear_thread();
    if (t >= Threads) moe_emu::fail("BlockReduce called by more threads than its template says");
    s_.values[t] = v;
    moe_emu::syncthreads();
    if (t != 0) return v;
    T r = s_.values[0];
    for (int i = 1; i < Threads; ++i) r = op(r, s_.values[i]);
    return r;
  }

 private:
  TempStorage& s_;
};

}  // namespace cub
