// What the guest programs share: DRM ioctls retried as libdrm's drmIoctl does (EINTR, EAGAIN), and
// DRM_IOCTL_VIRTGPU_GETPARAM. Header-only, plain C on the kernel's uAPI (the programs link statically).
#pragma once

#include <drm/drm.h>
#include <drm/virtgpu_drm.h>
#include <errno.h>
#include <stdint.h>
#include <sys/ioctl.h>

static inline int xioctl(int fd, unsigned long req, void* arg) {
  int r;
  do r = ioctl(fd, req, arg);
  while (r < 0 && (errno == EINTR || errno == EAGAIN));
  return r;
}

// A virtio_gpu parameter's value, or -1 when the driver does not know it.
static inline int getparam(int fd, uint64_t param) {
  int value = 0;
  struct drm_virtgpu_getparam p = {.param = param, .value = (uint64_t)(uintptr_t)&value};
  if (xioctl(fd, DRM_IOCTL_VIRTGPU_GETPARAM, &p) != 0) return -1;
  return value;
}
