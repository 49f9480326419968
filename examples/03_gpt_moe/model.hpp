// SPDX-License-Identifier: Apache-2.0
// The GPT-MoE example's model: a small decoder-only transformer over bytes, forward and backward
// written out by hand in float32 on the CPU.
//
//   x0 = wte[byte] + wpe[position]                                   [T, H]   T = B·S tokens
//   per layer l:  a = x_l + proj(causal_attention(qkv(ln1(x_l))))    pre-LayerNorm blocks
//                 x_{l+1} = a + ffn_l(ln2(a))    ffn_l: moe::layer<C> (E experts, top-K) on
//                                                the MoE layers, a dense GELU MLP elsewhere
//   logits = ln_f(x_L) · W_outᵀ                                       [T, V]   W_out = wte (tied)
//   loss = mean_t cross_entropy(logits_t, next byte)  (+ the MoE layers' aux/z losses)
//
// Every linear layer is moe::grouped_gemm with one "expert" whose rows are all T tokens, the
// dense FFN is moe::expert_ffn the same way, and the MoE FFN is moe::layer — so the library's
// deterministic host GEMM does the multiply-adds. Attention, LayerNorm, embeddings and the loss
// are plain loops (parallel.hpp): each output element computed by one iteration in a fixed
// order, so a run is bitwise reproducible whatever the thread count.
//
// All parameters (the MoE layers' included, bound with layer::bind_flat) live in ONE flat
// float buffer, and their gradients in another of the same layout; the optimiser and the
// checkpoint see only those.
//
// Expert parallelism (moe_gpt_mpi, Comm = moe::comm::mpi): the model holds this rank's share
// of the group's batch, its MoE layers hold E/R experts each (tensor_info::expert), and the
// loss is normalised by the GROUP's token count, so the ranks' gradients of the replicated
// parameters add up to the single-process gradient (ranks.hpp sums them).
#pragma once

#include <algorithm>  // std::max, std::fill
#include <cmath>      // std::sqrt, std::exp, std::log
#include <cstddef>    // std::size_t
#include <cstdint>    // std::int64_t, std::int32_t, std::uint8_t
#include <cstring>    // std::memset, std::memcpy
#include <limits>     // std::numeric_limits
#include <string>     // std::string
#include <vector>     // std::vector

#include <moe/layer.hpp>  // moe::layer: router, dispatch, expert FFN, combine; backward
#include <moe/moe.hpp>    // moe::grouped_gemm, expert_ffn, fill_random, status

#include "parallel.hpp"  // gpt::parallel_for

namespace gpt {

/// The model's sizes (what a checkpoint must agree on).
struct model_dims {
  std::int64_t vocab = 256;       ///< V: bytes
  std::int64_t seq = 64;          ///< S: context length
  std::int64_t layers = 4;        ///< L
  std::int64_t heads = 4;         ///< attention heads (H divisible by it)
  std::int64_t hidden = 128;      ///< H
  std::int64_t ffn = 512;         ///< width of the dense FFN (the dense layers)
  std::int64_t expert_ffn = 256;  ///< F of each expert (the MoE layers)
  std::int64_t moe_every = 2;     ///< 0: all dense; N: layer l is MoE when l % N == N - 1
  std::int64_t tied = 1;          ///< 1: the output head is wte; 0: its own [V, H] matrix

  [[nodiscard]] bool is_moe(std::int64_t l) const noexcept {
    return moe_every > 0 && l % moe_every == moe_every - 1;
  }
};

/// What one forward reports besides the loss: the MoE layers' statistics, summed or averaged.
struct forward_stats {
  double loss = 0.0;         ///< mean cross-entropy over the T tokens (nats)
  double moe_loss = 0.0;     ///< Σ over MoE layers of layer_stats::loss (coef·aux + coef·z)
  double aux = 0.0;          ///< mean over MoE layers of the raw aux loss (1.0 = balanced)
  double z = 0.0;            ///< mean over MoE layers of the raw z-loss
  double dropped = 0.0;      ///< dropped routes / routes, over all MoE layers
  double load_spread = 0.0;  ///< mean over MoE layers of max expert load / mean load
};

/// A parameter tensor's place in the flat buffer, and how the optimiser treats it.
struct tensor_info {
  std::string name;
  std::int64_t offset = 0, size = 0;
  bool decay = false;   ///< AdamW weight decay (matrices), not biases, gains or embeddings
  bool expert = false;  ///< a routed expert's tensor: local to its rank (not replicated)
};

template <moe::config C, class Comm = moe::comm::local>
class model {
  static_assert(C.act == moe::precision::fp32 && C.weight == moe::precision::fp32,
                "the GPT example computes in float32");

 public:
  using moe_layer = moe::layer<C, moe::host_policy, Comm>;

