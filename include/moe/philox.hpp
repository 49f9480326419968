// SPDX-License-Identifier: Apache-2.0
// Counter-based random numbers: Philox-4x32-10 (Salmon et al., SC'11, as in Random123) and
// the uniform, normal and Gumbel draws built on it. A draw is a pure function of
// (seed, offset), with no state to carry between kernels, so router noise or dropout masks
// drawn by thousands of CUDA threads are reproduced exactly by the CPU backend, and any
// slice of a tensor of draws can be recomputed on its own. The integer part is exact
// everywhere; the float part goes through moe/detail/float_math.hpp, whose functions give
// the same bits under g++ and nvcc.
//
// Stream layout: the stream of seed s is the sequence of 32-bit words w_0, w_1, ... with
//   w_i = philox4x32_10(counter = {lo32(i / 4), hi32(i / 4), 0, 0},
//                       key     = {lo32(s), hi32(s)}).x[i % 4].
// An offset counts words. uniform and gumbel consume 1 word, normal consumes 2; callers
// that share a seed reserve disjoint word ranges (see words_per_draw).
#pragma once

#include <cstdint>  // std::uint32_t, std::uint64_t, std::int64_t, std::uint8_t

#include "moe/detail/float_math.hpp"  // log_det, cos_2pi_det, *_rn
#include "moe/detail/macros.hpp"      // MOE_HOST_DEVICE, MOE_DEVICE_PASS

namespace moe {

/// 128 bits of Philox state: a counter going in, four random words coming out.
struct philox_block {
  std::uint32_t x[4];
};

namespace detail {

/// hi:lo = a * b. The 64-bit product is portable C++; the device pass spells the high half
/// as __umulhi (mul.hi.u32), as Random123's CUDA path does. Both give the same bits.
MOE_HOST_DEVICE void mul_hi_lo(std::uint32_t a, std::uint32_t b, std::uint32_t& hi,
                               std::uint32_t& lo) {
#if MOE_DEVICE_PASS
  hi = __umulhi(a, b);
  lo = a * b;
#else
  std::uint64_t const product = std::uint64_t{a} * b;
  hi = static_cast<std::uint32_t>(product >> 32);
  lo = static_cast<std::uint32_t>(product);
#endif
}

/// block.x[i % 4]. Selects instead of indexing: a runtime index into a register array
/// makes nvcc put the array in local memory.
MOE_HOST_DEVICE std::uint32_t lane(philox_block const& block, std::uint64_t i) {
  unsigned const j = static_cast<unsigned>(i & 3u);
  return j == 0 ? block.x[0] : j == 1 ? block.x[1] : j == 2 ? block.x[2] : block.x[3];
}

/// The counter of the block holding word `offset` of a stream.
MOE_HOST_DEVICE philox_block stream_counter(std::uint64_t offset) {
  std::uint64_t const block = offset >> 2;
  return {{static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32), 0u, 0u}};
}

}  // namespace detail

/// Philox-4x32 with 10 rounds: the bijection counter -> block for a fixed key, exactly as
/// Random123's philox4x32(ctr, key) (its known-answer vectors are in the tests).
/// @param counter 4 words of counter
/// @param key0 low word of the 64-bit key
/// @param key1 high word of the 64-bit key
MOE_HOST_DEVICE philox_block philox4x32_10(philox_block counter, std::uint32_t key0,
                                           std::uint32_t key1) {
  philox_block c = counter;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {  // Weyl sequence: golden ratio and sqrt(3) - 1, as 32-bit fractions
      key0 += 0x9E3779B9u;
      key1 += 0xBB67AE85u;
    }
    std::uint32_t hi0, lo0, hi1, lo1;
    detail::mul_hi_lo(0xD2511F53u, c.x[0], hi0, lo0);
    detail::mul_hi_lo(0xCD9E8D57u, c.x[2], hi1, lo1);
    c = {{hi1 ^ c.x[1] ^ key0, lo1, hi0 ^ c.x[3] ^ key1, lo0}};
  }
  return c;
}

/// Word `offset` of the stream of `seed` (see the layout at the top of this file). One
/// Philox block per call; to use all four words of a block, call philox4x32_10 with
/// detail::stream_counter and the *_from_word functions, or use philox_stream.
MOE_HOST_DEVICE std::uint32_t philox_word(std::uint64_t seed, std::uint64_t offset) {
  philox_block const block =
      philox4x32_10(detail::stream_counter(offset), static_cast<std::uint32_t>(seed),
                    static_cast<std::uint32_t>(seed >> 32));
  return detail::lane(block, offset);
}

/// The kinds of draw; each consumes words_per_draw(d) words of the stream.
enum class distribution : std::uint8_t { uniform, normal, gumbel };

/// Words of the stream one draw consumes: 2 for normal (Box-Muller), 1 otherwise.
MOE_HOST_DEVICE constexpr std::uint64_t words_per_draw(distribution d) {
  return d == distribution::normal ? 2u : 1u;
}

