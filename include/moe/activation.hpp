// SPDX-License-Identifier: Apache-2.0
// The expert FFN's activation functions and their derivatives, as MOE_HOST_DEVICE functions of
// float or double: the host grouped GEMM's epilogue calls them, and the CUDA epilogue will call
// the very same functions on its fp32 accumulators. `moe::activation` itself (identity, relu,
// gelu, gelu_tanh, silu, swiglu, geglu) is declared in config.hpp.
//
// Gated activations (swiglu, geglu) act on a pair (gate g, up u): out = f(g) · u with
// f = silu for swiglu and f = gelu (erf form) for geglu. The plain ones ignore u: out = f(g).
// gelu is the exact x·Φ(x) = ½x(1 + erf(x/√2)) (torch's default approximate='none');
// gelu_tanh is ½x(1 + tanh(√(2/π)(x + 0.044715x³))) (torch's approximate='tanh', GPT-2's
// gelu_new). Host and device may differ in the last bits of erf/exp/tanh (glibc vs CUDA's
// libdevice); each side is deterministic on its own.
#pragma once

#include "moe/config.hpp"         // moe::activation, is_gated
#include "moe/detail/macros.hpp"  // MOE_HOST_DEVICE, MOE_DEVICE_PASS

#if !MOE_DEVICE_PASS
#include <cmath>  // std::erf, std::exp, std::tanh
#endif

