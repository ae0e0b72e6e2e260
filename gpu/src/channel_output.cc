#include "canopy/gpu/channel_output.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "canopy/base/log.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/buffers/udmabuf.h"
#include "canopy/protocol/broker.h"
#include "canopy/protocol/scanout_channel.h"

namespace canopy::gpu {

namespace ch = canopy::protocol::scanout;

namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

uint64_t page_up(uint64_t v) { return (v + ch::kPageSize - 1) & ~(ch::kPageSize - 1); }

// A memfd holding `len` bytes of `data` (sealed against resizing), for pieces the channel cannot name.
Result<UniqueFd> memfd_copy(const void* data, size_t len, const char* name) {
  CANOPY_ASSIGN_OR_RETURN(auto shm, buffers::SharedMemory::create(name, page_up(len)));
  {
    CANOPY_ASSIGN_OR_RETURN(auto map, shm.map(buffers::Access::kReadWrite));
    std::memcpy(map.data(), data, len);
  }
  return shm.dup_fd();
}

}  // namespace

ChannelOutput::ChannelOutput(Options o)
    : opt_(std::move(o)), timelines_sent_(opt_.num_scanouts), held_(opt_.num_scanouts), scanouts_(opt_.num_scanouts) {
  for (uint32_t i = 0; i < opt_.num_scanouts; ++i) scanouts_[i].scanout = i;
}

ChannelOutput::~ChannelOutput() { disconnect(nullptr); }

size_t ChannelOutput::held() const {
  size_t n = 0;
  for (const auto& m : held_) n += m.size();
  return n;
}

bool ChannelOutput::ensure_connected() {
  if (sock_.valid()) return true;
  const int64_t now = now_ms();
  if (now < next_try_ms_) return false;
  next_try_ms_ = now + opt_.retry_ms;
  UniqueFd s = opt_.broker_fd >= 0 ? request_connection() : connect_socket();
  if (!s.valid()) return false;
  // Room for bursts of FRAME packets; a compositor that lets it fill up is dropped, not waited for.
  int sz = 1 << 20;
  (void)::setsockopt(s.get(), SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  sock_ = std::move(s);
  ++stats_.connects;
  if (!send(ch::encode_hello(opt_.vm_name, opt_.num_scanouts))) return false;
  for (const auto& st : scanouts_) {
    if (!st.enabled) continue;
    ch::ScanoutMsg m{};
    m.scanout = st.scanout;
    m.enabled = 1;
    m.width = st.width;
    m.height = st.height;
    if (!send(ch::encode(ch::Type::kScanout, m))) return false;
  }
  CANOPY_INFO("canopy-gpu: connected to the compositor %s%s as %s", opt_.broker_fd >= 0 ? "through the broker" : "at ",
              opt_.broker_fd >= 0 ? "" : opt_.socket_path.c_str(), opt_.vm_name.c_str());
  if (on_change) on_change();
  return true;
}

UniqueFd ChannelOutput::connect_socket() {
  UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s.valid()) return {};
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (opt_.socket_path.size() >= sizeof a.sun_path) return {};
  std::memcpy(a.sun_path, opt_.socket_path.c_str(), opt_.socket_path.size());
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return {};
  return s;
}

UniqueFd ChannelOutput::request_connection() {
  if (broker_gone_) return {};
  namespace bk = protocol::broker;
  // Answers to earlier requests that came after their wait ended are stale: the broker made those
  // connections, but the compositor has replaced them with the newest of this VM's.
  for (;;) {
    auto stale = bk::receive(opt_.broker_fd, bk::Link::kBrokerToDevice, 0);
    if (!stale.ok() && stale.error().code != Errc::kProtocol) break;
  }
  auto sent = bk::send(opt_.broker_fd, bk::encode_connect(bk::Service::kDisplay));
  auto answer = sent.ok() ? bk::receive(opt_.broker_fd, bk::Link::kBrokerToDevice, opt_.broker_wait_ms)
                          : Result<bk::Message>(sent.error());
  if (!answer.ok()) {
    if (answer.error().code == Errc::kClosed) {
      broker_gone_ = true;
      CANOPY_WARN("canopy-gpu: the broker closed its link: no compositor connections any more");
    } else {
      CANOPY_WARN_RL("canopy-gpu: no answer from the broker: %s", answer.error().what);
    }
    return {};
  }
  if (answer->type == bk::Type::kRefused) {
    ++stats_.broker_refusals;
    CANOPY_WARN_RL("canopy-gpu: the broker refused a compositor connection (reason %u)", unsigned(answer->reason));
    return {};
  }
  if (!set_nonblocking(answer->fd.get()).ok()) return {};
  return std::move(answer->fd);
}