/// (2k + 1) * 2^-24 with k the top 23 bits of `w`: the centres of 2^23 equal cells of
/// (0, 1), so the result is exact in float, never 0 or 1 (logs stay finite), and its
/// mean is exactly 1/2. Range [2^-24, 1 - 2^-24].
MOE_HOST_DEVICE float uniform_from_word(std::uint32_t w) {
  std::uint32_t const odd = ((w >> 9) << 1) | 1u;  // < 2^24: exact in float
  return detail::mul_rn(static_cast<float>(odd), 0x1p-24f);
}

/// Box-Muller: sqrt(-2 ln u1) * cos(2 pi u2) with u1, u2 = uniform_from_word of w1, w2 (the
/// sine half of the pair is not used, so one normal costs two words).
/// |result| <= sqrt(-2 ln 2^-24) = 5.77, so tails beyond 5.77 sigma (probability 8e-9)
/// are cut.
MOE_HOST_DEVICE float normal_from_words(std::uint32_t w1, std::uint32_t w2) {
  float const u1 = uniform_from_word(w1);
  float const u2 = uniform_from_word(w2);
  float const radius = detail::sqrt_rn(detail::mul_rn(-2.0f, detail::log_det(u1)));
  return detail::mul_rn(radius, detail::cos_2pi_det(u2));
}

/// Standard Gumbel: -ln(-ln u) with u = uniform_from_word(w); range [-2.81, 16.6].
MOE_HOST_DEVICE float gumbel_from_word(std::uint32_t w) {
  return -detail::log_det(-detail::log_det(uniform_from_word(w)));
}

/// Uniform on (0, 1) from word `offset` of the stream of `seed` (consumes 1 word).
MOE_HOST_DEVICE float uniform(std::uint64_t seed, std::uint64_t offset) {
  return uniform_from_word(philox_word(seed, offset));
}

/// Standard normal from words `offset` and `offset + 1` of the stream (consumes 2 words;
/// they may straddle two Philox blocks).
MOE_HOST_DEVICE float normal(std::uint64_t seed, std::uint64_t offset) {
  return normal_from_words(philox_word(seed, offset), philox_word(seed, offset + 1));
}

/// Standard Gumbel from word `offset` of the stream of `seed` (consumes 1 word).
MOE_HOST_DEVICE float gumbel(std::uint64_t seed, std::uint64_t offset) {
  return gumbel_from_word(philox_word(seed, offset));
}

/// Draw number `index` of a tensor of draws starting at word `base_offset`: it uses words
/// base_offset + index * words_per_draw(d) onwards, so element i of a tensor filled from
/// base_offset is the same whoever computes it, in any order.
MOE_HOST_DEVICE float draw(distribution d, std::uint64_t seed, std::uint64_t index,
                           std::uint64_t base_offset) {
  switch (d) {
    case distribution::normal:
      return normal(seed, base_offset + 2u * index);
    case distribution::gumbel:
      return gumbel(seed, base_offset + index);
    case distribution::uniform:
      break;
  }
  return uniform(seed, base_offset + index);
}

/// Sequential reader of one stream that computes each Philox block once for its four
/// words. next_*() returns what the free function of the same name returns at offset(),
/// then advances offset() by the words it consumed.
class philox_stream {
 public:
  /// @param seed the stream
  /// @param offset the first word to read
  MOE_HOST_DEVICE explicit philox_stream(std::uint64_t seed, std::uint64_t offset = 0)
      : seed_(seed), offset_(offset) {}

  MOE_HOST_DEVICE std::uint64_t seed() const { return seed_; }
  /// The next word to be read.
  MOE_HOST_DEVICE std::uint64_t offset() const { return offset_; }

  MOE_HOST_DEVICE std::uint32_t next_word() {
    std::uint64_t const block_index = offset_ >> 2;
    if (block_index != block_index_) {
      block_ = philox4x32_10(detail::stream_counter(offset_), static_cast<std::uint32_t>(seed_),
                             static_cast<std::uint32_t>(seed_ >> 32));
      block_index_ = block_index;
    }
    return detail::lane(block_, offset_++);
  }
  MOE_HOST_DEVICE float next_uniform() { return uniform_from_word(next_word()); }
  MOE_HOST_DEVICE float next_normal() {
    std::uint32_t const w1 = next_word();  // sequenced: w1 is word offset, w2 offset + 1
    std::uint32_t const w2 = next_word();
    return normal_from_words(w1, w2);
  }
  MOE_HOST_DEVICE float next_gumbel() { return gumbel_from_word(next_word()); }
  MOE_HOST_DEVICE float next(distribution d) {
    switch (d) {
      case distribution::normal:
        return next_normal();
      case distribution::gumbel:
        return next_gumbel();
      case distribution::uniform:
        break;
    }
    return next_uniform();
  }

 private:
  std::uint64_t seed_;
  std::uint64_t offset_;
  philox_block block_{};
  std::uint64_t block_index_ = ~std::uint64_t{0};  // offset >> 2 < 2^62: never a real block
};

/// Host fill: out[i] = draw(d, seed, i, offset) for i in [0, n). Each Philox block is
/// computed once, not once per word. Does nothing for n <= 0.
/// @param out [n] floats
inline void philox_fill(distribution d, std::uint64_t seed, std::uint64_t offset, float* out,
                        std::int64_t n) {
  philox_stream stream(seed, offset);
  for (std::int64_t i = 0; i < n; ++i) out[i] = stream.next(d);
}

}  // namespace moe
