// canopy-drm-bench: what a Linux guest sees of its virtio-gpu device through KMS, measured from guest
// userspace with libdrm (run inside the guest; bench/gpu_guest_bench.sh boots the same guest against
// canopy-gpu and against QEMU's own virtio-gpu devices and compares).
//
//   page flips     drmModePageFlip between two dumb buffers, one flip in flight at a time, for
//                  --seconds: the rate and the submit -> flip-event latency. virtio_gpu turns each
//                  flip into TRANSFER_TO_HOST_2D + a fenced RESOURCE_FLUSH and completes the flip when
//                  the device answers the fence, so this is the device's present round trip.
//   cursor image   drmModeSetCursor alternating two 64x64 images, --cursor-rounds times: the driver
//                  uploads the new image with a fenced transfer and waits for it, so each call is a
//                  round trip through the device's control queue, followed by a cursor-queue update.
//   cursor move    drmModeMoveCursor: the driver queues the move on the cursor queue without waiting
//                  (fire and forget), so this is the guest-side cost only.
//
// Output: one line per measurement, "canopy-drm-bench: NAME key=value ...", for scripts to parse.
// Usage: canopy-drm-bench [--card /dev/dri/card0] [--seconds 5] [--cursor-rounds 300]
#include <drm_fourcc.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xf86drm.h>
#include <xf86drmMode.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "canopy-drm-bench: %s: %s\n", what, errno ? std::strerror(errno) : "failed");
  std::exit(1);
}

double us_since(Clock::time_point t0) { return std::chrono::duration<double, std::micro>(Clock::now() - t0).count(); }

struct Stats {
  double median, p99, max;
};
Stats stats(std::vector<double> v) {
  if (v.empty()) return {0, 0, 0};
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, size_t(q * double(v.size())))]; };
  return {at(0.5), at(0.99), v.back()};
}

struct DumbBuffer {
  uint32_t handle = 0, pitch = 0, fb = 0;
  uint64_t size = 0;
};

DumbBuffer create_dumb(int fd, uint32_t w, uint32_t h, uint32_t fill) {
  drm_mode_create_dumb c{};
  c.width = w;
  c.height = h;
  c.bpp = 32;
  if (drmIoctl(fd, DRM_IOCTL_MODE_CREATE_DUMB, &c) != 0) die("DRM_IOCTL_MODE_CREATE_DUMB");
  DumbBuffer b{c.handle, c.pitch, 0, c.size};
  drm_mode_map_dumb m{};
  m.handle = c.handle;
  if (drmIoctl(fd, DRM_IOCTL_MODE_MAP_DUMB, &m) != 0) die("DRM_IOCTL_MODE_MAP_DUMB");
  void* p = mmap(nullptr, c.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(m.offset));
  if (p == MAP_FAILED) die("mmap of a dumb buffer");
  auto* px = static_cast<uint32_t*>(p);
  for (uint64_t i = 0; i < c.size / 4; ++i) px[i] = fill;
  munmap(p, c.size);
  return b;
}

struct FlipState {
  bool pending = false;
};

void on_flip(int, unsigned, unsigned, unsigned, void* data) { static_cast<FlipState*>(data)->pending = false; }

}  // namespace

