// Builds without EGL: nothing to look at.
#include "egl_probe.h"

namespace canopy::gpu::test_support {

std::optional<std::string> egl_display_extensions() { return std::nullopt; }

}  // namespace canopy::gpu::test_support
