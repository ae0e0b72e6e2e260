// Renderers compose an output's layers into its XRGB8888 canvas. Every renderer implements the same
// geometry (canopy/display/layout.h): crop, rotation, scale to dst, z order, alpha. Formats: XRGB8888,
// ARGB8888 / ABGR8888 (premultiplied, as DRM's default blend mode), XBGR8888, RGB565.
//
// pixman (CPU) is always there; Vulkan (lavapipe or a GPU) gives the same pixels (renderer_vulkan.cc).
// Threading: a Renderer is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "canopy/base/result.h"
#include "canopy/buffers/image.h"
#include "canopy/display/layout.h"

namespace canopy::display {

// Where an image or canvas lies when it lies in a page-aligned mapping that stays mapped until the
// owner calls Renderer::forget_memory(base) (a frame buffer's contiguous view, the compositor's
// canvases). Renderers may keep what they derive from such memory: the Vulkan renderer imports each
// mapping once (VK_EXT_external_memory_host) and reads or writes it in place. Memory without one
// (base == nullptr) is copied through a staging buffer by renderers that cannot use it directly.
struct Mapping {
  const void* base = nullptr;
  size_t size = 0;
};

// Pixels someone else owns (a frame's contiguous view, the fallback image).
struct Image {
  const uint8_t* data = nullptr;
  uint32_t width = 0, height = 0, stride = 0;
  buffers::Format format = buffers::Format::kXRGB8888;
  Mapping mapping;  // optional: the mapping data lies in
};

// The output's pixels: XRGB8888.
struct Canvas {
  uint8_t* data = nullptr;
  uint32_t width = 0, height = 0, stride = 0;
  Mapping mapping;  // optional: the mapping data lies in
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
  // Returns when the canvas holds the result (a GPU renderer waits for its work to finish).
  virtual Status compose(std::span<const LayerDraw> layers, const Canvas& target, uint32_t background) = 0;
  // The mapping at `base` is about to be unmapped: drop everything derived from it. Must be called
  // before munmap for every Mapping given in an Image or Canvas.
  virtual void forget_memory(const void* base) { (void)base; }
  // False once the renderer cannot draw any more (its device was lost or hung); callers switch to
  // another renderer.
  virtual bool usable() const { return true; }

  struct Stats {
    uint64_t compositions = 0;
    uint64_t imports = 0;       // mappings imported (once each)
    uint64_t bytes_staged = 0;  // bytes copied because memory had no usable mapping
  };
  virtual Stats stats() const { return {}; }
};

std::unique_ptr<Renderer> make_pixman_renderer();

// The Vulkan renderer: one compute dispatch per layer into the canvas, reading frames and writing the
// canvas where they lie in memory (host-pointer imports); a timeline semaphore tells when a
// composition is done. Same pixels as the pixman renderer (docs/display.md says to what tolerance).
struct VulkanOptions {
  std::string device;     // use the first device whose name contains this ("" = rank by type)
  bool allow_cpu = true;  // accept a CPU implementation (lavapipe); false: GPUs only
};
// Fails with kUnsupported when no device has what it needs (Vulkan 1.2, timeline semaphores,
// VK_EXT_external_memory_host, a compute queue).
Result<std::unique_ptr<Renderer>> make_vulkan_renderer(const VulkanOptions& options = {});

}  // namespace canopy::display
