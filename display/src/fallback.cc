#include "canopy/display/fallback.h"

#include <algorithm>
#include <cstdlib>

namespace canopy::display {

FallbackImage::FallbackImage(uint32_t width, uint32_t height)
    : w_(std::max<uint32_t>(width, 1)), h_(std::max<uint32_t>(height, 1)), px_(size_t(w_) * h_, kFallbackBackground) {
  const int64_t W = w_, H = h_;
  const int64_t border = std::max<int64_t>(2, std::min(W, H) / 40);
  // A triangle pointing up, centred, its height half the shorter side; an "!" cut out of it.
  const int64_t side = std::min(W, H) / 2;
  const int64_t cx = W / 2, top = (H - side) / 2, bottom = top + side;
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x = 0; x < W; ++x) {
      uint32_t& p = px_[size_t(y) * w_ + size_t(x)];
      if (x < border || y < border || x >= W - border || y >= H - border) {
        p = kFallbackAmber;
        continue;
      }
      if (side < 8 || y < top || y >= bottom) continue;
      const int64_t half = (y - top) * side / (2 * side) + 1;  // half width grows to side/2 at the bottom
      if (std::llabs(x - cx) > half) continue;
      const int64_t bar = std::max<int64_t>(1, side / 16);
      const bool stem = std::llabs(x - cx) <= bar && y >= top + side * 3 / 10 && y < top + side * 7 / 10;
      const bool dot = std::llabs(x - cx) <= bar && y >= top + side * 8 / 10 && y < top + side * 9 / 10;
      p = stem || dot ? kFallbackBackground : kFallbackAmber;
    }
  }
}

}  // namespace canopy::display