void ChannelOutput::disconnect(const char* why) {
  if (!sock_.valid()) return;
  if (why) CANOPY_WARN("canopy-gpu: compositor connection dropped: %s", why);
  sock_.reset();
  ++stats_.disconnects;
  // The compositor's mappings of our buffers are its own; ours (and the timelines) are sent anew on the
  // next connection.
  buffers_.clear();
  for (auto& t : timelines_sent_) t.reset();
  for (auto& m : held_) {
    for (auto& [seq, f] : m) f->release();
    m.clear();
  }
  next_try_ms_ = now_ms() + opt_.retry_ms;
  if (on_change) on_change();
}

bool ChannelOutput::send(const std::vector<uint8_t>& packet, std::span<const int> fds) {
  if (!sock_.valid()) return false;
  auto st = ch::send_packet(sock_.get(), packet, fds);
  if (!st.ok()) {
    disconnect(st.error().what);
    return false;
  }
  return true;
}

void ChannelOutput::on_backing_gone(uint32_t resource_id, uint64_t generation) {
  auto it = buffers_.find(Key{resource_id, generation});
  if (it == buffers_.end()) return;  // never sent on this connection
  buffers_.erase(it);
  ch::BufferGone g{};
  g.key = ch::buffer_key(resource_id, generation);
  if (send(ch::encode(ch::Type::kBufferGone, g))) ++stats_.buffers_gone;
}

