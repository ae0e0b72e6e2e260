// canopy-guest-blob: scans out virtio-gpu blob resources from a Linux guest's userspace, through the
// upstream virtio_gpu driver's own uAPI (no libdrm: the program is linked statically and copied into a
// test guest's initramfs, where nothing else is installed).
//
//   1. DRM_IOCTL_VIRTGPU_GETPARAM: RESOURCE_BLOB and CONTEXT_INIT must be 1 (the device offered
//      VIRTIO_GPU_F_RESOURCE_BLOB and VIRTIO_GPU_F_CONTEXT_INIT and the driver took them);
//   2. two DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB resources (VIRTGPU_BLOB_MEM_GUEST, mappable) of the
//      connector's preferred mode, mapped (DRM_IOCTL_VIRTGPU_MAP + mmap) and filled with two different
//      patterns in which every row and every page differs, so a misplaced page or a wrong stride
//      changes the image's checksum;
//   3. a framebuffer on each (ADDFB2, XRGB8888), SETCRTC with the first: the driver sends
//      SET_SCANOUT_BLOB + RESOURCE_FLUSH; then --flips page flips alternating the two (each a
//      SET_SCANOUT_BLOB + RESOURCE_FLUSH).
//   4. after the SETCRTC and after each flip, a host barrier: Linux 6.12's virtio_gpu fences a flip only
//      for dumb buffers, so a blob flip's event says nothing about the host (the guest could flip 20
//      times and power off while the device still had the commands queued; the power-off resets the
//      device, canopy-vmm stops the rings, and those commands are never processed). The barrier is a
//      fenced RESOURCE_CREATE of a small 2D resource followed by VIRTGPU_WAIT on it: the device answers
//      the control queue in order, so when the fence signals, the flip's flush was processed (and
//      logged by canopy-gpu's output). "shown" counts only flips the host processed.
//
// Output, for the test scripts: one "canopy-guest-blob: KEY ..." line per step, including the CRC-32
// (IEEE, as gzip) of each pattern's pixels, which the host compares with what reached canopy-gpu's
// scanout output. Exit status 0 when every step worked, 1 with a message otherwise.
// Usage: canopy-guest-blob [--card /dev/dri/card0] [--flips 20]
#include <drm/drm.h>
#include <drm/drm_fourcc.h>
#include <drm/drm_mode.h>
#include <drm/virtgpu_drm.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "virtgpu_ioctl.h"

static void die(const char* what) {
  fprintf(stderr, "canopy-guest-blob: FAIL %s: %s\n", what, errno ? strerror(errno) : "failed");
  printf("canopy-guest-blob: FAIL %s\n", what);
  exit(1);
}

static uint32_t crc32_ieee(const uint8_t* p, size_t n) {
  static uint32_t table[256];
  if (!table[1])
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

struct blob {
  uint32_t bo, res, fb;
  uint64_t size;
  uint8_t* map;
  uint32_t crc;
};

// Pattern `which` (0 or 1): red from x, green from y, blue from the 4 KiB page the pixel lies in.
static void fill(struct blob* b, uint32_t w, uint32_t h, int which) {
  for (uint32_t y = 0; y < h; ++y) {
    uint32_t* row = (uint32_t*)(b->map + (uint64_t)y * w * 4);
    for (uint32_t x = 0; x < w; ++x) {
      const uint64_t off = ((uint64_t)y * w + x) * 4;
      uint32_t r = (x * 3 + (uint32_t)which * 128) & 0xff, g = (y * 5) & 0xff, bl = (uint32_t)(off >> 12) & 0xff;
      if (which) bl ^= 0xff;
      row[x] = 0xff000000u | r << 16 | g << 8 | bl;
    }
  }
  b->crc = crc32_ieee(b->map, (size_t)w * h * 4);
}

static void make_blob(int fd, struct blob* b, uint32_t w, uint32_t h) {
  const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  b->size = ((uint64_t)w * h * 4 + page - 1) / page * page;
  struct drm_virtgpu_resource_create_blob c = {0};
  c.blob_mem = VIRTGPU_BLOB_MEM_GUEST;
  c.blob_flags = VIRTGPU_BLOB_FLAG_USE_MAPPABLE;
  c.size = b->size;
  if (xioctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB, &c) != 0) die("RESOURCE_CREATE_BLOB");
  b->bo = c.bo_handle;
  b->res = c.res_handle;
  struct drm_virtgpu_map m = {.handle = b->bo};
  if (xioctl(fd, DRM_IOCTL_VIRTGPU_MAP, &m) != 0) die("VIRTGPU_MAP");
  void* p = mmap(NULL, b->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)m.offset);
  if (p == MAP_FAILED) die("mmap of the blob");
  b->map = p;
  struct drm_mode_fb_cmd2 f = {0};
  f.width = w;
  f.height = h;
  f.pixel_format = DRM_FORMAT_XRGB8888;
  f.handles[0] = b->bo;
  f.pitches[0] = w * 4;
  if (xioctl(fd, DRM_IOCTL_MODE_ADDFB2, &f) != 0) die("ADDFB2 on the blob");
  b->fb = f.fb_id;
}

