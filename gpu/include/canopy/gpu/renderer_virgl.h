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

#include "canopy/base/result.h"
#include "canopy/gpu/device.h"

namespace canopy::gpu {

struct VirglOptions {
  bool gles = false;  // OpenGL ES contexts on the host (VIRGL_RENDERER_USE_GLES) instead of desktop GL
  // Venus: capset 4, Vulkan contexts on the host's Vulkan driver (lavapipe here), whose memory reaches
  // the guest as host blobs mapped into the host-visible region.
  bool venus = false;
};

// Whether this build has virglrenderer (CMake found it).
bool virgl_available();
// Errors: kUnsupported without virglrenderer; kState when one already lives in this process; kIo when
// virglrenderer cannot start (no EGL).
Result<std::unique_ptr<Renderer>> make_virgl_renderer(const VirglOptions& options = {});

}  // namespace canopy::gpu