bool ChannelOutput::define_buffer(const Frame& f, uint64_t& copied) {
  if (!f.pieces || f.pieces->empty() || f.resource_id == 0 || f.generation == 0) return false;
  const Key key{f.resource_id, f.generation};
  if (buffers_.count(key)) return true;

  BufferRef ref;
  std::vector<ch::PieceRef> pieces;
  std::vector<int> fds;
  std::vector<buffers::FilePiece> fp;
  for (const auto& p : *f.pieces) fp.push_back({p.fd->get(), p.offset, p.length});
  // Just the frame's pages, as one dma-buf (whole pages: the last piece's final page is sent whole, as
  // map_scattered maps it).
  std::vector<buffers::FilePiece> pages = fp;
  for (auto& p : pages) p.length = page_up(p.length);
  UniqueFd dmabuf;
  if (opt_.dmabuf && dmabuf_usable_ && buffers::scatter_mappable(fp)) {
    auto d = buffers::make_udmabuf(pages);
    if (d.ok()) {
      dmabuf = std::move(*d);
    } else if (d.code() == Errc::kUnsupported) {
      dmabuf_usable_ = false;  // no /dev/udmabuf here: not asked again
      CANOPY_INFO("canopy-gpu: no /dev/udmabuf: the compositor gets the files behind frames, read-only");
    } else {
      CANOPY_WARN_RL("canopy-gpu: frame pages not sent as a dma-buf (%s%s%s): the compositor gets the files, read-only",
                     d.error().what, d.error().sys_errno ? ": " : "",
                     d.error().sys_errno ? std::strerror(d.error().sys_errno) : "");
    }
  }
  const bool as_dmabuf = dmabuf.valid();
  if (as_dmabuf) {
    uint64_t total = 0;
    for (const auto& p : pages) total += p.length;
    fds.push_back(dmabuf.get());
    pieces.push_back({0, 0, total});
    ref.copy = std::move(dmabuf);
  } else if (buffers::scatter_mappable(fp)) {
    for (const auto& p : fp) {
      auto at = std::find(fds.begin(), fds.end(), p.fd);
      if (at == fds.end()) at = fds.insert(fds.end(), p.fd);
      // map_scattered maps the last piece's final page whole; the channel counts whole pages.
      pieces.push_back({uint32_t(at - fds.begin()), p.offset, page_up(p.length)});
    }
  } else {
    const uint64_t before = copied;
    auto view = f.map(&copied);    // the read into this process, when this call made the view
    if (!view.ok()) return false;  // (map adds to `copied` only when it made the view)
    auto fd = memfd_copy((*view)->data(), (*view)->size(), "canopy-gpu-frame-copy");
    if (fd.ok()) copied += (*view)->size();
    stats_.bytes_copied += copied - before;  // what was copied, whether or not the buffer goes out
    if (!fd.ok()) return false;
    fds.push_back(fd->get());
    pieces.push_back({0, 0, page_up((*view)->size())});
    ref.copy = std::move(*fd);
  }
  // Every file goes out read-only (held until the packets are sent): the compositor only reads, and a
  // taken-over compositor cannot write a VM's memory through it (no PROT_WRITE mapping, no write()).
  // (A dma-buf cannot be opened again: it goes as it is, with only the frame's pages.)
  std::vector<UniqueFd> ro;
  for (int& fd : fds) {
    if (as_dmabuf) break;
    auto r = reopen_read_only(fd);
    if (!r.ok()) {
      CANOPY_WARN_RL("canopy-gpu: frame buffer not sent to the compositor: %s", r.error().what);
      return false;
    }
    fd = r->get();
    ro.push_back(std::move(*r));
  }
  auto packets = ch::encode_buffer(ch::buffer_key(key.first, key.second), pieces, fds);
  if (!packets.ok()) {
    CANOPY_WARN("canopy-gpu: frame buffer cannot be sent to the compositor: %s", packets.error().what);
    return false;
  }
  for (const auto& pk : *packets)
    if (!send(pk.bytes, pk.fds)) return false;
  ++stats_.buffers_sent;
  if (as_dmabuf) ++stats_.buffers_dmabuf;
  buffers_.emplace(key, std::move(ref));
  return true;
}

bool ChannelOutput::send_timeline(const Frame& f) {
  auto& sent = timelines_sent_[f.scanout];
  if (sent == f.acquire_timeline) return true;
  if (sent) {
    // The compositor takes one timeline per scanout and connection: a new one needs a new connection.
    disconnect("the scanout's acquire timeline changed");
    return false;
  }
  auto st = ch::send_timeline(sock_.get(), f.scanout, *f.acquire_timeline);
  if (!st.ok()) {
    disconnect(st.error().what);
    return false;
  }
  sent = f.acquire_timeline;
  return true;
}

void ChannelOutput::on_scanout(const ScanoutState& s) {
  if (s.scanout >= scanouts_.size()) return;
  scanouts_[s.scanout] = s;
  if (!sock_.valid()) return;
  ch::ScanoutMsg m{};
  m.scanout = s.scanout;
  m.enabled = s.enabled ? 1 : 0;
  m.width = s.enabled ? s.width : 0;
  m.height = s.enabled ? s.height : 0;
  (void)send(ch::encode(ch::Type::kScanout, m));
}

void ChannelOutput::hold(std::shared_ptr<Frame> f) {
  auto& m = held_[f->scanout];
  m[f->seq] = std::move(f);
  while (m.size() > opt_.max_held) {
    m.begin()->second->release();
    m.erase(m.begin());
    ++stats_.frames_released_over_cap;
  }
}