  /// Lays out the parameters for `d`, allocates them and the activations for `batch`
  /// sequences, and binds the MoE layers to their slices of the flat buffers. Expert
  /// parallelism: `comm` is the group (R ranks, E/R experts each) and `group_batch` the
  /// group's sequences (0: `batch`), which normalise the loss.
  moe::status build(model_dims const& d, std::int64_t batch, int threads, float aux_coef,
                    float z_coef, Comm comm = {}, std::int64_t group_batch = 0) {
    d_ = d;
    B_ = batch;
    T_ = batch * d.seq;
    Tg_ = (group_batch > 0 ? group_batch : batch) * d.seq;
    R_ = comm.size();
    threads_ = threads;
    aux_coef_ = aux_coef;
    z_coef_ = z_coef;
    std::int64_t const H = d.hidden, V = d.vocab, S = d.seq, F = d.ffn, L = d.layers;
    if (H % d.heads != 0)
      return moe::status::error(moe::errc::invalid_argument,
                                "--hidden %lld: expected a multiple of --heads %lld",
                                static_cast<long long>(H), static_cast<long long>(d.heads));
    std::int64_t at = 0;
    auto const add = [&](char const* name, std::int64_t l, std::int64_t size, bool decay) {
      std::string n = l < 0 ? name : "h" + std::to_string(l) + "." + name;
      tensors_.push_back({n, at, size, decay});
      at += size;
      return tensors_.back().offset;
    };
    wte_ = add("wte", -1, V * H, false);
    wpe_ = add("wpe", -1, S * H, false);
    blocks_.resize(static_cast<std::size_t>(L));
    for (std::int64_t l = 0; l < L; ++l) {
      block& b = blocks_[static_cast<std::size_t>(l)];
      b.ln1_g = add("ln1.g", l, H, false);
      b.ln1_b = add("ln1.b", l, H, false);
      b.w_qkv = add("attn.w_qkv", l, 3 * H * H, true);
      b.b_qkv = add("attn.b_qkv", l, 3 * H, false);
      b.w_proj = add("attn.w_proj", l, H * H, true);
      b.b_proj = add("attn.b_proj", l, H, false);
      b.ln2_g = add("ln2.g", l, H, false);
      b.ln2_b = add("ln2.b", l, H, false);
      if (d.is_moe(l)) {
        b.moe = static_cast<int>(moe_.size());
        moe_.emplace_back(moe::layer_shape{.hidden = H, .ffn = d.expert_ffn, .ep_size = R_}, comm);
        b.moe_params = at;
        at += moe_.back().parameter_count();  // sub-tensors registered after binding
      } else {
        b.w1 = add("mlp.w1", l, F * H, true);
        b.b1 = add("mlp.b1", l, F, false);
        b.w2 = add("mlp.w2", l, H * F, true);
        b.b2 = add("mlp.b2", l, H, false);
      }
    }
    lnf_g_ = add("lnf.g", -1, H, false);
    lnf_b_ = add("lnf.b", -1, H, false);
    head_ = d.tied != 0 ? wte_ : add("head", -1, V * H, true);
    params_.assign(static_cast<std::size_t>(at), 0.0f);
    grads_.assign(static_cast<std::size_t>(at), 0.0f);

    // Bind each MoE layer to its slice and name its tensors (the flat order of layer_tensors).
    for (std::int64_t l = 0; l < L; ++l) {
      block const& b = blocks_[static_cast<std::size_t>(l)];
      if (b.moe < 0) continue;
      moe_layer& m = moe_[static_cast<std::size_t>(b.moe)];
      MOE_TRY(m.bind_flat(p(b.moe_params), g(b.moe_params)));
      auto const& mp = m.params();
      std::int64_t const E = C.experts, Fe = d.expert_ffn;
      std::int64_t const El = E / R_;  // this rank's experts
      auto const sub = [&](char const* name, float const* ptr, std::int64_t size, bool decay,
                           bool expert) {
        tensors_.push_back({"h" + std::to_string(l) + ".moe." + name,
                            static_cast<std::int64_t>(ptr - params_.data()), size, decay, expert});
      };
      sub("w_gate", mp.w_gate, H * E, true, false);
      sub("w1", mp.w1, El * Fe * H, true, true);
      sub("b1", mp.b1, El * Fe, false, true);
      sub("w2", mp.w2, El * H * Fe, true, true);
      sub("b2", mp.b2, El * H, false, true);
      if (H * E + 2 * El * Fe * H + El * Fe + El * H != m.parameter_count())
        return moe::status::error(moe::errc::internal,
                                  "moe layer: unexpected parameter layout (%lld parameters)",
                                  static_cast<long long>(m.parameter_count()));
      // Per-layer workspace, large enough for training and evaluation capacity.
      moe::problem const tr = m.make_problem(T_, true), ev = m.make_problem(T_, false);
      std::size_t const bytes = std::max(m.workspace_bytes(tr), m.workspace_bytes(ev));
      workspaces_.emplace_back((bytes + 63) / 64);
      problems_.push_back(tr);
    }

    // Activations.
    auto const n = [](std::int64_t v) { return static_cast<std::size_t>(v); };
    std::int64_t const NH = d.heads;
    res_.assign(n((L + 1) * T_ * H), 0.0f);
    mid_.assign(n(L * T_ * H), 0.0f);
    ln1_.assign(n(L * T_ * H), 0.0f);
    ln2_.assign(n(L * T_ * H), 0.0f);
    ln1_stat_.assign(n(L * T_ * 2), 0.0f);
    ln2_stat_.assign(n(L * T_ * 2), 0.0f);
    qkv_.assign(n(L * T_ * 3 * H), 0.0f);
    att_.assign(n(L * B_ * NH * S * S), 0.0f);
    atty_.assign(n(L * T_ * H), 0.0f);
    ffn_pre_.assign(n(L * T_ * F), 0.0f);  // dense layers only (kept for backward)
    ffn_h_.assign(n(L * T_ * F), 0.0f);
    tmp_.assign(n(T_ * H), 0.0f);
    lnf_.assign(n(T_ * H), 0.0f);
    lnf_stat_.assign(n(T_ * 2), 0.0f);
    logits_.assign(n(T_ * V), 0.0f);
    token_loss_.assign(n(T_), 0.0f);
    dres_.assign(n(T_ * H), 0.0f);
    dln_.assign(n(T_ * H), 0.0f);
    datty_.assign(n(T_ * H), 0.0f);
    dqkv_.assign(n(T_ * 3 * H), 0.0f);
    dpre_.assign(n(T_ * std::max(F, H)), 0.0f);
    datt_scratch_.assign(n(B_ * NH * S), 0.0f);
    counts_.assign(n(static_cast<std::int64_t>(moe_.size()) * C.experts), 0);
    rows_[0] = 0;
    rows_[1] = T_;
    return {};
  }

