// SPDX-License-Identifier: Apache-2.0
// Fuzz target: moe::layer's argument checking on the host. The fuzzer picks the layer shape
// (some sizes zero or negative), the problem (T, H, F, R, rank, min_capacity, loss
// coefficients, group_tokens — any of them may disagree with the layer or be invalid), which
// tensors are null, the workspace (too small, misaligned, null) and the inputs (sometimes
// non-finite). Every call must return a status with a message, or succeed — with finite
// outputs, and a backward that succeeds too, when the inputs are tame (finite, |v| <= 4).
// AddressSanitizer checks that the workspace is never read or written past the bytes given.
#include <cmath>    // std::isfinite, std::abs
#include <cstdint>  // std::int64_t
#include <cstdlib>  // std::aligned_alloc, std::free
#include <vector>   // std::vector

#include "fuzz.hpp"
#include "moe/configs.hpp"  // moe::configs
#include "moe/layer.hpp"    // the layer under test

namespace {
using moe::fuzz::reader;

template <moe::config C>
void run(reader& in) {
  moe::layer_shape shape{.hidden = in.range(-1, 6),
                         .ffn = in.range(-1, 4),
                         .shared_ffn = in.range(-1, 3),
                         .residual_ffn = in.range(-1, 3),
                         .ep_size = static_cast<std::int32_t>(in.range(0, 2))};
  moe::layer<C> l(shape);
  std::uint8_t const bind = in.byte();
  moe::status const a = bind < 16 ? moe::status{} : l.allocate();
  if (!a.ok()) FUZZ_CHECK(a.message()[0] != '\0', "allocate: an error without a message");
  if (a.ok() && bind >= 16) (void)l.init({.seed = bind});
  moe::problem p{.tokens = in.range(-1, 9), .hidden = shape.hidden, .ffn = shape.ffn};
  std::uint8_t const bend = in.byte();
  if (bend & 1) p.hidden = in.range(-1, 6);
  if (bend & 2) p.ffn = in.range(-1, 4);
  if (bend & 4) p.ep_size = static_cast<std::int32_t>(in.range(-1, 2));
  if (bend & 8) p.ep_rank = static_cast<std::int32_t>(in.range(-1, 2));
  if (bend & 16) p.min_capacity = static_cast<std::int32_t>(in.range(-2, 3));
  if (bend & 32) p.aux_loss_coef = in.value();
  if (bend & 64) p.z_loss_coef = in.value();
  if (bend & 128) p.group_tokens = in.range(-1, 20);
  p.training = in.flag();
  std::int64_t const T = p.tokens > 0 ? p.tokens : 0, H = shape.hidden > 0 ? shape.hidden : 0;
  using A = moe::act_t<C>;
  std::vector<A> x(static_cast<std::size_t>(T * H)), y(x.size()), dy(x.size()), dx(x.size());
  bool finite = true;
  for (auto* v : {&x, &dy})
    for (auto& e : *v) {
      float const f = in.byte() < 4 ? in.value() : static_cast<float>(in.range(-64, 64)) / 16.0f;
      finite &= std::isfinite(f) && std::abs(f) <= 4.0f;  // "tame": nothing can overflow
      e = moe::from_float<A>(f);
    }
  std::uint8_t const nulls = in.byte() < 40 ? in.byte() : 0;
  std::size_t const need = l.workspace_bytes(p);
  if (need > (std::size_t{1} << 26)) return;  // a nonsense problem: too big to allocate here
  std::int64_t const slack = in.range(-2, 2) * (in.flag() ? 64 : 1);
  std::size_t const bytes = slack < 0 && need < static_cast<std::size_t>(-slack)
                                ? 0
                                : static_cast<std::size_t>(static_cast<std::int64_t>(need) + slack);
  std::size_t const shift = in.byte() < 16 ? 8 : 0;  // misaligned by 8
  void* block = std::aligned_alloc(256, (bytes + shift + 255) / 256 * 256 + 256);
  char* ws = nulls & 32 ? nullptr : static_cast<char*>(block) + shift;
  moe::layer_stats st{};
  std::vector<std::int32_t> counts(C.experts);
  moe::status const f = l.forward(moe::host, p,
                                  {.x = nulls & 1 ? nullptr : x.data(),
                                   .y = nulls & 2 ? nullptr : y.data(),
                                   .stats = nulls & 4 ? nullptr : &st,
                                   .counts = nulls & 8 ? nullptr : counts.data()},
                                  ws, bytes);
  if (!f.ok()) {
    FUZZ_CHECK(f.message()[0] != '\0', "forward: an error without a message");
  } else {
    for (A v : y) FUZZ_CHECK(!finite || std::isfinite(moe::to_float(v)), "y not finite");
    moe::status const b = l.backward(
        moe::host, p, {.x = x.data(), .dy = nulls & 16 ? nullptr : dy.data(), .dx = dx.data()}, ws,
        bytes);
    FUZZ_CHECK(b.ok() || (nulls & 16 && T > 0) || b.message()[0] != '\0',
               "backward: an error without a message");
    if (finite && (!(nulls & 16) || T == 0))
      FUZZ_CHECK(b.ok(), "backward refused what forward accepted: %s", b.message());
  }
  std::free(block);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  reader in(data, size);
  switch (in.byte() % 3) {
    case 0:
      run<moe::configs::top2_fp32>(in);
      break;
    case 1:
      run<moe::configs::switch_fp32>(in);
      break;
    default:
      run<moe::configs::fine_bf16>(in);
      break;
  }
  return 0;
}
