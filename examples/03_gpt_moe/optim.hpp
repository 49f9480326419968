// SPDX-License-Identifier: Apache-2.0
// The GPT-MoE example's optimiser: AdamW (decoupled weight decay on the matrices only), a
// learning rate that warms up linearly and then decays along a cosine to a tenth of its peak,
// and clipping of the gradients' global L2 norm. The norm is summed in double in fixed
// 4096-element chunks (one iteration each) and the chunks are added serially, so it — and so
// every update — is bitwise the same for any thread count.
#pragma once

#include <cmath>    // std::sqrt, std::cos, std::pow
#include <cstdint>  // std::int64_t, std::uint8_t
#include <vector>   // std::vector

#include "model.hpp"     // gpt::tensor_info
#include "parallel.hpp"  // gpt::parallel_for

namespace gpt {

struct adamw_options {
  float lr = 3e-3f;           ///< peak learning rate
  float min_lr_ratio = 0.1f;  ///< the cosine ends at lr · min_lr_ratio
  std::int64_t warmup = 30;   ///< steps of linear warm-up
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float weight_decay = 0.1f;  ///< on matrices (tensor_info::decay)
  float clip = 1.0f;          ///< max global gradient norm; 0 = no clipping
};

/// The learning rate of step `step` (0-based) of a run of `total` steps.
inline float learning_rate(adamw_options const& o, std::int64_t step, std::int64_t total) {
  if (step < o.warmup) return o.lr * static_cast<float>(step + 1) / static_cast<float>(o.warmup);
  double const span = static_cast<double>(total - o.warmup > 1 ? total - o.warmup - 1 : 1);
  double const progress = std::min(1.0, static_cast<double>(step - o.warmup) / span);
  double const lo = static_cast<double>(o.lr) * static_cast<double>(o.min_lr_ratio);
  return static_cast<float>(lo + 0.5 * (static_cast<double>(o.lr) - lo) *
                                     (1.0 + std::cos(3.14159265358979323846 * progress)));
}

/// L2 norm of `g`, summed in a fixed order (see the file comment).
inline double global_norm(std::vector<float> const& g, int threads) {
  constexpr std::int64_t chunk = 4096;
  auto const n = static_cast<std::int64_t>(g.size());
  std::int64_t const chunks = (n + chunk - 1) / chunk;
  std::vector<double> part(static_cast<std::size_t>(chunks), 0.0);
  parallel_for(threads, chunks, [&](std::int64_t c) {
    double s = 0.0;
    for (std::int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) {
      auto const v = static_cast<double>(g[static_cast<std::size_t>(i)]);
      s += v * v;
    }
    part[static_cast<std::size_t>(c)] = s;
  });
  double total = 0.0;
  for (double s : part) total += s;
  return std::sqrt(total);
}

/// AdamW over one flat parameter buffer: first and second moments of the same layout.
class adamw {
 public:
  adamw(adamw_options const& o, std::vector<tensor_info> const& tensors, std::int64_t size)
      : o_(o),
        m_(static_cast<std::size_t>(size), 0.0f),
        v_(static_cast<std::size_t>(size), 0.0f),
        decay_(static_cast<std::size_t>(size), 0) {
    for (auto const& t : tensors)
      if (t.decay)
        for (std::int64_t i = t.offset; i < t.offset + t.size; ++i)
          decay_[static_cast<std::size_t>(i)] = 1;
  }

  /// One update with learning rate `lr` as step `step` (0-based; bias correction uses step+1).
  /// Gradients are scaled by `grad_scale` first (the clipping factor). Returns nothing: every
  /// element is independent.
  void step(std::vector<float>& params, std::vector<float> const& grads, std::int64_t step,
            float lr, float grad_scale, int threads) {
    auto const t = static_cast<double>(step + 1);
    auto const bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(o_.beta1), t));
    auto const bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(o_.beta2), t));
    auto const n = static_cast<std::int64_t>(params.size());
    constexpr std::int64_t chunk = 4096;
    parallel_for(threads, (n + chunk - 1) / chunk, [&](std::int64_t c) {
      for (std::int64_t j = c * chunk; j < std::min(n, (c + 1) * chunk); ++j) {
        auto const i = static_cast<std::size_t>(j);
        float const gr = grads[i] * grad_scale;
        m_[i] = o_.beta1 * m_[i] + (1.0f - o_.beta1) * gr;
        v_[i] = o_.beta2 * v_[i] + (1.0f - o_.beta2) * gr * gr;
        float const mh = m_[i] / bc1, vh = v_[i] / bc2;
        float const decay = decay_[i] != 0 ? o_.weight_decay * params[i] : 0.0f;
        params[i] -= lr * (mh / (std::sqrt(vh) + o_.eps) + decay);
      }
    });
  }

  [[nodiscard]] std::vector<float>& first_moment() noexcept { return m_; }
  [[nodiscard]] std::vector<float>& second_moment() noexcept { return v_; }

 private:
  adamw_options o_;
  std::vector<float> m_, v_;
  std::vector<std::uint8_t> decay_;
};

}  // namespace gpt