  /// GPT-2-style initialisation: weights N(0, 0.02²), the residual projections N(0, (0.02/√2L)²),
  /// LayerNorm gains 1, biases 0. Each tensor draws its own Philox range of `seed`.
  moe::status init(std::uint64_t seed) {
    float const std_w = 0.02f;
    float const std_out = 0.02f / std::sqrt(2.0f * static_cast<float>(d_.layers));
    std::uint64_t offset = 0;
    auto const normal = [&](std::int64_t off, std::int64_t size, float sd) -> moe::status {
      MOE_TRY(moe::fill_random(moe::host, {.dist = moe::distribution::normal,
                                           .seed = seed,
                                           .offset = offset,
                                           .out = p(off),
                                           .n = size}));
      offset += moe::words_used(moe::distribution::normal, size);
      for (std::int64_t i = 0; i < size; ++i) p(off)[i] *= sd;
      return {};
    };
    auto const fill = [&](std::int64_t off, std::int64_t size, float v) {
      for (std::int64_t i = 0; i < size; ++i) p(off)[i] = v;
    };
    std::int64_t const H = d_.hidden, V = d_.vocab, F = d_.ffn;
    MOE_TRY(normal(wte_, V * H, std_w));
    MOE_TRY(normal(wpe_, d_.seq * H, std_w));
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      block const& b = blocks_[l];
      fill(b.ln1_g, H, 1.0f);
      fill(b.ln2_g, H, 1.0f);
      MOE_TRY(normal(b.w_qkv, 3 * H * H, std_w));
      MOE_TRY(normal(b.w_proj, H * H, std_out));
      if (b.moe >= 0) {
        MOE_TRY(moe_[static_cast<std::size_t>(b.moe)].init(
            {.seed = seed + 1 + l, .std = std_w, .output_std = std_out}));
      } else {
        MOE_TRY(normal(b.w1, F * H, std_w));
        MOE_TRY(normal(b.w2, H * F, std_out));
      }
    }
    fill(lnf_g_, H, 1.0f);
    if (head_ != wte_) MOE_TRY(normal(head_, V * H, std_w));
    return {};
  }

