// The virgl renderer: virglrenderer (the standard host side of virtio-gpu 3D) behind canopy-gpu's
// Renderer interface. OpenGL through EGL without a window system (VIRGL_RENDERER_USE_SURFACELESS): a
// GPU's render node where there is one, Mesa's llvmpipe otherwise; capsets virgl (1) and virgl2 (2);
// contexts with their command streams; 3D resources whose guest backing virglrenderer reads and writes
// in place (host mappings of the guest's memory); fences that complete when the GPU work has
// (virglrenderer's sync thread makes poll_fd() readable, poll() reports them).
//
// virglrenderer is one instance per process (its state is global): a second make_virgl_renderer while
// one lives fails. canopy-gpu serves one VM per process, so this is the natural unit; a GPU shared by
// several VMs is shared by their canopy-gpu processes through the host's driver.
//
// Threading: everything on one thread (virglrenderer makes its GL contexts current on the caller's
// thread); the fence callback runs inside poll().
#pragma once

#include <memory>
#include <string>

#include "canopy/base/result.h"
#include "canopy/gpu/device.h"

namespace canopy::gpu {

struct VirglOptions {
  bool gles = false;  // OpenGL ES contexts on the host (VIRGL_RENDERER_USE_GLES) instead of desktop GL
  // Venus: capset 4, Vulkan contexts on the host's Vulkan driver (lavapipe here), whose memory reaches
  // the guest as host blobs mapped into the host-visible region.
  bool venus = false;
  // The GPU scheduling priority of this VM's GL contexts (EGL_IMG_context_priority), e.g. high for the
  // cluster VM. kDefault leaves virglrenderer its own EGL setup; any other level makes canopy-gpu create
  // virglrenderer's contexts itself (its EGL display, contexts asked for at that level). Where the driver
  // lacks the extension (llvmpipe) the contexts get the default and priority_granted() says so.
  enum class Priority { kDefault, kLow, kMedium, kHigh };
  Priority priority = Priority::kDefault;
};

// What the driver granted the contexts ("default", "low", "medium", "high", or "default (driver has no
// EGL_IMG_context_priority)"); for logs and tests. Only valid while a virgl renderer lives.
std::string virgl_priority_granted();

// Whether this build has virglrenderer (CMake found it).
bool virgl_available();
// Errors: kUnsupported without virglrenderer; kState when one already lives in this process; kIo when
// virglrenderer cannot start (no EGL).
Result<std::unique_ptr<Renderer>> make_virgl_renderer(const VirglOptions& options = {});

}  // namespace canopy::gpu
