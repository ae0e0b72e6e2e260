// The built-in safe fallback a critical layer shows when its VM stops producing frames (stale-frame
// watchdog, canopy/display/scheduler.h): a dark screen with an amber border and an amber warning
// triangle, drawn by the compositor itself so it never depends on a guest.
#pragma once

#include <cstdint>
#include <vector>

#include "canopy/display/renderer.h"

namespace canopy::display {

inline constexpr uint32_t kFallbackBackground = 0x00181818;
inline constexpr uint32_t kFallbackAmber = 0x00ffb000;

// XRGB8888 pixels of a width x height fallback screen (row-major, stride width * 4).
class FallbackImage {
 public:
  FallbackImage(uint32_t width, uint32_t height);
  Image image() const {
    return Image{reinterpret_cast<const uint8_t*>(px_.data()), w_, h_, w_ * 4, buffers::Format::kXRGB8888};
  }

 private:
  uint32_t w_, h_;
  std::vector<uint32_t> px_;
};

}  // namespace canopy::display