  /// Forward over one batch of B sequences of S + 1 bytes ([B, S+1]: inputs then targets).
  /// `training` selects the MoE capacity factor; `step` seeds the MoE layers' noise (none by
  /// default). Leaves what backward needs.
  moe::status forward(std::uint8_t const* bytes, bool training, std::uint64_t step,
                      forward_stats& out) {
    std::int64_t const H = d_.hidden, S = d_.seq, V = d_.vocab, T = T_;
    bytes_ = bytes;
    // Embeddings.
    parallel_for(threads_, T, [&](std::int64_t t) {
      std::int64_t const b = t / S, s = t % S;
      float const* e = p(wte_) + bytes[b * (S + 1) + s] * H;
      float const* q = p(wpe_) + s * H;
      float* x = res_.data() + t * H;
      for (std::int64_t h = 0; h < H; ++h) x[h] = e[h] + q[h];
    });
    out = {};
    std::int64_t moe_layers = 0;
    for (std::int64_t l = 0; l < d_.layers; ++l) {
      block const& b = blocks_[static_cast<std::size_t>(l)];
      float* x = res_at(l);
      float* ln1 = ln1_.data() + l * T * H;
      float* qkv = qkv_.data() + l * T * 3 * H;
      float* atty = atty_.data() + l * T * H;
      float* mid = mid_.data() + l * T * H;
      float* ln2 = ln2_.data() + l * T * H;
      layernorm_forward(x, p(b.ln1_g), p(b.ln1_b), ln1, ln1_stat_.data() + l * T * 2);
      MOE_TRY(linear_forward(ln1, p(b.w_qkv), p(b.b_qkv), qkv, 3 * H, H));
      attention_forward(qkv, att_at(l), atty);
      MOE_TRY(linear_forward(atty, p(b.w_proj), p(b.b_proj), tmp_.data(), H, H));
      parallel_for(threads_, T, [&](std::int64_t t) {
        for (std::int64_t h = 0; h < H; ++h) mid[t * H + h] = x[t * H + h] + tmp_[sz(t * H + h)];
      });
      layernorm_forward(mid, p(b.ln2_g), p(b.ln2_b), ln2, ln2_stat_.data() + l * T * 2);
      if (b.moe >= 0) {
        // [snippet moe_layer]
        // ln2 [T, H] -> tmp_ [T, H]; the workspace keeps what backward needs.
        auto const i = static_cast<std::size_t>(b.moe);
        moe::problem& pr = problems_[i];
        pr = moe_[i].make_problem(T, training);  // training: capacity factor 1.25, else 2.0
        pr.aux_loss_coef = aux_coef_;
        pr.z_loss_coef = z_coef_;
        pr.seed = step * 1024u + i;
        moe::layer_stats st{};
        MOE_TRY(moe_[i].forward(
            moe::host.with_threads(threads_), pr,
            {.x = ln2, .y = tmp_.data(), .stats = &st, .counts = counts_.data() + i * C.experts},
            workspaces_[i].data(), workspaces_[i].size() * 64));
        // [end snippet]
        out.moe_loss += st.loss;
        out.aux += static_cast<double>(st.route.aux_loss);
        out.z += static_cast<double>(st.route.z_loss);
        out.dropped += static_cast<double>(st.route.dropped);
        out.load_spread += st.route.mean_load > 0.0f ? static_cast<double>(st.route.max_load) /
                                                           static_cast<double>(st.route.mean_load)
                                                     : 0.0;
        ++moe_layers;
      } else {
        MOE_TRY(moe::expert_ffn(moe::host.with_threads(threads_),
                                moe::expert_ffn_args<C>{.experts = 1,
                                                        .rows = T,
                                                        .hidden = H,
                                                        .ffn = d_.ffn,
                                                        .offsets = rows_,
                                                        .x = ln2,
                                                        .w1 = p(b.w1),
                                                        .b1 = p(b.b1),
                                                        .w2 = p(b.w2),
                                                        .b2 = p(b.b2),
                                                        .act = moe::activation::gelu,
                                                        .recompute = moe::ffn_recompute::none,
                                                        .y = tmp_.data(),
                                                        .pre = pre_at(l),
                                                        .h = h_at(l)}));
      }
      float* next = res_at(l + 1);
      parallel_for(threads_, T, [&](std::int64_t t) {
        for (std::int64_t h = 0; h < H; ++h) next[t * H + h] = mid[t * H + h] + tmp_[sz(t * H + h)];
      });
    }
    if (moe_layers > 0) {
      auto const n = static_cast<double>(moe_layers);
      out.dropped /= n * static_cast<double>(Tg_ * C.top_k);  // the group's routes
      out.aux /= n;
      out.z /= n;
      out.load_spread /= n;
    }
    layernorm_forward(res_at(d_.layers), p(lnf_g_), p(lnf_b_), lnf_.data(), lnf_stat_.data());
    MOE_TRY(linear_forward(lnf_.data(), p(head_), nullptr, logits_.data(), V, H));
    // Cross-entropy; logits become probabilities (backward reads them).
    parallel_for(threads_, T, [&](std::int64_t t) {
      float* z = logits_.data() + t * V;
      float mx = -std::numeric_limits<float>::infinity();
      for (std::int64_t v = 0; v < V; ++v) mx = z[v] > mx ? z[v] : mx;
      float sum = 0.0f;
      for (std::int64_t v = 0; v < V; ++v) {
        z[v] = std::exp(z[v] - mx);
        sum += z[v];
      }
      float const inv = 1.0f / sum;
      for (std::int64_t v = 0; v < V; ++v) z[v] *= inv;
      std::int64_t const target = bytes[(t / S) * (S + 1) + t % S + 1];
      token_loss_[sz(t)] = -std::log(std::max(z[target], 1e-30f));
    });
    double total = 0.0;
    for (std::int64_t t = 0; t < T; ++t) total += static_cast<double>(token_loss_[sz(t)]);
    out.loss = total / static_cast<double>(T);  // this rank's tokens
    return {};
  }

