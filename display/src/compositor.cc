#include "canopy/display/compositor.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <unordered_map>
#include <utility>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"
#include "canopy/base/unique_fd.h"
#include "canopy/buffers/image.h"
#include "canopy/buffers/scatter_mapping.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/buffers/timeline.h"
#include "canopy/display/channel.h"
#include "canopy/display/fallback.h"
#include "canopy/display/png.h"

namespace canopy::display {

namespace ch = channel;
using buffers::Format;

namespace {

constexpr size_t kMaxTraceEvents = 1 << 20;
constexpr size_t kMaxControlRequest = 4096;
// Control connections accepted whose request has not arrived yet (served when it does, from the loop;
// the oldest is dropped beyond this, so a client that never sends costs nothing but its slot).
constexpr size_t kMaxPendingControl = 8;

Result<UniqueFd> listen_seqpacket(const std::string& path, bool private_mode) {
  UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s.valid()) return make_error(Errc::kIo, "socket", errno);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) return make_error(Errc::kInvalidArgument, "socket path length");
  std::memcpy(a.sun_path, path.c_str(), path.size());
  ::unlink(path.c_str());
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return make_error(Errc::kIo, "canopy-display: cannot bind the socket path", errno);
  if (private_mode) ::chmod(path.c_str(), 0600);
  if (::listen(s.get(), 16) != 0) return make_error(Errc::kIo, "listen", errno);
  return s;
}

bool drawable_format(uint32_t fourcc) {
  switch (Format(fourcc)) {
    case Format::kXRGB8888:
    case Format::kARGB8888:
    case Format::kABGR8888:
    case Format::kXBGR8888:
    case Format::kRGB565: return true;
    default: return false;
  }
}

int64_t us_since(TimePoint epoch, TimePoint t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t - epoch).count();
}

}  // namespace

// ---- state ----------------------------------------------------------------------------------------

// A device's buffer, mapped once. The renderer and the sinks may have derived state from the mapping
// (the Vulkan renderer's import of it, a KMS framebuffer), dropped before the memory goes. With sinks
// that offer hardware planes the descriptors stay open: a plane needs the memory as a dma-buf.
struct MappedBuffer {
  buffers::ScatterMapping map;
  std::vector<UniqueFd> fds;               // (only for plane sinks)
  std::vector<buffers::FilePiece> pieces;  // the mapping's pieces of those files, in order
  std::function<void(const void*)> forget;
  MappedBuffer() = default;
  MappedBuffer(const MappedBuffer&) = delete;
  MappedBuffer& operator=(const MappedBuffer&) = delete;
  ~MappedBuffer() {
    if (forget && map.data()) forget(map.data());
  }
  // The whole pages the mapping covers (the last piece's final page is mapped whole).
  Mapping mapping() const { return Mapping{map.data(), (map.size() + ch::kPageSize - 1) & ~size_t(ch::kPageSize - 1)}; }
};

struct Compositor::Impl {
  struct PartialBuffer {
    uint32_t total = 0;
    std::vector<buffers::FilePiece> pieces;
    std::vector<UniqueFd> fds;  // kept open until the buffer is mapped
  };
  // A scanout's acquire/release timeline (TIMELINE): frames with an acquire point wait for it; points
  // of frames no longer read are retired on it.
  struct ScanoutTimeline {
    buffers::Timeline tl;
    std::multimap<uint64_t, uint64_t> waiting;  // acquire point -> frame id, not signalled yet
    std::map<uint64_t, int> held;               // acquire points of frames not released yet
    uint64_t highest_released = 0;
    bool lost = false;
  };
  // The guest's cursor on a scanout (CURSOR): drawn over every layer showing that scanout.
  static constexpr uint32_t kCursorSize = 64;
  struct Cursor {
    bool visible = false;
    int32_t x = 0, y = 0;  // the hotspot's position in the scanout
    uint32_t hot_x = 0, hot_y = 0;
    std::shared_ptr<MappedBuffer> image;  // 64x64 ARGB8888; kept after its BUFFER_GONE
  };
  struct Conn {
    UniqueFd sock;
    std::map<uint32_t, Cursor> cursors;             // by scanout
    std::map<uint32_t, ScanoutTimeline> timelines;  // by scanout
    bool hello = false;
    uint32_t num_scanouts = 0;
    std::unordered_map<uint32_t, std::shared_ptr<MappedBuffer>> buffers;
    std::unordered_map<uint32_t, PartialBuffer> partial;
    ConnectionStats stats;
  };
  struct FrameRec {
    uint64_t conn = 0;
    uint32_t scanout = 0;
    uint64_t seq = 0;
    uint64_t acquire = 0;  // the acquire point on the scanout's timeline; 0: complete on arrival
    std::vector<std::pair<size_t, size_t>> targets;  // (output, layer) showing it
    std::shared_ptr<MappedBuffer> buf;
    Image image;
    int refs = 0;
  };
  struct Output {
    std::unique_ptr<OutputScheduler> sched;
    buffers::Mapping px;  // the canvas: whole pages of a memfd, so a renderer can use it in place
    Canvas canvas;
    std::unique_ptr<OutputSink> sink;
    std::vector<FallbackImage> fallback;  // per layer, the size of its rectangle
    std::vector<LayerSpec> fallback_spec;
    uint64_t on_planes = 0;     // compositions the sink showed on hardware planes
    bool canvas_stale = false;  // the last one was on planes: the canvas is older
    std::optional<OutputScheduler::Plan> last_plan;
  };
  struct TraceEvent {
    const char* name;
    int64_t ts_us;
    int64_t dur_us;
    uint32_t tid;
    uint64_t arg;
  };