// The host barrier of step 4: RESOURCE_CREATE of a small 2D resource, which virtio_gpu sends fenced (the
// fence is on the new object, with or without 3D), then VIRTGPU_WAIT for that fence and GEM_CLOSE.
// (TRANSFER_TO_HOST is fenced only on a device with virgl, so it is no barrier on a 2D device.)
static void host_barrier(int fd) {
  struct drm_virtgpu_resource_create c = {0};
  c.target = 2;  // PIPE_TEXTURE_2D, the only target without 3D
  c.format = 2;  // VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
  c.width = 16;
  c.height = 16;
  c.depth = 1;
  c.array_size = 1;
  c.size = 16 * 16 * 4;
  c.stride = 16 * 4;
  if (xioctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_CREATE, &c) != 0) die("RESOURCE_CREATE for the host barrier");
  // VIRTGPU_WAIT gives up after 15 s with EBUSY; a busy nested-TCG host may need longer: the test's own
  // time limit is the hang guard.
  for (;;) {
    struct drm_virtgpu_3d_wait w = {.handle = c.bo_handle};
    if (xioctl(fd, DRM_IOCTL_VIRTGPU_WAIT, &w) == 0) break;
    if (errno != EBUSY) die("VIRTGPU_WAIT for the host barrier");
  }
  struct drm_gem_close g = {.handle = c.bo_handle};
  if (xioctl(fd, DRM_IOCTL_GEM_CLOSE, &g) != 0) die("GEM_CLOSE of the host barrier");
}

static void wait_flip(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r = poll(&p, 1, 600000);  // a hang guard: the event follows the commit, not the host
  if (r <= 0) {
    errno = r == 0 ? ETIMEDOUT : errno;
    die("waiting for the flip event");
  }
  char buf[256];
  ssize_t n = read(fd, buf, sizeof buf);
  if (n < (ssize_t)sizeof(struct drm_event)) die("reading the flip event");
  struct drm_event ev;
  memcpy(&ev, buf, sizeof ev);
  if (ev.type != DRM_EVENT_FLIP_COMPLETE) {
    errno = EPROTO;
    die("unexpected DRM event");
  }
}