  /// Backward of the last forward (a training one): gradients of mean cross-entropy (over the
  /// group's tokens) + the MoE losses, ADDED to grads() (zero them first with zero_grad()).
  moe::status backward() {
    std::int64_t const H = d_.hidden, S = d_.seq, V = d_.vocab, T = T_;
    std::uint8_t const* bytes = bytes_;
    float const inv_t = 1.0f / static_cast<float>(Tg_);
    parallel_for(threads_, T, [&](std::int64_t t) {
      float* z = logits_.data() + t * V;
      z[bytes[(t / S) * (S + 1) + t % S + 1]] -= 1.0f;
      for (std::int64_t v = 0; v < V; ++v) z[v] *= inv_t;
    });
    MOE_TRY(linear_backward(lnf_.data(), p(head_), logits_.data(), dln_.data(), g(head_), nullptr,
                            V, H));
    std::fill(dres_.begin(), dres_.end(), 0.0f);
    layernorm_backward(res_at(d_.layers), p(lnf_g_), lnf_stat_.data(), dln_.data(), dres_.data(),
                       g(lnf_g_), g(lnf_b_));
    for (std::int64_t l = d_.layers - 1; l >= 0; --l) {
      block const& b = blocks_[static_cast<std::size_t>(l)];
      float* ln2 = ln2_.data() + l * T * H;
      // FFN: d ln2 from d x_{l+1} (= dres), then through ln2 into d mid (added to dres).
      if (b.moe >= 0) {
        // [snippet moe_layer]
        // ... and in backward: dres_ [T, H] is d y; d x -> dln_; the parameter gradients
        // (with those of the aux and z losses) are added to the layer's slice of grads_.
        auto const i = static_cast<std::size_t>(b.moe);
        MOE_TRY(moe_[i].backward(moe::host.with_threads(threads_), problems_[i],
                                 {.x = ln2, .dy = dres_.data(), .dx = dln_.data()},
                                 workspaces_[i].data(), workspaces_[i].size() * 64));
        // [end snippet]
      } else {
        MOE_TRY(moe::expert_ffn_backward(
            moe::host.with_threads(threads_),
            moe::expert_ffn_backward_args<C>{.experts = 1,
                                             .rows = T,
                                             .hidden = H,
                                             .ffn = d_.ffn,
                                             .offsets = rows_,
                                             .x = ln2,
                                             .w1 = p(b.w1),
                                             .b1 = p(b.b1),
                                             .w2 = p(b.w2),
                                             .act = moe::activation::gelu,
                                             .recompute = moe::ffn_recompute::none,
                                             .dy = dres_.data(),
                                             .pre = pre_at(l),
                                             .h = h_at(l),
                                             .d_pre = dpre_.data(),
                                             .dx = dln_.data(),
                                             .dw1 = g(b.w1),
                                             .db1 = g(b.b1),
                                             .dw2 = g(b.w2),
                                             .db2 = g(b.b2),
                                             .accumulate = true}));
      }
      layernorm_backward(mid_.data() + l * T * H, p(b.ln2_g), ln2_stat_.data() + l * T * 2,
                         dln_.data(), dres_.data(), g(b.ln2_g), g(b.ln2_b));
      // Attention: d atty from d mid, then d qkv, then d ln1, then through ln1 into d x_l.
      MOE_TRY(linear_backward(atty_.data() + l * T * H, p(b.w_proj), dres_.data(), datty_.data(),
                              g(b.w_proj), g(b.b_proj), H, H));
      attention_backward(qkv_.data() + l * T * 3 * H, att_at(l), datty_.data(), dqkv_.data());
      MOE_TRY(linear_backward(ln1_.data() + l * T * H, p(b.w_qkv), dqkv_.data(), dln_.data(),
                              g(b.w_qkv), g(b.b_qkv), 3 * H, H));
      layernorm_backward(res_at(l), p(b.ln1_g), ln1_stat_.data() + l * T * 2, dln_.data(),
                         dres_.data(), g(b.ln1_g), g(b.ln1_b));
    }
    // Embeddings: each wte row sums the gradients of its byte's tokens, in token order.
    std::vector<std::int64_t> first(static_cast<std::size_t>(V + 1), 0), order(sz(T));
    for (std::int64_t t = 0; t < T; ++t) ++first[sz(byte_at(t) + 1)];
    for (std::int64_t v = 0; v < V; ++v) first[sz(v + 1)] += first[sz(v)];
    {
      std::vector<std::int64_t> fill(first.begin(), first.end() - 1);
      for (std::int64_t t = 0; t < T; ++t) order[sz(fill[sz(byte_at(t))]++)] = t;
    }
    parallel_for(threads_, V, [&](std::int64_t v) {
      float* gw = g(wte_) + v * H;
      for (std::int64_t i = first[sz(v)]; i < first[sz(v + 1)]; ++i) {
        float const* d = dres_.data() + order[sz(i)] * H;
        for (std::int64_t h = 0; h < H; ++h) gw[h] += d[h];
      }
    });
    parallel_for(threads_, S, [&](std::int64_t s) {
      float* gp = g(wpe_) + s * H;
      for (std::int64_t b = 0; b < B_; ++b) {
        float const* d = dres_.data() + (b * S + s) * H;
        for (std::int64_t h = 0; h < H; ++h) gp[h] += d[h];
      }
    });
    return {};
  }

