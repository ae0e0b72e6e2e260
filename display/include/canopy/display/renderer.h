// Renderers compose an output's layers into its XRGB8888 canvas. Every renderer implements the same
// geometry (canopy/display/layout.h): crop, rotation, scale to dst, z order, alpha. Formats: XRGB8888,
// ARGB8888 / ABGR8888 (premultiplied, as DRM's default blend mode), XBGR8888, RGB565.
//
// pixman (CPU) is always there; Vulkan (lavapipe or a GPU) comes behind the same interface.
// Threading: a Renderer is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "canopy/base/result.h"
#include "canopy/buffers/image.h"
#include "canopy/display/layout.h"

namespace canopy::display {

// Pixels someone else owns (a frame's contiguous view, the fallback image).
struct Image {
  const uint8_t* data = nullptr;
  uint32_t width = 0, height = 0, stride = 0;
  buffers::Format format = buffers::Format::kXRGB8888;
};

// The output's pixels: XRGB8888.
struct Canvas {
  uint8_t* data = nullptr;
  uint32_t width = 0, height = 0, stride = 0;
};

struct LayerDraw {
  const LayerSpec* layer = nullptr;
  Image image;
};

class Renderer {
 public:
  virtual ~Renderer() = default;
  virtual const char* name() const = 0;
  // Clears the canvas to `background` (0xXXRRGGBB), then draws the layers in order (back to front).
  // A layer whose image has an unsupported format or bad geometry is skipped with kUnsupported /
  // kInvalidArgument reported after the others are drawn.
  virtual Status compose(std::span<const LayerDraw> layers, const Canvas& target, uint32_t background) = 0;
};

std::unique_ptr<Renderer> make_pixman_renderer();

}  // namespace canopy::display
