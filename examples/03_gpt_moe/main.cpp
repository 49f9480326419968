// SPDX-License-Identifier: Apache-2.0
// GPT-MoE: trains a small byte-level decoder-only transformer whose FFNs are moe::layer (top-2
// of 8 experts on every other layer by default) on the CPU, with forward and backward written
// out by hand around the library's layer and GEMMs, AdamW, warm-up + cosine decay, gradient
// clipping, validation, a CSV log, and checkpoints that resume bit for bit. The default data
// is an embedded generator of six synthetic "languages" (data.hpp); the per-language expert
// load it logs shows the experts specialising. --dense trains the dense baseline. Every flag,
// the data and the results: docs/gpt_moe.md.
//
// Run:  bash scripts/main.sh                        (builds it and runs the default, ~3 min on
//                                                    2 cores)
//   or  cmake --preset host && cmake --build --preset host --target moe_gpt &&
//       ./build/host/examples/moe_gpt --help
//
// Expert parallelism: the same source built with MOE_GPT_MPI (target moe_gpt_mpi) runs under
// `mpirun -np R moe_gpt_mpi [flags]`: each rank trains on its share (B/R sequences) of every
// global batch, the MoE layers are expert-parallel over MPI_COMM_WORLD (E/R experts a rank),
// the other parameters data-parallel (ranks.hpp). Same flags, same global batches, the same
// losses as moe_gpt up to summation order.
#include <algorithm>  // std::min, std::max
#include <chrono>     // std::chrono::steady_clock
#include <cmath>      // std::abs
#include <cstdint>    // std::int64_t, std::uint64_t
#include <cstdio>     // std::printf, std::fprintf, std::FILE
#include <cstdlib>    // std::strtoll, std::strtod, std::exit, EXIT_FAILURE
#include <string>     // std::string
#include <vector>     // std::vector

#include <moe/moe.hpp>  // moe::config, moe::dispatch, moe::config_list, moe::describe

#if defined(MOE_GPT_MPI)
#include <mpi.h>             // MPI_Init, MPI_COMM_WORLD
#include <moe/comm/mpi.hpp>  // moe::comm::mpi: the MoE layers' expert-parallel group
#endif

#include "checkpoint.hpp"  // gpt::save_checkpoint, load_checkpoint
#include "data.hpp"        // gpt::dataset, gpt::batch, language names
#include "model.hpp"       // gpt::model, model_dims, forward_stats
#include "optim.hpp"       // gpt::adamw, learning_rate, global_norm
#include "ranks.hpp"       // gpt::ranks (sums over MPI ranks in a fixed order), gpt::fail

// Programs (not the library) may stop on an error: print the status and exit (every rank).
#define CHECK_OK(expr)                                                                  \
  do {                                                                                  \
    ::moe::status const s_ = (expr);                                                    \
    if (!s_.ok()) {                                                                     \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, s_.message()); \
      ::gpt::fail();                                                                    \
    }                                                                                   \
  } while (false)