  void zero_grad() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

  [[nodiscard]] std::vector<float>& params() noexcept { return params_; }
  [[nodiscard]] std::vector<float>& grads() noexcept { return grads_; }
  [[nodiscard]] std::vector<tensor_info> const& tensors() const noexcept { return tensors_; }
  [[nodiscard]] model_dims const& dims() const noexcept { return d_; }
  [[nodiscard]] std::int64_t moe_layers() const noexcept {
    return static_cast<std::int64_t>(moe_.size());
  }
  /// The model layer index of MoE layer i.
  [[nodiscard]] std::int64_t moe_layer_index(std::int64_t i) const noexcept {
    for (std::size_t l = 0; l < blocks_.size(); ++l)
      if (blocks_[l].moe == i) return static_cast<std::int64_t>(l);
    return -1;
  }
  /// Experts chosen by MoE layer i in the last forward, [T, K] (before drops).
  [[nodiscard]] std::int32_t const* routed_experts(std::int64_t i) const noexcept {
    auto const u = static_cast<std::size_t>(i);
    return moe_[u].routing(problems_[u], workspaces_[u].data()).expert;
  }
  /// Every routing decision of the last forward (experts and slots of all MoE layers), to see
  /// whether two forwards routed alike.
  [[nodiscard]] std::vector<std::int32_t> routing_decisions() const {
    std::vector<std::int32_t> out;
    for (std::size_t u = 0; u < moe_.size(); ++u) {
      moe::layer_routing const r = moe_[u].routing(problems_[u], workspaces_[u].data());
      out.insert(out.end(), r.expert, r.expert + T_ * C.top_k);
      out.insert(out.end(), r.slot, r.slot + T_ * C.top_k);
    }
    return out;
  }
  /// Per-token cross-entropy of the last forward, [T].
  [[nodiscard]] float const* token_loss() const noexcept { return token_loss_.data(); }

  /// Parameters of the whole model (every rank's experts).
  [[nodiscard]] std::int64_t total_parameters() const noexcept {
    std::int64_t n = static_cast<std::int64_t>(params_.size());
    for (auto const& m : moe_) n += (R_ - 1) * (m.parameter_count() - d_.hidden * C.experts);
    return n;
  }
  /// Parameters a token uses: all but the experts it is not routed to (top-K of E).
  [[nodiscard]] std::int64_t active_parameters() const noexcept {
    std::int64_t n = total_parameters();
    for (auto const& m : moe_) {
      std::int64_t const experts_part = m.parameter_count() - d_.hidden * C.experts;  // E/R
      n -= experts_part * R_ / C.experts * (C.experts - C.top_k);
    }
    return n;
  }

 private:
  struct block {
    std::int64_t ln1_g = 0, ln1_b = 0, w_qkv = 0, b_qkv = 0, w_proj = 0, b_proj = 0, ln2_g = 0,
                 ln2_b = 0, w1 = 0, b1 = 0, w2 = 0, b2 = 0, moe_params = 0;
    int moe = -1;  // index into moe_, or -1 for a dense FFN
  };
  struct alignas(64) line {
    unsigned char b[64];
  };

  static std::size_t sz(std::int64_t v) noexcept { return static_cast<std::size_t>(v); }
  float* p(std::int64_t off) noexcept { return params_.data() + off; }
  float* g(std::int64_t off) noexcept { return grads_.data() + off; }
  float* res_at(std::int64_t l) noexcept { return res_.data() + l * T_ * d_.hidden; }
  float* att_at(std::int64_t l) noexcept {
    return att_.data() + l * B_ * d_.heads * d_.seq * d_.seq;
  }
  float* pre_at(std::int64_t l) noexcept { return ffn_pre_.data() + l * T_ * d_.ffn; }
  float* h_at(std::int64_t l) noexcept { return ffn_h_.data() + l * T_ * d_.ffn; }
  std::int64_t byte_at(std::int64_t t) const noexcept {
    return bytes_[(t / d_.seq) * (d_.seq + 1) + t % d_.seq];
  }

