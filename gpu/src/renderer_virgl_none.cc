// Builds without virglrenderer (CMake did not find it): no virgl renderer.
#include "canopy/gpu/renderer_virgl.h"

namespace canopy::gpu {

bool virgl_available() { return false; }
std::string virgl_priority_granted() { return "default"; }

Result<std::unique_ptr<Renderer>> make_virgl_renderer(const VirglOptions&) {
  return make_error(Errc::kUnsupported, "virgl: this build has no virglrenderer (install libvirglrenderer-dev)");
}

}  // namespace canopy::gpu