  Layout layout;
  CompositorOptions opt;
  const Clock& clock;
  TimePoint epoch;
  std::unique_ptr<Renderer> renderer;
  std::vector<Output> outputs;
  UniqueFd ep;
  UniqueFd listen;
  UniqueFd control;
  std::map<uint64_t, UniqueFd> control_pending;  // by accept order: connections waiting for their request
  uint64_t next_control = 0;
  std::map<uint64_t, Conn> conns;  // by connection id
  std::map<int, uint64_t> conn_by_fd;
  std::map<int, std::pair<uint64_t, uint32_t>> timeline_by_fd;  // eventfd / pidfd -> (connection, scanout)
  uint64_t next_conn = 1;
  std::unordered_map<uint64_t, FrameRec> frames;  // by global frame id
  uint64_t next_frame = 1;
  bool quit = false;
  bool sinks_open = true;
  bool tracing = false;
  bool plane_sinks = false;  // some output's sink offers hardware planes
  uint64_t renderer_switches = 0;
  std::vector<TraceEvent> trace;

  Impl(Layout l, CompositorOptions o, const Clock& c) : layout(std::move(l)), opt(std::move(o)), clock(c) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    // Sinks first (they hold frames on planes), then buffers (each tells the renderer and sinks its
    // mapping goes), then the renderer, then the canvases it may have imported.
    for (auto& o : outputs) o.sink.reset();
    frames.clear();
    conns.clear();
    if (renderer)
      for (auto& o : outputs) renderer->forget_memory(o.px.data());  // (before the mapping goes)
    renderer.reset();
  }

  void start_trace() {
    trace.clear();
    tracing = true;
  }

  void trace_event(const char* name, TimePoint start, TimePoint end, uint32_t tid, uint64_t arg = 0) {
    if (!tracing || trace.size() >= kMaxTraceEvents) return;
    trace.push_back({name, us_since(epoch, start), us_since(start, end), tid, arg});
  }

  Status watch(int fd) {
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.fd = fd;
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &e) != 0) return make_error(Errc::kIo, "epoll_ctl", errno);
    return {};
  }

  // ---- frames and releases ----

  void send_release(uint64_t conn_id, uint32_t scanout, uint64_t seq) {
    auto it = conns.find(conn_id);
    if (it == conns.end() || !it->second.sock.valid()) return;
    ch::Release r{};
    r.scanout = scanout;
    r.seq = seq;
    auto st = ch::send_packet(it->second.sock.get(), ch::encode(ch::Type::kRelease, r));
    if (!st.ok()) drop(conn_id, st.error().what);
  }

  void unref(uint64_t id) {
    auto it = frames.find(id);
    if (it == frames.end()) return;
    if (--it->second.refs > 0) return;
    const FrameRec f = std::move(it->second);
    frames.erase(it);
    if (f.acquire) release_point(f.conn, f.scanout, f.acquire, id);
    send_release(f.conn, f.scanout, f.seq);
  }

  ScanoutTimeline* timeline_of(uint64_t conn_id, uint32_t scanout) {
    auto c = conns.find(conn_id);
    if (c == conns.end()) return nullptr;
    auto t = c->second.timelines.find(scanout);
    return t == c->second.timelines.end() ? nullptr : &t->second;
  }

  // Frame `id` (acquire point `point`) is no longer read: retire the timeline up to the highest point
  // below every frame still held (never past what was signalled: a dropped frame may not have been).
  void release_point(uint64_t conn_id, uint32_t scanout, uint64_t point, uint64_t id) {
    ScanoutTimeline* st = timeline_of(conn_id, scanout);
    if (!st) return;
    for (auto [a, b] = st->waiting.equal_range(point); a != b; ++a)
      if (a->second == id) {
        st->waiting.erase(a);
        break;
      }
    if (auto h = st->held.find(point); h != st->held.end() && --h->second == 0) st->held.erase(h);
    retire(*st, point);
  }

  // Retires the timeline as far as the frames still read allow, `released` (a point) now among the
  // released ones.
  static void retire(ScanoutTimeline& st, uint64_t released = 0) {
    st.highest_released = std::max(st.highest_released, released);
    uint64_t to = st.highest_released;
    if (!st.held.empty()) to = std::min(to, st.held.begin()->first - 1);
    to = std::min(to, st.tl.signalled());
    if (to > st.tl.retired()) (void)st.tl.retire(to);
  }

  // The timeline's eventfd or its producer's pidfd became readable.
  void on_timeline_event(int fd, uint64_t conn_id, uint32_t scanout) {
    ScanoutTimeline* st = timeline_of(conn_id, scanout);
    if (!st) return;
    if (fd == st->tl.producer_pidfd()) {
      ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);  // readable for good once the producer exited
      timeline_by_fd.erase(fd);
      st->tl.check_producer();
    }
    st->tl.consume_event();
    const uint64_t v = st->tl.signalled();
    while (!st->waiting.empty() && st->waiting.begin()->first <= v) {
      const uint64_t id = st->waiting.begin()->second;
      st->waiting.erase(st->waiting.begin());
      auto f = frames.find(id);
      if (f == frames.end()) continue;
      for (auto [o, l] : f->second.targets) outputs[o].sched->signal(l, id);
      trace_event("acquire", clock.now(), clock.now(), 100, f->second.seq);
    }
    retire(*st);
    if (!st->lost && st->tl.producer_state() == buffers::ProducerState::kLost) {
      st->lost = true;
      auto c = conns.find(conn_id);
      CANOPY_WARN(
          "canopy-display: %s: scanout %u: the producer of its timeline is gone; %zu frame(s) will "
          "not complete",
          c != conns.end() ? c->second.stats.vm.c_str() : "?", scanout, st->waiting.size());
    }
  }

  // Stops watching a connection's timeline descriptors (whichever are still watched).
  void unwatch_timelines(uint64_t conn_id) {
    std::erase_if(timeline_by_fd, [&](const auto& kv) {
      if (kv.second.first != conn_id) return false;
      ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, kv.first, nullptr);
      return true;
    });
  }

  Status on_timeline(uint64_t conn_id, Conn& c, ch::Message& m) {
    const uint32_t scanout = m.fixed<ch::TimelineMsg>().scanout.get();
    if (scanout >= c.num_scanouts)
      return make_error(Errc::kProtocol, "TIMELINE for a scanout the device does not have");
    if (c.timelines.count(scanout)) return make_error(Errc::kProtocol, "a second TIMELINE for a scanout");
    buffers::TimelineFds fds;
    fds.memfd = std::move(m.fds[0]);
    fds.eventfd = std::move(m.fds[1]);
    if (m.fds.size() > 2) fds.producer_pidfd = std::move(m.fds[2]);
    auto tl = buffers::Timeline::import(std::move(fds));
    if (!tl.ok()) return make_error(Errc::kProtocol, "TIMELINE descriptors are not a timeline");
    ScanoutTimeline& st = c.timelines[scanout];
    st.tl = std::move(*tl);
    CANOPY_TRY(watch(st.tl.eventfd()));
    timeline_by_fd[st.tl.eventfd()] = {conn_id, scanout};
    if (st.tl.producer_pidfd() >= 0) {
      CANOPY_TRY(watch(st.tl.producer_pidfd()));
      timeline_by_fd[st.tl.producer_pidfd()] = {conn_id, scanout};
    }
    return {};
  }

  void take_releases(Output& o) {
    for (auto [layer, id] : o.sched->take_releases()) unref(id);
  }

  // ---- device connections ----

  void drop(uint64_t conn_id, const char* why) {
    auto it = conns.find(conn_id);
    if (it == conns.end() || !it->second.sock.valid()) return;
    Conn& c = it->second;
    CANOPY_WARN("canopy-display: connection of %s closed: %s", c.stats.vm.empty() ? "(no HELLO)" : c.stats.vm.c_str(),
                why);
    ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, c.sock.get(), nullptr);
    conn_by_fd.erase(c.sock.get());
    unwatch_timelines(conn_id);
    c.sock.reset();
    c.stats.connected = false;
    c.buffers.clear();  // frames on screen keep their own references
    c.partial.clear();
    c.timelines.clear();  // frames waiting on one will not complete; newer frames replace them
    c.cursors.clear();    // a gone VM's pointer is not drawn over its last frames
  }

  void accept_all() {
    for (;;) {
      UniqueFd s(::accept4(listen.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!s.valid()) return;
      size_t live = 0;
      for (auto& [id, c] : conns) live += c.sock.valid() ? 1 : 0;
      if (live >= kMaxConnections) {
        CANOPY_WARN("canopy-display: connection refused: %zu devices connected already", live);
        continue;
      }
      // Connections that closed before saying HELLO are not worth a record.
      std::erase_if(conns, [](const auto& kv) { return !kv.second.sock.valid() && !kv.second.hello; });
      const uint64_t id = next_conn++;
      Conn& c = conns[id];
      c.sock = std::move(s);
      c.stats.connected = true;
      conn_by_fd[c.sock.get()] = id;
      if (!watch(c.sock.get()).ok()) drop(id, "epoll");
    }
  }

  Status on_hello(uint64_t id, Conn& c, const ch::Message& m) {
    if (c.hello) return make_error(Errc::kProtocol, "second HELLO");
    c.hello = true;
    c.stats.vm = m.vm_name();
    c.num_scanouts = m.fixed<ch::Hello>().num_scanouts.get();
    // A VM's device that reconnects (a restarted back-end) replaces its old connection; records of
    // closed connections are forgotten then (their frames on screen keep their own mappings).
    std::vector<uint64_t> old;
    for (auto& [other_id, o] : conns)
      if (other_id != id && o.stats.vm == c.stats.vm) old.push_back(other_id);
    for (uint64_t o : old) {
      drop(o, "replaced by a new connection of the same VM");
      conns.erase(o);
    }
    bool shown = false;
    for (const auto& out : layout.outputs)
      for (const auto& l : out.layers) shown |= l.vm == c.stats.vm;
    CANOPY_INFO("canopy-display: %s connected (%u scanouts)%s", c.stats.vm.c_str(), c.num_scanouts,
                shown ? "" : "; the layout shows none of them");
    return {};
  }

  Status on_buffer(Conn& c, ch::Message& m) {
    const auto h = m.fixed<ch::BufferHdr>();
    const uint32_t id = h.id.get();
    if (c.buffers.count(id)) return make_error(Errc::kProtocol, "BUFFER redefines a live buffer id");
    PartialBuffer& p = c.partial[id];
    if (h.first_piece.get() == 0 && p.total == 0) {
      if (c.buffers.size() + c.partial.size() > kMaxBuffersPerConnection)
        return make_error(Errc::kLimit, "too many buffers");
      p.total = h.total_pieces.get();
    }
    if (h.first_piece.get() != p.pieces.size() || h.total_pieces.get() != p.total)
      return make_error(Errc::kProtocol, "BUFFER packets out of order");
    const size_t fd_base = p.fds.size();
    for (auto& fd : m.fds) p.fds.push_back(std::move(fd));
    uint64_t bytes = 0;
    for (const auto& pc : p.pieces) bytes += pc.length;
    for (const auto& pc : m.pieces()) {
      const uint64_t len = uint64_t(pc.pages.get()) * ch::kPageSize;
      bytes += len;
      if (c.stats.mapped_bytes + bytes > kMaxMappedBytesPerConnection)
        return make_error(Errc::kLimit, "buffers above the mapped-bytes cap");
      // The piece must lie inside its file, and the file must not be able to shrink under the mapping
      // (a read past its end would raise SIGBUS): memfds sealed with F_SEAL_SHRINK only.
      const int fd = p.fds[fd_base + pc.fd_index.get()].get();
      struct stat sb{};
      const int seals = ::fcntl(fd, F_GET_SEALS);
      if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return make_error(Errc::kProtocol, "BUFFER file is not sealed against shrinking");
      if (::fstat(fd, &sb) != 0 || pc.offset.get() > uint64_t(sb.st_size) ||
          len > ((uint64_t(sb.st_size) + ch::kPageSize - 1) & ~(ch::kPageSize - 1)) - pc.offset.get())
        return make_error(Errc::kProtocol, "BUFFER piece outside its file");
      p.pieces.push_back({fd, pc.offset.get(), len});
    }
    if (p.pieces.size() < p.total) return {};
    auto map = buffers::map_scattered(p.pieces, buffers::Access::kRead);
    if (!map.ok()) {
      CANOPY_WARN("canopy-display: %s: buffer %u: %s", c.stats.vm.c_str(), id, map.error().what);
      return make_error(Errc::kProtocol, "BUFFER cannot be mapped");
    }
    auto b = std::make_shared<MappedBuffer>();
    b->map = std::move(*map);
    b->forget = [this](const void* base) { forget_memory(base); };
    if (plane_sinks) {
      b->fds = std::move(p.fds);
      b->pieces = std::move(p.pieces);
    }
    c.stats.mapped_bytes += b->map.size();
    c.buffers[id] = std::move(b);
    c.partial.erase(id);  // closes the descriptors: the mapping keeps the memory
    c.stats.buffers = c.buffers.size();
    return {};
  }

  Status on_buffer_gone(Conn& c, const ch::Message& m) {
    const uint32_t id = m.fixed<ch::BufferGone>().id.get();
    auto it = c.buffers.find(id);
    if (it == c.buffers.end()) return make_error(Errc::kProtocol, "BUFFER_GONE for an unknown buffer");
    c.stats.mapped_bytes -= it->second->map.size();
    c.buffers.erase(it);  // frames still on screen hold the mapping
    c.stats.buffers = c.buffers.size();
    return {};
  }

  Status on_cursor(Conn& c, const ch::Message& m) {
    const auto cm = m.fixed<ch::CursorMsg>();
    if (cm.scanout.get() >= c.num_scanouts)
      return make_error(Errc::kProtocol, "CURSOR for a scanout the device does not have");
    Cursor& cur = c.cursors[cm.scanout.get()];
    if (const uint32_t id = cm.buffer_id.get()) {
      auto b = c.buffers.find(id);
      if (b == c.buffers.end()) return make_error(Errc::kProtocol, "CURSOR shows an unknown buffer");
      if (b->second->map.size() < size_t(kCursorSize) * kCursorSize * 4)
        return make_error(Errc::kProtocol, "CURSOR image buffer smaller than 64x64 ARGB8888");
      cur.image = b->second;
    }
    cur.visible = cm.visible.get() != 0;
    // Positions are the guest's signed 32-bit values (a cursor may hang over the scanout's left edge).
    cur.x = int32_t(cm.x.get());
    cur.y = int32_t(cm.y.get());
    cur.hot_x = cm.hot_x.get();
    cur.hot_y = cm.hot_y.get();
    return {};
  }

  Status on_frame(uint64_t conn_id, Conn& c, const ch::Message& m) {
    const auto f = m.fixed<ch::FrameMsg>();
    const uint32_t scanout = f.scanout.get();
    const uint64_t seq = f.seq.get();
    ++c.stats.frames;
    c.stats.bytes_copied += f.bytes_copied.get();
    if (f.flags.get() & ch::kFrameBlob) ++c.stats.blob_frames;
    const uint64_t acquire = f.acquire_point.get();  // nonzero iff kFrameAcquire (parse() checked)
    ScanoutTimeline* st = nullptr;
    if (acquire) {
      auto t = c.timelines.find(f.scanout.get());
      if (t == c.timelines.end())
        return make_error(Errc::kProtocol, "FRAME with an acquire point on a scanout without TIMELINE");
      st = &t->second;
      ++c.stats.fenced_frames;
    }
    auto hand_back = [&] {  // a frame never shown: released at once
      if (st) retire(*st, acquire);
      send_release(conn_id, scanout, seq);
    };
    auto refuse = [&](const char* why) -> Status {
      ++c.stats.frames_refused;
      CANOPY_WARN_RL("canopy-display: %s: frame %llu of scanout %u refused: %s", c.stats.vm.c_str(),
                     (unsigned long long)seq, scanout, why);
      hand_back();
      return {};
    };
    if (scanout >= c.num_scanouts) return make_error(Errc::kProtocol, "FRAME for a scanout the device does not have");
    auto bit = c.buffers.find(f.buffer_id.get());
    if (bit == c.buffers.end()) return make_error(Errc::kProtocol, "FRAME shows an unknown buffer");
    if (!drawable_format(f.fourcc.get())) return refuse("format not drawable");
    const Format fmt = Format(f.fourcc.get());
    const uint32_t w = f.width.get(), h = f.height.get(), stride = f.stride.get();
    // The frame must lie inside its buffer: offset + stride * (h - 1) + w * bpp <= size.
    if (w == 0 || h == 0) return refuse("frame has no pixels");
    const auto row = checked_mul<uint64_t>(w, bytes_per_pixel(fmt));
    const auto last = checked_mul<uint64_t>(stride, h - 1);
    const auto end = last && row ? checked_add<uint64_t>(*last, *row) : std::nullopt;
    const auto total = end ? checked_add<uint64_t>(*end, f.offset.get()) : std::nullopt;
    if (!row || stride < *row || !total || *total > bit->second->map.size())
      return refuse("frame does not fit its buffer");
    std::vector<std::pair<size_t, size_t>> targets;
    for (size_t o = 0; o < layout.outputs.size(); ++o)
      for (size_t l = 0; l < layout.outputs[o].layers.size(); ++l) {
        const auto& ls = layout.outputs[o].layers[l];
        if (ls.vm == c.stats.vm && ls.scanout == scanout) targets.emplace_back(o, l);
      }
    if (targets.empty()) {
      hand_back();
      return {};
    }
    const uint64_t id = next_frame++;
    FrameRec& r = frames[id];
    r.conn = conn_id;
    r.scanout = scanout;
    r.seq = seq;
    r.acquire = acquire;
    r.targets = targets;
    r.buf = bit->second;
    r.image = Image{
        reinterpret_cast<const uint8_t*>(r.buf->map.data()) + f.offset.get(), w, h, stride, fmt, r.buf->mapping()};
    r.refs = int(targets.size());
    const TimePoint now = clock.now();
    trace_event("frame", now, now, 100, seq);
    // The guest's present time from the device (CLOCK_MONOTONIC, the real clock's base) starts the
    // frame's latency when it is plausible: not ahead of now, at most 10 s back.
    std::optional<TimePoint> presented;
    // (Compared as unsigned nanoseconds: any 64-bit value may come from the device.)
    const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
    if (const uint64_t pns = f.present_ns.get();
        pns && now_ns > 0 && pns <= uint64_t(now_ns) && uint64_t(now_ns) - pns < 10'000'000'000ull)
      presented = TimePoint{std::chrono::nanoseconds(int64_t(pns))};
    // Frames without an acquire point (2D and blob scanouts) are complete when they arrive.
    bool signalled = true;
    if (st) {
      st->held[acquire]++;
      signalled = st->tl.signalled() >= acquire;
      if (!signalled) st->waiting.emplace(acquire, id);
    }
    for (auto [o, l] : targets) outputs[o].sched->submit(l, id, signalled, presented);
    for (auto [o, l] : targets) take_releases(outputs[o]);
    return {};
  }

  void on_conn_readable(uint64_t id) {
    for (size_t n = 0; n < kMaxPacketsPerTurn; ++n) {
      auto it = conns.find(id);
      if (it == conns.end() || !it->second.sock.valid()) return;
      Conn& c = it->second;
      auto msg = ch::receive(c.sock.get(), ch::Direction::kToCompositor, 0);
      if (!msg.ok()) {
        if (msg.error().code == Errc::kTimeout) return;
        drop(id, msg.error().code == Errc::kClosed ? "closed by the device" : msg.error().what);
        return;
      }
      Status st;
      if (!c.hello && msg->type != ch::Type::kHello) st = make_error(Errc::kProtocol, "first packet is not HELLO");
      else switch (msg->type) {
          case ch::Type::kHello: st = on_hello(id, c, *msg); break;
          case ch::Type::kBuffer: st = on_buffer(c, *msg); break;
          case ch::Type::kBufferGone: st = on_buffer_gone(c, *msg); break;
          case ch::Type::kFrame: st = on_frame(id, c, *msg); break;
          case ch::Type::kTimeline: st = on_timeline(id, c, *msg); break;
          case ch::Type::kScanout:
            if (msg->fixed<ch::ScanoutMsg>().scanout.get() >= c.num_scanouts)
              st = make_error(Errc::kProtocol, "SCANOUT for a scanout the device does not have");
            break;
          case ch::Type::kCursor: st = on_cursor(c, *msg); break;
          default: st = make_error(Errc::kProtocol, "unexpected packet type"); break;
        }
      if (!st.ok()) {
        drop(id, st.error().what);
        return;
      }
    }
  }

  // ---- control ----

  // The control socket never blocks the loop: a request that is not there yet when its connection is
  // accepted is served when it arrives (the fd is watched), however late its client runs.
  void on_control() {
    for (;;) {
      UniqueFd s(::accept4(control.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!s.valid()) return;
      ucred cred{};
      socklen_t len = sizeof cred;
      if (::getsockopt(s.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != ::geteuid()) continue;
      if (serve_control(s.get())) continue;
      if (control_pending.size() >= kMaxPendingControl) {
        ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, control_pending.begin()->second.get(), nullptr);
        control_pending.erase(control_pending.begin());
      }
      if (!watch(s.get()).ok()) continue;
      control_pending.emplace(next_control++, std::move(s));
    }
  }

  // One request on a control connection, if it has come (or the peer is gone): answered; false while
  // there is nothing to read yet.
  bool serve_control(int fd) {
    char buf[kMaxControlRequest];
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    if (n > 0) {
      std::string reply = control_request(std::string(buf, size_t(n)));
      (void)::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    return true;
  }

  bool on_control_pending(int fd) {
    for (auto it = control_pending.begin(); it != control_pending.end(); ++it) {
      if (it->second.get() != fd) continue;
      if (serve_control(fd)) {
        ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
        control_pending.erase(it);
      }
      return true;
    }
    return false;
  }

  std::string control_request(const std::string& req) {
    const auto sp = req.find(' ');
    const std::string cmd = req.substr(0, sp), arg = sp == std::string::npos ? "" : req.substr(sp + 1);
    if (cmd == "stats" && arg.empty()) return stats_text();
    if (cmd == "snapshot" && !arg.empty()) {
      auto st = snapshot(arg);
      return st.ok() ? "ok\n" : std::string("error: ") + st.error().what + "\n";
    }
    if (cmd == "trace-start" && arg.empty()) {
      start_trace();
      return "ok\n";
    }
    if (cmd == "trace-stop" && !arg.empty()) {
      auto st = write_trace(arg);
      return st.ok() ? "ok\n" : std::string("error: ") + st.error().what + "\n";
    }
    if (cmd == "quit" && arg.empty()) {
      quit = true;
      return "ok\n";
    }
    return "error: unknown request (stats | snapshot DIR | trace-start | trace-stop FILE | quit)\n";
  }

  Status snapshot(const std::string& dir) {
    for (size_t i = 0; i < outputs.size(); ++i) {
      Output& o = outputs[i];
      if (o.canvas_stale && o.last_plan) {
        // Shown on planes: compose the same picture for the file (its frames are still held).
        std::vector<LayerDraw> draws;
        std::vector<Source> sources;
        std::vector<LayerSpec> specs;
        build_draws(i, *o.last_plan, draws, sources, specs);
        CANOPY_TRY(renderer->compose(draws, o.canvas, opt.background));
        o.canvas_stale = false;
      }
      CANOPY_TRY(write_png(dir + "/" + layout.outputs[i].name + ".png", o.canvas));
    }
    return {};
  }

  Status write_trace(const std::string& path) {
    tracing = false;
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) return make_error(Errc::kIo, "trace: cannot write the file", errno);
    std::fprintf(f, "{\"traceEvents\":[\n");
    for (size_t i = 0; i < outputs.size(); ++i)
      std::fprintf(f,
                   "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":%zu,\"args\":{\"name\":\"output %s\"}},\n",
                   i, layout.outputs[i].name.c_str());
    std::fprintf(f, "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":100,\"args\":{\"name\":\"frames in\"}}");
    for (const auto& e : trace)
      std::fprintf(f, ",\n{\"name\":\"%s\",\"ph\":\"%s\",\"pid\":1,\"tid\":%u,\"ts\":%lld%s,\"args\":{\"n\":%llu}%s}",
                   e.name, e.dur_us > 0 ? "X" : "i", e.tid, (long long)e.ts_us,
                   e.dur_us > 0 ? (",\"dur\":" + std::to_string(e.dur_us)).c_str() : "", (unsigned long long)e.arg,
                   e.dur_us > 0 ? "" : ",\"s\":\"t\"");
    std::fprintf(f, "\n]}\n");
    const bool ok = std::fclose(f) == 0;
    trace.clear();
    return ok ? Status{} : make_error(Errc::kIo, "trace: write failed");
  }

  std::string stats_text() const {
    std::string s;
    char line[512];
    const Renderer::Stats rs = renderer->stats();
    std::snprintf(line, sizeof line, "renderer %s compositions=%llu imports=%llu bytes_staged=%llu switches=%llu\n",
                  renderer->name(), (unsigned long long)rs.compositions, (unsigned long long)rs.imports,
                  (unsigned long long)rs.bytes_staged, (unsigned long long)renderer_switches);
    s += line;
    for (size_t i = 0; i < outputs.size(); ++i) {
      const OutputSpec& spec = layout.outputs[i];
      const OutputStats& st = outputs[i].sched->stats();
      std::snprintf(line, sizeof line,
                    "output %s %ux%u@%u criticality=%s sink=%s renderer=%s compositions=%llu missed_deadlines=%llu "
                    "waits=%llu on_planes=%llu\n",
                    spec.name.c_str(), spec.width, spec.height, spec.refresh_hz, to_string(spec.criticality),
                    outputs[i].sink->name(), renderer->name(), (unsigned long long)st.compositions,
                    (unsigned long long)st.missed_deadlines, (unsigned long long)st.waits,
                    (unsigned long long)outputs[i].on_planes);
      s += line;
      for (size_t l = 0; l < spec.layers.size(); ++l) {
        const LayerStats& ls = st.layers[l];
        std::snprintf(line, sizeof line,
                      "  layer %zu vm=%s scanout=%u new=%llu reused=%llu missed=%llu dropped=%llu fallback=%d "
                      "fallback_entries=%llu latency_p50_us=%lld latency_p99_us=%lld\n",
                      l, spec.layers[l].vm.c_str(), spec.layers[l].scanout, (unsigned long long)ls.new_frames,
                      (unsigned long long)ls.reused, (unsigned long long)ls.missed, (unsigned long long)ls.dropped,
                      ls.fallback ? 1 : 0, (unsigned long long)ls.fallback_entries,
                      (long long)(ls.latency.percentile(0.5).count() / 1000),
                      (long long)(ls.latency.percentile(0.99).count() / 1000));
        s += line;
      }
    }
    for (const auto& [id, c] : conns) {
      if (!c.hello) continue;
      std::snprintf(line, sizeof line,
                    "vm %s connected=%d frames=%llu refused=%llu blob_frames=%llu fenced_frames=%llu bytes_copied=%llu "
                    "buffers=%zu "
                    "mapped_bytes=%llu\n",
                    c.stats.vm.c_str(), c.stats.connected ? 1 : 0, (unsigned long long)c.stats.frames,
                    (unsigned long long)c.stats.frames_refused, (unsigned long long)c.stats.blob_frames,
                    (unsigned long long)c.stats.fenced_frames, (unsigned long long)c.stats.bytes_copied,
                    c.stats.buffers, (unsigned long long)c.stats.mapped_bytes);
      s += line;
    }
    return s;
  }

  // ---- composition ----

  void forget_memory(const void* base) {
    if (renderer) renderer->forget_memory(base);
    for (auto& o : outputs)
      if (o.sink) o.sink->forget_memory(base);
  }

  // What a plan draws, back to front; per draw, the buffer behind it and its frame (0: a cursor), or
  // no buffer (the compositor's own fallback picture). `specs` holds the cursors' layer specs.
  struct Source {
    std::shared_ptr<MappedBuffer> buf;
    uint64_t frame = 0;
  };
  void build_draws(size_t oi, const OutputScheduler::Plan& plan, std::vector<LayerDraw>& draws,
                   std::vector<Source>& sources, std::vector<LayerSpec>& specs) {
    Output& o = outputs[oi];
    const OutputSpec& spec = layout.outputs[oi];
    draws.reserve(spec.layers.size() * 2);
    specs.reserve(spec.layers.size());  // (stable: the draws point into it)
    for (size_t l = 0; l < plan.layers.size(); ++l) {
      const auto& lp = plan.layers[l];
      switch (lp.show) {
        case OutputScheduler::Show::kNothing: break;
        case OutputScheduler::Show::kNew:
        case OutputScheduler::Show::kReused: {
          auto it = frames.find(lp.frame);
          if (it == frames.end()) break;
          draws.push_back({&spec.layers[l], it->second.image});
          sources.push_back({it->second.buf, lp.frame});
          add_cursor(it->second, spec.layers[l], draws, sources, specs);
          break;
        }
        case OutputScheduler::Show::kFallback:
          draws.push_back({&o.fallback_spec[l], o.fallback[l].image()});
          sources.push_back({});
          break;
      }
    }
  }

  // The cursor over frame `f` as layer `l` draws it, when its VM shows one on that scanout.
  void add_cursor(const FrameRec& f, const LayerSpec& l, std::vector<LayerDraw>& draws, std::vector<Source>& sources,
                  std::vector<LayerSpec>& specs) {
    auto c = conns.find(f.conn);
    if (c == conns.end()) return;
    auto cur = c->second.cursors.find(f.scanout);
    if (cur == c->second.cursors.end() || !cur->second.visible || !cur->second.image) return;
    const Cursor& k = cur->second;
    const Rect piece{int32_t(int64_t(k.x) - k.hot_x), int32_t(int64_t(k.y) - k.hot_y), kCursorSize, kCursorSize};
    auto spec = sub_layer(l, resolved_src(l, f.image.width, f.image.height), piece);
    if (!spec) return;
    specs.push_back(*spec);
    const auto* px = reinterpret_cast<const uint8_t*>(k.image->map.data());
    draws.push_back(
        {&specs.back(), Image{px, kCursorSize, kCursorSize, kCursorSize * 4, Format::kARGB8888, k.image->mapping()}});
    sources.push_back({k.image, 0});
  }

  // The draws as hardware-plane layers, when every one is a buffer of its VM and the picture needs no
  // background of the compositor's (black, or an opaque bottom layer covering the output).
  std::vector<PlaneLayer> plane_layers(size_t oi, const std::vector<LayerDraw>& draws,
                                       const std::vector<Source>& sources) {
    std::vector<PlaneLayer> out;
    if (draws.empty()) return out;
    const OutputSpec& spec = layout.outputs[oi];
    const LayerDraw& bottom = draws.front();
    const bool opaque_format = bottom.image.format == Format::kXRGB8888 || bottom.image.format == Format::kXBGR8888 ||
                               bottom.image.format == Format::kRGB565;
    const bool covered = opaque_format && bottom.layer->alpha >= 1.0 && bottom.layer->dst.x <= 0 &&
                         bottom.layer->dst.y <= 0 &&
                         int64_t(bottom.layer->dst.x) + bottom.layer->dst.width >= int64_t(spec.width) &&
                         int64_t(bottom.layer->dst.y) + bottom.layer->dst.height >= int64_t(spec.height);
    if ((opt.background & 0xffffff) != 0 && !covered) return out;
    for (size_t i = 0; i < draws.size(); ++i) {
      const Source& src = sources[i];
      if (!src.buf || src.buf->pieces.empty()) return {};
      PlaneLayer pl;
      pl.layer = draws[i].layer;
      pl.image = draws[i].image;
      pl.buffer_base = src.buf->map.data();
      pl.pieces = src.buf->pieces;
      if (src.frame) {
        // The sink's hold is one more reference on the frame: it goes back to its VM only when the
        // sink drops the hold (the display no longer reads it).
        frames.at(src.frame).refs++;
        const uint64_t id = src.frame;
        pl.hold = std::shared_ptr<void>(src.buf.get(), [this, id](void*) { unref(id); });
      } else {
        pl.hold = src.buf;
      }
      out.push_back(std::move(pl));
    }
    return out;
  }

  Status compose(size_t oi, const OutputScheduler::Plan& plan) {
    Output& o = outputs[oi];
    const OutputSpec& spec = layout.outputs[oi];
    std::vector<LayerDraw> draws;
    std::vector<Source> sources;
    std::vector<LayerSpec> cursor_specs;
    build_draws(oi, plan, draws, sources, cursor_specs);
    if (o.sink->offers_planes()) {
      o.last_plan = plan;
      auto layers = plane_layers(oi, draws, sources);
      if (!layers.empty()) {
        const TimePoint t0 = clock.now();
        auto shown = o.sink->present_planes(layers);
        layers.clear();  // (the sink keeps the holds it needs)
        if (!shown.ok()) return shown.error();
        if (*shown) {
          trace_event("present-planes", t0, clock.now(), uint32_t(oi), draws.size());
          ++o.on_planes;
          o.canvas_stale = true;
          return {};
        }
      }
    }
    o.canvas_stale = false;
    const TimePoint t0 = clock.now();
    Status st = renderer->compose(draws, o.canvas, opt.background);
    const TimePoint t1 = clock.now();
    trace_event("compose", t0, t1, uint32_t(oi), draws.size());
    if (!st.ok()) CANOPY_WARN_RL("canopy-display: output %s: %s", spec.name.c_str(), st.error().what);
    if (!renderer->usable()) {
      // A lost or hung GPU: go on with the CPU renderer from this frame on.
      CANOPY_ERROR("canopy-display: renderer %s stopped working; composing with pixman from now on", renderer->name());
      renderer = make_pixman_renderer();
      ++renderer_switches;
      CANOPY_TRY(renderer->compose(draws, o.canvas, opt.background));
    }
    Status ps = o.sink->present(o.canvas);
    trace_event("present", t1, clock.now(), uint32_t(oi));
    return ps;
  }

  Status compose_due() {
    for (size_t i = 0; i < outputs.size(); ++i) {
      Output& o = outputs[i];
      if (!o.sink->poll()) sinks_open = false;
      // Catch up at most a few periods per call: a late output skips to the next deadline ahead.
      for (int guard = 0; guard < 4 && clock.now() >= o.sched->next_latch(); ++guard) {
        const TimePoint t0 = clock.now();
        auto plan = o.sched->latch();
        if (plan.wait) break;
        trace_event("latch", t0, clock.now(), uint32_t(i));
        CANOPY_TRY(compose(i, plan));
        o.sched->presented();
        take_releases(o);
      }
    }
    return {};
  }

  Status poll_input(int wait_ms) {
    epoll_event evs[32];
    const int n = ::epoll_wait(ep.get(), evs, 32, std::max(wait_ms, 0));
    if (n < 0) {
      if (errno == EINTR) return {};
      return make_error(Errc::kIo, "epoll_wait", errno);
    }
    for (int i = 0; i < n; ++i) {
      const int fd = evs[i].data.fd;
      if (fd == listen.get()) accept_all();
      else if (control.valid() && fd == control.get()) on_control();
      else if (on_control_pending(fd)) continue;
      else if (auto it = conn_by_fd.find(fd); it != conn_by_fd.end()) on_conn_readable(it->second);
      else if (auto t = timeline_by_fd.find(fd); t != timeline_by_fd.end())
        on_timeline_event(fd, t->second.first, t->second.second);
    }
    return {};
  }

  TimePoint next_latch() const {
    TimePoint next = TimePoint::max();
    for (const auto& o : outputs) next = std::min(next, o.sched->next_latch());
    return next;
  }

  int until_next_latch_ms() const {
    const auto d = next_latch() - clock.now();
    if (d <= std::chrono::nanoseconds(0)) return 0;
    return int(std::chrono::duration_cast<std::chrono::milliseconds>(d + std::chrono::microseconds(999)).count());
  }
};

// ---- Compositor -----------------------------------------------------------------------------------

Result<std::unique_ptr<Compositor>> Compositor::create(Layout layout, CompositorOptions options, const Clock& clock) {
  if (layout.outputs.empty())
    return make_error(Errc::kInvalidArgument, "canopy-display: the manifest has no [[display]]");
  auto impl = std::make_unique<Impl>(std::move(layout), std::move(options), clock);
  Impl& m = *impl;
  m.epoch = clock.now();
  if (m.opt.renderer == "pixman") {
    m.renderer = make_pixman_renderer();
  } else if (m.opt.renderer == "vulkan" || m.opt.renderer == "auto") {
    // auto: Vulkan on a GPU; on a CPU-only machine pixman is faster than lavapipe.
    VulkanOptions vo;
    vo.device = m.opt.vulkan_device;
    vo.allow_cpu = m.opt.renderer == "vulkan";
    auto v = make_vulkan_renderer(vo);
    if (v.ok()) {
      m.renderer = std::move(*v);
    } else if (m.opt.renderer == "auto") {
      CANOPY_INFO("canopy-display: %s; composing with pixman", v.error().what);
      m.renderer = make_pixman_renderer();
    } else {
      return v.error();
    }
  } else {
    return make_error(Errc::kInvalidArgument, "canopy-display: unknown renderer (pixman, vulkan, auto)");
  }
  m.ep = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  if (!m.ep.valid()) return make_error(Errc::kIo, "epoll_create1", errno);
  m.outputs.resize(m.layout.outputs.size());
  std::shared_ptr<KmsCard> kms;
  for (size_t i = 0; i < m.outputs.size(); ++i) {
    const OutputSpec& spec = m.layout.outputs[i];
    auto& o = m.outputs[i];
    o.sched = std::make_unique<OutputScheduler>(spec, clock, m.opt.scheduler);
    const size_t canvas_bytes = (size_t(spec.width) * spec.height * 4 + ch::kPageSize - 1) & ~size_t(ch::kPageSize - 1);
    CANOPY_ASSIGN_OR_RETURN(auto canvas_memory, buffers::SharedMemory::create("canopy-canvas", canvas_bytes));
    CANOPY_ASSIGN_OR_RETURN(o.px, canvas_memory.map());  // the mapping outlives the memfd
    auto* px = reinterpret_cast<uint8_t*>(o.px.data());
    o.canvas = Canvas{px, spec.width, spec.height, spec.width * 4, Mapping{px, o.px.size()}};
    std::fill_n(reinterpret_cast<uint32_t*>(px), size_t(spec.width) * spec.height, m.opt.background);
    if (m.opt.make_sink) {
      o.sink = m.opt.make_sink(spec);
      if (!o.sink) return make_error(Errc::kInvalidArgument, "canopy-display: no sink for an output");
    } else if (m.opt.sinks == CompositorOptions::Sinks::kWindow) {
      CANOPY_ASSIGN_OR_RETURN(o.sink, make_window_sink("Canopy: " + spec.name, spec.width, spec.height));
    } else if (m.opt.sinks == CompositorOptions::Sinks::kKms) {
      if (!kms) {
        CANOPY_ASSIGN_OR_RETURN(kms, open_kms_card(m.opt.kms_device));
      }
      CANOPY_ASSIGN_OR_RETURN(o.sink, make_kms_sink(kms, spec.name, spec.width, spec.height));
    } else {
      o.sink = make_headless_sink();
    }
    for (const auto& l : spec.layers) {
      o.fallback.emplace_back(std::max<uint32_t>(l.dst.width, 1), std::max<uint32_t>(l.dst.height, 1));
      LayerSpec f = l;
      f.src = Rect{};
      f.rotation = Rotation::k0;
      f.alpha = 1.0;
      o.fallback_spec.push_back(f);
    }
  }
  for (const auto& o : m.outputs) m.plane_sinks |= o.sink->offers_planes();
  CANOPY_ASSIGN_OR_RETURN(m.listen, listen_seqpacket(m.opt.listen_path, false));
  CANOPY_TRY(m.watch(m.listen.get()));
  if (!m.opt.control_path.empty()) {
    CANOPY_ASSIGN_OR_RETURN(m.control, listen_seqpacket(m.opt.control_path, true));
    CANOPY_TRY(m.watch(m.control.get()));
  }
  return std::unique_ptr<Compositor>(new Compositor(std::move(impl)));
}

Compositor::Compositor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Compositor::~Compositor() {
  if (!impl_) return;
  if (!impl_->opt.listen_path.empty()) ::unlink(impl_->opt.listen_path.c_str());
  if (!impl_->opt.control_path.empty()) ::unlink(impl_->opt.control_path.c_str());
}

Status Compositor::run_once(int max_wait_ms) {
  CANOPY_TRY(impl_->poll_input(std::min(max_wait_ms, impl_->until_next_latch_ms())));
  return impl_->compose_due();
}

Status Compositor::poll_input(int wait_ms) { return impl_->poll_input(wait_ms); }
Status Compositor::compose_due() { return impl_->compose_due(); }
TimePoint Compositor::next_latch() const { return impl_->next_latch(); }
bool Compositor::quit_requested() const { return impl_->quit; }
bool Compositor::sinks_open() const { return impl_->sinks_open; }
const Layout& Compositor::layout() const { return impl_->layout; }
size_t Compositor::num_outputs() const { return impl_->outputs.size(); }
const Canvas& Compositor::canvas(size_t i) const { return impl_->outputs.at(i).canvas; }
const OutputStats& Compositor::output_stats(size_t i) const { return impl_->outputs.at(i).sched->stats(); }
const char* Compositor::sink_name(size_t i) const { return impl_->outputs.at(i).sink->name(); }
const char* Compositor::renderer_name() const { return impl_->renderer->name(); }
Renderer::Stats Compositor::renderer_stats() const { return impl_->renderer->stats(); }
Status Compositor::snapshot(const std::string& dir) { return impl_->snapshot(dir); }
std::string Compositor::stats_text() const { return impl_->stats_text(); }
void Compositor::trace_start() { impl_->start_trace(); }
Status Compositor::trace_stop(const std::string& path) { return impl_->write_trace(path); }

std::vector<ConnectionStats> Compositor::connections() const {
  std::vector<ConnectionStats> out;
  for (const auto& [id, c] : impl_->conns)
    if (c.hello) out.push_back(c.stats);
  return out;
}

}  // namespace canopy::display