  /// y [T, N] = x [T, K] · Wᵀ + b, W [N, K].
  moe::status linear_forward(float const* x, float const* w, float const* b, float* y,
                             std::int64_t N, std::int64_t K) {
    return moe::grouped_gemm(moe::host.with_threads(threads_),
                             moe::grouped_gemm_args<C>{.experts = 1,
                                                       .rows = T_,
                                                       .n = N,
                                                       .k = K,
                                                       .offsets = rows_,
                                                       .x = x,
                                                       .w = w,
                                                       .bias = b,
                                                       .y = y});
  }

  /// dx [T, K] = dy · W;  dW (+)= dyᵀ · x;  db (+)= Σ_t dy (db may be null).
  moe::status linear_backward(float const* x, float const* w, float const* dy, float* dx, float* dw,
                              float* db, std::int64_t N, std::int64_t K) {
    MOE_TRY(moe::grouped_gemm_wgrad(moe::host.with_threads(threads_),
                                    moe::grouped_gemm_wgrad_args<C>{.experts = 1,
                                                                    .rows = T_,
                                                                    .n = N,
                                                                    .k = K,
                                                                    .offsets = rows_,
                                                                    .x = x,
                                                                    .dy = dy,
                                                                    .dw = dw,
                                                                    .d_bias = db,
                                                                    .accumulate = true}));
    return moe::grouped_gemm_dgrad(moe::host.with_threads(threads_),
                                   moe::grouped_gemm_dgrad_args<C>{.experts = 1,
                                                                   .rows = T_,
                                                                   .n = N,
                                                                   .k = K,
                                                                   .offsets = rows_,
                                                                   .dy = dy,
                                                                   .w = w,
                                                                   .dx = dx});
  }

  /// y = (x - mean) / sqrt(var + 1e-5) · g + b per token; keeps (mean, rstd) per token.
  void layernorm_forward(float const* x, float const* gain, float const* bias, float* y,
                         float* stat) {
    std::int64_t const H = d_.hidden;
    parallel_for(threads_, T_, [&](std::int64_t t) {
      float const* xr = x + t * H;
      float sum = 0.0f;
      for (std::int64_t h = 0; h < H; ++h) sum += xr[h];
      float const mean = sum / static_cast<float>(H);
      float var = 0.0f;
      for (std::int64_t h = 0; h < H; ++h) var += (xr[h] - mean) * (xr[h] - mean);
      float const rstd = 1.0f / std::sqrt(var / static_cast<float>(H) + 1e-5f);
      float* yr = y + t * H;
      for (std::int64_t h = 0; h < H; ++h) yr[h] = (xr[h] - mean) * rstd * gain[h] + bias[h];
      stat[2 * t] = mean;
      stat[2 * t + 1] = rstd;
    });
  }

  /// dx (+)= LayerNorm backward of dy; dgain, dbias (+)= Σ_t (column by column, t ascending).
  void layernorm_backward(float const* x, float const* gain, float const* stat, float const* dy,
                          float* dx, float* dgain, float* dbias) {
    std::int64_t const H = d_.hidden;
    parallel_for(threads_, T_, [&](std::int64_t t) {
      float const* xr = x + t * H;
      float const* dr = dy + t * H;
      float const mean = stat[2 * t], rstd = stat[2 * t + 1];
      float m1 = 0.0f, m2 = 0.0f;  // mean of dxhat, mean of dxhat · xhat
      for (std::int64_t h = 0; h < H; ++h) {
        float const dxh = dr[h] * gain[h];
        m1 += dxh;
        m2 += dxh * (xr[h] - mean) * rstd;
      }
      m1 /= static_cast<float>(H);
      m2 /= static_cast<float>(H);
      float* o = dx + t * H;
      for (std::int64_t h = 0; h < H; ++h) {
        float const xh = (xr[h] - mean) * rstd;
        o[h] += rstd * (dr[h] * gain[h] - m1 - xh * m2);
      }
    });
    parallel_for(threads_, H, [&](std::int64_t h) {
      float sg = 0.0f, sb = 0.0f;
      for (std::int64_t t = 0; t < T_; ++t) {
        float const xh = (x[t * H + h] - stat[2 * t]) * stat[2 * t + 1];
        sg += dy[t * H + h] * xh;
        sb += dy[t * H + h];
      }
      dgain[h] += sg;
      dbias[h] += sb;
    });
  }

