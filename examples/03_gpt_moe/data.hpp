// SPDX-License-Identifier: Apache-2.0
// The GPT-MoE example's data: byte-level sequences, either from an embedded generator of six
// synthetic "languages" (the default) or from any text file (--data FILE).
//
// The languages differ in everything a router could key on — alphabet (ASCII letters, digits,
// brackets, bytes 0xC0-0xDF, the four letters of DNA), word lengths, and grammar — so that a
// per-language histogram of expert choices shows whether experts specialise:
//   0 prose     Capitalised sentences of words drawn (Zipf-like) from a fixed syllabic lexicon
//   1 arith     correct sums, differences and products of small numbers: "17+25=42, 6*7=42\n"
//   2 brackets  balanced nestings of ()[]{}<> separated by spaces
//   3 runic     words of a second alphabet (bytes 0xC0-0xDF) with its own lexicon and '|' stops
//   4 code      statements of a tiny language: "let v3 = v1 + 42;\nif (v2 < v7) { v1 = v2; }\n"
//   5 dna       codons of a few fixed genes, ATG...TAA, in lines of 60 letters
// Every training sequence comes from one language, chosen uniformly, and carries its id.
// Everything random comes from one 64-bit splitmix64 state (data_rng), which a checkpoint saves.
#pragma once

#include <algorithm>  // std::min
#include <cstdint>    // std::uint64_t, std::int64_t, std::uint8_t
#include <cstdio>     // std::FILE, std::fopen, std::fread
#include <string>     // std::string
#include <vector>     // std::vector

namespace gpt {

/// splitmix64: one 64-bit word of state, so the generator's state is trivially saved.
struct data_rng {
  std::uint64_t state = 0;

  std::uint64_t next() noexcept {
    state += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, n) (n >= 1); the modulo bias is irrelevant here.
  int below(int n) noexcept { return static_cast<int>(next() % static_cast<std::uint64_t>(n)); }
  /// Uniform in [lo, hi].
  int between(int lo, int hi) noexcept { return lo + below(hi - lo + 1); }
};

inline constexpr int language_count = 6;
inline constexpr char const* language_names[language_count] = {"prose", "arith", "brackets",
                                                               "runic", "code",  "dna"};

namespace detail {

/// A fixed lexicon of `words` words built from syllables (consonant + vowel [+ coda]) over
/// the given letter sets; the same for every run (its own seed).
inline std::vector<std::string> make_lexicon(std::uint64_t seed, int words, std::string const& cons,
                                             std::string const& vowels, int min_syl, int max_syl) {
  data_rng r{seed};
  std::vector<std::string> lex;
  for (int w = 0; w < words; ++w) {
    std::string word;
    int const syl = r.between(min_syl, max_syl);
    for (int s = 0; s < syl; ++s) {
      word += cons[static_cast<std::size_t>(r.below(static_cast<int>(cons.size())))];
      word += vowels[static_cast<std::size_t>(r.below(static_cast<int>(vowels.size())))];
      if (r.below(4) == 0)
        word += cons[static_cast<std::size_t>(r.below(static_cast<int>(cons.size())))];
    }
    lex.push_back(word);
  }
  return lex;
}

/// Zipf-like choice of a word index: the minimum of two uniform draws favours low indices.
inline int zipf_index(data_rng& r, int n) {
  return std::min(r.below(n), r.below(n));
}

inline void prose(data_rng& r, std::string& out) {
  static std::vector<std::string> const lex =
      make_lexicon(101, 96, "bdfgklmnprstvz", "aeiou", 1, 3);
  int const words = r.between(4, 10);
  for (int w = 0; w < words; ++w) {
    std::string word = lex[static_cast<std::size_t>(zipf_index(r, 96))];
    if (w == 0) word[0] = static_cast<char>(word[0] - 'a' + 'A');
    out += word;
    out += w + 1 < words ? (r.below(8) == 0 ? ", " : " ") : ". ";
  }
}

inline void arith(data_rng& r, std::string& out) {
  int const a = r.between(0, 99), b = r.between(0, 99);
  switch (r.below(3)) {
    case 0:
      out += std::to_string(a) + "+" + std::to_string(b) + "=" + std::to_string(a + b);
      break;
    case 1:
      out += std::to_string(a) + "-" + std::to_string(b) + "=" + std::to_string(a - b);
      break;
    default: {
      int const c = r.between(0, 12), d = r.between(0, 12);
      out += std::to_string(c) + "*" + std::to_string(d) + "=" + std::to_string(c * d);
    }
  }
  out += r.below(4) == 0 ? "\n" : ", ";
}

inline void brackets_nest(data_rng& r, std::string& out, int depth) {
  static char const open[] = "([{<", close[] = ")]}>";
  int const n = depth == 0 ? r.between(1, 3) : r.between(0, 2);
  for (int i = 0; i < n && depth < 6; ++i) {
    int const k = r.below(4);
    out += open[k];
    brackets_nest(r, out, depth + 1);
    out += close[k];
  }
}

inline void brackets(data_rng& r, std::string& out) {
  brackets_nest(r, out, 0);
  out += ' ';
}

inline void runic(data_rng& r, std::string& out) {
  // A 32-letter alphabet outside ASCII: consonants 0xC0-0xD7, vowels 0xD8-0xDF.
  static std::string const cons = [] {
    std::string s;
    for (int c = 0xC0; c < 0xD8; ++c) s += static_cast<char>(c);
    return s;
  }();
  static std::string const vowels = [] {
    std::string s;
    for (int c = 0xD8; c < 0xE0; ++c) s += static_cast<char>(c);
    return s;
  }();
  static std::vector<std::string> const lex = make_lexicon(202, 64, cons, vowels, 2, 3);
  int const words = r.between(3, 7);
  for (int w = 0; w < words; ++w) {
    out += lex[static_cast<std::size_t>(zipf_index(r, 64))];
    out += w + 1 < words ? "\xA0" : " | ";
  }
}

inline void code(data_rng& r, std::string& out) {
  auto const var = [&] { return "v" + std::to_string(r.below(8)); };
  switch (r.below(4)) {
    case 0:
      out += "let " + var() + " = " + var() + " + " + std::to_string(r.below(100)) + ";\n";
      break;
    case 1:
      out += "if (" + var() + " < " + var() + ") { " + var() + " = " + var() + "; }\n";
      break;
    case 2:
      out += "print(" + var() + ");\n";
      break;
    default:
      out += "while (" + var() + " > 0) { " + var() + " -= 1; }\n";
  }
}

inline void dna(data_rng& r, std::string& out) {
  static char const* const genes[] = {"ATGGCTTCAGGA", "ATGCCCAAGTTT", "ATGGATGATCGC",
                                      "ATGTTGTACGCA", "ATGAGTCCTGGG", "ATGCACCACTAC"};
  out += genes[r.below(6)];
  int const codons = r.between(1, 4);
  static char const* const mid[] = {"GCT", "GGA", "TTC", "CAG", "AAA", "CGT"};
  for (int c = 0; c < codons; ++c) out += mid[r.below(6)];
  out += "TAA";
  if (r.below(5) == 0) out += '\n';
}

}  // namespace detail

/// Appends one "sentence" (a few to a few dozen bytes) of language `lang` to `out`.
inline void generate(int lang, data_rng& r, std::string& out) {
  switch (lang) {
    case 0:
      detail::prose(r, out);
      break;
    case 1:
      detail::arith(r, out);
      break;
    case 2:
      detail::brackets(r, out);
      break;
    case 3:
      detail::runic(r, out);
      break;
    case 4:
      detail::code(r, out);
      break;
    default:
      detail::dna(r, out);
  }
}

/// A batch: B sequences of S + 1 bytes (inputs are [0, S), targets [1, S]) and their languages.
struct batch {
  std::vector<std::uint8_t> bytes;  // [B, S + 1]
  std::vector<int> lang;            // [B]
};

/// Where sequences come from: the generator (file empty) or a file's bytes split 90 / 10.
class dataset {
 public:
  /// The synthetic languages; the validation set is generated from its own seed.
  explicit dataset(std::uint64_t seed) : rng_{seed * 0x2545F4914F6CDD1Dull + 1} {}

