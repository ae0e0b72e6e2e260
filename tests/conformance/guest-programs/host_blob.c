// canopy-guest-hostmem: maps host blobs into a Linux guest through virtio-gpu's host-visible region,
// with the upstream virtio_gpu driver's own uAPI (static; copied into a test guest's initramfs).
//
//   1. DRM_IOCTL_VIRTGPU_GETPARAM: HOST_VISIBLE and CONTEXT_INIT must be 1 (the device has the
//      host-visible shared memory region and the driver found it);
//   2. a context of the venus capset (DRM_IOCTL_VIRTGPU_CONTEXT_INIT, CAPSET_ID 4): its host blobs are
//      virglrenderer's memory in the back-end;
//   3. --blobs host blobs (VIRTGPU_BLOB_MEM_HOST3D, mappable, blob id 0: fresh host memory) of --mb MiB
//      each; each is mapped (DRM_IOCTL_VIRTGPU_MAP: the driver sends RESOURCE_MAP_BLOB and the back-end
//      has the VMM map the memory into the region) and written with its own pattern, every 4-byte word
//      different; then every blob is read back and must hold its own pattern (no two share pages);
//   4. the blobs are closed (the driver unmaps and unrefs them), and the round is repeated --rounds
//      times, so the region's space is taken back and used again.
//
// Output: "canopy-guest-hostmem: KEY ..." lines; exit status 0 when every check held, 1 with a FAIL line.
// Usage: canopy-guest-hostmem [--render /dev/dri/renderD128] [--blobs 4] [--mb 4] [--rounds 3]
#include <drm/drm.h>
#include <drm/virtgpu_drm.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "virtgpu_ioctl.h"

static void die(const char* what) {
  printf("canopy-guest-hostmem: FAIL %s: %s\n", what, errno ? strerror(errno) : "failed");
  exit(1);
}

static uint32_t word(uint32_t blob, uint32_t round, uint32_t i) {
  return (i + 1u) * 2654435761u ^ (blob << 24 | round << 16);
}

enum { kMaxBlobs = 16, kCapsetVenus = 4 };

int main(int argc, char** argv) {
  const char* path = "/dev/dri/renderD128";
  int blobs = 4, mb = 4, rounds = 3;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--render") && i + 1 < argc) path = argv[++i];
    else if (!strcmp(argv[i], "--blobs") && i + 1 < argc) blobs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: canopy-guest-hostmem [--render PATH] [--blobs N] [--mb N] [--rounds N]\n");
      return 2;
    }
  }
  if (blobs < 1 || blobs > kMaxBlobs || mb < 1 || mb > 64 || rounds < 1) {
    errno = EINVAL;
    die("arguments");
  }
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) die(path);
  const int host_visible = getparam(fd, VIRTGPU_PARAM_HOST_VISIBLE),
            ctx_init = getparam(fd, VIRTGPU_PARAM_CONTEXT_INIT);
  printf("canopy-guest-hostmem: params host_visible %d context_init %d\n", host_visible, ctx_init);
  if (host_visible != 1) die("no host-visible region (VIRTGPU_PARAM_HOST_VISIBLE)");
  if (ctx_init != 1) die("no context init (VIRTGPU_PARAM_CONTEXT_INIT)");
  struct drm_virtgpu_context_set_param set[] = {{VIRTGPU_CONTEXT_PARAM_CAPSET_ID, kCapsetVenus},
                                                {VIRTGPU_CONTEXT_PARAM_NUM_RINGS, 1}};
  struct drm_virtgpu_context_init ci = {.num_params = 2, .ctx_set_params = (uint64_t)(uintptr_t)set};
  if (xioctl(fd, DRM_IOCTL_VIRTGPU_CONTEXT_INIT, &ci) != 0) die("CONTEXT_INIT (venus)");

  const size_t size = (size_t)mb << 20;
  for (int round = 0; round < rounds; ++round) {
    uint32_t handles[kMaxBlobs];
    uint32_t* maps[kMaxBlobs];
    for (int b = 0; b < blobs; ++b) {
      struct drm_virtgpu_resource_create_blob c = {0};
      c.blob_mem = VIRTGPU_BLOB_MEM_HOST3D;
      c.blob_flags = VIRTGPU_BLOB_FLAG_USE_MAPPABLE;
      c.size = size;
      c.blob_id = 0;
      if (xioctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB, &c) != 0) die("RESOURCE_CREATE_BLOB (HOST3D)");
      handles[b] = c.bo_handle;
      struct drm_virtgpu_map m = {.handle = c.bo_handle};
      if (xioctl(fd, DRM_IOCTL_VIRTGPU_MAP, &m) != 0) die("VIRTGPU_MAP");
      void* p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)m.offset);
      if (p == MAP_FAILED) die("mmap of the host blob");
      maps[b] = p;
      for (uint32_t i = 0; i < size / 4; ++i) maps[b][i] = word((uint32_t)b, (uint32_t)round, i);
    }
    for (int b = 0; b < blobs; ++b)
      for (uint32_t i = 0; i < size / 4; ++i)
        if (maps[b][i] != word((uint32_t)b, (uint32_t)round, i)) {
          printf("canopy-guest-hostmem: round %d blob %d word %u is 0x%08x, want 0x%08x\n", round, b, i, maps[b][i],
                 word((uint32_t)b, (uint32_t)round, i));
          errno = 0;
          die("a host blob lost what was written into it");
        }
    for (int b = 0; b < blobs; ++b) {
      munmap(maps[b], size);
      struct drm_gem_close gc = {.handle = handles[b]};
      if (xioctl(fd, DRM_IOCTL_GEM_CLOSE, &gc) != 0) die("GEM_CLOSE");
    }
    printf("canopy-guest-hostmem: round %d: %d host blob(s) of %d MiB mapped, written and read back\n", round, blobs,
           mb);
  }
  close(fd);
  printf("canopy-guest-hostmem: PASS %d round(s)\n", rounds);
  return 0;
}