  /// Causal softmax attention per (sequence, head): att [B, NH, S, S] keeps the probabilities.
  void attention_forward(float const* qkv, float* att, float* y) {
    std::int64_t const H = d_.hidden, S = d_.seq, NH = d_.heads, hd = H / NH;
    float const scale = 1.0f / std::sqrt(static_cast<float>(hd));
    parallel_for(threads_, B_ * NH, [&](std::int64_t task) {
      std::int64_t const b = task / NH, head = task % NH;
      for (std::int64_t t = 0; t < S; ++t) {
        float const* q = qkv + (b * S + t) * 3 * H + head * hd;
        float* row = att + (task * S + t) * S;
        float mx = -std::numeric_limits<float>::infinity();
        for (std::int64_t u = 0; u <= t; ++u) {
          float const* k = qkv + (b * S + u) * 3 * H + H + head * hd;
          float s = 0.0f;
          for (std::int64_t i = 0; i < hd; ++i) s += q[i] * k[i];
          row[u] = s * scale;
          mx = row[u] > mx ? row[u] : mx;
        }
        float sum = 0.0f;
        for (std::int64_t u = 0; u <= t; ++u) {
          row[u] = std::exp(row[u] - mx);
          sum += row[u];
        }
        float const inv = 1.0f / sum;
        for (std::int64_t u = 0; u <= t; ++u) row[u] *= inv;
        for (std::int64_t u = t + 1; u < S; ++u) row[u] = 0.0f;
        float* o = y + (b * S + t) * H + head * hd;
        for (std::int64_t i = 0; i < hd; ++i) o[i] = 0.0f;
        for (std::int64_t u = 0; u <= t; ++u) {
          float const* v = qkv + (b * S + u) * 3 * H + 2 * H + head * hd;
          for (std::int64_t i = 0; i < hd; ++i) o[i] += row[u] * v[i];
        }
      }
    });
  }

  /// d qkv [T, 3H] (overwritten) from d y [T, H]; each (sequence, head) task owns its columns.
  void attention_backward(float const* qkv, float const* att, float const* dy, float* dqkv) {
    std::int64_t const H = d_.hidden, S = d_.seq, NH = d_.heads, hd = H / NH;
    float const scale = 1.0f / std::sqrt(static_cast<float>(hd));
    parallel_for(threads_, B_ * NH, [&](std::int64_t task) {
      std::int64_t const b = task / NH, head = task % NH;
      float* datt = datt_scratch_.data() + task * S;
      for (std::int64_t t = 0; t < S; ++t)
        for (std::int64_t part = 0; part < 3; ++part) {
          float* d = dqkv + (b * S + t) * 3 * H + part * H + head * hd;
          for (std::int64_t i = 0; i < hd; ++i) d[i] = 0.0f;
        }
      for (std::int64_t t = 0; t < S; ++t) {
        float const* row = att + (task * S + t) * S;
        float const* dyt = dy + (b * S + t) * H + head * hd;
        float const* q = qkv + (b * S + t) * 3 * H + head * hd;
        float* dq = dqkv + (b * S + t) * 3 * H + head * hd;
        float dot = 0.0f;
        for (std::int64_t u = 0; u <= t; ++u) {
          float const* v = qkv + (b * S + u) * 3 * H + 2 * H + head * hd;
          float* dv = dqkv + (b * S + u) * 3 * H + 2 * H + head * hd;
          float s = 0.0f;
          for (std::int64_t i = 0; i < hd; ++i) {
            s += dyt[i] * v[i];
            dv[i] += row[u] * dyt[i];
          }
          datt[u] = s;
          dot += row[u] * s;
        }
        for (std::int64_t u = 0; u <= t; ++u) {
          float const ds = row[u] * (datt[u] - dot) * scale;  // d score, pre-scale folded in
          float const* k = qkv + (b * S + u) * 3 * H + H + head * hd;
          float* dk = dqkv + (b * S + u) * 3 * H + H + head * hd;
          for (std::int64_t i = 0; i < hd; ++i) {
            dq[i] += ds * k[i];
            dk[i] += ds * q[i];
          }
        }
      }
    });
  }

  model_dims d_{};
  std::int64_t B_ = 0, T_ = 0;  // this rank's sequences and tokens
  std::int64_t Tg_ = 0;         // the group's tokens (the loss's denominator)
  std::int32_t R_ = 1;          // expert-parallel ranks
  int threads_ = 0;
  float aux_coef_ = 0.01f, z_coef_ = 0.0f;
  std::int64_t rows_[2] = {0, 0};  // one "expert" holding all T rows
  std::vector<tensor_info> tensors_;
  std::vector<block> blocks_;
  std::int64_t wte_ = 0, wpe_ = 0, lnf_g_ = 0, lnf_b_ = 0, head_ = 0;
  std::vector<float> params_, grads_;
  std::vector<moe_layer> moe_;
  std::vector<std::vector<line>> workspaces_;
  std::vector<moe::problem> problems_;
  std::vector<std::int32_t> counts_;
  std::uint8_t const* bytes_ = nullptr;
  // activations (per layer where marked [L, ...])
  std::vector<float> res_, mid_, ln1_, ln2_, ln1_stat_, ln2_stat_, qkv_, att_, atty_, ffn_pre_,
      ffn_h_, tmp_, lnf_, lnf_stat_, logits_, token_loss_;
  // gradients of activations
  std::vector<float> dres_, dln_, datty_, dqkv_, dpre_, datt_scratch_;
};

}  // namespace gpt
