// Explicit little-endian wire integers (BRIEF conventions 4). Wire structs use these members so that a
// struct's in-memory layout is the wire layout on any host; static_assert size and offsets beside each.
#pragma once

#include <bit>
#include <cstdint>

namespace canopy {

template <typename T>
class LeInt {
 public:
  constexpr LeInt() = default;
  constexpr LeInt(T v) : raw_(to_le(v)) {}  // NOLINT: implicit on purpose
  constexpr T get() const { return to_le(raw_); }
  constexpr operator T() const { return get(); }  // NOLINT
  constexpr LeInt& operator=(T v) {
    raw_ = to_le(v);
    return *this;
  }

 private:
  static constexpr T to_le(T v) {
    if constexpr (std::endian::native == std::endian::little) return v;
    else if constexpr (sizeof(T) == 2) return __builtin_bswap16(v);
    else if constexpr (sizeof(T) == 4) return __builtin_bswap32(v);
    else return __builtin_bswap64(v);
  }
  T raw_ = 0;
};

using le16 = LeInt<uint16_t>;
using le32 = LeInt<uint32_t>;
using le64 = LeInt<uint64_t>;
static_assert(sizeof(le16) == 2 && sizeof(le32) == 4 && sizeof(le64) == 8);

}  // namespace canopy
