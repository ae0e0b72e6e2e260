#include "egl_probe.h"

#include <EGL/egl.h>
#include <EGL/eglext.h>

namespace canopy::gpu::test_support {

std::optional<std::string> egl_display_extensions() {
  auto get_display = reinterpret_cast<PFNEGLGETPLATFORMDISPLAYEXTPROC>(eglGetProcAddress("eglGetPlatformDisplayEXT"));
  if (!get_display) return std::nullopt;
  EGLint major = 0, minor = 0;
  EGLDisplay dpy = get_display(EGL_PLATFORM_SURFACELESS_MESA, EGL_DEFAULT_DISPLAY, nullptr);
  if (dpy == EGL_NO_DISPLAY || !eglInitialize(dpy, &major, &minor)) {
    auto query_devices = reinterpret_cast<PFNEGLQUERYDEVICESEXTPROC>(eglGetProcAddress("eglQueryDevicesEXT"));
    EGLDeviceEXT dev;
    EGLint n = 0;
    if (!query_devices || !query_devices(1, &dev, &n) || n < 1) return std::nullopt;
    dpy = get_display(EGL_PLATFORM_DEVICE_EXT, dev, nullptr);
    if (dpy == EGL_NO_DISPLAY || !eglInitialize(dpy, &major, &minor)) return std::nullopt;
  }
  const char* ext = eglQueryString(dpy, EGL_EXTENSIONS);
  return std::string(ext ? ext : "");
}

}  // namespace canopy::gpu::test_support
