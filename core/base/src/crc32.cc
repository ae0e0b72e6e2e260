#include "canopy/base/crc32.h"

#include <array>

namespace canopy {

uint32_t image_crc32(const uint8_t* data, uint32_t row_bytes, uint32_t height, uint32_t stride) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffffu;
  for (uint32_t y = 0; y < height; ++y) {
    const uint8_t* p = data + uint64_t(y) * stride;
    for (uint32_t i = 0; i < row_bytes; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  }
  return crc ^ 0xffffffffu;
}

}  // namespace canopy
