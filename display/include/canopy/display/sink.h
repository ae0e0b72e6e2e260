// Where a composed output goes: the output sinks behind one interface.
//
//   headless  keeps nothing itself: the compositor's canvas is the picture (PNG snapshots, tests);
//   window    an SDL2 window per output, for desktop demos (needs a display: $DISPLAY or Wayland);
//   kms       libdrm atomic commits on a DRM device, libliftoff choosing the planes (sink_kms.cc).
//
// Threading: the compositor thread.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "canopy/base/result.h"
#include "canopy/buffers/scatter_mapping.h"
#include "canopy/display/layout.h"
#include "canopy/display/renderer.h"

namespace canopy::display {

// A layer a sink may show on a hardware plane of its own: a VM frame (or cursor image) with the memory
// behind it, so the display reads it where the guest drew it.
struct PlaneLayer {
  const LayerSpec* layer = nullptr;
  Image image;                                 // the pixels, inside the buffer's mapping
  const void* buffer_base = nullptr;           // the buffer's mapping: the key of what a sink derives
  std::span<const buffers::FilePiece> pieces;  // the buffer's memory, in mapping order
  std::shared_ptr<void> hold;                  // keeps the frame from its VM while the sink shows it
};

class OutputSink {
 public:
  virtual ~OutputSink() = default;
  virtual const char* name() const = 0;
  // Shows the canvas; returns once it is committed (the composition counts as presented then).
  virtual Status present(const Canvas& canvas) = 0;
  // Lets the sink take its window-system events; false once the user closed it.
  virtual bool poll() { return true; }

  // Hardware planes. A sink that offers them may show a composition's layers (back to front) each on
  // a plane of its own, without the canvas: all of them or none. present_planes() returns false when
  // it cannot (then the compositor composes and calls present()); while the display reads a layer the
  // sink keeps its `hold`.
  virtual bool offers_planes() const { return false; }
  virtual Result<bool> present_planes(std::span<const PlaneLayer> layers) {
    (void)layers;
    return false;
  }
  // The memory mapped at `base` is going away: drop what the sink derived from it (framebuffers).
  virtual void forget_memory(const void* base) { (void)base; }
};

std::unique_ptr<OutputSink> make_headless_sink();
// An SDL2 window titled `title`, showing width x height pixels. kUnsupported when no display is there.
Result<std::unique_ptr<OutputSink>> make_window_sink(const std::string& title, uint32_t width, uint32_t height);

// A DRM device for KMS outputs (shared by all of them: one master descriptor). `path` "" = the first
// /dev/dri/cardN with atomic modesetting and a connected connector.
struct KmsCard;
Result<std::shared_ptr<KmsCard>> open_kms_card(const std::string& path);
// The next connected connector of `card` (in connector-id order) in the mode of width x height, else its
// preferred mode; the canvas is shown from its top-left corner. `name` is for logs.
Result<std::unique_ptr<OutputSink>> make_kms_sink(std::shared_ptr<KmsCard> card, const std::string& name,
                                                  uint32_t width, uint32_t height);

}  // namespace canopy::display