void ChannelOutput::on_frame(std::shared_ptr<Frame> f) {
  if (f->scanout >= held_.size() || !ensure_connected()) {
    f->release();
    ++stats_.frames_released_unsent;
    return;
  }
  uint64_t copied = 0;
  const bool fenced = f->acquire_timeline && f->acquire_point;
  if (!sock_.valid() || !define_buffer(*f, copied) || (fenced && !send_timeline(*f))) {
    f->release();
    ++stats_.frames_released_unsent;
    return;
  }
  ch::FrameMsg m{};
  m.scanout = f->scanout;
  m.buffer = ch::buffer_key(f->resource_id, f->generation);
  m.seq = f->seq;
  m.fourcc = f->drm_fourcc;
  m.width = f->width;
  m.height = f->height;
  m.stride = f->stride;
  m.offset = f->offset;
  m.bytes_copied = f->bytes_copied + copied;
  m.flags = (f->blob ? ch::kFrameBlob : 0) | (f->aliased ? ch::kFrameAliased : 0) | (fenced ? ch::kFrameAcquire : 0);
  m.acquire_point = fenced ? f->acquire_point : 0;
  // steady_clock is CLOCK_MONOTONIC: the compositor on this host measures latency from here.
  if (f->presented != Frame::Clock::time_point{})
    m.present_ns =
        uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(f->presented.time_since_epoch()).count());
  std::vector<ch::WireRect> damage;
  if (f->damage.size() <= ch::kMaxDamage) {
    for (const auto& r : f->damage) {
      // Damage is clipped to the frame (the channel refuses rectangles outside it).
      if (r.x >= f->width || r.y >= f->height) continue;
      ch::WireRect w{};
      w.x = r.x;
      w.y = r.y;
      w.width = std::min(r.width, f->width - r.x);
      w.height = std::min(r.height, f->height - r.y);
      if (w.width.get() && w.height.get()) damage.push_back(w);
    }
  }
  if (!send(ch::encode_frame(m, damage))) {
    f->release();
    ++stats_.frames_released_unsent;
    return;
  }
  ++stats_.frames_sent;
  if (fenced) ++stats_.fenced_frames;
  hold(std::move(f));
}

void ChannelOutput::on_cursor(const CursorUpdate& c) {
  if (c.scanout >= held_.size() || !sock_.valid()) return;
  ch::CursorMsg m{};
  m.scanout = c.scanout;
  m.visible = c.visible ? 1 : 0;
  m.x = c.x;
  m.y = c.y;
  m.hot_x = std::min<uint32_t>(c.hot_x, 63);
  m.hot_y = std::min<uint32_t>(c.hot_y, 63);
  if (c.image_changed && c.image && c.image->width == 64 && c.image->height == 64 &&
      c.image->argb.size() == size_t{64} * 64) {
    // Cursor images are small and rare: one sealed memfd each, sent with the CURSOR packet itself.
    auto fd = memfd_copy(c.image->argb.data(), c.image->argb.size() * 4, "canopy-gpu-cursor");
    if (!fd.ok()) return;
    m.image = 1;
    const int fds[1] = {fd->get()};
    (void)send(ch::encode(ch::Type::kCursor, m), fds);
    return;
  }
  (void)send(ch::encode(ch::Type::kCursor, m));
}

void ChannelOutput::on_readable() {
  // Take everything that is there now; the socket is non-blocking.
  for (int i = 0; i < 256 && sock_.valid(); ++i) {
    auto msg = ch::receive(sock_.get(), ch::Direction::kToDevice, 0);
    if (!msg.ok()) {
      if (msg.error().code == Errc::kTimeout) return;
      disconnect(msg.error().code == Errc::kClosed ? "closed by the compositor" : msg.error().what);
      return;
    }
    if (msg->type == ch::Type::kRelease) {
      const auto r = msg->fixed<ch::Release>();
      if (r.scanout.get() >= held_.size()) continue;
      auto& m = held_[r.scanout.get()];
      if (auto it = m.find(r.seq.get()); it != m.end()) {
        it->second->release();
        m.erase(it);
        ++stats_.frames_released_by_compositor;
      }
    } else if (msg->type == ch::Type::kDisplay) {
      const auto d = msg->fixed<ch::DisplayMsg>();
      if (on_display)
        on_display(d.scanout.get(), d.connected.get() != 0, d.width.get(), d.height.get(), d.refresh_hz.get());
    }
  }
}

}  // namespace canopy::gpu
