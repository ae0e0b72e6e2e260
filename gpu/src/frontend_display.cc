#include "frontend_display.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "canopy/base/log.h"
#include "canopy/buffers/image.h"
#include "canopy/protocol/virtio_gpu.h"

namespace canopy::gpu {
namespace {

Status read_exact(int fd, void* dst, size_t len, int timeout_ms) {
  auto* p = static_cast<uint8_t*>(dst);
  while (len > 0) {
    pollfd pfd{fd, POLLIN, 0};
    int r = poll(&pfd, 1, timeout_ms);
    if (r == 0) return make_error(Errc::kTimeout, "vhost-user-gpu: reply timed out");
    if (r < 0) {
      if (errno == EINTR) continue;
      return make_error(Errc::kIo, "vhost-user-gpu: poll", errno);
    }
    ssize_t n = recv(fd, p, len, 0);
    if (n == 0) return make_error(Errc::kClosed, "vhost-user-gpu: socket closed");
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return make_error(Errc::kIo, "vhost-user-gpu: recv", errno);
    }
    p += n;
    len -= size_t(n);
  }
  return {};
}

#pragma pack(push, 1)
struct CursorPosMsg {
  uint32_t scanout_id, x, y;
};
struct CursorUpdateMsg {
  CursorPosMsg pos;
  uint32_t hot_x, hot_y;
  uint32_t data[64 * 64];
};
struct ScanoutMsg {
  uint32_t scanout_id, width, height;
};
struct UpdateHdr {
  uint32_t scanout_id, x, y, width, height;
};
#pragma pack(pop)
static_assert(sizeof(CursorUpdateMsg) == 20 + 16384 && sizeof(UpdateHdr) == 20);

}  // namespace

Status FrontendDisplay::handshake() {
  timeval tv{0, 200'000};  // sends give up after 200 ms
  (void)setsockopt(sock_.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (!send(vugpu::kGetProtocolFeatures, nullptr, 0)) return make_error(Errc::kIo, "vhost-user-gpu: send");
  return {};
}

bool FrontendDisplay::send(uint32_t request, const void* payload, uint32_t size) {
  if (!sock_) return false;
  vugpu::Header h{request, 0, size};
  iovec iov[2] = {{&h, sizeof h}, {const_cast<void*>(payload), size}};
  size_t total = sizeof h + size, sent = 0;
  while (sent < total) {
    msghdr m{};
    // Skip what was sent already.
    iovec cur[2];
    int n = 0;
    size_t skip = sent;
    for (auto& v : iov) {
      if (skip >= v.iov_len) {
        skip -= v.iov_len;
        continue;
      }
      cur[n].iov_base = static_cast<uint8_t*>(v.iov_base) + skip;
      cur[n].iov_len = v.iov_len - skip;
      skip = 0;
      ++n;
    }
    m.msg_iov = cur;
    m.msg_iovlen = size_t(n);
    ssize_t r = sendmsg(sock_.get(), &m, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      close_socket(errno == EAGAIN ? "front-end display too slow" : "front-end display socket failed");
      return false;
    }
    sent += size_t(r);
  }
  return true;
}

void FrontendDisplay::close_socket(const char* why) {
  if (!sock_) return;
  CANOPY_WARN("vhost-user-gpu: %s; frames no longer mirrored to the front-end", why);
  sock_.reset();
}

void FrontendDisplay::on_readable() {
  vugpu::Header h{};
  ssize_t n = recv(sock_.get(), &h, sizeof h, MSG_DONTWAIT | MSG_PEEK);
  if (n == 0) {
    CANOPY_INFO("vhost-user-gpu: front-end closed the display socket");
    sock_.reset();
    return;
  }
  if (n < 0) return;
  if (!read_exact(sock_.get(), &h, sizeof h, 100).ok()) return close_socket("short message from the front-end");
  if (h.size > vugpu::kMaxReplyPayload) return close_socket("oversized message from the front-end");
  std::vector<uint8_t> payload(h.size);
  if (h.size && !read_exact(sock_.get(), payload.data(), payload.size(), 100).ok())
    return close_socket("short message from the front-end");
  if (!ready_ && h.request == vugpu::kGetProtocolFeatures && (h.flags & vugpu::kFlagReply) && h.size == 8) {
    std::memcpy(&peer_features_, payload.data(), 8);
    const uint64_t none = 0;
    if (!send(vugpu::kSetProtocolFeatures, &none, 8)) return;
    ready_ = true;
    CANOPY_INFO("vhost-user-gpu: front-end display ready (its features %#llx)", (unsigned long long)peer_features_);
    for (const auto& st : scanouts_)
      if (st.enabled) on_scanout(st);
  }
  // Anything else (replies we never asked for) is dropped.
}

void FrontendDisplay::on_scanout(const ScanoutState& s) {
  if (scanouts_.size() <= s.scanout) scanouts_.resize(s.scanout + 1);
  scanouts_[s.scanout] = s;
  if (!mirror_ || !ready_) return;
  ScanoutMsg m{s.scanout, s.enabled ? s.width : 0, s.enabled ? s.height : 0};
  send(vugpu::kScanout, &m, sizeof m);
}

void FrontendDisplay::on_frame(std::shared_ptr<Frame> frame) {
  if (!mirror_ || !ready_ || !sock_ || frame->damage.empty()) return frame->release();
  const uint32_t xrgb = buffers::fourcc_code('X', 'R', '2', '4'), argb = buffers::fourcc_code('A', 'R', '2', '4');
  if (frame->drm_fourcc != xrgb && frame->drm_fourcc != argb) {
    if (!warned_format_) CANOPY_WARN("vhost-user-gpu: only XRGB8888/ARGB8888 frames are mirrored to the front-end");
    warned_format_ = true;
    return frame->release();
  }
  auto view = frame->map();
  if (!view.ok()) return frame->release();
  const Rect d = frame->damage[0];
  const uint64_t row = uint64_t(d.width) * 4;
  std::vector<uint8_t> msg(sizeof(UpdateHdr) + row * d.height);
  UpdateHdr uh{frame->scanout, d.x, d.y, d.width, d.height};
  std::memcpy(msg.data(), &uh, sizeof uh);
  const uint8_t* src = (*view)->data();
  for (uint32_t y = 0; y < d.height; ++y) {
    const uint64_t off = frame->offset + uint64_t(d.y + y) * frame->stride + uint64_t(d.x) * 4;
    if (off + row > (*view)->size()) return frame->release();
    std::memcpy(msg.data() + sizeof uh + y * row, src + off, row);
  }
  frame->release();
  send(vugpu::kUpdate, msg.data(), uint32_t(msg.size()));
}

void FrontendDisplay::on_cursor(const CursorUpdate& c) {
  if (!mirror_ || !ready_) return;
  if (!c.visible) {
    CursorPosMsg p{c.scanout, c.x, c.y};
    send(vugpu::kCursorPosHide, &p, sizeof p);
    return;
  }
  if (c.image_changed && c.image && c.image->argb.size() == size_t{64} * 64) {
    auto m = std::make_unique<CursorUpdateMsg>();
    m->pos = {c.scanout, c.x, c.y};
    m->hot_x = c.hot_x;
    m->hot_y = c.hot_y;
    std::memcpy(m->data, c.image->argb.data(), sizeof m->data);
    send(vugpu::kCursorUpdate, m.get(), sizeof *m);
    return;
  }
  CursorPosMsg p{c.scanout, c.x, c.y};
  send(vugpu::kCursorPos, &p, sizeof p);
}

}  // namespace canopy::gpu
