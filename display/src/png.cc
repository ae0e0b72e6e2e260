#include "canopy/display/png.h"

#include <png.h>

#include <cerrno>
#include <cstring>

namespace canopy::display {

Status write_png(const std::string& path, const Canvas& c) {
  std::FILE* f = std::fopen(path.c_str(), "wbe");
  if (!f) return make_error(Errc::kIo, "png: cannot create the file", errno);
  Status s = write_png(f, c);
  if (std::fclose(f) != 0 && s.ok()) return make_error(Errc::kIo, "png: writing the file failed", errno);
  return s;
}

Status write_png(std::FILE* f, const Canvas& c) {
  if (!c.data || c.width == 0 || c.height == 0 || c.stride < c.width * 4)
    return make_error(Errc::kInvalidArgument, "png: bad canvas");
  std::vector<uint8_t> rgb(size_t(c.width) * c.height * 3);
  for (uint32_t y = 0; y < c.height; ++y) {
    const auto* row = reinterpret_cast<const uint32_t*>(c.data + size_t(y) * c.stride);
    uint8_t* out = rgb.data() + size_t(y) * c.width * 3;
    for (uint32_t x = 0; x < c.width; ++x) {
      const uint32_t p = row[x];
      uint8_t* px = out + size_t(x) * 3;
      px[0] = uint8_t(p >> 16);
      px[1] = uint8_t(p >> 8);
      px[2] = uint8_t(p);
    }
  }
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = c.width;
  img.height = c.height;
  img.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_stdio(&img, f, 0, rgb.data(), 0, nullptr)) {
    png_image_free(&img);
    return make_error(Errc::kIo, "png: writing the file failed");
  }
  return {};
}

Result<PixelImage> read_png(const std::string& path) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&img, path.c_str())) return make_error(Errc::kIo, "png: cannot read the file");
  if (img.width == 0 || img.height == 0 || img.width > 16384 || img.height > 16384) {
    png_image_free(&img);
    return make_error(Errc::kLimit, "png: image size out of range");
  }
  img.format = PNG_FORMAT_BGRA;  // little-endian 0xAARRGGBB words
  PixelImage out;
  out.width = img.width;
  out.height = img.height;
  out.pixels.resize(size_t(img.width) * img.height);
  if (!png_image_finish_read(&img, nullptr, out.pixels.data(), 0, nullptr)) {
    png_image_free(&img);
    return make_error(Errc::kInvalidArgument, "png: decoding failed");
  }
  for (auto& p : out.pixels) p |= 0xff000000u;
  return out;
}

}  // namespace canopy::display
