// Test support: an independent look at the EGL display that canopy-gpu's own GL contexts are made on
// (Mesa's surfaceless platform, else the first EGL device), so a test can tell what the driver offers
// without asking the code under test.
#pragma once

#include <optional>
#include <string>

namespace canopy::gpu::test_support {

// The display's EGL_EXTENSIONS string; nullopt in builds without EGL or when no display initialises.
// The display stays initialised (EGL displays are per process; the renderer may share it).
std::optional<std::string> egl_display_extensions();

}  // namespace canopy::gpu::test_support
