// Where a composed output goes: the output sinks behind one interface.
//
//   headless  keeps nothing itself: the compositor's canvas is the picture (PNG snapshots, tests);
//   window    an SDL2 window per output, for desktop demos (needs a display: $DISPLAY or Wayland);
//   kms       (later) libdrm atomic commits, libliftoff for planes.
//
// Threading: the compositor thread.
#pragma once

#include <memory>
#include <string>

#include "canopy/base/result.h"
#include "canopy/display/renderer.h"

namespace canopy::display {

class OutputSink {
 public:
  virtual ~OutputSink() = default;
  virtual const char* name() const = 0;
  // Shows the canvas; returns once it is committed (the composition counts as presented then).
  virtual Status present(const Canvas& canvas) = 0;
  // Lets the sink take its window-system events; false once the user closed it.
  virtual bool poll() { return true; }
};

std::unique_ptr<OutputSink> make_headless_sink();
// An SDL2 window titled `title`, showing width x height pixels. kUnsupported when no display is there.
Result<std::unique_ptr<OutputSink>> make_window_sink(const std::string& title, uint32_t width, uint32_t height);

}  // namespace canopy::display
