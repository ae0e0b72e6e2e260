// Checked arithmetic for guest-controlled sizes, offsets and counts (BRIEF conventions 5).
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>

namespace canopy {

template <typename T>
  requires std::is_unsigned_v<T>
constexpr std::optional<T> checked_add(T a, T b) {
  T r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

template <typename T>
  requires std::is_unsigned_v<T>
constexpr std::optional<T> checked_mul(T a, T b) {
  T r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// True when [off, off+len) lies inside [0, size).
constexpr bool range_within(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

}  // namespace canopy
