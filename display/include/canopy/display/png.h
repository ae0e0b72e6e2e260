// PNG snapshots of output canvases (libpng): what the headless output writes and tests read back.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/display/renderer.h"

namespace canopy::display {

// Writes an XRGB8888 canvas as an 8-bit RGB PNG (the X byte is dropped).
Status write_png(const std::string& path, const Canvas& c);
// The same into an open file (written, not closed).
Status write_png(std::FILE* f, const Canvas& c);

// A PNG read back as XRGB8888 (alpha dropped, 0xff in the X byte).
struct PixelImage {
  uint32_t width = 0, height = 0;
  std::vector<uint32_t> pixels;  // width * height, row-major
  uint32_t at(uint32_t x, uint32_t y) const { return pixels[size_t(y) * width + x]; }
  Canvas canvas() { return Canvas{reinterpret_cast<uint8_t*>(pixels.data()), width, height, width * 4}; }
};
Result<PixelImage> read_png(const std::string& path);

}  // namespace canopy::display