namespace moe {

namespace detail {
// The three transcendental functions the activations need: glibc on the host, CUDA's
// device math library in a device pass (std:: overloads are host functions to nvcc).
MOE_HOST_DEVICE float act_erf(float x) {
#if MOE_DEVICE_PASS
  return erff(x);
#else
  return std::erf(x);
#endif
}
MOE_HOST_DEVICE double act_erf(double x) {
#if MOE_DEVICE_PASS
  return erf(x);
#else
  return std::erf(x);
#endif
}
MOE_HOST_DEVICE float act_exp(float x) {
#if MOE_DEVICE_PASS
  return expf(x);
#else
  return std::exp(x);
#endif
}
MOE_HOST_DEVICE double act_exp(double x) {
#if MOE_DEVICE_PASS
  return exp(x);
#else
  return std::exp(x);
#endif
}
MOE_HOST_DEVICE float act_tanh(float x) {
#if MOE_DEVICE_PASS
  return tanhf(x);
#else
  return std::tanh(x);
#endif
}
MOE_HOST_DEVICE double act_tanh(double x) {
#if MOE_DEVICE_PASS
  return tanh(x);
#else
  return std::tanh(x);
#endif
}
}  // namespace detail

/// The function a gated activation applies to its gate (silu for swiglu, gelu for geglu); the
/// activation itself otherwise.
MOE_HOST_DEVICE constexpr activation gate_function(activation a) noexcept {
  return a == activation::swiglu ? activation::silu : a == activation::geglu ? activation::gelu : a;
}

/// is_gated(Act) as a constant that device code may read (nvcc does not let a device function
/// call the host constexpr `is_gated`, even in a constant expression).
template <activation Act>
inline constexpr bool is_gated_v = is_gated(Act);

// geglu is the last enumerator: one added after it must extend is_valid_activation and the
// switch of with_activation (to_string names every enumerator, and nothing past them).
static_assert(to_string(static_cast<activation>(static_cast<int>(activation::geglu) + 1))[0] == '?',
              "moe::activation gained an enumerator: update moe/activation.hpp");

/// True for the enumerators of `moe::activation` (a value cast from a bad integer is not).
constexpr bool is_valid_activation(activation a) noexcept {
  return static_cast<unsigned>(a) <= static_cast<unsigned>(activation::geglu);
}

/// f(x) for the plain function of `Act` (the gate's function when `Act` is gated).
/// @tparam T  float or double
template <activation Act, class T>
MOE_HOST_DEVICE T activation_value(T x) {
  constexpr activation f = gate_function(Act);
  if constexpr (f == activation::identity) {
    return x;
  } else if constexpr (f == activation::relu) {
    return x > T(0) ? x : T(0);
  } else if constexpr (f == activation::gelu) {
    return T(0.5) * x * (T(1) + detail::act_erf(x * T(0.70710678118654752440)));
  } else if constexpr (f == activation::gelu_tanh) {
    T const inner = T(0.79788456080286535588) * (x + T(0.044715) * x * x * x);
    return T(0.5) * x * (T(1) + detail::act_tanh(inner));
  } else {  // silu: x · σ(x); exp(-x) = inf for very negative x gives σ = 0, f = -0
    return x / (T(1) + detail::act_exp(-x));
  }
}

/// f'(x) for the plain function of `Act` (the gate's function when `Act` is gated). relu'(0) = 0.
/// @tparam T  float or double
template <activation Act, class T>
MOE_HOST_DEVICE T activation_derivative(T x) {
  constexpr activation f = gate_function(Act);
  if constexpr (f == activation::identity) {
    return T(1);
  } else if constexpr (f == activation::relu) {
    return x > T(0) ? T(1) : T(0);
  } else if constexpr (f == activation::gelu) {
    // Φ(x) + x·φ(x), φ(x) = exp(-x²/2)/√(2π)
    T const cdf = T(0.5) * (T(1) + detail::act_erf(x * T(0.70710678118654752440)));
    T const pdf = T(0.39894228040143267794) * detail::act_exp(T(-0.5) * x * x);
    return cdf + x * pdf;
  } else if constexpr (f == activation::gelu_tanh) {
    T const c = T(0.79788456080286535588);
    T const t = detail::act_tanh(c * (x + T(0.044715) * x * x * x));
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * c * (T(1) + T(0.134145) * x * x);
  } else {  // silu: σ(x)(1 + x(1 − σ(x)))
    T const s = T(1) / (T(1) + detail::act_exp(-x));
    return s * (T(1) + x * (T(1) - s));
  }
}

/// The epilogue's output for one element: f(gate) · up when `Act` is gated, f(gate) otherwise
/// (`up` ignored).
template <activation Act, class T>
MOE_HOST_DEVICE T activation_forward(T gate, T up) {
  if constexpr (is_gated_v<Act>)
    return activation_value<Act>(gate) * up;
  else
    return (void)up, activation_value<Act>(gate);
}

/// The gradients of `activation_forward` given the gradient `dy` of its output:
/// gated: d_gate = dy · up · f'(gate), d_up = dy · f(gate); plain: d_gate = dy · f'(gate),
/// d_up = 0.
template <activation Act, class T>
MOE_HOST_DEVICE void activation_backward(T gate, T up, T dy, T& d_gate, T& d_up) {
  if constexpr (is_gated_v<Act>) {
    d_gate = dy * up * activation_derivative<Act>(gate);
    d_up = dy * activation_value<Act>(gate);
  } else {
    (void)up;
    d_gate = dy * activation_derivative<Act>(gate);
    d_up = T(0);
  }
}

/// Calls `f.template operator()<A>()` with the compile-time twin of the run-time `a` (an
/// invalid value calls it with identity; the ops check `is_valid_activation` first).
template <class F>
decltype(auto) with_activation(activation a, F&& f) {
  switch (a) {
    case activation::relu:
      return f.template operator()<activation::relu>();
    case activation::gelu:
      return f.template operator()<activation::gelu>();
    case activation::gelu_tanh:
      return f.template operator()<activation::gelu_tanh>();
    case activation::silu:
      return f.template operator()<activation::silu>();
    case activation::swiglu:
      return f.template operator()<activation::swiglu>();
    case activation::geglu:
      return f.template operator()<activation::geglu>();
    case activation::identity:
      break;
  }
  return f.template operator()<activation::identity>();
}

}  // namespace moe
