// SPDX-License-Identifier: Apache-2.0
// moe_emu's stand-in for the two Thrust iterators moe hands to CUB: counting_iterator and
// transform_iterator (random access through operator[], which is all the CUB stand-ins use).
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

namespace thrust {

template <class T>
class counting_iterator {
 public:
  using value_type = T;
  using difference_type = std::ptrdiff_t;
  explicit counting_iterator(T start) : v_(start) {}
  T operator*() const { return v_; }
  T operator[](difference_type i) const { return static_cast<T>(v_ + i); }
  counting_iterator operator+(difference_type i) const {
    return counting_iterator(static_cast<T>(v_ + i));
  }

 private:
  T v_;
};

template <class F, class It>
class transform_iterator {
 public:
  using value_type = std::decay_t<decltype(std::declval<F const&>()(*std::declval<It>()))>;
  using difference_type = std::ptrdiff_t;
  transform_iterator(It it, F f) : it_(it), f_(f) {}
  value_type operator*() const { return f_(*it_); }
  value_type operator[](difference_type i) const { return f_(it_[i]); }
  transform_iterator operator+(difference_type i) const { return transform_iterator(it_ + i, f_); }

 private:
  It it_;
  F f_;
};

template <class It, class F>
transform_iterator<F, It> make_transform_iterator(It it, F f) {
  return transform_iterator<F, It>(it, f);
}

}  // namespace thrust
