// SPDX-License-Identifier: Apache-2.0
// From a run-time model description to a compiled config. A program compiles its ops for the
// configs of ONE explicit list, `moe::config_list<...>`, and `moe::dispatch<List>(cfg, f)`
// calls `f.template operator()<C>()` for the config C of that list equal to `cfg`, or returns a
// status that names the configs that are compiled in. Tests, benchmarks and examples iterate the
// same list (moe/configs.hpp); a user extends it with `moe::compiled_configs::append<...>`.
#pragma once

#include <concepts>     // std::invocable
#include <cstddef>      // std::size_t
#include <cstring>      // std::strlen
#include <type_traits>  // std::is_same_v, std::invoke_result_t
#include <utility>      // std::forward

#include "moe/config.hpp"  // moe::config, moe::describe, moe::validate
#include "moe/status.hpp"  // moe::status

namespace moe {

/// A compile-time list of configs.
template <config... Cs>
struct config_list {
  static constexpr std::size_t size = sizeof...(Cs);
  /// This list followed by more configs.
  template <config... More>
  using append = config_list<Cs..., More...>;
  /// True when `c` is in the list.
  static constexpr bool contains(config const& c) noexcept { return ((c == Cs) || ...); }
  /// Calls `f.template operator()<C>()` for every config, in order.
  template <class F>
  static constexpr void for_each(F&& f) {
    (f.template operator()<Cs>(), ...);
  }
};

namespace detail {

template <class T>
struct is_config_list : std::false_type {};
template <config... Cs>
struct is_config_list<config_list<Cs...>> : std::true_type {};

// Appends "{...}, {...}" for the configs of a list to `out`, as much as fits.
template <config... Cs>
void describe_list(config_list<Cs...>, char* out, std::size_t size) noexcept {
  std::size_t used = 0;
  std::size_t shown = 0;
  auto one = [&](config const& c) {
    if (used + 1 >= size) return;
    char item[160];
    int const n = describe(c, item, sizeof item);
    // Leave room for a closing "(+N more)" in case the next one does not fit.
    if (n < 0 || used + static_cast<std::size_t>(n) + 2 + 12 >= size) return;
    used += static_cast<std::size_t>(
        std::snprintf(out + used, size - used, "%s%s", shown ? ", " : "", item));
    ++shown;
  };
  (one(Cs), ...);
  if (shown < sizeof...(Cs) && used + 1 < size)
    std::snprintf(out + used, size - used, " (+%zu more)", sizeof...(Cs) - shown);
}

}  // namespace detail

/// Calls `f.template operator()<C>()` with the config C of `List` equal to `cfg`.
///
/// `f` returns `moe::status` or void; dispatch returns f's status (ok for void). A `cfg` that
/// breaks a rule gets that rule's sentence; a valid `cfg` that is not in `List` gets
/// errc::unsupported_config with a message naming the compiled configs.
template <class List, class F>
  requires detail::is_config_list<List>::value
status dispatch(config const& cfg, F&& f) {
  MOE_TRY(validate(cfg));
  status result = status::error(errc::unsupported_config, "unreachable");
  bool found = false;
  auto try_one = [&]<config C>() {
    if (found || !(cfg == C)) return;
    found = true;
    using r = decltype(f.template operator()<C>());
    if constexpr (std::is_same_v<r, void>) {
      f.template operator()<C>();
      result = status{};
    } else {
      static_assert(std::is_same_v<r, status>, "moe::dispatch: f must return moe::status or void");
      result = f.template operator()<C>();
    }
  };
  List::for_each(try_one);
  if (found) return result;
  char wanted[160];
  describe(cfg, wanted, sizeof wanted);
  status s = status::error(errc::unsupported_config, "config %s is not compiled in; compiled: ",
                           wanted);
  // The rest of the fixed-size message lists the compiled configs, as many as fit.
  char list[status::message_capacity];
  std::size_t const used = std::strlen(s.message());
  detail::describe_list(List{}, list, status::message_capacity - used);
  return status::error(errc::unsupported_config, "config %s is not compiled in; compiled: %s",
                       wanted, list);
}

}  // namespace moe
