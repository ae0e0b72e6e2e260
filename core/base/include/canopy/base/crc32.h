// CRC-32 (IEEE, as zlib and gzip compute it) of images: how tests and logs name a picture (a frame a
// GPU back-end received, a layer the compositor showed) without keeping it.
#pragma once

#include <cstdint>

namespace canopy {

// Of the visible pixels of an image: `height` rows of `row_bytes` each, `stride` apart.
uint32_t image_crc32(const uint8_t* data, uint32_t row_bytes, uint32_t height, uint32_t stride);

}  // namespace canopy