int main(int argc, char** argv) {
  const char* card = "/dev/dri/card0";
  int flips = 20;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--card") && i + 1 < argc) card = argv[++i];
    else if (!strcmp(argv[i], "--flips") && i + 1 < argc) flips = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: canopy-guest-blob [--card /dev/dri/card0] [--flips 20]\n");
      return 2;
    }
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  const int fd = open(card, O_RDWR | O_CLOEXEC);
  if (fd < 0) die(card);

  const int blob = getparam(fd, VIRTGPU_PARAM_RESOURCE_BLOB), ctx = getparam(fd, VIRTGPU_PARAM_CONTEXT_INIT);
  const int hv = getparam(fd, VIRTGPU_PARAM_HOST_VISIBLE), d3 = getparam(fd, VIRTGPU_PARAM_3D_FEATURES);
  printf("canopy-guest-blob: params resource_blob=%d context_init=%d host_visible=%d 3d=%d\n", blob, ctx, hv, d3);
  errno = 0;
  if (blob != 1) die("the driver reports no blob resources (VIRTGPU_PARAM_RESOURCE_BLOB)");
  if (ctx != 1) die("the driver reports no context init (VIRTGPU_PARAM_CONTEXT_INIT)");

  // The first connected connector, its preferred mode and a CRTC its encoder can drive.
  uint32_t conns[16], crtcs[16];
  struct drm_mode_card_res res = {0};
  if (xioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res) != 0) die("GETRESOURCES");
  if (res.count_connectors == 0 || res.count_connectors > 16 || res.count_crtcs == 0 || res.count_crtcs > 16) {
    errno = ENODEV;
    die("odd connector/CRTC count");
  }
  const uint32_t nconn = res.count_connectors, ncrtc = res.count_crtcs;
  memset(&res, 0, sizeof res);
  res.count_connectors = nconn;
  res.connector_id_ptr = (uint64_t)(uintptr_t)conns;
  res.count_crtcs = ncrtc;
  res.crtc_id_ptr = (uint64_t)(uintptr_t)crtcs;
  if (xioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res) != 0) die("GETRESOURCES (ids)");
  uint32_t conn_id = 0, crtc_id = 0;
  struct drm_mode_modeinfo mode;
  for (uint32_t i = 0; i < nconn && !conn_id; ++i) {
    struct drm_mode_get_connector c = {.connector_id = conns[i]};
    if (xioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &c) != 0) die("GETCONNECTOR");
    if (c.connection != 1 || c.count_modes == 0) continue;
    struct drm_mode_modeinfo modes[64];
    uint32_t encoders[8];
    const uint32_t nm = c.count_modes > 64 ? 64 : c.count_modes, ne = c.count_encoders > 8 ? 8 : c.count_encoders;
    struct drm_mode_get_connector c2 = {.connector_id = conns[i]};
    c2.count_modes = nm;
    c2.modes_ptr = (uint64_t)(uintptr_t)modes;
    c2.count_encoders = ne;
    c2.encoders_ptr = (uint64_t)(uintptr_t)encoders;
    if (xioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &c2) != 0) die("GETCONNECTOR (modes)");
    mode = modes[0];
    for (uint32_t m = 0; m < nm; ++m)
      if (modes[m].type & DRM_MODE_TYPE_PREFERRED) {
        mode = modes[m];
        break;
      }
    for (uint32_t e = 0; e < ne && !crtc_id; ++e) {
      struct drm_mode_get_encoder enc = {.encoder_id = encoders[e]};
      if (xioctl(fd, DRM_IOCTL_MODE_GETENCODER, &enc) != 0) die("GETENCODER");
      for (uint32_t k = 0; k < ncrtc; ++k)
        if (enc.possible_crtcs & (1u << k)) {
          crtc_id = crtcs[k];
          break;
        }
    }
    if (crtc_id) conn_id = conns[i];
  }
  if (!conn_id) {
    errno = ENODEV;
    die("no connected connector with a mode and a CRTC");
  }
  const uint32_t w = mode.hdisplay, h = mode.vdisplay;
  printf("canopy-guest-blob: connector %u crtc %u mode %ux%u\n", conn_id, crtc_id, w, h);

  struct blob b[2];
  memset(b, 0, sizeof b);
  for (int i = 0; i < 2; ++i) {
    make_blob(fd, &b[i], w, h);
    fill(&b[i], w, h, i);
    printf("canopy-guest-blob: blob %c resource %u size %llu fb %u crc %08x\n", 'A' + i, b[i].res,
           (unsigned long long)b[i].size, b[i].fb, b[i].crc);
  }

  struct drm_mode_crtc set = {0};
  set.crtc_id = crtc_id;
  set.fb_id = b[0].fb;
  set.set_connectors_ptr = (uint64_t)(uintptr_t)&conn_id;
  set.count_connectors = 1;
  set.mode = mode;
  set.mode_valid = 1;
  if (xioctl(fd, DRM_IOCTL_MODE_SETCRTC, &set) != 0) die("SETCRTC with blob A");
  host_barrier(fd);
  printf("canopy-guest-blob: scanout set to blob A\n");

  int shown[2] = {1, 0};
  for (int i = 1; i <= flips; ++i) {
    struct drm_mode_crtc_page_flip f = {.crtc_id = crtc_id, .fb_id = b[i & 1].fb, .flags = DRM_MODE_PAGE_FLIP_EVENT};
    if (xioctl(fd, DRM_IOCTL_MODE_PAGE_FLIP, &f) != 0) die("PAGE_FLIP");
    wait_flip(fd);
    host_barrier(fd);
    ++shown[i & 1];
  }
  printf("canopy-guest-blob: %d flips done, shown A %d B %d\n", flips, shown[0], shown[1]);
  // Closing the card lets go of everything: fbcon takes the scanout back, the resources are unreferenced.
  for (int i = 0; i < 2; ++i) munmap(b[i].map, b[i].size);
  close(fd);
  printf("canopy-guest-blob: PASS\n");
  return 0;
}