namespace {

#if defined(MOE_GPT_MPI)
using group_comm = moe::comm::mpi;  // expert parallelism over MPI_COMM_WORLD
#else
using group_comm = moe::comm::local;  // one rank holds every expert
#endif

/// The MoE layer this example trains: 8 experts, top-2, capacity factor 1.25 in training and
/// 2.0 in evaluation, weights renormalised over the two choices, GELU experts, float32.
constexpr moe::config gpt_top2{.experts = 8,
                               .top_k = 2,
                               .capacity_factor = {5, 4},
                               .eval_capacity_factor = {2, 1},
                               .act = moe::precision::fp32,
                               .weight = moe::precision::fp32,
                               .norm = moe::normalization::renormalize,
                               .ffn_activation = moe::activation::gelu};
/// Switch-style top-1 of 8 (--top-k 1), the same otherwise.
constexpr moe::config gpt_top1{.experts = 8,
                               .top_k = 1,
                               .capacity_factor = {5, 4},
                               .eval_capacity_factor = {2, 1},
                               .act = moe::precision::fp32,
                               .weight = moe::precision::fp32,
                               .ffn_activation = moe::activation::gelu};
/// The configs compiled into this program; --experts / --top-k pick one at run time.
using gpt_configs = moe::config_list<gpt_top2, gpt_top1>;

struct options {
  gpt::model_dims dims{};
  std::int64_t experts = 8, top_k = 2;
  std::int64_t batch = 16;
  std::int64_t steps = 400;
  std::int64_t stop_after = -1;  // stop (and save) after this many steps: an interruption
  gpt::adamw_options adam{};
  float aux_coef = 0.01f, z_coef = 0.001f;
  std::uint64_t seed = 1234;
  int threads = 0;
  std::int64_t eval_every = 50;
  std::int64_t val_batches = 6;
  std::int64_t log_every = 1;
  std::string data, csv, save, load;
  std::int64_t save_every = 0;
  double expect_drop = -1.0;
  bool grad_check = false;
  bool show_data = false;
};

void usage() {
  std::printf(
      "moe_gpt: train a small GPT with MoE FFNs on the CPU (docs/gpt_moe.md)\n"
      "model:    --layers N (4) --hidden N (128) --heads N (4) --seq N (64)\n"
      "          --ffn N (dense FFN width, 4*hidden) --expert-ffn N (expert width, 2*hidden)\n"
      "          --moe-every N (2: MoE on every 2nd layer; 1: all) --dense (no MoE)\n"
      "          --experts N (8) --top-k N (2; compiled: 8 experts, top-1 or top-2) --untied\n"
      "training: --steps N (400) --batch N (16) --lr X (3e-3) --warmup N (30)\n"
      "          --weight-decay X (0.1) --clip X (1.0) --aux-coef X (0.01) --z-coef X (0.001)\n"
      "          --seed N (1234) --threads N (0 = all)\n"
      "eval/log: --eval-every N (50) --val-batches N (6) --log-every N (1) --csv FILE\n"
      "data:     --data FILE (any file, byte-level; default: the synthetic languages)\n"
      "          --show-data (print a validation sequence of each language, then exit)\n"
      "ckpt:     --save FILE --save-every N --load FILE --stop-after N\n"
      "test:     --expect-drop X (exit 1 unless the smoothed loss fell by X nats)\n"
      "          --grad-check (compare backward with central differences, then exit)\n");
}

options parse(int argc, char** argv) {
  options o;
  o.dims.ffn = 0;
  o.dims.expert_ffn = 0;
  auto const value = [&](int& i) -> char const* {
    if (i + 1 >= argc) {
      std::fprintf(stderr, "error: %s needs a value\n", argv[i]);
      std::exit(EXIT_FAILURE);
    }
    return argv[++i];
  };
  auto const integer = [&](int& i, std::int64_t lo) {
    char const* name = argv[i];
    char const* v = value(i);
    char* end = nullptr;
    long long const x = std::strtoll(v, &end, 10);
    if (end == v || *end != '\0' || x < lo) {
      std::fprintf(stderr, "error: %s: expected an integer >= %lld, got '%s'\n", name,
                   static_cast<long long>(lo), v);
      std::exit(EXIT_FAILURE);
    }
    return static_cast<std::int64_t>(x);
  };
  auto const real = [&](int& i) {
    char const* name = argv[i];
    char const* v = value(i);
    char* end = nullptr;
    double const x = std::strtod(v, &end);
    if (end == v || *end != '\0' || !(x >= 0.0)) {
      std::fprintf(stderr, "error: %s: expected a number >= 0, got '%s'\n", name, v);
      std::exit(EXIT_FAILURE);
    }
    return x;
  };
  for (int i = 1; i < argc; ++i) {
    std::string const a = argv[i];
    if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else if (a == "--layers")
      o.dims.layers = integer(i, 1);
    else if (a == "--hidden")
      o.dims.hidden = integer(i, 1);
    else if (a == "--heads")
      o.dims.heads = integer(i, 1);
    else if (a == "--seq")
      o.dims.seq = integer(i, 2);
    else if (a == "--ffn")
      o.dims.ffn = integer(i, 1);
    else if (a == "--expert-ffn")
      o.dims.expert_ffn = integer(i, 1);
    else if (a == "--moe-every")
      o.dims.moe_every = integer(i, 1);
    else if (a == "--dense")
      o.dims.moe_every = 0;
    else if (a == "--untied")
      o.dims.tied = 0;
    else if (a == "--experts")
      o.experts = integer(i, 1);
    else if (a == "--top-k")
      o.top_k = integer(i, 1);
    else if (a == "--steps")
      o.steps = integer(i, 1);
    else if (a == "--stop-after")
      o.stop_after = integer(i, 0);
    else if (a == "--batch")
      o.batch = integer(i, 1);
    else if (a == "--lr")
      o.adam.lr = static_cast<float>(real(i));
    else if (a == "--warmup")
      o.adam.warmup = integer(i, 0);
    else if (a == "--weight-decay")
      o.adam.weight_decay = static_cast<float>(real(i));
    else if (a == "--clip")
      o.adam.clip = static_cast<float>(real(i));
    else if (a == "--aux-coef")
      o.aux_coef = static_cast<float>(real(i));
    else if (a == "--z-coef")
      o.z_coef = static_cast<float>(real(i));
    else if (a == "--seed")
      o.seed = static_cast<std::uint64_t>(integer(i, 0));
    else if (a == "--threads")
      o.threads = static_cast<int>(integer(i, 0));
    else if (a == "--eval-every")
      o.eval_every = integer(i, 0);
    else if (a == "--val-batches")
      o.val_batches = integer(i, 1);
    else if (a == "--log-every")
      o.log_every = integer(i, 1);
    else if (a == "--data")
      o.data = value(i);
    else if (a == "--csv")
      o.csv = value(i);
    else if (a == "--save")
      o.save = value(i);
    else if (a == "--save-every")
      o.save_every = integer(i, 0);
    else if (a == "--load")
      o.load = value(i);
    else if (a == "--expect-drop")
      o.expect_drop = real(i);
    else if (a == "--grad-check")
      o.grad_check = true;
    else if (a == "--show-data")
      o.show_data = true;
    else {
      std::fprintf(stderr, "error: unknown flag '%s' (try --help)\n", a.c_str());
      std::exit(EXIT_FAILURE);
    }
  }
  if (o.dims.ffn == 0) o.dims.ffn = 4 * o.dims.hidden;
  if (o.dims.expert_ffn == 0) o.dims.expert_ffn = 2 * o.dims.hidden;
  if (o.adam.warmup >= o.steps) o.adam.warmup = o.steps / 10;
  return o;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// FNV-1a of the parameters' bytes: one number to compare runs by.
std::uint64_t hash_floats(std::vector<float> const& v) {
  std::uint64_t h = 1469598103934665603ull;
  auto const* p = reinterpret_cast<unsigned char const*>(v.data());
  for (std::size_t i = 0; i < v.size() * sizeof(float); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/// The second CSV's path: FILE.csv -> FILE_load.csv.
std::string load_csv_path(std::string const& csv) {
  std::string const ext = ".csv";
  if (csv.size() > ext.size() && csv.compare(csv.size() - ext.size(), ext.size(), ext) == 0)
    return csv.substr(0, csv.size() - ext.size()) + "_load.csv";
  return csv + "_load.csv";
}

/// What one evaluation over the validation set measured.
struct eval_result {
  double loss = 0.0;
  std::vector<double> lang_loss;  // [languages]
  // [moe layers][languages][E]: routes (all K choices, before drops) per expert
  std::vector<std::int64_t> routes;
};

/// Evaluates the fixed validation set; with R ranks, each rank takes its share of every batch
/// and the sums are the group's (every rank gets the same result).
template <moe::config C>
eval_result evaluate(gpt::model<C, group_comm>& m, gpt::dataset const& data, options const& o,
                     gpt::ranks& group) {
  std::int64_t const B = o.batch / group.size(), S = o.dims.seq, T = B * S, K = C.top_k,
                     E = C.experts;
  std::int64_t const first = B * group.rank();  // this rank's first sequence of a batch
  int const langs = data.languages();
  eval_result r;
  r.lang_loss.assign(static_cast<std::size_t>(langs), 0.0);
  std::vector<double> lang_tokens(static_cast<std::size_t>(langs), 0.0);
  r.routes.assign(static_cast<std::size_t>(m.moe_layers() * langs * E), 0);
  gpt::batch vb;
  std::vector<double> batch_loss(static_cast<std::size_t>(o.val_batches), 0.0);
  for (std::int64_t i = 0; i < o.val_batches; ++i) {
    data.validation(i, o.batch, S, vb);
    gpt::forward_stats st;
    CHECK_OK(m.forward(vb.bytes.data() + first * (S + 1), false, 0, st));
    batch_loss[static_cast<std::size_t>(i)] = st.loss;
    float const* tl = m.token_loss();
    for (std::int64_t t = 0; t < T; ++t) {
      auto const lang = static_cast<std::size_t>(vb.lang[static_cast<std::size_t>(first + t / S)]);
      r.lang_loss[lang] += static_cast<double>(tl[t]);
      lang_tokens[lang] += 1.0;
    }
    for (std::int64_t l = 0; l < m.moe_layers(); ++l) {
      std::int32_t const* ex = m.routed_experts(l);
      for (std::int64_t t = 0; t < T; ++t) {
        std::int64_t const lang = vb.lang[static_cast<std::size_t>(first + t / S)];
        for (std::int64_t k = 0; k < K; ++k)
          ++r.routes[static_cast<std::size_t>((l * langs + lang) * E + ex[t * K + k])];
      }
    }
  }
  group.sum(batch_loss);
  group.sum(r.lang_loss);
  group.sum(lang_tokens);
  group.sum(r.routes);
  double total = 0.0;
  for (double v : batch_loss) total += v / static_cast<double>(group.size());
  r.loss = total / static_cast<double>(o.val_batches);
  for (std::size_t l = 0; l < r.lang_loss.size(); ++l)
    r.lang_loss[l] = lang_tokens[l] > 0.0 ? r.lang_loss[l] / lang_tokens[l] : std::nan("");
  return r;
}

/// Checks backward against central differences of the objective (cross-entropy + the MoE
/// losses) on one training batch: for every tensor, its element of largest gradient, stepped
/// by ±h, h = 1e-3·max(1, |p|). Routing is piecewise constant: a step that changes any routing
/// decision (an expert choice or a drop) makes the difference meaningless, so h is quartered
/// until neither step changes one (the element is reported as skipped after 4 tries).
template <moe::config C>
int grad_check(gpt::model<C, group_comm>& m, gpt::dataset& data, options const& o) {
  gpt::batch b;
  data.next_train(o.batch, o.dims.seq, b);
  m.zero_grad();
  gpt::forward_stats st;
  CHECK_OK(m.forward(b.bytes.data(), true, 0, st));
  CHECK_OK(m.backward());
  std::vector<float> const grads = m.grads();
  std::vector<std::int32_t> const routes = m.routing_decisions();
  auto& p = m.params();
  double worst = 0.0;
  for (auto const& t : m.tensors()) {
    std::int64_t best = t.offset;
    for (std::int64_t i = t.offset; i < t.offset + t.size; ++i)
      if (std::abs(grads[static_cast<std::size_t>(i)]) >
          std::abs(grads[static_cast<std::size_t>(best)]))
        best = i;
    auto const u = static_cast<std::size_t>(best);
    float const keep = p[u];
    float h = 1e-3f * std::max(1.0f, std::abs(keep));
    double f[2] = {0.0, 0.0};
    bool same = false;
    for (int attempt = 0; attempt < 4 && !same; ++attempt, h *= 0.25f) {
      same = true;
      for (int side = 0; side < 2; ++side) {
        p[u] = keep + (side == 0 ? h : -h);
        CHECK_OK(m.forward(b.bytes.data(), true, 0, st));
        f[side] = st.loss + st.moe_loss;
        same = same && m.routing_decisions() == routes;
      }
      p[u] = keep;
      if (same) break;
    }
    double const analytic = static_cast<double>(grads[u]);
    if (!same) {
      std::printf("  %-18s [%8lld] backward % .6e  skipped: every step changed the routing\n",
                  t.name.c_str(), static_cast<long long>(best - t.offset), analytic);
      continue;
    }
    double const numeric = (f[0] - f[1]) / (2.0 * static_cast<double>(h));
    // Relative to max(|difference|, 0.01): float32 differences of a ~5-nat loss carry ~1e-4 of
    // noise, which would dominate the relative error of the smallest gradients.
    double const rel = std::abs(numeric - analytic) / std::max(1e-2, std::abs(numeric));
    worst = std::max(worst, rel);
    std::printf("  %-18s [%8lld] backward % .6e  differences % .6e  rel. error %.2e\n",
                t.name.c_str(), static_cast<long long>(best - t.offset), analytic, numeric, rel);
  }
  std::printf("grad-check: worst relative error %.2e (%s; limit 5e-2)\n", worst,
              worst < 5e-2 ? "PASS" : "FAIL");
  return worst < 5e-2 ? 0 : EXIT_FAILURE;
}

template <moe::config C>
int run(options o) {
#if defined(MOE_GPT_MPI)
  gpt::ranks group(MPI_COMM_WORLD);
  group_comm const comm(MPI_COMM_WORLD);
  if (o.threads == 0) o.threads = 1;  // one thread a rank unless asked: ranks share the cores
#else
  gpt::ranks group;
  group_comm const comm;
#endif
  int const R = group.size();
  if (o.batch % R != 0 || (o.dims.moe_every > 0 && C.experts % R != 0)) {
    if (group.rank() == 0)
      std::fprintf(stderr, "error: %d ranks: expected them to divide --batch %lld and E = %d\n", R,
                   static_cast<long long>(o.batch), C.experts);
    return EXIT_FAILURE;  // every rank sees the same flags and returns here
  }
  if (R > 1 && o.grad_check) {
    if (group.rank() == 0) std::fprintf(stderr, "error: --grad-check: run it with moe_gpt\n");
    return EXIT_FAILURE;
  }
  if (group.rank() != 0) {  // rank 0 prints and writes the CSV; the others only compute
    if (std::freopen("/dev/null", "w", stdout) == nullptr) gpt::fail();
    o.csv.clear();
  }
  std::int64_t const B = o.batch / R;  // this rank's sequences of each global batch
  std::int64_t const first = B * group.rank();
  gpt::dataset data(o.seed);
  if (!o.data.empty() && !data.load_file(o.data.c_str(), o.dims.seq)) {
    std::fprintf(stderr, "error: --data %s: cannot read it, or it is too short for --seq %lld\n",
                 o.data.c_str(), static_cast<long long>(o.dims.seq));
    return EXIT_FAILURE;
  }
  if (o.show_data) {  // one validation sequence per language; bytes outside ASCII as \xNN
    gpt::batch b;
    data.validation(0, data.languages(), o.dims.seq, b);
    for (int l = 0; l < data.languages(); ++l) {
      std::printf("%-8s ", data.language_name(b.lang[static_cast<std::size_t>(l)]));
      for (std::int64_t j = 0; j <= o.dims.seq; ++j) {
        unsigned const c = b.bytes[static_cast<std::size_t>(l * (o.dims.seq + 1) + j)];
        if (c == '\n')
          std::printf("\\n");
        else if (c >= 32 && c < 127)
          std::printf("%c", static_cast<char>(c));
        else
          std::printf("\\x%02X", c);
      }
      std::printf("\n");
    }
    return 0;
  }
  gpt::model<C, group_comm> m;
  CHECK_OK(m.build(o.dims, B, o.threads, o.aux_coef, o.z_coef, comm, o.batch));
  CHECK_OK(m.init(o.seed));
  gpt::adamw opt(o.adam, m.tensors(), static_cast<std::int64_t>(m.params().size()));
  auto const header =
      gpt::make_header(o.dims, C.experts, C.top_k, static_cast<std::int64_t>(m.params().size()),
                       o.seed, R, group.rank());
  // With R ranks each rank keeps its own checkpoint file (its experts differ): FILE.r<rank>.
  auto const ckpt_path = [&](std::string const& f) {
    return R > 1 ? f + ".r" + std::to_string(group.rank()) : f;
  };

  char cfg[200];
  moe::describe(C, cfg, sizeof cfg);
  std::int64_t const T = o.batch * o.dims.seq;
  std::printf(
      "moe_gpt: %lld layers, H=%lld, %lld heads, S=%lld, batch %lld (%lld tokens/step), "
      "%s FFN%s\n",
      static_cast<long long>(o.dims.layers), static_cast<long long>(o.dims.hidden),
      static_cast<long long>(o.dims.heads), static_cast<long long>(o.dims.seq),
      static_cast<long long>(o.batch), static_cast<long long>(T),
      m.moe_layers() > 0 ? "MoE" : "dense", o.dims.tied != 0 ? ", tied head" : "");
  if (m.moe_layers() > 0)
    std::printf("  MoE on %lld of %lld layers (every %lld): %s, expert F=%lld\n",
                static_cast<long long>(m.moe_layers()), static_cast<long long>(o.dims.layers),
                static_cast<long long>(o.dims.moe_every), cfg,
                static_cast<long long>(o.dims.expert_ffn));
  std::printf("  dense FFN F=%lld; parameters %lld total, %lld active per token\n",
              static_cast<long long>(o.dims.ffn), static_cast<long long>(m.total_parameters()),
              static_cast<long long>(m.active_parameters()));
  if (R > 1)
    std::printf(
        "  expert parallel: %d ranks, %lld sequences and %d experts a rank, %lld "
        "parameters a rank, %d thread(s) a rank\n",
        R, static_cast<long long>(B), C.experts / R, static_cast<long long>(m.params().size()),
        o.threads);
  std::printf("  data: %s; %lld steps, lr %.1e (warm-up %lld, cosine), seed %llu\n",
              o.data.empty() ? "6 synthetic languages" : o.data.c_str(),
              static_cast<long long>(o.steps), static_cast<double>(o.adam.lr),
              static_cast<long long>(o.adam.warmup), static_cast<unsigned long long>(o.seed));

  if (o.grad_check) return grad_check(m, data, o);

  std::int64_t step = 0;
  if (!o.load.empty()) {
    gpt::checkpoint_header got{};
    std::vector<float>* const t[3] = {&m.params(), &opt.first_moment(), &opt.second_moment()};
    if (!gpt::load_checkpoint(ckpt_path(o.load), header, got, t)) gpt::fail();
    step = got.step;
    data.set_state(got.data_state);
    std::printf("  resumed from %s at step %lld\n", ckpt_path(o.load).c_str(),
                static_cast<long long>(step));
  }
  auto const save = [&](std::int64_t done) {
    auto h = header;
    h.step = done;
    h.data_state = data.state();
    std::vector<float> const* const t[3] = {&m.params(), &opt.first_moment(), &opt.second_moment()};
    if (!gpt::save_checkpoint(ckpt_path(o.save), h, t)) gpt::fail();
    std::printf("  saved %s at step %lld\n", ckpt_path(o.save).c_str(),
                static_cast<long long>(done));
  };

  std::FILE* csv = nullptr;
  std::FILE* load_csv = nullptr;
  int const langs = data.languages();
  if (!o.csv.empty()) {
    csv = std::fopen(o.csv.c_str(), "w");
    std::string const lp = load_csv_path(o.csv);
    load_csv = std::fopen(lp.c_str(), "w");
    if (csv == nullptr || load_csv == nullptr) {
      std::fprintf(stderr, "error: cannot write %s / %s\n", o.csv.c_str(), lp.c_str());
      gpt::fail();
    }
    std::fprintf(csv,
                 "step,lr,loss,moe_loss,aux_loss,z_loss,dropped_frac,load_max_mean,"
                 "grad_norm,tokens_per_s,val_loss");
    for (int l = 0; l < langs; ++l) std::fprintf(csv, ",val_%s", data.language_name(l));
    std::fprintf(csv, "\n");
    std::fprintf(load_csv, "step,layer,language,routes");
    for (int e = 0; e < C.experts; ++e) std::fprintf(load_csv, ",e%d", e);
    std::fprintf(load_csv, "\n");
  }

  std::int64_t const last = o.stop_after >= 0 ? std::min(o.steps, o.stop_after) : o.steps;
  std::vector<double> losses;
  gpt::batch tb;
  auto const run_start = std::chrono::steady_clock::now();
  double train_seconds = 0.0;
  eval_result ev;
  bool evaluated = false;
  for (; step < last; ++step) {
    auto const t0 = std::chrono::steady_clock::now();
    data.next_train(o.batch, o.dims.seq, tb);  // the global batch; this rank takes its share
    m.zero_grad();
    gpt::forward_stats st;
    CHECK_OK(m.forward(tb.bytes.data() + first * (o.dims.seq + 1), true,
                       static_cast<std::uint64_t>(step), st));
    CHECK_OK(m.backward());
    group.reduce_gradients(m.grads(), m.tensors(), o.threads);  // replicated: sum over ranks
    st.loss = group.mean(st.loss);  // the MoE statistics are already the group's
    double const norm = group.global_norm(m.grads(), m.tensors(), o.threads);
    float const scale = o.adam.clip > 0.0f && norm > static_cast<double>(o.adam.clip)
                            ? static_cast<float>(static_cast<double>(o.adam.clip) / norm)
                            : 1.0f;
    float const lr = gpt::learning_rate(o.adam, step, o.steps);
    opt.step(m.params(), m.grads(), step, lr, scale, o.threads);
    double const dt = seconds_since(t0);
    train_seconds += dt;
    losses.push_back(st.loss);
    std::int64_t const done = step + 1;
    double const tok_s = static_cast<double>(T) / dt;
    if (done % o.log_every == 0 || done == last)
      std::printf(
          "step %5lld/%lld | loss %.4f | moe %.4f aux %.3f drop %5.2f%% load %.2f | "
          "lr %.2e |g| %.3f | %.0f tok/s\n",
          static_cast<long long>(done), static_cast<long long>(o.steps), st.loss, st.moe_loss,
          st.aux, 100.0 * st.dropped, st.load_spread, static_cast<double>(lr), norm, tok_s);
    evaluated = o.eval_every > 0 && (done % o.eval_every == 0 || done == o.steps);
    if (evaluated) {
      ev = evaluate(m, data, o, group);
      std::printf("eval  %5lld | val loss %.4f |", static_cast<long long>(done), ev.loss);
      for (int l = 0; l < langs; ++l)
        std::printf(" %s %.3f", data.language_name(l), ev.lang_loss[static_cast<std::size_t>(l)]);
      std::printf("\n");
    }
    if (csv != nullptr) {
      std::fprintf(csv, "%lld,%.6e,%.6f,%.6f,%.6f,%.6f,%.6f,%.4f,%.6f,%.1f",
                   static_cast<long long>(done), static_cast<double>(lr), st.loss, st.moe_loss,
                   st.aux, st.z, st.dropped, st.load_spread, norm, tok_s);
      if (evaluated) {
        std::fprintf(csv, ",%.6f", ev.loss);
        for (double v : ev.lang_loss) std::fprintf(csv, ",%.6f", v);
      } else {
        std::fprintf(csv, ",");
        for (int l = 0; l < langs; ++l) std::fprintf(csv, ",");
      }
      std::fprintf(csv, "\n");
      if (evaluated)
        for (std::int64_t l = 0; l < m.moe_layers(); ++l)
          for (int lang = 0; lang < langs; ++lang) {
            std::int64_t const* r = ev.routes.data() + (l * langs + lang) * C.experts;
            std::int64_t sum = 0;
            for (int e = 0; e < C.experts; ++e) sum += r[e];
            std::fprintf(load_csv, "%lld,%lld,%s,%lld", static_cast<long long>(done),
                         static_cast<long long>(m.moe_layer_index(l)), data.language_name(lang),
                         static_cast<long long>(sum));
            for (int e = 0; e < C.experts; ++e)
              std::fprintf(load_csv, ",%.4f",
                           sum > 0 ? static_cast<double>(r[e]) / static_cast<double>(sum) : 0.0);
            std::fprintf(load_csv, "\n");
          }
      std::fflush(csv);
      std::fflush(load_csv);
    }
    if (o.save_every > 0 && !o.save.empty() && done % o.save_every == 0 && done != last) save(done);
  }
  if (csv != nullptr) {
    std::fclose(csv);
    std::fclose(load_csv);
  }
  if (!o.save.empty()) save(step);

  std::int64_t const n = static_cast<std::int64_t>(losses.size());
  double smooth = 0.0;
  std::int64_t const tail = std::min<std::int64_t>(10, n);
  for (std::int64_t i = n - tail; i < n; ++i) smooth += losses[static_cast<std::size_t>(i)];
  smooth = tail > 0 ? smooth / static_cast<double>(tail) : 0.0;
  std::printf(
      "done: %lld steps in %.1f s (%.1f s training, %.0f tok/s); loss %.4f -> %.4f "
      "(mean of last %lld)%s; params hash %016llx\n",
      static_cast<long long>(n), seconds_since(run_start), train_seconds,
      train_seconds > 0.0 ? static_cast<double>(n * T) / train_seconds : 0.0,
      n > 0 ? losses.front() : 0.0, smooth, static_cast<long long>(tail),
      evaluated ? (" ; val loss " + std::to_string(ev.loss)).c_str() : "",
      static_cast<unsigned long long>(hash_floats(m.params())));
  if (o.expect_drop >= 0.0) {
    bool const ok = n > 0 && smooth <= losses.front() - o.expect_drop;
    std::printf("expect-drop %.3f: loss fell by %.3f: %s\n", o.expect_drop,
                n > 0 ? losses.front() - smooth : 0.0, ok ? "PASS" : "FAIL");
    if (!ok) return EXIT_FAILURE;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines appear as they happen, even in a pipe
  options const o = parse(argc, argv);
#if defined(MOE_GPT_MPI)
  MPI_Init(&argc, &argv);
#endif
  // The run-time description of the MoE layer, looked up among this program's compiled configs
  // (dense runs use the top-2 config only for its float32 types).
  moe::config wanted = gpt_top2;
  if (o.dims.moe_every > 0 && (o.experts != 8 || o.top_k != 2)) {
    wanted = o.top_k == 1 ? gpt_top1 : gpt_top2;
    wanted.experts = static_cast<std::int32_t>(o.experts);
    wanted.top_k = static_cast<std::int32_t>(o.top_k);
  }
  int rc = EXIT_FAILURE;
  moe::status const s = moe::dispatch<gpt_configs>(wanted, [&]<moe::config C>() -> moe::status {
    rc = run<C>(o);
    return {};
  });
  if (!s.ok())
    std::fprintf(stderr, "error: --experts %lld --top-k %lld: %s\n",
                 static_cast<long long>(o.experts), static_cast<long long>(o.top_k), s.message());
#if defined(MOE_GPT_MPI)
  MPI_Finalize();
#endif
  return rc;
}