  /// Reads `path` whole; false if it cannot be read or is too short for sequences of `seq`.
  bool load_file(char const* path, std::int64_t seq) {
    std::FILE* f = std::fopen(path, "rb");
    if (f == nullptr) return false;
    char buf[1 << 16];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text_.insert(text_.end(), buf, buf + n);
    std::fclose(f);
    split_ = text_.size() * 9 / 10;
    auto const need = static_cast<std::size_t>(seq + 1);
    return split_ > need && text_.size() - split_ > need;
  }

  [[nodiscard]] bool from_file() const noexcept { return !text_.empty(); }
  [[nodiscard]] int languages() const noexcept { return from_file() ? 1 : language_count; }
  [[nodiscard]] char const* language_name(int l) const noexcept {
    return from_file() ? "text" : language_names[l];
  }
  [[nodiscard]] std::uint64_t state() const noexcept { return rng_.state; }
  void set_state(std::uint64_t s) noexcept { rng_.state = s; }

  /// The next training batch (advances the generator state).
  void next_train(std::int64_t B, std::int64_t S, batch& out) { fill(rng_, B, S, false, 0, out); }

  /// Validation batch `i` of a fixed set: languages in turn (balanced), or evenly spaced windows
  /// of the file's last tenth. Does not touch the training state.
  void validation(std::int64_t i, std::int64_t B, std::int64_t S, batch& out) const {
    data_rng r{0x76616C6964ull + static_cast<std::uint64_t>(i) * 0x9E3779B97F4A7C15ull};
    fill(r, B, S, true, i * B, out);
  }

 private:
  void fill(data_rng& r, std::int64_t B, std::int64_t S, bool val, std::int64_t first,
            batch& out) const {
    auto const row = static_cast<std::size_t>(S + 1);
    out.bytes.assign(static_cast<std::size_t>(B) * row, 0);
    out.lang.assign(static_cast<std::size_t>(B), 0);
    for (std::int64_t b = 0; b < B; ++b) {
      std::uint8_t* dst = out.bytes.data() + static_cast<std::size_t>(b) * row;
      if (from_file()) {
        std::size_t const lo = val ? split_ : 0, hi = val ? text_.size() : split_;
        std::size_t const span = hi - lo - row;  // window starts in [lo, lo + span]
        std::size_t const start =
            val ? lo + static_cast<std::size_t>(first + b) * 7919u * row % (span + 1)
                : lo + static_cast<std::size_t>(r.next() % (span + 1));
        for (std::size_t j = 0; j < row; ++j) dst[j] = static_cast<std::uint8_t>(text_[start + j]);
        continue;
      }
      int const lang =
          val ? static_cast<int>((first + b) % language_count) : r.below(language_count);
      out.lang[static_cast<std::size_t>(b)] = lang;
      // Start a little into the text, so sequences do not all open at a sentence start.
      auto const skip = static_cast<std::size_t>(r.below(24));
      std::string text;
      while (text.size() < skip + row) generate(lang, r, text);
      for (std::size_t j = 0; j < row; ++j) dst[j] = static_cast<std::uint8_t>(text[skip + j]);
    }
  }

  data_rng rng_;
  std::vector<char> text_;
  std::size_t split_ = 0;
};

}  // namespace gpt
