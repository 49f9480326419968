// SPDX-License-Identifier: Apache-2.0
// Checkpoints of the GPT-MoE example: everything a run's future depends on, so that a run
// loaded from step s continues bit for bit as if it had never stopped —
//   header   magic "MOEGPT02", the model's dims, E, K, the parameter count, the seed, and the
//            expert-parallel ranks R and this file's rank (moe_gpt_mpi writes one file a rank,
//            its experts differ); a load with other values is refused with a message naming
//            the first mismatch
//   state    the steps done, the data generator's state
//   tensors  parameters, AdamW first and second moments (float32, flat layout, host order)
// There is no other state: the MoE layers draw nothing unless configured to (their seed is a
// function of the step), the validation set is fixed (the same for every seed), and the
// learning rate is a function of the step. The file is written to FILE.tmp and renamed, so a crash
// mid-write leaves the previous checkpoint intact.
#pragma once

#include <cstdint>  // std::int64_t, std::uint64_t
#include <cstdio>   // std::FILE, std::fopen, std::fwrite, std::fread, std::rename
#include <cstring>  // std::memcmp
#include <string>   // std::string
#include <vector>   // std::vector

#include "model.hpp"  // gpt::model_dims

namespace gpt {

/// The fixed part of a checkpoint, written as raw 64-bit words.
struct checkpoint_header {
  char magic[8] = {'M', 'O', 'E', 'G', 'P', 'T', '0', '2'};
  std::int64_t vocab = 0, seq = 0, layers = 0, heads = 0, hidden = 0, ffn = 0, expert_ffn = 0,
               moe_every = 0, tied = 0, experts = 0, top_k = 0, params = 0;
  std::uint64_t seed = 0;
  std::int64_t ranks = 1, rank = 0;  ///< R (moe_gpt: 1) and the rank whose experts these are
  std::int64_t step = 0;             ///< optimiser steps done
  std::uint64_t data_state = 0;      ///< the training data generator's state after `step` batches
};

inline checkpoint_header make_header(model_dims const& d, std::int64_t experts, std::int64_t top_k,
                                     std::int64_t params, std::uint64_t seed,
                                     std::int64_t ranks = 1, std::int64_t rank = 0) {
  checkpoint_header h{};
  h.vocab = d.vocab;
  h.seq = d.seq;
  h.layers = d.layers;
  h.heads = d.heads;
  h.hidden = d.hidden;
  h.ffn = d.ffn;
  h.expert_ffn = d.expert_ffn;
  h.moe_every = d.moe_every;
  h.tied = d.tied;
  h.experts = experts;
  h.top_k = top_k;
  h.params = params;
  h.seed = seed;
  h.ranks = ranks;
  h.rank = rank;
  return h;
}

/// Writes header + the three tensors; false (with a message on stderr) on failure.
inline bool save_checkpoint(std::string const& path, checkpoint_header const& h,
                            std::vector<float> const* const (&tensors)[3]) {
  std::string const tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  bool ok = f != nullptr && std::fwrite(&h, sizeof h, 1, f) == 1;
  for (auto const* t : tensors)
    ok = ok && std::fwrite(t->data(), sizeof(float), t->size(), f) == t->size();
  if (f != nullptr) ok = std::fclose(f) == 0 && ok;
  ok = ok && std::rename(tmp.c_str(), path.c_str()) == 0;
  if (!ok) std::fprintf(stderr, "error: cannot write checkpoint %s\n", path.c_str());
  return ok;
}

/// Reads a checkpoint written for `expect` (every field but step and data_state must match);
/// fills `got` and the three tensors (already of the right size). false, with a message, else.
inline bool load_checkpoint(std::string const& path, checkpoint_header const& expect,
                            checkpoint_header& got, std::vector<float>* const (&tensors)[3]) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    std::fprintf(stderr, "error: cannot open checkpoint %s\n", path.c_str());
    return false;
  }
  bool ok = std::fread(&got, sizeof got, 1, f) == 1;
  if (ok && std::memcmp(got.magic, expect.magic, sizeof got.magic) != 0) {
    std::fprintf(stderr, "error: %s is not a moe_gpt checkpoint\n", path.c_str());
    std::fclose(f);
    return false;
  }
  struct field {
    char const* name;
    std::int64_t want, have;
  };
  field const fields[] = {
      {"vocab", expect.vocab, got.vocab},
      {"seq", expect.seq, got.seq},
      {"layers", expect.layers, got.layers},
      {"heads", expect.heads, got.heads},
      {"hidden", expect.hidden, got.hidden},
      {"ffn", expect.ffn, got.ffn},
      {"expert-ffn", expect.expert_ffn, got.expert_ffn},
      {"moe-every", expect.moe_every, got.moe_every},
      {"tied", expect.tied, got.tied},
      {"experts", expect.experts, got.experts},
      {"top-k", expect.top_k, got.top_k},
      {"parameters", expect.params, got.params},
      {"seed", static_cast<std::int64_t>(expect.seed), static_cast<std::int64_t>(got.seed)},
      {"ranks", expect.ranks, got.ranks},
      {"rank", expect.rank, got.rank}};
  for (auto const& fl : fields)
    if (ok && fl.want != fl.have) {
      std::fprintf(stderr, "error: checkpoint %s has %s = %lld, this run %lld\n", path.c_str(),
                   fl.name, static_cast<long long>(fl.have), static_cast<long long>(fl.want));
      ok = false;
    }
  for (auto* t : tensors)
    ok = ok && std::fread(t->data(), sizeof(float), t->size(), f) == t->size();
  ok = ok && std::fgetc(f) == EOF;
  std::fclose(f);
  if (!ok)
    std::fprintf(stderr, "error: checkpoint %s is truncated or does not match\n", path.c_str());
  return ok;
}

}  // namespace gpt