int main(int argc, char** argv) {
  std::string card = "/dev/dri/card0";
  double seconds = 5;
  int cursor_rounds = 300;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "canopy-drm-bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--card") card = value();
    else if (a == "--seconds") seconds = std::atof(value().c_str());
    else if (a == "--cursor-rounds") cursor_rounds = std::atoi(value().c_str());
    else {
      std::fprintf(stderr, "usage: canopy-drm-bench [--card PATH] [--seconds S] [--cursor-rounds N]\n");
      return 2;
    }
  }
  if (seconds <= 0 || cursor_rounds < 1) {
    std::fprintf(stderr, "canopy-drm-bench: --seconds and --cursor-rounds must be positive\n");
    return 2;
  }

  int fd = open(card.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) die(card.c_str());
  drmModeRes* res = drmModeGetResources(fd);
  if (!res) die("drmModeGetResources");

  // The first connected connector, its preferred mode, and a CRTC its encoder can drive.
  drmModeConnector* conn = nullptr;
  for (int i = 0; i < res->count_connectors && !conn; ++i) {
    drmModeConnector* c = drmModeGetConnector(fd, res->connectors[i]);
    if (c && c->connection == DRM_MODE_CONNECTED && c->count_modes > 0) conn = c;
    else if (c) drmModeFreeConnector(c);
  }
  if (!conn) die("no connected connector with modes");
  drmModeModeInfo mode = conn->modes[0];
  for (int i = 0; i < conn->count_modes; ++i) {
    if (conn->modes[i].type & DRM_MODE_TYPE_PREFERRED) {
      mode = conn->modes[i];
      break;
    }
  }
  uint32_t crtc = 0;
  for (int e = 0; e < conn->count_encoders && !crtc; ++e) {
    drmModeEncoder* enc = drmModeGetEncoder(fd, conn->encoders[e]);
    if (!enc) continue;
    for (int i = 0; i < res->count_crtcs; ++i) {
      if (enc->possible_crtcs & (1u << i)) {
        crtc = res->crtcs[i];
        break;
      }
    }
    drmModeFreeEncoder(enc);
  }
  if (!crtc) die("no CRTC for the connector");
  std::printf("canopy-drm-bench: setup connector=%u crtc=%u mode=%ux%u@%u\n", conn->connector_id, crtc, mode.hdisplay,
              mode.vdisplay, mode.vrefresh);

  // Two full-screen buffers to flip between.
  DumbBuffer fb[2];
  for (int i = 0; i < 2; ++i) {
    fb[i] = create_dumb(fd, mode.hdisplay, mode.vdisplay, i ? 0xff3060a0u : 0xffa06030u);
    uint32_t handles[4] = {fb[i].handle}, pitches[4] = {fb[i].pitch}, offsets[4] = {0};
    if (drmModeAddFB2(fd, mode.hdisplay, mode.vdisplay, DRM_FORMAT_XRGB8888, handles, pitches, offsets, &fb[i].fb, 0))
      die("drmModeAddFB2");
  }
  uint32_t conn_id = conn->connector_id;
  if (drmModeSetCrtc(fd, crtc, fb[0].fb, 0, 0, &conn_id, 1, &mode)) die("drmModeSetCrtc");

  // Page flips, one in flight.
  FlipState st;
  drmEventContext ev{};
  ev.version = 2;
  ev.page_flip_handler = on_flip;
  std::vector<double> flip_us;
  const auto start = Clock::now();
  const auto until = start + std::chrono::duration<double>(seconds);
  int cur = 0;
  while (Clock::now() < until) {
    cur ^= 1;
    auto t0 = Clock::now();
    if (drmModePageFlip(fd, crtc, fb[cur].fb, DRM_MODE_PAGE_FLIP_EVENT, &st)) die("drmModePageFlip");
    st.pending = true;
    while (st.pending) {
      pollfd p{fd, POLLIN, 0};
      int r = poll(&p, 1, 2000);
      if (r == 0) {
        errno = ETIMEDOUT;
        die("page-flip event");
      }
      if (r < 0 && errno != EINTR) die("poll");
      if (r > 0 && drmHandleEvent(fd, &ev)) die("drmHandleEvent");
    }
    flip_us.push_back(us_since(t0));
  }
  double total_s = std::chrono::duration<double>(Clock::now() - start).count();
  Stats f = stats(flip_us);
  std::printf("canopy-drm-bench: flip flips=%zu seconds=%.2f rate_hz=%.1f median_us=%.0f p99_us=%.0f max_us=%.0f\n",
              flip_us.size(), total_s, double(flip_us.size()) / total_s, f.median, f.p99, f.max);

  // Cursor image updates (a fenced upload each) and moves.
  DumbBuffer cur_bo[2] = {create_dumb(fd, 64, 64, 0xffffffffu), create_dumb(fd, 64, 64, 0xff000000u)};
  std::vector<double> img_us, move_us;
  for (int i = 0; i < cursor_rounds; ++i) {
    auto t0 = Clock::now();
    if (drmModeSetCursor(fd, crtc, cur_bo[i & 1].handle, 64, 64)) die("drmModeSetCursor");
    img_us.push_back(us_since(t0));
  }
  for (int i = 0; i < cursor_rounds; ++i) {
    auto t0 = Clock::now();
    if (drmModeMoveCursor(fd, crtc, (i * 7) % int(mode.hdisplay - 64), (i * 5) % int(mode.vdisplay - 64)))
      die("drmModeMoveCursor");
    move_us.push_back(us_since(t0));
  }
  drmModeSetCursor(fd, crtc, 0, 0, 0);
  Stats ci = stats(img_us), cm = stats(move_us);
  std::printf("canopy-drm-bench: cursor-image rounds=%d median_us=%.0f p99_us=%.0f max_us=%.0f\n", cursor_rounds,
              ci.median, ci.p99, ci.max);
  std::printf("canopy-drm-bench: cursor-move rounds=%d median_us=%.1f p99_us=%.1f max_us=%.1f\n", cursor_rounds,
              cm.median, cm.p99, cm.max);
  drmModeFreeConnector(conn);
  drmModeFreeResources(res);
  close(fd);
  return 0;
}
